//! Overload: past the global or per-backend limit of requests in flight the
//! gateway answers at once with 503 and `Retry-After` (no queue, no
//! pile-up), and admits again as soon as requests finish.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use std::time::{Duration, Instant};

/// An upstream whose every response head takes `ms`.
async fn slow(ms: u64) -> Upstream {
    upstream(move |_, _| {
        let mut s = Script::json(r#"{"ok":true}"#);
        s.head_delay = Duration::from_millis(ms);
        s
    })
    .await
}

fn req(gw: &thinkgate::server::Gateway) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    post(
        format!("http://{}/v1/chat/completions", gw.proxy_addr),
        r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#,
    )
}

async fn rejected_fast(c: &HttpClient, gw: &thinkgate::server::Gateway, kind: &str) {
    let t = Instant::now();
    let got = send(c, req(gw)).await;
    assert!(
        t.elapsed() < Duration::from_millis(200),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(got.status, 503);
    assert_eq!(got.headers["retry-after"], "1");
    let v: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(v["error"]["type"], "overloaded", "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains(kind),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_limit_rejects_at_once_and_recovers() {
    let up = slow(600).await;
    let gw = gateway(vec![up.url()], |c| c.max_inflight = 2).await;
    let c = client();
    let busy: Vec<_> = (0..2)
        .map(|_| {
            let (c, r) = (c.clone(), req(&gw));
            tokio::spawn(async move { send(&c, r).await.status })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(150)).await;
    rejected_fast(&c, &gw, "gateway").await;
    for b in busy {
        assert_eq!(b.await.unwrap(), 200, "admitted requests are served");
    }
    assert_eq!(send(&c, req(&gw)).await.status, 200, "admits again");
    assert_eq!(
        up.seen.lock().unwrap().len(),
        3,
        "the rejected one never went upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_backend_limit_spreads_then_rejects() {
    let (a, b) = (slow(600).await, slow(600).await);
    let gw = gateway(vec![a.url(), b.url()], |c| {
        c.max_inflight_per_backend = 1;
        c.routing = thinkgate_policies::PolicyConfig::LeastRequest;
    })
    .await;
    let c = client();
    let busy: Vec<_> = (0..2)
        .map(|_| {
            let (c, r) = (c.clone(), req(&gw));
            tokio::spawn(async move { send(&c, r).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(150)).await;
    rejected_fast(&c, &gw, "every backend").await;
    let mut backends = Vec::new();
    for h in busy {
        let got = h.await.unwrap();
        assert_eq!(got.status, 200);
        backends.push(
            got.headers["x-thinkgate-backend"]
                .to_str()
                .unwrap()
                .to_string(),
        );
    }
    backends.sort();
    let mut want = [a.url(), b.url()];
    want.sort();
    assert_eq!(backends, want, "one on each backend");
    assert_eq!(send(&c, req(&gw)).await.status, 200);
}
