//! When each request is sent: offsets from the start of the run.
//!
//! Gamma inter-arrival times with shape `B` (burstiness) and scale
//! `1/(R*B)`, exactly as vLLM's `benchmark_serving` draws them, so the mean
//! rate is `R` for every `B`, `B = 1` is Poisson and `B < 1` is burstier
//! (coefficient of variation `1/sqrt(B)`).

use rand::SeedableRng;
use rand_distr::{Distribution, Gamma};
use std::time::Duration;

/// How requests arrive.
#[derive(Debug, Clone, PartialEq)]
pub enum Arrivals {
    /// Everything at once (`--rate inf`).
    AllAtOnce,
    /// Gamma inter-arrivals at `rate` requests/s with shape `burstiness`.
    Gamma { rate: f64, burstiness: f64 },
    /// One request every `1/rate` s.
    Constant { rate: f64 },
    /// Offsets replayed from a trace file.
    Trace(Vec<Duration>),
}

impl Arrivals {
    /// Offsets of the first `n` sends, drawn from `seed`.
    pub fn schedule(&self, n: usize, seed: u64) -> Result<Vec<Duration>, String> {
        let mut out = Vec::with_capacity(n);
        match *self {
            Arrivals::Trace(ref offsets) => out.extend(offsets.iter().copied().take(n)),
            Arrivals::AllAtOnce => out.resize(n, Duration::ZERO),
            Arrivals::Constant { rate } => {
                check_rate(rate)?;
                out.extend((0..n).map(|i| Duration::from_secs_f64(i as f64 / rate)));
            }
            Arrivals::Gamma { rate, burstiness } => {
                check_rate(rate)?;
                if !(burstiness > 0.0 && burstiness.is_finite()) {
                    return Err(format!("burstiness must be > 0, got {burstiness}"));
                }
                let gamma =
                    Gamma::new(burstiness, 1.0 / (rate * burstiness)).map_err(|e| e.to_string())?;
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
                let mut t = 0.0f64;
                for _ in 0..n {
                    out.push(Duration::from_secs_f64(t));
                    t += gamma.sample(&mut rng);
                }
            }
        }
        Ok(out)
    }
}

fn check_rate(rate: f64) -> Result<(), String> {
    if rate > 0.0 && rate.is_finite() {
        Ok(())
    } else {
        Err(format!("rate must be > 0 and finite, got {rate}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gaps(a: &Arrivals, n: usize) -> Vec<f64> {
        let s = a.schedule(n, 42).unwrap_or_default();
        s.windows(2).map(|w| (w[1] - w[0]).as_secs_f64()).collect()
    }

    fn mean_cv(v: &[f64]) -> (f64, f64) {
        let m = v.iter().sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / v.len() as f64;
        (m, var.sqrt() / m)
    }

    #[test]
    fn gamma_mean_rate_and_cv_match_burstiness() {
        for (rate, b) in [(4.0, 1.0), (4.0, 0.5), (20.0, 0.25), (2.0, 2.0)] {
            let (m, cv) = mean_cv(&gaps(
                &Arrivals::Gamma {
                    rate,
                    burstiness: b,
                },
                200_001,
            ));
            assert!(
                (m * rate - 1.0).abs() < 0.02,
                "rate {rate} b {b}: mean gap {m}"
            );
            let want = 1.0 / f64::sqrt(b);
            assert!(
                (cv - want).abs() / want < 0.03,
                "rate {rate} b {b}: cv {cv} want {want}"
            );
        }
    }

    #[test]
    fn schedules_are_reproducible_and_validated() {
        let a = Arrivals::Gamma {
            rate: 3.0,
            burstiness: 0.5,
        };
        assert_eq!(a.schedule(100, 7), a.schedule(100, 7));
        assert_ne!(a.schedule(100, 7), a.schedule(100, 8));
        assert!(Arrivals::Gamma {
            rate: 0.0,
            burstiness: 1.0
        }
        .schedule(1, 1)
        .is_err());
        assert!(Arrivals::Gamma {
            rate: 1.0,
            burstiness: 0.0
        }
        .schedule(1, 1)
        .is_err());
        let c = Arrivals::Constant { rate: 2.0 }
            .schedule(3, 1)
            .unwrap_or_default();
        assert_eq!(c[2], Duration::from_secs(1));
    }
}
