//! The hedge race: hold the first leg until its first token; past the hedge
//! delay, race a duplicate on another backend. The first to produce a token
//! goes on and the other is dropped (its engine aborts it). How many hedges
//! may go out is bounded by the gateway-wide [`HedgeBudget`].
//!
//! [`HedgeBudget`]: crate::straggler::hedge_budget::HedgeBudget

use super::clock::{at, sleep_opt};
use super::leg::{step_opt, Leg, Step};
use super::Managed;
use crate::fleet::{Backend, LegLoad};
use crate::straggler::action::Action;
use crate::upstream::send;
use std::sync::Arc;
use std::time::Duration;

/// How long to wait for a first token before hedging `b`.
fn hedge_delay(cfg: &crate::straggler::HedgeConfig, b: &Backend) -> Option<Duration> {
    let pct = cfg
        .after_percentile
        .and_then(|p| b.ttft_ring.percentile_ms(p))
        .map(|ms| ms.max(cfg.min_after_ms));
    pct.or(cfg.after_ms).map(Duration::from_millis)
}

/// Hold `a` until its first token; past the hedge delay race a duplicate.
/// Returns the leg that goes on; the other is dropped, which aborts it
/// upstream.
pub(super) async fn race(m: &mut Managed, mut a: Leg) -> Leg {
    let fleet = Arc::clone(&m.fleet);
    let delay = hedge_delay(&fleet.straggler.hedge, &a.backend);
    let t_hedge = delay.map(|d| tokio::time::Instant::now() + d);
    let deadline = at(m.ctx.t_recv, m.ctx.plan.deadline);
    let mut b: Option<Leg> = None;
    let mut hedged = false;
    loop {
        if a.has_token() || a.pending.is_some() {
            break;
        }
        if b.as_ref().is_some_and(Leg::has_token) {
            if let Some(won) = b.take() {
                return promote(m, won);
            }
        }
        tokio::select! {
            // Past the deadline: `run` ends the response cleanly.
            _ = sleep_opt(deadline), if deadline.is_some() => break,
            s = a.step() => match s {
                Step::Bytes(x) => a.held.push(x),
                end => match b.take() {
                    // The original failed first: the hedge carries on.
                    Some(l) => a = promote(m, l),
                    None => a.pending = Some(end),
                },
            },
            s = step_opt(&mut b), if b.is_some() => match s {
                Step::Bytes(x) => {
                    if let Some(l) = b.as_mut() {
                        l.held.push(x);
                    }
                }
                _ => {
                    if let Some(l) = b.take() {
                        m.ctx.act(Action::HedgeWasted {
                            backend: l.backend.upstream.name.to_string(),
                        });
                    }
                }
            },
            _ = sleep_opt(t_hedge), if !hedged && t_hedge.is_some() => {
                hedged = true;
                if m.shared.hedge_budget.try_spend() {
                    if let Some(leg) = open_hedge(m, &a).await {
                        m.ctx.act(Action::HedgeSent {
                            backend: leg.backend.upstream.name.to_string(),
                            after_ms: delay.map_or(0, |d| d.as_millis() as u64),
                        });
                        b = Some(leg);
                    }
                }
            },
        }
    }
    if let Some(l) = b {
        m.ctx.act(Action::HedgeWasted {
            backend: l.backend.upstream.name.to_string(),
        });
    }
    a
}

/// The hedge goes on: the request's context moves to its backend.
fn promote(m: &mut Managed, mut won: Leg) -> Leg {
    m.ctx.act(Action::HedgeWon {
        backend: won.backend.upstream.name.to_string(),
    });
    m.ctx.switch_backend(Arc::clone(&won.backend));
    won.load = None;
    won
}

/// Send the hedge: the same first-leg request to another healthy backend
/// (no retries: the original is still running).
async fn open_hedge(m: &mut Managed, a: &Leg) -> Option<Leg> {
    let mut info = m.ctx.route().clone();
    let other = m
        .fleet
        .pick_excluding(m.ctx.arm_index(), &mut info, &[a.backend.index])
        .ok()?;
    let load = LegLoad::new(Arc::clone(&other));
    let mut out = m.out.again()?;
    let resp = send::once(&m.shared, &other, &mut out).await.ok()?;
    if !crate::upstream::is_event_stream(&resp) {
        return None;
    }
    Some(Leg::new(m, other, resp, Some(load)))
}
