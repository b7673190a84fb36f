//! `p2c`: power of two choices: two distinct random candidates, the less
//! loaded wins. The load signal is configurable:
//! - `inflight`, `tokens`: the gateway's live counters;
//! - `peak_ewma`: EWMA of TTFT times (in flight + 1), Finagle/linkerd's
//!   PeakEWMA idea with TTFT as the latency that matters here;
//! - `kv`: scraped KV use (unknown ranks worst, alike for both).
//!
//! Random sampling keeps replicas from herding onto the same backend.

use crate::{Candidate, Policy, RequestInfo};
use rand::Rng;
use serde::Deserialize;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Signal {
    Inflight,
    Tokens,
    #[default]
    PeakEwma,
    Kv,
}

#[derive(Debug, Default)]
pub struct P2c {
    pub signal: Signal,
}

impl P2c {
    fn load(&self, b: &Candidate) -> f64 {
        match self.signal {
            Signal::Inflight => b.inflight as f64,
            Signal::Tokens => b.inflight_tokens as f64,
            Signal::PeakEwma => b.ewma_ttft_s.max(1e-3) * (b.inflight as f64 + 1.0),
            Signal::Kv => b.engine.kv_usage.unwrap_or(2.0),
        }
    }
}

impl Policy for P2c {
    fn name(&self) -> &'static str {
        "p2c"
    }

    fn pick(&self, _req: &RequestInfo, c: &[Candidate]) -> usize {
        if c.len() == 1 {
            return 0;
        }
        let mut rng = rand::rng();
        let a = rng.random_range(0..c.len());
        let mut b = rng.random_range(0..c.len() - 1);
        if b >= a {
            b += 1;
        }
        if self.load(&c[b]) < self.load(&c[a]) {
            b
        } else {
            a
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::backends;

    #[test]
    fn never_picks_the_most_loaded_of_many() {
        let mut b = backends(4);
        for (i, x) in b.iter_mut().enumerate() {
            x.inflight = i as u64 * 10;
            x.ewma_ttft_s = 0.1;
        }
        let p = P2c {
            signal: Signal::PeakEwma,
        };
        for _ in 0..500 {
            assert_ne!(p.pick(&RequestInfo::default(), &b), 3);
        }
        let mut n = [0; 4];
        for _ in 0..4000 {
            n[P2c {
                signal: Signal::Inflight,
            }
            .pick(&RequestInfo::default(), &b)] += 1;
        }
        assert!(n[0] > n[1] && n[1] > n[2] && n[3] == 0, "{n:?}");
    }
}
