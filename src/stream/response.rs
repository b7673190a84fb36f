//! The body of every response the proxy sends: the observed upstream body
//! (the plain path), a body the gateway wrote whole (errors, assembled
//! non-streamed answers), or the channel a managed request's task writes.

use crate::stream::body::ObservedBody;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::mpsc;

// The large variant is the common one (every proxied response); boxing it
// would add an allocation per request to save a move.
#[allow(clippy::large_enum_variant)]
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
    type Error = crate::proxy::upstream::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, crate::proxy::upstream::BoxError>>> {
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
    type Error = crate::proxy::upstream::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, crate::proxy::upstream::BoxError>>> {
        self.rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}
