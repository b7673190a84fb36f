//! The body a non-streamed client gets from a managed request: assembled
//! from the events the client would have been sent, in the shape of the
//! engine's own non-streamed responses.

use crate::body::strip::NOT_MOVED;
use crate::config::Flavor;
use crate::context::request::Endpoint;
use bytes::Bytes;
use serde_json::{json, Map, Value};

/// Builds a non-streamed response from the client's view of the stream, in
/// the shape the engine gives its own non-streamed responses (vLLM 0.32's
/// and llama.cpp's are known; other engines get the OpenAI shape).
#[derive(Debug, Default)]
pub struct Assembler {
    flavor: Flavor,
    first: Option<Map<String, Value>>,
    /// Top-level fields of the terminal chunk and the usage event beyond
    /// the identity (`system_fingerprint`, llama.cpp's `timings`).
    extra: Map<String, Value>,
    /// Choice-level fields of the terminal chunk (vLLM's `stop_reason`).
    choice_extra: Map<String, Value>,
    /// The reasoning field the engine used (`reasoning` or
    /// `reasoning_content`).
    reasoning_key: Option<String>,
    reasoning: String,
    content: String,
    tool_calls: Vec<Value>,
    finish_reason: Value,
    usage: Option<Value>,
    error: Option<Value>,
}

impl Assembler {
    pub fn new(flavor: Flavor) -> Self {
        Self {
            flavor,
            ..Self::default()
        }
    }

    /// Take one SSE event's `data`.
    pub fn push(&mut self, data: &[u8]) {
        let Ok(Value::Object(mut o)) = serde_json::from_slice::<Value>(data) else {
            return;
        };
        if o.contains_key("error") {
            self.error = Some(Value::Object(o));
            return;
        }
        if let Some(u) = o.remove("usage").filter(|u| !u.is_null()) {
            self.usage = Some(u);
        }
        let choices = match o.remove("choices") {
            Some(Value::Array(c)) => c,
            _ => Vec::new(),
        };
        let terminal = choices
            .iter()
            .any(|c| c.get("finish_reason").is_some_and(|f| !f.is_null()));
        if terminal || choices.is_empty() {
            for (k, v) in &o {
                if !NOT_MOVED.contains(&k.as_str()) {
                    self.extra.insert(k.clone(), v.clone());
                }
            }
        }
        if self.first.is_none() && !choices.is_empty() {
            self.first = Some(o);
        }
        for c in choices {
            if c.get("index").and_then(Value::as_u64).unwrap_or(0) != 0 {
                continue;
            }
            if let Some(f) = c.get("finish_reason").filter(|f| !f.is_null()) {
                self.finish_reason = f.clone();
                if let Some(co) = c.as_object() {
                    for (k, v) in co {
                        if !["index", "delta", "text", "logprobs", "finish_reason"]
                            .contains(&k.as_str())
                        {
                            self.choice_extra.insert(k.clone(), v.clone());
                        }
                    }
                }
            }
            if let Some(t) = c.get("text").and_then(Value::as_str) {
                self.content.push_str(t);
            }
            let Some(d) = c.get("delta").and_then(Value::as_object) else {
                continue;
            };
            for k in ["reasoning_content", "reasoning"] {
                if let Some(s) = d.get(k).and_then(Value::as_str) {
                    self.reasoning_key.get_or_insert_with(|| k.to_string());
                    self.reasoning.push_str(s);
                }
            }
            if let Some(s) = d.get("content").and_then(Value::as_str) {
                self.content.push_str(s);
            }
            for tc in d
                .get("tool_calls")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                self.merge_tool_call(tc);
            }
        }
    }

    fn merge_tool_call(&mut self, tc: &Value) {
        let i = tc.get("index").and_then(Value::as_u64).unwrap_or(0) as usize;
        if i > 127 {
            return;
        }
        while self.tool_calls.len() <= i {
            self.tool_calls.push(
                json!({"id": null, "type": "function", "function": {"name": "", "arguments": ""}}),
            );
        }
        let slot = &mut self.tool_calls[i];
        if let Some(id) = tc.get("id").filter(|v| !v.is_null()) {
            slot["id"] = id.clone();
        }
        if let Some(f) = tc.get("function") {
            for k in ["name", "arguments"] {
                if let Some(s) = f.get(k).and_then(Value::as_str) {
                    let cur = slot["function"][k].as_str().unwrap_or("").to_string();
                    slot["function"][k] = Value::String(cur + s);
                }
            }
        }
    }

    /// The JSON body, or the error event's body if the stream carried one.
    pub fn finish(self, endpoint: Endpoint) -> Bytes {
        if let Some(e) = self.error {
            return Bytes::from(serde_json::to_vec(&e).unwrap_or_default());
        }
        if endpoint == Endpoint::Chat && self.tool_calls.is_empty() {
            match self.flavor {
                Flavor::Vllm => return self.vllm_chat(),
                Flavor::Llamacpp => return self.llamacpp_chat(),
                Flavor::Sglang | Flavor::Openai => {}
            }
        }
        let mut o = self.first.unwrap_or_default();
        let choice = match endpoint {
            Endpoint::Chat => {
                o.insert("object".into(), "chat.completion".into());
                let mut msg = Map::new();
                msg.insert("role".into(), "assistant".into());
                msg.insert("content".into(), Value::String(self.content));
                if let Some(k) = self.reasoning_key {
                    msg.insert(k, Value::String(self.reasoning));
                }
                if !self.tool_calls.is_empty() {
                    msg.insert("tool_calls".into(), Value::Array(self.tool_calls));
                }
                json!({"index": 0, "message": msg, "logprobs": null, "finish_reason": self.finish_reason})
            }
            _ => {
                o.insert("object".into(), "text_completion".into());
                json!({"index": 0, "text": self.content, "logprobs": null, "finish_reason": self.finish_reason})
            }
        };
        o.insert("choices".into(), json!([choice]));
        if let Some(u) = self.usage {
            o.insert("usage".into(), u);
        }
        Bytes::from(serde_json::to_vec(&Value::Object(o)).unwrap_or_default())
    }
}

/// `o[k]`, or null.
fn field(o: Option<&Map<String, Value>>, k: &str) -> Value {
    o.and_then(|o| o.get(k)).cloned().unwrap_or(Value::Null)
}

impl Assembler {
    fn ident(&self, k: &str) -> Value {
        field(self.first.as_ref(), k)
    }

    fn usage_field(&self, k: &str) -> Value {
        field(self.usage.as_ref().and_then(Value::as_object), k)
    }

    fn extra_or_null(&self, k: &str) -> Value {
        field(Some(&self.extra), k)
    }

    /// vLLM 0.32's `chat.completion` (its non-streamed chat response,
    /// field for field; the conformance suite holds it to the engine's).
    fn vllm_chat(self) -> Bytes {
        let choice_field = |k: &str| field(Some(&self.choice_extra), k);
        let mut msg = Map::new();
        msg.insert("role".into(), "assistant".into());
        msg.insert("content".into(), Value::String(self.content.clone()));
        for k in ["refusal", "annotations", "audio", "function_call"] {
            msg.insert(k.into(), Value::Null);
        }
        // present without a reasoning parser too, as null
        match &self.reasoning_key {
            Some(k) => msg.insert(k.clone(), Value::String(self.reasoning.clone())),
            None => msg.insert("reasoning".into(), Value::Null),
        };
        let choice = json!({
            "index": 0,
            "message": msg,
            "logprobs": null,
            "finish_reason": self.finish_reason,
            "stop_reason": choice_field("stop_reason"),
            "token_ids": null,
            "routed_experts": null,
        });
        let mut usage = Map::new();
        for k in [
            "prompt_tokens",
            "total_tokens",
            "completion_tokens",
            "prompt_tokens_details",
        ] {
            usage.insert(k.into(), self.usage_field(k));
        }
        usage.insert(
            "completion_tokens_details".into(),
            self.usage_field("completion_tokens_details"),
        );
        let mut o = Map::new();
        o.insert("id".into(), self.ident("id"));
        o.insert("object".into(), "chat.completion".into());
        o.insert("created".into(), self.ident("created"));
        o.insert("model".into(), self.ident("model"));
        o.insert("choices".into(), json!([choice]));
        o.insert("service_tier".into(), Value::Null);
        o.insert(
            "system_fingerprint".into(),
            self.extra_or_null("system_fingerprint"),
        );
        o.insert("usage".into(), Value::Object(usage));
        for k in [
            "prompt_logprobs",
            "prompt_token_ids",
            "prompt_text",
            "kv_transfer_params",
            "ec_transfer_params",
            "metrics",
        ] {
            o.insert(k.into(), Value::Null);
        }
        Bytes::from(serde_json::to_vec(&Value::Object(o)).unwrap_or_default())
    }

    /// llama.cpp server's non-streamed chat response.
    fn llamacpp_chat(self) -> Bytes {
        let mut msg = Map::new();
        msg.insert("role".into(), "assistant".into());
        msg.insert("content".into(), Value::String(self.content.clone()));
        if let Some(k) = &self.reasoning_key {
            msg.insert(k.clone(), Value::String(self.reasoning.clone()));
        }
        let choice = json!({"finish_reason": self.finish_reason, "index": 0, "message": msg});
        let mut usage = Map::new();
        for k in [
            "completion_tokens",
            "prompt_tokens",
            "total_tokens",
            "prompt_tokens_details",
        ] {
            let v = self.usage_field(k);
            if !v.is_null() {
                usage.insert(k.into(), v);
            }
        }
        let mut o = Map::new();
        o.insert("choices".into(), json!([choice]));
        o.insert("created".into(), self.ident("created"));
        o.insert("model".into(), self.ident("model"));
        o.insert(
            "system_fingerprint".into(),
            self.ident("system_fingerprint"),
        );
        o.insert("object".into(), "chat.completion".into());
        o.insert("usage".into(), Value::Object(usage));
        o.insert("id".into(), self.ident("id"));
        if let Some(t) = self.extra.get("timings") {
            o.insert("timings".into(), t.clone());
        }
        Bytes::from(serde_json::to_vec(&Value::Object(o)).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::managed::events::test_support::{data, ident};

    #[test]
    fn assembles_a_chat_completion() {
        let mut a = Assembler::default();
        let id = ident();
        a.push(br#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":7,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#);
        a.push(
            br#"{"id":"chatcmpl-1","choices":[{"index":0,"delta":{"reasoning_content":"hmm "}}]}"#,
        );
        a.push(
            br#"{"id":"chatcmpl-1","choices":[{"index":0,"delta":{"reasoning_content":"ok"}}]}"#,
        );
        let fin = id.finish("length");
        a.push(data(&fin).to_string().as_bytes());
        a.push(br#"{"id":"chatcmpl-1","choices":[{"index":0,"delta":{"content":"42"},"finish_reason":"stop"}]}"#);
        a.push(br#"{"id":"chatcmpl-1","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":3,"total_tokens":4}}"#);
        let v: Value = serde_json::from_slice(&a.finish(Endpoint::Chat)).unwrap();
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["id"], "chatcmpl-1");
        assert_eq!(v["choices"][0]["message"]["reasoning_content"], "hmm ok");
        assert_eq!(v["choices"][0]["message"]["content"], "42");
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert_eq!(v["usage"]["total_tokens"], 4);
    }
}
