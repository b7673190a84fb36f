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
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let mut items = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let item: Item = serde_json::from_str(line)
            .map_err(|e| anyhow::anyhow!("{}:{}: {e}", path.display(), i + 1))?;
        items.push(item);
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
