//! Header handling: hop-by-hop removal and the headers the gateway adds.

use http::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION};

/// Request id header: kept if the client sent one, else set on the upstream
/// request (vLLM and SGLang adopt it as their request id).
pub const REQUEST_ID: &str = "x-request-id";
/// Response headers the gateway adds (documented; off with
/// `response_headers = false` or `--passthrough-strict`).
pub const TG_REQUEST_ID: &str = "x-thinkgate-request-id";
pub const TG_BACKEND: &str = "x-thinkgate-backend";
/// Only when an experiment is configured.
pub const TG_ARM: &str = "x-thinkgate-arm";
/// Only when the routing policy predicted the request's thinking tokens
/// (`difficulty_aware`): what the load generator's report plots against the
/// tokens spent.
pub const TG_PREDICTED_THINKING: &str = "x-thinkgate-predicted-thinking";

/// RFC 9110 7.6.1 hop-by-hop headers, plus the legacy ones proxies drop.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Remove hop-by-hop headers, including those named by `Connection`. A
/// message that came chunked loses any `Content-Length` too: it was not the
/// length (RFC 9112 §6.3), and the body is re-framed on the next hop.
pub fn remove_hop_by_hop(h: &mut HeaderMap) {
    if h.contains_key(http::header::TRANSFER_ENCODING) {
        h.remove(http::header::CONTENT_LENGTH);
    }
    let named: Vec<HeaderName> = h
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in HOP_BY_HOP {
        h.remove(*n);
    }
}

/// The `x-thinkgate-*` response headers, when they are on.
fn add_gateway_headers(
    h: &mut HeaderMap,
    ctx: &super::RequestCtx,
    cfg: &crate::config::Config,
    fleet: &crate::fleet::Fleet,
) {
    if !cfg.adds_response_headers() {
        return;
    }
    if let Ok(v) = HeaderValue::from_str(&ctx.id) {
        h.insert(TG_REQUEST_ID, v);
    }
    if let Ok(v) = HeaderValue::from_str(ctx.backend_name()) {
        h.insert(TG_BACKEND, v);
    }
    if fleet.arms.len() > 1 {
        if let Ok(v) = HeaderValue::from_str(ctx.arm_name()) {
            h.insert(TG_ARM, v);
        }
    }
    if let Some(p) = ctx.route.predicted_thinking.filter(|p| p.is_finite()) {
        h.insert(TG_PREDICTED_THINKING, HeaderValue::from(p.round() as u64));
    }
}

/// The response head as the client gets it, on every path (plain, managed,
/// an engine's error through either): hop-by-hop headers dropped and the
/// gateway's own added.
pub fn client_head(
    h: &mut HeaderMap,
    ctx: &super::RequestCtx,
    cfg: &crate::config::Config,
    fleet: &crate::fleet::Fleet,
) {
    remove_hop_by_hop(h);
    add_gateway_headers(h, ctx, cfg, fleet);
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn removes_hop_by_hop_and_connection_named() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            "content-type",
            HeaderValue::from_static("text/event-stream"),
        );
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("content-type"));
    }
}
