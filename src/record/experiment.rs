//! The live view of an experiment, and its guardrail.
//!
//! Each arm's figures since the experiment started, and the always-valid
//! tests of its second arm (B) against its first (A), which may be read at
//! every refresh (`thinkgate_asu::sequential`). With
//! `[experiment.guardrail]`, an arm the tests' confidence sequences show
//! worse than the other beyond a margin is stopped: [`StoppedArms`], read
//! by every assignment, sends no new request to it. The sequences cover the
//! true differences at every moment at once (probability 1 - alpha), so a
//! rule that acts the first time one passes the margin stops an arm that is
//! not that much worse with probability alpha at most, however often it
//! looks.

use super::{Outcome, RequestRecord};
use crate::config::GuardrailConfig;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use thinkgate_asu::sequential::{Decision, Moments, Sequential};

/// Arms the guardrail stopped: a bit per arm in the configuration's order.
/// Set by the live view (off the hot path), read with one atomic load by
/// every assignment.
#[derive(Debug, Default)]
pub struct StoppedArms(AtomicU64);

impl StoppedArms {
    pub fn mask(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    pub(super) fn stop(&self, arm: usize) {
        if arm < 64 {
            self.0.fetch_or(1 << arm, Ordering::Relaxed);
        }
    }

    pub(super) fn clear(&self) {
        self.0.store(0, Ordering::Relaxed);
    }
}

/// One arm's figures since the experiment started.
#[derive(Debug, Default)]
struct ArmFigures {
    requests: u64,
    failed: u64,
    ttfvt: Moments,
    e2e: Moments,
    /// Feedback `correct` grades (1 or 0).
    graded: Moments,
}

/// Request ids remembered to attribute feedback to an arm.
const MAX_IDS: usize = 100_000;

/// Why the guardrail stopped an arm: the test, and where its confidence
/// sequence stood.
#[derive(Debug, Clone, serde::Serialize)]
struct Stop {
    arm: String,
    test: &'static str,
    /// The stopped arm's mean minus the other's (for accuracy: the other's
    /// minus the stopped arm's), and the sequence's bound nearest 0.
    worse_by: f64,
    at_least: f64,
    margin: f64,
    n_a: usize,
    n_b: usize,
}

/// The live view of an experiment (see the module docs).
#[derive(Debug)]
pub(super) struct Experiment {
    /// Every arm, in the configuration's order.
    arms: Vec<String>,
    figures: std::collections::HashMap<String, ArmFigures>,
    /// TTFVT, E2E, errors, accuracy.
    tests: [Sequential; 4],
    ids: std::collections::HashMap<String, String>,
    order: VecDeque<String>,
    guardrail: Option<GuardrailConfig>,
    stopped: Arc<StoppedArms>,
    stop: Option<Stop>,
    /// The decisions last exported (`thinkgate_experiment_decision`).
    exported: [Decision; 4],
}

const TESTS: [&str; 4] = crate::config::GUARDRAIL_TESTS;

impl Experiment {
    /// A new live view; it clears `stopped` (a new experiment starts with
    /// every arm running).
    pub(super) fn new(
        arms: &[String],
        guardrail: Option<GuardrailConfig>,
        stopped: Arc<StoppedArms>,
    ) -> Self {
        stopped.clear();
        for t in TESTS {
            crate::metrics::experiment_decision(t, 0.0);
        }
        Self {
            arms: arms.to_vec(),
            figures: arms
                .iter()
                .map(|a| (a.clone(), ArmFigures::default()))
                .collect(),
            tests: [Sequential::new(0.05); 4],
            ids: Default::default(),
            order: VecDeque::new(),
            guardrail,
            stopped,
            stop: None,
            exported: [Decision::KeepRunning; 4],
        }
    }

    /// Export the tests' decisions that changed (each changes once).
    fn export(&mut self) {
        for (i, t) in self.tests.iter().enumerate() {
            let d = t.verdict_now().decision;
            if d != self.exported[i] {
                self.exported[i] = d;
                let v = match d {
                    Decision::BLower => -1.0,
                    Decision::BHigher => 1.0,
                    Decision::KeepRunning => 0.0,
                };
                crate::metrics::experiment_decision(TESTS[i], v);
            }
        }
    }

    pub(super) fn arms(&self) -> &[String] {
        &self.arms
    }

    pub(super) fn set_guardrail(&mut self, g: Option<GuardrailConfig>) {
        self.guardrail = g;
    }

    /// Which side of the tests an arm is on: Some(false) for A, Some(true)
    /// for B, None for a third arm.
    fn side(&self, arm: &str) -> Option<bool> {
        match self.arms.iter().position(|a| a == arm) {
            Some(0) => Some(false),
            Some(1) => Some(true),
            _ => None,
        }
    }

    pub(super) fn push(&mut self, r: &RequestRecord) {
        // inferences only (not `GET /v1/models`)
        if r.api == "other" {
            return;
        }
        let side = self.side(&r.arm);
        let Some(f) = self.figures.get_mut(&r.arm) else {
            return;
        };
        let ok = r.status < 400 && r.outcome.ended_normally();
        let failed = !ok && r.outcome != Outcome::ClientGone;
        f.requests += 1;
        f.failed += u64::from(failed);
        let bit = |x: bool| if x { 1.0 } else { 0.0 };
        if let Some(b) = side {
            self.tests[2].add(b, bit(failed));
        }
        if let (true, Some(s)) = (ok, &r.asu) {
            if let Some(t) = s.ttfvt() {
                f.ttfvt.add(t);
                if let Some(b) = side {
                    self.tests[0].add(b, t);
                }
            }
            f.e2e.add(s.e2e());
            if let Some(b) = side {
                self.tests[1].add(b, s.e2e());
            }
        }
        if self.order.len() >= MAX_IDS {
            if let Some(old) = self.order.pop_front() {
                self.ids.remove(&old);
            }
        }
        if self.ids.insert(r.id.clone(), r.arm.clone()).is_none() {
            self.order.push_back(r.id.clone());
        }
        self.export();
        self.guard();
    }

    pub(super) fn feedback(&mut self, fb: &crate::feedback::Feedback) {
        if fb.metric != "correct" {
            return;
        }
        let Some(arm) = self.ids.get(&fb.request_id).cloned() else {
            return;
        };
        let x = match fb.value {
            crate::feedback::Value::Bool(b) => f64::from(u8::from(b)),
            crate::feedback::Value::Number(v) => f64::from(u8::from(v >= 0.5)),
        };
        if let Some(f) = self.figures.get_mut(&arm) {
            f.graded.add(x);
            crate::metrics::experiment_accuracy(&arm, f.graded.mean);
        }
        if let Some(b) = self.side(&arm) {
            self.tests[3].add(b, x);
            self.export();
            self.guard();
        }
    }

    /// Stop an arm the tests show worse beyond the margin (one arm at
    /// most: the other keeps serving).
    fn guard(&mut self) {
        let Some(g) = &self.guardrail else { return };
        if self.stop.is_some() {
            return;
        }
        for (i, t) in self.tests.iter().enumerate() {
            if !g.tests.iter().any(|n| n == TESTS[i]) {
                continue;
            }
            let Some(Worse {
                side,
                worse_by,
                at_least,
                margin,
            }) = worse(
                t,
                i != 3,
                if i < 2 {
                    Margin::Share(g.latency_margin)
                } else {
                    Margin::Points(g.rate_margin)
                },
            )
            else {
                continue;
            };
            let Some(arm) = self.arms.get(side).cloned() else {
                return;
            };
            let stop = Stop {
                arm: arm.clone(),
                test: TESTS[i],
                worse_by,
                at_least,
                margin,
                n_a: t.a.n,
                n_b: t.b.n,
            };
            tracing::warn!(
                arm = %arm,
                test = stop.test,
                worse_by,
                at_least,
                margin,
                "experiment guardrail: arm stopped, new requests go to the other arms"
            );
            crate::metrics::experiment_arm_stopped(&arm, true);
            self.stopped.stop(side);
            self.stop = Some(stop);
            return;
        }
    }

    pub(super) fn summary(&self) -> serde_json::Value {
        let mean = |m: &Moments| (m.n > 0).then_some(m.mean);
        let arms: serde_json::Map<String, serde_json::Value> = self
            .arms
            .iter()
            .filter_map(|a| {
                let f = self.figures.get(a)?;
                Some((
                    a.clone(),
                    serde_json::json!({
                        "requests": f.requests,
                        "errors": if f.requests > 0 { f.failed as f64 / f.requests as f64 } else { 0.0 },
                        "ttfvt_mean_seconds": mean(&f.ttfvt),
                        "e2e_mean_seconds": mean(&f.e2e),
                        "accuracy": mean(&f.graded),
                        "graded": f.graded.n,
                    }),
                ))
            })
            .collect();
        let tests: serde_json::Map<String, serde_json::Value> = TESTS
            .iter()
            .zip(&self.tests)
            .map(|(n, t)| {
                let v = t.verdict_now();
                let finite = |x: f64| x.is_finite().then_some(x);
                (
                    (*n).to_string(),
                    serde_json::json!({
                        "decision": v.decision, "n_a": v.n_a, "n_b": v.n_b,
                        "estimate": finite(v.estimate), "lo": finite(v.lo), "hi": finite(v.hi),
                    }),
                )
            })
            .collect();
        serde_json::json!({
            "a": self.arms.first(), "b": self.arms.get(1),
            "arms": arms,
            "sequential": tests,
            "guardrail": self.guardrail.as_ref().map(|g| serde_json::json!({
                "latency_margin": g.latency_margin,
                "rate_margin": g.rate_margin,
                "tests": g.tests,
                "stopped": self.stop,
            })),
        })
    }
}

/// How far a test's arms may differ before the guardrail acts.
#[derive(Debug, Clone, Copy)]
enum Margin {
    /// A share of the better arm's mean (latencies).
    Share(f64),
    /// Absolute (rates).
    Points(f64),
}

/// An arm the confidence sequence shows worse beyond the margin.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Worse {
    /// 0: A, 1: B.
    side: usize,
    worse_by: f64,
    /// The sequence's bound nearest 0: worse by at least this much.
    at_least: f64,
    margin: f64,
}

/// Whether `t`'s confidence sequence shows one arm worse than the other
/// by more than `margin` (`higher_is_worse` for latencies and errors, not
/// for accuracy).
fn worse(t: &Sequential, higher_is_worse: bool, margin: Margin) -> Option<Worse> {
    let (est, lo, hi) = t.interval_now()?;
    let margin = match margin {
        Margin::Share(m) => {
            let better = if (est > 0.0) == higher_is_worse {
                t.a.mean
            } else {
                t.b.mean
            };
            m * better.abs()
        }
        Margin::Points(m) => m,
    };
    // the bound nearest 0, oriented so that positive means B is worse
    let (b_worse, a_worse) = if higher_is_worse {
        (lo, -hi)
    } else {
        (-hi, lo)
    };
    let side = if b_worse > margin {
        1
    } else if a_worse > margin {
        0
    } else {
        return None;
    };
    Some(Worse {
        side,
        worse_by: est.abs(),
        at_least: if side == 1 { b_worse } else { a_worse },
        margin,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// `n` observations per arm, B's scaled by `scale`, arriving at random,
    /// checked by the guardrail after each one: the side it stopped.
    fn watched(rng: &mut rand::rngs::StdRng, n: usize, scale: f64) -> Option<usize> {
        let mut t = Sequential::new(0.05);
        let (mut na, mut nb) = (0, 0);
        while na < n || nb < n {
            let is_b = nb < n && (na >= n || rng.random_bool(0.5));
            // log-normal-ish latencies: exp of a normal
            let z: f64 = (0..12).map(|_| rng.random::<f64>()).sum::<f64>() - 6.0;
            let x = (0.6 * z).exp() * if is_b { scale } else { 1.0 };
            t.add(is_b, x);
            if is_b {
                nb += 1;
            } else {
                na += 1;
            }
            if let Some(w) = worse(&t, true, Margin::Share(0.1)) {
                return Some(w.side);
            }
        }
        None
    }

    #[test]
    fn equal_arms_are_almost_never_stopped_however_often_it_looks() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let stops = (0..200)
            .filter(|_| watched(&mut rng, 500, 1.0).is_some())
            .count();
        eprintln!("equal arms: {stops} of 200 stopped");
        // alpha is 0.05 for a difference of 0; a 10% margin makes it far rarer
        assert!(
            stops <= 4,
            "{stops} of 200 equal experiments stopped an arm"
        );
    }

    #[test]
    fn an_arm_twice_as_slow_is_stopped_and_only_it() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(12);
        for _ in 0..20 {
            assert_eq!(watched(&mut rng, 500, 2.0), Some(1));
            assert_eq!(watched(&mut rng, 500, 0.5), Some(0));
        }
    }

    #[test]
    fn a_difference_inside_the_margin_is_not_acted_on() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(13);
        let stops = (0..50)
            .filter(|_| watched(&mut rng, 2000, 1.05).is_some())
            .count();
        eprintln!("5% slower, 10% margin: {stops} of 50 stopped");
        assert!(
            stops <= 1,
            "{stops} of 50 stopped at a 5% difference, margin 10%"
        );
    }

    #[test]
    fn accuracy_lower_is_worse() {
        let mut t = Sequential::new(0.05);
        for i in 0..400 {
            t.add(false, f64::from(u8::from(i % 10 < 8)));
            t.add(true, f64::from(u8::from(i % 10 < 4)));
        }
        let w = worse(&t, false, Margin::Points(0.02)).unwrap();
        assert_eq!(w.side, 1);
        assert!(
            w.at_least > 0.02 && (w.worse_by - 0.4).abs() < 1e-9,
            "{w:?}"
        );
    }

    #[test]
    fn stopped_arms_are_bits() {
        let s = StoppedArms::default();
        s.stop(1);
        s.stop(70);
        assert_eq!(s.mask(), 0b10);
        s.clear();
        assert_eq!(s.mask(), 0);
    }
}
