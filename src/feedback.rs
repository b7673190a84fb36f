//! Feedback: how good an answer was, reported after the fact by whoever
//! knows (a user's thumbs, a grader, a test suite), keyed by the request id
//! the gateway returned (`x-thinkgate-request-id`, or the client's own
//! `x-request-id`). It is the "A" of ASU on production traffic, where no
//! answer key exists; `thinkgate load compare --by-arm` joins it to the
//! records for per-arm accuracy.
//!
//! Two ways in, as TensorZero's feedback API has them:
//! - `POST /feedback` on the admin listener, a JSON object or an array of
//!   them: `{"request_id": "...", "value": true}` (a boolean grade) or
//!   `{"request_id": "...", "metric": "score", "value": 0.7}`;
//! - the header `x-thinkgate-feedback: <request id>=<value>` on any later
//!   request through the gateway (one or several, comma-separated), for
//!   clients that grade inline; the request itself is forwarded unchanged.
//!
//! Feedback is written to the records file as `{"feedback": {...}}` lines
//! by the records writer: bounded, never blocking, dropped and counted when
//! its queue is full.

use serde::{Deserialize, Serialize};

/// The inline header.
pub const HEADER: &str = "x-thinkgate-feedback";

/// One grade of one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Feedback {
    pub request_id: String,
    /// What is graded (`correct` by default).
    #[serde(default = "default_metric")]
    pub metric: String,
    /// `true`/`false`, or a number (a score).
    pub value: Value,
    /// When the gateway took it (set by the gateway).
    #[serde(default)]
    pub unix_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Value {
    Bool(bool),
    Number(f64),
}

fn default_metric() -> String {
    "correct".into()
}

/// What is wrong with a grade.
fn check(f: &Feedback) -> Result<(), String> {
    if f.request_id.is_empty() || f.request_id.len() > 256 {
        return Err("request_id must be 1 to 256 characters".into());
    }
    let name_ok = !f.metric.is_empty()
        && f.metric.len() <= 64
        && f.metric
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if !name_ok {
        return Err("metric must be 1 to 64 of [A-Za-z0-9_.-]".into());
    }
    if let Value::Number(x) = f.value {
        if !x.is_finite() {
            return Err("value must be a finite number or a boolean".into());
        }
    }
    Ok(())
}

/// Parse a `POST /feedback` body: one object or an array of them. All or
/// nothing: a batch with one bad grade is refused whole, saying which.
pub fn parse_body(body: &[u8]) -> Result<Vec<Feedback>, String> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(Feedback),
        Many(Vec<Feedback>),
    }
    let all = match serde_json::from_slice::<OneOrMany>(body) {
        Ok(OneOrMany::One(f)) => vec![f],
        Ok(OneOrMany::Many(v)) => v,
        Err(_) => {
            return Err(
                "expected {\"request_id\": \"...\", \"value\": true|false|number, \"metric\"?: \"name\"} or an array of them"
                    .into(),
            )
        }
    };
    if all.is_empty() || all.len() > 1000 {
        return Err("give 1 to 1000 grades".into());
    }
    for (i, f) in all.iter().enumerate() {
        check(f).map_err(|e| format!("grade {i}: {e}"))?;
    }
    Ok(all)
}

/// Parse the inline header: `id=value[, id=value]` (`true`, `false` or a
/// number). Bad entries are skipped: a request is never refused for its
/// feedback.
pub fn parse_header(v: &str) -> Vec<Feedback> {
    v.split(',')
        .filter_map(|item| {
            let (id, value) = item.trim().rsplit_once('=')?;
            let value = match value.trim() {
                "true" => Value::Bool(true),
                "false" => Value::Bool(false),
                x => Value::Number(x.parse().ok()?),
            };
            let f = Feedback {
                request_id: id.trim().to_string(),
                metric: default_metric(),
                value,
                unix_ms: 0,
            };
            check(&f).ok().map(|_| f)
        })
        .take(16)
        .collect()
}

/// Now, in ms since the epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Grades sent inline on a proxied request's header (none without it).
pub fn from_headers(headers: &http::HeaderMap) -> Vec<Feedback> {
    let Some(v) = headers.get(HEADER).and_then(|v| v.to_str().ok()) else {
        return Vec::new();
    };
    let now = now_ms();
    let mut all = parse_header(v);
    for f in &mut all {
        f.unix_ms = now;
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_one_or_many_all_or_nothing() {
        let one = parse_body(br#"{"request_id":"r1","value":true}"#).unwrap();
        assert_eq!(one[0].metric, "correct");
        assert_eq!(one[0].value, Value::Bool(true));
        let many =
            parse_body(br#"[{"request_id":"r1","value":0.5,"metric":"score"},{"request_id":"r2","value":false}]"#)
                .unwrap();
        assert_eq!(many.len(), 2);
        assert_eq!(many[0].value, Value::Number(0.5));
        for bad in [
            &br#"{"request_id":"","value":true}"#[..],
            br#"{"request_id":"r","value":"yes"}"#,
            br#"{"request_id":"r"}"#,
            br#"{"request_id":"r","value":1,"metric":"a b"}"#,
            br#"{"request_id":"r","value":1,"extra":2}"#,
            br#"[]"#,
            br#"[{"request_id":"r","value":1},{"value":1}]"#,
            b"not json",
        ] {
            assert!(parse_body(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn the_header_takes_what_it_can() {
        let got = parse_header("r1=true, r2=0.25,bad, r3=maybe, =1, r4=false");
        let ids: Vec<&str> = got.iter().map(|f| f.request_id.as_str()).collect();
        assert_eq!(ids, ["r1", "r2", "r4"]);
        assert_eq!(got[1].value, Value::Number(0.25));
        // ids may hold '=' (only the last one splits)
        assert_eq!(parse_header("a=b=1")[0].request_id, "a=b");
    }
}
