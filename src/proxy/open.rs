//! Phase 1: the request's context, from its head alone.

use crate::context::headers;
use crate::context::request::Endpoint;
use crate::context::RequestCtx;
use crate::state::Shared;
use std::sync::Arc;
use std::time::Instant;

/// The context of a request whose head just arrived (`t_recv`), and whether
/// the gateway made its id (the client sent no `x-request-id`).
pub(super) fn context(shared: &Arc<Shared>, parts: &http::request::Parts) -> (RequestCtx, bool) {
    let t_recv = Instant::now();
    let endpoint = Endpoint::classify(&parts.method, parts.uri.path());
    // The client's `x-request-id` is the request's id and is forwarded as
    // it came; without one the gateway makes its own, which reaches the
    // engine only when configured (vLLM builds response ids from it).
    let client_id = parts
        .headers
        .get(headers::REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let minted = client_id.is_none();
    // a version-4 id from the thread's generator (`uuid`'s own asks the
    // kernel, one `getrandom` syscall per request)
    let id = client_id.unwrap_or_else(|| {
        uuid::Builder::from_random_bytes(rand::random())
            .into_uuid()
            .to_string()
    });
    let mut ctx = RequestCtx::new(
        Arc::clone(shared),
        t_recv,
        id,
        &parts.method,
        parts.uri.path(),
        endpoint,
    );
    if let Some(t) = &shared.tracing {
        ctx.trace = Some(t.open(&parts.headers, t_recv));
    }
    (ctx, minted)
}
