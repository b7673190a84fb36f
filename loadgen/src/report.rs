//! The run summary: one stable JSON schema (`summary.json`, see
//! `docs/loadgen.md`) and the text table printed at the end of a run.

use crate::client::RequestResult;
use serde::Serialize;
use std::collections::BTreeMap;

pub const SCHEMA: &str = "thinkgate.load.summary/v1";

/// Distribution of one quantity.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct Dist {
    pub count: usize,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Dist {
    pub fn of(mut v: Vec<f64>) -> Self {
        v.retain(|x| x.is_finite());
        if v.is_empty() {
            return Self::default();
        }
        v.sort_by(f64::total_cmp);
        let q = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        Self {
            count: v.len(),
            mean: v.iter().sum::<f64>() / v.len() as f64,
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            max: v[v.len() - 1],
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct Accuracy {
    pub graded: usize,
    pub correct: usize,
    pub rate: f64,
}

impl Accuracy {
    fn of<'a>(rs: impl Iterator<Item = &'a RequestResult>) -> Self {
        let (mut graded, mut correct) = (0, 0);
        for r in rs {
            graded += 1;
            correct += usize::from(r.correct);
        }
        Self {
            graded,
            correct,
            rate: if graded > 0 {
                correct as f64 / graded as f64
            } else {
                0.0
            },
        }
    }
}

/// Service-level objectives for goodput.
#[derive(Debug, Clone, Copy, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct Slo {
    pub ttfvt_s: Option<f64>,
    pub e2e_s: Option<f64>,
    pub ttft_s: Option<f64>,
}

impl Slo {
    /// Parse `ttfvt=10s,e2e=60s` (units s or ms).
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut slo = Slo::default();
        for part in s.split(',').filter(|p| !p.trim().is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?}: expected name=value"))?;
            let v = v.trim();
            let secs = if let Some(ms) = v.strip_suffix("ms") {
                ms.parse::<f64>().map(|x| x / 1000.0)
            } else {
                v.trim_end_matches('s').parse::<f64>()
            }
            .map_err(|_| format!("{part:?}: bad duration"))?;
            match k.trim() {
                "ttfvt" => slo.ttfvt_s = Some(secs),
                "e2e" => slo.e2e_s = Some(secs),
                "ttft" => slo.ttft_s = Some(secs),
                other => return Err(format!("unknown SLO {other:?} (ttfvt, ttft, e2e)")),
            }
        }
        Ok(slo)
    }

    pub fn met(&self, r: &RequestResult) -> bool {
        let within =
            |limit: Option<f64>, v: Option<f64>| limit.is_none_or(|l| v.is_some_and(|v| v <= l));
        r.ok()
            && within(self.ttfvt_s, r.ttfvt_s)
            && within(self.e2e_s, Some(r.e2e_s))
            && within(self.ttft_s, r.ttft_s)
    }
}

#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct Throughput {
    pub output_tokens_per_s: f64,
    pub thinking_tokens_per_s: f64,
    pub visible_tokens_per_s: f64,
    pub requests_per_s: f64,
    pub goodput_requests_per_s: f64,
}

#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct TimelinePoint {
    pub t_s: f64,
    pub output_tokens_per_s: f64,
    pub in_flight: usize,
}

/// `summary.json`.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct RunSummary {
    pub schema: String,
    pub label: String,
    pub run: serde_json::Value,
    pub sent: usize,
    pub ok: usize,
    pub errors: BTreeMap<String, usize>,
    pub duration_s: f64,
    pub throughput: Throughput,
    pub slo: Slo,
    pub goodput_fraction: f64,
    pub latency_s: BTreeMap<String, Dist>,
    pub tokens: BTreeMap<String, Dist>,
    pub accuracy: Accuracy,
    pub accuracy_by_difficulty: BTreeMap<String, Accuracy>,
    pub accuracy_by_domain: BTreeMap<String, Accuracy>,
    /// p99 / p50 of E2E.
    pub straggler_ratio: f64,
    pub send_lateness_s: Dist,
    pub by_backend: BTreeMap<String, BTreeMap<String, Dist>>,
    pub timeline: Vec<TimelinePoint>,
    /// (seconds since start, mean engine KV use 0..1) from `--scrape`.
    #[serde(default)]
    pub engine_kv: Vec<(f64, f64)>,
    /// `--percentile-metrics` at `--metric-percentiles`, in ms, as
    /// `{"ttfvt": {"p99": 812.0}}` (absent without the option).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub percentiles_ms: BTreeMap<String, BTreeMap<String, f64>>,
}

/// The metrics `--percentile-metrics` takes: vLLM's names (`ttft`, `tpot`,
/// `itl`, `e2el`) and the ASU ones (`ttfvt`, `thinking`). `itl` is each
/// request's mean inter-token latency (vLLM pools every gap of every
/// request instead).
pub const PERCENTILE_METRICS: &[&str] = &["ttft", "ttfvt", "thinking", "tpot", "itl", "e2el"];

/// The values of `metric` over the successful requests, in seconds.
fn metric_values(results: &[RequestResult], metric: &str) -> Option<Vec<f64>> {
    let pick: fn(&RequestResult) -> Option<f64> = match metric {
        "ttft" => |r| r.ttft_s,
        "ttfvt" => |r| r.ttfvt_s,
        "thinking" => |r| r.thinking_s,
        "tpot" => |r| r.tpot_s,
        "itl" => |r| r.itl_mean_s,
        "e2el" | "e2e" => |r| Some(r.e2e_s),
        _ => return None,
    };
    Some(
        results
            .iter()
            .filter(|r| r.ok())
            .filter_map(pick)
            .filter(|x| x.is_finite())
            .collect(),
    )
}

/// `--percentile-metrics` (comma-separated names) at `--metric-percentiles`
/// (comma-separated numbers in 0..=100), in ms, nearest rank.
pub fn percentiles(
    results: &[RequestResult],
    metrics: &str,
    percentiles: &str,
) -> Result<BTreeMap<String, BTreeMap<String, f64>>, String> {
    let ps: Vec<f64> = percentiles
        .split(',')
        .map(|p| {
            p.trim()
                .parse::<f64>()
                .ok()
                .filter(|p| (0.0..=100.0).contains(p))
                .ok_or_else(|| format!("--metric-percentiles: {p:?} is not a number in 0..=100"))
        })
        .collect::<Result<_, _>>()?;
    let mut out = BTreeMap::new();
    for m in metrics.split(',').map(str::trim).filter(|m| !m.is_empty()) {
        let mut v = metric_values(results, m).ok_or_else(|| {
            format!(
                "--percentile-metrics: {m:?} is not one of {}",
                PERCENTILE_METRICS.join(", ")
            )
        })?;
        v.sort_by(f64::total_cmp);
        let mut row = BTreeMap::new();
        for p in &ps {
            let value = if v.is_empty() {
                f64::NAN
            } else {
                let rank = ((p / 100.0 * v.len() as f64).ceil() as usize).clamp(1, v.len());
                v[rank - 1] * 1e3
            };
            row.insert(format!("p{p}"), value);
        }
        out.insert(m.to_string(), row);
    }
    Ok(out)
}

fn error_kind(e: &str, status: u16) -> String {
    if status != 0 && !(200..300).contains(&status) {
        return format!("http_{status}");
    }
    e.split(':').next().unwrap_or(e).chars().take(40).collect()
}

pub fn summarize(
    label: &str,
    run: serde_json::Value,
    results: &[RequestResult],
    slo: Slo,
) -> RunSummary {
    let ok: Vec<&RequestResult> = results.iter().filter(|r| r.ok()).collect();
    let mut errors = BTreeMap::new();
    for r in results.iter().filter(|r| !r.ok()) {
        *errors
            .entry(error_kind(r.error.as_deref().unwrap_or("error"), r.status))
            .or_insert(0) += 1;
    }
    let start = results
        .iter()
        .map(|r| r.scheduled_s + r.lateness_s)
        .fold(f64::INFINITY, f64::min);
    let end = results.iter().map(|r| r.done_at_s).fold(0.0, f64::max);
    let duration = if start.is_finite() {
        (end - start).max(1e-9)
    } else {
        0.0
    };
    let per_s = |x: f64| if duration > 0.0 { x / duration } else { 0.0 };
    let think: u64 = ok.iter().map(|r| r.thinking_tokens).sum();
    let vis: u64 = ok.iter().map(|r| r.visible_tokens).sum();
    let good = ok.iter().filter(|r| slo.met(r)).count();
    let col = |f: &dyn Fn(&RequestResult) -> Option<f64>| {
        Dist::of(ok.iter().filter_map(|r| f(r)).collect())
    };
    let mut latency = BTreeMap::new();
    latency.insert("ttft".into(), col(&|r| r.ttft_s));
    latency.insert("ttfvt".into(), col(&|r| r.ttfvt_s));
    latency.insert("thinking".into(), col(&|r| r.thinking_s));
    latency.insert("e2e".into(), col(&|r| Some(r.e2e_s)));
    latency.insert("tpot".into(), col(&|r| r.tpot_s));
    latency.insert("itl_max".into(), col(&|r| r.itl_max_s));
    let mut tokens = BTreeMap::new();
    tokens.insert("thinking".into(), col(&|r| Some(r.thinking_tokens as f64)));
    tokens.insert("visible".into(), col(&|r| Some(r.visible_tokens as f64)));
    let e2e = &latency["e2e"];
    let straggler = if e2e.p50 > 0.0 {
        e2e.p99 / e2e.p50
    } else {
        0.0
    };
    let mut by_diff: BTreeMap<String, Vec<&RequestResult>> = BTreeMap::new();
    let mut by_dom: BTreeMap<String, Vec<&RequestResult>> = BTreeMap::new();
    let mut by_backend: BTreeMap<String, Vec<&RequestResult>> = BTreeMap::new();
    for r in results {
        by_diff
            .entry(r.difficulty.clone().unwrap_or_else(|| "unknown".into()))
            .or_default()
            .push(r);
        by_dom
            .entry(r.domain.clone().unwrap_or_else(|| "unknown".into()))
            .or_default()
            .push(r);
        if let Some(b) = &r.backend {
            if r.ok() {
                by_backend.entry(b.clone()).or_default().push(r);
            }
        }
    }
    RunSummary {
        schema: SCHEMA.into(),
        label: label.into(),
        run,
        sent: results.len(),
        ok: ok.len(),
        errors,
        duration_s: duration,
        throughput: Throughput {
            output_tokens_per_s: per_s((think + vis) as f64),
            thinking_tokens_per_s: per_s(think as f64),
            visible_tokens_per_s: per_s(vis as f64),
            requests_per_s: per_s(ok.len() as f64),
            goodput_requests_per_s: per_s(good as f64),
        },
        slo,
        goodput_fraction: if results.is_empty() {
            0.0
        } else {
            good as f64 / results.len() as f64
        },
        latency_s: latency,
        tokens,
        accuracy: Accuracy::of(results.iter()),
        accuracy_by_difficulty: by_diff
            .into_iter()
            .map(|(k, v)| (k, Accuracy::of(v.into_iter())))
            .collect(),
        accuracy_by_domain: by_dom
            .into_iter()
            .map(|(k, v)| (k, Accuracy::of(v.into_iter())))
            .collect(),
        straggler_ratio: straggler,
        send_lateness_s: Dist::of(results.iter().map(|r| r.lateness_s).collect()),
        by_backend: by_backend
            .into_iter()
            .map(|(k, v)| {
                let mut m = BTreeMap::new();
                m.insert(
                    "ttfvt".into(),
                    Dist::of(v.iter().filter_map(|r| r.ttfvt_s).collect()),
                );
                m.insert("e2e".into(), Dist::of(v.iter().map(|r| r.e2e_s).collect()));
                (k, m)
            })
            .collect(),
        timeline: timeline(results, start, end),
        engine_kv: Vec::new(),
        percentiles_ms: BTreeMap::new(),
    }
}

fn timeline(results: &[RequestResult], start: f64, end: f64) -> Vec<TimelinePoint> {
    if !start.is_finite() || end <= start {
        return Vec::new();
    }
    let n = ((end - start).ceil() as usize).clamp(1, 3600);
    let step = (end - start) / n as f64;
    let mut pts: Vec<TimelinePoint> = (0..n)
        .map(|i| TimelinePoint {
            t_s: (i as f64 + 0.5) * step,
            ..TimelinePoint::default()
        })
        .collect();
    for r in results {
        let s = r.scheduled_s + r.lateness_s - start;
        let e = r.done_at_s - start;
        for p in pts.iter_mut() {
            if p.t_s >= s && p.t_s < e {
                p.in_flight += 1;
            }
        }
        if r.ok() {
            // Spread the request's output over its streaming time.
            let first = s + r.ttft_s.unwrap_or(0.0);
            let span = (e - first).max(step);
            let rate = (r.thinking_tokens + r.visible_tokens) as f64 / span;
            for p in pts.iter_mut() {
                let lo = (p.t_s - step / 2.0).max(first);
                let hi = (p.t_s + step / 2.0).min(e.max(first + step));
                if hi > lo {
                    p.output_tokens_per_s += rate * (hi - lo) / step;
                }
            }
        }
    }
    pts
}

/// The text table printed at the end of a run.
pub fn table(s: &RunSummary) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "== {} ==",
        if s.label.is_empty() {
            "ASU report"
        } else {
            &s.label
        }
    );
    let _ = writeln!(
        o,
        "requests      {} sent, {} ok, errors {:?}",
        s.sent, s.ok, s.errors
    );
    let _ = writeln!(o, "duration      {:.1} s", s.duration_s);
    let t = &s.throughput;
    let _ = writeln!(
        o,
        "service (S)   {:.0} output tok/s ({:.0} thinking + {:.0} visible), {:.2} req/s, goodput {:.2} req/s ({:.0}% within SLO)",
        t.output_tokens_per_s,
        t.thinking_tokens_per_s,
        t.visible_tokens_per_s,
        t.requests_per_s,
        t.goodput_requests_per_s,
        s.goodput_fraction * 100.0
    );
    let _ = writeln!(
        o,
        "user (U)      {:>10} {:>9} {:>9} {:>9} {:>9}",
        "seconds", "mean", "p50", "p90", "p99"
    );
    for k in ["ttft", "ttfvt", "thinking", "e2e", "tpot", "itl_max"] {
        if let Some(d) = s.latency_s.get(k) {
            let _ = writeln!(
                o,
                "              {:>10} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
                k, d.mean, d.p50, d.p90, d.p99
            );
        }
    }
    for (m, row) in &s.percentiles_ms {
        let cells: Vec<String> = row.iter().map(|(p, v)| format!("{p} {v:.1}")).collect();
        let _ = writeln!(o, "              {m:>10} ms: {}", cells.join(", "));
    }
    let _ = writeln!(o, "stragglers    p99/p50 E2E = {:.2}", s.straggler_ratio);
    let _ = writeln!(
        o,
        "tokens        thinking p50 {:.0} p99 {:.0}; visible p50 {:.0} p99 {:.0}",
        s.tokens["thinking"].p50,
        s.tokens["thinking"].p99,
        s.tokens["visible"].p50,
        s.tokens["visible"].p99
    );
    let _ = write!(
        o,
        "accuracy (A)  {:.1}% of {}",
        s.accuracy.rate * 100.0,
        s.accuracy.graded
    );
    for (k, a) in &s.accuracy_by_difficulty {
        let _ = write!(o, "; {k} {:.1}% of {}", a.rate * 100.0, a.graded);
    }
    let _ = writeln!(o);
    for (b, m) in &s.by_backend {
        let _ = writeln!(
            o,
            "backend       {b}: {} req, TTFVT p50 {:.3} p99 {:.3}, E2E p99 {:.3}",
            m["e2e"].count, m["ttfvt"].p50, m["ttfvt"].p99, m["e2e"].p99
        );
    }
    if let Some(peak) = s.engine_kv.iter().map(|p| p.1).reduce(f64::max) {
        let _ = writeln!(
            o,
            "engine KV     peak {:.0}% (scraped, mean over engines)",
            peak * 100.0
        );
    }
    let l = &s.send_lateness_s;
    let _ = writeln!(
        o,
        "send lateness p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        l.p50 * 1e3,
        l.p99 * 1e3,
        l.max * 1e3
    );
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dist_nearest_rank() {
        let d = Dist::of((1..=100).map(f64::from).collect());
        assert_eq!(
            (d.p50, d.p90, d.p99, d.max, d.count),
            (50.0, 90.0, 99.0, 100.0, 100)
        );
        assert_eq!(Dist::of(vec![]).count, 0);
    }

    #[test]
    fn slo_parse() {
        let s = Slo::parse("ttfvt=10s,e2e=60s,ttft=500ms").unwrap_or_default();
        assert_eq!(
            (s.ttfvt_s, s.e2e_s, s.ttft_s),
            (Some(10.0), Some(60.0), Some(0.5))
        );
        assert!(Slo::parse("foo=1").is_err());
        assert!(Slo::parse("e2e=abc").is_err());
    }
}

#[cfg(test)]
mod schema_tests {
    use super::*;
    use crate::client::RequestResult;

    fn result(i: usize, ok: bool, ttfvt: f64, correct: bool, diff: &str) -> RequestResult {
        RequestResult {
            index: i,
            scheduled_s: i as f64 * 0.1,
            lateness_s: 0.0001,
            status: if ok { 200 } else { 502 },
            error: (!ok).then(|| "http".into()),
            difficulty: Some(diff.into()),
            domain: Some("arithmetic".into()),
            app: None,
            reference: "4".into(),
            extracted: Some("4".into()),
            correct,
            backend: Some("b0".into()),
            arm: None,
            request_id: None,
            predicted_thinking: None,
            done_at_s: i as f64 * 0.1 + ttfvt + 0.5,
            ttft_s: Some(ttfvt / 4.0),
            ttfvt_s: Some(ttfvt),
            thinking_s: Some(ttfvt * 0.7),
            e2e_s: ttfvt + 0.5,
            tpot_s: Some(0.01),
            itl_max_s: Some(0.02),
            itl_mean_s: Some(0.01),
            thinking_tokens: 300,
            visible_tokens: 50,
            token_source: thinkgate_asu::TokenSource::Usage,
            finish_reason: Some("stop".into()),
            summary: None,
        }
    }

    #[test]
    fn percentiles_of_vllms_metrics_and_the_asu_ones() {
        let rs: Vec<RequestResult> = (0..100)
            .map(|i| result(i, true, 1.0 + i as f64 * 0.01, true, "easy"))
            .collect();
        let p = percentiles(&rs, "e2el, ttfvt", "50,99").unwrap();
        assert_eq!(p["e2el"]["p50"].round(), 1990.0);
        assert_eq!(p["e2el"]["p99"].round(), 2480.0);
        assert!(p["ttfvt"]["p99"].is_finite());
        assert!(percentiles(&rs, "goodput", "99")
            .unwrap_err()
            .contains("ttft, ttfvt"));
        assert!(percentiles(&rs, "ttft", "101").is_err());
    }

    /// Every bar of the report's bar charts has its own label (the
    /// accuracy chart once labelled two of three).
    #[test]
    fn every_bar_is_labelled() {
        let rs: Vec<RequestResult> = (0..30)
            .map(|i| result(i, true, 1.0, i % 2 == 0, ["easy", "medium", "hard"][i % 3]))
            .collect();
        let s = summarize("t", serde_json::json!({}), &rs, Slo::default());
        let svg = crate::plots::accuracy_by("Accuracy per difficulty", &s.accuracy_by_difficulty)
            .unwrap();
        for label in ["easy (10)", "medium (10)", "hard (10)"] {
            assert!(svg.contains(label), "{label} missing");
        }
        let svg = crate::plots::thinking_by(&rs).unwrap();
        for label in ["easy (10)", "medium (10)", "hard (10)"] {
            assert!(svg.contains(label), "{label} missing");
        }
    }

    /// `summary.json` keeps this shape (docs/loadgen.md): tools reading it
    /// must not break silently. Change both together.
    #[test]
    fn summary_schema_is_stable() {
        let rs: Vec<RequestResult> = (0..20)
            .map(|i| {
                result(
                    i,
                    i != 3,
                    1.0 + i as f64 * 0.1,
                    i % 4 != 0,
                    ["easy", "hard"][i % 2],
                )
            })
            .collect();
        let s = summarize(
            "t",
            serde_json::json!({"url": "x"}),
            &rs,
            Slo::parse("ttfvt=2s").unwrap_or_default(),
        );
        let v = serde_json::to_value(&s).unwrap_or_default();
        let keys: Vec<&str> = v
            .as_object()
            .map(|o| o.keys().map(String::as_str).collect())
            .unwrap_or_default();
        assert_eq!(
            keys,
            [
                "schema",
                "label",
                "run",
                "sent",
                "ok",
                "errors",
                "duration_s",
                "throughput",
                "slo",
                "goodput_fraction",
                "latency_s",
                "tokens",
                "accuracy",
                "accuracy_by_difficulty",
                "accuracy_by_domain",
                "straggler_ratio",
                "send_lateness_s",
                "by_backend",
                "timeline",
                "engine_kv"
            ]
        );
        assert_eq!(v["schema"], SCHEMA);
        for k in ["ttft", "ttfvt", "thinking", "e2e", "tpot", "itl_max"] {
            for f in ["count", "mean", "p50", "p90", "p99", "max"] {
                assert!(v["latency_s"][k][f].is_number(), "latency_s.{k}.{f}");
            }
        }
        for k in [
            "output_tokens_per_s",
            "thinking_tokens_per_s",
            "visible_tokens_per_s",
            "requests_per_s",
            "goodput_requests_per_s",
        ] {
            assert!(v["throughput"][k].is_number(), "throughput.{k}");
        }
        assert_eq!(v["errors"]["http_502"], 1);
        assert_eq!(v["accuracy"]["graded"], 20);
        assert_eq!(v["accuracy_by_difficulty"]["easy"]["graded"], 10);
        // Requests with TTFVT <= 2 s met the SLO: 1.0..=2.0 s are i = 0..=10, minus the error.
        assert_eq!((s.goodput_fraction * 20.0).round() as i64, 10);
        assert!(v["timeline"][0]["in_flight"].is_number());
        let back: RunSummary = serde_json::from_value(v).unwrap_or_else(|_| unreachable!());
        assert_eq!(back, s);
    }
}
