//! The extra-legs budget: gateway-wide, it bounds the load that retries
//! and hedges add to the engines together (the race itself is
//! `crate::managed::hedge`, retries `crate::upstream::send`).
//!
//! Both are duplicates of work an engine may already be doing, so one
//! budget holds both, as Finagle's and linkerd's retry budgets do: when a
//! backend goes bad, retries and hedges would otherwise multiply the load on
//! the others at the moment they can least take it. Hedges also keep their
//! own share (`hedge.max_ratio`) within it. A retry after a connect error
//! spends nothing: no engine saw that request.

pub use crate::metrics::LegKind;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

const MILLI: u64 = 1000;
/// Credit never accumulates past this many legs (a burst after a quiet
/// spell stays bounded), and a new gateway starts with it.
const MAX_CREDIT: u64 = 10 * MILLI;

/// A token bucket of legs, lock-free: `deposit` adds a fraction of a leg,
/// `try_spend` takes a whole one.
#[derive(Debug)]
struct Bucket {
    credit_milli: AtomicU64,
}

impl Bucket {
    fn new(start: u64) -> Self {
        Self {
            credit_milli: AtomicU64::new(start),
        }
    }

    fn deposit(&self, milli: u64) {
        if milli == 0 {
            return;
        }
        let _ = self
            .credit_milli
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
                Some((c + milli).min(MAX_CREDIT))
            });
    }

    fn try_spend(&self) -> bool {
        self.credit_milli
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
                c.checked_sub(MILLI)
            })
            .is_ok()
    }

    fn refund(&self) {
        self.deposit(MILLI);
    }
}

fn milli(ratio: f64) -> u64 {
    (ratio.clamp(0.0, 1.0) * MILLI as f64) as u64
}

/// Retries and hedges together: each request adds `extra_legs_ratio` of a
/// leg, plus `extra_legs_per_sec` a second whatever the traffic (a quiet
/// gateway can still retry); each retry or hedge spends one. Over time,
/// extra legs <= ratio x requests + per_sec x seconds.
#[derive(Debug)]
pub struct ExtraLegs {
    shared: Bucket,
    /// Hedges' own share (`hedge.max_ratio` of the hedgeable requests).
    hedges: Bucket,
    epoch: Instant,
    /// When the time floor was last paid in, ms since `epoch`.
    paid_ms: AtomicU64,
}

impl Default for ExtraLegs {
    fn default() -> Self {
        Self {
            shared: Bucket::new(MAX_CREDIT),
            hedges: Bucket::new(0),
            epoch: Instant::now(),
            paid_ms: AtomicU64::new(0),
        }
    }
}

impl ExtraLegs {
    /// A request was routed: `ratio` of a leg for retries and hedges.
    pub fn on_request(&self, ratio: f64) {
        self.shared.deposit(milli(ratio));
    }

    /// A request that may be hedged: `ratio` of a hedge for its share.
    pub fn on_hedgeable(&self, ratio: f64) {
        self.hedges.deposit(milli(ratio));
    }

    /// Spend one leg of `kind` if there is credit; `per_sec` is the time
    /// floor (`extra_legs_per_sec`).
    pub fn try_spend(&self, kind: LegKind, per_sec: f64) -> bool {
        self.pay_time(per_sec);
        match kind {
            LegKind::Retry => self.shared.try_spend(),
            LegKind::Hedge => {
                if !self.hedges.try_spend() {
                    return false;
                }
                let ok = self.shared.try_spend();
                if !ok {
                    self.hedges.refund();
                }
                ok
            }
        }
    }

    /// Pay in the floor for the time since it was last paid. Each caller
    /// swaps in its own now, so every interval is paid exactly once.
    fn pay_time(&self, per_sec: f64) {
        if per_sec <= 0.0 {
            return;
        }
        let now = self.epoch.elapsed().as_millis() as u64;
        let last = self.paid_ms.swap(now, Ordering::Relaxed);
        let ms = now.saturating_sub(last);
        // per_sec legs a second = per_sec milli-legs a ms
        self.shared.deposit((ms as f64 * per_sec) as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drained() -> ExtraLegs {
        let b = ExtraLegs::default();
        while b.try_spend(LegKind::Retry, 0.0) {}
        b
    }

    #[test]
    fn retries_and_hedges_spend_one_budget() {
        let b = drained();
        let (mut retries, mut hedges) = (0, 0);
        for i in 0..1000 {
            b.on_request(0.2);
            b.on_hedgeable(1.0);
            // every request wants an extra leg: a retry or a hedge
            if i % 2 == 0 {
                hedges += usize::from(b.try_spend(LegKind::Hedge, 0.0));
            } else {
                retries += usize::from(b.try_spend(LegKind::Retry, 0.0));
            }
        }
        assert_eq!(retries + hedges, 200, "{retries} + {hedges}");
        assert!(retries > 0 && hedges > 0, "{retries} + {hedges}");
    }

    #[test]
    fn hedges_keep_to_their_own_share() {
        let b = drained();
        let mut hedges = 0;
        for _ in 0..1000 {
            b.on_request(1.0);
            b.on_hedgeable(0.1);
            if b.try_spend(LegKind::Hedge, 0.0) {
                hedges += 1;
            }
        }
        assert_eq!(hedges, 100);
        // the shared credit a refused hedge did not use is still there
        assert!(b.try_spend(LegKind::Retry, 0.0));
    }

    #[test]
    fn a_hedge_refused_by_the_shared_budget_keeps_its_share() {
        let b = drained();
        b.on_hedgeable(1.0);
        assert!(!b.try_spend(LegKind::Hedge, 0.0));
        b.on_request(1.0);
        assert!(b.try_spend(LegKind::Hedge, 0.0));
    }

    #[test]
    fn a_new_gateway_starts_with_full_credit_which_is_capped() {
        let b = ExtraLegs::default();
        for _ in 0..10_000 {
            b.on_request(1.0);
        }
        let n = std::iter::from_fn(|| b.try_spend(LegKind::Retry, 0.0).then_some(())).count();
        assert_eq!(n, 10);
    }

    #[test]
    fn the_time_floor_pays_in_without_traffic() {
        let b = drained();
        assert!(!b.try_spend(LegKind::Retry, 0.0));
        std::thread::sleep(std::time::Duration::from_millis(120));
        // 20 legs a second for at least 120 ms: at least 2
        assert!(b.try_spend(LegKind::Retry, 20.0));
        assert!(b.try_spend(LegKind::Retry, 20.0));
    }
}
