//! Health with thresholds, panic routing and readiness, over loopback: an
//! engine that starts with the gateway is never refused for a probe that ran
//! before it listened, and a pool with too few healthy backends is routed
//! over all of them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use bytes::Bytes;
use common::{client, gateway, post, send};
use std::time::{Duration, Instant};

fn chat(
    gw: &thinkgate::server::Gateway,
    model: &str,
) -> http::Request<http_body_util::Full<Bytes>> {
    post(
        format!("http://{}/v1/chat/completions", gw.proxy_addr),
        &format!(
            r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}],"max_tokens":50}}"#
        ),
    )
}

fn admin(
    gw: &thinkgate::server::Gateway,
    path: &str,
) -> http::Request<http_body_util::Full<Bytes>> {
    http::Request::get(format!("http://{}{path}", gw.admin_addr))
        .body(http_body_util::Full::new(Bytes::new()))
        .unwrap()
}

/// A fast simulated engine on `addr`.
async fn sim_on(addr: std::net::SocketAddr) -> String {
    let cfg = thinkgate_sim::SimConfig {
        listen: addr,
        time_scale: 200.0,
        ..Default::default()
    };
    let model = cfg.model.clone();
    let (_, sim, task) = thinkgate_sim::server::spawn(cfg).await.unwrap();
    std::mem::forget((sim, task));
    model
}

/// Backends at `urls`, all in `pool`.
fn pooled(urls: &[String], pool: &str) -> Vec<thinkgate::config::BackendConfig> {
    urls.iter()
        .map(|u| thinkgate::config::BackendConfig {
            url: u.clone(),
            weight: 1,
            pool: pool.into(),
            models: vec![],
            flavor: Default::default(),
        })
        .collect()
}

fn free_addr() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_started_with_the_gateway_is_never_refused_for_a_probe() {
    // the gateway first, its probes failing: nothing listens yet
    let addr = free_addr();
    let gw = gateway(vec![format!("http://{addr}")], |c| {
        c.health_interval_ms = 100
    })
    .await;
    let c = client();
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(
        send(&c, admin(&gw, "/readyz")).await.status,
        503,
        "not ready while no engine has answered"
    );
    // the engine comes up; requests keep coming, as from a client that
    // started with both
    let started = Instant::now();
    let model = sim_on(addr).await;
    let mut statuses = Vec::new();
    while started.elapsed() < Duration::from_millis(1500) {
        statuses.push(send(&c, chat(&gw, &model)).await.status.as_u16());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !statuses.contains(&503),
        "refused for a probe: {statuses:?}"
    );
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(send(&c, admin(&gw, "/readyz")).await.status, 200);
    let stats: serde_json::Value =
        serde_json::from_slice(&send(&c, admin(&gw, "/stats")).await.body).unwrap();
    assert_eq!(stats["backends"][0]["seen_up"], true, "{stats}");
    assert_eq!(stats["panic_pools"], serde_json::json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_few_healthy_backends_are_routed_over_all_of_them() {
    let live = free_addr();
    let model = sim_on(live).await;
    let dead = [free_addr(), free_addr()];
    let mut urls: Vec<String> = dead.iter().map(|a| format!("http://{a}")).collect();
    urls.push(format!("http://{live}"));
    // (a pool of its own: the metrics registry is this test binary's, shared
    // with the other test's `default` pool)
    let gw = gateway(vec![], |c| {
        c.backends = pooled(&urls, "trio");
        c.pool = Some("trio".into());
        c.health_interval_ms = 100;
        c.startup_grace_secs = 0;
        c.straggler.retries = 2;
    })
    .await;
    let c = client();
    // three failed probes take the dead ones out: 1 of 3 healthy
    tokio::time::sleep(Duration::from_millis(600)).await;
    let stats: serde_json::Value =
        serde_json::from_slice(&send(&c, admin(&gw, "/stats")).await.body).unwrap();
    assert_eq!(stats["panic_pools"], serde_json::json!(["trio"]), "{stats}");
    let metrics = common::scrape(&gw).await;
    assert_eq!(
        common::metric(&metrics, "thinkgate_panic_routing", &[("pool", "trio")]),
        Some(1.0),
        "{metrics}"
    );
    // every backend is offered: some requests try a dead one first and are
    // retried on the live one; none is refused
    for _ in 0..10 {
        assert_eq!(send(&c, chat(&gw, &model)).await.status, 200);
    }
    let metrics = common::scrape(&gw).await;
    assert!(
        common::metric(
            &metrics,
            "thinkgate_retries_total",
            &[("reason", "connect")]
        ) > Some(0.0),
        "the dead backends were tried: {metrics}"
    );
}

/// An engine that accepts connections and never answers (a stopped
/// process: the kernel still completes the handshake) costs its own probe
/// the probe timeout, not the other backends': they are probed, taken out
/// and brought back on their own schedule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_never_answers_does_not_hold_back_the_others_probes() {
    // accepts, holds every connection, never writes
    let stuck = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stuck_addr = stuck.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = stuck.accept().await {
            held.push(s);
        }
    });
    // the other engine comes up only after the gateway started
    let late = free_addr();
    let urls = [format!("http://{stuck_addr}"), format!("http://{late}")];
    let gw = gateway(vec![], |c| {
        c.backends = pooled(&urls, "pair");
        c.pool = Some("pair".into());
        c.health_interval_ms = 100;
        c.startup_grace_secs = 0;
    })
    .await;
    let c = client();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let up = Instant::now();
    let model = sim_on(late).await;
    // seen up at its next probe, although the stuck engine's probe waits for
    // its 2 s timeout all the while
    let healthy = |stats: &serde_json::Value| stats["backends"][1]["healthy"] == true;
    let mut stats = serde_json::Value::Null;
    while up.elapsed() < Duration::from_millis(1500) {
        stats = serde_json::from_slice(&send(&c, admin(&gw, "/stats")).await.body).unwrap();
        if healthy(&stats) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        healthy(&stats),
        "the live engine still not healthy after {:?}: {stats}",
        up.elapsed()
    );
    // and every request goes to it, none waits on the stuck one
    for _ in 0..5 {
        let t0 = Instant::now();
        let got = send(&c, chat(&gw, &model)).await;
        assert_eq!(got.status, 200);
        assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    }
}
