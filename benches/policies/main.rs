//! Routing policies against each other on label-free mixed traffic, with
//! several seeds per policy and bootstrap intervals.
//!
//! For each condition (a load and a burstiness), each seed and each policy:
//! 4 fresh simulated engines (small KV caches, so long thinkers fill them),
//! `replicas` gateways in front with the policy, and the load generator's
//! built-in mixed traffic (five applications, multi-turn sessions, no
//! difficulty label anywhere) under Gamma arrivals, spread at random over
//! the gateways. The same seed gives every policy the same items and the
//! same arrival times. `oracle` is `difficulty_aware` given each item's
//! difficulty label as a client hint: a ceiling, not a claim.
//!
//! Each run sends for `WARMUP_S + duration_s` seconds and counts only the
//! requests sent after the warm-up.
//!
//! Intervals: a paired two-stage bootstrap (seeds with replacement, then
//! requests within each seed), 95%, 1,000 resamples. Raw per-request
//! results are kept under `target/bench-policies/`.
//!
//! `cargo bench --bench policies -- [seeds=5 | first..last] [duration_s=20] [conditions=half,high,burst] [policies=round_robin,least_request,p2c,difficulty_aware,oracle] [replicas=1] [report]`
//! (`report`: print the tables again from the requests kept by an earlier run).
//!
//! `ENGINES=vllm`: the same on real vLLM servers instead of the simulated
//! engines (see `vllm.rs`), started once for the whole bench and drained
//! between runs. `ENGINES=sim-vllm`: simulated engines shaped as those vLLM
//! servers (3 engines, 8 sequences, a 6,144-token cache, a step time fitted
//! to their throughput, real time) given the same requests, to check
//! whether the simulator ranks the policies as the real engines do.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod vllm;

use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use thinkgate::config::Config;
use thinkgate::server::Gateway;
use thinkgate_loadgen::cli::{DatasetName, LoadArgs};
use thinkgate_sim::SimConfig;

const ENGINES: u64 = 4;
const TIME_SCALE: f64 = 8.0;
/// Arrival rate the 4 engines sustain on this traffic (requests/s): the
/// rate past which the output throughput stops growing with round robin,
/// measured with the conditions `x<load>` (`-- 9..9 20 x0.9,x1.2,x1.5
/// round_robin` at 12 req/s: 19.5k, 24.5k and 24.7k output tokens/s).
const CAPACITY: f64 = 14.0;
/// SLO of goodput: first visible token and whole response, in wall seconds
/// at the time scale (80 s and 240 s of an engine running at 1x).
const SLO_TTFVT_S: f64 = 10.0;
const SLO_E2E_S: f64 = 30.0;
/// Each run's first seconds warm up the engines and the learning policies
/// (a production gateway has seen traffic before): sent like the rest, not
/// counted.
const WARMUP_S: f64 = 15.0;

#[derive(Clone, Debug)]
struct Condition {
    name: String,
    load: f64,
    burstiness: f64,
}

/// `half`, `high` and `burst`; `x1.2` is Poisson arrivals at 1.2 times
/// the capacity (to measure the capacity itself).
fn condition(name: &str) -> Option<Condition> {
    let (load, burstiness) = match name {
        "half" => (0.5, 1.0),
        "high" => (0.9, 1.0),
        "burst" => (0.9, 0.25),
        x => (x.strip_prefix('x')?.parse().ok()?, 1.0),
    };
    Some(Condition {
        name: name.into(),
        load,
        burstiness,
    })
}

/// One request's outcome, as the bench needs it.
#[derive(Clone, Debug)]
struct Req {
    ok: bool,
    ttfvt: f64,
    e2e: f64,
    correct: bool,
    graded: bool,
    /// The application of the mixed traffic.
    app: String,
    /// What the gateway predicted (`x-thinkgate-predicted-thinking`).
    predicted: Option<f64>,
    thinking: f64,
}

struct Run {
    reqs: Vec<Req>,
    /// Output tokens/s over the run.
    tps: f64,
    predictor: Option<serde_json::Value>,
}

/// Where the runs' requests go: fresh simulated engines per run, or the
/// real vLLM servers of the whole bench.
enum Backends {
    Simulated,
    Vllm(vllm::Engines),
    SimLikeVllm,
}

impl Backends {
    fn name(&self) -> &'static str {
        match self {
            Backends::Simulated => "",
            Backends::Vllm(_) => "vllm-",
            Backends::SimLikeVllm => "sim-vllm-",
        }
    }

    /// Thinking tokens from which a request counts as long: `LONG`, scaled
    /// as the real engines' lengths are.
    fn long(&self) -> f64 {
        match self {
            Backends::Simulated => LONG,
            Backends::Vllm(_) | Backends::SimLikeVllm => LONG * vllm::SCALE,
        }
    }

    fn capacity(&self) -> f64 {
        match self {
            Backends::Simulated => CAPACITY,
            Backends::Vllm(_) | Backends::SimLikeVllm => vllm::CAPACITY,
        }
    }
}

/// The simulated engines of one run (none on real vLLM).
fn sim_configs(backends: &Backends) -> Vec<SimConfig> {
    match backends {
        Backends::Vllm(_) => Vec::new(),
        Backends::SimLikeVllm => {
            // the real servers share two cores: so do these
            let host = std::sync::Arc::new(thinkgate_sim::engine::Host::default());
            (0..vllm::ENGINES as u64)
                .map(|i| vllm::like_vllm(100 + i, &host))
                .collect()
        }
        Backends::Simulated => (0..ENGINES)
            .map(|i| {
                let mut c = SimConfig {
                    listen: "127.0.0.1:0".parse().unwrap(),
                    seed: 100 + i,
                    time_scale: TIME_SCALE,
                    ..SimConfig::default()
                };
                // A small GPU's KV cache (32k tokens) so long thinkers fill it.
                c.engine.num_blocks = 2048;
                c.engine.max_num_seqs = 64;
                c
            })
            .collect(),
    }
}

async fn run(
    backends: &Backends,
    policy: &str,
    cond: &Condition,
    seed: u64,
    duration: f64,
    replicas: usize,
) -> Run {
    let mut urls = Vec::new();
    let mut tasks = Vec::new();
    if let Backends::Vllm(engines) = backends {
        engines.idle().await;
        urls.clone_from(&engines.urls);
    }
    for c in sim_configs(backends) {
        let (addr, _sim, task) = thinkgate_sim::server::spawn(c).await.unwrap();
        urls.push(format!("http://{addr}"));
        tasks.push(task);
    }
    // `oracle` and `projected` are difficulty_aware variants
    let routing = match policy {
        "oracle" => "type = \"difficulty_aware\"".to_string(),
        "projected" | "oracle_projected" => {
            "type = \"difficulty_aware\"\nplacement = \"projected_tokens\"".to_string()
        }
        p => format!("type = {p:?}"),
    };
    let mut gateways = Vec::new();
    for _ in 0..replicas {
        let cfg = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            admin: "127.0.0.1:0".parse().unwrap(),
            upstreams: urls.clone(),
            routing: toml::from_str(&routing).unwrap(),
            scrape_interval_ms: 250,
            drain_timeout_secs: 5,
            ..Config::default()
        };
        gateways.push(Gateway::start(cfg).await.unwrap());
    }
    let out = out_dir().join(run_name(backends, cond, policy, replicas, seed));
    let _ = std::fs::remove_dir_all(&out);
    let rate = backends.capacity() * cond.load;
    let num_requests = (rate * (WARMUP_S + duration) * 3.0) as usize + 10;
    let mut args = LoadArgs {
        rate: rate.to_string(),
        burstiness: cond.burstiness,
        num_requests,
        duration: Some(WARMUP_S + duration),
        seed,
        timeout: 900.0,
        dataset_name: Some(DatasetName::Mixed),
        oracle: policy.starts_with("oracle"),
        slo: format!("ttfvt={SLO_TTFVT_S}s,e2e={SLO_E2E_S}s"),
        label: policy.into(),
        quiet: true,
        out: Some(out.clone()),
        ..LoadArgs::new(
            gateways
                .iter()
                .map(|g| format!("http://{}", g.proxy_addr))
                .collect::<Vec<_>>()
                .join(","),
        )
    };
    if let Backends::Vllm(_) | Backends::SimLikeVllm = backends {
        // the same items for every policy of a seed, with their budgets
        let items = out_dir().join(format!("vllm-items-s{seed}.jsonl"));
        vllm::write_items(num_requests, seed, &items);
        args.dataset = Some(items);
        args.dataset_name = None;
        args.in_order = true;
        args.model = Some("tiny".into());
    }
    let summary = thinkgate_loadgen::cli::execute(&args).await.unwrap();
    let predictor = gateways[0].shared.fleet.load().arms[0]
        .policy
        .stats()
        .and_then(|s| serde_json::from_str(&s).ok());
    for gw in gateways {
        gw.shutdown();
        gw.wait().await;
    }
    for t in tasks {
        t.abort();
    }
    Run {
        reqs: read_requests(&out.join("requests.jsonl")),
        tps: summary.throughput.output_tokens_per_s,
        predictor,
    }
}

fn run_name(
    backends: &Backends,
    cond: &Condition,
    policy: &str,
    replicas: usize,
    seed: u64,
) -> String {
    format!(
        "{}{}-{policy}-r{replicas}-s{seed}",
        backends.name(),
        cond.name
    )
}

fn out_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-policies")
}

fn read_requests(path: &Path) -> Vec<Req> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["scheduled_s"].as_f64().unwrap_or(0.0) >= WARMUP_S)
        .map(|v| {
            let ok = v["status"].as_u64() == Some(200) && v.get("error").is_none();
            let e2e = v["e2e_s"].as_f64().unwrap_or(f64::INFINITY);
            Req {
                ok,
                // a failed request waited forever as far as its user knows
                ttfvt: if ok {
                    v["ttfvt_s"].as_f64().unwrap_or(e2e)
                } else {
                    f64::INFINITY
                },
                e2e: if ok { e2e } else { f64::INFINITY },
                correct: v["correct"].as_bool().unwrap_or(false),
                // support answers from a document: graded as well
                graded: ok,
                app: v["app"].as_str().unwrap_or("").to_string(),
                predicted: v["predicted_thinking"].as_f64(),
                thinking: v["thinking_tokens"].as_f64().unwrap_or(0.0),
            }
        })
        .collect()
}

/// Thinking tokens from which a request counts as long (the policy's
/// default `long_threshold_tokens`).
const LONG: f64 = 2000.0;

/// How well the gateway's predictions ordered and classified thinking
/// length, against the best a predictor of request fields alone could do
/// (the fields are fixed per application in this traffic, so that
/// predictor is each application's mean log length, fitted in hindsight on
/// these very requests: an upper bound for it). Requests with thinking off
/// are left out (both know they think for 0).
fn predictor_quality(reqs: &[&Req], long: f64) -> Option<String> {
    let on: Vec<&&Req> = reqs
        .iter()
        .filter(|r| r.ok && r.predicted.is_some_and(|p| p > 0.0))
        .collect();
    if on.len() < 20 {
        return None;
    }
    let mut by_app: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
    for r in &on {
        let e = by_app.entry(r.app.as_str()).or_default();
        e.0 += (r.thinking + 1.0).ln();
        e.1 += 1.0;
    }
    let fields = |r: &Req| {
        let (sum, n) = by_app[r.app.as_str()];
        (sum / n).exp() - 1.0
    };
    let ours: Vec<(f64, f64)> = on
        .iter()
        .map(|r| (r.predicted.unwrap_or(0.0), r.thinking))
        .collect();
    let theirs: Vec<(f64, f64)> = on.iter().map(|r| (fields(r), r.thinking)).collect();
    let pr = |pairs: &[(f64, f64)]| {
        let tp = pairs
            .iter()
            .filter(|(p, a)| *p >= long && *a >= long)
            .count() as f64;
        let called = pairs.iter().filter(|(p, _)| *p >= long).count() as f64;
        let actual = pairs.iter().filter(|(_, a)| *a >= long).count() as f64;
        format!(
            "precision {:.2}, recall {:.2}",
            tp / called.max(1.0),
            tp / actual.max(1.0)
        )
    };
    let rho = |pairs: &[(f64, f64)]| thinkgate_asu::rank::spearman(pairs).unwrap_or(f64::NAN);
    Some(format!(
        "{} requests with thinking on ({:.0}% long): Spearman {:.2} against {:.2} for request fields alone; long at {long} tokens: {} against {}",
        on.len(),
        on.iter().filter(|r| r.thinking >= long).count() as f64 * 100.0 / on.len() as f64,
        rho(&ours),
        rho(&theirs),
        pr(&ours),
        pr(&theirs)
    ))
}

fn quantile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

/// The statistics the tables show, over a set of requests.
fn stats(reqs: &[&Req]) -> [f64; 7] {
    let mut ttfvt: Vec<f64> = reqs.iter().map(|r| r.ttfvt).collect();
    let mut e2e: Vec<f64> = reqs.iter().map(|r| r.e2e).collect();
    let good = reqs
        .iter()
        .filter(|r| r.ok && r.ttfvt <= SLO_TTFVT_S && r.e2e <= SLO_E2E_S)
        .count() as f64
        / reqs.len().max(1) as f64;
    let graded = reqs.iter().filter(|r| r.graded).count().max(1) as f64;
    let acc = reqs.iter().filter(|r| r.graded && r.correct).count() as f64 / graded;
    [
        quantile(&mut ttfvt, 0.5),
        quantile(&mut ttfvt, 0.9),
        quantile(&mut ttfvt, 0.99),
        quantile(&mut e2e, 0.5),
        quantile(&mut e2e, 0.99),
        good,
        acc,
    ]
}

const NAMES: [&str; 7] = [
    "TTFVT p50 (s)",
    "TTFVT p90 (s)",
    "TTFVT p99 (s)",
    "E2E p50 (s)",
    "E2E p99 (s)",
    "goodput",
    "accuracy",
];

/// Paired two-stage bootstrap: each resample draws seeds with replacement,
/// then requests within each drawn seed, the same draws for every policy
/// (runs of one seed share items and arrivals).
fn bootstrap(
    runs: &BTreeMap<String, Vec<Vec<Req>>>,
    resamples: usize,
) -> BTreeMap<String, Vec<[f64; 7]>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(17);
    let seeds = runs.values().next().map(Vec::len).unwrap_or(0);
    let mut out: BTreeMap<String, Vec<[f64; 7]>> = BTreeMap::new();
    for _ in 0..resamples {
        let picked: Vec<usize> = (0..seeds).map(|_| rng.random_range(0..seeds)).collect();
        let inner: u64 = rng.random();
        for (policy, per_seed) in runs {
            let mut r2 = rand::rngs::StdRng::seed_from_u64(inner);
            let mut pool: Vec<&Req> = Vec::new();
            for &s in &picked {
                let reqs = &per_seed[s];
                for _ in 0..reqs.len() {
                    pool.push(&reqs[r2.random_range(0..reqs.len())]);
                }
            }
            out.entry(policy.clone()).or_default().push(stats(&pool));
        }
    }
    out
}

fn interval(mut v: Vec<f64>) -> (f64, f64) {
    (quantile(&mut v, 0.025), quantile(&mut v, 0.975))
}

fn fmt(x: f64, k: usize) -> String {
    match k {
        5 | 6 => format!("{:.1}%", x * 100.0),
        _ if x.is_infinite() => "inf".into(),
        _ => format!("{x:.2}"),
    }
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    // `5`: seeds 1 to 5; `9..10`: seeds 9 and 10 (a pilot on seeds the
    // tables do not use)
    let seed_range = args.first().map(String::as_str).unwrap_or("5");
    let (first, last): (u64, u64) = match seed_range.split_once("..") {
        Some((a, b)) => (a.parse().unwrap(), b.parse().unwrap()),
        None => (1, seed_range.parse().unwrap()),
    };
    let duration: f64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(20.0);
    let conditions: Vec<Condition> = args
        .get(2)
        .map(String::as_str)
        .unwrap_or("half,high,burst")
        .split(',')
        .map(|n| condition(n).expect("condition: half, high, burst or x<load>"))
        .collect();
    let policies: Vec<String> = args
        .get(3)
        .map(|p| p.split(',').map(String::from).collect())
        .unwrap_or_else(|| {
            [
                "round_robin",
                "least_request",
                "p2c",
                "difficulty_aware",
                "oracle",
            ]
            .map(String::from)
            .to_vec()
        });
    let replicas: usize = args.get(4).and_then(|a| a.parse().ok()).unwrap_or(1);
    // `report`: the tables again from the requests a previous run kept
    let report_only = args.get(5).is_some_and(|a| a == "report");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let backends = match std::env::var("ENGINES").as_deref() {
        Ok("vllm") if !report_only => Backends::Vllm(vllm::Engines::start()),
        Ok("vllm") => Backends::Vllm(vllm::Engines::none()),
        Ok("sim") | Err(_) => Backends::Simulated,
        Ok("sim-vllm") => Backends::SimLikeVllm,
        Ok(other) => panic!("ENGINES={other}: sim, vllm or sim-vllm"),
    };
    let capacity = backends.capacity();
    match &backends {
        Backends::Simulated => println!(
            "{ENGINES} simulated engines (2,048 KV blocks, 64 seqs, time scale {TIME_SCALE}x), {replicas} gateway replica(s); built-in mixed traffic, {WARMUP_S} s warm-up + {duration} s counted per run, seeds {first}..={last}; capacity {CAPACITY} req/s; goodput SLO: TTFVT <= {SLO_TTFVT_S} s and E2E <= {SLO_E2E_S} s; 95% paired bootstrap intervals"
        ),
        Backends::SimLikeVllm => println!(
            "{} simulated engines shaped as the vLLM servers of ENGINES=vllm (8 seqs, 6,144-token cache, real time), the same requests; {replicas} gateway replica(s), {WARMUP_S} s warm-up + {duration} s counted per run, seeds {first}..={last}; capacity {capacity} req/s; goodput SLO: TTFVT <= {SLO_TTFVT_S} s and E2E <= {SLO_E2E_S} s; 95% paired bootstrap intervals",
            vllm::ENGINES
        ),
        Backends::Vllm(_) => println!(
            "{} vLLM {} servers (tiny loop model, {} KV blocks of 128 tokens, {} seqs, no prefix cache), {replicas} gateway replica(s); built-in mixed traffic with thinking_token_budget from the simulator's length model x{}, {WARMUP_S} s warm-up + {duration} s counted per run, seeds {first}..={last}; capacity {capacity} req/s; goodput SLO: TTFVT <= {SLO_TTFVT_S} s and E2E <= {SLO_E2E_S} s; 95% paired bootstrap intervals",
            vllm::ENGINES,
            vllm::version(),
            vllm::KV_BLOCKS,
            vllm::MAX_SEQS,
            vllm::SCALE
        ),
    }
    for cond in conditions {
        let mut runs: BTreeMap<String, Vec<Vec<Req>>> = BTreeMap::new();
        let mut rho: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        let mut rate: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        for seed in first..=last {
            for p in &policies {
                eprintln!("{} seed {seed} {p} ...", cond.name);
                let r = if report_only {
                    let dir = out_dir().join(run_name(&backends, &cond, p, replicas, seed));
                    Run {
                        reqs: read_requests(&dir.join("requests.jsonl")),
                        tps: 0.0,
                        predictor: None,
                    }
                } else {
                    rt.block_on(run(&backends, p, &cond, seed, duration, replicas))
                };
                if let Some(v) = r
                    .predictor
                    .as_ref()
                    .and_then(|v| v["predictor_spearman"].as_f64())
                {
                    rho.entry(p.clone()).or_default().push(v);
                }
                if seed == last {
                    if let Some(v) = &r.predictor {
                        eprintln!("{p}: {v}");
                    }
                }
                rate.entry(p.clone()).or_default().push(r.tps);
                runs.entry(p.clone()).or_default().push(r.reqs);
            }
        }
        let boot = bootstrap(&runs, 1000);
        println!(
            "\n### {}: load {:.0}% of capacity ({:.1} req/s), Gamma burstiness {}\n",
            cond.name,
            cond.load * 100.0,
            cond.load * capacity,
            cond.burstiness
        );
        println!("| policy | requests | {} |", NAMES.join(" | "));
        println!("|{}", " --- |".repeat(NAMES.len() + 2));
        for (p, per_seed) in &runs {
            let all: Vec<&Req> = per_seed.iter().flatten().collect();
            let point = stats(&all);
            let cells: Vec<String> = (0..NAMES.len())
                .map(|k| {
                    let (lo, hi) = interval(boot[p].iter().map(|s| s[k]).collect());
                    format!("{} [{}, {}]", fmt(point[k], k), fmt(lo, k), fmt(hi, k))
                })
                .collect();
            println!("| {p} | {} | {} |", all.len(), cells.join(" | "));
        }
        for base in ["round_robin", "least_request"] {
            let Some(b) = boot.get(base) else { continue };
            for (p, s) in boot.iter().filter(|(p, _)| p.as_str() != base) {
                let change = |k: usize| {
                    let v: Vec<f64> = s
                        .iter()
                        .zip(b)
                        .map(|(x, y)| (x[k] / y[k] - 1.0) * 100.0)
                        .collect();
                    let (lo, hi) = interval(v.clone());
                    let mut m = v;
                    format!("{:+.1}% [{lo:+.1}, {hi:+.1}]", quantile(&mut m, 0.5))
                };
                println!(
                    "- {p} vs {base}: TTFVT p90 {}, p99 {}; E2E p99 {}; goodput {}",
                    change(1),
                    change(2),
                    change(4),
                    change(5)
                );
            }
        }
        for (p, v) in rate.iter().filter(|_| !report_only) {
            let n = v.len().max(1) as f64;
            println!(
                "- {p}: {:.0} output tok/s over the whole run, warm-up and drain included (mean over {} runs)",
                v.iter().sum::<f64>() / n,
                v.len()
            );
        }
        for (p, v) in &rho {
            let m = v.iter().sum::<f64>() / v.len().max(1) as f64;
            println!(
                "- {p}: predictor Spearman rho {m:.2} in `/stats` (mean over {} runs)",
                v.len()
            );
        }
        for (p, per_seed) in &runs {
            let all: Vec<&Req> = per_seed.iter().flatten().collect();
            if let Some(q) = predictor_quality(&all, backends.long()) {
                println!("- {p}, predictions over the counted requests: {q}");
            }
        }
    }
}
