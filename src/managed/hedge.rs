//! The hedge race, timed from when the request was sent. Before the
//! response head ([`send_racing`]): an engine that sends no head while the
//! request waits (llama.cpp's slot queue, a stuck or overloaded engine, a
//! connect left pending) is raced by a duplicate on another backend past
//! the hedge delay; the first usable head goes on. After the head
//! ([`race`]): the leg is held until its first token and, if the delay
//! passes first, raced the same way; the first token goes on. The loser is
//! dropped in either state (its engine aborts it). At most one hedge per
//! request; how many go out overall is bounded by the gateway-wide
//! [`ExtraLegs`] budget, which hedges share with retries.
//!
//! [`ExtraLegs`]: crate::straggler::extra_legs::ExtraLegs

use super::clock::{at, sleep_opt};
use super::leg::{step_opt, Leg, Step};
use super::Managed;
use crate::error::GatewayError;
use crate::fleet::{Backend, LegLoad};
use crate::straggler::action::Action;
use crate::straggler::extra_legs::LegKind;
use crate::upstream::send;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How long to wait for a first token before hedging `b`.
fn hedge_delay(cfg: &crate::straggler::HedgeConfig, b: &Backend) -> Option<Duration> {
    let pct = cfg
        .after_percentile
        .and_then(|p| b.ttft_ring.percentile_ms(p))
        .map(|ms| ms.max(cfg.min_after_ms));
    pct.or(cfg.after_ms).map(Duration::from_millis)
}

/// What a first leg's send came to.
pub(super) type Sent =
    Result<(Arc<Backend>, http::Response<crate::upstream::UpBody>), GatewayError>;

/// Send the first leg (with its retries); if no response head has come by
/// the hedge delay, send a duplicate to the best other backend and take the
/// first usable head (a 2xx event stream); the other leg is dropped.
/// Returns the answer and whether a hedge went out (the token race then
/// sends no second one).
pub(super) async fn send_racing(
    m: &mut Managed,
    backend: Arc<Backend>,
    t_sent: Instant,
    tried: &send::Tried,
) -> (Sent, bool) {
    let (shared, fleet) = (Arc::clone(&m.shared), Arc::clone(&m.fleet));
    let delay = hedge_delay(&fleet.straggler.hedge, &backend);
    let arm = m.ctx.arm_index();
    let mut info = m.ctx.route().clone();
    let spare = m.out.again();
    let mut a = Box::pin(send::send_tracked(
        &shared, &fleet, &mut m.ctx, backend, &mut m.out, tried,
    ));
    let Some(delay) = delay else {
        return (a.await, false);
    };
    tokio::select! {
        r = &mut a => return (r, false),
        _ = tokio::time::sleep_until(t_sent + delay) => {}
    }
    // Due, and no head yet.
    let Some(mut spare) = spare else {
        return (a.await, false);
    };
    spare.leg = crate::trace::context::LegKind::Hedge;
    if !shared
        .extra_legs
        .try_spend(LegKind::Hedge, fleet.straggler.extra_legs_per_sec)
    {
        let r = a.await;
        m.ctx.act(Action::ExtraRefused {
            kind: LegKind::Hedge,
        });
        return (r, false);
    }
    // not where the original is, nor where its retries went
    let Ok(other) = fleet.pick_excluding(arm, &mut info, &tried.list()) else {
        return (a.await, false);
    };
    tried.add(other.index);
    let load = LegLoad::new(Arc::clone(&other));
    let after_ms = delay.as_millis() as u64;
    let name = other.upstream.name.to_string();
    let mut b = Box::pin(send::once(&shared, &other, &mut spare));
    let won = tokio::select! {
        r = &mut a => {
            drop(b);
            drop(a);
            drop(load);
            m.ctx.act(Action::HedgeSent { backend: name.clone(), after_ms });
            m.ctx.act(Action::HedgeWasted { backend: name });
            return (r, true);
        }
        r = &mut b => r,
    };
    match won {
        Ok(resp) if resp.status().is_success() && crate::upstream::is_event_stream(&resp) => {
            // the hedge's head came first: the original is dropped (its
            // engine aborts it) and the request moves
            drop(a);
            drop(b);
            drop(load);
            other.on_success();
            m.ctx.act(Action::HedgeSent {
                backend: name.clone(),
                after_ms,
            });
            m.ctx.act(Action::HedgeWon { backend: name });
            m.ctx.switch_backend(Arc::clone(&other));
            (Ok((other, resp)), true)
        }
        // the hedge failed or answered an error: the original goes on
        _ => {
            drop(b);
            drop(load);
            let r = a.await;
            m.ctx.act(Action::HedgeSent {
                backend: name.clone(),
                after_ms,
            });
            m.ctx.act(Action::HedgeWasted { backend: name });
            (r, true)
        }
    }
}

/// Hold `a` until its first token; past the hedge delay (counted from
/// `t_sent`, when the request went out) race a duplicate, unless one went
/// before the head already. Returns the leg that goes on; the other is
/// dropped, which aborts it upstream. The hedge avoids every backend in
/// `tried` (where the request's retries went).
pub(super) async fn race(
    m: &mut Managed,
    mut a: Leg,
    t_sent: Instant,
    hedged_before: bool,
    tried: &send::Tried,
) -> Leg {
    let fleet = Arc::clone(&m.fleet);
    let delay = hedge_delay(&fleet.straggler.hedge, &a.backend).filter(|_| !hedged_before);
    let t_hedge = delay.map(|d| t_sent + d);
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
                let per_sec = fleet.straggler.extra_legs_per_sec;
                if !m.shared.extra_legs.try_spend(LegKind::Hedge, per_sec) {
                    m.ctx.act(Action::ExtraRefused { kind: LegKind::Hedge });
                } else {
                    if let Some(leg) = open_hedge(m, &a, tried).await {
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
/// the request has not been to (no retries: the original is still
/// running).
async fn open_hedge(m: &mut Managed, a: &Leg, tried: &send::Tried) -> Option<Leg> {
    let mut info = m.ctx.route().clone();
    let mut exclude = tried.list();
    exclude.push(a.backend.index);
    let other = m
        .fleet
        .pick_excluding(m.ctx.arm_index(), &mut info, &exclude)
        .ok()?;
    tried.add(other.index);
    let load = LegLoad::new(Arc::clone(&other));
    let mut out = m.out.again()?;
    out.leg = crate::trace::context::LegKind::Hedge;
    let resp = send::once(&m.shared, &other, &mut out).await.ok()?;
    if !crate::upstream::is_event_stream(&resp) {
        return None;
    }
    Some(Leg::new(m, other, resp, Some(load)))
}
