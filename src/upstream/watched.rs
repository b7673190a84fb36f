//! An upstream response body watched for failure, the one place both paths
//! learn that an engine failed after its response head: the connection was
//! lost (a reset, a framing error), or nothing came for
//! `upstream_idle_timeout_secs`. [`Failure`] says which, and writes the
//! event that ends an event stream the client already has (one message per
//! failure, whichever path saw it).

use super::{BoxError, UpBody};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// How an upstream failed after its response head.
#[derive(Debug)]
pub enum Failure {
    /// The connection was lost, or the body was not valid HTTP framing.
    Reset(BoxError),
    /// Nothing from the upstream for this long.
    Idle(Duration),
}

impl Failure {
    /// The error type on the wire, and the record's outcome name.
    pub fn kind(&self) -> &'static str {
        match self {
            Failure::Reset(_) => "upstream_reset",
            Failure::Idle(_) => "upstream_idle",
        }
    }

    pub fn message(&self) -> String {
        match self {
            Failure::Reset(e) => format!("the upstream connection was lost mid-stream: {e}"),
            Failure::Idle(d) => format!("the upstream sent nothing for {} s", d.as_secs_f64()),
        }
    }

    /// The event that ends an event stream whose upstream failed (vLLM's
    /// shape, which OpenAI clients raise as an API error), after a blank
    /// line if an event was open.
    pub fn event(&self, open_event: bool) -> Bytes {
        let ev = serde_json::json!({"error": {
            "message": self.message(), "type": self.kind(), "param": null, "code": 502
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

    /// The failure as the error of a body that is cut (not an event stream).
    pub fn into_error(self) -> BoxError {
        match self {
            Failure::Reset(e) => e,
            Failure::Idle(_) => self.message().into(),
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message())
    }
}

impl std::error::Error for Failure {}

/// The idle timer. It is re-armed only when it fires, from the last data's
/// time: one clock read per frame, no timer work per frame.
struct Idle {
    after: Duration,
    sleep: Pin<Box<Sleep>>,
    last: Instant,
}

pin_project! {
    /// An upstream body whose errors are [`Failure`]s, and which fails with
    /// [`Failure::Idle`] after `idle` without a frame.
    pub struct Watched<B = UpBody> {
        #[pin]
        inner: B,
        idle: Option<Idle>,
    }
}

impl<B> Watched<B> {
    pub fn new(inner: B, idle: Option<Duration>) -> Self {
        let idle = idle.map(|after| Idle {
            after,
            sleep: Box::pin(tokio::time::sleep(after)),
            last: Instant::now(),
        });
        Self { inner, idle }
    }
}

impl<B: Body<Data = Bytes, Error = BoxError>> Body for Watched<B> {
    type Data = Bytes;
    type Error = Failure;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Failure>>> {
        let mut this = self.project();
        loop {
            match this.inner.as_mut().poll_frame(cx) {
                Poll::Ready(Some(Ok(f))) => {
                    if let Some(idle) = this.idle.as_mut() {
                        idle.last = Instant::now();
                    }
                    return Poll::Ready(Some(Ok(f)));
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(Failure::Reset(e)))),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => {}
            }
            let Some(idle) = this.idle.as_mut() else {
                return Poll::Pending;
            };
            ready!(idle.sleep.as_mut().poll(cx));
            let quiet = idle.last.elapsed();
            if quiet < idle.after {
                idle.sleep.as_mut().reset(idle.last + idle.after);
                continue;
            }
            // fired once; a caller that polls on gets the same answer
            idle.sleep.as_mut().reset(Instant::now() + idle.after);
            idle.last = Instant::now();
            return Poll::Ready(Some(Err(Failure::Idle(idle.after))));
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[test]
    fn one_event_per_failure_in_vllms_shape() {
        let e = Failure::Idle(Duration::from_secs(30)).event(true);
        let s = String::from_utf8(e.to_vec()).unwrap();
        assert!(s.starts_with("\n\ndata: {\"error\":"), "{s}");
        assert!(s.ends_with("}\n\n"));
        let v: serde_json::Value =
            serde_json::from_str(s.trim().trim_start_matches("data: ")).unwrap();
        assert_eq!(v["error"]["type"], "upstream_idle");
        assert_eq!(v["error"]["message"], "the upstream sent nothing for 30 s");
        assert_eq!(v["error"]["code"], 502);
        let r = Failure::Reset("gone".into());
        assert_eq!(r.kind(), "upstream_reset");
        assert!(!r.event(false).starts_with(b"\n"));
    }

    /// A body that never sends anything.
    struct Silent;

    impl Body for Silent {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Pending
        }
    }

    #[tokio::test(start_paused = true)]
    async fn silence_fails_after_the_idle_timeout_not_before() {
        let mut w = Watched::new(Silent, Some(Duration::from_secs(5)));
        let t0 = Instant::now();
        match w.frame().await {
            Some(Err(Failure::Idle(d))) => assert_eq!(d, Duration::from_secs(5)),
            other => panic!("{other:?}"),
        }
        assert_eq!(t0.elapsed(), Duration::from_secs(5));
        // without a timeout it waits on
        let mut w = Watched::new(Silent, None);
        let waited = tokio::time::timeout(Duration::from_secs(3600), w.frame()).await;
        assert!(waited.is_err());
    }
}
