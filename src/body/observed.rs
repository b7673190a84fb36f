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
use crate::upstream::watched::{Failure, Watched};
use crate::upstream::{BoxError, UpBody};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use thinkgate_asu::Observer;
use tokio::time::Sleep;

pin_project! {
    /// Wraps the upstream body; see the module docs.
    #[project = Projected]
    pub struct ObservedBody<B = UpBody> {
        #[pin]
        inner: Watched<B>,
        obs: Option<Observer>,
        ctx: Option<RequestCtx>,
        strip: Option<UsageStripper>,
        // a 2xx SSE response: ended with an error event on upstream failure
        sse: bool,
        // bounds how long terminal events wait for the usage event
        hold: Option<Pin<Box<Sleep>>>,
        ended: bool,
    }

    impl<B> PinnedDrop for ObservedBody<B> {
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

impl<B> ObservedBody<B> {
    /// `sse`: the response is a successful event stream, framed by the
    /// gateway (not by a `Content-Length` passed on), so it can end cleanly.
    /// `idle`: cut after this long without a byte from the upstream.
    pub fn new(
        inner: B,
        obs: Observer,
        ctx: RequestCtx,
        strip: bool,
        sse: bool,
        idle: Option<Duration>,
    ) -> Self {
        Self {
            inner: Watched::new(inner, idle),
            obs: Some(obs),
            ctx: Some(ctx),
            strip: strip.then(UsageStripper::default),
            sse,
            hold: None,
            ended: false,
        }
    }
}

fn settle(obs: &mut Option<Observer>, ctx: &mut Option<RequestCtx>, outcome: Outcome) {
    if let Some(mut c) = ctx.take() {
        let now = c.elapsed_ns();
        let summary = obs.take().map(|o| o.finish(now));
        c.settle(outcome, summary);
    }
}

impl<B: Body<Data = Bytes, Error = BoxError>> Body for ObservedBody<B> {
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
                        let hold = this
                            .hold
                            .get_or_insert_with(|| Box::pin(tokio::time::sleep(st.hold_for())));
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
                    // (`Watched` ends the wait when the upstream is idle)
                    return Poll::Pending;
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
                                obs.feed(&data, now);
                                ctx.set_thinking(obs.in_thinking());
                                ctx.set_output(obs.peek());
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
                Some(Err(failure)) => return fail(this, failure),
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
fn fail<B>(this: Projected<'_, B>, why: Failure) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
    let outcome = Outcome::of(&why);
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
        let tail = why.event(open_event);
        return Poll::Ready(Some(Ok(Frame::data(join(held, tail)))));
    }
    Poll::Ready(Some(Err(why.into_error())))
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

#[cfg(test)]
mod tests {
    //! The observed body settles its request exactly once, whichever way
    //! the body ends: at its end, on an upstream failure (lost or idle), or
    //! when dropped; `[DONE]` then a failed transport end is a whole stream.

    use super::*;
    use crate::config::{BackendConfig, Config};
    use crate::context::request::Endpoint;
    use crate::record::{Recorder, RequestRecord};
    use crate::state::Shared;
    use http_body_util::BodyExt;
    use std::sync::Arc;
    use thinkgate_asu::BodyKind;
    use tokio::sync::mpsc;

    /// An upstream body the test writes: frames through a channel, the end
    /// when the sender is dropped.
    struct Script(mpsc::UnboundedReceiver<Result<Bytes, BoxError>>);

    impl Body for Script {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            self.0.poll_recv(cx).map(|f| f.map(|r| r.map(Frame::data)))
        }
    }

    type Tx = mpsc::UnboundedSender<Result<Bytes, BoxError>>;

    fn body(idle: Option<Duration>) -> (ObservedBody<Script>, Tx, mpsc::Receiver<RequestRecord>) {
        let cfg = Config {
            backends: vec![BackendConfig {
                url: "http://127.0.0.1:9".into(),
                weight: 1,
                pool: "default".into(),
                models: vec![],
                flavor: Default::default(),
            }],
            ..Config::default()
        };
        let (recorder, records) = Recorder::channel(16);
        let shared = Arc::new(Shared::new(cfg, recorder).unwrap());
        let ctx = RequestCtx::new(
            Arc::clone(&shared),
            std::time::Instant::now(),
            "req-1".into(),
            &http::Method::POST,
            "/v1/chat/completions",
            Endpoint::Chat,
        );
        let obs = Observer::new(Arc::clone(&shared.observer), BodyKind::Sse);
        let (tx, rx) = mpsc::unbounded_channel();
        (
            ObservedBody::new(Script(rx), obs, ctx, false, true, idle),
            tx,
            records,
        )
    }

    const CHUNK: &[u8] = b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\n";

    /// Everything the client reads, to the end.
    async fn read_all(b: &mut ObservedBody<Script>) -> (Vec<u8>, Option<String>) {
        let mut out = Vec::new();
        while let Some(f) = b.frame().await {
            match f {
                Ok(f) => out.extend_from_slice(&f.into_data().unwrap_or_default()),
                Err(e) => return (out, Some(e.to_string())),
            }
        }
        (out, None)
    }

    /// The records settled, once the body is gone.
    fn settled(mut records: mpsc::Receiver<RequestRecord>) -> Vec<Outcome> {
        let mut out = Vec::new();
        while let Ok(r) = records.try_recv() {
            out.push(r.outcome);
        }
        out
    }

    #[tokio::test]
    async fn settles_once_at_the_end() {
        let (mut b, tx, records) = body(None);
        tx.send(Ok(Bytes::from_static(CHUNK))).unwrap();
        tx.send(Ok(Bytes::from_static(b"data: [DONE]\n\n")))
            .unwrap();
        drop(tx);
        let (got, err) = read_all(&mut b).await;
        assert_eq!(err, None);
        assert!(got.ends_with(b"data: [DONE]\n\n"));
        assert!(b.frame().await.is_none(), "ended stays ended");
        drop(b);
        assert_eq!(settled(records), [Outcome::Completed]);
    }

    #[tokio::test]
    async fn a_lost_upstream_ends_the_stream_with_an_error_event_and_settles_once() {
        let (mut b, tx, records) = body(None);
        tx.send(Ok(Bytes::from_static(CHUNK))).unwrap();
        tx.send(Err("connection reset".into())).unwrap();
        let (got, err) = read_all(&mut b).await;
        assert_eq!(err, None, "an event stream ends cleanly");
        let text = String::from_utf8(got).unwrap();
        assert!(text.contains("\"type\":\"upstream_reset\""), "{text}");
        assert!(text.contains("connection reset"), "{text}");
        drop(b);
        drop(tx);
        assert_eq!(settled(records), [Outcome::UpstreamReset]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_upstream_ends_the_stream_after_the_timeout_and_settles_once() {
        let (mut b, tx, records) = body(Some(Duration::from_secs(30)));
        tx.send(Ok(Bytes::from_static(CHUNK))).unwrap();
        let t0 = tokio::time::Instant::now();
        let (got, err) = read_all(&mut b).await;
        assert_eq!(err, None);
        assert_eq!(t0.elapsed(), Duration::from_secs(30));
        let text = String::from_utf8(got).unwrap();
        assert!(
            text.contains("the upstream sent nothing for 30 s"),
            "{text}"
        );
        drop(b);
        drop(tx);
        assert_eq!(settled(records), [Outcome::UpstreamIdle]);
    }

    #[tokio::test]
    async fn a_body_dropped_before_its_end_settles_as_client_gone() {
        let (mut b, tx, records) = body(None);
        tx.send(Ok(Bytes::from_static(CHUNK))).unwrap();
        assert!(b.frame().await.is_some());
        drop(b);
        drop(tx);
        assert_eq!(settled(records), [Outcome::ClientGone]);
    }

    #[tokio::test]
    async fn done_then_a_failed_transport_end_is_a_whole_stream() {
        let (mut b, tx, records) = body(None);
        tx.send(Ok(Bytes::from_static(CHUNK))).unwrap();
        tx.send(Ok(Bytes::from_static(b"data: [DONE]\n\n")))
            .unwrap();
        tx.send(Err("reset after the end".into())).unwrap();
        let (got, err) = read_all(&mut b).await;
        assert_eq!(err, None);
        assert!(
            got.ends_with(b"data: [DONE]\n\n"),
            "no error event after [DONE]"
        );
        drop(b);
        drop(tx);
        assert_eq!(settled(records), [Outcome::Completed]);
    }
}
