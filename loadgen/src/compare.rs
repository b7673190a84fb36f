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

/// The per-request numbers compare needs, from either source: a load
/// generator's `requests.jsonl` line or a gateway's `--records` line.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    /// When the request was sent or arrived, in seconds (the order of the
    /// sequential test).
    pub at: f64,
    pub status: u16,
    pub error: Option<String>,
    /// Whether the answer was right, when it was graded (the load
    /// generator knows the answers; production traffic has none).
    pub correct: Option<bool>,
    pub arm: Option<String>,
    pub model: Option<String>,
    pub ttft_s: Option<f64>,
    pub ttfvt_s: Option<f64>,
    pub thinking_s: Option<f64>,
    pub e2e_s: f64,
    pub tpot_s: Option<f64>,
    pub thinking_tokens: Option<f64>,
    pub visible_tokens: Option<f64>,
    /// The gateway's outcome (records only).
    pub outcome: Option<String>,
    /// The gateway forced the answer (budget, deadline, loop).
    pub forced: bool,
    /// The gateway found the thinking looping.
    pub looped: bool,
    /// The gateway's request id (records only), which feedback names.
    pub id: Option<String>,
    /// Feedback grades by metric (`true` is 1, `false` 0), joined from
    /// `{"feedback": ...}` lines; `correct` also sets `correct`.
    pub feedback: BTreeMap<String, f64>,
}

impl Sample {
    /// Ended as the protocol says a response ends: its latencies mean
    /// something.
    pub(crate) fn ok(&self) -> bool {
        self.error.is_none()
            && (200..300).contains(&self.status)
            && self
                .outcome
                .as_deref()
                .is_none_or(|o| o == "completed" || o == "answerless")
    }

    /// Failed for a reason of the serving side (a client that left is not
    /// a failure of the arm).
    pub(crate) fn failed(&self) -> bool {
        !self.ok() && self.outcome.as_deref() != Some("client_gone")
    }

    fn get(&self, metric: &str) -> Option<f64> {
        match metric {
            "ttft" => self.ttft_s,
            "ttfvt" => self.ttfvt_s,
            "thinking" => self.thinking_s,
            "e2e" => Some(self.e2e_s),
            "tpot" => self.tpot_s,
            "thinking_tokens" => self.thinking_tokens,
            "visible_tokens" => self.visible_tokens,
            _ => None,
        }
    }

    /// A load generator line (`scheduled_s`, times in seconds).
    fn from_result(v: &serde_json::Value) -> Self {
        let f = |k: &str| v[k].as_f64();
        let ok = v["error"].is_null();
        Self {
            at: f("scheduled_s").unwrap_or(0.0),
            status: v["status"].as_u64().unwrap_or(0) as u16,
            error: v["error"].as_str().map(String::from),
            correct: Some(v["correct"].as_bool().unwrap_or(false) && ok),
            arm: v["arm"].as_str().map(String::from),
            model: None,
            ttft_s: f("ttft_s"),
            ttfvt_s: f("ttfvt_s"),
            thinking_s: f("thinking_s"),
            e2e_s: f("e2e_s").unwrap_or(0.0),
            tpot_s: f("tpot_s"),
            thinking_tokens: f("thinking_tokens"),
            visible_tokens: f("visible_tokens"),
            outcome: None,
            forced: false,
            looped: false,
            id: None,
            feedback: BTreeMap::new(),
        }
    }

    /// A gateway record (`outcome`, times in ns since the request arrived).
    fn from_record(v: &serde_json::Value) -> Self {
        let ns = |k: &str| v[k].as_u64().map(|n| n as f64 / 1e9);
        let (first, done) = (ns("t_first_token_ns"), ns("t_done_ns"));
        let completion = v["completion_tokens"].as_f64().unwrap_or(0.0);
        let tpot = match (first, done) {
            (Some(a), Some(b)) if completion > 1.0 => Some((b - a) / (completion - 1.0)),
            _ => None,
        };
        let thinking_s = match (ns("t_think_start_ns"), ns("t_think_end_ns")) {
            (Some(a), Some(b)) => Some(b - a),
            _ if v["streamed"] == true => Some(0.0),
            _ => None,
        };
        let forced = v["actions"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x["action"] == "forced_answer"));
        Self {
            at: v["start_unix_ms"].as_f64().unwrap_or(0.0) / 1e3,
            status: v["status"].as_u64().unwrap_or(0) as u16,
            error: v["error"].as_str().map(String::from),
            correct: None,
            arm: v["arm"].as_str().map(String::from),
            model: v["model"].as_str().map(String::from),
            ttft_s: first,
            ttfvt_s: ns("t_first_visible_ns"),
            thinking_s,
            e2e_s: done.unwrap_or(0.0),
            tpot_s: tpot,
            thinking_tokens: v["thinking_tokens"].as_f64(),
            visible_tokens: v["visible_tokens"].as_f64(),
            outcome: v["outcome"].as_str().map(String::from),
            forced,
            looped: !v["thinking_loop"].is_null(),
            id: v["id"].as_str().map(String::from),
            feedback: BTreeMap::new(),
        }
    }

    /// One line of any kind a run holds; anything else is an error naming
    /// what was expected (never a sample of zeros).
    fn from_line(v: &serde_json::Value) -> Result<Line, String> {
        if let Some(f) = v.get("feedback") {
            let id = f["request_id"]
                .as_str()
                .ok_or("feedback without a request_id")?;
            let metric = f["metric"].as_str().unwrap_or("correct");
            let value = match &f["value"] {
                serde_json::Value::Bool(b) => f64::from(u8::from(*b)),
                x => x
                    .as_f64()
                    .ok_or("feedback value is neither a boolean nor a number")?,
            };
            Ok(Line::Grade(id.to_string(), metric.to_string(), value))
        } else if v.get("outcome").is_some() && v.get("id").is_some() {
            // a request that is not an inference (`GET /v1/models`) is left out
            Ok(if v["api"] == "other" {
                Line::Skip
            } else {
                Line::Request(Box::new(Self::from_record(v)))
            })
        } else if v.get("scheduled_s").is_some() && v.get("e2e_s").is_some() {
            Ok(Line::Request(Box::new(Self::from_result(v))))
        } else {
            Err("neither a load generator result (requests.jsonl), a gateway record (--records) nor feedback".into())
        }
    }
}

/// What one line of a run is.
enum Line {
    Request(Box<Sample>),
    /// Feedback: request id, metric, value.
    Grade(String, String, f64),
    Skip,
}

impl From<&RequestResult> for Sample {
    fn from(r: &RequestResult) -> Self {
        Self {
            at: r.scheduled_s,
            status: r.status,
            error: r.error.clone(),
            correct: Some(r.correct),
            arm: r.arm.clone(),
            model: None,
            ttft_s: r.ttft_s,
            ttfvt_s: r.ttfvt_s,
            thinking_s: r.thinking_s,
            e2e_s: r.e2e_s,
            tpot_s: r.tpot_s,
            thinking_tokens: Some(r.thinking_tokens as f64),
            visible_tokens: Some(r.visible_tokens as f64),
            outcome: None,
            forced: false,
            looped: false,
            id: None,
            feedback: BTreeMap::new(),
        }
    }
}

/// `requests.jsonl` of a run directory, or beside a `summary.json` path,
/// or the path itself.
fn requests_path(path: &Path) -> std::path::PathBuf {
    if path.is_dir() {
        path.join("requests.jsonl")
    } else if path.file_name().is_some_and(|n| n == "summary.json") {
        path.with_file_name("requests.jsonl")
    } else {
        path.to_path_buf()
    }
}

/// Every line of a JSONL file, as `T`.
fn read_lines<T: serde::de::DeserializeOwned>(file: &Path) -> anyhow::Result<Vec<T>> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map_err(|e| anyhow::anyhow!("{}:{}: {e}", file.display(), i + 1))
        })
        .collect()
}

/// The files a path names: a load run's `requests.jsonl` (its directory or
/// its `summary.json`), a JSONL file, or a directory of gateway records
/// (every `*.jsonl` in it: several replicas, rotated files).
fn files_of(path: &Path) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let req = requests_path(path);
    if !path.is_dir() || req.exists() {
        return Ok(vec![req]);
    }
    let mut files: Vec<_> = std::fs::read_dir(path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    files.sort();
    anyhow::ensure!(
        !files.is_empty(),
        "{}: no requests.jsonl and no *.jsonl records in it",
        path.display()
    );
    Ok(files)
}

/// The requests of a run: a load generator's results or a gateway's
/// records (one file, a directory of them), with the feedback among them
/// joined. Input it cannot read is an error, never a table of zeros.
pub fn load_run(path: &Path) -> anyhow::Result<Vec<Sample>> {
    load_runs(&[path.to_path_buf()])
}

/// Several runs (or records files) as one: the replicas of one experiment.
/// Feedback joins its request in whichever file either is (a grade may reach
/// another replica than its request did); the last grade of a metric wins.
pub fn load_runs(paths: &[std::path::PathBuf]) -> anyhow::Result<Vec<Sample>> {
    let mut out = Vec::new();
    let mut grades = Vec::new();
    for path in paths {
        let before = out.len();
        for file in files_of(path)? {
            let lines: Vec<serde_json::Value> = read_lines(&file)?;
            for (i, v) in lines.iter().enumerate() {
                match Sample::from_line(v)
                    .map_err(|e| anyhow::anyhow!("{} (line {}): {e}", file.display(), i + 1))?
                {
                    Line::Request(s) => out.push(*s),
                    Line::Grade(id, metric, value) => grades.push((id, metric, value)),
                    Line::Skip => {}
                }
            }
        }
        anyhow::ensure!(out.len() > before, "{}: no requests in it", path.display());
    }
    let index: std::collections::HashMap<String, usize> = out
        .iter()
        .enumerate()
        .filter_map(|(i, s)| Some((s.id.clone()?, i)))
        .collect();
    for (id, metric, value) in grades {
        if let Some(s) = index.get(&id).and_then(|&i| out.get_mut(i)) {
            if metric == "correct" {
                s.correct = Some(value >= 0.5);
            }
            s.feedback.insert(metric, value);
        }
    }
    Ok(out)
}

/// A run's requests whole, and its `summary.json` when there is one (for
/// the SLO and the engine KV samples), to draw its report again.
pub fn load_full(
    path: &Path,
) -> anyhow::Result<(Vec<RequestResult>, Option<crate::report::RunSummary>)> {
    let file = requests_path(path);
    let lines: Vec<serde_json::Value> = read_lines(&file)?;
    let results = lines
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            anyhow::ensure!(
                v.get("scheduled_s").is_some(),
                "{} (request {}): not a load generator result; reports are drawn from load runs",
                file.display(),
                i + 1
            );
            Ok(serde_json::from_value(v)?)
        })
        .collect::<anyhow::Result<Vec<RequestResult>>>()?;
    let summary = file.with_file_name("summary.json");
    let summary = std::fs::read_to_string(summary)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    Ok((results, summary))
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

/// What a metric reads from a request (None: the request does not count).
pub type Pick<'a, T> = dyn Fn(&Sample) -> Option<T> + 'a;

/// Compare two sets of requests: latencies and tokens of the requests that
/// ended normally; the shares of failed, answerless, forced and looping
/// requests over all of them; accuracy where answers were graded.
pub fn compare(a: &[Sample], b: &[Sample], resamples: usize, seed: u64) -> Vec<Delta> {
    let mut out = Vec::new();
    let ok_a: Vec<&Sample> = a.iter().filter(|s| s.ok()).collect();
    let ok_b: Vec<&Sample> = b.iter().filter(|s| s.ok()).collect();
    for metric in [
        "ttft",
        "ttfvt",
        "thinking",
        "e2e",
        "tpot",
        "thinking_tokens",
        "visible_tokens",
    ] {
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
    let share = |s: &[Sample], f: &Pick<'_, bool>| -> Vec<f64> {
        s.iter()
            .filter_map(f)
            .map(|x| if x { 1.0 } else { 0.0 })
            .collect()
    };
    let records = a.iter().chain(b).any(|s| s.outcome.is_some());
    let shares: [(&'static str, &Pick<'_, bool>); 5] = [
        ("errors", &|s| Some(s.failed())),
        ("answerless", &|s| {
            s.outcome.as_ref().map(|o| o == "answerless")
        }),
        ("forced", &|s| records.then_some(s.forced)),
        ("loops", &|s| records.then_some(s.looped)),
        // accuracy over all requests graded (an error is not a correct
        // answer); production records carry no grade
        ("accuracy", &|s| s.correct),
    ];
    for (name, f) in shares {
        let (va, vb) = (share(a, f), share(b, f));
        if !va.is_empty() && !vb.is_empty() {
            out.extend(bootstrap(&va, &vb, &[(name, mean)], resamples, seed));
        }
    }
    // scores from feedback, over the requests graded
    let metrics: std::collections::BTreeSet<&String> = a
        .iter()
        .chain(b)
        .flat_map(|s| s.feedback.keys())
        .filter(|m| *m != "correct")
        .collect();
    for m in metrics {
        let pick = |s: &[Sample]| -> Vec<f64> {
            s.iter()
                .filter_map(|x| x.feedback.get(m).copied())
                .collect()
        };
        let (va, vb) = (pick(a), pick(b));
        if !va.is_empty() && !vb.is_empty() {
            for mut d in bootstrap(&va, &vb, &[("mean", mean)], resamples, seed) {
                d.name = format!("feedback.{m}");
                out.push(d);
            }
        }
    }
    out
}

/// Split one run's requests by model (records name it; load runs do not:
/// one group, `all`).
pub fn by_model(samples: &[Sample]) -> BTreeMap<String, Vec<Sample>> {
    let mut m: BTreeMap<String, Vec<Sample>> = BTreeMap::new();
    for s in samples {
        m.entry(s.model.clone().unwrap_or_else(|| "all".into()))
            .or_default()
            .push(s.clone());
    }
    m
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
                    correct: Some(rng.random::<f64>() < acc),
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
