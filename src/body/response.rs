//! The body of every response the proxy sends: the observed upstream body
//! (the plain path), a body the gateway wrote whole (errors, assembled
//! non-streamed answers), or the channel a managed request's task writes.

use crate::body::observed::ObservedBody;
use crate::context::{headers, RequestCtx};
use crate::error::GatewayError;
use crate::fleet::Fleet;
use crate::state::Shared;
use crate::upstream::UpBody;
use bytes::Bytes;
use http::Response;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use thinkgate_asu::{BodyKind, Observer};
use tokio::sync::mpsc;

/// The gateway's own answer to a request it could not forward: the error's
/// status and OpenAI-style body; the request is settled with it. Every
/// phase's error reaches the client through here.
pub fn error_response(ctx: &mut RequestCtx, err: GatewayError) -> Response<ResponseBody> {
    ctx.fail(&err);
    err.to_response().map(ResponseBody::Full)
}

/// The response tail of both paths for an upstream response passed through
/// as it is (the plain path; the managed path for an error or a body that
/// is not an event stream): the client's head (`context::headers`), and the
/// body observed as it passes. `injected`: the gateway added
/// `include_usage`, so the usage event is kept from the client.
pub fn observed(
    shared: &Shared,
    fleet: &Fleet,
    mut ctx: RequestCtx,
    resp: Response<UpBody>,
    injected: bool,
) -> Response<ResponseBody> {
    if ctx.t_upstream_ns.is_none() {
        ctx.t_upstream_ns = Some(ctx.elapsed_ns());
    }
    ctx.status = resp.status().as_u16();
    let (mut parts, body) = resp.into_parts();
    headers::client_head(&mut parts.headers, &ctx, &shared.cfg, fleet);
    let kind = if ctx.endpoint.is_inference() {
        let ct = parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        BodyKind::from_content_type(ct)
    } else {
        BodyKind::Opaque
    };
    let sse_ok = kind == BodyKind::Sse && parts.status.is_success();
    let strip = injected && sse_ok;
    if strip {
        parts.headers.remove(http::header::CONTENT_LENGTH);
    }
    let cfg = if strip {
        &shared.observer_strip
    } else {
        &shared.observer
    };
    // strict passthrough never adds a byte, and a length-framed response
    // cannot take one: there a failure stays a cut
    let clean_end = sse_ok
        && !shared.cfg.passthrough_strict
        && !parts.headers.contains_key(http::header::CONTENT_LENGTH);
    let obs = Observer::new(Arc::clone(cfg), kind);
    let idle = shared.cfg.idle_timeout();
    let body = ObservedBody::new(body, obs, ctx, strip, clean_end, idle);
    Response::from_parts(parts, ResponseBody::Observed(body))
}

// The large variant is the common one (every proxied response); boxing it
// would add an allocation per request to save a move.
#[expect(
    clippy::large_enum_variant,
    reason = "the large variant is the common one: boxing it costs an allocation per request"
)]
pub enum ResponseBody {
    Observed(ObservedBody),
    Full(Full<Bytes>),
    Channel(ChannelBody),
}

impl From<Full<Bytes>> for ResponseBody {
    fn from(b: Full<Bytes>) -> Self {
        ResponseBody::Full(b)
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = crate::upstream::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, crate::upstream::BoxError>>> {
        match self.get_mut() {
            ResponseBody::Observed(b) => Pin::new(b).poll_frame(cx),
            ResponseBody::Full(b) => Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(|never| match never {}))),
            ResponseBody::Channel(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Observed(b) => b.is_end_stream(),
            ResponseBody::Full(b) => b.is_end_stream(),
            ResponseBody::Channel(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Observed(b) => b.size_hint(),
            ResponseBody::Full(b) => b.size_hint(),
            ResponseBody::Channel(_) => SizeHint::default(),
        }
    }
}

/// Chunks a managed request's task sends; the end of the channel is the end
/// of the body. Dropping it (the client went away) makes the task's sends
/// fail, and the task drops its upstream legs.
pub struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
}

impl ChannelBody {
    /// A body and the sender that feeds it (`depth` chunks in flight: the
    /// client's read pace reaches the upstream).
    pub fn new(depth: usize) -> (mpsc::Sender<Bytes>, Self) {
        let (tx, rx) = mpsc::channel(depth);
        (tx, Self { rx })
    }
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = crate::upstream::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, crate::upstream::BoxError>>> {
        self.rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}
