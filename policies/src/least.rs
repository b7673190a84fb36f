//! Load-based policies over one signal each:
//! - `least_request`: fewest requests in flight through this gateway;
//! - `least_tokens`: fewest in-flight tokens (prompt + generated so far of
//!   open streams), the gateway's live estimate of KV occupancy, which sees a
//!   long thinker as the load it is;
//! - `least_kv`: lowest scraped engine KV-cache use, then shortest waiting
//!   queue, then fewest in flight. Backends without scraped state are
//!   ranked after those with it, by in-flight count.
//!
//! `least_request` and `least_tokens` see only this replica's traffic; with
//! several gateway replicas each balances its own share. `least_kv` uses the
//! engines' own view, which every replica shares.

use crate::{argmin_by, Candidate, Policy, RequestInfo};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Rotating tie-break start, so equal backends share the load.
#[derive(Debug, Default)]
struct Ties(AtomicUsize);

impl Ties {
    fn next(&self) -> usize {
        self.0.fetch_add(1, Ordering::Relaxed)
    }
}

#[derive(Debug, Default)]
pub struct LeastRequest {
    ties: Ties,
}

impl Policy for LeastRequest {
    fn name(&self) -> &'static str {
        "least_request"
    }

    fn pick(&self, _req: &RequestInfo, c: &[Candidate]) -> usize {
        argmin_by(c, self.ties.next(), |b| {
            b.inflight as f64 / f64::from(b.weight.max(1))
        })
    }
}

#[derive(Debug, Default)]
pub struct LeastTokens {
    ties: Ties,
}

impl Policy for LeastTokens {
    fn name(&self) -> &'static str {
        "least_tokens"
    }

    fn pick(&self, _req: &RequestInfo, c: &[Candidate]) -> usize {
        argmin_by(c, self.ties.next(), |b| {
            b.inflight_tokens as f64 / f64::from(b.weight.max(1))
        })
    }
}

#[derive(Debug, Default)]
pub struct LeastKv {
    ties: Ties,
}

impl Policy for LeastKv {
    fn name(&self) -> &'static str {
        "least_kv"
    }

    fn pick(&self, _req: &RequestInfo, c: &[Candidate]) -> usize {
        argmin_by(c, self.ties.next(), |b| {
            let e = &b.engine;
            // Unknown state ranks after known, alike for every backend.
            (
                e.kv_usage.is_none(),
                // KV use in 2% steps, so small scrape noise does not decide.
                (e.kv_usage.unwrap_or(0.0) * 50.0).round() as i64,
                e.waiting.unwrap_or(0.0) as i64,
                b.inflight,
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::backends;
    use crate::EngineState;

    #[test]
    fn least_request_and_tokens() {
        let mut b = backends(3);
        b[0].inflight = 5;
        b[1].inflight = 2;
        b[2].inflight = 9;
        b[0].inflight_tokens = 100;
        b[1].inflight_tokens = 90_000; // one long thinker
        b[2].inflight_tokens = 5_000;
        let r = RequestInfo::default();
        assert_eq!(LeastRequest::default().pick(&r, &b), 1);
        assert_eq!(LeastTokens::default().pick(&r, &b), 0);
    }

    #[test]
    fn ties_rotate() {
        let b = backends(3);
        let p = LeastRequest::default();
        let picks: std::collections::BTreeSet<usize> = (0..3)
            .map(|_| p.pick(&RequestInfo::default(), &b))
            .collect();
        assert_eq!(picks.len(), 3);
    }

    #[test]
    fn least_kv_prefers_scraped_low_kv_then_waiting() {
        let mut b = backends(4);
        b[0].engine = EngineState {
            kv_usage: Some(0.9),
            waiting: Some(0.0),
            ..Default::default()
        };
        b[1].engine = EngineState {
            kv_usage: Some(0.30),
            waiting: Some(4.0),
            ..Default::default()
        };
        b[2].engine = EngineState {
            kv_usage: Some(0.305),
            waiting: Some(1.0),
            ..Default::default()
        };
        b[3].engine = EngineState::default(); // not scraped yet
        b[3].inflight = 0;
        assert_eq!(LeastKv::default().pick(&RequestInfo::default(), &b), 2);
        for x in &mut b[..3] {
            x.engine = EngineState::default();
            x.inflight = 3;
        }
        assert_eq!(
            LeastKv::default().pick(&RequestInfo::default(), &b),
            3,
            "no scrape anywhere: fewest in flight"
        );
    }
}
