//! Phase 5: the upstream request, and which path answers it. Headers go as
//! the client sent them, less hop-by-hop ones, `Host` and the gateway's own
//! request headers; the body as read (usage injected). A request with
//! something to enforce, one choice and a JSON body goes managed.

use super::read::Inbound;
use super::route::Routed;
use crate::context::headers;
use crate::context::RequestCtx;
use crate::managed::Prepared;
use crate::state::Shared;
use crate::upstream::send::Outgoing;
use http::HeaderValue;
use std::sync::Arc;

/// The path that answers a request.
pub(super) enum Path {
    Managed(Prepared),
    Plain(Plain),
}

/// A request the plain path sends.
pub(super) struct Plain {
    pub routed: Routed,
    pub out: Outgoing,
    /// The gateway added `include_usage`: the usage event is kept from the
    /// client.
    pub injected: bool,
}

pub(super) fn build(
    shared: &Arc<Shared>,
    ctx: &mut RequestCtx,
    inbound: Inbound,
    routed: Routed,
    minted: bool,
) -> Path {
    let Inbound {
        parts,
        features,
        original,
        sent,
        body,
        injected,
    } = inbound;
    let mut hdrs = parts.headers;
    headers::remove_hop_by_hop(&mut hdrs);
    hdrs.remove(http::header::HOST);
    hdrs.remove(crate::straggler::BUDGET_HEADER);
    hdrs.remove(crate::straggler::DEADLINE_HEADER);
    if minted && shared.cfg.sends_request_id() {
        if let Ok(v) = HeaderValue::from_str(&ctx.id) {
            hdrs.insert(headers::REQUEST_ID, v);
        }
    }
    if ctx.endpoint.is_inference() {
        // The body was read whole (and maybe rewritten): send its length.
        hdrs.remove(http::header::CONTENT_LENGTH);
    }
    let out = Outgoing {
        method: parts.method,
        path_q: parts.uri.path_and_query().cloned(),
        headers: hdrs,
        body: Some(body),
        trace: ctx.trace.clone(),
        leg: Default::default(),
    };
    // A managed request needs one choice and a body it can rewrite.
    let manages =
        routed.plan.manages() && ctx.endpoint.manageable() && features.parsed && features.n <= 1;
    if manages {
        let prepared = crate::managed::prepare(
            shared,
            &routed.fleet,
            &routed.backend,
            routed.plan,
            &features,
            &out,
            &sent,
            &original,
            injected,
            ctx.endpoint,
        );
        if let Some(p) = prepared {
            return Path::Managed(p);
        }
    }
    Path::Plain(Plain {
        routed,
        out,
        injected,
    })
}
