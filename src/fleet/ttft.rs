//! Each backend's recent TTFTs, for hedging after a percentile of them.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

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
