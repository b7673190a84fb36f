//! `random` (uniform) and `weighted` (probability proportional to the
//! backend's configured weight). Stateless, so they behave the same with
//! any number of gateway replicas.

use crate::{Candidate, Policy, RequestInfo};
use rand::Rng;

#[derive(Debug, Default)]
pub struct Random;

impl Policy for Random {
    fn name(&self) -> &'static str {
        "random"
    }

    fn pick(&self, _req: &RequestInfo, c: &[Candidate]) -> usize {
        rand::rng().random_range(0..c.len())
    }
}

#[derive(Debug, Default)]
pub struct Weighted;

impl Policy for Weighted {
    fn name(&self) -> &'static str {
        "weighted"
    }

    fn pick(&self, _req: &RequestInfo, c: &[Candidate]) -> usize {
        let total: u64 = c.iter().map(|b| u64::from(b.weight)).sum();
        if total == 0 {
            return rand::rng().random_range(0..c.len());
        }
        let mut x = rand::rng().random_range(0..total);
        for (i, b) in c.iter().enumerate() {
            let w = u64::from(b.weight);
            if x < w {
                return i;
            }
            x -= w;
        }
        c.len() - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::backends;

    #[test]
    fn weighted_follows_weights() {
        let mut b = backends(3);
        b[0].weight = 1;
        b[1].weight = 3;
        b[2].weight = 0;
        let mut n = [0usize; 3];
        for _ in 0..40_000 {
            n[Weighted.pick(&RequestInfo::default(), &b)] += 1;
        }
        assert_eq!(n[2], 0);
        let ratio = n[1] as f64 / n[0] as f64;
        assert!((ratio - 3.0).abs() < 0.2, "{n:?}");
    }

    #[test]
    fn random_covers_all() {
        let b = backends(4);
        let mut seen = [false; 4];
        for _ in 0..1000 {
            seen[Random.pick(&RequestInfo::default(), &b)] = true;
        }
        assert!(seen.iter().all(|s| *s));
    }
}
