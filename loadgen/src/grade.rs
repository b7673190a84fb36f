//! Answer extraction and grading (`shared/ASU.md`, Accuracy): the last
//! `\boxed{...}` in the visible content, else the last number; for multiple
//! choice, the last standalone letter A-D. Numbers compare after
//! normalisation (commas, `$`, trailing zeros, simple fractions).

/// The content of the last `\boxed{...}`, braces balanced.
pub fn last_boxed(text: &str) -> Option<&str> {
    let start = text.rfind("\\boxed{")? + "\\boxed{".len();
    let mut depth = 1usize;
    for (i, c) in text[start..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(&text[start..start + i]);
                }
            }
            _ => {}
        }
    }
    None
}

/// The last number in `text` (digits with optional sign, commas, decimal
/// point, or a simple fraction `a/b`).
pub fn last_number(text: &str) -> Option<String> {
    let b = text.as_bytes();
    let mut end = b.len();
    while end > 0 && !b[end - 1].is_ascii_digit() {
        end -= 1;
    }
    if end == 0 {
        return None;
    }
    let mut start = end;
    while start > 0 && (b[start - 1].is_ascii_digit() || matches!(b[start - 1], b',' | b'.' | b'/'))
    {
        start -= 1;
    }
    if start > 0 && b[start - 1] == b'-' {
        start -= 1;
    }
    Some(
        text[start..end]
            .trim_start_matches([',', '.', '/'])
            .to_string(),
    )
}

/// The last standalone letter A-D.
pub fn last_choice(text: &str) -> Option<char> {
    let chars: Vec<char> = text.chars().collect();
    (0..chars.len()).rev().find_map(|i| {
        let c = chars[i];
        let alone = |j: Option<&char>| j.is_none_or(|c| !c.is_alphanumeric());
        (matches!(c, 'A'..='D')
            && alone(i.checked_sub(1).and_then(|j| chars.get(j)))
            && alone(chars.get(i + 1)))
        .then_some(c)
    })
}

/// A numeric value of an answer string, if it has one.
pub fn numeric(s: &str) -> Option<f64> {
    let mut t: String = s
        .trim()
        .trim_start_matches('$')
        .trim_end_matches(['.', '$'])
        .replace([',', ' '], "")
        .replace("\\!", "");
    if let Some(inner) = t
        .strip_prefix("\\frac{")
        .or_else(|| t.strip_prefix("\\dfrac{"))
    {
        let (a, rest) = inner.split_once("}{")?;
        let b = rest.strip_suffix('}')?;
        t = format!("{a}/{b}");
    }
    if let Some((a, b)) = t.split_once('/') {
        let (a, b): (f64, f64) = (a.parse().ok()?, b.parse().ok()?);
        return (b != 0.0).then(|| a / b);
    }
    t.parse().ok()
}

/// The answer a response gives, by the rules above.
pub fn extract(content: &str, multiple_choice: bool) -> Option<String> {
    if multiple_choice {
        let from = last_boxed(content).unwrap_or(content);
        return last_choice(from).map(String::from);
    }
    last_boxed(content)
        .map(|s| s.trim().to_string())
        .or_else(|| last_number(content))
}

/// Whether `given` matches `reference`.
pub fn matches(given: &str, reference: &str) -> bool {
    match (numeric(given), numeric(reference)) {
        (Some(a), Some(b)) => (a - b).abs() <= 1e-6 * b.abs().max(1.0),
        _ => normalise_text(given) == normalise_text(reference),
    }
}

fn normalise_text(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_whitespace())
        .flat_map(char::to_lowercase)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boxed_then_last_number() {
        assert_eq!(
            extract("so \\boxed{12} or \\boxed{\\frac{1}{2}}", false).as_deref(),
            Some("\\frac{1}{2}")
        );
        assert_eq!(
            extract("the total is 1,234.50 dollars", false).as_deref(),
            Some("1,234.50")
        );
        assert_eq!(extract("answer: -7.", false).as_deref(), Some("-7"));
        assert_eq!(extract("no digits", false), None);
        assert_eq!(extract("\\boxed{unclosed", false).as_deref(), None);
    }

    #[test]
    fn numbers_normalise() {
        assert!(matches("1,234.50", "1234.5"));
        assert!(matches("\\frac{1}{2}", "0.5"));
        assert!(matches("3/4", "0.75"));
        assert!(matches("$42$", "42"));
        assert!(!matches("41", "42"));
        assert!(matches("x + 1", "x+1"));
    }

    #[test]
    fn multiple_choice_letters() {
        assert_eq!(
            extract("I think (B) is wrong, so the answer is C.", true).as_deref(),
            Some("C")
        );
        assert_eq!(extract("\\boxed{D}", true).as_deref(), Some("D"));
        assert_eq!(extract("Because of ABC", true), None);
    }
}
