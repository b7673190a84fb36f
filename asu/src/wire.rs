//! The few fields of OpenAI-compatible responses that measurement needs,
//! deserialized borrowed from the event bytes (no copies unless a string has
//! escapes). Unknown fields are skipped. See WIRE.md for which engine sends
//! which field.

use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;

/// One streamed event's JSON (`chat.completion.chunk`, `text_completion`, an
/// error object), or a whole non-streamed response.
#[derive(Debug, Deserialize)]
pub struct Chunk<'a> {
    #[serde(borrow, default)]
    pub choices: Option<Vec<Choice<'a>>>,
    #[serde(default)]
    pub usage: Option<Usage>,
    #[serde(borrow, default)]
    pub error: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub object: Option<Cow<'a, str>>,
}

#[derive(Debug, Deserialize)]
pub struct Choice<'a> {
    #[serde(default)]
    pub index: u64,
    /// Streamed chat.
    #[serde(borrow, default)]
    pub delta: Option<Message<'a>>,
    /// Non-streamed chat.
    #[serde(borrow, default)]
    pub message: Option<Message<'a>>,
    /// Text completions.
    #[serde(borrow, default)]
    pub text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub finish_reason: Option<Cow<'a, str>>,
}

#[derive(Debug, Deserialize)]
pub struct Message<'a> {
    #[serde(borrow, default)]
    pub content: Option<Cow<'a, str>>,
    /// vLLM >= 0.11 and OpenRouter.
    #[serde(borrow, default)]
    pub reasoning: Option<Cow<'a, str>>,
    /// DeepSeek API, SGLang, llama.cpp, vLLM < 0.16.
    #[serde(borrow, default)]
    pub reasoning_content: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub tool_calls: Option<&'a RawValue>,
}

impl<'a> Message<'a> {
    /// The reasoning text of this delta. A chunk may carry both field names
    /// for the same text (WIRE.md): count it once.
    pub fn reasoning_text(&self) -> Option<&str> {
        self.reasoning
            .as_deref()
            .or(self.reasoning_content.as_deref())
            .filter(|s| !s.is_empty())
    }

    /// True when the delta carries a tool call (visible output).
    pub fn has_tool_call(&self) -> bool {
        self.tool_calls.is_some_and(|raw| {
            let s = raw.get().trim();
            s != "null" && s != "[]"
        })
    }
}

/// `usage` as vLLM, SGLang and llama.cpp send it.
#[derive(Debug, Clone, Copy, Default, Deserialize, serde::Serialize, PartialEq, Eq)]
pub struct Usage {
    #[serde(default)]
    pub prompt_tokens: Option<u64>,
    #[serde(default)]
    pub completion_tokens: Option<u64>,
    #[serde(default, skip_serializing)]
    pub completion_tokens_details: Option<CompletionDetails>,
    /// SGLang reports reasoning tokens at the top level.
    #[serde(default, skip_serializing)]
    pub reasoning_tokens: Option<u64>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
pub struct CompletionDetails {
    #[serde(default)]
    pub reasoning_tokens: Option<u64>,
}

impl Usage {
    /// Reasoning tokens as the engine reported them, if it did.
    pub fn engine_reasoning_tokens(&self) -> Option<u64> {
        self.completion_tokens_details
            .and_then(|d| d.reasoning_tokens)
            .or(self.reasoning_tokens)
    }
}

impl Chunk<'_> {
    /// An error event: an `error` object or `"object": "error"`.
    pub fn is_error(&self) -> bool {
        self.error.is_some_and(|e| e.get().trim() != "null")
            || self.object.as_deref() == Some("error")
    }

    /// The final usage-only event (`"choices": []` with `usage`).
    pub fn is_usage_only(&self) -> bool {
        self.usage.is_some() && self.choices.as_ref().is_some_and(|c| c.is_empty())
    }
}
