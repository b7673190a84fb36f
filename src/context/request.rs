//! What the gateway reads from an inference request body, and the one
//! rewrite it may make: adding `stream_options.include_usage`.
//!
//! The rewrite is a byte splice at the right place, never a re-serialization,
//! so every other byte the client sent reaches the engine unchanged (number
//! formats, key order, escapes, white space).

use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use thinkgate_policies::ReasoningEffort;

/// Which inference API a request uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completions,
    /// The Responses API: typed events, usage always in
    /// `response.completed`; measured, never rewritten (see `manages`).
    Responses,
    Other,
}

impl Endpoint {
    pub fn classify(method: &http::Method, path: &str) -> Self {
        if method != http::Method::POST {
            return Endpoint::Other;
        }
        match path.trim_end_matches('/') {
            "/v1/chat/completions" => Endpoint::Chat,
            "/v1/completions" => Endpoint::Completions,
            "/v1/responses" => Endpoint::Responses,
            _ => Endpoint::Other,
        }
    }

    pub fn api(self) -> crate::metrics::Api {
        use crate::metrics::Api;
        match self {
            Endpoint::Chat => Api::Chat,
            Endpoint::Completions => Api::Completions,
            Endpoint::Responses => Api::Responses,
            Endpoint::Other => Api::Other,
        }
    }

    /// The gateway may add `stream_options.include_usage` (chat and text
    /// completions; a Responses stream always ends with its usage).
    pub fn takes_usage_injection(self) -> bool {
        matches!(self, Endpoint::Chat | Endpoint::Completions)
    }

    /// The managed path (budgets, deadlines, hedges) can rewrite and
    /// re-send this API's requests: chat and text completions. A Responses
    /// request is forwarded and measured; its budget is the engine's own
    /// where there is one (see `docs/stragglers.md`).
    pub fn manageable(self) -> bool {
        matches!(self, Endpoint::Chat | Endpoint::Completions)
    }

    pub fn is_inference(self) -> bool {
        self != Endpoint::Other
    }
}

/// Request fields the gateway uses (labels, records, later routing).
#[derive(Debug, Clone, Default)]
pub struct Features {
    pub model: Option<String>,
    pub stream: bool,
    pub include_usage: bool,
    /// `stream_options.continuous_usage_stats` (vLLM): usage on every chunk.
    pub continuous_usage: bool,
    pub n: u64,
    pub max_tokens: Option<u64>,
    /// The body parsed as the expected JSON object.
    pub parsed: bool,
    /// Bytes of prompt text (message contents, or the completion prompt).
    pub prompt_bytes: usize,
    /// Hash of the first `prefix_bytes` bytes of that text.
    pub prefix_hash: u64,
    /// Thinking is on: `chat_template_kwargs.enable_thinking`, else a
    /// reasoning effort other than `none`, else true.
    pub thinking: bool,
    /// `chat_template_kwargs.enable_thinking` as sent.
    pub enable_thinking: Option<bool>,
    /// `reasoning_effort` (chat) or `reasoning.effort` (Responses), when
    /// it is one of the known values.
    pub reasoning_effort: Option<ReasoningEffort>,
    /// `include_reasoning` as sent (vLLM: `false` keeps the thinking out of
    /// the response, not out of the generation).
    pub include_reasoning: Option<bool>,
    /// The OpenAI `user` field.
    pub user: Option<String>,
    /// Hash of the system (or developer) prompt, or of the Responses
    /// `instructions`: which application sent the request (0: none).
    pub system_hash: u64,
    /// Hash of the system prompt and the first user message: every turn of
    /// one conversation resends them, so it keys the session's history
    /// without any header.
    pub conversation_hash: u64,
    /// User messages in the request (1 for a first turn).
    pub turns: u32,
    /// Bytes of the last user message: the question being asked now.
    pub question_bytes: usize,
    /// The request offers tools.
    pub tools: bool,
}

#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(borrow, default, deserialize_with = "present")]
    stream_options: Option<&'a RawValue>,
    #[serde(default)]
    n: Option<u64>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_completion_tokens: Option<u64>,
    /// Responses API.
    #[serde(default)]
    max_output_tokens: Option<u64>,
    #[serde(borrow, default)]
    instructions: Option<&'a RawValue>,
    #[serde(borrow, default)]
    input: Option<&'a RawValue>,
    #[serde(borrow, default)]
    reasoning: Option<ReasoningHead<'a>>,
    #[serde(borrow, default)]
    reasoning_effort: Option<Cow<'a, str>>,
    #[serde(default)]
    include_reasoning: Option<bool>,
    #[serde(borrow, default)]
    messages: Option<Vec<MessageHead<'a>>>,
    #[serde(borrow, default)]
    prompt: Option<&'a RawValue>,
    #[serde(borrow, default)]
    user: Option<Cow<'a, str>>,
    #[serde(default)]
    chat_template_kwargs: Option<TemplateKwargs>,
    #[serde(borrow, default)]
    tools: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct MessageHead<'a> {
    #[serde(borrow, default)]
    role: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    content: Option<&'a RawValue>,
}

/// The Responses API's `reasoning` object.
#[derive(Deserialize)]
struct ReasoningHead<'a> {
    #[serde(borrow, default)]
    effort: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct TemplateKwargs {
    #[serde(default)]
    enable_thinking: Option<bool>,
}

/// FNV-1a over the prompt's first bytes (stable across replicas).
#[derive(Debug)]
struct PrefixHasher {
    h: u64,
    left: usize,
    bytes: usize,
}

impl PrefixHasher {
    fn new(limit: usize) -> Self {
        Self {
            h: 0xcbf2_9ce4_8422_2325,
            left: limit,
            bytes: 0,
        }
    }

    /// Feed a message's text.
    fn feed(&mut self, text: &str) {
        self.bytes += text.len();
        for b in text.as_bytes().iter().take(self.left) {
            self.h ^= u64::from(*b);
            self.h = self.h.wrapping_mul(0x0100_0000_01b3);
        }
        self.left = self.left.saturating_sub(text.len());
    }
}

/// A JSON value's text: a string's, or the raw JSON of anything else
/// (content parts). Borrowed unless the string has escapes.
fn text_of(raw: &RawValue) -> Cow<'_, str> {
    serde_json::from_str::<Cow<'_, str>>(raw.get()).unwrap_or(Cow::Borrowed(raw.get()))
}

/// Bytes of a message hashed to tell applications and conversations apart:
/// enough to separate system prompts, little enough to stay cheap.
const KEY_BYTES: usize = 256;

#[derive(Deserialize, Default)]
struct StreamOptions<'a> {
    #[serde(borrow, default, deserialize_with = "present")]
    include_usage: Option<&'a RawValue>,
    #[serde(default)]
    continuous_usage_stats: Option<bool>,
}

/// `Some(raw)` whenever the key is present, `null` included (a plain
/// `Option` would read `null` as absent, and the splice would then add a
/// second key).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

impl Features {
    /// Read the fields; a body that is not the expected JSON gives defaults
    /// (the engine will answer it with its own error, unchanged).
    pub fn parse(body: &[u8]) -> Self {
        Self::parse_with_prefix(body, 64)
    }

    /// As [`Features::parse`], hashing the first `prefix_bytes` of the prompt.
    pub fn parse_with_prefix(body: &[u8], prefix_bytes: usize) -> Self {
        let Ok(h) = serde_json::from_slice::<Head<'_>>(body) else {
            return Self::default();
        };
        let mut prefix = PrefixHasher::new(prefix_bytes);
        let mut system = PrefixHasher::new(KEY_BYTES);
        let mut conversation = PrefixHasher::new(KEY_BYTES);
        let (mut turns, mut question_bytes) = (0u32, 0usize);
        for m in h.messages.iter().flatten() {
            let Some(c) = m.content else { continue };
            let text = text_of(c);
            prefix.feed(&text);
            match m.role.as_deref() {
                Some("system" | "developer") => system.feed(&text),
                Some("user") => {
                    if turns == 0 {
                        conversation.feed(&text);
                    }
                    turns += 1;
                    question_bytes = text.len();
                }
                _ => {}
            }
        }
        if let Some(p) = h.prompt {
            let text = text_of(p);
            prefix.feed(&text);
            conversation.feed(&text);
            (turns, question_bytes) = (1, text.len());
        }
        if let Some(p) = h.instructions {
            let text = text_of(p);
            prefix.feed(&text);
            system.feed(&text);
        }
        if let Some(p) = h.input {
            let text = text_of(p);
            prefix.feed(&text);
            conversation.feed(&text);
            (turns, question_bytes) = (turns.max(1), text.len());
        }
        let system_hash = if system.bytes == 0 { 0 } else { system.h };
        let effort = h
            .reasoning_effort
            .as_deref()
            .or(h.reasoning.as_ref().and_then(|r| r.effort.as_deref()))
            .and_then(ReasoningEffort::parse);
        let enable_thinking = h.chat_template_kwargs.and_then(|k| k.enable_thinking);
        let so = h
            .stream_options
            .and_then(|r| serde_json::from_str::<StreamOptions<'_>>(r.get()).ok())
            .unwrap_or_default();
        Self {
            model: h.model.map(|m| m.chars().take(256).collect()),
            stream: h.stream.unwrap_or(false),
            include_usage: so.include_usage.is_some_and(|r| r.get() == "true"),
            continuous_usage: so.continuous_usage_stats.unwrap_or(false),
            n: h.n.unwrap_or(1),
            max_tokens: h
                .max_completion_tokens
                .or(h.max_tokens)
                .or(h.max_output_tokens),
            parsed: true,
            prompt_bytes: prefix.bytes,
            prefix_hash: prefix.h,
            thinking: enable_thinking.unwrap_or(effort != Some(ReasoningEffort::None)),
            enable_thinking,
            reasoning_effort: effort,
            include_reasoning: h.include_reasoning,
            user: h.user.map(|u| u.chars().take(256).collect()),
            system_hash,
            conversation_hash: conversation.h ^ system_hash.rotate_left(17),
            turns,
            question_bytes,
            tools: h
                .tools
                .is_some_and(|t| !matches!(t.get().trim(), "null" | "[]")),
        }
    }

    /// Whether usage should be injected into this request.
    pub fn wants_injection(&self) -> bool {
        // With continuous_usage_stats, turning include_usage on would add
        // usage to every chunk the client sees: leave such requests alone.
        self.parsed && self.stream && !self.include_usage && !self.continuous_usage
    }
}

/// Thinking tokens a difficulty hint stands for (`x-thinkgate-difficulty`:
/// `easy`, `medium`, `hard`, or a number of tokens).
pub fn difficulty_hint(v: &str) -> Option<f64> {
    match v.trim().to_ascii_lowercase().as_str() {
        "easy" => Some(300.0),
        "medium" => Some(1500.0),
        "hard" => Some(6000.0),
        n => n.parse::<f64>().ok().filter(|x| x.is_finite() && *x >= 0.0),
    }
}

/// What routing policies know about a request.
pub fn route_info(
    f: &Features,
    headers: &http::HeaderMap,
    session_header: &str,
) -> thinkgate_policies::RequestInfo {
    let h = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    thinkgate_policies::RequestInfo {
        model: f.model.clone(),
        prompt_bytes: f.prompt_bytes,
        prompt_tokens: (f.prompt_bytes / 4) as u64,
        max_tokens: f.max_tokens,
        thinking: f.thinking,
        reasoning_effort: f.reasoning_effort,
        include_reasoning: f.include_reasoning,
        session: h(session_header)
            .map(|s| s.chars().take(256).collect())
            .or_else(|| f.user.clone()),
        prefix_hash: f.prefix_hash,
        app: f.system_hash,
        conversation: f.conversation_hash,
        turns: f.turns,
        question_tokens: (f.question_bytes / 4) as u64,
        tools: f.tools,
        difficulty_hint: h("x-thinkgate-difficulty").and_then(difficulty_hint),
        priority: h("x-thinkgate-priority").and_then(|p| p.trim().parse().ok()),
        predicted_thinking: None,
    }
}

/// Offset of `inner` (a slice of `outer`) within `outer`.
fn offset_in(outer: &[u8], inner: &str) -> Option<usize> {
    let o = outer.as_ptr() as usize;
    let i = inner.as_ptr() as usize;
    (i >= o && i + inner.len() <= o + outer.len()).then(|| i - o)
}

fn splice(body: &[u8], at: usize, remove: usize, insert: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(body.len() + insert.len());
    out.extend_from_slice(&body[..at]);
    out.extend_from_slice(insert.as_bytes());
    out.extend_from_slice(&body[at + remove..]);
    out.freeze()
}

/// Insert `member` (`"key":value`) as the first member of the JSON object
/// that starts at `obj_start` (the `{`).
fn insert_member(body: &[u8], obj_start: usize, member: &str) -> Bytes {
    let after = obj_start + 1;
    let empty = body[after..].iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'}');
    let text = if empty {
        member.to_string()
    } else {
        format!("{member},")
    };
    splice(body, after, 0, &text)
}

/// Add `stream_options.include_usage: true` to a streamed request body.
/// Returns `None` when the body has a shape the splice does not handle (it is
/// then forwarded unchanged).
pub fn inject_include_usage(body: &Bytes) -> Option<Bytes> {
    let h: Head<'_> = serde_json::from_slice(body).ok()?;
    match h.stream_options {
        None => {
            let start = body.iter().position(|b| !b.is_ascii_whitespace())?;
            (body[start] == b'{')
                .then(|| insert_member(body, start, r#""stream_options":{"include_usage":true}"#))
        }
        Some(raw) => {
            let at = offset_in(body, raw.get())?;
            let text = raw.get();
            if text == "null" {
                return Some(splice(body, at, text.len(), r#"{"include_usage":true}"#));
            }
            if !text.starts_with('{') {
                return None;
            }
            let so: StreamOptions<'_> = serde_json::from_str(text).ok()?;
            match so.include_usage {
                None => Some(insert_member(body, at, r#""include_usage":true"#)),
                Some(v) if v.get() == "false" || v.get() == "null" => {
                    let vat = offset_in(body, v.get())?;
                    Some(splice(body, vat, v.get().len(), "true"))
                }
                Some(_) => None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What routing learns from: the application, the conversation across
    /// its turns, the question's size, tools.
    #[test]
    fn applications_conversations_and_turns() {
        let turn = |system: &str, first: &str, extra: &str| {
            let body = format!(
                r#"{{"model":"m","messages":[{{"role":"system","content":"{system}"}},{{"role":"user","content":"{first}"}}{extra}]}}"#
            );
            Features::parse(body.as_bytes())
        };
        let one = turn("You are a tutor.", "Compute 2 + 3.", "");
        let two = turn(
            "You are a tutor.",
            "Compute 2 + 3.",
            r#",{"role":"assistant","content":"5"},{"role":"user","content":"Now 7 * 8, please."}"#,
        );
        let other = turn("You are a tutor.", "Compute 9 + 9.", "");
        let app = turn("You are a calculator.", "Compute 2 + 3.", "");
        assert_eq!((one.turns, two.turns), (1, 2));
        assert_eq!(one.conversation_hash, two.conversation_hash);
        assert_ne!(one.conversation_hash, other.conversation_hash);
        assert_ne!(one.conversation_hash, app.conversation_hash);
        assert_eq!(one.system_hash, other.system_hash);
        assert_ne!(one.system_hash, app.system_hash);
        assert_ne!(one.system_hash, 0);
        assert_eq!(two.question_bytes, "Now 7 * 8, please.".len());
        assert!(!one.tools);
        let none = Features::parse(br#"{"messages":[{"role":"user","content":"hi"}],"tools":[]}"#);
        assert_eq!((none.system_hash, none.tools), (0, false));
        let tools = Features::parse(
            br#"{"messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function"}]}"#,
        );
        assert!(tools.tools);
        let responses =
            Features::parse(br#"{"instructions":"Be brief.","input":"Compute 2 + 3."}"#);
        assert_ne!(responses.system_hash, 0);
        assert_eq!((responses.turns, responses.question_bytes), (1, 14));
    }

    fn inject(s: &str) -> Option<String> {
        inject_include_usage(&Bytes::from(s.to_string()))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    }

    #[test]
    fn injects_without_touching_other_bytes() {
        let body = r#" {"model":"m", "temperature": 1.0e0, "stream":true,"x":"\u00e9"}"#;
        let out = inject(body).unwrap_or_default();
        assert_eq!(
            out,
            r#" {"stream_options":{"include_usage":true},"model":"m", "temperature": 1.0e0, "stream":true,"x":"\u00e9"}"#
        );
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        assert_eq!(v["stream_options"]["include_usage"], true);
    }

    #[test]
    fn injects_into_existing_options() {
        assert_eq!(
            inject(r#"{"stream":true,"stream_options":{}}"#).as_deref(),
            Some(r#"{"stream":true,"stream_options":{"include_usage":true}}"#)
        );
        assert_eq!(
            inject(r#"{"stream":true,"stream_options":{"include_usage": false}}"#).as_deref(),
            Some(r#"{"stream":true,"stream_options":{"include_usage": true}}"#)
        );
        assert_eq!(
            inject(r#"{"stream":true,"stream_options":null}"#).as_deref(),
            Some(r#"{"stream":true,"stream_options":{"include_usage":true}}"#)
        );
        assert_eq!(inject(r#"{"stream":true,"stream_options":[1]}"#), None);
        assert_eq!(inject("not json"), None);
    }

    #[test]
    fn features_decide_injection() {
        assert!(Features::parse(br#"{"model":"m","stream":true}"#).wants_injection());
        assert!(!Features::parse(br#"{"model":"m","stream":false}"#).wants_injection());
        assert!(
            !Features::parse(br#"{"stream":true,"stream_options":{"include_usage":true}}"#)
                .wants_injection()
        );
        assert!(!Features::parse(
            br#"{"stream":true,"stream_options":{"continuous_usage_stats":true}}"#
        )
        .wants_injection());
        assert!(!Features::parse(br#"{"stream":"yes"}"#).wants_injection());
        assert_eq!(
            Features::parse(br#"{"model":"m","max_tokens":7}"#).max_tokens,
            Some(7)
        );
    }
}
