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
    /// A Responses API event's `type` (`response.output_text.delta`, ...),
    /// for engines that send no `event:` line.
    #[serde(borrow, default, rename = "type")]
    pub kind: Option<Cow<'a, str>>,
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
    // (serialized back when present: the managed path hands the engine's
    // usage to the view that settles the record as a value, and a reasoning
    // count lost there leaves thinking to be counted from events, which an
    // engine that merged tokens makes short)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_tokens_details: Option<CompletionDetails>,
    /// SGLang reports reasoning tokens at the top level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_tokens: Option<u64>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, serde::Serialize, PartialEq, Eq)]
pub struct CompletionDetails {
    #[serde(default, skip_serializing_if = "Option::is_none")]
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

/// One event of a Responses API stream (`/v1/responses`): WIRE.md,
/// "Responses API streaming". Only what measurement reads.
#[derive(Debug, Deserialize)]
pub struct ResponsesEvent<'a> {
    #[serde(borrow, default, rename = "type")]
    pub kind: Option<Cow<'a, str>>,
    /// Text of a `*.delta` event.
    #[serde(borrow, default)]
    pub delta: Option<Cow<'a, str>>,
    /// The response object of `response.created` / `.completed` /
    /// `.incomplete` / `.failed`.
    #[serde(borrow, default)]
    pub response: Option<ResponseObject<'a>>,
}

/// A Responses API response object: a non-streamed body, or the `response`
/// of a lifecycle event.
#[derive(Debug, Deserialize)]
pub struct ResponseObject<'a> {
    #[serde(borrow, default)]
    pub id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub model: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub object: Option<Cow<'a, str>>,
    /// `completed`, `incomplete`, `failed`, `in_progress`, ...
    #[serde(borrow, default)]
    pub status: Option<Cow<'a, str>>,
    #[serde(default)]
    pub usage: Option<ResponsesUsage>,
    #[serde(borrow, default)]
    pub output: Option<Vec<OutputItem<'a>>>,
    #[serde(borrow, default)]
    pub incomplete_details: Option<IncompleteDetails<'a>>,
    #[serde(borrow, default)]
    pub error: Option<&'a RawValue>,
}

#[derive(Debug, Deserialize)]
pub struct IncompleteDetails<'a> {
    #[serde(borrow, default)]
    pub reason: Option<Cow<'a, str>>,
}

/// One item of a response's `output`: `reasoning` (its `content` and
/// `summary` parts), `message` (`output_text` / `refusal` parts), or a call
/// (`function_call` and the other tool calls).
#[derive(Debug, Deserialize)]
pub struct OutputItem<'a> {
    #[serde(borrow, default, rename = "type")]
    pub kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub content: Option<Vec<ContentPart<'a>>>,
    #[serde(borrow, default)]
    pub summary: Option<Vec<ContentPart<'a>>>,
}

#[derive(Debug, Deserialize)]
pub struct ContentPart<'a> {
    #[serde(borrow, default)]
    pub text: Option<Cow<'a, str>>,
    /// A `refusal` part's text.
    #[serde(borrow, default)]
    pub refusal: Option<Cow<'a, str>>,
}

/// A Responses API `usage`.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct ResponsesUsage {
    #[serde(default)]
    pub input_tokens: Option<u64>,
    #[serde(default)]
    pub output_tokens: Option<u64>,
    #[serde(default)]
    pub output_tokens_details: Option<CompletionDetails>,
}

impl From<ResponsesUsage> for Usage {
    fn from(u: ResponsesUsage) -> Self {
        Usage {
            prompt_tokens: u.input_tokens,
            completion_tokens: u.output_tokens,
            completion_tokens_details: u.output_tokens_details,
            reasoning_tokens: None,
        }
    }
}

impl ResponseObject<'_> {
    /// The status as a chat `finish_reason`, so one vocabulary serves every
    /// API: `completed` is `stop`, `incomplete` for `max_output_tokens` is
    /// `length`, any other incomplete reason is itself, `failed` is `error`.
    pub fn finish_reason(&self) -> Option<String> {
        let r = match self.status.as_deref()? {
            "completed" => "stop",
            "failed" => "error",
            "incomplete" => match self
                .incomplete_details
                .as_ref()
                .and_then(|d| d.reason.as_deref())
            {
                Some("max_output_tokens") | None => "length",
                Some(other) => other,
            },
            _ => return None,
        };
        Some(r.chars().take(32).collect())
    }

    /// The response failed, or carries an error object.
    pub fn is_error(&self) -> bool {
        self.status.as_deref() == Some("failed")
            || self.error.is_some_and(|e| e.get().trim() != "null")
    }
}
