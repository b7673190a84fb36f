//! The route policy and client keys, through the gateway over loopback: the
//! engines' control endpoints are closed by default and open when allowed,
//! hostile spellings of their paths do not slip past, keys are asked for
//! only when configured, reloaded when their file changes, and their limits
//! answer 429 with `Retry-After`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use bytes::Bytes;
use common::{client, gateway, records, send, Script};
use http::Request;
use http_body_util::Full;
use std::time::Duration;
use thinkgate::access::routes::Rule;

fn req(method: &str, url: String, key: Option<&str>) -> Request<Full<Bytes>> {
    let mut r = Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json");
    if let Some(k) = key {
        r = r.header("authorization", format!("Bearer {k}"));
    }
    let body = if method == "POST" {
        r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#
    } else {
        ""
    };
    r.body(Full::new(Bytes::from(body))).unwrap()
}

/// An engine that answers every path, so only the gateway can refuse.
async fn engine() -> common::Upstream {
    common::upstream(|_, _| Script::json(r#"{"ok":true}"#)).await
}

/// Control endpoints of vLLM, SGLang and llama.cpp, as a client would call
/// them.
const CONTROL: &[(&str, &str)] = &[
    ("POST", "/sleep?level=1"),
    ("POST", "/wake_up"),
    ("POST", "/reset_prefix_cache"),
    ("POST", "/collective_rpc"),
    ("POST", "/start_profile"),
    ("POST", "/v1/load_lora_adapter"),
    ("POST", "/flush_cache"),
    ("POST", "/update_weights_from_disk"),
    ("POST", "/abort_request"),
    ("POST", "/slots/0?action=erase"),
    ("GET", "/slots"),
    ("POST", "/props"),
    ("GET", "/metrics"),
    ("POST", "/v1/chat/completions/control"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_endpoints_are_closed_by_default_and_open_when_allowed() {
    let up = engine().await;
    let gw = gateway(vec![up.url()], |_| {}).await;
    let base = format!("http://{}", gw.proxy_addr);
    let c = client();
    for (m, p) in CONTROL {
        let got = send(&c, req(m, format!("{base}{p}"), None)).await;
        assert_eq!(got.status, 404, "{m} {p}");
        let v: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
        assert_eq!(v["error"]["type"], "not_found_error", "{m} {p}: {v}");
    }
    // hostile spellings of control paths, through allowed prefixes
    for p in [
        "/v1/models/../../sleep",
        "/v1/models/%2e%2e/%2e%2e/reset_prefix_cache",
        "/v1/models%2F..%2F..%2Fsleep",
        "/v1//models",
        "/SLEEP",
        "/reset%5Fprefix%5Fcache",
        "/sleep.",
    ] {
        let got = send(&c, req("POST", format!("{base}{p}"), None)).await;
        assert_eq!(got.status, 404, "{p}");
    }
    assert_eq!(
        up.seen.lock().unwrap().len(),
        0,
        "nothing reached the engine"
    );
    // the client API passes
    for (m, p) in [
        ("POST", "/v1/chat/completions"),
        ("GET", "/v1/models"),
        ("POST", "/tokenize"),
        ("GET", "/health"),
    ] {
        let got = send(&c, req(m, format!("{base}{p}"), None)).await;
        assert_eq!(got.status, 200, "{m} {p}");
    }
    // every route the gateway names on its counter is closed, by name (a
    // route added to the list is tested here without a new line)
    for route in thinkgate::access::CONTROL_ROUTES {
        let got = send(&c, req("POST", format!("{base}{route}"), None)).await;
        assert_eq!(got.status, 404, "{route}");
    }
    assert_eq!(
        up.seen.lock().unwrap().len(),
        4,
        "only the client API passed"
    );
    let metrics = common::scrape(&gw).await;
    let refused = |route: &str| {
        common::metric(
            &metrics,
            "thinkgate_routes_refused_total",
            &[("route", route)],
        )
        .unwrap_or(0.0)
    };
    assert_eq!(refused("/sleep"), 2.0);
    assert_eq!(refused("/slots"), 3.0);
    assert_eq!(refused("/is_sleeping"), 1.0);
    assert!(refused("suspicious") >= 4.0, "{metrics}");
    gw.shutdown();
    gw.wait().await;

    // allowed by the operator: open; allow_all: the old behaviour
    let up = engine().await;
    let gw = gateway(vec![up.url()], |c| {
        c.routes.allow_extra = vec![Rule::parse("POST /slots/*").unwrap()];
    })
    .await;
    let base = format!("http://{}", gw.proxy_addr);
    assert_eq!(
        send(
            &c,
            req("POST", format!("{base}/slots/0?action=erase"), None)
        )
        .await
        .status,
        200
    );
    assert_eq!(
        send(&c, req("POST", format!("{base}/sleep"), None))
            .await
            .status,
        404
    );
    assert_eq!(up.last().uri, "/slots/0?action=erase", "forwarded as sent");
    gw.shutdown();
    gw.wait().await;
    let up = engine().await;
    let gw = gateway(vec![up.url()], |c| c.routes.allow_all = true).await;
    let base = format!("http://{}", gw.proxy_addr);
    for (m, p) in CONTROL {
        assert_eq!(
            send(&c, req(m, format!("{base}{p}"), None)).await.status,
            200,
            "{m} {p}"
        );
    }
    assert_eq!(
        send(&c, req("POST", format!("{base}/v1/models/../sleep"), None))
            .await
            .status,
        404,
        "the path checks stay"
    );
    gw.shutdown();
    gw.wait().await;
}

fn write_keys(path: &std::path::Path, text: &str) {
    // replaced, not written in place, as a mounted Secret is
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_asked_for_named_in_records_reloaded_and_limited() {
    let dir = common::tempdir("keys");
    let keys = dir.join("keys.toml");
    write_keys(
        &keys,
        r#"
[[keys]]
name = "team-a"
key = "sk-team-a-0123456789"
[[keys]]
name = "team-b"
key = "sk-team-b-0123456789"
max_inflight = 1
[[keys]]
name = "team-r"
key = "sk-team-r-0123456789"
rps = 1.0
"#,
    );
    let rec = dir.join("records.jsonl");
    let up = common::upstream(|parts, _| {
        if parts.uri.path() == "/slow" {
            let mut s = Script::json("{}");
            s.head_delay = Duration::from_millis(600);
            s
        } else {
            Script::json(r#"{"ok":true}"#)
        }
    })
    .await;
    let (k, r) = (keys.clone(), rec.clone());
    let gw = gateway(vec![up.url()], move |c| {
        c.auth.keys_file = Some(k);
        c.auth.reload_interval_ms = 100;
        c.records = Some(r);
        c.routes.allow_extra = vec![Rule::parse("GET /slow").unwrap()];
    })
    .await;
    let base = format!("http://{}", gw.proxy_addr);
    let chat = format!("{base}/v1/chat/completions");
    let c = client();
    for key in [
        None,
        Some("sk-wrong-0123456789"),
        Some("sk-team-a-012345678"),
    ] {
        let got = send(&c, req("POST", chat.clone(), key)).await;
        assert_eq!(got.status, 401, "{key:?}");
        assert_eq!(got.headers["www-authenticate"], "Bearer");
    }
    assert_eq!(
        up.seen.lock().unwrap().len(),
        0,
        "nothing reached the engine"
    );
    let got = send(&c, req("POST", chat.clone(), Some("sk-team-a-0123456789"))).await;
    assert_eq!(got.status, 200);
    assert_eq!(
        up.last()
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok()),
        Some("Bearer sk-team-a-0123456789"),
        "headers go as the client sent them"
    );
    // team-b: one in flight
    let slow = {
        let c = c.clone();
        let url = format!("{base}/slow");
        tokio::spawn(async move { send(&c, req("GET", url, Some("sk-team-b-0123456789"))).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let got = send(&c, req("POST", chat.clone(), Some("sk-team-b-0123456789"))).await;
    assert_eq!(got.status, 429);
    assert_eq!(got.headers["retry-after"], "1");
    assert_eq!(slow.await.unwrap().status, 200);
    assert_eq!(
        send(&c, req("POST", chat.clone(), Some("sk-team-b-0123456789")))
            .await
            .status,
        200
    );
    // team-r: one per second
    let r = |c| req("POST", chat.clone(), Some(c));
    assert_eq!(send(&c, r("sk-team-r-0123456789")).await.status, 200);
    let got = send(&c, r("sk-team-r-0123456789")).await;
    assert_eq!(got.status, 429, "past its rate");
    assert_eq!(got.headers["retry-after"], "1");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(send(&c, r("sk-team-r-0123456789")).await.status, 200);

    // reloaded on change: team-a gone, team-c in
    write_keys(
        &keys,
        "[[keys]]\nname = \"team-c\"\nkey = \"sk-team-c-0123456789\"\n",
    );
    let mut ok = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if send(&c, req("POST", chat.clone(), Some("sk-team-c-0123456789")))
            .await
            .status
            == 200
        {
            ok = true;
            break;
        }
    }
    assert!(ok, "the new key works within 5 s");
    assert_eq!(
        send(&c, req("POST", chat.clone(), Some("sk-team-a-0123456789")))
            .await
            .status,
        401
    );
    // a broken file keeps the keys in force
    write_keys(&keys, "[[keys]]\nname = \"x\"\n");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        send(&c, req("POST", chat.clone(), Some("sk-team-c-0123456789")))
            .await
            .status,
        200
    );

    let metrics = common::scrape(&gw).await;
    gw.shutdown();
    gw.wait().await;
    assert!(
        common::metric(
            &metrics,
            "thinkgate_client_refused_total",
            &[("client", "team-b"), ("reason", "limited")]
        ) == Some(1.0),
        "{metrics}"
    );
    assert!(
        common::metric(
            &metrics,
            "thinkgate_requests_total",
            &[("client", "team-a"), ("status", "200")]
        ) >= Some(1.0),
        "{metrics}"
    );
    assert!(!metrics.contains("sk-team"), "no key in the metrics");
    let recs = records(&rec);
    let text = std::fs::read_to_string(&rec).unwrap();
    assert!(!text.contains("sk-team"), "no key in the records");
    let clients: Vec<_> = recs
        .iter()
        .map(|r| r["client"].as_str().unwrap_or("-").to_string())
        .collect();
    assert!(
        clients.contains(&"team-a".to_string()) && clients.contains(&"team-c".to_string()),
        "{clients:?}"
    );
    let statuses: Vec<u64> = recs.iter().map(|r| r["status"].as_u64().unwrap()).collect();
    assert!(
        statuses.contains(&401) && statuses.contains(&429),
        "refusals are recorded: {statuses:?}"
    );
}

#[tokio::test]
async fn a_gateway_without_readable_keys_does_not_start() {
    let dir = common::tempdir("nokeys");
    for text in [
        None,
        Some(""),
        Some("[[keys]]\nname = \"a\"\nkey = \"short\"\n"),
    ] {
        let path = dir.join("keys.toml");
        let _ = std::fs::remove_file(&path);
        if let Some(t) = text {
            std::fs::write(&path, t).unwrap();
        }
        let mut cfg = thinkgate::config::Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            admin: "127.0.0.1:0".parse().unwrap(),
            upstreams: vec!["http://127.0.0.1:9".into()],
            ..Default::default()
        };
        cfg.auth.keys_file = Some(path);
        let e = thinkgate::server::Gateway::start(cfg)
            .await
            .err()
            .expect("refused");
        assert!(e.to_string().contains("keys"), "{e}");
    }
}
