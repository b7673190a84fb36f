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
        c.backends = urls
            .iter()
            .map(|u| thinkgate::config::BackendConfig {
                url: u.clone(),
                weight: 1,
                pool: "trio".into(),
                models: vec![],
                flavor: Default::default(),
            })
            .collect();
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
