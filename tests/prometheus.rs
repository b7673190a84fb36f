//! The gateway's metrics as the Prometheus and Grafana users run read them:
//! a real Prometheus server (Debian package) scrapes a gateway in front of
//! the simulated engine during a load run, and its HTTP API must agree with
//! the load generator; `promtool check metrics` lints a live scrape; the
//! dashboard and the alert rules name only metrics the gateway exports.
//!
//! The server test needs `prometheus` and `promtool`: it is ignored in a
//! plain `cargo test` (shown as ignored, never as passed) and run by
//! `just external`, which CI runs; there a missing binary fails it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The test needs `bin` (it is ignored by default, so it runs only where
/// asked for): its absence is a failure, never a pass.
fn require(bin: &str) {
    let ok = Command::new(bin)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "{bin} is not installed (apt-get install prometheus)");
}

fn unknown(names: &BTreeSet<String>) -> Vec<&String> {
    names
        .iter()
        .filter(|n| !thinkgate::metrics::ALL.contains(&n.as_str()))
        .collect()
}

#[test]
fn dashboard_and_rules_name_only_exported_metrics() {
    let root = env!("CARGO_MANIFEST_DIR");
    let text = std::fs::read_to_string(format!("{root}/dashboards/thinkgate.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut exprs = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            exprs.push(t["expr"].as_str().unwrap().to_string());
        }
    }
    for v in dash["templating"]["list"].as_array().unwrap() {
        if let Some(q) = v["query"].as_str() {
            exprs.push(q.to_string());
        }
    }
    assert!(exprs.len() > 20, "{} queries", exprs.len());
    let names = common::metric_names(&exprs.join("\n"));
    assert!(
        unknown(&names).is_empty(),
        "dashboard: {:?}",
        unknown(&names)
    );
    // Every panel family is covered: the issue's list.
    for must in [
        "thinkgate_ttft_seconds",
        "thinkgate_ttfvt_seconds",
        "thinkgate_thinking_seconds",
        "thinkgate_e2e_seconds",
        "thinkgate_output_tokens_total",
        "thinkgate_inflight_requests",
        "thinkgate_backend_kv_usage",
        "thinkgate_forced_answers_total",
        "thinkgate_hedges_total",
    ] {
        assert!(names.contains(must), "dashboard lacks {must}");
    }
    let rules = std::fs::read_to_string(format!(
        "{root}/helm/thinkgate/templates/prometheusrule.yaml"
    ))
    .unwrap();
    let names = common::metric_names(&rules);
    assert!(names.len() >= 4, "{names:?}");
    assert!(unknown(&names).is_empty(), "rules: {:?}", unknown(&names));
    // The chart ships the same dashboard.
    let chart = std::fs::read_to_string(format!("{root}/helm/thinkgate/dashboards/thinkgate.json"))
        .unwrap();
    assert_eq!(
        chart, text,
        "helm/thinkgate/dashboards/thinkgate.json is a copy"
    );
}

/// The address Prometheus listens on, from its log: it binds port 0 and
/// logs the port it got (`msg="Listening on" address=...`).
async fn listening_on(log: &std::path::Path) -> String {
    let t = Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let found = text
            .lines()
            .filter(|l| l.contains("msg=\"Listening on\""))
            .find_map(|l| l.split("address=").nth(1))
            .map(|a| a.split_whitespace().next().unwrap_or(a).to_string());
        if let Some(a) = found {
            return a;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "prometheus did not say where it listens: {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn query(c: &common::HttpClient, prom: &str, q: &str) -> Option<f64> {
    let url = format!("http://{prom}/api/v1/query?query={}", url_escape(q));
    let req = http::Request::get(url)
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    use http_body_util::BodyExt;
    // Refused until Prometheus listens: that is a `None`, not a failure.
    let resp = c.request(req).await.ok()?;
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).ok()?;
    let r = v["data"]["result"].as_array()?.first()?.clone();
    r["value"][1].as_str()?.parse().ok()
}

fn url_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

struct Killed(std::process::Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[ignore = "needs prometheus and promtool: just external (CI runs it)"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_prometheus_agrees_with_the_load_generator() {
    require("prometheus");
    require("promtool");
    let mut sim_cfg = thinkgate_sim::SimConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        time_scale: 20.0,
        ..Default::default()
    };
    sim_cfg.workload.think_median = [100.0, 200.0, 400.0];
    let (sim_addr, _sim, _t) = thinkgate_sim::server::spawn(sim_cfg).await.unwrap();
    let gw = common::gateway(vec![format!("http://{sim_addr}")], |_| {}).await;

    let dir = std::env::temp_dir().join(format!("tg-prom-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: thinkgate\n    static_configs:\n      - targets: ['{}']\n",
            gw.admin_addr
        ),
    )
    .unwrap();
    let _server = Killed(
        Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg("--web.listen-address=127.0.0.1:0")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let prom = listening_on(&dir.join("prometheus.log")).await;
    let c = common::client();
    let t = Instant::now();
    while query(&c, &prom, "up").await.is_none() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "prometheus did not scrape: {}",
            std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let args = thinkgate_loadgen::cli::LoadArgs {
        rate: "8".into(),
        burstiness: 0.5,
        num_requests: 40,
        seed: 3,
        quiet: true,
        ..thinkgate_loadgen::cli::LoadArgs::new(format!("http://{}", gw.proxy_addr))
    };
    let s = thinkgate_loadgen::cli::execute(&args).await.unwrap();
    assert_eq!(s.ok, 40, "{:?}", s.errors);

    // Let Prometheus take a scrape after the last request settled.
    let want = s.ok as f64;
    let t = Instant::now();
    let count = loop {
        // (The load generator's `GET /v1/models` is a request too, with no
        // model label.)
        let n = query(
            &c,
            &prom,
            r#"sum(thinkgate_requests_total{outcome="completed", model!="unknown"})"#,
        )
        .await;
        if n == Some(want) || t.elapsed() > Duration::from_secs(20) {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(count, Some(want), "request count in Prometheus");
    let p50 = query(
        &c,
        &prom,
        r#"histogram_quantile(0.5, sum by (le) (thinkgate_ttfvt_seconds_bucket{model!="unknown"}))"#,
    )
    .await
    .unwrap();
    let mine = s.latency_s["ttfvt"].p50;
    // Prometheus interpolates inside a bucket: both must lie in the same one.
    let b = thinkgate::metrics::SECONDS_BUCKETS;
    let bucket = |v: f64| b.iter().position(|x| v <= *x).unwrap_or(b.len());
    assert_eq!(
        bucket(p50),
        bucket(mine),
        "Prometheus p50 TTFVT {p50} vs load generator {mine}"
    );
    eprintln!(
        "prometheus: {count:?} requests, p50 TTFVT {p50:.3} s; load generator p50 {mine:.3} s"
    );

    // promtool lints a live scrape.
    let metrics = common::scrape(&gw).await;
    let names = common::metric_names(&metrics);
    assert!(
        unknown(&names).is_empty(),
        "exported but not listed: {:?}",
        unknown(&names)
    );
    let mut lint = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    lint.stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let out = lint.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
