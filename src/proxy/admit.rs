//! Phase 2: admission. Past the global in-flight limit, a bounded wait (if
//! configured), then a fast 503.

use crate::context::RequestCtx;
use crate::error::GatewayError;
use crate::state::Shared;

/// Take one of `max_inflight`'s slots for the request (held by its context
/// until it settles).
pub(super) async fn slot(shared: &Shared, ctx: &mut RequestCtx) -> Result<(), GatewayError> {
    let limit = shared.cfg.max_inflight;
    if limit == 0 {
        return Ok(());
    }
    let adm = &shared.admission;
    let admitted = adm.try_admit(limit)
        || adm
            .wait(shared.cfg.max_queued, shared.cfg.queue_timeout(), || {
                adm.try_admit(limit).then_some(())
            })
            .await
            .is_some();
    if !admitted {
        return Err(GatewayError::Overloaded { limit });
    }
    ctx.hold_slot();
    Ok(())
}
