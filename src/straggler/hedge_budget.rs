//! The hedge budget: gateway-wide, it bounds the extra load hedging adds
//! (the race itself is `crate::managed::hedge`).

use std::sync::atomic::{AtomicU64, Ordering};

const MILLI: u64 = 1000;
/// Credit never accumulates past this many hedges (a burst after a quiet
/// spell stays bounded).
const MAX_CREDIT: u64 = 10 * MILLI;

/// A token bucket of hedges: each request adds `ratio` of a hedge, each
/// hedge spends one, so over time hedges <= ratio x requests. Lock-free.
#[derive(Debug, Default)]
pub struct HedgeBudget {
    credit_milli: AtomicU64,
}

impl HedgeBudget {
    pub fn on_request(&self, ratio: f64) {
        let add = (ratio.clamp(0.0, 1.0) * MILLI as f64) as u64;
        let _ = self
            .credit_milli
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
                Some((c + add).min(MAX_CREDIT))
            });
    }

    /// Spend one hedge if there is credit.
    pub fn try_spend(&self) -> bool {
        self.credit_milli
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
                c.checked_sub(MILLI)
            })
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_bounds_hedges_by_the_ratio() {
        let b = HedgeBudget::default();
        let mut hedges = 0;
        for _ in 0..1000 {
            b.on_request(0.1);
            if b.try_spend() {
                hedges += 1;
            }
        }
        assert_eq!(hedges, 100);
        // No credit, no hedge.
        assert!(!HedgeBudget::default().try_spend());
    }

    #[test]
    fn credit_is_capped() {
        let b = HedgeBudget::default();
        for _ in 0..10_000 {
            b.on_request(1.0);
        }
        let n = std::iter::from_fn(|| b.try_spend().then_some(())).count();
        assert_eq!(n, 10);
    }
}
