//! Streaming the first leg to the client until it ends, or until thinking
//! must close (budget, or the deadline minus the answer reserve), or the
//! hard deadline passes.

use super::clock::{at, sleep_opt};
use super::forced::{end_at_deadline, end_looping, forced};
use super::leg::{Leg, Step};
use super::native_end::{self, NativeEnd};
use super::view::View;
use super::Managed;
use crate::config::Flavor;
use crate::record::Outcome;
use crate::straggler::action::Trigger;
use crate::straggler::LoopAction;
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
    /// Thinking looped and `on_loop` says end.
    LoopEnd,
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
    let mut end = match end {
        Some(e) => e,
        None => first_leg(&mut m, &mut leg, &mut view, deadline, force_at).await,
    };
    // the engine's own way to end the thinking first, once
    if let FirstEnd::Force(trigger) = end {
        if m.reasoning_control && leg.backend.flavor == Flavor::Llamacpp {
            end = match native_end::try_end(&mut m, &mut leg, &mut view, trigger, deadline).await {
                NativeEnd::Ended => first_leg(&mut m, &mut leg, &mut view, deadline, None).await,
                NativeEnd::Refused(cut) => {
                    return forced(m, leg, view, trigger, deadline, Some(cut)).await
                }
                NativeEnd::Over(outcome) => FirstEnd::Done(outcome),
                NativeEnd::Deadline => FirstEnd::Deadline,
            };
        }
    }
    match end {
        FirstEnd::Done(outcome) => view.settle(&mut m.ctx, outcome),
        FirstEnd::Gone => view.settle(&mut m.ctx, Outcome::ClientGone),
        FirstEnd::Deadline => {
            let id = leg.ident.take().unwrap_or_else(|| m.fallback_ident());
            drop(leg);
            end_at_deadline(m, view, &id).await
        }
        FirstEnd::LoopEnd => {
            let id = leg.ident.take().unwrap_or_else(|| m.fallback_ident());
            let thinking_tokens = leg.thinking();
            drop(leg);
            end_looping(m, view, &id, thinking_tokens).await
        }
        FirstEnd::Force(trigger) => forced(m, leg, view, trigger, deadline, None).await,
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
    let on_loop = m.ctx.plan.on_loop;
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
                    m.ctx.set_output(leg.obs.peek());
                    if view.emit(b).await.is_err() {
                        return FirstEnd::Gone;
                    }
                    if force_budget.is_some_and(|fb| leg.obs.still_thinking() && leg.thinking() >= fb) {
                        return FirstEnd::Force(Trigger::Budget);
                    }
                    if on_loop != LoopAction::Count
                        && leg.obs.thinking_loop().is_some()
                        && leg.obs.still_thinking()
                    {
                        return match on_loop {
                            LoopAction::End => FirstEnd::LoopEnd,
                            _ => FirstEnd::Force(Trigger::Loop),
                        };
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
