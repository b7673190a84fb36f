//! `difficulty_aware`: predicts each request's thinking length before it
//! runs and places long thinkers so that no backend holds more than its share
//! of them (or sends them to a `long` pool).
//!
//! The study found that runtime follows problem difficulty and that a few
//! hard requests become stragglers holding KV cache and batch slots; load
//! signals see a long thinker only after it has started. The prediction
//! comes from [`crate::predict`]: what the gateway sees of the request
//! (application, conversation, lengths, effort, tools, `max_tokens`, a
//! client hint), learned from this gateway's finished requests. Its accuracy
//! over the last 1,000 requests (rank correlation, error by class, precision
//! and recall of "long") is reported in `/stats`.
//!
//! Placement: predicted-long requests go to the candidate with the fewest
//! long thinkers in flight (then fewest in-flight tokens); others to the
//! fewest in-flight tokens. Each replica counts its own long thinkers, so
//! with several replicas the spread is per replica.

use crate::predict::Predictor;
use crate::{argmin_by, Candidate, Completion, Policy, RequestInfo};
use serde::Deserialize;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct DifficultyConfig {
    /// Predicted thinking tokens from which a request counts as long.
    #[serde(default = "default_threshold")]
    pub long_threshold_tokens: f64,
    /// Send long requests to this pool (and short ones elsewhere) when set.
    #[serde(default)]
    pub long_pool: Option<String>,
    /// Samples a prefix needs before its mean is trusted.
    #[serde(default = "default_min_samples")]
    pub min_samples: u32,
    /// How predictions place requests.
    #[serde(default)]
    pub placement: Placement,
}

/// How `difficulty_aware` uses its predictions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Placement {
    /// Predicted-long requests to the backend with the fewest long thinkers
    /// in flight, then the fewest in-flight tokens; the others to the
    /// fewest in-flight tokens.
    #[default]
    SpreadLong,
    /// Every request to the backend whose projected KV use is lowest: the
    /// larger of its live in-flight tokens and the sum of its in-flight
    /// requests' predicted sizes (prompt, thinking and answer).
    ProjectedTokens,
}

fn default_threshold() -> f64 {
    2000.0
}
fn default_min_samples() -> u32 {
    3
}

impl Default for DifficultyConfig {
    fn default() -> Self {
        Self {
            long_threshold_tokens: default_threshold(),
            long_pool: None,
            min_samples: default_min_samples(),
            placement: Placement::default(),
        }
    }
}

#[derive(Debug)]
pub struct DifficultyAware {
    cfg: DifficultyConfig,
    predictor: Predictor,
    /// Long thinkers in flight per configured backend (this replica's).
    long_inflight: Vec<AtomicI64>,
    /// Predicted tokens of the requests in flight per backend.
    projected: Vec<AtomicI64>,
    ties: AtomicUsize,
}

/// Answer tokens assumed on top of the predicted thinking.
const ANSWER_TOKENS: f64 = 100.0;

impl DifficultyAware {
    pub fn new(cfg: DifficultyConfig, backends: usize) -> Self {
        Self {
            predictor: Predictor::new(cfg.min_samples),
            cfg,
            long_inflight: (0..backends).map(|_| AtomicI64::new(0)).collect(),
            projected: (0..backends).map(|_| AtomicI64::new(0)).collect(),
            ties: AtomicUsize::new(0),
        }
    }

    /// Predicted thinking tokens of `req` (None: nothing learned yet).
    pub fn predict(&self, req: &RequestInfo) -> Option<f64> {
        self.predictor.predict(req)
    }

    /// Long by the prediction made in `prepare` (or now, if it was not).
    fn is_long(&self, req: &RequestInfo) -> bool {
        req.predicted_thinking
            .or_else(|| self.predict(req))
            .is_some_and(|p| p >= self.cfg.long_threshold_tokens)
    }

    /// The request's predicted size in KV tokens.
    fn size(req: &RequestInfo) -> i64 {
        (req.prompt_tokens as f64 + req.predicted_thinking.unwrap_or(0.0) + ANSWER_TOKENS) as i64
    }

    /// Spearman rank correlation of predicted vs actual over recent requests.
    pub fn rank_correlation(&self) -> Option<(f64, usize)> {
        self.predictor
            .report(self.cfg.long_threshold_tokens)
            .map(|r| (r.spearman, r.samples))
    }
}

impl Policy for DifficultyAware {
    fn name(&self) -> &'static str {
        "difficulty_aware"
    }

    fn prepare(&self, req: &mut RequestInfo) {
        req.predicted_thinking = self.predict(req);
    }

    fn pick(&self, req: &RequestInfo, c: &[Candidate]) -> usize {
        let long = self.is_long(req);
        let start = self.ties.fetch_add(1, Ordering::Relaxed);
        // Restrict to the long pool (or away from it) when one is set and
        // has candidates.
        let in_pool = |b: &Candidate| match &self.cfg.long_pool {
            Some(p) => (b.pool == *p) == long,
            None => true,
        };
        let pool: Vec<usize> = (0..c.len()).filter(|&i| in_pool(&c[i])).collect();
        let set: Vec<usize> = if pool.is_empty() {
            (0..c.len()).collect()
        } else {
            pool
        };
        let sub: Vec<Candidate> = set.iter().map(|&i| c[i].clone()).collect();
        let load = |x: &Vec<AtomicI64>, b: &Candidate| {
            x.get(b.index)
                .map(|x| x.load(Ordering::Relaxed))
                .unwrap_or(0)
        };
        let pos = if self.cfg.placement == Placement::ProjectedTokens {
            argmin_by(&sub, start, |b| {
                (b.inflight_tokens as i64).max(load(&self.projected, b))
            })
        } else if long {
            argmin_by(&sub, start, |b| {
                let l = self
                    .long_inflight
                    .get(b.index)
                    .map(|x| x.load(Ordering::Relaxed))
                    .unwrap_or(0);
                (l, b.inflight_tokens)
            })
        } else {
            argmin_by(&sub, start, |b| b.inflight_tokens)
        };
        if long {
            if let Some(x) = self.long_inflight.get(sub[pos].index) {
                x.fetch_add(1, Ordering::Relaxed);
            }
        }
        if let Some(x) = self.projected.get(sub[pos].index) {
            x.fetch_add(Self::size(req), Ordering::Relaxed);
        }
        set[pos]
    }

    fn moved(&self, req: &RequestInfo, from: usize, to: usize) {
        let shift = |x: &Vec<AtomicI64>, n: i64| {
            if let (Some(a), Some(b)) = (x.get(from), x.get(to)) {
                let _ = a.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                    Some((v - n).max(0))
                });
                b.fetch_add(n, Ordering::Relaxed);
            }
        };
        if self.is_long(req) {
            shift(&self.long_inflight, 1);
        }
        shift(&self.projected, Self::size(req));
    }

    fn observe(&self, req: &RequestInfo, backend: usize, done: &Completion) {
        let predicted = req.predicted_thinking;
        if self.is_long(req) {
            if let Some(x) = self.long_inflight.get(backend) {
                // Never below zero, whatever a caller does.
                let _ = x.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                    Some((v - 1).max(0))
                });
            }
        }
        if let Some(x) = self.projected.get(backend) {
            let size = Self::size(req);
            let _ = x.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some((v - size).max(0))
            });
        }
        if done.ok {
            self.predictor.learn(req, predicted, done.thinking_tokens);
        }
    }

    fn stats(&self) -> Option<String> {
        let r = self.predictor.report(self.cfg.long_threshold_tokens)?;
        let v = serde_json::json!({
            "predictor_spearman": (r.spearman * 1e4).round() / 1e4,
            "predictor_samples": r.samples,
            "predictor": r,
        });
        Some(v.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::backends;

    fn req(prefix: u64) -> RequestInfo {
        RequestInfo {
            model: Some("m".into()),
            thinking: true,
            prefix_hash: prefix,
            prompt_tokens: 40,
            ..RequestInfo::default()
        }
    }

    fn done(t: u64) -> Completion {
        Completion {
            ok: true,
            thinking_tokens: t,
            ..Completion::default()
        }
    }

    /// A request moved by a retry or a hedge is settled where it ended: the
    /// counts of long thinkers and projected tokens come back to zero.
    #[test]
    fn moved_requests_settle_where_they_end() {
        let p = DifficultyAware::new(DifficultyConfig::default(), 3);
        let b = backends(3);
        let mut long = req(1);
        long.difficulty_hint = Some(9000.0);
        p.prepare(&mut long);
        assert!(p.is_long(&long));
        let first = b[p.pick(&long, &b)].index;
        let to = (first + 1) % 3;
        p.moved(&long, first, to);
        p.observe(&long, to, &done(9000));
        for i in 0..3 {
            assert_eq!(p.long_inflight[i].load(Ordering::Relaxed), 0, "backend {i}");
            assert_eq!(p.projected[i].load(Ordering::Relaxed), 0, "backend {i}");
        }
        // and the other backend was never counted by choosing it
        let others: Vec<Candidate> = b.iter().filter(|c| c.index != first).cloned().collect();
        let _ = p.pick_other(&long, &others);
        assert!(p.projected.iter().all(|x| x.load(Ordering::Relaxed) == 0));
    }

    #[test]
    fn learns_per_prefix_and_spreads_long_thinkers() {
        let p = DifficultyAware::new(DifficultyConfig::default(), 3);
        let b = backends(3);
        for _ in 0..5 {
            let (mut h, mut e) = (req(1), req(2));
            p.prepare(&mut h);
            p.prepare(&mut e);
            let bh = p.pick(&h, &b);
            p.observe(&h, b[bh].index, &done(8000));
            let be = p.pick(&e, &b);
            p.observe(&e, b[be].index, &done(300));
        }
        assert!(p.predict(&req(1)).unwrap_or(0.0) > 7000.0);
        assert!(p.predict(&req(2)).unwrap_or(f64::MAX) < 400.0);
        // Three hard requests in a row land on three different backends.
        let picks: std::collections::BTreeSet<usize> = (0..3)
            .map(|_| {
                let mut r = req(1);
                p.prepare(&mut r);
                p.pick(&r, &b)
            })
            .collect();
        assert_eq!(picks.len(), 3);
        // A short request avoids the backend with the most in-flight tokens.
        let mut b2 = b.clone();
        b2[0].inflight_tokens = 50_000;
        b2[1].inflight_tokens = 10;
        b2[2].inflight_tokens = 20_000;
        assert_eq!(p.pick(&req(2), &b2), 1);
    }

    #[test]
    fn long_pool_and_hints() {
        let cfg = DifficultyConfig {
            long_pool: Some("long".into()),
            ..DifficultyConfig::default()
        };
        let p = DifficultyAware::new(cfg, 4);
        let mut b = backends(4);
        b[2].pool = "long".into();
        b[3].pool = "long".into();
        let mut hard = req(9);
        hard.difficulty_hint = Some(10_000.0);
        let mut easy = req(9);
        easy.difficulty_hint = Some(100.0);
        for _ in 0..6 {
            assert!(b[p.pick(&hard, &b)].pool == "long");
            assert!(b[p.pick(&easy, &b)].pool == "default");
        }
    }

    #[test]
    fn reports_rank_correlation() {
        let p = DifficultyAware::new(
            DifficultyConfig {
                min_samples: 1,
                ..DifficultyConfig::default()
            },
            1,
        );
        let b = backends(1);
        for round in 0..4 {
            for k in 0..10u64 {
                let mut r = req(k + 1);
                p.prepare(&mut r);
                p.pick(&r, &b);
                p.observe(&r, 0, &done(100 * (k + 1) + round));
            }
        }
        let (rho, n) = p.rank_correlation().unwrap_or((0.0, 0));
        // The first round predicts from the global mean (ties); later rounds
        // from each prefix.
        assert!(rho > 0.8, "{rho}");
        assert!(n >= 10);
        assert!(p.stats().unwrap_or_default().contains("predictor_spearman"));
    }
}
