//! Routing policies against each other on the same workload.
//!
//! 4 simulated engines (fresh for every policy, same seeds), the gateway in
//! front with one policy, and the same Gamma-bursty (burstiness 0.5) load of
//! the built-in mixed-difficulty math set near saturation. Prints p50/p99
//! TTFVT, p99 E2E, TPS, straggler ratio and accuracy per policy.
//!
//! `cargo bench --bench policies -- [duration_s=60] [rate=3] [time_scale=2] [policies=round_robin,least_request,least_kv,difficulty_aware]`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use thinkgate::config::Config;
use thinkgate::server::Gateway;
use thinkgate_loadgen::cli::LoadArgs;
use thinkgate_sim::SimConfig;

const ENGINES: u64 = 4;

fn load_args(url: String, rate: f64, duration: f64, label: &str) -> LoadArgs {
    LoadArgs {
        rate: rate.to_string(),
        burstiness: 0.5,
        num_requests: (rate * duration * 3.0) as usize,
        duration: Some(duration),
        seed: 7,
        timeout: 900.0,
        label: label.into(),
        quiet: true,
        ..LoadArgs::new(url)
    }
}

async fn run(
    policy: &str,
    rate: f64,
    duration: f64,
    time_scale: f64,
) -> thinkgate_loadgen::report::RunSummary {
    let mut urls = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..ENGINES {
        let mut c = SimConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            seed: 100 + i,
            time_scale,
            ..SimConfig::default()
        };
        // A small GPU's KV cache (32k tokens) so long thinkers fill it.
        c.engine.num_blocks = 2048;
        c.engine.max_num_seqs = 64;
        let (addr, _sim, task) = thinkgate_sim::server::spawn(c).await.unwrap();
        urls.push(format!("http://{addr}"));
        tasks.push(task);
    }
    let cfg = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin: "127.0.0.1:0".parse().unwrap(),
        upstreams: urls,
        routing: toml::from_str(&format!("type = {policy:?}")).unwrap(),
        // The built-in prompts start "difficulty: <level>.": 16 bytes of
        // prefix separate the task types (and nothing else).
        prefix_bytes: 16,
        scrape_interval_ms: 250,
        drain_timeout_secs: 5,
        ..Config::default()
    };
    let gw = Gateway::start(cfg).await.unwrap();
    let s = thinkgate_loadgen::cli::execute(&load_args(
        format!("http://{}", gw.proxy_addr),
        rate,
        duration,
        policy,
    ))
    .await
    .unwrap();
    if let Some(p) = gw.shared.fleet.load().arms[0].policy.stats() {
        eprintln!("{policy}: {p}");
    }
    gw.shutdown();
    gw.wait().await;
    for t in tasks {
        t.abort();
    }
    s
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let duration: f64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(60.0);
    let rate: f64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(3.0);
    let time_scale: f64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(2.0);
    let policies: Vec<String> = args
        .get(3)
        .map(|p| p.split(',').map(String::from).collect())
        .unwrap_or_else(|| {
            [
                "round_robin",
                "least_request",
                "least_kv",
                "difficulty_aware",
            ]
            .map(String::from)
            .to_vec()
        });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut rows = Vec::new();
    for p in &policies {
        eprintln!("policy {p}: {duration} s at {rate} req/s ...");
        let s = rt.block_on(run(p, rate, duration, time_scale));
        rows.push((p.clone(), s));
    }
    println!("{ENGINES} simulated engines (2,048 KV blocks, 64 seqs, time scale {time_scale}x), Gamma burstiness 0.5, {rate} req/s for {duration} s, seed 7");
    println!("| policy | requests | TTFVT p50 (s) | TTFVT p99 (s) | E2E p99 (s) | output tok/s | straggler p99/p50 | accuracy |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for (p, s) in &rows {
        println!(
            "| {p} | {} | {:.2} | {:.2} | {:.2} | {:.0} | {:.2} | {:.1}% |",
            s.ok,
            s.latency_s["ttfvt"].p50,
            s.latency_s["ttfvt"].p99,
            s.latency_s["e2e"].p99,
            s.throughput.output_tokens_per_s,
            s.straggler_ratio,
            s.accuracy.rate * 100.0
        );
    }
    if let Some((_, base)) = rows.iter().find(|(p, _)| p == "round_robin") {
        let b = base.latency_s["ttfvt"].p99;
        for (p, s) in rows.iter().filter(|(p, _)| p != "round_robin") {
            println!(
                "{p}: p99 TTFVT {:+.1}% vs round_robin, TPS {:.3}x",
                (s.latency_s["ttfvt"].p99 / b - 1.0) * 100.0,
                s.throughput.output_tokens_per_s / base.throughput.output_tokens_per_s
            );
        }
    }
}
