//! Ending the thinking inside the running stream, where the engine can:
//! llama.cpp serves `POST /v1/chat/completions/control` with
//! `{"id": <chatcmpl id>, "action": "reasoning_end"}` for a request sent
//! with `reasoning_control: true` (WIRE.md, "Native thinking budgets"). The
//! engine then closes the thinking in its sampler and answers in the same
//! stream: no second request, no prefill of the thinking again.
//!
//! The call is asked, then verified: the client sees the thinking up to the
//! cut (events carrying more thinking, generated while the call was on its
//! way, are kept from it), and the stream must leave its thinking within
//! `GRACE` and `GRACE_TOKENS`. A call that comes too late (the engine
//! already finished) fails like any other. If the call fails (an engine without the
//! control endpoint answers 404) or the thinking goes on, the continuation
//! takes over from the cut, as if the native way had not been tried.

use super::clock::sleep_opt;
use super::forced::Cut;
use super::leg::{Leg, Step};
use super::view::View;
use super::Managed;
use crate::fleet::Backend;
use crate::record::Outcome;
use crate::straggler::action::{Action, ForcedWay, Trigger};
use crate::upstream::UpstreamClient;
use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full};
use std::time::Duration;

/// The control call's time limit.
const CALL_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the thinking may go on after the call succeeded.
const GRACE: Duration = Duration::from_secs(2);
/// How many more thinking events may come after the call succeeded (a
/// fast engine thinks on while the call travels: the tiny test model makes
/// 16,000 tokens a second).
const GRACE_TOKENS: u64 = 1024;

/// What became of the attempt.
pub(super) enum NativeEnd {
    /// The thinking closed: the leg goes on streaming the answer.
    Ended,
    /// Not ended: answer through the continuation, from this cut.
    Refused(Cut),
    /// The stream ended, failed, or the client left while waiting.
    Over(Outcome),
    /// The hard deadline passed while waiting.
    Deadline,
}

/// Ask `leg`'s engine to end the thinking and wait until it has.
pub(super) async fn try_end(
    m: &mut Managed,
    leg: &mut Leg,
    view: &mut View,
    trigger: Trigger,
    deadline: Option<tokio::time::Instant>,
) -> NativeEnd {
    let cut = Cut::of(leg);
    let Some(id) = leg.ident.as_ref().and_then(|i| i.id()).map(str::to_owned) else {
        return NativeEnd::Refused(cut);
    };
    if let Err(why) = call(&m.shared.client, &leg.backend, &id).await {
        tracing::debug!(request = %m.ctx.id, %why, "native thinking end refused; continuing instead");
        return NativeEnd::Refused(cut);
    }
    leg.force_budget = None;
    leg.stop_on_loop = false;
    leg.suppress_thinking = true;
    let grace = tokio::time::Instant::now() + GRACE;
    let ended = loop {
        tokio::select! {
            biased;
            _ = view.closed() => return NativeEnd::Over(Outcome::ClientGone),
            _ = sleep_opt(deadline), if deadline.is_some() => return NativeEnd::Deadline,
            _ = tokio::time::sleep_until(grace) => break false,
            s = leg.step() => match s {
                Step::Bytes(b) => {
                    if view.emit(b).await.is_err() {
                        return NativeEnd::Over(Outcome::ClientGone);
                    }
                    if !leg.obs.still_thinking() {
                        break true;
                    }
                    if leg.suppressed > GRACE_TOKENS {
                        break false;
                    }
                }
                // the stream ended while thinking (its length, say): what
                // the engine sent is the answer; the first leg's end path
                // (usage, `[DONE]`) handles it
                Step::End(rest) => {
                    leg.pending = Some(Step::End(rest));
                    break true;
                }
                Step::Failed(f) => {
                    leg.pending = Some(Step::Failed(f));
                    break true;
                }
            }
        }
    };
    leg.suppress_thinking = false;
    if !ended {
        tracing::debug!(request = %m.ctx.id, suppressed = leg.suppressed, "thinking went on after the native end; continuing instead");
        return NativeEnd::Refused(cut);
    }
    m.ctx.set_thinking(false);
    // the engine thought on while the call travelled: its tokens count
    // (one per event on llama.cpp), though the client never saw them
    view.forced_thinking = Some(cut.tokens + leg.suppressed);
    m.ctx.act(Action::ForcedAnswer {
        trigger,
        thinking_tokens: cut.tokens,
        way: ForcedWay::Native,
    });
    NativeEnd::Ended
}

/// `POST /v1/chat/completions/control` `reasoning_end` for response `id`.
async fn call(client: &UpstreamClient, backend: &Backend, id: &str) -> Result<(), String> {
    let uri = backend
        .upstream
        .uri_for(Some(&http::uri::PathAndQuery::from_static(
            "/v1/chat/completions/control",
        )))
        .map_err(|e| e.to_string())?;
    let body = serde_json::json!({"id": id, "action": "reasoning_end"});
    let req = http::Request::post(uri)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Either::Left(Full::new(Bytes::from(body.to_string()))))
        .map_err(|e| e.to_string())?;
    let exchange = async {
        let resp = client.request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let b = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        // llama.cpp answers 200 with `{"success": false, ...}` for an id it
        // does not run
        let ok = serde_json::from_slice::<serde_json::Value>(&b)
            .ok()
            .and_then(|v| v.get("success").and_then(serde_json::Value::as_bool));
        match (status.is_success(), ok) {
            (true, Some(true)) => Ok(()),
            _ => Err(format!(
                "control answered {status}: {}",
                String::from_utf8_lossy(&b[..b.len().min(200)])
            )),
        }
    };
    tokio::time::timeout(CALL_TIMEOUT, exchange)
        .await
        .map_err(|_| "control call timed out".to_string())?
}
