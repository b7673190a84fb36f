//! Phase 4: routing. The experiment arm, the straggler plan (what to enforce
//! on the request) and the backend, picked by the arm's policy; when every
//! backend is at its in-flight cap, a bounded wait for one.

use super::read::Inbound;
use crate::context::request;
use crate::context::RequestCtx;
use crate::error::GatewayError;
use crate::fleet::{Backend, Fleet};
use crate::state::Shared;
use crate::straggler::action::Action;
use crate::straggler::Plan;
use std::sync::Arc;

/// Where a request goes, and what is enforced on it.
pub(super) struct Routed {
    /// The fleet as it was when the request arrived (a reload swaps it).
    pub fleet: Arc<Fleet>,
    pub plan: Plan,
    pub backend: Arc<Backend>,
}

pub(super) async fn pick(
    shared: &Shared,
    ctx: &mut RequestCtx,
    inbound: &Inbound,
) -> Result<Routed, GatewayError> {
    let headers = &inbound.parts.headers;
    let mut info = request::route_info(&inbound.features, headers, &shared.cfg.session_header);
    let fleet = shared.fleet.load_full();
    let arm = fleet.assign(&info, shared.recorder.stopped.mask());
    ctx.set_arm(Arc::clone(&fleet), arm);
    let limits = fleet.arms.get(arm).map(|a| a.limits).unwrap_or_default();
    let plan = if ctx.endpoint.is_inference() && !shared.cfg.passthrough_strict {
        let model = inbound.features.model.as_deref();
        Plan::resolve(&fleet.straggler, limits, model, headers, true)?
    } else {
        Plan::default()
    };
    // What the managed path cannot rewrite it cannot enforce: say so in the
    // record and the metrics instead of pretending.
    let plan = if (plan.budget.is_some() || plan.deadline.is_some()) && !ctx.endpoint.manageable() {
        ctx.act(Action::NotEnforced {
            api: ctx.endpoint.api().as_str(),
            thinking_budget: plan.budget,
            deadline_ms: plan.deadline.map(|d| d.as_millis() as u64),
        });
        Plan::default()
    } else {
        plan
    };
    let mut picked = fleet.pick(arm, &mut info);
    if picked.is_err() && fleet.busy_limit().is_some() {
        let waited = shared
            .admission
            .wait(shared.cfg.max_queued, shared.cfg.queue_timeout(), || {
                fleet.pick(arm, &mut info).ok()
            })
            .await;
        if let Some(b) = waited {
            picked = Ok(b);
        }
    }
    let backend = picked.map_err(|e| match fleet.busy_limit() {
        Some(limit) => GatewayError::BackendsBusy { limit },
        None => {
            crate::metrics::no_backend();
            GatewayError::NoBackend(e.to_string())
        }
    })?;
    ctx.set_backend(Arc::clone(&backend), info);
    Ok(Routed {
        fleet,
        plan,
        backend,
    })
}
