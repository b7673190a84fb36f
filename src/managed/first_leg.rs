//! Streaming the first leg to the client until it ends, or until thinking
//! must close (budget, or the deadline minus the answer reserve), or the
//! hard deadline passes.

use super::clock::{at, sleep_opt};
use super::forced::{end_at_deadline, forced};
use super::leg::{Leg, Step};
use super::view::View;
use super::Managed;
use crate::record::Outcome;
use crate::straggler::action::Trigger;
use bytes::Bytes;
use http::StatusCode;

/// How the first leg ended.
enum FirstEnd {
    /// The stream ended (normally or not); everything was passed on.
    Done(Outcome),
    /// Thinking must close now: force the answer.
    Force(Trigger),
    /// The hard deadline passed.
    Deadline,
    Gone,
}

/// Stream the first leg, then a forced answer if one is due; settle.
pub(super) async fn run(mut m: Managed, mut leg: Leg, mut view: View) -> (StatusCode, Bytes) {
    let plan = m.ctx.plan;
    let deadline = at(m.ctx.t_recv, plan.deadline);
    let force_at = at(m.ctx.t_recv, plan.force_at);
    let held = std::mem::take(&mut leg.held);
    let mut end = None;
    for b in held {
        if view.emit(b).await.is_err() {
            end = Some(FirstEnd::Gone);
            break;
        }
    }
    let end = match end {
        Some(e) => e,
        None => first_leg(&mut m, &mut leg, &mut view, deadline, force_at).await,
    };
    match end {
        FirstEnd::Done(outcome) => view.settle(&mut m.ctx, outcome),
        FirstEnd::Gone => view.settle(&mut m.ctx, Outcome::ClientGone),
        FirstEnd::Deadline => {
            let id = leg.ident.take().unwrap_or_else(|| m.fallback_ident());
            drop(leg);
            end_at_deadline(m, view, &id).await
        }
        FirstEnd::Force(trigger) => forced(m, leg, view, trigger, deadline).await,
    }
}

async fn first_leg(
    m: &mut Managed,
    leg: &mut Leg,
    view: &mut View,
    deadline: Option<tokio::time::Instant>,
    force_at: Option<tokio::time::Instant>,
) -> FirstEnd {
    let force_budget = m.ctx.plan.force_budget;
    loop {
        let may_force = force_at.is_some() && leg.obs.still_thinking();
        tokio::select! {
            biased;
            _ = view.closed() => return FirstEnd::Gone,
            _ = sleep_opt(deadline), if deadline.is_some() => return FirstEnd::Deadline,
            _ = sleep_opt(force_at), if may_force => return FirstEnd::Force(Trigger::Deadline),
            s = leg.step() => match s {
                // past `[DONE]` (already sent), a failed transport end
                // changes nothing for the client: it is the end
                Step::Failed(_) if leg.obs.peek().done_marker => {
                    leg.pending = Some(Step::End(Bytes::new()));
                }
                Step::Bytes(b) => {
                    m.ctx.set_thinking(leg.obs.in_thinking());
                    let p = leg.obs.peek();
                    m.ctx.set_output_tokens(p.reasoning_chunks + p.visible_chunks);
                    if view.emit(b).await.is_err() {
                        return FirstEnd::Gone;
                    }
                    if force_budget.is_some_and(|fb| leg.obs.still_thinking() && leg.thinking() >= fb) {
                        return FirstEnd::Force(Trigger::Budget);
                    }
                }
                Step::End(rest) => {
                    if view.emit(rest).await.is_err() {
                        return FirstEnd::Gone;
                    }
                    if m.injected {
                        if let (Some(u), Some(id)) = (leg.obs.peek().usage.as_ref(), leg.ident.as_ref()) {
                            if let Ok(v) = serde_json::to_value(u) {
                                view.note(&id.usage(&v));
                            }
                        }
                    }
                    return FirstEnd::Done(Outcome::Completed);
                }
                Step::Failed(failure) => {
                    let _ = view.emit(failure.event(false)).await;
                    return FirstEnd::Done(Outcome::of(&failure));
                }
            }
        }
    }
}
