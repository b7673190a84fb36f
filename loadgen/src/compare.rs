//! `thinkgate load compare A B`: are two runs (or two arms of one run)
//! different, beyond noise?
//!
//! For each latency quantile and for accuracy, B minus A with a 95%
//! percentile-bootstrap confidence interval (requests resampled with
//! replacement within each run, seeded, 2,000 resamples). A change counts only
//! when its whole interval clears the threshold (`--fail-if`), the rule
//! criterion uses for benchmarks.

use crate::client::RequestResult;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

/// The per-request numbers compare needs (a subset of `requests.jsonl`).
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct Sample {
    #[serde(default)]
    pub status: u16,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub correct: bool,
    #[serde(default)]
    pub arm: Option<String>,
    #[serde(default)]
    pub ttft_s: Option<f64>,
    #[serde(default)]
    pub ttfvt_s: Option<f64>,
    #[serde(default)]
    pub thinking_s: Option<f64>,
    #[serde(default)]
    pub e2e_s: f64,
    #[serde(default)]
    pub tpot_s: Option<f64>,
}

impl Sample {
    fn ok(&self) -> bool {
        self.error.is_none() && (200..300).contains(&self.status)
    }

    fn get(&self, metric: &str) -> Option<f64> {
        match metric {
            "ttft" => self.ttft_s,
            "ttfvt" => self.ttfvt_s,
            "thinking" => self.thinking_s,
            "e2e" => Some(self.e2e_s),
            "tpot" => self.tpot_s,
            _ => None,
        }
    }
}

impl From<&RequestResult> for Sample {
    fn from(r: &RequestResult) -> Self {
        Self {
            status: r.status,
            error: r.error.clone(),
            correct: r.correct,
            arm: r.arm.clone(),
            ttft_s: r.ttft_s,
            ttfvt_s: r.ttfvt_s,
            thinking_s: r.thinking_s,
            e2e_s: r.e2e_s,
            tpot_s: r.tpot_s,
        }
    }
}

/// Read `requests.jsonl` from a run directory, or from beside a
/// `summary.json` path.
pub fn load_run(path: &Path) -> anyhow::Result<Vec<Sample>> {
    let file = if path.is_dir() {
        path.join("requests.jsonl")
    } else if path.file_name().is_some_and(|n| n == "summary.json") {
        path.with_file_name("requests.jsonl")
    } else {
        path.to_path_buf()
    };
    let text = std::fs::read_to_string(&file)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map_err(|e| anyhow::anyhow!("{}:{}: {e}", file.display(), i + 1))
        })
        .collect()
}

/// One compared quantity.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Delta {
    pub name: String,
    pub a: f64,
    pub b: f64,
    /// B - A.
    pub diff: f64,
    /// 95% interval of B - A.
    pub lo: f64,
    pub hi: f64,
    /// Relative change (B - A) / A, and its interval.
    pub rel: f64,
    pub rel_lo: f64,
    pub rel_hi: f64,
}

fn quantile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// A named statistic of a sorted sample.
pub type Stat = (&'static str, fn(&[f64]) -> f64);

/// Percentile bootstrap of `f(B) - f(A)` for several statistics at once:
/// each resample is drawn once and sorted once. `stats` map a sorted sample
/// to a number.
pub fn bootstrap(a: &[f64], b: &[f64], stats: &[Stat], resamples: usize, seed: u64) -> Vec<Delta> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let sorted = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v
    };
    let (sa, sb) = (sorted(a), sorted(b));
    let mut diffs = vec![Vec::with_capacity(resamples); stats.len()];
    let mut rels = vec![Vec::with_capacity(resamples); stats.len()];
    let (mut ra, mut rb) = (vec![0.0; a.len()], vec![0.0; b.len()]);
    for _ in 0..resamples {
        for x in ra.iter_mut() {
            *x = a[rng.random_range(0..a.len())];
        }
        for x in rb.iter_mut() {
            *x = b[rng.random_range(0..b.len())];
        }
        ra.sort_by(f64::total_cmp);
        rb.sort_by(f64::total_cmp);
        for (i, (_, f)) in stats.iter().enumerate() {
            let (x, y) = (f(&ra), f(&rb));
            diffs[i].push(y - x);
            rels[i].push(if x != 0.0 { (y - x) / x.abs() } else { 0.0 });
        }
    }
    stats
        .iter()
        .enumerate()
        .map(|(i, (name, f))| {
            diffs[i].sort_by(f64::total_cmp);
            rels[i].sort_by(f64::total_cmp);
            let (fa, fb) = (f(&sa), f(&sb));
            let rel = if fa != 0.0 { (fb - fa) / fa.abs() } else { 0.0 };
            Delta {
                name: (*name).to_string(),
                a: fa,
                b: fb,
                diff: fb - fa,
                lo: quantile(&diffs[i], 0.025),
                hi: quantile(&diffs[i], 0.975),
                rel,
                rel_lo: quantile(&rels[i], 0.025),
                rel_hi: quantile(&rels[i], 0.975),
            }
        })
        .collect()
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

const STATS: &[Stat] = &[
    ("p50", |v| quantile(v, 0.5)),
    ("p90", |v| quantile(v, 0.9)),
    ("p99", |v| quantile(v, 0.99)),
    ("mean", mean),
];

/// Compare two sets of requests.
pub fn compare(a: &[Sample], b: &[Sample], resamples: usize, seed: u64) -> Vec<Delta> {
    let mut out = Vec::new();
    let ok_a: Vec<&Sample> = a.iter().filter(|s| s.ok()).collect();
    let ok_b: Vec<&Sample> = b.iter().filter(|s| s.ok()).collect();
    for metric in ["ttft", "ttfvt", "thinking", "e2e", "tpot"] {
        let va: Vec<f64> = ok_a.iter().filter_map(|s| s.get(metric)).collect();
        let vb: Vec<f64> = ok_b.iter().filter_map(|s| s.get(metric)).collect();
        if va.len() < 2 || vb.len() < 2 {
            continue;
        }
        for mut d in bootstrap(&va, &vb, STATS, resamples, seed) {
            d.name = format!("{metric}.{}", d.name);
            out.push(d);
        }
    }
    // Accuracy over all requests sent (an error is not a correct answer).
    let acc = |s: &[Sample]| {
        s.iter()
            .map(|x| if x.correct { 1.0 } else { 0.0 })
            .collect::<Vec<f64>>()
    };
    let (va, vb) = (acc(a), acc(b));
    if !va.is_empty() && !vb.is_empty() {
        out.extend(bootstrap(&va, &vb, &[("accuracy", mean)], resamples, seed));
    }
    out
}

/// Split one run's requests by the gateway's `x-thinkgate-arm`.
pub fn by_arm(samples: Vec<Sample>) -> BTreeMap<String, Vec<Sample>> {
    let mut m: BTreeMap<String, Vec<Sample>> = BTreeMap::new();
    for s in samples {
        m.entry(s.arm.clone().unwrap_or_else(|| "none".into()))
            .or_default()
            .push(s);
    }
    m
}

/// A regression gate: `ttfvt.p99>10%`, `e2e.p50>0.5s`, `accuracy<-2pp`.
#[derive(Debug, Clone, PartialEq)]
pub struct FailIf {
    pub name: String,
    pub above: bool,
    pub value: f64,
    pub unit: Unit,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Unit {
    /// Relative change.
    Percent,
    /// Absolute change in seconds.
    Seconds,
    /// Absolute change in percentage points (accuracy).
    Points,
}

impl FailIf {
    pub fn parse(s: &str) -> Result<Self, String> {
        let (name, rest, above) = match (s.split_once('>'), s.split_once('<')) {
            (Some((n, r)), _) => (n, r, true),
            (_, Some((n, r))) => (n, r, false),
            _ => return Err(format!("{s:?}: expected NAME>VALUE or NAME<VALUE")),
        };
        let rest = rest.trim().trim_start_matches('+');
        let (num, unit) = if let Some(v) = rest.strip_suffix('%') {
            (v, Unit::Percent)
        } else if let Some(v) = rest.strip_suffix("pp") {
            (v, Unit::Points)
        } else if let Some(v) = rest.strip_suffix("ms") {
            let v: f64 = v.parse().map_err(|_| format!("{s:?}: bad number"))?;
            return Ok(Self {
                name: name.trim().into(),
                above,
                value: v / 1000.0,
                unit: Unit::Seconds,
            });
        } else if let Some(v) = rest.strip_suffix('s') {
            (v, Unit::Seconds)
        } else {
            return Err(format!("{s:?}: give a unit: %, s, ms or pp"));
        };
        let value: f64 = num.parse().map_err(|_| format!("{s:?}: bad number"))?;
        Ok(Self {
            name: name.trim().into(),
            above,
            value,
            unit,
        })
    }

    /// True when the whole interval is past the threshold.
    pub fn tripped(&self, d: &Delta) -> bool {
        let (lo, hi, v) = match self.unit {
            Unit::Percent => (d.rel_lo * 100.0, d.rel_hi * 100.0, self.value),
            Unit::Seconds => (d.lo, d.hi, self.value),
            Unit::Points => (d.lo * 100.0, d.hi * 100.0, self.value),
        };
        if self.above {
            lo > v
        } else {
            hi < v
        }
    }
}

/// The comparison table.
pub fn table(a_name: &str, b_name: &str, deltas: &[Delta]) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "B = {b_name} vs A = {a_name} (95% bootstrap intervals of B - A)"
    );
    let _ = writeln!(
        o,
        "{:<16} {:>10} {:>10} {:>10} {:>24} {:>8}",
        "metric", "A", "B", "B-A", "95% CI", "change"
    );
    for d in deltas {
        let sig = if d.lo > 0.0 || d.hi < 0.0 { "*" } else { "" };
        let _ = writeln!(
            o,
            "{:<16} {:>10.4} {:>10.4} {:>10.4} {:>24} {:>7.1}%{sig}",
            d.name,
            d.a,
            d.b,
            d.diff,
            format!("[{:.4}, {:.4}]", d.lo, d.hi),
            d.rel * 100.0
        );
    }
    let _ = writeln!(o, "* the interval excludes 0");
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_distr::{Distribution, LogNormal};

    fn samples(n: usize, median: f64, seed: u64, acc: f64) -> Vec<Sample> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let d = LogNormal::new(median.ln(), 0.5).unwrap_or_else(|_| unreachable!());
        (0..n)
            .map(|_| {
                let v = d.sample(&mut rng);
                Sample {
                    status: 200,
                    correct: rng.random::<f64>() < acc,
                    ttft_s: Some(v / 10.0),
                    ttfvt_s: Some(v),
                    e2e_s: v * 1.2,
                    ..Sample::default()
                }
            })
            .collect()
    }

    #[test]
    fn finds_a_known_shift_and_no_shift_when_there_is_none() {
        let a = samples(800, 2.0, 1, 0.8);
        let b = samples(800, 3.0, 2, 0.6);
        let d = compare(&a, &b, 500, 7);
        let m = d.iter().find(|x| x.name == "ttfvt.p50").unwrap();
        // The interval holds the true shift (+1.0 s) and excludes 0.
        assert!(
            m.lo > 0.0 && m.lo <= 1.0 && 1.0 <= m.hi && m.hi < 2.0,
            "{m:?}"
        );
        assert!(m.lo <= m.diff && m.diff <= m.hi);
        let acc = d.iter().find(|x| x.name == "accuracy").unwrap();
        // True shift -0.2 (0.8 -> 0.6).
        assert!(acc.lo <= -0.2 && -0.2 <= acc.hi && acc.hi < 0.0, "{acc:?}");

        let same = compare(&a, &samples(800, 2.0, 3, 0.8), 500, 7);
        let m = same.iter().find(|x| x.name == "ttfvt.p50").unwrap();
        assert!(m.lo < 0.0 && m.hi > 0.0, "no shift: {m:?}");
    }

    #[test]
    fn fail_if_needs_the_whole_interval_past_the_threshold() {
        let a = samples(800, 2.0, 1, 0.8);
        let b = samples(800, 3.0, 2, 0.6);
        let d = compare(&a, &b, 500, 7);
        let get = |n: &str| d.iter().find(|x| x.name == n).unwrap().clone();
        assert!(FailIf::parse("ttfvt.p50>10%")
            .unwrap()
            .tripped(&get("ttfvt.p50")));
        assert!(!FailIf::parse("ttfvt.p50>90%")
            .unwrap()
            .tripped(&get("ttfvt.p50")));
        assert!(FailIf::parse("ttfvt.p50>0.5s")
            .unwrap()
            .tripped(&get("ttfvt.p50")));
        assert!(FailIf::parse("accuracy<-5pp")
            .unwrap()
            .tripped(&get("accuracy")));
        assert!(!FailIf::parse("accuracy<-40pp")
            .unwrap()
            .tripped(&get("accuracy")));
        assert_eq!(FailIf::parse("e2e.p99>250ms").unwrap().value, 0.25);
        assert!(FailIf::parse("ttfvt.p99").is_err());
        assert!(FailIf::parse("ttfvt.p99>10").is_err());
    }
}
