//! The response body wrapper: every data frame is observed (framed, split,
//! stamped) and passed on untouched; the request settles when the body ends
//! or is dropped.

use crate::proxy::context::RequestCtx;
use crate::proxy::upstream::{BoxError, UpBody};
use crate::record::Outcome;
use crate::stream::strip::UsageStripper;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use thinkgate_asu::Observer;

pin_project! {
    /// Wraps the upstream body; see the module docs.
    pub struct ObservedBody {
        #[pin]
        inner: UpBody,
        obs: Option<Observer>,
        ctx: Option<RequestCtx>,
        strip: Option<UsageStripper>,
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
    pub fn new(inner: UpBody, obs: Observer, ctx: RequestCtx, strip: bool) -> Self {
        Self {
            inner,
            obs: Some(obs),
            ctx: Some(ctx),
            strip: strip.then(UsageStripper::default),
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

impl Body for ObservedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        loop {
            match ready!(this.inner.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => {
                    let ended = this.inner.is_end_stream();
                    let frame = match frame.into_data() {
                        Ok(mut data) => {
                            if let (Some(obs), Some(ctx)) = (this.obs.as_mut(), this.ctx.as_mut()) {
                                let fed_before = obs.fed();
                                obs.feed(&data, ctx.elapsed_ns());
                                ctx.set_thinking(obs.in_thinking());
                                let s = obs.peek();
                                ctx.set_output_tokens(s.reasoning_chunks + s.visible_chunks);
                                if let Some(st) = this.strip.as_mut() {
                                    data = st.process(
                                        data,
                                        fed_before,
                                        obs.boundary(),
                                        obs.strip_ranges(),
                                    );
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
                Some(Err(e)) => {
                    settle(this.obs, this.ctx, Outcome::UpstreamReset);
                    return Poll::Ready(Some(Err(e)));
                }
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

fn join(a: Bytes, b: Bytes) -> Bytes {
    if b.is_empty() {
        return a;
    }
    let mut v = bytes::BytesMut::with_capacity(a.len() + b.len());
    v.extend_from_slice(&a);
    v.extend_from_slice(&b);
    v.freeze()
}
