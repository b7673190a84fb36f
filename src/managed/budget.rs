//! Thinking budgets exact in tokens on engines that say how many tokens each
//! event carries.
//!
//! Counting events lets tokens past a budget whenever an engine puts several
//! tokens in one event: vLLM does now and then under load, and always with
//! `--stream-interval N`. vLLM reports cumulative usage on every chunk when
//! asked (`stream_options.continuous_usage_stats`), with the reasoning tokens
//! among them when it has a reasoning parser. A budgeted first leg to vLLM
//! asks for it; the leg counts thinking from it, takes it out of the events
//! again before the client sees them (unless the client asked for it), and
//! cuts the one event that crosses the budget at the token with the engine's
//! own tokenizer (`/tokenize`, then `/detokenize`). Only that event is
//! rebuilt; every other event keeps the engine's bytes, less the usage field.

use crate::fleet::Backend;
use crate::upstream::UpstreamClient;
use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Either, Full};
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use serde_json::Value;
use std::time::Duration;

/// The tokenizer round trips of a cut take at most this long; past it the
/// event goes whole (and the count says so).
const TOKENIZER_TIMEOUT: Duration = Duration::from_secs(2);

/// The longest event counted (a read may end inside one, whose start then
/// waits for its end).
pub const MAX_EVENT: usize = 1 << 20;

/// The cumulative usage one chunk carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkUsage {
    pub completion: u64,
    /// Tokens between the thinking markers (vLLM with a reasoning parser).
    pub reasoning: Option<u64>,
}

#[derive(Deserialize)]
struct WithUsage {
    usage: Option<UsageFields>,
}

#[derive(Deserialize)]
struct UsageFields {
    completion_tokens: Option<u64>,
    completion_tokens_details: Option<Details>,
}

#[derive(Deserialize)]
struct Details {
    reasoning_tokens: Option<u64>,
}

/// The JSON of the `data:` line of one SSE event, and where it sits.
fn json_span(event: &[u8]) -> Option<std::ops::Range<usize>> {
    let start = memchr::memchr(b'{', event)?;
    let end = memchr::memrchr(b'}', event)? + 1;
    let head = &event[..start];
    (start < end && head.starts_with(b"data:") && !head.contains(&b'\n')).then_some(start..end)
}

/// The usage one event carries, if it is a chunk with usage.
pub fn chunk_usage(event: &[u8]) -> Option<ChunkUsage> {
    let span = json_span(event)?;
    let u = serde_json::from_slice::<WithUsage>(&event[span])
        .ok()?
        .usage?;
    Some(ChunkUsage {
        completion: u.completion_tokens?,
        reasoning: u.completion_tokens_details.and_then(|d| d.reasoning_tokens),
    })
}

/// An object's members in order, values as the engine wrote them.
struct Members<'a>(Vec<(String, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for Members<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Members<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut m: M) -> Result<Members<'a>, M::Error> {
                let mut out = Vec::new();
                while let Some(kv) = m.next_entry::<String, &'de RawValue>()? {
                    out.push(kv);
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// `event` without its top-level `usage` member, every other byte kept;
/// `None` when it has none. Events without choices (the usage event
/// itself) are left alone: whether they reach the client is the stripper's
/// call.
fn without_usage(event: &[u8]) -> Option<Vec<u8>> {
    let span = json_span(event)?;
    let json = &event[span.clone()];
    // cheap test first: nearly every event has it, but not all
    memchr::memmem::find(json, b"\"usage\"")?;
    let Members(members) = serde_json::from_slice(json).ok()?;
    let choices = members.iter().find(|(k, _)| k == "choices")?.1.get();
    if choices.trim() == "[]" || !members.iter().any(|(k, _)| k == "usage") {
        return None;
    }
    let mut out = Vec::with_capacity(event.len());
    out.extend_from_slice(&event[..span.start]);
    out.push(b'{');
    let mut first = true;
    for (k, v) in members.iter().filter(|(k, _)| k != "usage") {
        if !first {
            out.push(b',');
        }
        first = false;
        out.extend_from_slice(serde_json::to_string(k).ok()?.as_bytes());
        out.push(b':');
        out.extend_from_slice(v.get().as_bytes());
    }
    out.push(b'}');
    out.extend_from_slice(&event[span.end..]);
    Some(out)
}

/// `bytes` (complete events) with the per-chunk usage taken out.
pub fn strip_chunk_usage(bytes: Bytes) -> Bytes {
    if memchr::memmem::find(&bytes, b"\"usage\"").is_none() {
        return bytes;
    }
    let mut out = BytesMut::with_capacity(bytes.len());
    for piece in super::pieces::events(&bytes) {
        match without_usage(&piece) {
            Some(v) => out.extend_from_slice(&v),
            None => out.extend_from_slice(&piece),
        }
    }
    out.freeze()
}

/// The thinking one event carries in choice 0, read before the observer
/// sees the event (a cut must reach the observer as the client gets it).
pub struct EventThinking {
    /// The field that carries it.
    field: &'static str,
    /// The field's text before the thinking: a written open marker and
    /// what precedes it (inline thinking only).
    lead: String,
    /// The thinking text.
    pub thinking: String,
    /// The event also ends the thinking: the close marker, or visible text
    /// beside it. vLLM puts the end of a thinking and the start of the
    /// answer in one event when it merges tokens.
    pub closes: bool,
}

impl EventThinking {
    /// The field's text before the thinking.
    pub fn lead(&self) -> &str {
        &self.lead
    }
}

/// The thinking `event` carries, if any. `open` and `close` are the
/// thinking markers; `inline_thinking` says the stream's visible text has
/// not started (inline text is thinking until the close marker).
pub fn event_thinking(
    event: &[u8],
    open: &str,
    close: &str,
    inline_thinking: bool,
) -> Option<EventThinking> {
    let v: Value = serde_json::from_slice(&event[json_span(event)?]).ok()?;
    let c = v.get("choices")?.get(0)?;
    let text_of = |d: &Value, k: &str| {
        d.get(k)
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .map(str::to_string)
    };
    let (field, text) = match c.get("delta") {
        Some(d) => {
            for k in ["reasoning", "reasoning_content"] {
                if let Some(t) = text_of(d, k) {
                    return Some(EventThinking {
                        field: if k == "reasoning" {
                            "reasoning"
                        } else {
                            "reasoning_content"
                        },
                        lead: String::new(),
                        thinking: t,
                        closes: text_of(d, "content").is_some(),
                    });
                }
            }
            ("content", text_of(d, "content")?)
        }
        None => ("text", text_of(c, "text")?),
    };
    let (lead, after) = match text.find(open) {
        Some(i) => (text[..i + open.len()].to_string(), &text[i + open.len()..]),
        None if inline_thinking => (String::new(), &text[..]),
        None => return None,
    };
    let (thinking, closes) = match after.find(close) {
        Some(i) => (after[..i].to_string(), true),
        None => (after.to_string(), false),
    };
    Some(EventThinking {
        field,
        lead,
        thinking,
        closes,
    })
}

/// Thinking markers written out in an event (each is one token).
pub fn markers_in(event: &[u8], markers: &[&str]) -> u64 {
    markers
        .iter()
        .map(|m| memchr::memmem::find_iter(event, m.as_bytes()).count() as u64)
        .sum()
}

/// `event` cut after the first `keep` of its thinking tokens `ids`
/// (`ids` may be empty when `keep` is 0): the thinking text cut, whatever
/// the event carried after the thinking (the close marker, the start of
/// the answer, a finish reason) gone, and its usage less `dropped`
/// completion tokens and `dropped_thinking` reasoning tokens. `None` when
/// the engine's tokenizer cannot say where the cut is (no endpoint, text
/// that does not round-trip, a timeout): the event then goes whole.
#[expect(clippy::too_many_arguments, reason = "one call site, all distinct")]
pub async fn cut(
    client: &UpstreamClient,
    backend: &Backend,
    model: Option<&str>,
    event: &[u8],
    et: &EventThinking,
    ids: &[u64],
    keep: u64,
    dropped: (u64, u64),
) -> Option<Bytes> {
    let span = json_span(event)?;
    let mut v: Value = serde_json::from_slice(&event[span.clone()]).ok()?;
    let kept = if keep == 0 {
        String::new()
    } else {
        let kept = detokenize(client, backend, model, ids.get(..keep as usize)?).await?;
        et.thinking.starts_with(&kept).then_some(kept)?
    };
    let o = v.as_object_mut()?;
    if let Some(u) = o.get_mut("usage") {
        less_usage(u, dropped.0, dropped.1);
    }
    let c = o.get_mut("choices")?.get_mut(0)?.as_object_mut()?;
    let text = Value::String(format!("{}{kept}", et.lead));
    match c.get_mut("delta").and_then(Value::as_object_mut) {
        Some(d) => {
            d.insert(et.field.to_string(), text);
            if et.closes && et.field != "content" {
                d.shift_remove("content");
            }
        }
        None => {
            c.insert("text".to_string(), text);
        }
    }
    if c.get("finish_reason").is_some_and(|f| !f.is_null()) {
        c.insert("finish_reason".to_string(), Value::Null);
    }
    let mut out = Vec::with_capacity(event.len());
    out.extend_from_slice(&event[..span.start]);
    serde_json::to_writer(&mut out, &v).ok()?;
    out.extend_from_slice(&event[span.end..]);
    Some(Bytes::from(out))
}

/// Usage less `completion` tokens, `thinking` of them reasoning tokens,
/// that were cut from the event.
fn less_usage(u: &mut Value, completion: u64, thinking: u64) {
    for k in ["completion_tokens", "total_tokens"] {
        if let Some(x) = u.get_mut(k) {
            if let Some(t) = x.as_u64() {
                *x = t.saturating_sub(completion).into();
            }
        }
    }
    if let Some(x) = u
        .get_mut("completion_tokens_details")
        .and_then(|d| d.get_mut("reasoning_tokens"))
    {
        if let Some(t) = x.as_u64() {
            *x = t.saturating_sub(thinking).into();
        }
    }
}

async fn post(
    client: &UpstreamClient,
    backend: &Backend,
    path: &'static str,
    body: &Value,
) -> Option<Value> {
    let uri = backend
        .upstream
        .uri_for(Some(&http::uri::PathAndQuery::from_static(path)))
        .ok()?;
    let req = http::Request::post(uri)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Either::Left(Full::new(Bytes::from(
            serde_json::to_vec(body).ok()?,
        ))))
        .ok()?;
    let call = async {
        let resp = client.request(req).await.ok()?;
        if !resp.status().is_success() {
            return None;
        }
        let b = resp.into_body().collect().await.ok()?.to_bytes();
        serde_json::from_slice::<Value>(&b).ok()
    };
    tokio::time::timeout(TOKENIZER_TIMEOUT, call).await.ok()?
}

/// `text` in the engine's tokens.
pub async fn tokenize(
    client: &UpstreamClient,
    backend: &Backend,
    model: Option<&str>,
    text: &str,
) -> Option<Vec<u64>> {
    let body = serde_json::json!({"model": model, "prompt": text, "add_special_tokens": false});
    let v = post(client, backend, "/tokenize", &body).await?;
    v.get("tokens")?
        .as_array()?
        .iter()
        .map(Value::as_u64)
        .collect()
}

async fn detokenize(
    client: &UpstreamClient,
    backend: &Backend,
    model: Option<&str>,
    ids: &[u64],
) -> Option<String> {
    let body = serde_json::json!({"model": model, "tokens": ids});
    let v = post(client, backend, "/detokenize", &body).await?;
    v.get("prompt")?.as_str().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIRST: &[u8] = br#"data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"tiny","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}],"usage":{"prompt_tokens":10,"total_tokens":10,"completion_tokens":0,"completion_tokens_details":null},"prompt_token_ids":null,"prompt_text":null}

"#;
    const MID: &[u8] = br#"data: {"id":"c","choices":[{"index":0,"delta":{"reasoning":" a b"}}],"usage":{"prompt_tokens":10,"total_tokens":14,"completion_tokens":4,"completion_tokens_details":{"reasoning_tokens":3}}}

"#;
    const USAGE_ONLY: &[u8] =
        br#"data: {"id":"c","choices":[],"usage":{"prompt_tokens":10,"completion_tokens":4}}

"#;

    #[test]
    fn reads_cumulative_usage() {
        assert_eq!(
            chunk_usage(MID),
            Some(ChunkUsage {
                completion: 4,
                reasoning: Some(3)
            })
        );
        assert_eq!(chunk_usage(FIRST).map(|u| u.reasoning), Some(None));
        assert_eq!(chunk_usage(b"data: [DONE]\n\n"), None);
    }

    #[test]
    fn usage_leaves_every_other_byte_where_it_was() {
        let all = [FIRST, MID, USAGE_ONLY, b"data: [DONE]\n\n"].concat();
        let out = strip_chunk_usage(Bytes::from(all));
        let want = [
            &br#"data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"tiny","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}],"prompt_token_ids":null,"prompt_text":null}

"#[..],
            br#"data: {"id":"c","choices":[{"index":0,"delta":{"reasoning":" a b"}}]}

"#,
            USAGE_ONLY,
            b"data: [DONE]\n\n",
        ]
        .concat();
        assert_eq!(
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&want)
        );
    }

    #[test]
    fn events_without_usage_pass_as_they_are() {
        let e = Bytes::from_static(
            b"data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\n: ping\n\n",
        );
        assert_eq!(strip_chunk_usage(e.clone()), e);
    }

    #[test]
    fn counts_written_markers() {
        assert_eq!(
            markers_in(br#"{"content":"<think> a"}"#, &["<think>", "</think>"]),
            1
        );
        assert_eq!(
            markers_in(br#"{"content":" a"}"#, &["<think>", "</think>"]),
            0
        );
    }
}
