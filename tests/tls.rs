//! TLS on both sides, with certificates made here (rcgen): `https://`
//! engines (a private CA, a name that does not match, an expired
//! certificate, a plain-HTTP engine behind an https URL, mutual TLS), and
//! the https listener (HTTP/1.1 and h2 by ALPN, a certificate renewed on
//! disk while a stream runs, a client that does not speak TLS).
//!
//! The engine is the simulated one behind a TLS front made with
//! tokio-rustls (real TLS over loopback, the bytes passed on unchanged).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use bytes::Bytes;
use common::pki::{server_config, Pki, TlsClient};
use common::{gateway, metric, scrape};
use http_body_util::{BodyExt, Full};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use thinkgate_sim::config::{Flavor, ReasoningMode};
use tokio::net::{TcpListener, TcpStream};

/// An engine on `https://`: TLS ends here and the bytes go on to `to`, a
/// plain-HTTP engine (as a TLS sidecar in front of one would). Without `to`,
/// each connection is closed right after its handshake, without an alert:
/// what Python's ssl (under vLLM) does to a client without the certificate
/// it requires. Returns the front's address.
async fn tls_front(cfg: rustls::ServerConfig, to: Option<SocketAddr>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(s).await else {
                    return;
                };
                let Some(to) = to else {
                    drop(tls.into_inner().0);
                    return;
                };
                let mut up = TcpStream::connect(to).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
            });
        }
    });
    addr
}

async fn sim() -> SocketAddr {
    let cfg = thinkgate_sim::SimConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        time_scale: 50.0,
        reasoning: ReasoningMode::Field,
        flavor: Flavor::Vllm,
        ..Default::default()
    };
    let (addr, _sim, task) = thinkgate_sim::server::spawn(cfg).await.unwrap();
    std::mem::forget(task);
    addr
}

const CHAT: &str = r#"{"model":"sim-r1-distill-qwen-7b","stream":true,"max_tokens":64,"messages":[{"role":"user","content":"what is 2+2?"}]}"#;

async fn post(c: &TlsClient, url: String, body: &str) -> (http::StatusCode, http::Version, Bytes) {
    let req = http::Request::post(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let resp = c.request(req).await.unwrap();
    let (status, version) = (resp.status(), resp.version());
    (
        status,
        version,
        resp.into_body().collect().await.unwrap().to_bytes(),
    )
}

/// A streamed chat through a plain client to the gateway at `gw`.
async fn chat_plain(gw: SocketAddr) -> common::Got {
    common::send(
        &common::client(),
        common::post(format!("http://{gw}/v1/chat/completions"), CHAT),
    )
    .await
}

fn ends_done(body: &[u8]) -> bool {
    String::from_utf8_lossy(body)
        .trim_end()
        .ends_with("data: [DONE]")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_engine_signed_by_a_private_ca_is_served_probed_and_scraped() {
    let pki = Pki::new("private");
    let leaf = pki.leaf("engine", &["localhost", "127.0.0.1"], -1, 30);
    let front = tls_front(server_config(&leaf, None), Some(sim().await)).await;
    let url = format!("https://localhost:{}/v1", front.port());
    let ca = pki.ca_file();
    let gw = gateway(vec![url.clone()], |c| {
        c.upstream_tls.ca_file = Some(ca);
        c.health_interval_ms = 100;
        c.scrape_interval_ms = 100;
    })
    .await;
    // streamed (the lean HTTP/1.1 client) and a GET (hyper's client)
    let got = chat_plain(gw.proxy_addr).await;
    assert_eq!(got.status, 200, "{}", String::from_utf8_lossy(&got.body));
    assert!(ends_done(&got.body));
    let models = common::send(
        &common::client(),
        http::Request::get(format!("http://{}/v1/models", gw.proxy_addr))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(models.status, 200);
    let v: Value = serde_json::from_slice(&models.body).unwrap();
    assert!(v["data"].is_array(), "{v}");
    // kept alive: ten more requests, one TLS handshake's worth of work each
    // at most
    for _ in 0..10 {
        assert_eq!(chat_plain(gw.proxy_addr).await.status, 200);
    }
    // probes and scrapes go over the same TLS: the backend is up and its
    // KV use is read
    let name = url.trim_end_matches("/v1");
    let t = std::time::Instant::now();
    loop {
        let m = scrape(&gw).await;
        if metric(&m, "thinkgate_backend_kv_usage", &[("backend", name)]).is_some() {
            assert_eq!(
                metric(&m, "thinkgate_backend_healthy", &[("backend", name)]),
                Some(1.0)
            );
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "never scraped over TLS: {m}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Each way a handshake with an engine fails: a 502 with an OpenAI-style
/// body naming the cause, a counter by kind, at once (never a hang).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_engine_handshake_is_a_502_that_names_its_cause() {
    let pki = Pki::new("causes");
    let stranger = Pki::new("stranger");
    let engine = sim().await;
    let good = pki.leaf("good", &["localhost", "127.0.0.1"], -1, 30);
    let wrong_name = pki.leaf("wrong-name", &["elsewhere.example"], -1, 30);
    let expired = pki.leaf("expired", &["localhost", "127.0.0.1"], -30, 10);
    let client_leaf = pki.leaf("gateway-client", &["gateway"], -1, 30);
    let strangers = stranger.leaf("theirs", &["localhost", "127.0.0.1"], -1, 30);
    let fronts = [
        (
            "unknown_ca",
            tls_front(server_config(&strangers, None), Some(engine)).await,
        ),
        (
            "name_mismatch",
            tls_front(server_config(&wrong_name, None), Some(engine)).await,
        ),
        (
            "expired",
            tls_front(server_config(&expired, None), Some(engine)).await,
        ),
        // mutual TLS required, and the gateway shows no certificate
        (
            "refused",
            tls_front(server_config(&good, Some(&pki)), Some(engine)).await,
        ),
        // the same, refused without an alert
        ("refused", tls_front(server_config(&good, None), None).await),
        // a plain-HTTP engine behind an https:// URL
        ("handshake", engine),
    ];
    let mut counted = std::collections::HashMap::new();
    for (kind, addr) in fronts {
        let ca = pki.ca_file();
        let gw = gateway(vec![format!("https://localhost:{}", addr.port())], |c| {
            c.upstream_tls.ca_file = Some(ca);
        })
        .await;
        let t = std::time::Instant::now();
        let got = chat_plain(gw.proxy_addr).await;
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "{kind}: {:?}",
            t.elapsed()
        );
        assert_eq!(got.status, 502, "{kind}");
        let v: Value = serde_json::from_slice(&got.body).unwrap();
        assert_eq!(v["error"]["type"], "upstream_tls_error", "{kind}: {v}");
        assert_eq!(v["error"]["code"], 502);
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains(&format!("({kind})")), "{kind}: {msg}");
        let m = scrape(&gw).await;
        let n = counted.entry(kind).or_insert(0.0);
        *n += 1.0;
        assert_eq!(
            metric(
                &m,
                "thinkgate_tls_errors_total",
                &[("side", "upstream"), ("kind", kind)]
            ),
            Some(*n),
            "{kind}"
        );
        gw.shutdown();
        gw.wait().await;
    }
    // with its client certificate, the engine that requires one serves
    let front = tls_front(server_config(&good, Some(&pki)), Some(engine)).await;
    let (ca, cert, key) = (pki.ca_file(), client_leaf.cert, client_leaf.key);
    let gw = gateway(vec![format!("https://127.0.0.1:{}", front.port())], |c| {
        c.upstream_tls.ca_file = Some(ca);
        c.upstream_tls.cert_file = Some(cert);
        c.upstream_tls.key_file = Some(key);
    })
    .await;
    let got = chat_plain(gw.proxy_addr).await;
    assert_eq!(got.status, 200, "{}", String::from_utf8_lossy(&got.body));
    assert!(ends_done(&got.body));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tls_files_stop_the_gateway_before_it_listens() {
    let pki = Pki::new("files");
    let leaf = pki.leaf("listener", &["localhost"], -1, 30);
    let other = pki.leaf("other", &["localhost"], -1, 30);
    let upstream = vec!["http://127.0.0.1:9".to_string()];
    let missing = Path::new("/nonexistent/cert.pem").to_path_buf();
    type Tweak = Box<dyn FnOnce(&mut thinkgate::config::Config)>;
    let cases: Vec<(&str, Tweak)> = vec![
        ("tls.cert_file", {
            let (m, k) = (missing.clone(), leaf.key.clone());
            Box::new(move |c| {
                c.tls.cert_file = Some(m);
                c.tls.key_file = Some(k);
            })
        }),
        ("certificate and key", {
            let (cert, k) = (leaf.cert.clone(), other.key.clone());
            Box::new(move |c| {
                c.tls.cert_file = Some(cert);
                c.tls.key_file = Some(k);
            })
        }),
        ("upstream_tls.ca_file", {
            let m = missing.clone();
            Box::new(move |c| c.upstream_tls.ca_file = Some(m))
        }),
        ("go together", {
            let cert = leaf.cert.clone();
            Box::new(move |c| c.upstream_tls.cert_file = Some(cert))
        }),
        ("tls.admin", Box::new(|c| c.tls.admin = true)),
    ];
    for (want, tweak) in cases {
        let mut cfg = thinkgate::config::Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            admin: "127.0.0.1:0".parse().unwrap(),
            upstreams: upstream.clone(),
            ..Default::default()
        };
        tweak(&mut cfg);
        let err = thinkgate::server::Gateway::start(cfg)
            .await
            .err()
            .expect(want);
        assert!(err.to_string().contains(want), "{want}: {err}");
    }
}

/// The https listener: HTTP/1.1 and h2 by ALPN; the admin listener on TLS
/// too; a renewed certificate serves new handshakes while a stream opened
/// before the renewal runs to its end; a client that does not speak TLS is
/// counted and closed, and nothing else is touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_https_listener_speaks_both_versions_and_renews_its_certificate_in_place() {
    let pki = Pki::new("listener");
    let first = pki.leaf("gateway", &["localhost", "127.0.0.1"], -1, 30);
    let engine = sim().await;
    let (cert, key) = (first.cert.clone(), first.key.clone());
    let gw = gateway(vec![format!("http://{engine}")], |c| {
        c.tls.cert_file = Some(cert);
        c.tls.key_file = Some(key);
        c.tls.admin = true;
        c.tls.reload_interval_secs = 1;
    })
    .await;
    let url = format!(
        "https://localhost:{}/v1/chat/completions",
        gw.proxy_addr.port()
    );
    for h2 in [false, true] {
        let (status, version, body) = post(&pki.https_client(h2, None), url.clone(), CHAT).await;
        assert_eq!(status, 200);
        let want = if h2 {
            http::Version::HTTP_2
        } else {
            http::Version::HTTP_11
        };
        assert_eq!(version, want);
        assert!(ends_done(&body));
    }
    // the admin listener over TLS
    let admin = pki.https_client(false, None);
    let resp = admin
        .request(
            http::Request::get(format!(
                "https://localhost:{}/metrics",
                gw.admin_addr.port()
            ))
            .body(Full::new(Bytes::new()))
            .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // plain HTTP to the TLS port: refused at the handshake, counted
    let plain = tokio::time::timeout(Duration::from_secs(5), chat_plain_raw(gw.proxy_addr)).await;
    assert!(
        plain.unwrap().is_err(),
        "plain HTTP was answered on the TLS port"
    );
    // a long stream opened before the renewal
    let long = r#"{"model":"sim-r1-distill-qwen-7b","stream":true,"max_tokens":4000,"messages":[{"role":"user","content":"a long one"}]}"#;
    let c = pki.https_client(false, None);
    let req = http::Request::post(url.clone())
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(long)))
        .unwrap();
    let open = c.request(req).await.unwrap();
    assert_eq!(open.status(), 200);
    // renewal: a new certificate (another serial, another CN) on disk
    let old_cert = pki.peer_cert(gw.proxy_addr).await;
    let renewed = pki.leaf("renewed", &["localhost", "127.0.0.1"], -1, 60);
    std::fs::rename(&renewed.key, &first.key).unwrap();
    std::fs::rename(&renewed.cert, &first.cert).unwrap();
    let t = std::time::Instant::now();
    loop {
        if pki.peer_cert(gw.proxy_addr).await != old_cert {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the renewed certificate never served"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // the stream opened before it ends whole
    let body = open.into_body().collect().await.unwrap().to_bytes();
    assert!(ends_done(&body), "the open stream was cut by the renewal");
    let m = scrape_tls(&admin, gw.admin_addr).await;
    assert_eq!(
        metric(&m, "thinkgate_tls_reloads_total", &[("result", "ok")]),
        Some(1.0),
        "{m}"
    );
    assert!(
        metric(
            &m,
            "thinkgate_tls_errors_total",
            &[("side", "listener"), ("kind", "handshake")]
        )
        .unwrap()
            >= 1.0
    );
    // a broken pair on disk keeps the renewed certificate serving
    std::fs::write(&first.key, "not a key").unwrap();
    let t = std::time::Instant::now();
    loop {
        let m = scrape_tls(&admin, gw.admin_addr).await;
        if metric(&m, "thinkgate_tls_reloads_total", &[("result", "error")]) >= Some(1.0) {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the broken pair was never read"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, _, _) = post(&pki.https_client(true, None), url, CHAT).await;
    assert_eq!(status, 200);
}

/// Plain HTTP to `addr`: the response, or the error that ended it.
async fn chat_plain_raw(
    addr: SocketAddr,
) -> Result<http::StatusCode, hyper_util::client::legacy::Error> {
    common::client()
        .request(common::post(
            format!("http://{addr}/v1/chat/completions"),
            CHAT,
        ))
        .await
        .map(|r| r.status())
}

async fn scrape_tls(c: &TlsClient, admin: SocketAddr) -> String {
    let resp = c
        .request(
            http::Request::get(format!("https://localhost:{}/metrics", admin.port()))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap()
}
