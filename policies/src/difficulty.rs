//! `difficulty_aware`: predicts each request's thinking length before it
//! runs and places long thinkers so that no backend holds more than its share
//! of them (or sends them to a `long` pool).
//!
//! The study found that runtime follows problem difficulty and that a few
//! hard requests become stragglers holding KV cache and batch slots; load
//! signals see a long thinker only after it has started. The predictor
//! learns from this gateway's own finished requests: the mean log thinking
//! tokens per (model, prompt prefix) — templates and task types share
//! prefixes — falling back to (model, prompt length bucket), then to all
//! requests. A client hint (`x-thinkgate-difficulty`) overrides it.
//! Its accuracy (Spearman rank correlation of predicted and actual thinking
//! tokens over the last 1,000 requests) is reported in `/stats`.
//!
//! Placement: predicted-long requests go to the candidate with the fewest
//! long thinkers in flight (then fewest in-flight tokens); others to the
//! fewest in-flight tokens. Each replica counts its own long thinkers, so
//! with several replicas the spread is per replica.

use crate::{argmin_by, Candidate, Completion, Policy, RequestInfo};
use serde::Deserialize;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Mutex, RwLock};

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
        }
    }
}

/// Running mean of log thinking tokens.
#[derive(Debug, Clone, Copy, Default)]
struct Mean {
    n: u32,
    sum: f64,
}

impl Mean {
    fn add(&mut self, x: f64) {
        // Forget slowly so the estimate follows a changing workload.
        if self.n >= 200 {
            self.sum *= 199.0 / 200.0;
            self.n = 199;
        }
        self.n += 1;
        self.sum += x;
    }
    fn mean(&self) -> Option<f64> {
        (self.n > 0).then(|| self.sum / f64::from(self.n))
    }
}

#[derive(Debug, Default)]
struct Table {
    by_prefix: HashMap<(String, u64), Mean>,
    by_length: HashMap<(String, u32), Mean>,
    global: Mean,
}

const MAX_KEYS: usize = 100_000;

#[derive(Debug)]
pub struct DifficultyAware {
    cfg: DifficultyConfig,
    table: RwLock<Table>,
    /// Long thinkers in flight per configured backend (this replica's).
    long_inflight: Vec<AtomicI64>,
    recent: Mutex<VecDeque<(f64, f64)>>,
    ties: AtomicUsize,
}

fn length_bucket(tokens: u64) -> u32 {
    64 - tokens.max(1).leading_zeros()
}

impl DifficultyAware {
    pub fn new(cfg: DifficultyConfig, backends: usize) -> Self {
        Self {
            cfg,
            table: RwLock::new(Table::default()),
            long_inflight: (0..backends).map(|_| AtomicI64::new(0)).collect(),
            recent: Mutex::new(VecDeque::new()),
            ties: AtomicUsize::new(0),
        }
    }

    /// Predicted thinking tokens of `req` (None: nothing learned yet).
    pub fn predict(&self, req: &RequestInfo) -> Option<f64> {
        if let Some(h) = req.difficulty_hint {
            return Some(h);
        }
        if !req.thinking {
            return Some(0.0);
        }
        let model = req.model.clone().unwrap_or_default();
        let t = self.table.read().ok()?;
        let min = self.cfg.min_samples;
        let trusted = |m: Option<&Mean>| m.filter(|m| m.n >= min).and_then(Mean::mean);
        trusted(t.by_prefix.get(&(model.clone(), req.prefix_hash)))
            .or_else(|| trusted(t.by_length.get(&(model, length_bucket(req.prompt_tokens)))))
            .or_else(|| t.global.mean())
            .map(f64::exp)
    }

    /// Long by the prediction made in `prepare` (or now, if it was not).
    fn is_long(&self, req: &RequestInfo) -> bool {
        req.predicted_thinking
            .or_else(|| self.predict(req))
            .is_some_and(|p| p >= self.cfg.long_threshold_tokens)
    }

    /// Spearman rank correlation of predicted vs actual over recent requests.
    pub fn rank_correlation(&self) -> Option<(f64, usize)> {
        let r = self.recent.lock().ok()?;
        if r.len() < 10 {
            return None;
        }
        let ranks = |f: &dyn Fn(&(f64, f64)) -> f64| {
            let mut idx: Vec<usize> = (0..r.len()).collect();
            idx.sort_by(|a, b| f(&r[*a]).total_cmp(&f(&r[*b])));
            let mut rank = vec![0.0; r.len()];
            let mut i = 0;
            while i < idx.len() {
                let mut j = i;
                while j + 1 < idx.len() && f(&r[idx[j + 1]]) == f(&r[idx[i]]) {
                    j += 1;
                }
                for k in i..=j {
                    rank[idx[k]] = (i + j) as f64 / 2.0;
                }
                i = j + 1;
            }
            rank
        };
        let (a, b) = (ranks(&|x| x.0), ranks(&|x| x.1));
        let n = a.len() as f64;
        let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
        let cov: f64 = a.iter().zip(&b).map(|(x, y)| (x - ma) * (y - mb)).sum();
        let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
        let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
        (va > 0.0 && vb > 0.0).then(|| (cov / (va * vb).sqrt(), r.len()))
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
        let pos = if long {
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
        set[pos]
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
        if !done.ok || !req.thinking || req.difficulty_hint.is_some() {
            return;
        }
        let actual = done.thinking_tokens as f64;
        if let Some(p) = predicted {
            if let Ok(mut r) = self.recent.lock() {
                if r.len() >= 1000 {
                    r.pop_front();
                }
                r.push_back((p, actual));
            }
        }
        let x = (actual + 1.0).ln();
        let model = req.model.clone().unwrap_or_default();
        if let Ok(mut t) = self.table.write() {
            if t.by_prefix.len() < MAX_KEYS {
                t.by_prefix
                    .entry((model.clone(), req.prefix_hash))
                    .or_default()
                    .add(x);
            } else if let Some(m) = t.by_prefix.get_mut(&(model.clone(), req.prefix_hash)) {
                m.add(x);
            }
            if t.by_length.len() < MAX_KEYS {
                t.by_length
                    .entry((model, length_bucket(req.prompt_tokens)))
                    .or_default()
                    .add(x);
            }
            t.global.add(x);
        }
    }

    fn stats(&self) -> Option<String> {
        let (rho, n) = self.rank_correlation()?;
        Some(format!(
            "{{\"predictor_spearman\":{rho:.4},\"predictor_samples\":{n}}}"
        ))
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
                let mut r = req(k);
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
