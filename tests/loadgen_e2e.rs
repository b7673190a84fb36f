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
/// arm (and, on the `difficulty_aware` arm, the gateway's prediction),
/// `compare --by-arm` splits the run by it, and `--html` draws both arms'
/// reports side by side.
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
    let rec_dir = common::tempdir("arms-records");
    let rec = rec_dir.join("records.jsonl");
    let r = rec.clone();
    let gw = common::gateway(vec![format!("http://{sim_addr}")], |c| {
        c.records = Some(r);
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
                    routing: PolicyConfig::DifficultyAware(Default::default()),
                    pool: None,
                },
            ],
            guardrail: None,
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

    // arm b predicted thinking once it had learned; arm a never does
    let (results, summary) = thinkgate_loadgen::compare::load_full(&out).unwrap();
    assert!(summary.is_some());
    let predicted = |arm: &str| {
        results
            .iter()
            .filter(|r| r.arm.as_deref() == Some(arm) && r.predicted_thinking.is_some())
            .count()
    };
    assert_eq!(predicted("a"), 0);
    assert!(predicted("b") > 0, "no prediction reached the client");
    let report = std::fs::read_to_string(out.join("report.html")).unwrap();
    for chart in [
        "The straggler tail",
        "Thinking tokens against the gateway's prediction",
        "Accuracy per domain",
    ] {
        assert!(report.contains(chart), "{chart} missing from report.html");
    }

    let page = out.join("compare.html");
    let cmp = LoadArgs {
        command: Some(thinkgate_loadgen::cli::LoadCommand::Compare(
            thinkgate_loadgen::cli::CompareArgs {
                runs: vec![out.clone()],
                by_arm: true,
                fail_if: Vec::new(),
                resamples: 200,
                seed: 1,
                json: None,
                html: Some(page.clone()),
            },
        )),
        ..LoadArgs::new(String::new())
    };
    thinkgate_loadgen::cli::run(cmp).await.unwrap();
    let page = std::fs::read_to_string(page).unwrap();
    assert!(
        page.contains("ttfvt.p50"),
        "the comparison table is on the page"
    );
    // every chart twice (A beside B), the prediction only on b's side
    let figures = |title: &str| {
        page.matches(&format!("<figcaption>{title}</figcaption>"))
            .count()
    };
    assert_eq!(figures("The straggler tail"), 2);
    assert_eq!(figures("Accuracy per domain"), 2);
    assert_eq!(
        figures("Thinking tokens against the gateway's prediction"),
        1
    );
    assert_eq!(
        figures("Thinking length by difficulty label or application"),
        1
    );
    let _ = std::fs::remove_dir_all(&out);

    // Feedback: the client's grades, posted to the gateway by request id
    // (as a grader would), in batches.
    let c = common::client();
    let grades: Vec<serde_json::Value> = results
        .iter()
        .map(|r| serde_json::json!({"request_id": r.request_id, "value": r.correct}))
        .collect();
    for batch in grades.chunks(25) {
        let got = common::send(
            &c,
            common::post(
                format!("http://{}/feedback", gw.admin_addr),
                &serde_json::to_string(batch).unwrap(),
            ),
        )
        .await;
        assert_eq!(got.status, 202, "{}", String::from_utf8_lossy(&got.body));
    }

    // The live view in /stats: per arm since the start, the grades joined
    // by request id, and the sequential tests of b against a.
    let mut live = serde_json::Value::Null;
    for _ in 0..50 {
        let got = common::send(
            &c,
            http::Request::get(format!("http://{}/stats", gw.admin_addr))
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap(),
        )
        .await;
        live =
            serde_json::from_slice::<serde_json::Value>(&got.body).unwrap()["experiment"].clone();
        let graded = |arm: &str| live["arms"][arm]["graded"].as_u64().unwrap_or(0);
        if graded("a") + graded("b") == 60 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        (live["a"].as_str(), live["b"].as_str()),
        (Some("a"), Some("b")),
        "{live}"
    );
    for arm in ["a", "b"] {
        let n = runs[arm].len();
        assert_eq!(live["arms"][arm]["requests"], n, "{live}");
        assert_eq!(live["arms"][arm]["graded"], n, "{live}");
        let right = runs[arm].iter().filter(|s| s.correct == Some(true)).count();
        let acc = live["arms"][arm]["accuracy"].as_f64().unwrap();
        assert!(
            (acc - right as f64 / n as f64).abs() < 1e-9,
            "{arm}: {live}"
        );
        assert!(live["arms"][arm]["ttfvt_mean_seconds"].as_f64().unwrap() > 0.0);
    }
    for t in ["ttfvt.mean", "e2e.mean", "errors", "accuracy"] {
        assert!(live["sequential"][t]["decision"].is_string(), "{t}: {live}");
    }

    // The same experiment from the gateway's own records, as on production
    // traffic: split over two files as two replicas write them.
    gw.shutdown();
    gw.wait().await;
    let lines: Vec<String> = std::fs::read_to_string(&rec)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    // (and the load generator's GET /v1/models, not an inference, and the
    // 60 grades)
    assert_eq!(lines.len(), 121);
    std::fs::remove_file(&rec).unwrap();
    std::fs::write(
        rec_dir.join("replica-0.jsonl"),
        lines[..25].join("\n") + "\n",
    )
    .unwrap();
    std::fs::write(
        rec_dir.join("replica-1.jsonl"),
        lines[25..].join("\n") + "\n",
    )
    .unwrap();
    let from_records =
        thinkgate_loadgen::compare::by_arm(thinkgate_loadgen::compare::load_run(&rec_dir).unwrap());
    assert_eq!(from_records["a"].len(), runs["a"].len());
    assert_eq!(from_records["b"].len(), runs["b"].len());
    let d = thinkgate_loadgen::compare::compare(&from_records["a"], &from_records["b"], 200, 1);
    let get = |n: &str| d.iter().find(|x| x.name == n).cloned();
    // the gateway's TTFVT of each arm is the client's, within a few ms
    let client_side = |n: &str| deltas.iter().find(|x| x.name == n).cloned().unwrap();
    let (g, c) = (get("ttfvt.p50").unwrap(), client_side("ttfvt.p50"));
    assert!(
        (g.a - c.a).abs() < 0.05 && (g.b - c.b).abs() < 0.05,
        "{g:?} {c:?}"
    );
    assert!(g.a > 0.0 && g.b > 0.0, "not a table of zeros: {g:?}");
    assert!(get("thinking_tokens.mean").is_some_and(|x| x.a > 0.0 && x.b > 0.0));
    assert_eq!(get("errors").map(|x| (x.a, x.b)), Some((0.0, 0.0)));
    assert!(get("forced").is_some() && get("loops").is_some());
    // accuracy from the feedback, as the client graded it
    let (acc, client_acc) = (get("accuracy").unwrap(), client_side("accuracy"));
    assert!(
        (acc.a - client_acc.a).abs() < 1e-9 && (acc.b - client_acc.b).abs() < 1e-9,
        "{acc:?} {client_acc:?}"
    );
    // without the feedback lines, no accuracy: records carry no grade
    let plain: Vec<String> = lines
        .iter()
        .filter(|l| !l.starts_with("{\"feedback\""))
        .cloned()
        .collect();
    let only = rec_dir.join("no-feedback");
    std::fs::create_dir_all(&only).unwrap();
    std::fs::write(only.join("r.jsonl"), plain.join("\n") + "\n").unwrap();
    let ungraded =
        thinkgate_loadgen::compare::by_arm(thinkgate_loadgen::compare::load_run(&only).unwrap());
    let d2 = thinkgate_loadgen::compare::compare(&ungraded["a"], &ungraded["b"], 200, 1);
    assert!(
        d2.iter().all(|x| x.name != "accuracy"),
        "records carry no grade"
    );

    // input it cannot read is an error that says so, never zeros
    let junk = rec_dir.join("junk.jsonl");
    std::fs::write(&junk, "{\"hello\": 1}\n").unwrap();
    let err = thinkgate_loadgen::compare::load_run(&junk)
        .unwrap_err()
        .to_string();
    assert!(err.contains("neither a load generator result"), "{err}");
    std::fs::write(&junk, "not json\n").unwrap();
    assert!(thinkgate_loadgen::compare::load_run(&junk).is_err());
    std::fs::write(&junk, "").unwrap();
    let err = thinkgate_loadgen::compare::load_run(&junk)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no requests"), "{err}");
    let _ = std::fs::remove_dir_all(&rec_dir);
}

/// `thinkgate load` typed with `vllm bench serve`'s flags and the `openai`
/// client's base URL: the run is the same, and `--max-concurrency` caps the
/// requests in flight while the arrivals stay open-loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vllm_bench_serve_flags_work_as_typed() {
    let mut sim_cfg = thinkgate_sim::SimConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        // slow enough that a request lasts longer than the 50 ms of
        // lateness that counts as having waited for a slot below
        time_scale: 5.0,
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
