//! The gateway as a transparent proxy: bytes, headers, paths and methods
//! pass unchanged; usage injection is invisible; failures get OpenAI-style
//! errors with the right status.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;
use proptest::prelude::*;
use std::time::Duration;

fn vllm_body(model: &str, with_usage: bool) -> String {
    let ev = |d: String| format!("data: {d}\n\n");
    let chunk = |delta: &str| {
        ev(format!(
            r#"{{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"{model}","choices":[{{"index":0,"delta":{delta},"logprobs":null,"finish_reason":null}}]}}"#
        ))
    };
    let mut b = String::new();
    b.push_str(&chunk(r#"{"role":"assistant","content":""}"#));
    b.push_str(&chunk(r#"{"reasoning":"Let me think \u00e9 \"quoted\""}"#));
    b.push_str(&chunk(r#"{"reasoning":" more"}"#));
    b.push_str(": keep-alive\n\n");
    b.push_str(&chunk(r#"{"content":"The answer is 4."}"#));
    if with_usage {
        b.push_str(&ev(format!(
            r#"{{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"{model}","choices":[],"usage":{{"prompt_tokens":5,"total_tokens":8,"completion_tokens":3}}}}"#
        )));
    }
    b.push_str("data: [DONE]\n\n");
    b
}

/// The upstream sends `body` cut at `cuts`; the client must receive exactly
/// `expect`.
async fn roundtrip(body: String, cuts: Vec<usize>, request: &str, strict: bool) -> (Bytes, Seen) {
    let up =
        upstream(move |_, _| Script::sse(chunked(body.as_bytes(), &cuts, Duration::ZERO))).await;
    let gw = gateway(vec![up.url()], |c| c.passthrough_strict = strict).await;
    let got = send(
        &client(),
        post(
            format!("http://{}/v1/chat/completions", gw.proxy_addr),
            request,
        ),
    )
    .await;
    assert_eq!(got.status, 200);
    (got.body, up.last())
}

#[tokio::test]
async fn streamed_body_passes_byte_for_byte_when_client_asked_for_usage() {
    let body = vllm_body("m-pass", true);
    let req =
        r#"{"model":"m-pass","stream":true,"stream_options":{"include_usage":true},"messages":[]}"#;
    let (got, seen) = roundtrip(body.clone(), vec![7, 100, 101, 333, 334, 600], req, false).await;
    assert_eq!(got, body.as_bytes());
    assert_eq!(
        seen.body,
        req.as_bytes(),
        "request body must reach the upstream unchanged"
    );
}

#[tokio::test]
async fn injected_usage_is_invisible_to_the_client() {
    let with = vllm_body("m-inject", true);
    let without = vllm_body("m-inject", false);
    let req = r#"{"model":"m-inject","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let (got, seen) = roundtrip(with.clone(), vec![50, 500, with.len() - 20], req, false).await;
    assert_eq!(String::from_utf8_lossy(&got), without);
    let sent: serde_json::Value = serde_json::from_slice(&seen.body).unwrap();
    assert_eq!(sent["stream_options"]["include_usage"], true);
    assert_eq!(sent["messages"][0]["content"], "hi");
}

#[tokio::test]
async fn strict_mode_touches_nothing() {
    let with = vllm_body("m-strict", true);
    let req = r#"{"model":"m-strict","stream":true,"messages":[]}"#;
    let (got, seen) = roundtrip(with.clone(), vec![], req, true).await;
    assert_eq!(got, with.as_bytes());
    assert_eq!(seen.body, req.as_bytes());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn random_chunking_never_changes_the_bytes(seed_cuts in proptest::collection::vec(any::<u16>(), 0..30), inject in any::<bool>()) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let up_body = vllm_body("m-prop", true);
            let mut cuts: Vec<usize> = seed_cuts.iter().map(|c| 1 + *c as usize % (up_body.len() - 1)).collect();
            cuts.sort_unstable();
            cuts.dedup();
            let (req, want) = if inject {
                (r#"{"model":"m-prop","stream":true}"#, vllm_body("m-prop", false))
            } else {
                (r#"{"model":"m-prop","stream":true,"stream_options":{"include_usage":true}}"#, up_body.clone())
            };
            let (got, _) = roundtrip(up_body, cuts, req, false).await;
            assert_eq!(String::from_utf8_lossy(&got), want);
        });
    }
}

/// An R1-style stream: thinking in inline tags, cut anywhere.
fn tagged_body() -> String {
    let ev = |c: &str| {
        format!(
            "data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":{}}},\"finish_reason\":null}}]}}\r\n\r\n",
            serde_json::to_string(c).unwrap()
        )
    };
    let mut b = String::new();
    for piece in [
        "<th",
        "ink>",
        "Let me ",
        "think.",
        "</thi",
        "nk>",
        "\n\nIt is ",
        "4.",
    ] {
        b.push_str(&ev(piece));
    }
    b.push_str("data: [DONE]\r\n\r\n");
    b
}

/// The record's counts (everything but times) for `body` sent in `cuts`.
async fn counts(body: String, cuts: Vec<usize>) -> serde_json::Value {
    let up =
        upstream(move |_, _| Script::sse(chunked(body.as_bytes(), &cuts, Duration::ZERO))).await;
    let dir = tempdir("counts");
    let path = dir.join("r.jsonl");
    let p = path.clone();
    let gw = gateway(vec![up.url()], move |c| c.records = Some(p)).await;
    let got = send(
        &client(),
        post(
            format!("http://{}/v1/chat/completions", gw.proxy_addr),
            r#"{"model":"m","stream":true}"#,
        ),
    )
    .await;
    assert_eq!(got.status, 200);
    gw.shutdown();
    gw.wait().await;
    let recs = records(&path);
    assert_eq!(recs.len(), 1, "exactly one record");
    let r = &recs[0];
    let keys = [
        "status",
        "outcome",
        "thinking_tokens",
        "visible_tokens",
        "completion_tokens",
        "prompt_tokens",
        "token_source",
        "reasoning_chunks",
        "visible_chunks",
        "finish_reason",
        "choices",
        "done_marker",
        "error_event",
        "parse_errors",
        "oversized",
        "cut_mid_event",
        "first_visible_event",
    ];
    keys.iter()
        .map(|k| (k.to_string(), r[*k].clone()))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]
    #[test]
    fn random_chunking_never_changes_the_counts(seed_cuts in proptest::collection::vec(any::<u16>(), 1..40), tagged in any::<bool>()) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let body = if tagged { tagged_body() } else { vllm_body("m", true) };
            let mut cuts: Vec<usize> = seed_cuts.iter().map(|c| 1 + *c as usize % (body.len() - 1)).collect();
            cuts.sort_unstable();
            cuts.dedup();
            let whole = counts(body.clone(), Vec::new()).await;
            let cut = counts(body, cuts).await;
            assert_eq!(cut, whole);
            assert!(whole["thinking_tokens"].as_u64().unwrap() > 0 && whole["visible_tokens"].as_u64().unwrap() > 0, "{whole}");
        });
    }
}

#[tokio::test]
async fn plain_json_and_other_paths_pass_unchanged() {
    let json = r#"{"id":"chatcmpl-9","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"4","reasoning":"2+2"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":9,"total_tokens":12}}"#;
    let up = upstream(move |parts, _| match parts.uri.path() {
        "/v1/chat/completions" => Script::json(json),
        "/v1/models" => Script::json(r#"{"object":"list","data":[{"id":"m"}]}"#),
        _ => {
            let mut s = Script::json(r#"{"ok":true}"#);
            s.status = 201;
            s.headers.push(("x-engine".into(), "yes".into()));
            s.headers
                .push(("connection".into(), "x-engine-private".into()));
            s.headers.push(("x-engine-private".into(), "hop".into()));
            s
        }
    })
    .await;
    // (a path the route policy does not open by default, opened here: what
    // is open passes unchanged, whatever it carries)
    let gw = gateway(vec![up.url()], |c| {
        c.routes.allow_extra =
            vec![thinkgate::access::routes::Rule::parse("PUT /tokenize/*").unwrap()];
    })
    .await;
    let c = client();
    let got = send(
        &c,
        post(
            format!("http://{}/v1/chat/completions", gw.proxy_addr),
            r#"{"model":"m-json","messages":[]}"#,
        ),
    )
    .await;
    assert_eq!(got.body, json.as_bytes());
    assert_eq!(got.headers["content-length"], json.len().to_string());
    assert!(got.headers.contains_key("x-thinkgate-request-id"));
    assert_eq!(got.headers["x-thinkgate-backend"], up.url().as_str());

    let get = Request::get(format!("http://{}/v1/models?x=1&y=%20", gw.proxy_addr))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let got = send(&c, get).await;
    assert_eq!(got.body, &br#"{"object":"list","data":[{"id":"m"}]}"#[..]);
    assert_eq!(up.last().uri, "/v1/models?x=1&y=%20");
    assert_eq!(up.last().method, "GET");

    let req = Request::builder()
        .method("PUT")
        .uri(format!("http://{}/tokenize/deep/path", gw.proxy_addr))
        .header("x-custom", "kept")
        .header("connection", "x-drop-me")
        .header("x-drop-me", "1")
        .header("x-request-id", "client-id-7")
        .body(Full::new(Bytes::from_static(b"\x00\xffbinary")))
        .unwrap();
    let got = send(&c, req).await;
    assert_eq!(got.status, 201);
    assert_eq!(got.headers["x-engine"], "yes");
    assert!(
        !got.headers.contains_key("x-engine-private"),
        "hop-by-hop named by Connection is dropped"
    );
    assert_eq!(got.headers["x-thinkgate-request-id"], "client-id-7");
    let seen = up.last();
    assert_eq!(seen.method, "PUT");
    assert_eq!(seen.body, &b"\x00\xffbinary"[..]);
    assert_eq!(seen.headers["x-custom"], "kept");
    assert_eq!(seen.headers["x-request-id"], "client-id-7");
    assert!(!seen.headers.contains_key("x-drop-me"));
}

/// vLLM builds response ids from `x-request-id`: the gateway sends its own
/// id only when told to (and never in strict mode).
#[tokio::test]
async fn the_gateway_adds_no_request_id_upstream_unless_configured() {
    let up = upstream(|_, _| Script::json("{}")).await;
    for (strict, send_id, expect) in [
        (true, true, false),
        (false, false, false),
        (false, true, true),
    ] {
        let gw = gateway(vec![up.url()], |c| {
            c.passthrough_strict = strict;
            c.upstream_request_id = send_id;
        })
        .await;
        let got = send(
            &client(),
            post(
                format!("http://{}/v1/completions", gw.proxy_addr),
                r#"{"model":"m"}"#,
            ),
        )
        .await;
        assert_eq!(
            got.headers
                .keys()
                .any(|k| k.as_str().starts_with("x-thinkgate")),
            !strict
        );
        let seen = up.last().headers.get("x-request-id").cloned();
        assert_eq!(
            seen.is_some(),
            expect,
            "strict {strict}, upstream_request_id {send_id}"
        );
        if let Some(id) = seen {
            assert_eq!(id.len(), 36, "a generated UUID: {id:?}");
            assert_eq!(got.headers["x-thinkgate-request-id"], id);
        }
    }
}

#[tokio::test]
async fn h2c_clients_are_served() {
    let up = upstream(|_, _| Script::json(r#"{"h2":"ok"}"#)).await;
    let gw = gateway(vec![up.url()], |_| {}).await;
    let c: HttpClient =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http();
    let got = send(
        &c,
        post(
            format!("http://{}/v1/chat/completions", gw.proxy_addr),
            r#"{"model":"m-h2"}"#,
        ),
    )
    .await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body, &br#"{"h2":"ok"}"#[..]);
}

fn error_type(body: &[u8]) -> (String, u64) {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap();
    (
        v["error"]["type"].as_str().unwrap().to_string(),
        v["error"]["code"].as_u64().unwrap(),
    )
}

#[tokio::test]
async fn unreachable_upstream_is_502_with_openai_error() {
    // A port that was just free: nothing listens there.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", l.local_addr().unwrap());
    drop(l);
    let gw = gateway(vec![dead], |_| {}).await;
    let got = send(
        &client(),
        post(
            format!("http://{}/v1/chat/completions", gw.proxy_addr),
            r#"{"model":"m-502","stream":true}"#,
        ),
    )
    .await;
    assert_eq!(got.status, 502);
    assert_eq!(got.headers["content-type"], "application/json");
    assert_eq!(error_type(&got.body), ("upstream_unreachable".into(), 502));
    let m = scrape(&gw).await;
    assert_eq!(
        metric(
            &m,
            "thinkgate_upstream_errors_total",
            &[("model", "m-502"), ("kind", "connect")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &m,
            "thinkgate_requests_total",
            &[("model", "m-502"), ("status", "502")]
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn upstream_silent_past_header_timeout_is_504() {
    let up = upstream(|_, _| {
        let mut s = Script::json("{}");
        s.head_delay = Duration::from_secs(30);
        s
    })
    .await;
    let gw = gateway(vec![up.url()], |c| c.upstream_header_timeout_secs = 1).await;
    let t = std::time::Instant::now();
    let got = send(
        &client(),
        post(
            format!("http://{}/v1/chat/completions", gw.proxy_addr),
            r#"{"model":"m-504"}"#,
        ),
    )
    .await;
    assert_eq!(got.status, 504);
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(error_type(&got.body), ("upstream_timeout".into(), 504));
}

#[tokio::test]
async fn body_over_limit_is_413() {
    let up = upstream(|_, _| Script::json("{}")).await;
    let gw = gateway(vec![up.url()], |c| c.max_request_body_bytes = 1000).await;
    let big = format!(
        r#"{{"model":"m","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "x".repeat(5000)
    );
    let got = send(
        &client(),
        post(
            format!("http://{}/v1/chat/completions", gw.proxy_addr),
            &big,
        ),
    )
    .await;
    assert_eq!(got.status, 413);
    assert!(
        up.seen.lock().unwrap().is_empty(),
        "nothing reaches the upstream"
    );
}

#[tokio::test]
async fn client_disconnect_drops_the_upstream_request_at_once() {
    let chunk = Bytes::from_static(
        b"data: {\"choices\":[{\"index\":0,\"delta\":{\"reasoning\":\"hm\"}}]}\n\n",
    );
    let up = upstream(move |_, _| {
        let mut s = Script::sse(vec![(Duration::ZERO, chunk.clone()); 3]);
        s.end = End::Hang;
        s
    })
    .await;
    let gw = gateway(vec![up.url()], |_| {}).await;
    let c = client();
    let resp = c
        .request(post(
            format!("http://{}/v1/chat/completions", gw.proxy_addr),
            r#"{"model":"m-gone","stream":true}"#,
        ))
        .await
        .unwrap();
    let mut body = resp.into_body();
    use http_body_util::BodyExt;
    let _first = body.frame().await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let dropped_at = std::time::Instant::now();
    drop(body);
    drop(c);
    let seen = up.last();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let gone = loop {
        if let Some(t) = *seen.client_gone.lock().unwrap() {
            break t;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "upstream never saw the disconnect"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert!(
        gone.duration_since(dropped_at) < Duration::from_millis(500),
        "upstream saw it after {:?}",
        gone.duration_since(dropped_at)
    );
    let m = metric_reaches(
        &gw,
        "thinkgate_client_disconnects_total",
        &[("model", "m-gone")],
        1.0,
    )
    .await;
    assert_eq!(
        metric(&m, "thinkgate_inflight_requests", &[("model", "m-gone")]),
        Some(0.0)
    );
    assert_eq!(
        metric(
            &m,
            "thinkgate_inflight_thinking_requests",
            &[("model", "m-gone")]
        ),
        Some(0.0)
    );
}

#[tokio::test]
async fn upstream_reset_mid_stream_ends_sse_with_an_error_event_and_is_counted() {
    let chunk = Bytes::from_static(
        b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"}}]}\n\ndata: {\"choi",
    );
    let up = upstream(move |parts, _| {
        let mut s = Script::sse(vec![(Duration::ZERO, chunk.clone())]);
        if parts.uri.path() == "/v1/completions" {
            // not an event stream: the only honest signal is the cut
            s.headers = vec![("content-type".into(), "application/json".into())];
        }
        s.end = End::Reset;
        s
    })
    .await;
    let gw = gateway(vec![up.url()], |_| {}).await;
    let c = client();
    let got = send(
        &c,
        post(
            format!("http://{}/v1/chat/completions", gw.proxy_addr),
            r#"{"model":"m-reset","stream":true}"#,
        ),
    )
    .await;
    let text = String::from_utf8_lossy(&got.body);
    // the bytes the upstream sent, the open event closed, then the error
    let (sent, tail) = text.split_at(text.find("data: {\"choi\n\n").unwrap() + 14);
    assert!(sent.starts_with("data: {\"choices\""), "{text}");
    let e: serde_json::Value = serde_json::from_str(
        tail.trim_start_matches("\n")
            .trim_start_matches("data: ")
            .trim_end(),
    )
    .unwrap();
    assert_eq!(e["error"]["type"], "upstream_reset", "{text}");
    assert!(tail.ends_with("}\n\n"));

    use http_body_util::BodyExt;
    let resp = c
        .request(post(
            format!("http://{}/v1/completions", gw.proxy_addr),
            r#"{"model":"m-reset","stream":true}"#,
        ))
        .await
        .unwrap();
    let mut body = resp.into_body();
    let mut saw_error = false;
    while let Some(f) = body.frame().await {
        if f.is_err() {
            saw_error = true;
            break;
        }
    }
    assert!(saw_error, "a non-SSE body is cut, as without the gateway");
    // strict passthrough adds no byte: the SSE reset stays a cut
    let strict = gateway(vec![up.url()], |c| c.passthrough_strict = true).await;
    let resp = c
        .request(post(
            format!("http://{}/v1/chat/completions", strict.proxy_addr),
            r#"{"model":"m-reset","stream":true}"#,
        ))
        .await
        .unwrap();
    assert!(resp.into_body().collect().await.is_err(), "strict: a cut");
    metric_reaches(
        &gw,
        "thinkgate_upstream_errors_total",
        &[("model", "m-reset"), ("kind", "reset")],
        3.0,
    )
    .await;
}

/// `--upstream` as the `openai` client's `base_url` is written, ending in
/// `/v1`: the engine gets the client's path once, not `/v1/v1/...`.
#[tokio::test]
async fn an_upstream_written_with_v1_gets_the_path_once() {
    let up = upstream(|_, _| Script::json(r#"{"object":"list","data":[]}"#)).await;
    let gw = gateway(vec![format!("{}/v1", up.url())], |_| {}).await;
    let got = send(
        &client(),
        post(
            format!("http://{}/v1/chat/completions", gw.proxy_addr),
            r#"{"model":"m","messages":[]}"#,
        ),
    )
    .await;
    assert_eq!(got.status, 200);
    assert_eq!(up.last().uri, "/v1/chat/completions");
    assert_eq!(got.headers["x-thinkgate-backend"], up.url().as_str());
}
