//! Workloads: JSONL datasets (`question`, `answer`, optional `difficulty`,
//! `domain`, `choices`) and a built-in generated math set with exact answers
//! at three difficulty levels, so demos and tests need no downloads.

use rand::{Rng, SeedableRng};
use serde::Deserialize;
use std::path::Path;

#[derive(Debug, Clone, Deserialize, PartialEq)]
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
                question: need(&["question"])?,
                answer: last.trim().replace(',', ""),
                difficulty: None,
                domain: Some("gsm8k".into()),
                choices: None,
            }
        }
        Named::Math500 => Item {
            question: need(&["problem"])?,
            answer: need(&["answer"])?,
            difficulty: field(v, &["level"]).map(|l| format!("level {}", text(l))),
            domain: field(v, &["subject"]).map(text),
            choices: None,
        },
        Named::Aime => Item {
            question: need(&["problem", "Problem"])?,
            answer: need(&["answer", "Answer"])?,
            difficulty: None,
            domain: Some("aime".into()),
            choices: None,
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
                question: need(&["Question"])?,
                answer: ((b'A' + at as u8) as char).to_string(),
                difficulty: None,
                domain: field(v, &["High-level domain"])
                    .map(text)
                    .or(Some("gpqa".into())),
                choices: Some(options),
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

/// The built-in math set: `per_level` items at each of easy, medium and
/// hard, integer arithmetic with exact answers.
pub fn builtin_math(per_level: usize, seed: u64) -> Vec<Item> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x6d61_7468);
    let mut items = Vec::with_capacity(per_level * 3);
    let mut seen = std::collections::HashSet::new();
    for level in ["easy", "medium", "hard"] {
        let mut made = 0;
        // Bounded: easy sums have ~9,600 distinct forms.
        for _ in 0..per_level * 20 {
            if made == per_level {
                break;
            }
            let (expr, value): (String, i64) = match level {
                "easy" => {
                    let (a, b) = (rng.random_range(2..100), rng.random_range(2..100));
                    (format!("{a} + {b}"), a + b)
                }
                "medium" => {
                    let (a, b, c) = (
                        rng.random_range(2..100),
                        rng.random_range(2..100),
                        rng.random_range(2..1000),
                    );
                    (format!("({a} * {b}) + {c}"), a * b + c)
                }
                _ => {
                    let (a, b, c, d, e) = (
                        rng.random_range(10..1000),
                        rng.random_range(10..1000),
                        rng.random_range(2..1000),
                        rng.random_range(2..50),
                        rng.random_range(2..10_000),
                    );
                    (
                        format!("({a} * {b} - {c}) * {d} - {e}"),
                        (a * b - c) * d - e,
                    )
                }
            };
            if !seen.insert(expr.clone()) {
                continue;
            }
            made += 1;
            items.push(Item {
                question: format!("Compute {expr}."),
                answer: value.to_string(),
                difficulty: Some(level.to_string()),
                domain: Some("arithmetic".into()),
                choices: None,
            });
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

/// The default template: the question, a difficulty tag the simulated engine
/// reads (harmless to a real model), and the boxed-answer instruction.
pub const DEFAULT_TEMPLATE: &str = "difficulty: {difficulty}. {question}\n{choices}\nPlease reason step by step, and put your final answer within \\boxed{}.";

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
