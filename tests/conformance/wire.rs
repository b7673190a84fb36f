//! What "the client sees the same thing" means, as code: a response reduced
//! to what must not change between a direct connection and the gateway.
//!
//! Kept: every event and field, in order, with its values. Replaced: the
//! response `id` (its shape is checked apart), `created`, and llama.cpp's
//! `timings` (wall-clock figures). Tolerated: the engine's own merging of
//! tokens into one event, so consecutive text deltas of one kind are
//! concatenated before comparing.

use serde_json::Value;

/// The `data:` payloads of an SSE body, in order.
pub fn data_events(body: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(body);
    let mut out = Vec::new();
    let mut cur: Option<String> = None;
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if let Some(d) = line.strip_prefix("data:") {
            let d = d.strip_prefix(' ').unwrap_or(d);
            match &mut cur {
                Some(c) => {
                    c.push('\n');
                    c.push_str(d);
                }
                None => cur = Some(d.to_string()),
            }
        } else if line.is_empty() {
            if let Some(c) = cur.take() {
                out.push(c);
            }
        }
    }
    out.extend(cur);
    out
}

fn scrub(v: &mut Value) {
    if let Some(o) = v.as_object_mut() {
        if o.contains_key("id") {
            o.insert("id".into(), "ID".into());
        }
        if o.contains_key("created") {
            o.insert("created".into(), 0.into());
        }
        if o.contains_key("timings") {
            o.insert("timings".into(), "TIMINGS".into());
        }
    }
}

const TEXT_FIELDS: [&str; 4] = ["content", "reasoning", "reasoning_content", "text"];

/// A streamed body as what must match, whatever the engine merged:
/// `text`, each choice's text per field, concatenated; `choices`, each
/// choice's events in order with their text emptied, events that carried
/// only text left out (the engine decides how many tokens go in one event,
/// and puts the last ones in the terminal event or not); `other`, the
/// events without choices (usage, errors, `[DONE]`) in order.
pub fn canonical_stream(body: &[u8]) -> Value {
    let mut text = serde_json::Map::new();
    let mut choices = serde_json::Map::new();
    let mut other = Vec::new();
    for d in data_events(body) {
        let mut v = serde_json::from_str::<Value>(&d).unwrap_or(Value::String(d));
        scrub(&mut v);
        let Some(list) = v
            .get("choices")
            .and_then(Value::as_array)
            .filter(|l| !l.is_empty())
            .cloned()
        else {
            other.push(v);
            continue;
        };
        for mut c in list {
            let i = c
                .get("index")
                .and_then(Value::as_u64)
                .unwrap_or(0)
                .to_string();
            let mut only_text = c.get("finish_reason").is_none_or(Value::is_null);
            let holder = match c.get_mut("delta") {
                Some(d) => d,
                None => &mut c,
            };
            if let Some(o) = holder.as_object_mut() {
                for (k, val) in o.iter_mut() {
                    if TEXT_FIELDS.contains(&k.as_str()) {
                        if let Some(t) = val.as_str() {
                            let acc = text.entry(format!("{i}:{k}")).or_insert_with(|| "".into());
                            if let Value::String(a) = acc {
                                a.push_str(t);
                            }
                            *val = "".into();
                        }
                    } else if val.is_null() || c_is_meta(k) {
                        // per-choice bookkeeping or nothing, not content
                    } else {
                        only_text = false;
                    }
                }
            }
            if !only_text {
                // reasoning in an event with other content is the engine's
                // merging (vLLM puts the last tokens on the terminal chunk)
                if let Some(o) = c.get_mut("delta").and_then(Value::as_object_mut) {
                    o.remove("reasoning");
                    o.remove("reasoning_content");
                }
                let mut e = v.clone();
                e["choices"] = Value::Array(vec![c]);
                match choices.entry(i).or_insert_with(|| Value::Array(vec![])) {
                    Value::Array(a) => a.push(e),
                    _ => unreachable!(),
                }
            }
        }
    }
    serde_json::json!({"text": text, "choices": choices, "other": other})
}

/// Keys of a choice or delta that carry no content of their own.
fn c_is_meta(k: &str) -> bool {
    matches!(
        k,
        "index" | "logprobs" | "finish_reason" | "stop_reason" | "token_ids" | "delta"
    )
}

/// A JSON body, scrubbed.
pub fn canonical_json(body: &[u8]) -> Value {
    let mut v: Value = serde_json::from_slice(body).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}",
            String::from_utf8_lossy(&body[..body.len().min(400)])
        )
    });
    scrub(&mut v);
    v
}

/// The ids of a body (every event's), for the shape check.
pub fn ids(body: &[u8], streamed: bool) -> Vec<String> {
    let one = |v: &Value| v.get("id").and_then(Value::as_str).map(str::to_string);
    if streamed {
        data_events(body)
            .iter()
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .filter_map(|v| one(&v))
            .collect()
    } else {
        serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| one(&v))
            .into_iter()
            .collect()
    }
}

/// An id's shape: its prefix up to the last `-`, and the length and alphabet
/// of the rest (`chatcmpl-` + 16 hex, say).
pub fn id_shape(id: &str) -> String {
    let (prefix, rest) = id.rsplit_once('-').unwrap_or(("", id));
    let class = if rest.bytes().all(|b| b.is_ascii_hexdigit()) {
        "hex"
    } else if rest.bytes().all(|b| b.is_ascii_alphanumeric()) {
        "alnum"
    } else {
        "other"
    };
    format!("{prefix}-{}{class}", rest.len())
}

/// Reasoning and visible text of choice 0 of a canonical stream.
pub fn texts(canon: &Value) -> (String, String) {
    let t = |k: &str| canon["text"][k].as_str().unwrap_or("").to_string();
    let reasoning = t("0:reasoning") + &t("0:reasoning_content");
    (reasoning, t("0:content") + &t("0:text"))
}

/// Scrub what differs between two runs of one Responses API request, at
/// every depth: ids (`resp_`, `rs_`, `msg_`, ...), times, sequence numbers.
fn scrub_deep(v: &mut Value) {
    match v {
        Value::Object(o) => {
            for (k, val) in o.iter_mut() {
                match k.as_str() {
                    "id" | "item_id" => *val = "ID".into(),
                    "created" | "created_at" | "completed_at" => *val = 0.into(),
                    "sequence_number" => *val = 0.into(),
                    // llama.cpp's wall-clock figures
                    "timings" => *val = "TIMINGS".into(),
                    _ => scrub_deep(val),
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(scrub_deep),
        _ => {}
    }
}

/// A Responses API stream as what must match: the `event:` names and the
/// events in order, scrubbed, with the `*.delta` events' text concatenated
/// per event type (the engine decides how many tokens go in one delta).
pub fn canonical_responses(body: &[u8]) -> Value {
    let text = String::from_utf8_lossy(body);
    let names: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("event:").map(str::trim))
        .filter(|n| !n.ends_with(".delta"))
        .collect();
    let mut deltas = serde_json::Map::new();
    let mut events = Vec::new();
    for d in data_events(body) {
        let mut v = serde_json::from_str::<Value>(&d).unwrap_or(Value::String(d));
        let kind = v["type"].as_str().unwrap_or("").to_string();
        if kind.ends_with(".delta") {
            if let Some(t) = v["delta"].as_str() {
                let acc = deltas.entry(kind).or_insert_with(|| "".into());
                if let Value::String(a) = acc {
                    a.push_str(t);
                }
            }
            continue;
        }
        scrub_deep(&mut v);
        events.push(v);
    }
    serde_json::json!({"names": names, "deltas": deltas, "events": events})
}

/// A non-streamed Responses API body, scrubbed at every depth.
pub fn canonical_response_json(body: &[u8]) -> Value {
    let mut v: Value = serde_json::from_slice(body).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}",
            String::from_utf8_lossy(&body[..body.len().min(400)])
        )
    });
    scrub_deep(&mut v);
    v
}
