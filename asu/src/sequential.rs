//! An always-valid test for watching an experiment while it runs (the
//! gateway's live view in `/stats` and `thinkgate load compare` share it).
//!
//! A fixed-horizon test (the bootstrap intervals of `compare`) is valid
//! once, at a sample size chosen in advance. A team that looks at a live
//! experiment every few minutes and stops when the interval first excludes
//! zero gets far more false positives than it asked for. The mixture
//! sequential probability ratio test (mSPRT; Johari, Pekelis and Walsh,
//! "Always Valid Inference", 2017, the test behind Optimizely's stats
//! engine) may be looked at after every request: the chance that it ever
//! declares a difference that is not there stays below `alpha`.
//!
//! For the difference of two means (or proportions) `theta = mean_B -
//! mean_A`, with `V = var_A / n_A + var_B / n_B` and a normal mixture of
//! effects `theta ~ N(0, tau^2)`, the likelihood ratio against `theta = 0`
//! is
//!
//! `L = sqrt(V / (V + tau^2)) * exp(theta_hat^2 tau^2 / (2 V (V + tau^2)))`,
//!
//! and the test decides when `L >= 1 / alpha`. The variances are estimated
//! as the data come (normal approximation: valid as the counts grow, so
//! nothing is decided before `MIN_PER_ARM` requests per arm). `tau` is a
//! tenth of the pooled standard deviation: the size of effect the test is
//! tuned to find quickly; any other effect is still found, more slowly.

/// Requests each arm needs before the test may decide.
pub const MIN_PER_ARM: usize = 30;

/// Running mean and variance (Welford).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Moments {
    pub n: usize,
    pub mean: f64,
    m2: f64,
}

impl Moments {
    pub fn add(&mut self, x: f64) {
        self.n += 1;
        let d = x - self.mean;
        self.mean += d / self.n as f64;
        self.m2 += d * (x - self.mean);
    }

    pub fn var(&self) -> f64 {
        if self.n > 1 {
            self.m2 / (self.n - 1) as f64
        } else {
            0.0
        }
    }
}

/// What the test says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// B's mean is lower (for latencies and error shares: better).
    BLower,
    /// B's mean is higher.
    BHigher,
    /// Not enough evidence yet: keep the experiment running.
    KeepRunning,
}

/// The test's state after the observations seen, or at its decision.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Verdict {
    pub decision: Decision,
    /// Observations of A and B when it decided (or so far).
    pub n_a: usize,
    pub n_b: usize,
    /// B - A at that point.
    pub estimate: f64,
    /// The always-valid (1 - alpha) confidence sequence of B - A.
    pub lo: f64,
    pub hi: f64,
}

/// The mixture likelihood ratio and the confidence sequence's half width.
fn msprt(theta: f64, v: f64, tau2: f64, alpha: f64) -> (f64, f64) {
    if v <= 0.0 || tau2 <= 0.0 {
        return (1.0, f64::INFINITY);
    }
    let ln_l = 0.5 * (v / (v + tau2)).ln() + theta * theta * tau2 / (2.0 * v * (v + tau2));
    let half = (v * (v + tau2) / tau2 * (2.0 * (1.0 / alpha).ln() + ((v + tau2) / v).ln())).sqrt();
    (ln_l.exp(), half)
}

/// The test, fed one observation at a time; its first decision sticks (as
/// a team stops the experiment there).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sequential {
    alpha: f64,
    pub a: Moments,
    pub b: Moments,
    decided: Option<Verdict>,
}

impl Sequential {
    pub fn new(alpha: f64) -> Self {
        Self {
            alpha,
            a: Moments::default(),
            b: Moments::default(),
            decided: None,
        }
    }

    fn verdict(&self, decision: Decision) -> Verdict {
        let (a, b) = (&self.a, &self.b);
        let v = a.var() / a.n.max(1) as f64 + b.var() / b.n.max(1) as f64;
        let tau2 = 0.01 * (a.var() + b.var()) / 2.0;
        let theta = b.mean - a.mean;
        let (_, half) = msprt(theta, v, tau2, self.alpha);
        Verdict {
            decision,
            n_a: a.n,
            n_b: b.n,
            estimate: theta,
            lo: theta - half,
            hi: theta + half,
        }
    }

    /// One observation of arm B (`is_b`) or A; non-finite values are
    /// skipped. After the decision the observations still count for
    /// [`Sequential::interval_now`]; the decision stays.
    pub fn add(&mut self, is_b: bool, x: f64) {
        if !x.is_finite() {
            return;
        }
        if is_b {
            self.b.add(x);
        } else {
            self.a.add(x);
        }
        if self.decided.is_some() || self.a.n < MIN_PER_ARM || self.b.n < MIN_PER_ARM {
            return;
        }
        let (a, b) = (&self.a, &self.b);
        let v = a.var() / a.n as f64 + b.var() / b.n as f64;
        let tau2 = 0.01 * (a.var() + b.var()) / 2.0;
        let theta = b.mean - a.mean;
        let (l, _) = msprt(theta, v, tau2, self.alpha);
        if l >= 1.0 / self.alpha {
            self.decided = Some(self.verdict(if theta < 0.0 {
                Decision::BLower
            } else {
                Decision::BHigher
            }));
        }
    }

    /// The decision, or where the test stands.
    pub fn verdict_now(&self) -> Verdict {
        self.decided
            .unwrap_or_else(|| self.verdict(Decision::KeepRunning))
    }

    /// The always-valid confidence sequence of B - A over every
    /// observation so far, the decision's or not: `(estimate, lo, hi)`,
    /// `None` before `MIN_PER_ARM` observations of each arm. It covers the
    /// true difference at every moment at once with probability 1 - alpha,
    /// so a rule that acts the first time `lo` passes a margin (the
    /// gateway's guardrail) is wrong with probability alpha at most, however
    /// often it looks.
    pub fn interval_now(&self) -> Option<(f64, f64, f64)> {
        if self.a.n < MIN_PER_ARM || self.b.n < MIN_PER_ARM {
            return None;
        }
        let v = self.verdict(Decision::KeepRunning);
        Some((v.estimate, v.lo, v.hi))
    }

    /// Arm A's mean so far (`None` before its first observation).
    pub fn mean_a(&self) -> Option<f64> {
        (self.a.n > 0).then_some(self.a.mean)
    }
}

/// Run the test over observations in arrival order: `(arm is B, value)`.
pub fn run(observations: impl IntoIterator<Item = (bool, f64)>, alpha: f64) -> Verdict {
    let mut t = Sequential::new(alpha);
    for (is_b, x) in observations {
        t.add(is_b, x);
    }
    t.verdict_now()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_distr::{Distribution, LogNormal};

    /// One experiment of `n` requests per arm from two log-normal latency
    /// distributions, in random arrival order.
    fn experiment(rng: &mut rand::rngs::StdRng, n: usize, shift: f64) -> Vec<(bool, f64)> {
        let a = LogNormal::new(0.0, 0.8).unwrap_or_else(|_| unreachable!());
        let b = LogNormal::new(shift, 0.8).unwrap_or_else(|_| unreachable!());
        let mut v: Vec<(bool, f64)> = (0..2 * n)
            .map(|i| {
                if i < n {
                    (false, a.sample(rng))
                } else {
                    (true, b.sample(rng))
                }
            })
            .collect();
        // a random interleaving, as requests arrive
        for i in (1..v.len()).rev() {
            v.swap(i, rng.random_range(0..=i));
        }
        v
    }

    /// Whether a fixed-horizon z-test of the means, looked at after every
    /// 20 requests, ever said "different" (the peeking team's mistake).
    fn peeking_z_test_rejects(obs: &[(bool, f64)]) -> bool {
        let (mut a, mut b) = (Moments::default(), Moments::default());
        for (i, (is_b, x)) in obs.iter().enumerate() {
            if *is_b {
                b.add(*x);
            } else {
                a.add(*x);
            }
            if i % 20 == 19 && a.n >= MIN_PER_ARM && b.n >= MIN_PER_ARM {
                let se = (a.var() / a.n as f64 + b.var() / b.n as f64).sqrt();
                if ((b.mean - a.mean) / se).abs() > 1.96 {
                    return true;
                }
            }
        }
        false
    }

    /// Under no difference, peeked at after every request, the sequential
    /// test's false-positive rate stays near alpha; the fixed-horizon test
    /// peeked at every 20 requests goes far past it.
    #[test]
    fn false_positives_stay_at_alpha_under_peeking_where_a_fixed_test_fails() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let runs = 400;
        let (mut seq, mut fixed) = (0, 0);
        for _ in 0..runs {
            let obs = experiment(&mut rng, 1000, 0.0);
            if run(obs.iter().copied(), 0.05).decision != Decision::KeepRunning {
                seq += 1;
            }
            if peeking_z_test_rejects(&obs) {
                fixed += 1;
            }
        }
        let (seq, fixed) = (seq as f64 / runs as f64, fixed as f64 / runs as f64);
        eprintln!("false positives over {runs} null experiments: sequential {seq:.3}, peeking z-test {fixed:.3}");
        assert!(seq <= 0.06, "sequential {seq}");
        assert!(fixed >= 0.2, "peeking z-test {fixed}");
    }

    /// A real difference is found, in the right direction, and its
    /// confidence sequence holds the true difference.
    #[test]
    fn finds_a_real_difference_and_its_direction() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let mut found = 0;
        let mut covered = 0;
        // B 20% slower in the median
        let shift = 1.2f64.ln();
        let true_diff = (0.32f64).exp() * (1.2 - 1.0); // E[lognormal(0, .8)] = e^0.32
        for _ in 0..50 {
            let v = run(experiment(&mut rng, 3000, shift), 0.05);
            if v.decision == Decision::BHigher {
                found += 1;
                assert!(v.n_a + v.n_b < 6000);
            }
            assert_ne!(v.decision, Decision::BLower, "{v:?}");
            if v.lo <= true_diff && true_diff <= v.hi {
                covered += 1;
            }
        }
        assert!(found >= 45, "found {found} of 50");
        assert!(covered >= 45, "covered {covered} of 50");
    }

    #[test]
    fn nothing_is_decided_on_too_few_or_constant_samples() {
        let few: Vec<(bool, f64)> = (0..20).map(|i| (i % 2 == 0, f64::from(i))).collect();
        assert_eq!(run(few, 0.05).decision, Decision::KeepRunning);
        let flat: Vec<(bool, f64)> = (0..200).map(|i| (i % 2 == 0, 1.0)).collect();
        assert_eq!(run(flat, 0.05).decision, Decision::KeepRunning);
    }

    #[test]
    fn the_interval_goes_on_after_the_decision_which_stays() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut t = Sequential::new(0.05);
        for (b, x) in experiment(&mut rng, 2000, 0.5) {
            t.add(b, x);
        }
        let v = t.verdict_now();
        assert_eq!(v.decision, Decision::BHigher);
        let (est, lo, hi) = t.interval_now().unwrap();
        // every observation counted: narrower than at the decision
        assert!(t.a.n + t.b.n == 4000 && v.n_a + v.n_b < 4000);
        assert!(hi - lo < v.hi - v.lo, "{lo}..{hi} vs {}..{}", v.lo, v.hi);
        assert!(lo > 0.0 && est > lo && est < hi);
    }
}
