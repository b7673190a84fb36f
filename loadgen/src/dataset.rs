//! Workloads: JSONL datasets (`question`, `answer`, optional `difficulty`,
//! `domain`, `choices`, and for mixed traffic `app`, `system`, `history`,
//! `body`), a built-in generated math set with exact answers whose
//! difficulty lies in the problems themselves, and a built-in mixed-traffic
//! workload of several applications, so demos and tests need no downloads.
//!
//! No prompt carries its difficulty: the label stays in the item, for
//! reports and for the named oracle mode (`--oracle`).

use rand::{Rng, SeedableRng};
use serde::Deserialize;
use std::path::Path;

#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
pub struct Item {
    pub question: String,
    #[serde(deserialize_with = "any_to_string")]
    pub answer: String,
    #[serde(default)]
    pub difficulty: Option<String>,
    #[serde(default)]
    pub domain: Option<String>,
    /// Multiple-choice options (graded by letter A-D).
    #[serde(default)]
    pub choices: Option<Vec<String>>,
    /// The application that sent it (mixed traffic), for reports by app.
    #[serde(default)]
    pub app: Option<String>,
    /// The application's system prompt.
    #[serde(default)]
    pub system: Option<String>,
    /// Earlier turns of the conversation, oldest first.
    #[serde(default)]
    pub history: Vec<Turn>,
    /// Request fields of this item (`reasoning_effort`,
    /// `chat_template_kwargs`, `tools`, `max_tokens`, ...), over
    /// `--extra-body`.
    #[serde(default)]
    pub body: Option<serde_json::Map<String, serde_json::Value>>,
}

/// One earlier message of a conversation.
#[derive(Debug, Clone, Deserialize, PartialEq, serde::Serialize)]
pub struct Turn {
    pub role: String,
    pub content: String,
}

impl Item {
    /// A question with its answer and nothing else.
    pub fn plain(question: String, answer: String) -> Self {
        Self {
            question,
            answer,
            difficulty: None,
            domain: None,
            choices: None,
            app: None,
            system: None,
            history: Vec::new(),
            body: None,
        }
    }
}

fn any_to_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    Ok(match v {
        serde_json::Value::String(s) => s,
        other => other.to_string(),
    })
}

/// Read a JSONL file; blank lines are skipped, a bad line is an error with
/// its line number.
pub fn load_jsonl(path: &Path) -> anyhow::Result<Vec<Item>> {
    load_named(Named::Jsonl, path, 0)
}

/// The datasets `--dataset-name` knows: the study's (as JSONL files a user
/// provides, in the shape their public releases have), thinkgate's own JSONL
/// and the built-in set. (`burstgpt` is a trace of arrivals, handled by the
/// caller.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Named {
    /// `question`, `answer` (`... #### 72`).
    Gsm8k,
    /// `problem`, `answer`, `level`, `subject`.
    Math500,
    /// `problem`/`Problem`, `answer`/`Answer`.
    Aime,
    /// `Question`, `Correct Answer`, `Incorrect Answer 1..3`: asked as
    /// A-D in an order shuffled per question by the seed.
    Gpqa,
    /// thinkgate's own shape (see [`Item`]).
    Jsonl,
}

fn field<'a>(v: &'a serde_json::Value, keys: &[&str]) -> Option<&'a serde_json::Value> {
    keys.iter().find_map(|k| v.get(*k)).filter(|x| !x.is_null())
}

fn text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.trim().to_string(),
        other => other.to_string(),
    }
}

/// One line of a named dataset as an item.
fn named_item(name: Named, v: &serde_json::Value, seed: u64, line: usize) -> Result<Item, String> {
    let need = |keys: &[&str]| {
        field(v, keys)
            .map(text)
            .ok_or_else(|| format!("needs {}", keys.join(" or ")))
    };
    Ok(match name {
        Named::Gsm8k => {
            let answer = need(&["answer"])?;
            let last = answer.rsplit("####").next().unwrap_or(&answer);
            Item {
                domain: Some("gsm8k".into()),
                ..Item::plain(need(&["question"])?, last.trim().replace(',', ""))
            }
        }
        Named::Math500 => Item {
            difficulty: field(v, &["level"]).map(|l| format!("level {}", text(l))),
            domain: field(v, &["subject"]).map(text),
            ..Item::plain(need(&["problem"])?, need(&["answer"])?)
        },
        Named::Aime => Item {
            domain: Some("aime".into()),
            ..Item::plain(need(&["problem", "Problem"])?, need(&["answer", "Answer"])?)
        },
        Named::Gpqa => {
            let correct = need(&["Correct Answer"])?;
            let mut options = vec![correct.clone()];
            for i in 1..=3 {
                options.push(need(&[&format!("Incorrect Answer {i}")])?);
            }
            // the same order for the same seed and question
            let mut rng =
                rand::rngs::StdRng::seed_from_u64(seed ^ (line as u64).wrapping_mul(0x9e37_79b9));
            rand::seq::SliceRandom::shuffle(options.as_mut_slice(), &mut rng);
            let at = options.iter().position(|o| *o == correct).unwrap_or(0);
            Item {
                domain: field(v, &["High-level domain"])
                    .map(text)
                    .or(Some("gpqa".into())),
                choices: Some(options),
                ..Item::plain(
                    need(&["Question"])?,
                    ((b'A' + at as u8) as char).to_string(),
                )
            }
        }
        Named::Jsonl => serde_json::from_value(v.clone()).map_err(|e| e.to_string())?,
    })
}

/// Read a named dataset's JSONL file (see [`Named`]); blank lines are
/// skipped, a bad line is an error with its line number.
pub fn load_named(name: Named, path: &Path, seed: u64) -> anyhow::Result<Vec<Item>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let mut items = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |e: String| anyhow::anyhow!("{}:{}: {e}", path.display(), i + 1);
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
        items.push(named_item(name, &v, seed, i).map_err(bad)?);
    }
    anyhow::ensure!(!items.is_empty(), "{} has no items", path.display());
    Ok(items)
}

/// An integer expression of `ops` operations on numbers of up to `digits`
/// digits, with its exact value (`*` binds tighter, as the sim's and every
/// model's reading of it; parentheses where the order needs them).
fn expression(rng: &mut impl Rng, ops: u32, digits: u32) -> (String, i128) {
    let top = 10i128.pow(digits.clamp(1, 6));
    let num = |rng: &mut dyn rand::RngCore| rng.random_range(2..top.max(3));
    let mut value = num(rng);
    let mut text = value.to_string();
    let mut sum_last = false;
    for _ in 0..ops {
        let n = num(rng);
        // keep values in range: multiply only while small
        let op = match rng.random_range(0..3) {
            0 if value.abs() < 1_000_000_000 => '*',
            1 => '-',
            _ => '+',
        };
        match op {
            '*' => {
                text = if sum_last {
                    format!("({text}) * {n}")
                } else {
                    format!("{text} * {n}")
                };
                value *= n;
                sum_last = false;
            }
            '-' => {
                text = format!("{text} - {n}");
                value -= n;
                sum_last = true;
            }
            _ => {
                text = format!("{text} + {n}");
                value += n;
                sum_last = true;
            }
        }
    }
    (text, value)
}

/// Settings a problem is asked in: a bare computation, a short story, or a
/// counting question (a domain models think longer on).
fn framed(rng: &mut impl Rng, expr: &str) -> (String, &'static str) {
    match rng.random_range(0..6) {
        0..=2 => (format!("Compute {expr}."), "arithmetic"),
        3 | 4 => {
            const STORIES: &[&str] = &[
                "A warehouse ships crates every morning and restocks in the afternoon; the manager keeps a running tally of the stock.",
                "A baker prepares trays of rolls for three shops, and each shop returns what it did not sell at the end of the day.",
                "A train picks up and drops off passengers at every station along its line, and the conductor counts them as it goes.",
            ];
            let story = STORIES[rng.random_range(0..STORIES.len())];
            (
                format!("{story} The tally works out as {expr}. What number is that?"),
                "word",
            )
        }
        _ => (
            format!(
                "A committee is chosen from a club. The number of ways to do it is {expr}; how many ways are there?"
            ),
            "counting",
        ),
    }
}

/// The built-in math set: `per_level` items at each of three levels of
/// work (1, 2 to 3, and 4 to 5 operations, on numbers of growing size, bare
/// or told as a story), integer arithmetic with exact answers. The level is
/// the item's label for reports and `--oracle`; the prompt does not say it.
pub fn builtin_math(per_level: usize, seed: u64) -> Vec<Item> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x6d61_7468);
    let mut items = Vec::with_capacity(per_level * 3);
    let mut seen = std::collections::HashSet::new();
    for level in ["easy", "medium", "hard"] {
        let mut made = 0;
        // Bounded: even the easiest level has thousands of distinct forms.
        for _ in 0..per_level * 20 {
            if made == per_level {
                break;
            }
            let (ops, digits) = match level {
                "easy" => (1, rng.random_range(1..=2)),
                "medium" => (rng.random_range(2..=3), rng.random_range(2..=3)),
                _ => (rng.random_range(4..=5), rng.random_range(2..=4)),
            };
            let (expr, value) = expression(&mut rng, ops, digits);
            if !seen.insert(expr.clone()) {
                continue;
            }
            made += 1;
            let (question, domain) = framed(&mut rng, &expr);
            items.push(Item {
                difficulty: Some(level.to_string()),
                domain: Some(domain.into()),
                ..Item::plain(question, value.to_string())
            });
        }
    }
    items
}

/// One application of the mixed-traffic workload.
struct App {
    name: &'static str,
    share: f64,
    system: &'static str,
    /// Operations and digits of its problems.
    ops: (u32, u32),
    digits: (u32, u32),
    /// Turns per session.
    turns: (usize, usize),
    /// Words of pasted context before the question.
    context_words: (usize, usize),
    body: &'static str,
}

const APPS: &[App] = &[
    App {
        name: "calculator",
        share: 0.35,
        system: "You are a calculator. Reply with the number only.",
        ops: (1, 2),
        digits: (1, 3),
        turns: (1, 1),
        context_words: (0, 0),
        body: r#"{"reasoning_effort":"low","max_tokens":2048}"#,
    },
    App {
        name: "tutor",
        share: 0.25,
        system: "You are a patient math tutor. Explain each step to the student.",
        ops: (2, 4),
        digits: (2, 3),
        turns: (1, 4),
        context_words: (0, 0),
        body: r#"{"max_tokens":16384}"#,
    },
    App {
        name: "support",
        share: 0.15,
        system: "You are a support assistant. Answer from the customer's document.",
        ops: (1, 1),
        digits: (1, 2),
        turns: (1, 2),
        context_words: (150, 900),
        body: r#"{"chat_template_kwargs":{"enable_thinking":false},"max_tokens":1024}"#,
    },
    App {
        name: "agent",
        share: 0.15,
        system: "You are an operations agent. Use the tools when they help.",
        ops: (2, 3),
        digits: (2, 4),
        turns: (1, 3),
        context_words: (0, 60),
        body: r#"{"reasoning_effort":"medium","max_tokens":8192,"tools":[{"type":"function","function":{"name":"lookup","description":"Look up an account","parameters":{"type":"object","properties":{"id":{"type":"string"}}}}}]}"#,
    },
    App {
        name: "olympiad",
        share: 0.10,
        system: "You are a competition mathematician. Show complete reasoning.",
        ops: (3, 5),
        digits: (2, 3),
        turns: (1, 1),
        context_words: (0, 40),
        body: r#"{"reasoning_effort":"high","max_tokens":16384}"#,
    },
];

const FILLER: &[&str] = &[
    "the", "account", "order", "was", "shipped", "on", "time", "and", "customer", "asked", "about",
    "invoice", "delivery", "status", "return", "policy", "warranty", "covers", "parts", "labour",
    "for", "one", "year", "after", "purchase", "support", "team", "replied",
];

/// The built-in mixed-traffic workload: `n` requests from five applications
/// (a calculator API at low effort, a multi-turn tutor, a support assistant
/// with thinking off and long pasted documents, a tool-using agent, and
/// olympiad problems at high effort), each with its own system prompt,
/// prompt lengths, request settings and sessions of one to four turns. A
/// session's turns come in order (turn k+1 carries turns 1..k as history,
/// with the model's earlier answers); sessions interleave. The items are
/// in sending order: the run keeps it.
pub fn mixed(n: usize, seed: u64) -> Vec<Item> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x6d69_7865);
    let total: f64 = APPS.iter().map(|a| a.share).sum();
    // open sessions: (app, history, turns left)
    let mut open: Vec<(usize, Option<String>, Vec<Turn>, usize)> = Vec::new();
    let mut items = Vec::with_capacity(n);
    while items.len() < n {
        // continue an open session about half the time, else start one
        let k = if !open.is_empty() && rng.random_bool(0.5) {
            rng.random_range(0..open.len())
        } else {
            let mut u = rng.random::<f64>() * total;
            let app = APPS
                .iter()
                .position(|a| {
                    u -= a.share;
                    u <= 0.0
                })
                .unwrap_or(APPS.len() - 1);
            let a = &APPS[app];
            let turns = rng.random_range(a.turns.0..=a.turns.1);
            let words = rng.random_range(a.context_words.0..=a.context_words.1);
            let context = (words > 0).then(|| {
                (0..words)
                    .map(|_| FILLER[rng.random_range(0..FILLER.len())])
                    .collect::<Vec<_>>()
                    .join(" ")
            });
            open.push((app, context, Vec::new(), turns));
            open.len() - 1
        };
        let (app, context, history, left) = &mut open[k];
        let a = &APPS[*app];
        let ops = rng.random_range(a.ops.0..=a.ops.1);
        let digits = rng.random_range(a.digits.0..=a.digits.1);
        let (expr, value) = expression(&mut rng, ops, digits);
        let ask = if history.is_empty() {
            format!("Compute {expr}.")
        } else {
            format!("Now compute {expr}.")
        };
        let question = match context.take() {
            Some(c) => format!("Document: {c}.\n\n{ask}"),
            None => ask,
        };
        let level = match ops {
            0 | 1 => "easy",
            2 | 3 => "medium",
            _ => "hard",
        };
        items.push(Item {
            difficulty: Some(level.into()),
            domain: Some("arithmetic".into()),
            app: Some(a.name.into()),
            system: Some(a.system.into()),
            history: history.clone(),
            body: serde_json::from_str(a.body).ok(),
            ..Item::plain(question.clone(), value.to_string())
        });
        history.push(Turn {
            role: "user".into(),
            content: question,
        });
        history.push(Turn {
            role: "assistant".into(),
            content: format!("The answer is \\boxed{{{value}}}."),
        });
        *left -= 1;
        if *left == 0 {
            open.swap_remove(k);
        }
    }
    items
}

/// Render a prompt: `{question}`, `{difficulty}`, `{choices}` placeholders.
pub fn render_prompt(template: &str, item: &Item) -> String {
    let choices = item
        .choices
        .as_ref()
        .map(|c| {
            c.iter()
                .enumerate()
                .map(|(i, t)| format!("{}. {t}", (b'A' + (i as u8).min(25)) as char))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default();
    template
        .replace("{question}", &item.question)
        .replace(
            "{difficulty}",
            item.difficulty.as_deref().unwrap_or("unknown"),
        )
        .replace("{choices}", &choices)
}

/// The default template: the question, its choices, and the boxed-answer
/// instruction. It carries no difficulty: a gateway must predict it.
pub const DEFAULT_TEMPLATE: &str =
    "{question}\n{choices}\nPlease reason step by step, and put your final answer within \\boxed{}.";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_studys_datasets_load_in_their_public_shapes() {
        let v = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap();
        let g = named_item(
            Named::Gsm8k,
            &v(r#"{"question":"Q?","answer":"so 2+2\n#### 1,024"}"#),
            1,
            0,
        )
        .unwrap();
        assert_eq!((g.question.as_str(), g.answer.as_str()), ("Q?", "1024"));
        let m = named_item(
            Named::Math500,
            &v(r#"{"problem":"P","solution":"s","answer":"\\frac{1}{2}","subject":"Algebra","level":3}"#),
            1,
            0,
        )
        .unwrap();
        assert_eq!(m.answer, "\\frac{1}{2}");
        assert_eq!(m.difficulty.as_deref(), Some("level 3"));
        assert_eq!(m.domain.as_deref(), Some("Algebra"));
        let a = named_item(
            Named::Aime,
            &v(r#"{"ID":"2024-I-1","Problem":"P","Answer":204}"#),
            1,
            0,
        )
        .unwrap();
        assert_eq!(a.answer, "204");
        let line = r#"{"Question":"Q","Correct Answer":"right","Incorrect Answer 1":"w1","Incorrect Answer 2":"w2","Incorrect Answer 3":"w3"}"#;
        let q = named_item(Named::Gpqa, &v(line), 7, 3).unwrap();
        let options = q.choices.clone().unwrap();
        let at = (q.answer.as_bytes()[0] - b'A') as usize;
        assert_eq!(options[at], "right");
        assert_eq!(options.len(), 4);
        assert_eq!(
            named_item(Named::Gpqa, &v(line), 7, 3).unwrap(),
            q,
            "seeded"
        );
        let err = named_item(Named::Gsm8k, &v("{\"answer\":\"#### 1\"}"), 1, 0).unwrap_err();
        assert!(err.contains("needs question"), "{err}");
    }

    #[test]
    fn builtin_set_has_exact_answers() {
        let items = builtin_math(20, 1);
        assert_eq!(items.len(), 60);
        let distinct: std::collections::HashSet<&str> =
            items.iter().map(|i| i.question.as_str()).collect();
        assert_eq!(distinct.len(), 60, "no repeated questions");
        for it in &items {
            // The simulated engine derives the same value from the prompt.
            let prompt = render_prompt(DEFAULT_TEMPLATE, it);
            let v = thinkgate_sim::workload::reference_answer(&prompt);
            assert_eq!(v.to_string(), it.answer, "{prompt}");
        }
        assert_eq!(builtin_math(5, 3), builtin_math(5, 3));
    }

    /// Median thinking the simulator gives a rendered item.
    fn sim_think(it: &Item) -> (thinkgate_sim::workload::Difficulty, u64) {
        use thinkgate_sim::workload::{plan, Ask};
        let cfg = thinkgate_sim::config::WorkloadConfig::default();
        let prompt = render_prompt(DEFAULT_TEMPLATE, it);
        let effort = it
            .body
            .as_ref()
            .and_then(|b| b.get("reasoning_effort"))
            .and_then(|v| v.as_str());
        let p = plan(
            &cfg,
            1,
            &Ask {
                prompt: &prompt,
                problem: &prompt,
                system: it.system.as_deref().unwrap_or(""),
                effort,
                thinking_enabled: true,
                ..Ask::default()
            },
        );
        (p.difficulty, p.natural_think)
    }

    #[test]
    fn builtin_difficulty_lies_in_the_problems_not_the_prompt() {
        let items = builtin_math(100, 5);
        let mut by_level: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
        let mut agree = 0;
        for it in &items {
            let prompt = render_prompt(DEFAULT_TEMPLATE, it);
            let level = it.difficulty.clone().unwrap_or_default();
            assert!(!prompt.to_ascii_lowercase().contains(&level), "{prompt}");
            assert!(!prompt.contains("difficulty"), "{prompt}");
            let (class, think) = sim_think(it);
            agree += usize::from(format!("{class:?}").to_ascii_lowercase() == level);
            by_level.entry(level).or_default().push(think);
        }
        let median = |v: &mut Vec<u64>| {
            v.sort_unstable();
            v[v.len() / 2]
        };
        let (e, m, h) = (
            median(by_level.get_mut("easy").unwrap()),
            median(by_level.get_mut("medium").unwrap()),
            median(by_level.get_mut("hard").unwrap()),
        );
        eprintln!("median thinking: easy {e}, medium {m}, hard {h}; labels agree {agree}/300");
        assert!(e * 2 < m && m * 2 < h, "{e} {m} {h}");
        // the label is the generator's; the simulator reads the text: mostly the same
        assert!(agree > 200, "{agree}");
        // two problems of one level still differ
        let hard = by_level.get_mut("hard").unwrap();
        assert!(hard[hard.len() * 9 / 10] > 2 * hard[hard.len() / 10]);
    }

    #[test]
    fn mixed_traffic_has_apps_sessions_and_settings() {
        let items = mixed(400, 3);
        assert_eq!(items.len(), 400);
        assert_eq!(mixed(400, 3), items, "seeded");
        let apps: std::collections::BTreeSet<&str> =
            items.iter().filter_map(|i| i.app.as_deref()).collect();
        assert_eq!(apps.len(), 5, "{apps:?}");
        assert!(items.iter().any(|i| i.history.len() >= 4), "multi-turn");
        assert!(items.iter().all(|i| i.system.is_some() && i.body.is_some()));
        let mut by_app: std::collections::BTreeMap<&str, Vec<u64>> = Default::default();
        for it in &items {
            assert!(!render_prompt(DEFAULT_TEMPLATE, it).contains("difficulty"));
            let thinking = it
                .body
                .as_ref()
                .and_then(|b| b.get("chat_template_kwargs"))
                .is_none();
            if thinking {
                by_app
                    .entry(it.app.as_deref().unwrap_or(""))
                    .or_default()
                    .push(sim_think(it).1);
            }
        }
        for v in by_app.values_mut() {
            v.sort_unstable();
        }
        let report: Vec<String> = by_app
            .iter()
            .map(|(a, v)| format!("{a}: p50 {} p90 {}", v[v.len() / 2], v[v.len() * 9 / 10]))
            .collect();
        eprintln!("{}", report.join("; "));
        let p50 = |a: &str| by_app[a][by_app[a].len() / 2];
        assert!(p50("calculator") * 4 < p50("tutor"), "{report:?}");
        assert!(p50("tutor") < p50("olympiad"), "{report:?}");
    }

    #[test]
    fn jsonl_loads_numbers_and_reports_bad_lines() {
        let dir = std::env::temp_dir().join(format!("tg-ds-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let p = dir.join("d.jsonl");
        std::fs::write(&p, "{\"question\":\"q\",\"answer\":42,\"difficulty\":\"hard\"}\n\n{\"question\":\"m\",\"answer\":\"B\",\"choices\":[\"x\",\"y\"]}\n").unwrap_or(());
        let items = load_jsonl(&p).unwrap_or_default();
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].answer, "42");
        assert!(render_prompt(DEFAULT_TEMPLATE, &items[1]).contains("B. y"));
        std::fs::write(&p, "{\"question\":1}\n").unwrap_or(());
        let err = load_jsonl(&p)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains(":1:"), "{err}");
    }
}
