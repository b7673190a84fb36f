//! Overload: past the global or per-backend limit of requests in flight the
//! gateway answers at once with 503 and `Retry-After` (no queue, no
//! pile-up), and admits again as soon as requests finish.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use bytes::Bytes;
use common::*;
use http_body_util::StreamBody;
use hyper::body::Frame;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
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

/// 10x the capacity, closed loop, against the real binary: at most the limit
/// reaches the upstream, admitted requests keep a bounded latency, the rest
/// get a fast 503 with `Retry-After`, and memory stays flat.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_times_capacity_keeps_admitted_latency_and_memory_bounded() {
    const LIMIT: usize = 8;
    const SERVICE_MS: u64 = 200;
    const QUEUE_MS: u64 = 300;
    let (up, upstream_max) = counting_upstream(SERVICE_MS).await;
    let bin = env!("CARGO_BIN_EXE_thinkgate");
    let limit = LIMIT.to_string();
    let queue = QUEUE_MS.to_string();
    let (mut child, proxy, _) = serve_binary(
        bin,
        &[
            "--upstream".as_ref(),
            up.as_str().as_ref(),
            "--max-inflight".as_ref(),
            limit.as_str().as_ref(),
            "--max-queued".as_ref(),
            limit.as_str().as_ref(),
            "--queue-timeout-ms".as_ref(),
            queue.as_str().as_ref(),
        ],
    );
    let pid = child.id();
    let base = proc_kib(pid, "VmRSS");
    let url = format!("http://{proxy}/v1/chat/completions");
    let c = client();
    let run_for = Duration::from_secs(4);
    let t0 = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..LIMIT * 10 {
        let (c, url) = (c.clone(), url.clone());
        clients.push(tokio::spawn(async move {
            let (mut ok, mut rejected) = (Vec::new(), Vec::new());
            while t0.elapsed() < run_for {
                let t = Instant::now();
                let got = send(
                    &c,
                    post(url.clone(), r#"{"model":"m","stream":true,"messages":[]}"#),
                )
                .await;
                match got.status.as_u16() {
                    200 => ok.push(t.elapsed()),
                    503 => {
                        assert_eq!(got.headers["retry-after"], "1");
                        rejected.push(t.elapsed());
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    s => panic!("status {s}: {:?}", got.body),
                }
            }
            (ok, rejected)
        }));
    }
    let (mut ok, mut rejected) = (Vec::new(), Vec::new());
    for h in clients {
        let (o, r) = h.await.unwrap();
        ok.extend(o);
        rejected.extend(r);
    }
    let hwm = proc_kib(pid, "VmHWM");
    let _ = child.kill();
    let _ = child.wait();
    ok.sort();
    rejected.sort();
    let p99 = |v: &[Duration]| v[(v.len() * 99 / 100).min(v.len() - 1)];
    let most = upstream_max.load(Ordering::SeqCst);
    let capacity = LIMIT as f64 * run_for.as_secs_f64() / (SERVICE_MS as f64 / 1000.0);
    eprintln!(
        "10x overload: {} served (capacity {capacity:.0}), p99 {:?}; {} rejected, p99 {:?}; upstream concurrency max {most}; rss {base} -> peak {hwm} KiB",
        ok.len(),
        p99(&ok),
        rejected.len(),
        p99(&rejected)
    );
    assert!(most <= LIMIT, "upstream saw {most} at once");
    assert!(
        ok.len() as f64 >= 0.7 * capacity,
        "served {} of {capacity:.0}",
        ok.len()
    );
    assert!(
        p99(&ok) < Duration::from_millis(SERVICE_MS + QUEUE_MS + 300),
        "admitted p99 {:?}",
        p99(&ok)
    );
    assert!(
        p99(&rejected) < Duration::from_millis(QUEUE_MS + 200),
        "rejected p99 {:?}",
        p99(&rejected)
    );
    assert!(rejected.len() > ok.len(), "the load was really 10x");
    assert!(hwm < base + 32 * 1024, "rss {base} -> {hwm} KiB");
}

/// An SSE upstream taking `ms` per request that tracks the most requests it
/// held at once. A request counts from its head until its last event is
/// produced (before the gateway can see it end), so the count never
/// includes a request the gateway already considers finished.
async fn counting_upstream(ms: u64) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let now = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let m = Arc::clone(&most);
    tokio::spawn(async move {
        loop {
            let (io, _) = listener.accept().await.unwrap();
            let (now, most) = (Arc::clone(&now), Arc::clone(&m));
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: http::Request<hyper::body::Incoming>| {
                        // health probes and scrapes are not admitted requests
                        let counted = req.method() == http::Method::POST;
                        if counted {
                            let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                            most.fetch_max(n, Ordering::SeqCst);
                        }
                        let now = Arc::clone(&now);
                        let events = futures_util::stream::unfold(0, move |i| {
                            let now = Arc::clone(&now);
                            async move {
                                if i < 2 {
                                    tokio::time::sleep(Duration::from_millis(ms / 2)).await;
                                }
                                let ev: &'static [u8] = match i {
                                0 => b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"}}]}\n\n",
                                1 => {
                                    if counted {
                                        now.fetch_sub(1, Ordering::SeqCst);
                                    }
                                    b"data: [DONE]\n\n"
                                }
                                _ => return None,
                            };
                                Some((
                                    Ok::<_, Infallible>(Frame::data(Bytes::from_static(ev))),
                                    i + 1,
                                ))
                            }
                        });
                        async move {
                            let mut r = http::Response::new(StreamBody::new(events));
                            r.headers_mut().insert(
                                "content-type",
                                http::HeaderValue::from_static("text/event-stream"),
                            );
                            Ok::<_, Infallible>(r)
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(io), svc)
                    .await;
            });
        }
    });
    (format!("http://{addr}"), most)
}
