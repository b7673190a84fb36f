//! The continuation request of a forced answer: the client's request plus
//! the thinking so far, closed, so the model goes straight to its answer.
//!
//! Chat (vLLM, SGLang): a final assistant message holding
//! `<think>\n{thinking}\n</think>{cue}` with `continue_final_message: true`
//! and `add_generation_prompt: false` (WIRE.md). llama.cpp refuses an
//! assistant prefill while thinking is on, so there thinking is turned off
//! for the continuation instead. Completions: the prompt plus the generated
//! text, closed. The continuation always streams with usage, and gets the
//! client's `max_tokens` minus the thinking already spent.

use crate::config::Flavor;
use crate::context::request::Endpoint;
use bytes::Bytes;
use serde_json::{json, Map, Value};
use thinkgate_asu::Markers;

/// What the continuation is built from.
pub struct Forced<'a> {
    /// The request body the client sent.
    pub original: &'a [u8],
    pub endpoint: Endpoint,
    pub flavor: Flavor,
    /// Thinking text so far (without markers).
    pub thinking: &'a str,
    pub thinking_tokens: u64,
    pub markers: &'a Markers,
    pub cue: &'a str,
    /// `max_tokens` when the client set none.
    pub answer_max_tokens: Option<u64>,
}

/// A continuation request and what its stream repeats.
#[derive(Debug)]
pub struct Continuation {
    pub body: Bytes,
    /// Text the engine echoes at the start of the answer: llama.cpp treats
    /// a trailing assistant message as a prefill and streams the prefill
    /// back before what it generates; the caller removes it. Empty
    /// elsewhere.
    pub echo: String,
}

/// The continuation, or `None` when this request cannot be continued
/// (the caller ends the stream with `finish_reason: "length"`).
pub fn build(f: &Forced<'_>) -> Option<Continuation> {
    let mut echo = String::new();
    let body = body(f, &mut echo)?;
    Some(Continuation { body, echo })
}

fn body(f: &Forced<'_>, echo: &mut String) -> Option<Bytes> {
    let mut v: Value = serde_json::from_slice(f.original).ok()?;
    let obj = v.as_object_mut()?;
    let closed = format!(
        "{}\n{}\n{}{}",
        f.markers.open(),
        f.thinking.trim_matches('\n'),
        f.markers.close(),
        f.cue
    );
    match f.endpoint {
        Endpoint::Chat => {
            let msgs = obj.get_mut("messages")?.as_array_mut()?;
            msgs.push(json!({"role": "assistant", "content": closed}));
            if f.flavor == Flavor::Llamacpp {
                echo.push_str(&closed);
                let kw = obj
                    .entry("chat_template_kwargs")
                    .or_insert_with(|| Value::Object(Map::new()));
                kw.as_object_mut()?
                    .insert("enable_thinking".into(), Value::Bool(false));
            } else {
                obj.insert("continue_final_message".into(), Value::Bool(true));
                obj.insert("add_generation_prompt".into(), Value::Bool(false));
            }
        }
        Endpoint::Completions => {
            let prompt = obj.get("prompt")?.as_str()?;
            // The template may already have opened thinking (R1 prompts end
            // in `<think>\n`); otherwise the model's own open tag is part of
            // the generated text.
            let text = if prompt.trim_end().ends_with(f.markers.open()) {
                format!(
                    "{}\n{}{}",
                    f.thinking.trim_matches('\n'),
                    f.markers.close(),
                    f.cue
                )
            } else {
                closed
            };
            let joined = format!("{prompt}{text}");
            obj.insert("prompt".into(), Value::String(joined));
        }
        Endpoint::Responses | Endpoint::Other => return None,
    }
    obj.insert("stream".into(), Value::Bool(true));
    obj.insert("stream_options".into(), json!({"include_usage": true}));
    obj.remove("n");
    for k in ["thinking_token_budget", "thinking_budget_tokens"] {
        obj.remove(k);
    }
    let keys = ["max_completion_tokens", "max_tokens"];
    let client_max = keys
        .iter()
        .find_map(|k| obj.get(*k).and_then(Value::as_u64));
    match client_max {
        Some(m) => {
            let left = m.saturating_sub(f.thinking_tokens).max(1);
            for k in keys {
                if obj.contains_key(k) {
                    obj.insert(k.into(), Value::from(left));
                }
            }
        }
        None => {
            if let Some(m) = f.answer_max_tokens {
                obj.insert("max_tokens".into(), Value::from(m));
            }
        }
    }
    serde_json::to_vec(&v).ok().map(Bytes::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forced<'a>(original: &'a [u8], endpoint: Endpoint, m: &'a Markers) -> Forced<'a> {
        Forced {
            original,
            endpoint,
            flavor: Flavor::Vllm,
            thinking: "\nlet me see 2+2",
            thinking_tokens: 40,
            markers: m,
            cue: "\n\nFinal answer:",
            answer_max_tokens: Some(64),
        }
    }

    #[test]
    fn chat_continues_a_closed_assistant_message() {
        let m = Markers::default();
        let orig = br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":100,"stream":false,"n":1}"#;
        let b = build(&forced(orig, Endpoint::Chat, &m)).unwrap().body;
        let v: Value = serde_json::from_slice(&b).unwrap();
        let last = &v["messages"][1];
        assert_eq!(last["role"], "assistant");
        assert_eq!(
            last["content"],
            "<think>\nlet me see 2+2\n</think>\n\nFinal answer:"
        );
        assert_eq!(v["continue_final_message"], true);
        assert_eq!(v["add_generation_prompt"], false);
        assert_eq!(v["stream"], true);
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["max_tokens"], 60);
        assert!(v.get("n").is_none());
        // Field order of the client's request is kept.
        assert!(std::str::from_utf8(&b)
            .unwrap()
            .starts_with(r#"{"model":"m","messages""#));
    }

    #[test]
    fn llamacpp_turns_thinking_off_instead() {
        let m = Markers::default();
        let orig = br#"{"messages":[{"role":"user","content":"hi"}]}"#;
        let mut f = forced(orig, Endpoint::Chat, &m);
        f.flavor = Flavor::Llamacpp;
        let c = build(&f).unwrap();
        assert_eq!(c.echo, "<think>\nlet me see 2+2\n</think>\n\nFinal answer:");
        let v: Value = serde_json::from_slice(&c.body).unwrap();
        assert_eq!(v["chat_template_kwargs"]["enable_thinking"], false);
        assert!(v.get("continue_final_message").is_none());
        assert_eq!(v["max_tokens"], 64);
    }

    #[test]
    fn completions_append_the_generated_text() {
        let m = Markers::default();
        let v: Value = serde_json::from_slice(
            &build(&forced(
                br#"{"prompt":"Q: 2+2?\n<think>\n"}"#,
                Endpoint::Completions,
                &m,
            ))
            .unwrap()
            .body,
        )
        .unwrap();
        assert_eq!(
            v["prompt"],
            "Q: 2+2?\n<think>\nlet me see 2+2\n</think>\n\nFinal answer:"
        );
        let v: Value = serde_json::from_slice(
            &build(&forced(br#"{"prompt":"Q"}"#, Endpoint::Completions, &m))
                .unwrap()
                .body,
        )
        .unwrap();
        assert_eq!(
            v["prompt"],
            "Q<think>\nlet me see 2+2\n</think>\n\nFinal answer:"
        );
    }

    #[test]
    fn what_cannot_be_continued_is_none() {
        let m = Markers::default();
        assert!(build(&forced(b"not json", Endpoint::Chat, &m)).is_none());
        assert!(build(&forced(br#"{"prompt":[1,2,3]}"#, Endpoint::Completions, &m)).is_none());
        assert!(build(&forced(br#"{"messages":"x"}"#, Endpoint::Chat, &m)).is_none());
    }
}
