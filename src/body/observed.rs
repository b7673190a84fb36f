//! The response body wrapper: every data frame is observed (framed, split,
//! stamped) and passed on untouched; the request settles when the body ends
//! or is dropped.
//!
//! When the upstream fails mid-body (a reset, a framing error, or no byte
//! for `upstream_idle_timeout_secs`), a successful SSE response ends cleanly
//! for the client: the open event is closed, an `error` event in vLLM's
//! shape follows (OpenAI clients raise it as an API error), and the HTTP
//! body ends properly. Other bodies are cut, which is their only honest
//! signal.

use crate::body::strip::UsageStripper;
use crate::context::RequestCtx;
use crate::record::Outcome;
use crate::upstream::{BoxError, UpBody};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use thinkgate_asu::Observer;
use tokio::time::Sleep;

/// Cuts a body whose upstream sends nothing for `after`. The timer is
/// re-armed only when it fires, from the last data's time: one clock read
/// per frame, no timer work per frame.
struct Idle {
    after: Duration,
    sleep: Pin<Box<Sleep>>,
    last_ns: u64,
}

pin_project! {
    /// Wraps the upstream body; see the module docs.
    #[project = Projected]
    pub struct ObservedBody {
        #[pin]
        inner: UpBody,
        obs: Option<Observer>,
        ctx: Option<RequestCtx>,
        strip: Option<UsageStripper>,
        // a 2xx SSE response: ended with an error event on upstream failure
        sse: bool,
        idle: Option<Idle>,
        // bounds how long terminal events wait for the usage event
        hold: Option<Pin<Box<Sleep>>>,
        ended: bool,
    }

    impl PinnedDrop for ObservedBody {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(mut ctx) = this.ctx.take() {
                // Dropped before the end: the client went away (hyper drops
                // the body), and with it the upstream request.
                let now = ctx.elapsed_ns();
                let summary = this.obs.take().map(|o| o.finish(now));
                ctx.settle(Outcome::ClientGone, summary);
            }
        }
    }
}

impl ObservedBody {
    /// `sse`: the response is a successful event stream, framed by the
    /// gateway (not by a `Content-Length` passed on), so it can end cleanly.
    /// `idle`: cut after this long without a byte from the upstream.
    pub fn new(
        inner: UpBody,
        obs: Observer,
        ctx: RequestCtx,
        strip: bool,
        sse: bool,
        idle: Option<Duration>,
    ) -> Self {
        let idle = idle.map(|after| Idle {
            after,
            sleep: Box::pin(tokio::time::sleep(after)),
            last_ns: ctx.elapsed_ns(),
        });
        Self {
            inner,
            obs: Some(obs),
            ctx: Some(ctx),
            strip: strip.then(UsageStripper::default),
            sse,
            idle,
            hold: None,
            ended: false,
        }
    }
}

/// The event that ends an SSE stream whose upstream failed (vLLM's shape),
/// after a blank line if an event was open.
pub fn upstream_lost(kind: &str, message: &str, open_event: bool) -> Bytes {
    let ev = serde_json::json!({"error": {
        "message": message, "type": kind, "param": null, "code": 502
    }});
    let mut out = Vec::with_capacity(160);
    if open_event {
        out.extend_from_slice(b"\n\n");
    }
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(ev.to_string().as_bytes());
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

enum Failure {
    Reset(BoxError),
    Idle(Duration),
}

fn settle(obs: &mut Option<Observer>, ctx: &mut Option<RequestCtx>, outcome: Outcome) {
    if let Some(mut c) = ctx.take() {
        let now = c.elapsed_ns();
        let summary = obs.take().map(|o| o.finish(now));
        c.settle(outcome, summary);
    }
}

impl Body for ObservedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        if *this.ended {
            return Poll::Ready(None);
        }
        loop {
            let polled = match this.inner.as_mut().poll_frame(cx) {
                Poll::Ready(p) => p,
                Poll::Pending => {
                    if let Some(st) = this.strip.as_mut().filter(|st| st.holding()) {
                        let hold = this.hold.get_or_insert_with(|| {
                            Box::pin(tokio::time::sleep(crate::body::strip::HOLD_FOR_USAGE))
                        });
                        if hold.as_mut().poll(cx).is_ready() {
                            *this.hold = None;
                            let out = st.release_held();
                            if !out.is_empty() {
                                return Poll::Ready(Some(Ok(Frame::data(out))));
                            }
                        }
                    } else {
                        *this.hold = None;
                    }
                    let Some(idle) = this.idle.as_mut() else {
                        return Poll::Pending;
                    };
                    ready!(idle.sleep.as_mut().poll(cx));
                    let now = this.ctx.as_ref().map_or(0, RequestCtx::elapsed_ns);
                    let quiet = Duration::from_nanos(now.saturating_sub(idle.last_ns));
                    if quiet < idle.after {
                        let at = tokio::time::Instant::now() + (idle.after - quiet);
                        idle.sleep.as_mut().reset(at);
                        continue;
                    }
                    let after = idle.after;
                    return fail(this, Failure::Idle(after));
                }
            };
            match polled {
                Some(Ok(frame)) => {
                    let ended = this.inner.is_end_stream();
                    let frame = match frame.into_data() {
                        Ok(mut data) => {
                            if let (Some(obs), Some(ctx)) = (this.obs.as_mut(), this.ctx.as_mut()) {
                                let fed_before = obs.fed();
                                let now = ctx.elapsed_ns();
                                if let Some(idle) = this.idle.as_mut() {
                                    idle.last_ns = now;
                                }
                                obs.feed(&data, now);
                                ctx.set_thinking(obs.in_thinking());
                                let s = obs.peek();
                                ctx.set_output_tokens(s.reasoning_chunks + s.visible_chunks);
                                if let Some(st) = this.strip.as_mut() {
                                    data = st.process(data, fed_before, obs);
                                    if ended {
                                        data = join(data, st.flush());
                                    }
                                }
                            }
                            Frame::data(data)
                        }
                        Err(other) => other,
                    };
                    if ended {
                        // hyper stops polling once the body says it is done:
                        // settle now, with this frame's time as t_done.
                        settle(this.obs, this.ctx, Outcome::Completed);
                    }
                    if !ended
                        && this.strip.is_some()
                        && frame.data_ref().is_some_and(Bytes::is_empty)
                    {
                        continue; // all of this chunk is held or stripped
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Some(Err(e)) => return fail(this, Failure::Reset(e)),
                None => {
                    let rest = this
                        .strip
                        .as_mut()
                        .map(UsageStripper::flush)
                        .unwrap_or_default();
                    settle(this.obs, this.ctx, Outcome::Completed);
                    if !rest.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(rest))));
                    }
                    return Poll::Ready(None);
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        if self.strip.is_some() {
            SizeHint::default()
        } else {
            self.inner.size_hint()
        }
    }
}

/// The upstream failed mid-body: settle, then end an SSE stream cleanly
/// with an error event, or cut any other body.
fn fail(this: Projected<'_>, why: Failure) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
    let (kind, message, outcome) = match &why {
        Failure::Reset(e) => (
            "upstream_reset",
            format!("the upstream connection was lost mid-stream: {e}"),
            Outcome::UpstreamReset,
        ),
        Failure::Idle(d) => (
            "upstream_idle",
            format!("the upstream sent nothing for {} s", d.as_secs_f64()),
            Outcome::UpstreamIdle,
        ),
    };
    // bytes held by the usage stripper were received: they go first
    let held = this
        .strip
        .as_mut()
        .map(UsageStripper::flush)
        .unwrap_or_default();
    let open_event = this.obs.as_ref().is_some_and(|o| o.boundary() < o.fed());
    // `[DONE]` already passed: the stream was whole for the client, and
    // only the transport's end failed; it ends cleanly and counts as done
    let done = *this.sse && this.obs.as_ref().is_some_and(|o| o.peek().done_marker);
    settle(
        this.obs,
        this.ctx,
        if done { Outcome::Completed } else { outcome },
    );
    *this.ended = true;
    if done {
        return Poll::Ready((!held.is_empty()).then(|| Ok(Frame::data(held))));
    }
    if *this.sse {
        let tail = upstream_lost(kind, &message, open_event);
        return Poll::Ready(Some(Ok(Frame::data(join(held, tail)))));
    }
    let err: BoxError = match why {
        Failure::Reset(e) => e,
        Failure::Idle(_) => message.into(),
    };
    Poll::Ready(Some(Err(err)))
}

fn join(a: Bytes, b: Bytes) -> Bytes {
    if b.is_empty() {
        return a;
    }
    let mut v = bytes::BytesMut::with_capacity(a.len() + b.len());
    v.extend_from_slice(&a);
    v.extend_from_slice(&b);
    v.freeze()
}
