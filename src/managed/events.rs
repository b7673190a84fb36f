//! The events the gateway writes itself into a managed stream: the
//! continuation's events rewritten into the first leg's identity, a closing
//! `finish_reason`, the summed usage, `[DONE]`. (A non-streamed body is
//! assembled from them in `assemble`.)

use crate::body::strip::NOT_MOVED;

use crate::context::request::Endpoint;
use bytes::Bytes;
use serde_json::{json, Map, Value};

pub const DONE: &[u8] = b"data: [DONE]\n\n";

/// `data: {json}\n\n`.
pub fn event(v: &Value) -> Bytes {
    let mut out = b"data: ".to_vec();
    // Serializing a `Value` cannot fail.
    out.extend_from_slice(&serde_json::to_vec(v).unwrap_or_default());
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// The identity every chunk of one response shares, taken from the first
/// leg's first chunk.
#[derive(Debug, Clone)]
pub struct Identity {
    pub endpoint: Endpoint,
    id: Value,
    object: Value,
    created: Value,
    model: Value,
}

impl Identity {
    pub fn from_chunk(endpoint: Endpoint, data: &[u8]) -> Option<Self> {
        let v: Value = serde_json::from_slice(data).ok()?;
        let o = v.as_object()?;
        o.get("choices")?;
        let object = match endpoint {
            Endpoint::Chat => "chat.completion.chunk",
            _ => "text_completion",
        };
        Some(Self {
            endpoint,
            id: o.get("id").cloned().unwrap_or(Value::Null),
            object: o.get("object").cloned().unwrap_or_else(|| object.into()),
            created: o.get("created").cloned().unwrap_or(Value::Null),
            model: o.get("model").cloned().unwrap_or(Value::Null),
        })
    }

    /// The response id (`chatcmpl-...`) the engine gave, when it gave one.
    pub fn id(&self) -> Option<&str> {
        self.id.as_str()
    }

    /// A stand-in when the first leg sent no chunk before it was cut.
    pub fn fallback(endpoint: Endpoint, id: &str, model: Option<&str>) -> Self {
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Self {
            endpoint,
            id: Value::from(id),
            object: match endpoint {
                Endpoint::Chat => "chat.completion.chunk".into(),
                _ => "text_completion".into(),
            },
            created: created.into(),
            model: model.map_or(Value::Null, Value::from),
        }
    }

    /// Put this identity on an engine's chunk, keeping its fields and their
    /// order.
    fn restamp(&self, o: &mut Map<String, Value>) {
        for (k, v) in [
            ("id", &self.id),
            ("object", &self.object),
            ("created", &self.created),
            ("model", &self.model),
        ] {
            if let Some(slot) = o.get_mut(k) {
                *slot = v.clone();
            }
        }
    }

    fn chunk(&self, choices: Value) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("id".into(), self.id.clone());
        m.insert("object".into(), self.object.clone());
        m.insert("created".into(), self.created.clone());
        m.insert("model".into(), self.model.clone());
        m.insert("choices".into(), choices);
        m
    }

    /// A chunk with visible text.
    pub fn text(&self, text: &str) -> Bytes {
        let choice = match self.endpoint {
            Endpoint::Chat => {
                json!({"index": 0, "delta": {"content": text}, "finish_reason": null})
            }
            _ => json!({"index": 0, "text": text, "finish_reason": null}),
        };
        event(&Value::Object(self.chunk(json!([choice]))))
    }

    /// The last chunk of a stream the gateway ended itself.
    pub fn finish(&self, reason: &str) -> Bytes {
        let choice = match self.endpoint {
            Endpoint::Chat => json!({"index": 0, "delta": {}, "finish_reason": reason}),
            _ => json!({"index": 0, "text": "", "finish_reason": reason}),
        };
        event(&Value::Object(self.chunk(json!([choice]))))
    }

    /// The usage-only chunk.
    pub fn usage(&self, usage: &Value) -> Bytes {
        let mut m = self.chunk(json!([]));
        m.insert("usage".into(), usage.clone());
        event(&Value::Object(m))
    }
}

/// What one continuation event becomes for the client.
#[derive(Debug, PartialEq)]
pub enum Rewritten {
    /// Send these bytes.
    Send(Bytes),
    /// A terminal chunk (a `finish_reason`): held until the usage event,
    /// whose moved fields it may take back (see [`put_back_moved`]).
    Terminal(Map<String, Value>),
    /// The continuation's usage event, whole (kept for the summed usage
    /// and the fields the engine put on it).
    Usage(Map<String, Value>),
    /// An error event: send it and end.
    Error(Bytes),
    /// `[DONE]`, or a chunk with nothing for the client.
    Skip,
}

/// Rewrite one continuation event (its `data`) into the first leg's
/// identity: choice index 0, reasoning fields turned into content (the
/// continuation is the answer; an engine's reasoning parser may not know
/// the prompt closed thinking), the repeated role dropped.
pub fn rewrite(id: &Identity, echo: &mut Echo, data: &[u8]) -> Rewritten {
    if data == b"[DONE]" {
        return Rewritten::Skip;
    }
    let Ok(Value::Object(mut o)) = serde_json::from_slice::<Value>(data) else {
        return Rewritten::Skip;
    };
    if o.contains_key("error") {
        return Rewritten::Error(event(&Value::Object(o)));
    }
    let usage = o.get("usage").is_some_and(|u| !u.is_null());
    // the choices are edited in place, so every field keeps its position
    let mut choices = match o.get_mut("choices") {
        Some(Value::Array(c)) => std::mem::take(c),
        _ => Vec::new(),
    };
    choices.retain_mut(|c| {
        let Some(c) = c.as_object_mut() else {
            return false;
        };
        if c.get("index").and_then(Value::as_u64).unwrap_or(0) != 0 {
            return false;
        }
        let finish = c.get("finish_reason").is_some_and(|f| !f.is_null());
        if let Some(Value::Object(d)) = c.get_mut("delta") {
            d.remove("role");
            let mut text = None::<String>;
            for k in ["reasoning_content", "reasoning", "content"] {
                if let Some(Value::String(s)) = d.remove(k) {
                    text.get_or_insert_default().push_str(&s);
                }
            }
            if let Some(t) = text.take() {
                text = Some(echo.pass(t, finish));
            }
            // an empty text stays on a terminal chunk (vLLM's has
            // `content: ""`); elsewhere it carries nothing
            match text {
                Some(t) if !t.is_empty() || finish => {
                    d.insert("content".into(), Value::String(t));
                }
                _ => {}
            }
            return finish || !d.is_empty();
        }
        finish
            || c.get("text")
                .and_then(Value::as_str)
                .is_some_and(|t| !t.is_empty())
    });
    id.restamp(&mut o);
    if choices.is_empty() {
        return if usage {
            Rewritten::Usage(o)
        } else {
            Rewritten::Skip
        };
    }
    let terminal = choices
        .iter()
        .any(|c| c.get("finish_reason").is_some_and(|f| !f.is_null()));
    if let Some(slot) = o.get_mut("choices") {
        *slot = Value::Array(choices);
    }
    if terminal {
        Rewritten::Terminal(o)
    } else {
        Rewritten::Send(event(&Value::Object(o)))
    }
}

/// A prefill the engine streams back before what it generates (llama.cpp
/// does, sometimes after the template's own empty thinking block): the
/// answer's first text is held until the prefill has passed, and what
/// precedes it is dropped with it. Text that never shows the prefill within
/// a bound is released as it came.
#[derive(Debug, Default)]
pub struct Echo {
    prefill: String,
    held: String,
}

impl Echo {
    pub fn new(prefill: String) -> Self {
        Self {
            prefill,
            held: String::new(),
        }
    }

    /// What of `text` the client gets; `last`: no more text will come.
    fn pass(&mut self, text: String, last: bool) -> String {
        if self.prefill.is_empty() {
            return text;
        }
        self.held.push_str(&text);
        if let Some(i) = self.held.find(&self.prefill) {
            let rest = self.held.split_off(i + self.prefill.len());
            self.prefill.clear();
            self.held.clear();
            return rest;
        }
        if last || self.held.len() > self.prefill.len() + 256 {
            self.prefill.clear();
            return std::mem::take(&mut self.held);
        }
        String::new()
    }
}

/// Give `terminal` the fields of `usage_event` it lacks: engines put some
/// fields on the usage event instead of the terminal chunks when usage is on
/// (vLLM `system_fingerprint`, llama.cpp `timings`), so a client that asked
/// for no usage gets them where the engine would have put them.
pub fn put_back_moved(terminal: &mut Map<String, Value>, usage_event: &Map<String, Value>) {
    for (k, v) in usage_event {
        if !NOT_MOVED.contains(&k.as_str()) && !terminal.contains_key(k) {
            terminal.insert(k.clone(), v.clone());
        }
    }
}

/// Usage of a forced response: the thinking moved from completion into the
/// continuation's prompt, so it is moved back. `completion_tokens` =
/// thinking + answer and `total_tokens` = the continuation's total. The
/// engine's own usage object is kept (its fields, their order), and its
/// reasoning count, when it has one, is the thinking: vLLM counts a
/// continuation after a closed `</think>` as reasoning although it streams
/// it as content.
pub fn summed_usage(thinking_tokens: u64, continuation: Option<&Value>) -> Value {
    let get = |k: &str| continuation.and_then(|u| u.get(k)).and_then(Value::as_u64);
    let prompt = get("prompt_tokens")
        .unwrap_or(0)
        .saturating_sub(thinking_tokens);
    let answer = get("completion_tokens").unwrap_or(0);
    let completion = thinking_tokens + answer;
    let mut u = match continuation {
        Some(Value::Object(o)) => o.clone(),
        _ => Map::new(),
    };
    u.insert("prompt_tokens".into(), prompt.into());
    u.insert("completion_tokens".into(), completion.into());
    u.insert("total_tokens".into(), (prompt + completion).into());
    match u.get_mut("completion_tokens_details") {
        Some(Value::Object(d)) => {
            d.insert("reasoning_tokens".into(), thinking_tokens.into());
        }
        // an engine that reports no reasoning count gets none added
        Some(_) => {}
        None if continuation.is_none() => {
            u.insert(
                "completion_tokens_details".into(),
                json!({"reasoning_tokens": thinking_tokens}),
            );
        }
        None => {}
    }
    Value::Object(u)
}

/// Helpers the managed path's tests share.
#[cfg(test)]
pub(super) mod test_support {
    use super::*;

    pub(in crate::managed) fn ident() -> Identity {
        Identity::from_chunk(
            Endpoint::Chat,
            br#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":7,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#,
        )
        .unwrap()
    }

    pub(in crate::managed) fn data(b: &Bytes) -> Value {
        let s = std::str::from_utf8(b).unwrap();
        serde_json::from_str(s.strip_prefix("data: ").unwrap().trim_end()).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{data, ident};
    use super::*;

    #[test]
    fn continuation_takes_the_first_legs_identity_and_answers_in_content() {
        let id = ident();
        let r = rewrite(&id, &mut Echo::default(),
            br#"{"id":"chatcmpl-2","object":"chat.completion.chunk","created":9,"model":"m2","choices":[{"index":0,"delta":{"reasoning":"42"},"finish_reason":null}]}"#,
        );
        let Rewritten::Send(b) = r else {
            panic!("{r:?}")
        };
        assert!(b.ends_with(b"\n\n"));
        let v = data(&b);
        assert_eq!(v["id"], "chatcmpl-1");
        assert_eq!(v["created"], 7);
        assert_eq!(v["model"], "m");
        assert_eq!(v["choices"][0]["delta"], json!({"content": "42"}));
    }

    #[test]
    fn role_only_done_and_usage_are_not_sent() {
        let id = ident();
        assert_eq!(
            rewrite(
                &id,
                &mut Echo::default(),
                br#"{"id":"x","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#
            ),
            Rewritten::Skip
        );
        assert_eq!(
            rewrite(&id, &mut Echo::default(), b"[DONE]"),
            Rewritten::Skip
        );
        assert_eq!(
            rewrite(
                &id,
                &mut Echo::default(),
                br#"{"id":"x","choices":[],"usage":{"prompt_tokens":3}}"#
            ),
            Rewritten::Usage(
                json!({"id":"chatcmpl-1","choices":[],"usage":{"prompt_tokens":3}})
                    .as_object()
                    .unwrap()
                    .clone()
            )
        );
        assert!(matches!(
            rewrite(
                &id,
                &mut Echo::default(),
                br#"{"error":{"message":"boom"}}"#
            ),
            Rewritten::Error(_)
        ));
        // The finishing chunk is kept even with an empty delta, and held.
        assert!(matches!(
            rewrite(
                &id,
                &mut Echo::default(),
                br#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#
            ),
            Rewritten::Terminal(_)
        ));
        // vLLM's own terminal chunk keeps its shape: `content: ""`, its
        // other fields in their places.
        let Rewritten::Terminal(t) = rewrite(&id, &mut Echo::default(),
            br#"{"id":"x","object":"chat.completion.chunk","created":9,"model":"m","choices":[{"index":0,"delta":{"content":""},"logprobs":null,"finish_reason":"stop","stop_reason":null}]}"#,
        ) else {
            panic!()
        };
        assert_eq!(
            serde_json::to_string(&t).unwrap(),
            r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":7,"model":"m","choices":[{"index":0,"delta":{"content":""},"logprobs":null,"finish_reason":"stop","stop_reason":null}]}"#
        );
    }

    #[test]
    fn a_prefill_the_engine_streams_back_is_removed() {
        let id = ident();
        let mut echo = Echo::new("<think>\nhm\n</think>\n\n".into());
        let chunk = |t: &str| {
            format!(
                r#"{{"choices":[{{"index":0,"delta":{{"content":{}}}}}]}}"#,
                json!(t)
            )
        };
        // llama.cpp: the prefill arrives with the first generated token
        assert_eq!(
            rewrite(&id, &mut echo, chunk("<think>\nhm").as_bytes()),
            Rewritten::Skip
        );
        let Rewritten::Send(b) = rewrite(&id, &mut echo, chunk("\n</think>\n\n 42").as_bytes())
        else {
            panic!()
        };
        assert_eq!(data(&b)["choices"][0]["delta"]["content"], " 42");
        // an answer that does not start with the echo is left alone
        // llama.cpp without a reasoning parser: the template's empty
        // thinking block comes first
        let mut echo = Echo::new("<think>x</think>".into());
        let Rewritten::Send(b) = rewrite(
            &id,
            &mut echo,
            chunk("<think>\n\n</think>\n\n<think>x</think> 42").as_bytes(),
        ) else {
            panic!()
        };
        assert_eq!(data(&b)["choices"][0]["delta"]["content"], " 42");
        // an answer that never shows the prefill is released at its end
        let mut echo = Echo::new("<think>x</think>".into());
        assert_eq!(
            rewrite(&id, &mut echo, chunk("<thin!").as_bytes()),
            Rewritten::Skip
        );
        let fin = r#"{"choices":[{"index":0,"delta":{"content":" ok"},"finish_reason":"stop"}]}"#;
        let Rewritten::Terminal(t) = rewrite(&id, &mut echo, fin.as_bytes()) else {
            panic!()
        };
        assert_eq!(t["choices"][0]["delta"]["content"], "<thin! ok");
    }

    #[test]
    fn usage_adds_up() {
        // vLLM's order and its reasoning count (which it gives the answer
        // of a continuation too)
        let u = summed_usage(
            100,
            Some(
                &json!({"prompt_tokens": 130, "total_tokens": 142, "completion_tokens": 12,
                "completion_tokens_details": {"reasoning_tokens": 12}}),
            ),
        );
        assert_eq!(u["prompt_tokens"], 30);
        assert_eq!(u["completion_tokens"], 112);
        assert_eq!(u["total_tokens"], 142);
        assert_eq!(u["completion_tokens_details"]["reasoning_tokens"], 100);
        assert_eq!(
            u.as_object().unwrap().keys().collect::<Vec<_>>(),
            [
                "prompt_tokens",
                "total_tokens",
                "completion_tokens",
                "completion_tokens_details"
            ]
        );
        // llama.cpp reports no reasoning count: none is added
        let u = summed_usage(
            100,
            Some(&json!({"completion_tokens": 12, "prompt_tokens": 130, "total_tokens": 142})),
        );
        assert_eq!(u["completion_tokens"], 112);
        assert!(u.get("completion_tokens_details").is_none());
        // no usage from the continuation at all
        let u = summed_usage(7, None);
        assert_eq!(u["completion_tokens_details"]["reasoning_tokens"], 7);
    }
}
