//! The real `openai` Python client (installed by `.ci/run`) against the
//! gateway in front of the simulated engine. The tests need python3 with the
//! package: ignored in a plain `cargo test`, run by `just external` (CI).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;

/// A fast simulated engine: its address, model, and what keeps it running.
async fn sim() -> (
    std::net::SocketAddr,
    String,
    (
        std::sync::Arc<thinkgate_sim::server::Sim>,
        tokio::task::JoinHandle<()>,
    ),
) {
    let cfg = thinkgate_sim::SimConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        time_scale: 50.0,
        ..Default::default()
    };
    let model = cfg.model.clone();
    let (addr, sim, task) = thinkgate_sim::server::spawn(cfg).await.unwrap();
    (addr, model, (sim, task))
}

#[ignore = "needs python3 with the openai package: just external (CI runs it)"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_python_client_sees_a_normal_engine() {
    common::require_python_with_openai();
    let (sim_addr, model, _sim) = sim().await;
    let gw = common::gateway(vec![format!("http://{sim_addr}")], |_| {}).await;
    let base = format!("http://{}", gw.proxy_addr);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/openai_client.py");
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .args([script, &base, &model])
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

    let s = &v["stream"];
    assert!(
        !s["reasoning"].as_str().unwrap().is_empty(),
        "reasoning arrives in delta.reasoning: {s}"
    );
    assert!(s["content"].as_str().unwrap().contains("\\boxed{"), "{s}");
    assert_eq!(
        s["usage_chunks"].as_array().unwrap().len(),
        0,
        "injected usage must stay hidden: {s}"
    );
    assert_eq!(s["ids"].as_array().unwrap().len(), 1, "one stream id");
    assert_eq!(s["finish"], "stop");
    let u = &v["usage_requested"];
    assert!(u["completion_tokens"].as_u64().unwrap() > 0, "{u}");
    assert!(
        u["completion_tokens_details"]["reasoning_tokens"]
            .as_u64()
            .unwrap()
            > 0,
        "{u}"
    );
    assert!(v["plain"]["content"].as_str().unwrap().contains("\\boxed{"));
    assert!(v["plain"]["reasoning"]
        .as_str()
        .is_some_and(|r| !r.is_empty()));
    let c = v["completions"].as_str().unwrap();
    assert!(
        c.starts_with("<think>") && c.contains("</think>") && c.contains("\\boxed{"),
        "{c}"
    );
    assert_eq!(v["error"]["status"], 404);

    // (filtered by backend: the other test in this binary shares the recorder)
    let m = common::scrape(&gw).await;
    let backend = format!("http://{sim_addr}");
    let ok = common::metric(
        &m,
        "thinkgate_requests_total",
        &[
            ("backend", backend.as_str()),
            ("model", "sim-r1-distill-qwen-7b"),
            ("status", "200"),
        ],
    );
    assert_eq!(ok, Some(4.0), "{m}");
}

/// Upstream faults as the real client sees them: a stream whose upstream
/// fails mid-way raises `APIError` with the gateway's message (not a
/// protocol error), errors before the first byte raise the status error
/// of their code, and harmless oddities pass.
#[ignore = "needs python3 with the openai package: just external (CI runs it)"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_python_client_sees_faults_as_api_errors() {
    common::require_python_with_openai();
    let (sim_addr, model, _sim) = sim().await;
    let plan = thinkgate_sim::faults::FaultPlan {
        stall: std::time::Duration::from_secs(5),
        ..Default::default()
    };
    let (front, _stats, _front_task) =
        thinkgate_sim::faults::spawn("127.0.0.1:0".parse().unwrap(), sim_addr, plan)
            .await
            .unwrap();
    let gw = common::gateway(vec![format!("http://{front}")], |c| {
        c.upstream_idle_timeout_secs = 1;
        c.straggler.retries = 0;
    })
    .await;
    let run = |base: String, faults: &'static str| {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/openai_faults.py");
        let model = model.clone();
        tokio::task::spawn_blocking(move || {
            let out = Command::new("python3")
                .args([script, &base, &model, faults])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "python failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
        })
    };
    let all = "reset_mid_stream,stall_mid_stream,reset_before_headers,status_429,garbage,http10";
    let v = run(format!("http://{}", gw.proxy_addr), all).await.unwrap();
    // what the engine's own bytes do to the client is the same without the gateway
    let direct = run(format!("http://{front}"), "garbage,http10,status_429")
        .await
        .unwrap();
    for fault in ["garbage", "http10", "status_429"] {
        assert_eq!(
            v[fault]["raised"], direct[fault]["raised"],
            "{fault}: {v} vs {direct}"
        );
    }
    for (fault, says) in [
        ("reset_mid_stream", "lost mid-stream"),
        ("stall_mid_stream", "sent nothing for 1 s"),
    ] {
        assert_eq!(v[fault]["raised"], "APIError", "{fault}: {v}");
        assert!(
            v[fault]["message"].as_str().unwrap().contains(says),
            "{fault}: {v}"
        );
        assert!(v[fault]["events"].as_u64().unwrap() >= 2, "{fault}: {v}");
    }
    assert_eq!(
        v["reset_before_headers"]["raised"], "InternalServerError",
        "{v}"
    );
    assert_eq!(v["reset_before_headers"]["status"], 502, "{v}");
    assert_eq!(v["status_429"]["raised"], "RateLimitError", "{v}");
    assert_eq!(v["status_429"]["retry_after"], "2", "{v}");
    assert_eq!(v["http10"]["raised"], serde_json::Value::Null, "{v}");
}

#[ignore = "needs python3 with the openai package: just external (CI runs it)"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_python_client_with_and_without_a_key() {
    common::require_python_with_openai();
    let (sim_addr, model, _sim) = sim().await;
    let dir = common::tempdir("openai-keys");
    let keys = dir.join("keys.toml");
    std::fs::write(
        &keys,
        "[[keys]]\nname = \"notebook\"\nkey = \"sk-notebook-0123456789\"\n",
    )
    .unwrap();
    let gw = common::gateway(vec![format!("http://{sim_addr}")], move |c| {
        c.auth.keys_file = Some(keys);
    })
    .await;
    let base = format!("http://{}", gw.proxy_addr);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/openai_keys.py");
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .args([script, &base, &model, "sk-notebook-0123456789"])
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for k in ["none", "wrong"] {
        assert_eq!(v[k]["error"], "authentication", "{k}: {v}");
        assert_eq!(v[k]["status"], 401, "{k}: {v}");
    }
    assert_eq!(v["good"]["ok"], true, "the right key gets an answer: {v}");
    assert_eq!(v["sleep"]["status"], 404, "{v}");
}

/// The client over https: the gateway's TLS listener with a certificate
/// from a private CA the client is told to trust (`httpx.Client(verify=CA)`,
/// as teams configure it); a client that trusts only the system's roots is
/// refused at the handshake.
#[ignore = "needs python3 with the openai package: just external (CI runs it)"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_python_client_over_https() {
    common::require_python_with_openai();
    let (sim_addr, model, _sim) = sim().await;
    let pki = common::pki::Pki::new("openai");
    let leaf = pki.leaf("gateway", &["localhost", "127.0.0.1"], -1, 30);
    let (cert, key) = (leaf.cert.clone(), leaf.key.clone());
    let gw = common::gateway(vec![format!("http://{sim_addr}")], move |c| {
        c.tls.cert_file = Some(cert);
        c.tls.key_file = Some(key);
    })
    .await;
    let base = format!("https://localhost:{}", gw.proxy_addr.port());
    let ca = pki.ca_file().display().to_string();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/openai_tls.py");
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .args([script, &base, &model, &ca])
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let s = &v["stream"];
    assert!(!s["reasoning"].as_str().unwrap().is_empty(), "{s}");
    assert!(s["content"].as_str().unwrap().contains("\\boxed{"), "{s}");
    assert_eq!(s["finish"], "stop", "{s}");
    assert!(
        v["whole"]["content"].as_str().unwrap().contains("\\boxed{"),
        "{v}"
    );
    assert_eq!(v["models"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["untrusted"]["raised"], "APIConnectionError", "{v}");
    assert!(
        v["untrusted"]["cause"]
            .as_str()
            .unwrap()
            .contains("CERTIFICATE_VERIFY_FAILED"),
        "{v}"
    );
}
