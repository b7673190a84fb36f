//! The load generator against the simulated engine, directly and through
//! the gateway: the client-side TTFVT of each request agrees with the
//! gateway's recorded TTFVT for the same request within a few milliseconds.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use thinkgate_loadgen::cli::LoadArgs;

fn args(url: String, out: Option<std::path::PathBuf>) -> LoadArgs {
    LoadArgs {
        rate: "10".into(),
        burstiness: 0.5,
        num_requests: 40,
        duration: Some(30.0),
        seed: 3,
        timeout: 120.0,
        out,
        quiet: true,
        ..LoadArgs::new(url)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_and_gateway_agree_on_ttfvt() {
    // Short thinking and a gentle time scale keep the CPU of this debug
    // build (engine, gateway and client in one process) low, so queueing in
    // the test process does not blur the comparison.
    let mut sim_cfg = thinkgate_sim::SimConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        time_scale: 5.0,
        ..Default::default()
    };
    sim_cfg.workload.think_median = [60.0, 120.0, 240.0];
    let (sim_addr, _sim, _t) = thinkgate_sim::server::spawn(sim_cfg).await.unwrap();
    let dir = std::env::temp_dir().join(format!("tg-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let rec = dir.join("gw.jsonl");

    // Directly against the engine.
    let direct = thinkgate_loadgen::cli::execute(&args(format!("http://{sim_addr}"), None))
        .await
        .unwrap();
    assert_eq!(direct.ok, 40, "{:?}", direct.errors);
    assert!(
        direct.accuracy.rate > 0.5,
        "accuracy {}",
        direct.accuracy.rate
    );

    // Through the gateway.
    let gw = common::gateway(vec![format!("http://{sim_addr}")], |c| {
        c.records = Some(rec.clone())
    })
    .await;
    let out = dir.join("load");
    let via = thinkgate_loadgen::cli::execute(&args(
        format!("http://{}", gw.proxy_addr),
        Some(out.clone()),
    ))
    .await
    .unwrap();
    assert_eq!(via.ok, 40, "{:?}", via.errors);
    gw.shutdown();
    gw.wait().await;

    let gw_ttfvt: HashMap<String, f64> = common::records(&rec)
        .into_iter()
        .filter(|r| r["path"] == "/v1/chat/completions")
        .map(|r| {
            (
                r["id"].as_str().unwrap().to_string(),
                r["t_first_visible_ns"].as_f64().unwrap() / 1e9,
            )
        })
        .collect();
    assert_eq!(gw_ttfvt.len(), 40, "one record per request");
    let client: Vec<serde_json::Value> = std::fs::read_to_string(out.join("requests.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(client.len(), 40);
    let mut diffs: Vec<f64> = client
        .iter()
        .map(|r| {
            let id = r["request_id"]
                .as_str()
                .expect("x-thinkgate-request-id seen by the client");
            r["ttfvt_s"].as_f64().unwrap() - gw_ttfvt[id]
        })
        .collect();
    diffs.sort_by(f64::total_cmp);
    let median = diffs[diffs.len() / 2];
    eprintln!(
        "client minus gateway TTFVT over {} requests: min {:.3} ms, median {:.3} ms, max {:.3} ms",
        diffs.len(),
        diffs[0] * 1e3,
        median * 1e3,
        diffs[diffs.len() - 1] * 1e3
    );
    // The client starts its clock before the gateway and sees each chunk
    // after it: the difference is loopback transit, never negative beyond
    // clock noise.
    assert!(
        diffs[0] > -0.001,
        "client TTFVT below the gateway's: {diffs:?}"
    );
    assert!(
        median < 0.003,
        "median client-gateway TTFVT difference {median} s"
    );
    assert!(
        diffs[diffs.len() - 1] < 0.020,
        "max difference {:?}",
        diffs.last()
    );

    // The summary file is the documented schema.
    let s: thinkgate_loadgen::report::RunSummary =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(s.schema, thinkgate_loadgen::report::SCHEMA);
    assert_eq!(s.sent, 40);
    assert!(s.latency_s["ttfvt"].p50 > s.latency_s["ttft"].p50);
    assert!(s.by_backend.len() == 1);
}

/// A load run through a two-arm experiment: the client sees each request's
/// arm, and `compare --by-arm` splits the run by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_by_arm_on_an_experiment_run() {
    use thinkgate::config::{ArmConfig, AssignBy, ExperimentConfig};
    use thinkgate_policies::PolicyConfig;
    let mut sim_cfg = thinkgate_sim::SimConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        time_scale: 50.0,
        ..Default::default()
    };
    sim_cfg.workload.think_median = [60.0, 120.0, 240.0];
    let (sim_addr, _sim, _t) = thinkgate_sim::server::spawn(sim_cfg).await.unwrap();
    let gw = common::gateway(vec![format!("http://{sim_addr}")], |c| {
        c.experiment = Some(ExperimentConfig {
            assign_by: AssignBy::Random,
            arms: vec![
                ArmConfig {
                    thinking_budget: None,
                    deadline_ms: None,
                    name: "a".into(),
                    weight: 1,
                    routing: PolicyConfig::RoundRobin,
                    pool: None,
                },
                ArmConfig {
                    thinking_budget: None,
                    deadline_ms: None,
                    name: "b".into(),
                    weight: 1,
                    routing: PolicyConfig::LeastTokens,
                    pool: None,
                },
            ],
        });
    })
    .await;
    let out = std::env::temp_dir().join(format!("tg-arms-{}", std::process::id()));
    let mut a = args(format!("http://{}", gw.proxy_addr), Some(out.clone()));
    a.num_requests = 60;
    a.rate = "40".into();
    let s = thinkgate_loadgen::cli::execute(&a).await.unwrap();
    assert_eq!(s.ok, 60);
    let runs =
        thinkgate_loadgen::compare::by_arm(thinkgate_loadgen::compare::load_run(&out).unwrap());
    assert_eq!(
        runs.keys().map(String::as_str).collect::<Vec<_>>(),
        ["a", "b"]
    );
    assert_eq!(runs["a"].len() + runs["b"].len(), 60);
    let deltas = thinkgate_loadgen::compare::compare(&runs["a"], &runs["b"], 200, 1);
    assert!(deltas.iter().any(|d| d.name == "ttfvt.p50"));
    assert!(deltas.iter().any(|d| d.name == "accuracy"));
}

/// `thinkgate load` typed with `vllm bench serve`'s flags and the `openai`
/// client's base URL: the run is the same, and `--max-concurrency` caps the
/// requests in flight while the arrivals stay open-loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vllm_bench_serve_flags_work_as_typed() {
    let mut sim_cfg = thinkgate_sim::SimConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        time_scale: 20.0,
        ..Default::default()
    };
    sim_cfg.workload.think_median = [100.0, 200.0, 400.0];
    let (sim_addr, _sim, _t) = thinkgate_sim::server::spawn(sim_cfg).await.unwrap();
    let dir = common::tempdir("vllm-flags");
    // GSM8K as its public JSONL has it
    let gsm8k = dir.join("gsm8k.jsonl");
    std::fs::write(
        &gsm8k,
        "{\"question\":\"What is 70 + 2?\",\"answer\":\"70 + 2 = 72\\n#### 72\"}\n\
         {\"question\":\"What is 2 + 3?\",\"answer\":\"#### 5\"}\n",
    )
    .unwrap();
    let args: Vec<String> = [
        "load",
        "--base-url",
        &format!("http://{sim_addr}/v1"),
        "--endpoint",
        "/v1/chat/completions",
        "--request-rate",
        "inf",
        "--num-prompts",
        "8",
        "--dataset-name",
        "gsm8k",
        "--dataset-path",
        gsm8k.to_str().unwrap(),
        "--max-concurrency",
        "2",
        "--percentile-metrics",
        "ttft,ttfvt,thinking,e2el",
        "--metric-percentiles",
        "50,99",
        "--save-result",
        "--result-dir",
        dir.to_str().unwrap(),
        "--quiet",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_thinkgate"))
            .args(&args)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reqs = common::records(&dir.join("requests.jsonl"));
    assert_eq!(reqs.len(), 8);
    for r in &reqs {
        assert!(
            ["72", "5"].contains(&r["reference"].as_str().unwrap()),
            "{r}"
        );
    }
    // the percentiles asked for, in ms, in summary.json and on stdout
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    let p99 = summary["percentiles_ms"]["ttfvt"]["p99"].as_f64().unwrap();
    let p50 = summary["percentiles_ms"]["ttfvt"]["p50"].as_f64().unwrap();
    assert!(p99 >= p50 && p50 > 0.0, "{summary}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("ttfvt ms: p50"), "{stdout}");
    // every request ran; at most 2 at a time
    let mut spans: Vec<(f64, f64)> = reqs
        .iter()
        .map(|r| {
            assert_eq!(r["status"], 200, "{r}");
            let sent = r["scheduled_s"].as_f64().unwrap() + r["lateness_s"].as_f64().unwrap();
            (sent, r["done_at_s"].as_f64().unwrap())
        })
        .collect();
    spans.sort_by(|a, b| a.0.total_cmp(&b.0));
    for (i, (start, _)) in spans.iter().enumerate() {
        let open = spans[..i].iter().filter(|(_, end)| end > start).count();
        assert!(
            open < 2,
            "{} requests in flight at {start:.3} s: {spans:?}",
            open + 1
        );
    }
    // with every arrival at 0, six waited for a slot
    let waited = reqs
        .iter()
        .filter(|r| r["lateness_s"].as_f64().unwrap() > 0.05)
        .count();
    assert!(waited >= 6, "{waited} waited: {reqs:?}");
}
