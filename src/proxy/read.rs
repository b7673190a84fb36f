//! Phase 3: reading the request. Inference bodies are read whole (they are
//! small and bounded) to learn the model and stream flags, and to inject
//! usage; every other body streams through untouched.

use crate::context::request::{self, Features};
use crate::context::RequestCtx;
use crate::error::GatewayError;
use crate::state::Shared;
use crate::upstream::UpstreamBody;
use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use std::time::Duration;

/// A request as read.
pub(super) struct Inbound {
    pub parts: http::request::Parts,
    pub features: Features,
    /// The body the client sent (inference requests; empty otherwise).
    pub original: Bytes,
    /// The body as it goes upstream (usage injected).
    pub sent: Bytes,
    pub body: UpstreamBody,
    /// The gateway added `stream_options.include_usage`.
    pub injected: bool,
}

pub(super) async fn request(
    shared: &Shared,
    ctx: &mut RequestCtx,
    parts: http::request::Parts,
    body: Incoming,
) -> Result<Inbound, GatewayError> {
    if !ctx.endpoint.is_inference() {
        return Ok(Inbound {
            parts,
            features: Features::default(),
            original: Bytes::new(),
            sent: Bytes::new(),
            body: Either::Right(body),
            injected: false,
        });
    }
    let original = read_body(body, &shared.cfg).await?;
    let features = Features::parse_with_prefix(&original, shared.cfg.prefix_bytes);
    let injection = (shared.cfg.injects_usage()
        && ctx.endpoint.takes_usage_injection()
        && features.wants_injection())
    .then(|| request::inject_include_usage(&original))
    .flatten();
    let injected = injection.is_some();
    let sent = injection.unwrap_or_else(|| original.clone());
    ctx.set_features(features.clone());
    if injected {
        ctx.note_usage_injected();
    }
    Ok(Inbound {
        parts,
        features,
        original,
        body: Either::Left(Full::new(sent.clone())),
        sent,
        injected,
    })
}

/// An inference body, whole, within the size limit and the body timeout.
/// A body refused for its size is drained in the background for a moment
/// (bounded in time and bytes), so the client reads the 413 instead of
/// a reset caused by its unread upload.
async fn read_body(mut body: Incoming, cfg: &crate::config::Config) -> Result<Bytes, GatewayError> {
    let limit = cfg.max_request_body_bytes;
    let secs = cfg.client_body_timeout_secs;
    let mut buf = BytesMut::new();
    let read = async {
        // a declared length over the limit is refused before any byte
        if http_body::Body::size_hint(&body).lower() > limit as u64 {
            return Err(GatewayError::BodyTooLarge { limit });
        }
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| GatewayError::BodyRead(e.to_string()))?;
            if let Ok(data) = frame.into_data() {
                if buf.len() + data.len() > limit {
                    return Err(GatewayError::BodyTooLarge { limit });
                }
                buf.extend_from_slice(&data);
            }
        }
        Ok(())
    };
    let result = match tokio::time::timeout(Duration::from_secs(secs), read).await {
        Ok(r) => r,
        Err(_) => Err(GatewayError::BodyTimeout { secs }),
    };
    if let Err(GatewayError::BodyTooLarge { .. }) = &result {
        tokio::spawn(async move {
            let mut left: usize = 64 << 20;
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                while let Some(Ok(f)) = body.frame().await {
                    left = left.saturating_sub(f.data_ref().map_or(0, |d| d.len()));
                    if left == 0 {
                        break;
                    }
                }
            })
            .await;
        });
    }
    result.map(|()| buf.freeze())
}
