//! `round_robin`: each request to the next healthy backend in turn.
//! Assumes nothing; with several gateway replicas each rotates on its own,
//! which still spreads evenly.

use crate::{Candidate, Policy, RequestInfo};
use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl Policy for RoundRobin {
    fn name(&self) -> &'static str {
        "round_robin"
    }

    fn pick(&self, _req: &RequestInfo, c: &[Candidate]) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed) % c.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::backends;

    #[test]
    fn rotates() {
        let p = RoundRobin::default();
        let b = backends(3);
        let picks: Vec<usize> = (0..6)
            .map(|_| p.pick(&RequestInfo::default(), &b))
            .collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    }

    /// A retry's or a hedge's choice does not move the rotation.
    #[test]
    fn another_backend_for_a_hedge_is_not_a_pick() {
        let p = RoundRobin::default();
        let b = backends(2);
        let r = RequestInfo::default();
        let mut picks = Vec::new();
        for _ in 0..4 {
            let first = p.pick(&r, &b);
            let others: Vec<_> = b
                .iter()
                .filter(|c| c.index != b[first].index)
                .cloned()
                .collect();
            let _ = p.pick_other(&r, &others);
            picks.push(first);
        }
        assert_eq!(picks, [0, 1, 0, 1]);
    }
}
