//! Thinking budgets through the gateway: a sweep and an A/B test.
//!
//! 2 simulated engines (2,048 KV blocks, 64 sequences each, the built-in
//! mixed-difficulty math set: thinking medians 400 / 1,500 / 5,000 tokens,
//! log-normal tails to 32k), thinkgate in front, Gamma-bursty load
//! (burstiness 0.5). First the same load once per budget, set per request
//! with `x-thinkgate-thinking-budget` (`thinkgate load --sweep
//! thinking_budget=...`): p99 E2E, p99 TTFVT, TPS and accuracy per budget,
//! as a table and `sweep.svg`. Then one run through an A/B experiment (a
//! budget arm and an unlimited arm, requests assigned at random), compared
//! with `thinkgate load compare --by-arm`.
//!
//! `cargo bench --bench budgets -- [duration_s=60] [rate=2] [time_scale=8] [budgets=1000,2000,4000,8000,unlimited] [ab_budget=2000] [out=target/bench-budgets]`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use thinkgate::config::{ArmConfig, AssignBy, Config, ExperimentConfig};
use thinkgate::server::Gateway;
use thinkgate_loadgen::cli::{CompareArgs, LoadArgs, LoadCommand};
use thinkgate_sim::SimConfig;

const ENGINES: u64 = 2;

fn load_args(url: String, rate: f64, duration: f64) -> LoadArgs {
    LoadArgs {
        rate: rate.to_string(),
        burstiness: 0.5,
        num_requests: (rate * duration * 3.0) as usize,
        duration: Some(duration),
        seed: 7,
        timeout: 1800.0,
        quiet: true,
        ..LoadArgs::new(url)
    }
}

async fn engines(time_scale: f64) -> (Vec<String>, Vec<tokio::task::JoinHandle<()>>) {
    let mut urls = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..ENGINES {
        let mut c = SimConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            seed: 100 + i,
            time_scale,
            ..SimConfig::default()
        };
        c.engine.num_blocks = 2048;
        c.engine.max_num_seqs = 64;
        let (addr, _sim, task) = thinkgate_sim::server::spawn(c).await.unwrap();
        urls.push(format!("http://{addr}"));
        tasks.push(task);
    }
    (urls, tasks)
}

fn gateway_cfg(urls: Vec<String>) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin: "127.0.0.1:0".parse().unwrap(),
        upstreams: urls,
        routing: toml::from_str(r#"type = "least_request""#).unwrap(),
        drain_timeout_secs: 5,
        ..Config::default()
    }
}

async fn sweep(duration: f64, rate: f64, time_scale: f64, budgets: &str, out: PathBuf) {
    let (urls, tasks) = engines(time_scale).await;
    let gw = Gateway::start(gateway_cfg(urls)).await.unwrap();
    let args = LoadArgs {
        sweep: Some(format!("thinking_budget={budgets}")),
        out: Some(out),
        ..load_args(format!("http://{}", gw.proxy_addr), rate, duration)
    };
    thinkgate_loadgen::cli::run(args).await.unwrap();
    gw.shutdown();
    gw.wait().await;
    for t in tasks {
        t.abort();
    }
}

async fn ab(duration: f64, rate: f64, time_scale: f64, budget: u64, out: PathBuf) {
    let (urls, tasks) = engines(time_scale).await;
    let arm = |name: &str, b: u64| ArmConfig {
        name: name.into(),
        weight: 1,
        routing: toml::from_str(r#"type = "least_request""#).unwrap(),
        pool: None,
        thinking_budget: Some(b),
        deadline_ms: None,
    };
    let cfg = Config {
        experiment: Some(ExperimentConfig {
            assign_by: AssignBy::Random,
            arms: vec![
                arm("unlimited", 0),
                arm(&format!("budget-{budget}"), budget),
            ],
            guardrail: None,
        }),
        ..gateway_cfg(urls)
    };
    let gw = Gateway::start(cfg).await.unwrap();
    let args = LoadArgs {
        out: Some(out.clone()),
        label: "a/b".into(),
        // Twice the requests: each arm gets about as many as a sweep run.
        num_requests: (rate * duration * 6.0) as usize,
        duration: Some(duration * 2.0),
        ..load_args(format!("http://{}", gw.proxy_addr), rate, duration)
    };
    thinkgate_loadgen::cli::execute(&args).await.unwrap();
    gw.shutdown();
    gw.wait().await;
    for t in tasks {
        t.abort();
    }
    println!("\n`thinkgate load compare {} --by-arm`:", out.display());
    let cmp = LoadArgs {
        command: Some(LoadCommand::Compare(CompareArgs {
            runs: vec![out],
            by_arm: true,
            fail_if: Vec::new(),
            resamples: 2000,
            seed: 1,
            json: None,
            html: None,
        })),
        ..LoadArgs::new(String::new())
    };
    thinkgate_loadgen::cli::run(cmp).await.unwrap();
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let num = |i: usize, d: f64| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(d);
    let (duration, rate, time_scale) = (num(0, 60.0), num(1, 2.0), num(2, 8.0));
    let budgets = args
        .get(3)
        .cloned()
        .unwrap_or_else(|| "1000,2000,4000,8000,unlimited".into());
    let ab_budget = num(4, 2000.0) as u64;
    let out = PathBuf::from(
        args.get(5)
            .cloned()
            .unwrap_or_else(|| "target/bench-budgets".into()),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!("{ENGINES} simulated engines (2,048 KV blocks, 64 seqs, time scale {time_scale}x), Gamma burstiness 0.5, {rate} req/s for {duration} s, seed 7, least_request");
    rt.block_on(sweep(
        duration,
        rate,
        time_scale,
        &budgets,
        out.join("sweep"),
    ));
    println!("plot: {}", out.join("sweep/sweep.svg").display());
    rt.block_on(ab(duration, rate, time_scale, ab_budget, out.join("ab")));
}
