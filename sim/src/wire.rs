//! Response bytes as each engine sends them (see `shared/WIRE.md`): chunk
//! JSON, field names per flavour and reasoning mode, usage, `[DONE]`, errors.

use crate::config::{Flavor, ReasoningMode};
use bytes::{BufMut, BytesMut};
use std::io::Write;

/// Which API the request used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    Chat,
    Completions,
}

/// Where a token's text goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    Reasoning,
    Content,
}

/// Per-request formatting state.
#[derive(Debug, Clone)]
pub struct Render {
    pub flavor: Flavor,
    pub api: Api,
    pub id: String,
    pub created: u64,
    pub model: String,
    /// Name of the reasoning delta field.
    pub reasoning_field: &'static str,
    /// Whether a reasoning parser is "on" (usage reports reasoning tokens).
    pub parser_on: bool,
    pub continuous_usage: bool,
}

impl Render {
    pub fn new(
        flavor: Flavor,
        mode: ReasoningMode,
        api: Api,
        id_seed: u64,
        created: u64,
        model: &str,
        continuous_usage: bool,
    ) -> Self {
        let reasoning_field = match (flavor, mode) {
            (Flavor::Vllm, ReasoningMode::Field) => "reasoning",
            _ => "reasoning_content",
        };
        let prefix = match api {
            Api::Chat => "chatcmpl-",
            Api::Completions => "cmpl-",
        };
        Self {
            flavor,
            api,
            id: format!("{prefix}{id_seed:016x}"),
            created,
            model: model.to_string(),
            reasoning_field,
            parser_on: matches!(mode, ReasoningMode::Field | ReasoningMode::FieldLegacy)
                && api == Api::Chat,
            continuous_usage,
        }
    }

    fn head(&self, buf: &mut BytesMut) {
        let object = match self.api {
            Api::Chat => "chat.completion.chunk",
            Api::Completions => "text_completion",
        };
        buf.put_slice(b"data: {\"id\":\"");
        buf.put_slice(self.id.as_bytes());
        let _ = write!(
            buf.writer(),
            "\",\"object\":\"{object}\",\"created\":{},\"model\":",
            self.created
        );
        json_str(buf, &self.model);
        buf.put_slice(b",\"choices\":[");
    }

    fn tail(&self, buf: &mut BytesMut, usage: Option<Usage>) {
        buf.put_slice(b"]");
        if self.continuous_usage {
            if let Some(u) = usage {
                buf.put_slice(b",\"usage\":");
                self.usage_json(buf, u);
            }
        }
        if self.flavor == Flavor::Sglang && !self.continuous_usage {
            buf.put_slice(b",\"usage\":null");
        }
        buf.put_slice(b"}\n\n");
    }

    /// The first chunk of a chat choice: `{"role":"assistant","content":""}`.
    pub fn role_chunk(&self, buf: &mut BytesMut, choice: u32, usage: Option<Usage>) {
        if self.api != Api::Chat {
            return;
        }
        self.head(buf);
        let _ = write!(buf.writer(), "{{\"index\":{choice},\"delta\":{{\"role\":\"assistant\",\"content\":\"\"}},\"logprobs\":null,\"finish_reason\":null}}");
        self.tail(buf, usage);
    }

    /// One token (or a finish without text when `text` is empty and
    /// `finish` is set).
    pub fn token_chunk(
        &self,
        buf: &mut BytesMut,
        choice: u32,
        channel: Channel,
        text: &str,
        finish: Option<&str>,
        usage: Option<Usage>,
    ) {
        self.head(buf);
        let _ = write!(buf.writer(), "{{\"index\":{choice},");
        match self.api {
            Api::Chat => {
                buf.put_slice(b"\"delta\":{");
                if !text.is_empty() {
                    match channel {
                        Channel::Reasoning => {
                            let _ = write!(buf.writer(), "\"{}\":", self.reasoning_field);
                        }
                        Channel::Content => buf.put_slice(b"\"content\":"),
                    }
                    json_str(buf, text);
                }
                buf.put_slice(b"},");
            }
            Api::Completions => {
                buf.put_slice(b"\"text\":");
                json_str(buf, text);
                buf.put_slice(b",");
            }
        }
        buf.put_slice(b"\"logprobs\":null,\"finish_reason\":");
        match finish {
            Some(f) => {
                json_str(buf, f);
                if self.flavor == Flavor::Vllm {
                    buf.put_slice(b",\"stop_reason\":null");
                }
            }
            None => buf.put_slice(b"null"),
        }
        buf.put_slice(b"}");
        self.tail(buf, usage);
    }

    /// The usage-only final chunk (`"choices": []`).
    pub fn usage_chunk(&self, buf: &mut BytesMut, usage: Usage) {
        self.head(buf);
        buf.put_slice(b"],\"usage\":");
        self.usage_json(buf, usage);
        if self.flavor == Flavor::Llamacpp {
            let _ = write!(
                buf.writer(),
                ",\"timings\":{{\"prompt_n\":{},\"predicted_n\":{}}}",
                usage.prompt,
                usage.completion
            );
        }
        buf.put_slice(b"}\n\n");
    }

    pub fn done(buf: &mut BytesMut) {
        buf.put_slice(b"data: [DONE]\n\n");
    }

    fn usage_json(&self, buf: &mut BytesMut, u: Usage) {
        let _ = write!(
            buf.writer(),
            "{{\"prompt_tokens\":{},\"total_tokens\":{},\"completion_tokens\":{}",
            u.prompt,
            u.prompt + u.completion,
            u.completion
        );
        if self.parser_on {
            match self.flavor {
                Flavor::Vllm => {
                    let _ = write!(
                        buf.writer(),
                        ",\"completion_tokens_details\":{{\"reasoning_tokens\":{}}}",
                        u.reasoning
                    );
                }
                Flavor::Sglang => {
                    let _ = write!(buf.writer(), ",\"reasoning_tokens\":{}", u.reasoning);
                }
                Flavor::Llamacpp => {}
            }
        }
        buf.put_slice(b"}");
    }

    pub fn usage_value(&self, u: Usage) -> serde_json::Value {
        let mut buf = BytesMut::new();
        self.usage_json(&mut buf, u);
        serde_json::from_slice(&buf).unwrap_or(serde_json::Value::Null)
    }
}

/// Token counts of a request so far.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub prompt: u64,
    pub completion: u64,
    pub reasoning: u64,
}

fn json_str(buf: &mut BytesMut, s: &str) {
    let _ = serde_json::to_writer(buf.writer(), s);
}

/// An error body as the flavour sends it.
pub fn error_body(
    flavor: Flavor,
    status: u16,
    kind: &str,
    message: &str,
    param: Option<&str>,
) -> String {
    match flavor {
        Flavor::Llamacpp => serde_json::json!({
            "error": {"code": status, "message": message, "type": "invalid_request_error"}
        }),
        _ => serde_json::json!({
            "error": {"message": message, "type": kind, "param": param, "code": status}
        }),
    }
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vllm_chunks_parse_and_name_fields() {
        let r = Render::new(
            Flavor::Vllm,
            ReasoningMode::Field,
            Api::Chat,
            7,
            1,
            "m",
            false,
        );
        let mut b = BytesMut::new();
        r.role_chunk(&mut b, 0, None);
        r.token_chunk(&mut b, 0, Channel::Reasoning, "Let \"me\"", None, None);
        r.token_chunk(&mut b, 0, Channel::Content, "4", Some("stop"), None);
        r.usage_chunk(
            &mut b,
            Usage {
                prompt: 3,
                completion: 2,
                reasoning: 1,
            },
        );
        Render::done(&mut b);
        let text = String::from_utf8_lossy(&b).into_owned();
        let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
        assert_eq!(events.len(), 5);
        for e in &events[..4] {
            let v: serde_json::Value =
                serde_json::from_str(e.trim_start_matches("data: ")).unwrap_or_default();
            assert_eq!(v["id"], "chatcmpl-0000000000000007");
        }
        assert!(events[1].contains(r#""delta":{"reasoning":"Let \"me\""}"#));
        assert!(events[2].contains(r#""finish_reason":"stop","stop_reason":null"#));
        assert!(events[3].contains(r#""choices":[],"usage":{"prompt_tokens":3,"total_tokens":5,"completion_tokens":2,"completion_tokens_details":{"reasoning_tokens":1}}"#));
        assert_eq!(events[4], "data: [DONE]");
    }

    #[test]
    fn legacy_and_other_flavours_use_reasoning_content() {
        for (f, m) in [
            (Flavor::Vllm, ReasoningMode::FieldLegacy),
            (Flavor::Sglang, ReasoningMode::Field),
            (Flavor::Llamacpp, ReasoningMode::Field),
        ] {
            let r = Render::new(f, m, Api::Chat, 1, 1, "m", false);
            assert_eq!(r.reasoning_field, "reasoning_content");
        }
    }
}
