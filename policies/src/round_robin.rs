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
}
