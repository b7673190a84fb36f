//! A real vLLM tracing to the same OTLP receiver as the gateway
//! (`--otlp-traces-endpoint`, over gRPC; the gateway over HTTP/protobuf):
//! one trace from the client's `traceparent` through the gateway's server
//! span and its leg into vLLM's own `llm_request` span, with the GenAI
//! attributes agreeing with the gateway's record and with vLLM's span.

use super::*;
use common::otlp::Receiver;

const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const CLIENT_SPAN: &str = "b7ad6b7169203331";

#[test]
#[ignore = "needs real engines: scripts/engines/install.sh"]
fn vllm_joins_the_gateways_trace_under_the_gateways_leg_span() {
    let rx = Receiver::start();
    let to_rx = format!("http://127.0.0.1:{}", rx.grpc);
    let e = Engine::start(Kind::VllmParser, &["--otlp-traces-endpoint", &to_rx]);
    rt().block_on(async {
        let (gw, rec) = gateway_for(&[&e], |cfg| {
            cfg.tracing.endpoint = Some(format!("http://127.0.0.1:{}", rx.http));
            cfg.tracing.protocol = Some("http/protobuf".into());
            cfg.tracing.export_interval_ms = Some(50);
        })
        .await;
        let via = format!("http://{}", gw.proxy_addr);
        let c = client();
        let tp = format!("00-{TRACE}-{CLIENT_SPAN}-01");
        let s = call(
            &c,
            &via,
            "/v1/chat/completions",
            &chat(true, true),
            &[("traceparent", &tp)],
        )
        .await;
        assert_eq!(s.status, 200, "{}", String::from_utf8_lossy(&s.body));
        let recs = stop(gw, &rec).await;
        let r = recs
            .iter()
            .find(|r| r["path"] == "/v1/chat/completions")
            .expect("a record");
        // vLLM exports every 5 s
        let spans = rx.trace(TRACE, 3).await;
        let ours = |kind: u64| {
            spans
                .iter()
                .find(|s| s["service"] == "thinkgate" && s["kind"] == kind)
                .unwrap_or_else(|| panic!("a span of kind {kind}: {spans:#?}"))
        };
        let (server, leg) = (ours(2), ours(3));
        let engine = spans
            .iter()
            .find(|s| s["name"] == "llm_request")
            .unwrap_or_else(|| panic!("vLLM's span in the trace: {spans:#?}"));
        assert_eq!(server["parent_span_id"], CLIENT_SPAN);
        assert_eq!(leg["parent_span_id"], server["span_id"]);
        assert_eq!(
            engine["parent_span_id"], leg["span_id"],
            "vLLM's span is the child of the gateway's leg"
        );
        assert_eq!(engine["trace_id"], TRACE);
        let a = &server["attributes"];
        let num = |v: &Value| v.as_u64().unwrap_or_else(|| panic!("{v} in {server:#}"));
        assert_eq!(a["gen_ai.operation.name"], "chat");
        assert_eq!(a["gen_ai.request.model"], "tiny");
        assert_eq!(a["gen_ai.response.model"], "tiny");
        assert_eq!(a["gen_ai.request.stream"], true);
        assert_eq!(a["gen_ai.response.id"], r["response_id"]);
        assert_eq!(
            num(&a["gen_ai.usage.input_tokens"]),
            num(&r["prompt_tokens"])
        );
        assert_eq!(
            num(&a["gen_ai.usage.output_tokens"]),
            num(&r["completion_tokens"])
        );
        assert_eq!(
            num(&a["gen_ai.usage.reasoning.output_tokens"]),
            num(&r["thinking_tokens"])
        );
        assert!(num(&r["thinking_tokens"]) > 0, "{r}");
        assert_eq!(
            a["gen_ai.response.finish_reasons"],
            json!([r["finish_reason"]])
        );
        // the engine agrees on the tokens it generated and was prompted with
        let ea = &engine["attributes"];
        assert_eq!(
            num(&ea["gen_ai.usage.completion_tokens"]),
            num(&a["gen_ai.usage.output_tokens"])
        );
        assert_eq!(
            num(&ea["gen_ai.usage.prompt_tokens"]),
            num(&a["gen_ai.usage.input_tokens"])
        );
        let secs = |ns: &Value| num(ns) as f64 / 1e9;
        let ttfvt = a["thinkgate.ttfvt"].as_f64().unwrap();
        assert!((ttfvt - secs(&r["t_first_visible_ns"])).abs() < 1e-6);
        assert!(
            (a["gen_ai.response.time_to_first_chunk"].as_f64().unwrap()
                - secs(&r["t_first_token_ns"]))
            .abs()
                < 1e-6
        );
        assert!(a["thinkgate.thinking_time"].as_f64().unwrap() > 0.0);
        for k in [
            "thinkgate.backend",
            "thinkgate.arm",
            "thinkgate.policy",
            "thinkgate.outcome",
        ] {
            assert!(a[k].is_string(), "{k} in {server:#}");
        }
        // the engine's span sits inside the leg's, which sits inside ours
        let (s0, s1) = (num(&server["start_ns"]), num(&server["end_ns"]));
        let (l0, e0, e1) = (
            num(&leg["start_ns"]),
            num(&engine["start_ns"]),
            num(&engine["end_ns"]),
        );
        assert!(s0 <= l0 && l0 <= e0, "{s0} {l0} {e0}");
        assert!(
            e1 <= s1 + 5_000_000,
            "vLLM ends before the gateway (clock skew 5 ms)"
        );
    });
}
