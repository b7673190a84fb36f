//! The real `openai` Python client (installed by `.ci/run`) against the
//! gateway in front of the simulated engine. Without Python or the package
//! the test says so and passes, unless `THINKGATE_REQUIRE_PY=1` (CI), where
//! it fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_python_client_sees_a_normal_engine() {
    if !common::python_with_openai() {
        return;
    }
    let sim_cfg = thinkgate_sim::SimConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        time_scale: 50.0,
        ..Default::default()
    };
    let model = sim_cfg.model.clone();
    let (sim_addr, _sim, _task) = thinkgate_sim::server::spawn(sim_cfg).await.unwrap();
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

    let m = common::scrape(&gw).await;
    let ok = common::metric(
        &m,
        "thinkgate_requests_total",
        &[("model", "sim-r1-distill-qwen-7b"), ("status", "200")],
    );
    assert_eq!(ok, Some(4.0), "{m}");
}
