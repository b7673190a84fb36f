//! `thinkgate demo`: two simulated engines, the gateway in front of them and
//! a Gamma-bursty load of the built-in math set through it; prints the ASU
//! report from the client side, the gateway's own view of the same requests,
//! and the engines' KV-cache peaks.

use clap::Args;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use thinkgate::config::Config;
use thinkgate::server::Gateway;
use thinkgate_loadgen::cli::LoadArgs;
use thinkgate_sim::SimConfig;

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Seconds of load (requests still in flight then are waited for).
    #[arg(long, default_value_t = 40.0)]
    pub duration: f64,
    /// Mean requests per second.
    #[arg(long, default_value_t = 4.0)]
    pub rate: f64,
    /// Gamma shape of the arrivals (1 = Poisson, lower = burstier).
    #[arg(long, default_value_t = 0.5)]
    pub burstiness: f64,
    /// The engines run this many times faster than a real 7B on an H100.
    #[arg(long, default_value_t = 8.0)]
    pub time_scale: f64,
    /// KV-cache blocks of 16 tokens per engine (65k tokens: small, so the
    /// cache fills under bursts).
    #[arg(long, default_value_t = 4096)]
    pub num_blocks: usize,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Also write summary.json, requests.jsonl and the gateway's records here.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let mut backends = Vec::new();
    let mut sims = Vec::new();
    for i in 0..2u64 {
        let mut c = SimConfig {
            listen: ([127, 0, 0, 1], 0).into(),
            seed: args.seed + i,
            time_scale: args.time_scale,
            ..SimConfig::default()
        };
        c.engine.num_blocks = args.num_blocks;
        c.engine.max_num_seqs = 64;
        let (addr, sim, _task) = thinkgate_sim::server::spawn(c).await?;
        backends.push(format!("http://{addr}"));
        sims.push(sim);
    }
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir)?;
    }
    let cfg = Config {
        listen: ([127, 0, 0, 1], 0).into(),
        admin: ([127, 0, 0, 1], 0).into(),
        upstreams: backends.clone(),
        records: args.out.as_ref().map(|d| d.join("gateway-records.jsonl")),
        drain_timeout_secs: 5,
        ..Config::default()
    };
    let gw = Gateway::start(cfg).await?;
    eprintln!(
        "demo: 2 simulated engines {backends:?} (time scale {}x), gateway on {}, admin on {}",
        args.time_scale, gw.proxy_addr, gw.admin_addr
    );
    eprintln!(
        "demo: {:.0} s of Gamma load, {} req/s, burstiness {} ...",
        args.duration, args.rate, args.burstiness
    );

    // Sample the engines' KV use while the load runs.
    let peaks = Arc::new(std::sync::Mutex::new(vec![(0.0f64, 0u64); sims.len()]));
    let sampler = {
        let (sims, peaks) = (sims.clone(), Arc::clone(&peaks));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                if let Ok(mut p) = peaks.lock() {
                    for (i, s) in sims.iter().enumerate() {
                        p[i].0 = p[i].0.max(s.engine.stats.kv_usage());
                        p[i].1 = s.engine.stats.preemptions.load(Ordering::Relaxed);
                    }
                }
            }
        })
    };
    let load = LoadArgs {
        rate: args.rate.to_string(),
        burstiness: args.burstiness,
        num_requests: ((args.rate * args.duration).ceil() as usize).max(1) * 2,
        duration: Some(args.duration),
        seed: args.seed,
        timeout: 600.0,
        out: args.out.clone(),
        scrape: backends.clone(),
        label: "thinkgate demo: ASU measured at the client".into(),
        ..LoadArgs::new(format!("http://{}", gw.proxy_addr))
    };
    let summary = thinkgate_loadgen::cli::execute(&load).await?;
    sampler.abort();
    print!("{}", thinkgate_loadgen::report::table(&summary));

    let stats = gw
        .shared
        .recorder
        .stats
        .lock()
        .map(|mut s| s.summary())
        .unwrap_or_default();
    let q = |k: &str, p: &str| stats[k][p].as_f64().unwrap_or(f64::NAN);
    println!("== the gateway's own view (thinkgate /stats, same requests) ==");
    println!(
        "TTFT p50 {:.3} s (first token of any kind) vs TTFVT p50 {:.3} s (first visible token): a TTFT dashboard hides {:.3} s of every median wait",
        q("ttft_seconds", "p50"),
        q("ttfvt_seconds", "p50"),
        q("ttfvt_seconds", "p50") - q("ttft_seconds", "p50")
    );
    println!(
        "thinking time p50 {:.3} s p99 {:.3} s; thinking tokens p50 {:.0} p99 {:.0}",
        q("thinking_seconds", "p50"),
        q("thinking_seconds", "p99"),
        q("thinking_tokens", "p50"),
        q("thinking_tokens", "p99")
    );
    if let Ok(p) = peaks.lock() {
        for (i, (kv, pre)) in p.iter().enumerate() {
            println!(
                "engine {i}: peak KV-cache use {:.0}%, preemptions {pre}",
                kv * 100.0
            );
        }
    }
    if let Some(dir) = &args.out {
        println!("wrote {}", dir.display());
    }
    gw.shutdown();
    gw.wait().await;
    Ok(())
}
