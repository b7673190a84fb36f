//! Phase 0: who may send this. The route policy first (a path no rule
//! opens, or one spelled to reach another route, is a 404), then the client
//! key and its limits when `[auth]` is on (401, 429 with `Retry-After`).
//! Nothing of a refused request reaches an engine.

use crate::access::keys::Verdict;
use crate::access::routes::Refusal;
use crate::context::RequestCtx;
use crate::error::GatewayError;
use crate::state::Shared;

pub(super) fn check(
    shared: &Shared,
    ctx: &mut RequestCtx,
    parts: &http::request::Parts,
) -> Result<(), GatewayError> {
    let access = &shared.access;
    let path = parts.uri.path();
    if let Err(r) = access.routes.check(parts.method.as_str(), path) {
        crate::metrics::route_refused(match r {
            Refusal::NotAllowed => crate::access::route_label(path),
            Refusal::Suspicious(_) => "suspicious",
        });
        return Err(GatewayError::RouteNotAllowed {
            method: parts.method.to_string(),
            path: path.chars().take(256).collect(),
        });
    }
    let Some(keys) = access.keys() else {
        return Ok(());
    };
    let auth = parts
        .headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match keys.admit(auth) {
        Verdict::Admit(c, slot) => {
            ctx.set_client(c.name.clone(), Some(slot));
            Ok(())
        }
        Verdict::Unknown => {
            crate::metrics::client_refused(
                metrics::SharedString::const_str("unknown"),
                "unknown_key",
            );
            Err(GatewayError::Unauthorized)
        }
        Verdict::Limited(c, wait) => {
            ctx.set_client(c.name.clone(), None);
            crate::metrics::client_refused(c.name.clone(), "limited");
            Err(GatewayError::RateLimited {
                client: c.name.to_string(),
                retry_after: wait,
            })
        }
    }
}
