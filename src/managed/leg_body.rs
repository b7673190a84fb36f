//! The first leg's request body: the client's, or rewritten when the
//! managed path needs more from the engine than the client asked for.

use crate::config::Flavor;
use bytes::Bytes;

/// The first leg's body for `backend`: a non-streamed client's request
/// streams upstream (with usage), a native budget is passed to engines that
/// enforce one, and usage on every chunk is asked for when `chunk_usage` is
/// on, and llama.cpp's `reasoning_control` when the gateway may end the
/// thinking natively (`native_end`). `None` when the body is not a JSON
/// object.
pub fn first_leg_body(
    original: &Bytes,
    client_streams: bool,
    native_budget: Option<u64>,
    flavor: Flavor,
    chunk_usage: bool,
    reasoning_control: bool,
) -> Option<Bytes> {
    let native_key = match flavor {
        Flavor::Vllm => Some("thinking_token_budget"),
        Flavor::Llamacpp => Some("thinking_budget_tokens"),
        Flavor::Sglang | Flavor::Openai => None,
    };
    let native = native_budget.zip(native_key);
    if client_streams && native.is_none() && !chunk_usage && !reasoning_control {
        return Some(original.clone());
    }
    let mut v: serde_json::Value = serde_json::from_slice(original).ok()?;
    let o = v.as_object_mut()?;
    if !client_streams {
        o.insert("stream".into(), true.into());
        o.insert(
            "stream_options".into(),
            serde_json::json!({"include_usage": true}),
        );
    }
    if chunk_usage {
        let so = o
            .entry("stream_options")
            .or_insert_with(|| serde_json::json!({}));
        if !so.is_object() {
            *so = serde_json::json!({});
        }
        if let Some(so) = so.as_object_mut() {
            so.insert("include_usage".into(), true.into());
            so.insert("continuous_usage_stats".into(), true.into());
        }
    }
    if let Some((b, k)) = native {
        o.insert(k.into(), b.into());
    }
    if reasoning_control {
        o.insert("reasoning_control".into(), true.into());
    }
    serde_json::to_vec(&v).ok().map(Bytes::from)
}
