//! Phase 6, plain: the request goes upstream (with retries before the first
//! byte) and the response comes back as the engine sent it, observed as it
//! passes.

use super::outgoing::Plain;
use crate::body::response::{error_response, observed, ResponseBody};
use crate::context::RequestCtx;
use crate::state::Shared;
use crate::upstream::send;
use http::Response;

pub(super) async fn respond(
    shared: &Shared,
    mut ctx: RequestCtx,
    p: Plain,
) -> Response<ResponseBody> {
    let Plain {
        routed,
        mut out,
        injected,
    } = p;
    let sent = send::send(shared, &routed.fleet, &mut ctx, routed.backend, &mut out).await;
    match sent {
        Ok((_, resp)) => observed(shared, &routed.fleet, ctx, resp, injected),
        Err(e) => error_response(&mut ctx, e),
    }
}
