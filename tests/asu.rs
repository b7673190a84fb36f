//! What the gateway measures: timestamps against a scripted upstream that
//! sends thinking and answer chunks at known times, counts in `/metrics`,
//! one record per request.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use bytes::Bytes;
use common::*;
use std::time::Duration;

fn ev(model: &str, delta: &str) -> Bytes {
    Bytes::from(format!(
        "data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"{model}\",\"choices\":[{{\"index\":0,\"delta\":{delta},\"finish_reason\":null}}]}}\n\n"
    ))
}

fn script(model: &str) -> Vec<(Duration, Bytes)> {
    let ms = Duration::from_millis;
    vec![
        (ms(0), ev(model, r#"{"role":"assistant","content":""}"#)),
        (ms(60), ev(model, r#"{"reasoning":"a"}"#)),
        (ms(60), ev(model, r#"{"reasoning":" b"}"#)),
        (ms(60), ev(model, r#"{"reasoning":" c"}"#)),
        (ms(100), ev(model, r#"{"content":"The answer"}"#)),
        (ms(40), ev(model, r#"{"content":" is 4."}"#)),
        (
            ms(20),
            Bytes::from(format!(
                "data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"{model}\",\"choices\":[],\"usage\":{{\"prompt_tokens\":7,\"completion_tokens\":5,\"total_tokens\":12}}}}\n\n"
            )),
        ),
        (ms(0), Bytes::from_static(b"data: [DONE]\n\n")),
    ]
}

fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("thinkgate-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join("records.jsonl")
}

#[tokio::test]
async fn timestamps_match_the_upstream_schedule() {
    let up = upstream(|_, _| Script::sse(script("m-time"))).await;
    let rec = tmp("time");
    let gw = gateway(vec![up.url()], |c| c.records = Some(rec.clone())).await;
    let got = send(
        &client(),
        post(
            format!("http://{}/v1/chat/completions", gw.proxy_addr),
            r#"{"model":"m-time","stream":true}"#,
        ),
    )
    .await;
    assert_eq!(got.status, 200);
    let seen = up.last();
    gw.shutdown();
    gw.wait().await;
    let r = records(&rec);
    assert_eq!(r.len(), 1);
    let r = &r[0];
    let sent = seen.sent_at.lock().unwrap().clone();
    let at = |i: usize| sent[i].duration_since(seen.received).as_nanos() as i64;
    let ns = |k: &str| {
        r[k].as_i64()
            .unwrap_or_else(|| panic!("{k} missing in {r}"))
    };
    // The gateway stamps a chunk when it passes, a little after the upstream
    // sent it and measured from t_recv, a little before the upstream had the
    // request: the difference is loopback transit, well under 5 ms. (The
    // upstream notes its send time after the send returns, by which time the
    // gateway may already have the bytes: a few microseconds the other way.)
    for (field, i) in [
        ("t_first_token_ns", 1),
        ("t_think_start_ns", 1),
        ("t_think_end_ns", 3),
        ("t_first_visible_ns", 4),
        ("t_done_ns", 7),
    ] {
        let d = ns(field) - at(i);
        assert!(
            (0..5_000_000).contains(&d),
            "{field}: gateway {} vs upstream {} (diff {d} ns)",
            ns(field),
            at(i)
        );
    }
    assert!(ns("t_upstream_ns") <= ns("t_first_token_ns"));
    assert_eq!(r["outcome"], "completed");
    assert_eq!(r["status"], 200);
    assert_eq!(r["model"], "m-time");
    assert_eq!(r["usage_injected"], true);
    assert_eq!(r["completion_tokens"], 5);
    assert_eq!(r["thinking_tokens"], 3);
    assert_eq!(r["visible_tokens"], 2);
    assert_eq!(r["token_source"], "usage_split_by_chunks");
    assert_eq!(r["reasoning_chunks"], 3);
    assert_eq!(r["visible_chunks"], 2);
    assert!(r.get("text").is_none(), "no output text unless asked");
}

#[tokio::test]
async fn metrics_count_requests_tokens_and_latencies() {
    let up = upstream(|_, _| Script::sse(script("m-metrics"))).await;
    let gw = gateway(vec![up.url()], |_| {}).await;
    let c = client();
    for _ in 0..3 {
        let got = send(
            &c,
            post(
                format!("http://{}/v1/chat/completions", gw.proxy_addr),
                r#"{"model":"m-metrics","stream":true}"#,
            ),
        )
        .await;
        assert_eq!(got.status, 200);
    }
    let m = scrape(&gw).await;
    let l = [("model", "m-metrics")];
    assert_eq!(
        metric(
            &m,
            "thinkgate_requests_total",
            &[
                ("model", "m-metrics"),
                ("status", "200"),
                ("outcome", "completed")
            ]
        ),
        Some(3.0)
    );
    assert_eq!(metric(&m, "thinkgate_ttfvt_seconds_count", &l), Some(3.0));
    assert_eq!(metric(&m, "thinkgate_ttft_seconds_count", &l), Some(3.0));
    assert_eq!(metric(&m, "thinkgate_e2e_seconds_count", &l), Some(3.0));
    assert_eq!(
        metric(
            &m,
            "thinkgate_output_tokens_total",
            &[("model", "m-metrics"), ("kind", "thinking")]
        ),
        Some(9.0)
    );
    assert_eq!(
        metric(
            &m,
            "thinkgate_output_tokens_total",
            &[("model", "m-metrics"), ("kind", "visible")]
        ),
        Some(6.0)
    );
    assert_eq!(metric(&m, "thinkgate_usage_injected_total", &l), Some(3.0));
    assert_eq!(metric(&m, "thinkgate_inflight_requests", &l), Some(0.0));
    // TTFVT is ~280 ms: in the 0.5 s bucket, not in the 0.25 s one.
    assert_eq!(
        metric(
            &m,
            "thinkgate_ttfvt_seconds_bucket",
            &[("model", "m-metrics"), ("le", "0.25")]
        ),
        Some(0.0)
    );
    assert_eq!(
        metric(
            &m,
            "thinkgate_ttfvt_seconds_bucket",
            &[("model", "m-metrics"), ("le", "0.5")]
        ),
        Some(3.0)
    );
    // TTFT is ~60 ms.
    assert_eq!(
        metric(
            &m,
            "thinkgate_ttft_seconds_bucket",
            &[("model", "m-metrics"), ("le", "0.1")]
        ),
        Some(3.0)
    );
    assert!(m.contains("# HELP thinkgate_ttfvt_seconds"));
    assert!(
        m.contains("thinkgate_e2e_seconds_bucket{backend=\"") && m.contains("le=\"1800\""),
        "buckets reach 30 minutes"
    );
    assert!(m.contains("le=\"131072\""), "token buckets reach 128k");

    let admin = format!("http://{}", gw.admin_addr);
    let get = |p: &str| {
        http::Request::get(format!("{admin}{p}"))
            .body(http_body_util::Full::new(Bytes::new()))
            .unwrap()
    };
    let stats: serde_json::Value =
        serde_json::from_slice(&send(&c, get("/stats")).await.body).unwrap();
    assert!(stats["requests"].as_u64().unwrap() >= 3);
    assert!(
        stats["ttfvt_seconds"]["p50"].as_f64().unwrap()
            > stats["ttft_seconds"]["p50"].as_f64().unwrap()
    );
    assert_eq!(send(&c, get("/healthz")).await.status, 200);
    assert_eq!(send(&c, get("/readyz")).await.status, 200);
}

#[tokio::test]
async fn inline_r1_thinking_and_n2_choices() {
    let ms = Duration::from_millis;
    let d = |i: u32, delta: &str| {
        Bytes::from(format!(
            "data: {{\"choices\":[{{\"index\":{i},\"delta\":{delta}}}]}}\n\n"
        ))
    };
    let chunks = vec![
        (ms(0), d(0, r#"{"content":"Two plus"}"#)),
        (ms(0), d(1, r#"{"content":"B"}"#)),
        (ms(50), d(0, r#"{"content":" two.</th"}"#)),
        (ms(50), d(0, r#"{"content":"ink>\n\nFour"}"#)),
        (ms(0), Bytes::from_static(b"data: [DONE]\n\n")),
    ];
    let up = upstream(move |_, _| Script::sse(chunks.clone())).await;
    let rec = tmp("inline");
    let gw = gateway(vec![up.url()], |c| {
        c.records = Some(rec.clone());
        c.records_include_text = true;
    })
    .await;
    send(
        &client(),
        post(
            format!("http://{}/v1/chat/completions", gw.proxy_addr),
            r#"{"model":"m-inline","stream":true,"n":2}"#,
        ),
    )
    .await;
    gw.shutdown();
    gw.wait().await;
    let r = &records(&rec)[0];
    assert_eq!(r["choices"], 2);
    assert_eq!(r["text"][0]["reasoning"], "Two plus two.");
    assert_eq!(r["text"][0]["content"], "\n\nFour");
    assert_eq!(r["text"][1]["content"], "B");
    // Choice 1 answered at once without thinking: the request's first
    // visible token is that chunk.
    assert_eq!(r["first_visible_event"], 1);
    assert!(r["t_think_end_ns"].as_u64().unwrap() >= 90_000_000);
}

#[tokio::test]
async fn every_request_gets_exactly_one_record() {
    let up = upstream(|parts, _| match parts.uri.path() {
        "/v1/chat/completions" => Script::sse(script("m-rec")),
        _ => Script::json("{}"),
    })
    .await;
    let rec = tmp("one");
    let gw = gateway(vec![up.url()], |c| {
        c.records = Some(rec.clone());
        c.max_request_body_bytes = 200;
    })
    .await;
    let c = client();
    let base = format!("http://{}", gw.proxy_addr);
    send(
        &c,
        post(
            format!("{base}/v1/chat/completions"),
            r#"{"model":"m-rec","stream":true}"#,
        ),
    )
    .await;
    send(
        &c,
        post(
            format!("{base}/v1/chat/completions"),
            &format!(r#"{{"model":"m-rec","pad":"{}"}}"#, "x".repeat(300)),
        ),
    )
    .await;
    send(
        &c,
        http::Request::get(format!("{base}/health"))
            .body(http_body_util::Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    gw.shutdown();
    gw.wait().await;
    let r = records(&rec);
    assert_eq!(r.len(), 3, "{r:?}");
    let outcomes: Vec<(&str, u64)> = r
        .iter()
        .map(|x| {
            (
                x["outcome"].as_str().unwrap(),
                x["status"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(outcomes.contains(&("completed", 200)));
    assert!(outcomes.contains(&("gateway_error", 413)));
    assert_eq!(r.iter().filter(|x| x["path"] == "/health").count(), 1);
}
