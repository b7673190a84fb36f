//! The thinking-length predictor: how many thinking tokens a request will
//! spend, from what a gateway sees before it runs, learned online from this
//! gateway's finished requests.
//!
//! What it reads (never a label in the prompt): the application (a hash of
//! the system prompt), the conversation's earlier turns (a hash of the
//! system prompt and the first user message, which every turn resends), the
//! prompt's first bytes (templates), the prompt's and the question's length,
//! the turn, `max_tokens`, `reasoning_effort`, whether tools are offered,
//! and the client's hint (`x-thinkgate-difficulty`) when one is sent.
//!
//! How: each key (application, conversation, prefix, application and length,
//! hint) keeps a running mean of log thinking tokens, shrunk towards the
//! global mean while it has few samples; a ridge regression, refitted every
//! few completions with exponential forgetting, weighs those means against
//! the request's numeric features. Until the regression has seen enough, the
//! most specific key with samples answers. Everything is per model.

use crate::{ReasoningEffort, RequestInfo};
use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, RwLock};
pub use thinkgate_asu::rank::spearman;

/// Running mean of log thinking tokens, forgetting slowly so the estimate
/// follows a changing workload.
#[derive(Debug, Clone, Copy, Default)]
struct Mean {
    n: f64,
    sum: f64,
}

impl Mean {
    fn add(&mut self, x: f64) {
        const CAP: f64 = 200.0;
        if self.n >= CAP {
            self.sum *= (CAP - 1.0) / CAP;
            self.n = CAP - 1.0;
        }
        self.n += 1.0;
        self.sum += x;
    }

    fn mean(&self) -> Option<f64> {
        (self.n > 0.0).then(|| self.sum / self.n)
    }

    /// The mean shrunk towards `prior` as if it had `K` samples of it.
    fn shrunk(&self, prior: f64) -> f64 {
        const K: f64 = 2.0;
        (self.sum + K * prior) / (self.n + K)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    App,
    Conversation,
    Prefix,
    AppLength,
    Hint,
}

/// The keys a request falls under, most specific first; a key the request
/// does not have (no hint, no conversation) is `(kind, 0)` and never used.
fn keys(req: &RequestInfo) -> [(Kind, u64); 5] {
    let model = crate::consistent_hash::stable_hash(req.model.as_deref().unwrap_or("").as_bytes());
    let mix = |v: u64| v ^ model.rotate_left(29);
    let some = |v: u64| if v == 0 { 0 } else { mix(v) };
    let hint = req
        .difficulty_hint
        .map(|h| (h.max(0.0) + 1.0).log2() as u64 + 1);
    [
        (Kind::Hint, hint.map(some).unwrap_or(0)),
        (Kind::Conversation, some(req.conversation)),
        (Kind::Prefix, some(req.prefix_hash)),
        (
            Kind::AppLength,
            mix(req.app ^ u64::from(length_bucket(req.prompt_tokens)).wrapping_mul(0x9E37)),
        ),
        (Kind::App, mix(req.app)),
    ]
}

fn length_bucket(tokens: u64) -> u32 {
    64 - tokens.max(1).leading_zeros()
}

/// Size of the feature vector.
const D: usize = 16;

/// Ridge regression over exponentially forgotten sufficient statistics.
#[derive(Debug, Clone)]
struct Ridge {
    a: [[f64; D]; D],
    b: [f64; D],
    w: [f64; D],
    seen: u64,
    since_fit: u32,
}

impl Default for Ridge {
    fn default() -> Self {
        Self {
            a: [[0.0; D]; D],
            b: [0.0; D],
            w: [0.0; D],
            seen: 0,
            since_fit: 0,
        }
    }
}

impl Ridge {
    /// Forget factor per sample: an effective window of ~2,000 requests.
    const FORGET: f64 = 0.9995;
    const ALPHA: f64 = 0.5;

    fn add(&mut self, x: &[f64; D], y: f64) {
        for i in 0..D {
            for j in 0..D {
                self.a[i][j] = self.a[i][j] * Self::FORGET + x[i] * x[j];
            }
            self.b[i] = self.b[i] * Self::FORGET + x[i] * y;
        }
        self.seen += 1;
        self.since_fit += 1;
        // refit often while learning, then every 16 samples
        if self.seen < 128 || self.since_fit >= 16 {
            self.fit();
        }
    }

    /// Solve (A + alpha I) w = b by Cholesky; keeps the old weights if the
    /// system is not positive definite (it always is with alpha > 0, but
    /// floating point is floating point).
    fn fit(&mut self) {
        self.since_fit = 0;
        let mut l = [[0.0; D]; D];
        for i in 0..D {
            for j in 0..=i {
                let dot: f64 = l[i][..j].iter().zip(&l[j][..j]).map(|(a, b)| a * b).sum();
                let s = self.a[i][j] + if i == j { Self::ALPHA } else { 0.0 } - dot;
                if i == j {
                    if s <= 1e-12 || !s.is_finite() {
                        return;
                    }
                    l[i][i] = s.sqrt();
                } else {
                    l[i][j] = s / l[j][j];
                }
            }
        }
        let mut z = [0.0; D];
        for i in 0..D {
            let s: f64 = (0..i).map(|k| l[i][k] * z[k]).sum();
            z[i] = (self.b[i] - s) / l[i][i];
        }
        let mut w = [0.0; D];
        for i in (0..D).rev() {
            let s: f64 = (i + 1..D).map(|k| l[k][i] * w[k]).sum();
            w[i] = (z[i] - s) / l[i][i];
        }
        if w.iter().all(|v| v.is_finite()) {
            self.w = w;
        }
    }

    fn predict(&self, x: &[f64; D]) -> f64 {
        self.w.iter().zip(x).map(|(w, x)| w * x).sum()
    }
}

#[derive(Debug, Default)]
struct State {
    global: Mean,
    by_key: HashMap<(Kind, u64), Mean>,
    ridge: Ridge,
}

const MAX_KEYS: usize = 200_000;

impl State {
    /// The request's features; key means enter as shrunk deviations from
    /// the global mean (0 for a key never seen).
    fn features(&self, req: &RequestInfo, g: f64) -> [f64; D] {
        let ln = |v: u64| (v as f64 + 1.0).ln() / 8.0;
        let mut x = [0.0; D];
        x[0] = 1.0;
        x[1] = ln(req.prompt_tokens);
        x[2] = ln(req.question_tokens);
        x[3] = f64::from(req.turns.clamp(1, 9) - 1) / 8.0;
        x[4] = f64::from(u8::from(req.tools));
        if let Some(m) = req.max_tokens {
            x[5] = ln(m);
            x[6] = 1.0;
        }
        match req.reasoning_effort {
            Some(ReasoningEffort::Minimal | ReasoningEffort::Low) => x[7] = 1.0,
            Some(ReasoningEffort::Medium) => x[8] = 1.0,
            Some(ReasoningEffort::High) => x[9] = 1.0,
            _ => {}
        }
        for (i, key) in keys(req).into_iter().enumerate() {
            if key.1 == 0 {
                continue;
            }
            x[10 + i] = self
                .by_key
                .get(&key)
                .map(|m| m.shrunk(g) - g)
                .unwrap_or(0.0);
        }
        x[15] = req.difficulty_hint.map(|h| ln(h as u64)).unwrap_or(0.0);
        x
    }
}

/// Requests the regression needs before it answers (the key means answer
/// until then).
const WARMUP: u64 = 48;

/// One finished request the predictor had a prediction for.
#[derive(Debug, Clone, Copy)]
struct Sample {
    predicted: f64,
    actual: f64,
}

#[derive(Debug)]
pub struct Predictor {
    min_samples: u32,
    state: RwLock<State>,
    recent: Mutex<VecDeque<Sample>>,
}

impl Predictor {
    pub fn new(min_samples: u32) -> Self {
        Self {
            min_samples,
            state: RwLock::new(State::default()),
            recent: Mutex::new(VecDeque::new()),
        }
    }

    /// Predicted thinking tokens of `req` (None: nothing learned yet and no
    /// hint). A request with thinking off thinks for 0.
    pub fn predict(&self, req: &RequestInfo) -> Option<f64> {
        if !req.thinking {
            return Some(0.0);
        }
        let s = self.state.read().ok()?;
        let Some(g) = s.global.mean() else {
            return req.difficulty_hint;
        };
        let y = if s.ridge.seen >= WARMUP {
            s.ridge.predict(&s.features(req, g))
        } else {
            let min = f64::from(self.min_samples);
            keys(req)
                .into_iter()
                .filter(|k| k.1 != 0)
                .find_map(|k| s.by_key.get(&k).filter(|m| m.n >= min).and_then(Mean::mean))
                .or_else(|| req.difficulty_hint.map(|h| (h + 1.0).ln()))
                .unwrap_or(g)
        };
        Some((y.clamp(0.0, 14.0).exp() - 1.0).max(0.0))
    }

    /// Learn from a finished request: `predicted` is what [`Self::predict`]
    /// said before it ran.
    pub fn learn(&self, req: &RequestInfo, predicted: Option<f64>, thinking_tokens: u64) {
        if !req.thinking {
            return;
        }
        let actual = thinking_tokens as f64;
        if let (Some(p), Ok(mut r)) = (predicted, self.recent.lock()) {
            if r.len() >= 1000 {
                r.pop_front();
            }
            r.push_back(Sample {
                predicted: p,
                actual,
            });
        }
        let y = (actual + 1.0).ln();
        let Ok(mut s) = self.state.write() else {
            return;
        };
        // features as they were before this sample (no peeking at itself)
        if let Some(g) = s.global.mean() {
            let x = s.features(req, g);
            s.ridge.add(&x, y);
        }
        s.global.add(y);
        for key in keys(req) {
            if key.1 == 0 {
                continue;
            }
            if s.by_key.len() < MAX_KEYS {
                s.by_key.entry(key).or_default().add(y);
            } else if let Some(m) = s.by_key.get_mut(&key) {
                m.add(y);
            }
        }
    }

    /// How good the predictions were over the last 1,000 requests: Spearman
    /// rank correlation, and per class of actual length (under 1k, 1k to 4k,
    /// 4k and more thinking tokens) the count and the median factor by which
    /// the prediction missed; plus precision and recall of calling a request
    /// long at `long_threshold`.
    pub fn report(&self, long_threshold: f64) -> Option<Report> {
        let r = self.recent.lock().ok()?;
        if r.len() < 10 {
            return None;
        }
        let pairs: Vec<(f64, f64)> = r.iter().map(|s| (s.predicted, s.actual)).collect();
        let spearman = spearman(&pairs)?;
        let mut classes = Vec::new();
        for (name, lo, hi) in [
            ("under_1k", 0.0, 1000.0),
            ("1k_to_4k", 1000.0, 4000.0),
            ("4k_and_more", 4000.0, f64::INFINITY),
        ] {
            let mut miss: Vec<f64> = pairs
                .iter()
                .filter(|(_, a)| (lo..hi).contains(a))
                .map(|(p, a)| ((p + 1.0).ln() - (a + 1.0).ln()).abs())
                .collect();
            miss.sort_by(f64::total_cmp);
            classes.push(ClassError {
                class: name,
                count: miss.len(),
                median_miss_factor: miss.get(miss.len() / 2).map(|m| m.exp()),
            });
        }
        let called = |p: &f64| *p >= long_threshold;
        let tp = pairs
            .iter()
            .filter(|(p, a)| called(p) && *a >= long_threshold)
            .count() as f64;
        let predicted_long = pairs.iter().filter(|(p, _)| called(p)).count() as f64;
        let actual_long = pairs.iter().filter(|(_, a)| *a >= long_threshold).count() as f64;
        Some(Report {
            spearman,
            samples: pairs.len(),
            classes,
            long_precision: (predicted_long > 0.0).then(|| tp / predicted_long),
            long_recall: (actual_long > 0.0).then(|| tp / actual_long),
        })
    }
}

/// Prediction error of one class of actual thinking length.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ClassError {
    pub class: &'static str,
    pub count: usize,
    /// exp(median |ln predicted - ln actual|): 1.0 is exact, 2.0 is off by
    /// half or double.
    pub median_miss_factor: Option<f64>,
}

/// The predictor's accuracy, for `/stats`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub spearman: f64,
    pub samples: usize,
    pub classes: Vec<ClassError>,
    pub long_precision: Option<f64>,
    pub long_recall: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn req(
        app: u64,
        conversation: u64,
        prompt: u64,
        effort: Option<ReasoningEffort>,
    ) -> RequestInfo {
        RequestInfo {
            model: Some("m".into()),
            thinking: true,
            app,
            conversation,
            prefix_hash: conversation,
            prompt_tokens: prompt,
            question_tokens: prompt,
            turns: 1,
            reasoning_effort: effort,
            ..RequestInfo::default()
        }
    }

    /// A world where thinking follows the application and the effort (and
    /// weakly the prompt length), with log-normal noise no feature explains:
    /// the predictor must rank well above chance, and never see the answer.
    #[test]
    fn learns_applications_effort_and_length_online() {
        let p = Predictor::new(3);
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let apps = [(11u64, 6.0f64), (22, 7.5), (33, 8.5)];
        let mut late = Vec::new();
        for i in 0..3000 {
            let (app, base) = apps[rng.random_range(0..3)];
            let effort = [
                None,
                Some(ReasoningEffort::Low),
                Some(ReasoningEffort::High),
            ][rng.random_range(0..3)];
            let e = match effort {
                Some(ReasoningEffort::Low) => -1.2,
                Some(ReasoningEffort::High) => 0.7,
                _ => 0.0,
            };
            let prompt = rng.random_range(20..400u64);
            let noise: f64 = rng.random_range(-0.6..0.6);
            let y = base + e + 0.3 * (prompt as f64).ln() + noise;
            let r = req(app, rng.random(), prompt, effort);
            let predicted = p.predict(&r);
            let actual = y.exp() as u64;
            if i >= 2000 {
                late.push((predicted.unwrap_or(0.0), actual as f64));
            }
            p.learn(&r, predicted, actual);
        }
        let rho = spearman(&late).unwrap_or(0.0);
        assert!(rho > 0.85, "{rho}");
        let rep = p.report(2000.0).expect("a report");
        assert_eq!(rep.samples, 1000);
        assert!(rep.long_precision.unwrap_or(0.0) > 0.8, "{rep:?}");
        assert!(rep.long_recall.unwrap_or(0.0) > 0.8, "{rep:?}");
        for c in &rep.classes {
            if c.count > 50 {
                assert!(c.median_miss_factor.unwrap_or(9.0) < 2.0, "{rep:?}");
            }
        }
    }

    /// A conversation's later turns are predicted from its earlier ones.
    #[test]
    fn a_conversation_remembers_its_turns() {
        let p = Predictor::new(1);
        for turn in 0..3 {
            for conv in 1..=200u64 {
                let long = conv % 2 == 0;
                let mut r = req(1, conv, 100, None);
                r.turns = turn + 1;
                let predicted = p.predict(&r);
                p.learn(&r, predicted, if long { 8000 } else { 300 });
            }
        }
        // a new turn of a long conversation and one of a short one
        let (long, short) = (req(1, 10, 100, None), req(1, 11, 100, None));
        let (pl, ps) = (
            p.predict(&long).unwrap_or(0.0),
            p.predict(&short).unwrap_or(0.0),
        );
        assert!(pl > 3.0 * ps, "{pl} {ps}");
    }

    #[test]
    fn thinking_off_is_zero_and_nothing_learned_is_none() {
        let p = Predictor::new(3);
        assert_eq!(p.predict(&req(1, 1, 10, None)), None);
        let mut off = req(1, 1, 10, None);
        off.thinking = false;
        assert_eq!(p.predict(&off), Some(0.0));
        let mut hinted = req(1, 1, 10, None);
        hinted.difficulty_hint = Some(5000.0);
        assert_eq!(p.predict(&hinted), Some(5000.0));
    }
}
