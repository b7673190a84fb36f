//! The pieces hedging needs that live outside one request: a budget that
//! bounds extra load, and each backend's recent TTFTs for a percentile delay.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

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

const RING: usize = 128;
/// Fewer samples than this: no percentile yet.
const MIN_SAMPLES: usize = 16;

/// A backend's last TTFTs (ms), written lock-free, read for a percentile.
#[derive(Debug)]
pub struct TtftRing {
    slots: [AtomicU32; RING],
    next: AtomicUsize,
}

impl Default for TtftRing {
    fn default() -> Self {
        Self {
            slots: std::array::from_fn(|_| AtomicU32::new(0)),
            next: AtomicUsize::new(0),
        }
    }
}

impl TtftRing {
    pub fn push(&self, ttft_s: f64) {
        let ms = (ttft_s * 1000.0).clamp(1.0, u32::MAX as f64) as u32;
        let i = self.next.fetch_add(1, Ordering::Relaxed) % RING;
        self.slots[i].store(ms, Ordering::Relaxed);
    }

    /// The `p` quantile (nearest rank) of the recent TTFTs, ms.
    pub fn percentile_ms(&self, p: f64) -> Option<u64> {
        let mut v: Vec<u32> = self
            .slots
            .iter()
            .map(|s| s.load(Ordering::Relaxed))
            .filter(|x| *x > 0)
            .collect();
        if v.len() < MIN_SAMPLES {
            return None;
        }
        v.sort_unstable();
        let rank = ((p.clamp(0.0, 1.0) * v.len() as f64).ceil() as usize).clamp(1, v.len());
        Some(u64::from(v[rank - 1]))
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

    #[test]
    fn percentile_needs_samples_and_keeps_the_recent_ones() {
        let r = TtftRing::default();
        for _ in 0..10 {
            r.push(0.1);
        }
        assert_eq!(r.percentile_ms(0.9), None);
        for i in 1..=100 {
            r.push(f64::from(i) / 1000.0);
        }
        // The ring holds the last 128: 10 x 100 ms and 1..=100 ms... minus
        // nothing (110 < 128).
        assert_eq!(r.percentile_ms(0.5), Some(55));
        for _ in 0..RING {
            r.push(0.5);
        }
        assert_eq!(r.percentile_ms(0.99), Some(500));
    }
}
