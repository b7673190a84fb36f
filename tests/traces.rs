//! OpenTelemetry traces, received by an OTLP receiver that decodes with the
//! official protobuf definitions (`tests/python/otlp_receiver.py`, PyPI
//! `opentelemetry-proto` and `grpcio`; `just external` runs these tests).
//! The engines are scripted: what they were sent (`traceparent`) is checked
//! as well as what the gateway exported. The real vLLM joining the trace is
//! in `tests/conformance/traces.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use bytes::Bytes;
use common::otlp::Receiver;
use common::{client, gateway, post, send, upstream, Script};
use serde_json::{json, Value};
use std::time::Duration;

const MODEL: &str = "tiny-r1";
const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

/// A vLLM-like stream: two thinking events (`reasoning_content`), two
/// answer events, the finish and the usage, 20 ms apart.
fn reasoning_stream() -> Script {
    let ev = |v: Value| Bytes::from(format!("data: {v}\n\n"));
    let chunk = |delta: Value, finish: Value| {
        json!({"id": "chatcmpl-7", "object": "chat.completion.chunk", "model": "tiny-r1-served",
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    let gap = Duration::from_millis(20);
    Script::sse(vec![
        (
            Duration::ZERO,
            ev(chunk(
                json!({"role": "assistant", "content": ""}),
                Value::Null,
            )),
        ),
        (
            gap,
            ev(chunk(json!({"reasoning_content": "Two"}), Value::Null)),
        ),
        (
            gap,
            ev(chunk(
                json!({"reasoning_content": " plus two."}),
                Value::Null,
            )),
        ),
        (gap, ev(chunk(json!({"content": "Four"}), Value::Null))),
        (gap, ev(chunk(json!({"content": "."}), Value::Null))),
        (Duration::ZERO, ev(chunk(json!({}), json!("stop")))),
        (
            Duration::ZERO,
            ev(
                json!({"id": "chatcmpl-7", "object": "chat.completion.chunk", "model": "tiny-r1-served", "choices": [],
                      "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13,
                                "completion_tokens_details": {"reasoning_tokens": 2}}}),
            ),
        ),
        (Duration::ZERO, Bytes::from_static(b"data: [DONE]\n\n")),
    ])
}

fn chat_body() -> String {
    json!({"model": MODEL, "messages": [{"role": "user", "content": "2+2?"}], "stream": true,
           "stream_options": {"include_usage": true}})
    .to_string()
}

fn traced(
    endpoint: String,
    protocol: &'static str,
    ratio: f64,
) -> impl FnOnce(&mut thinkgate::config::Config) {
    move |c| {
        c.tracing.endpoint = Some(endpoint);
        c.tracing.protocol = Some(protocol.into());
        c.tracing.sample_ratio = Some(ratio);
        c.tracing.export_interval_ms = Some(50);
    }
}

async fn chat(gw: &thinkgate::server::Gateway, traceparent: Option<&str>) -> common::Got {
    let mut req = post(
        format!("http://{}/v1/chat/completions", gw.proxy_addr),
        &chat_body(),
    );
    if let Some(tp) = traceparent {
        req.headers_mut().insert("traceparent", tp.parse().unwrap());
        req.headers_mut()
            .insert("tracestate", "vendor=opaque".parse().unwrap());
    }
    send(&client(), req).await
}

fn attr<'a>(span: &'a Value, key: &str) -> &'a Value {
    &span["attributes"][key]
}

/// The upstream's `traceparent`: (trace id, parent span id, flags).
fn sent_traceparent(h: &http::HeaderMap) -> (String, String, String) {
    let v = h.get("traceparent").expect("a traceparent upstream");
    let p: Vec<String> = v.to_str().unwrap().split('-').map(str::to_string).collect();
    assert_eq!(p.len(), 4, "{v:?}");
    assert_eq!(p[0], "00");
    (p[1].clone(), p[2].clone(), p[3].clone())
}

#[tokio::test]
#[ignore = "needs python3 with opentelemetry-proto and grpcio: just external (CI runs it)"]
async fn otlp_receiver_gets_the_request_and_its_leg_over_both_protocols() {
    let rx = Receiver::start();
    for (protocol, endpoint) in [
        ("http/protobuf", format!("http://127.0.0.1:{}", rx.http)),
        ("grpc", format!("http://127.0.0.1:{}", rx.grpc)),
    ] {
        let up = upstream(|_, _| reasoning_stream()).await;
        let gw = gateway(vec![up.url()], traced(endpoint, protocol, 1.0)).await;
        // the client's trace goes on; a fresh one per protocol
        let trace = format!(
            "{}{}",
            &CLIENT_TRACE[..30],
            if protocol == "grpc" { "01" } else { "02" }
        );
        let tp = format!("00-{trace}-{CLIENT_SPAN}-01");
        let got = chat(&gw, Some(&tp)).await;
        assert_eq!(got.status, 200);
        assert!(String::from_utf8_lossy(&got.body).contains("Four"));
        let seen = up.last();
        let (up_trace, up_parent, up_flags) = sent_traceparent(&seen.headers);
        assert_eq!(
            up_trace, trace,
            "{protocol}: the engine joins the client's trace"
        );
        assert_ne!(
            up_parent, CLIENT_SPAN,
            "{protocol}: under the gateway's leg span"
        );
        assert_eq!(up_flags, "01");
        assert_eq!(
            seen.headers.get("tracestate").unwrap(),
            "vendor=opaque",
            "tracestate goes on as sent"
        );
        let spans = rx.trace(&trace, 2).await;
        assert_eq!(spans.len(), 2, "{protocol}: {spans:#?}");
        let server = spans
            .iter()
            .find(|s| s["kind"] == 2)
            .expect("a server span");
        let leg = spans
            .iter()
            .find(|s| s["kind"] == 3)
            .expect("a client span");
        assert!(spans
            .iter()
            .all(|s| s["via"] == protocol.split('/').next().unwrap()));
        assert_eq!(server["service"], "thinkgate");
        assert_eq!(server["scope"], "thinkgate");
        assert_eq!(server["name"], format!("chat {MODEL}"));
        assert_eq!(server["parent_span_id"], CLIENT_SPAN);
        assert_eq!(leg["parent_span_id"], server["span_id"]);
        for s in [server, leg] {
            assert_eq!(s["trace_state"], "vendor=opaque", "the client's tracestate");
        }
        assert_eq!(attr(leg, "server.address"), "127.0.0.1");
        assert_eq!(
            attr(leg, "server.port").as_u64(),
            Some(u64::from(up.addr.port()))
        );
        assert_eq!(
            leg["span_id"], up_parent,
            "the engine was told the leg's span"
        );
        // GenAI conventions, from the engine's stream
        for (k, want) in [
            ("gen_ai.operation.name", json!("chat")),
            ("gen_ai.request.model", json!(MODEL)),
            ("gen_ai.response.model", json!("tiny-r1-served")),
            ("gen_ai.response.id", json!("chatcmpl-7")),
            ("gen_ai.usage.input_tokens", json!(9)),
            ("gen_ai.usage.output_tokens", json!(4)),
            ("gen_ai.usage.reasoning.output_tokens", json!(2)),
            ("gen_ai.response.finish_reasons", json!(["stop"])),
            ("gen_ai.request.stream", json!(true)),
            ("http.response.status_code", json!(200)),
            ("thinkgate.usage.visible_tokens", json!(2)),
            ("thinkgate.token_source", json!("usage")),
            ("thinkgate.outcome", json!("completed")),
            ("thinkgate.arm", json!("default")),
            ("thinkgate.backend", json!(up.url())),
        ] {
            assert_eq!(attr(server, k), &want, "{protocol}: {k} in {server:#}");
        }
        assert!(attr(server, "thinkgate.policy").is_string());
        assert!(attr(server, "thinkgate.request_id").is_string());
        let ttfc = attr(server, "gen_ai.response.time_to_first_chunk")
            .as_f64()
            .unwrap();
        let ttfvt = attr(server, "thinkgate.ttfvt").as_f64().unwrap();
        let think = attr(server, "thinkgate.thinking_time").as_f64().unwrap();
        assert!(ttfc > 0.015 && ttfvt > ttfc + 0.03, "{ttfc} {ttfvt}");
        assert!(think > 0.01 && think < ttfvt, "{think}");
        // the phase changes, in order, within the span
        let names: Vec<&str> = server["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "thinkgate.upstream_head",
                "thinkgate.first_token",
                "thinkgate.thinking_start",
                "thinkgate.thinking_end",
                "thinkgate.first_visible_token"
            ],
            "{protocol}"
        );
        let (start, end) = (
            server["start_ns"].as_u64().unwrap(),
            server["end_ns"].as_u64().unwrap(),
        );
        for e in server["events"].as_array().unwrap() {
            let t = e["time_ns"].as_u64().unwrap();
            assert!(t >= start && t <= end, "{e}");
        }
        let first_visible = server["events"][4]["time_ns"].as_u64().unwrap();
        assert!(
            ((first_visible - start) as f64 / 1e9 - ttfvt).abs() < 1e-6,
            "the event and the attribute agree"
        );
        assert_eq!(attr(leg, "thinkgate.leg.kind"), "first");
        assert_eq!(attr(leg, "http.response.status_code"), 200);
        assert!(leg["start_ns"].as_u64().unwrap() >= start);
        assert_eq!(server["status"]["code"], 0, "unset: no error");
        gw.shutdown();
        gw.wait().await;
    }
}

#[tokio::test]
#[ignore = "needs python3 with opentelemetry-proto and grpcio: just external (CI runs it)"]
async fn otlp_receiver_gets_retries_as_legs_and_failures_whatever_the_sampler() {
    let rx = Receiver::start();
    let busy = upstream(|_, _| {
        let mut s = Script::json(r#"{"error":{"message":"busy"}}"#);
        s.status = 503;
        s
    })
    .await;
    let ok = upstream(|_, _| reasoning_stream()).await;
    let endpoint = format!("http://127.0.0.1:{}", rx.http);
    // round robin from the busy one: its 503 is retried on the other
    let gw = gateway(vec![busy.url(), ok.url()], |c| {
        traced(endpoint.clone(), "http/protobuf", 1.0)(c);
        c.straggler.retries = 1;
        c.straggler.retry_statuses = vec![503];
    })
    .await;
    let trace = format!("{}11", &CLIENT_TRACE[..30]);
    let mut retried = None;
    for _ in 0..2 {
        let got = chat(&gw, Some(&format!("00-{trace}-{CLIENT_SPAN}-01"))).await;
        assert_eq!(got.status, 200);
        if busy.seen.lock().unwrap().len() == 1 && retried.is_none() {
            retried = Some(());
            break;
        }
    }
    assert!(
        retried.is_some(),
        "one request went to the busy engine first"
    );
    let spans = rx.trace(&trace, 3).await;
    let server = spans
        .iter()
        .find(|s| s["kind"] == 2 && attr(s, "thinkgate.actions").is_array());
    let server = server.expect("the retried request's span");
    assert_eq!(attr(server, "thinkgate.actions"), &json!(["retry"]));
    let retry_event = server["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "thinkgate.retry")
        .expect("a retry event");
    assert!(
        retry_event["attributes"]["thinkgate.reason"]
            .as_str()
            .unwrap()
            .contains("503"),
        "{retry_event}"
    );
    let legs: Vec<&Value> = spans
        .iter()
        .filter(|s| s["kind"] == 3 && s["parent_span_id"] == server["span_id"])
        .collect();
    assert_eq!(legs.len(), 2, "{spans:#?}");
    assert_eq!(attr(legs[0], "thinkgate.leg.kind"), "first");
    assert_eq!(attr(legs[0], "http.response.status_code"), 503);
    assert_eq!(legs[0]["status"]["code"], 2, "an error");
    assert_eq!(attr(legs[1], "thinkgate.leg.kind"), "retry");
    assert_eq!(attr(legs[1], "http.response.status_code"), 200);
    // each leg told its engine its own span
    let busy_tp = sent_traceparent(&busy.last().headers);
    let ok_tp = sent_traceparent(&ok.last().headers);
    assert_eq!(busy_tp.1, legs[0]["span_id"]);
    assert_eq!(ok_tp.1, legs[1]["span_id"]);
    gw.shutdown();
    gw.wait().await;

    // Sampling 0: nothing exported for a request that went well, though the
    // engine is told the trace (unsampled); a failed one is exported.
    let failing = upstream(|_, _| {
        let mut s = Script::json(r#"{"error":{"message":"down"}}"#);
        s.status = 500;
        s
    })
    .await;
    let ok = upstream(|_, _| reasoning_stream()).await;
    let before = rx.all().len();
    let gw = gateway(
        vec![ok.url()],
        traced(endpoint.clone(), "http/protobuf", 0.0),
    )
    .await;
    assert_eq!(chat(&gw, None).await.status, 200);
    let (new_trace, _, flags) = sent_traceparent(&ok.last().headers);
    assert_eq!(flags, "00", "not sampled");
    gw.shutdown();
    gw.wait().await;
    let gw = gateway(vec![failing.url()], |c| {
        traced(endpoint.clone(), "http/protobuf", 0.0)(c);
        c.straggler.retries = 0;
    })
    .await;
    assert_eq!(chat(&gw, None).await.status, 500);
    let (failed_trace, _, _) = sent_traceparent(&failing.last().headers);
    let spans = rx.trace(&failed_trace, 2).await;
    let server = spans
        .iter()
        .find(|s| s["kind"] == 2)
        .expect("the failure is exported");
    assert_eq!(server["status"]["code"], 2);
    assert_eq!(attr(server, "http.response.status_code"), 500);
    assert!(attr(server, "error.type").is_string());
    gw.shutdown();
    gw.wait().await;
    assert!(
        rx.all()
            .iter()
            .skip(before)
            .all(|s| s["trace_id"] != new_trace),
        "the unsampled request was not exported"
    );
}

#[tokio::test]
async fn without_tracing_the_clients_traceparent_reaches_the_engine_unchanged() {
    let up = upstream(|_, _| reasoning_stream()).await;
    let gw = gateway(vec![up.url()], |c| c.tracing.enabled = Some(false)).await;
    let tp = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    assert_eq!(chat(&gw, Some(&tp)).await.status, 200);
    let h = up.last().headers;
    assert_eq!(h.get("traceparent").unwrap(), tp.as_str());
    assert_eq!(h.get("tracestate").unwrap(), "vendor=opaque");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs python3 with opentelemetry-proto and grpcio: just external (CI runs it)"]
async fn otlp_receiver_gets_a_hedge_race_with_its_cancelled_loser() {
    let rx = Receiver::start();
    let slow = upstream(|_, _| {
        let mut s = reasoning_stream();
        s.head_delay = Duration::from_secs(4);
        s
    })
    .await;
    let fast = upstream(|_, _| reasoning_stream()).await;
    let endpoint = format!("http://127.0.0.1:{}", rx.grpc);
    let gw = gateway(vec![slow.url(), fast.url()], |c| {
        traced(endpoint, "grpc", 1.0)(c);
        c.straggler.hedge.after_ms = Some(200);
        c.straggler.hedge.max_ratio = 1.0;
    })
    .await;
    // round robin: one of two originals goes to the slow engine
    let mut traces = Vec::new();
    for i in 0..2 {
        let trace = format!("{}2{i}", &CLIENT_TRACE[..30]);
        let got = chat(&gw, Some(&format!("00-{trace}-{CLIENT_SPAN}-01"))).await;
        assert_eq!(got.status, 200);
        traces.push(trace);
    }
    let mut hedged = None;
    for t in &traces {
        let spans = rx.trace(t, 2).await;
        let server = spans
            .iter()
            .find(|s| s["kind"] == 2)
            .expect("a server span")
            .clone();
        if attr(&server, "thinkgate.actions") == &json!(["hedge_sent", "hedge_won"]) {
            hedged = Some((server, rx.trace(t, 3).await));
        }
    }
    let (server, spans) = hedged.expect("one request was hedged");
    let legs: Vec<&Value> = spans.iter().filter(|s| s["kind"] == 3).collect();
    assert_eq!(legs.len(), 2, "{spans:#?}");
    let first = legs
        .iter()
        .find(|l| attr(l, "thinkgate.leg.kind") == "first")
        .unwrap();
    let hedge = legs
        .iter()
        .find(|l| attr(l, "thinkgate.leg.kind") == "hedge")
        .unwrap();
    assert_eq!(attr(first, "thinkgate.backend"), &json!(slow.url()));
    assert_eq!(attr(first, "thinkgate.leg.cancelled"), true);
    assert_eq!(first["status"]["code"], 0, "a cancelled leg is no error");
    let lasted =
        (first["end_ns"].as_u64().unwrap() - first["start_ns"].as_u64().unwrap()) as f64 / 1e9;
    assert!(
        lasted < 2.0,
        "the loser ends when dropped, not with the 4 s head: {lasted}"
    );
    assert_eq!(attr(hedge, "thinkgate.backend"), &json!(fast.url()));
    assert_eq!(attr(hedge, "http.response.status_code"), 200);
    assert_eq!(hedge["parent_span_id"], server["span_id"]);
    let hedge_start = hedge["start_ns"].as_u64().unwrap() - server["start_ns"].as_u64().unwrap();
    assert!(
        hedge_start >= 200_000_000,
        "sent after the hedge delay: {hedge_start} ns"
    );
    // each engine was told its own leg's span
    let fast_seen: Vec<String> = fast
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| sent_traceparent(&s.headers).1)
        .collect();
    assert!(fast_seen.contains(&hedge["span_id"].as_str().unwrap().to_string()));
    assert_eq!(
        sent_traceparent(&slow.last().headers).1,
        first["span_id"].as_str().unwrap()
    );
    gw.shutdown();
    gw.wait().await;
}
