//! The conformance suite: every promise of the gateway held against real
//! engines (vLLM and llama.cpp server), through the gateway and directly, in
//! every mode the engine has.
//!
//! The tests are `#[ignore]`d in a plain `cargo test` (they need the engines
//! of `scripts/engines/install.sh`, several GB); CI installs the engines and
//! runs them with `cargo test --test conformance -- --ignored`, where a
//! missing engine fails the run.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod chaos;
#[path = "../common/mod.rs"]
mod common;
mod engines;
mod exact;
mod hedge;
mod reasoning;
mod routes;
mod soak;
mod tls;
mod traces;
mod wire;

use bytes::Bytes;
use common::{client, gateway, records, tempdir, HttpClient};
use engines::{chain, engine_core, shared, Engine, Kind, Stopped};
use http::Request;
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use thinkgate::config::{BackendConfig, Config};
use thinkgate::server::Gateway;
use thinkgate_asu::{BodyKind, Observer, ObserverConfig, Summary};

const NEEDS: &str = "needs real engines: scripts/engines/install.sh, then \
                     cargo test --test conformance -- --ignored --test-threads=1";

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A gateway in front of `engines`, each with its flavour, records on.
async fn gateway_for(
    engines: &[&Engine],
    tweak: impl FnOnce(&mut Config),
) -> (Gateway, std::path::PathBuf) {
    let dir = tempdir("conf");
    let rec = dir.join("records.jsonl");
    let r = rec.clone();
    let backends: Vec<BackendConfig> = engines
        .iter()
        .map(|e| BackendConfig {
            url: e.url.clone(),
            weight: 1,
            pool: "default".into(),
            models: vec![],
            flavor: e.kind.flavor(),
        })
        .collect();
    let gw = gateway(vec![], move |c| {
        c.backends = backends;
        c.records = Some(r);
        c.records_include_text = true;
        tweak(c);
    })
    .await;
    (gw, rec)
}

async fn stop(gw: Gateway, rec: &std::path::Path) -> Vec<Value> {
    gw.shutdown();
    gw.wait().await;
    records(rec)
}

/// One response as a client saw it: head, body, and the client's own ASU
/// measurement (same observer code, client-side clock).
struct Seen {
    status: u16,
    headers: http::HeaderMap,
    body: Bytes,
    asu: Summary,
}

async fn call<C>(
    c: &hyper_util::client::legacy::Client<C, Full<Bytes>>,
    base: &str,
    path: &str,
    body: &Value,
    hdrs: &[(&str, &str)],
) -> Seen
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    let mut req = Request::post(format!("{base}{path}")).header("content-type", "application/json");
    for (k, v) in hdrs {
        req = req.header(*k, *v);
    }
    let req = req
        .body(Full::new(Bytes::from(serde_json::to_vec(body).unwrap())))
        .unwrap();
    let t0 = Instant::now();
    let resp = c
        .request(req)
        .await
        .unwrap_or_else(|e| panic!("{base}{path}: {e:?}"));
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let kind = BodyKind::from_content_type(
        headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
    );
    let mut obs = Observer::new(Arc::new(ObserverConfig::default()), kind);
    let mut body = resp.into_body();
    let mut all = Vec::new();
    while let Some(f) = body.frame().await {
        let Ok(d) = f.unwrap().into_data() else {
            continue;
        };
        obs.feed(&d, t0.elapsed().as_nanos() as u64);
        all.extend_from_slice(&d);
    }
    let asu = obs.finish(t0.elapsed().as_nanos() as u64);
    Seen {
        status,
        headers,
        body: all.into(),
        asu,
    }
}

fn chat(stream: bool, usage: bool) -> Value {
    let mut v = json!({
        "model": "tiny",
        "messages": [{"role": "user", "content": "What is two plus two?"}],
        "max_tokens": 200,
        "stream": stream,
    });
    if usage {
        v["stream_options"] = json!({"include_usage": true});
    }
    v
}

fn completion(stream: bool, usage: bool) -> Value {
    let mut v = json!({
        "model": "tiny",
        "prompt": "<|im_start|>user\nWhat is two plus two?<|im_end|>\n<|im_start|>assistant\n",
        "max_tokens": 200,
        "stream": stream,
    });
    if usage {
        v["stream_options"] = json!({"include_usage": true});
    }
    v
}

/// Every mode of `kind`: (name, path, body, streamed).
fn modes(kind: Kind) -> Vec<(&'static str, &'static str, Value, bool)> {
    let chat_path = "/v1/chat/completions";
    let comp_path = "/v1/completions";
    let mut m = vec![
        ("chat stream", chat_path, chat(true, false), true),
        ("chat stream usage", chat_path, chat(true, true), true),
        ("chat json", chat_path, chat(false, false), false),
        (
            "completions stream",
            comp_path,
            completion(true, false),
            true,
        ),
        (
            "completions stream usage",
            comp_path,
            completion(true, true),
            true,
        ),
        (
            "completions json",
            comp_path,
            completion(false, false),
            false,
        ),
    ];
    if kind.is_vllm() {
        let mut n2 = chat(true, false);
        n2["n"] = 2.into();
        m.push(("chat stream n=2", chat_path, n2, true));
        let mut n2u = chat(true, true);
        n2u["n"] = 2.into();
        m.push(("chat stream usage n=2", chat_path, n2u, true));
    }
    m
}

/// The headers that must match: all but `date`, the gateway's own
/// `x-thinkgate-*` (README), the hop-by-hop `keep-alive` and `connection`
/// (they describe each connection, RFC 9110 7.6.1), and `content-length`,
/// which follows the body (ids and timings differ in length; it is checked
/// against the body apart).
fn comparable_headers(h: &http::HeaderMap) -> Vec<(String, String)> {
    let skip = ["date", "keep-alive", "connection", "content-length"];
    let mut v: Vec<(String, String)> = h
        .iter()
        .filter(|(k, _)| !skip.contains(&k.as_str()) && !k.as_str().starts_with("x-thinkgate-"))
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("?").to_string()))
        .collect();
    v.sort();
    v
}

#[test]
#[ignore = "needs real engines: scripts/engines/install.sh"]
fn the_client_sees_what_the_engine_sent_in_every_mode() {
    let _ = NEEDS;
    rt().block_on(async {
        let c = client();
        let mut failures = Vec::new();
        for kind in Kind::ALL {
            let e = shared(kind);
            let (gw, rec) = gateway_for(&[e], |_| {}).await;
            let via = format!("http://{}", gw.proxy_addr);
            let mut client_ids = Vec::new();
            for (name, path, body, streamed) in modes(kind) {
                let direct = call(&c, &e.url, path, &body, &[]).await;
                let through = call(&c, &via, path, &body, &[]).await;
                client_ids.extend(wire::ids(&through.body, streamed).into_iter().take(1));
                let what = format!("{kind:?} {name}");
                assert_eq!(direct.status, 200, "{what}: direct status");
                if direct.status != through.status {
                    failures.push(format!(
                        "{what}: status {} vs {}",
                        direct.status, through.status
                    ));
                }
                let (a, b) = if streamed {
                    (
                        wire::canonical_stream(&direct.body),
                        wire::canonical_stream(&through.body),
                    )
                } else {
                    (
                        wire::canonical_json(&direct.body),
                        wire::canonical_json(&through.body),
                    )
                };
                if a != b {
                    failures.push(format!(
                        "{what}: body differs\n  direct:  {a}\n  gateway: {b}"
                    ));
                }
                for s in [&direct, &through] {
                    if let Some(cl) = s.headers.get(http::header::CONTENT_LENGTH) {
                        assert_eq!(
                            cl.to_str().unwrap(),
                            s.body.len().to_string(),
                            "{what}: content-length"
                        );
                    }
                }
                let (ha, hb) = (
                    comparable_headers(&direct.headers),
                    comparable_headers(&through.headers),
                );
                if ha != hb {
                    failures.push(format!(
                        "{what}: headers differ\n  direct:  {ha:?}\n  gateway: {hb:?}"
                    ));
                }
                let shape = |b: &Bytes| {
                    let mut s: Vec<String> = wire::ids(b, streamed)
                        .iter()
                        .map(|i| wire::id_shape(i))
                        .collect();
                    s.dedup();
                    s
                };
                if shape(&direct.body) != shape(&through.body) {
                    failures.push(format!(
                        "{what}: id shape {:?} vs {:?}",
                        shape(&direct.body),
                        shape(&through.body)
                    ));
                }
            }
            let recs = stop(gw, &rec).await;
            assert_eq!(
                recs.len(),
                modes(kind).len(),
                "{kind:?}: one record per request"
            );
        }
        assert!(
            failures.is_empty(),
            "{} differences:\n{}",
            failures.len(),
            failures.join("\n")
        );
    });
}

/// The engine's own token counts for one streamed chat request: (thinking,
/// completion). vLLM with a parser reports reasoning tokens; elsewhere the
/// model's fixed chain says how many thinking words it wrote.
fn engine_counts(kind: Kind, usage: &Value) -> (u64, u64) {
    let completion = usage["completion_tokens"]
        .as_u64()
        .expect("completion_tokens");
    let thinking = match usage["completion_tokens_details"]["reasoning_tokens"].as_u64() {
        Some(r) => r,
        None => chain().think_words.len() as u64,
    };
    if kind == Kind::VllmParser {
        assert!(usage["completion_tokens_details"]["reasoning_tokens"].is_u64());
    }
    (thinking, completion)
}

fn usage_of(body: &[u8]) -> Value {
    wire::data_events(body)
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .find_map(|v| v.get("usage").filter(|u| !u.is_null()).cloned())
        .expect("a usage event")
}

#[test]
#[ignore = "needs real engines: scripts/engines/install.sh"]
fn ttfvt_and_token_counts_agree_with_the_client_and_the_engine() {
    rt().block_on(async {
        let c = client();
        for kind in Kind::ALL {
            let e = shared(kind);
            let (gw, rec) = gateway_for(&[e], |_| {}).await;
            let via = format!("http://{}", gw.proxy_addr);
            let direct = call(&c, &e.url, "/v1/chat/completions", &chat(true, true), &[]).await;
            let (think, completion) = engine_counts(kind, &usage_of(&direct.body));
            // a connection to the gateway first: clients reuse theirs, and
            // connection setup happens before the gateway can time anything
            let _ = call(&c, &via, "/v1/models", &json!({}), &[]).await;
            let mut client_ttfvt = Vec::new();
            let mut merged = Vec::new();
            for usage in [false, true, false, true, false, true, false, true] {
                let s = call(&c, &via, "/v1/chat/completions", &chat(true, usage), &[]).await;
                assert_eq!(s.status, 200);
                client_ttfvt.push(s.asu.t_first_visible_ns.expect("visible"));
                merged.push(merged_thinking(&s.body) as u64);
            }
            let recs: Vec<Value> = stop(gw, &rec)
                .await
                .into_iter()
                .filter(|r| r["path"] == "/v1/chat/completions")
                .collect();
            assert_eq!(recs.len(), 8);
            let mut diffs = Vec::new();
            for ((r, client_ns), merged) in recs.iter().zip(&client_ttfvt).zip(&merged) {
                let asu = r;
                let gw_ns = asu["t_first_visible_ns"].as_u64().expect("gateway ttfvt");
                let diff_ms = (*client_ns as f64 - gw_ns as f64).abs() / 1e6;
                eprintln!(
                    "{kind:?}: TTFVT gateway {:.2} ms, client {:.2} ms",
                    gw_ns as f64 / 1e6,
                    *client_ns as f64 / 1e6
                );
                diffs.push(diff_ms);
                // Exact where the engine reports reasoning tokens (vLLM with
                // a parser); elsewhere the events that carried thinking
                // text, which undercounts by the tokens an engine merged
                // into one event (llama.cpp never does; vLLM now and then),
                // unless it merged so many that the gateway saw it and split
                // the usage by characters instead (within a tenth).
                let got = asu["thinking_tokens"].as_u64().unwrap();
                let want = match (kind, asu["token_source"].as_str()) {
                    (Kind::VllmParser, _) => think,
                    (_, Some("usage_split_by_chunks")) => think - merged,
                    (_, Some("usage_split_by_chars")) => {
                        assert!(got.abs_diff(think) <= think / 10, "{kind:?}: record {r}");
                        got
                    }
                    _ => panic!("{kind:?}: token source, record {r}"),
                };
                assert_eq!(got, want, "{kind:?}: thinking tokens, record {r}");
                assert_eq!(
                    asu["completion_tokens"], completion,
                    "{kind:?}: completion tokens, record {r}"
                );
                assert_eq!(
                    asu["visible_tokens"],
                    completion - want,
                    "{kind:?}: visible tokens"
                );
            }
            // The engine, the gateway and this client share 2 cores (with
            // three more engines idling): a request can wait for a core.
            // Medians were 0.6 to 3 ms in most CI runs, but runs on busier
            // machines had medians of 4.3 and 22.9 ms, with single requests
            // 17 to 117 ms late at the client (the gateway's stamp always
            // the earlier). Scheduling noise spares some requests; a gateway
            // that holds the first visible token on a timer delays every
            // one. So the least gap catches a hold of 5 ms or more, and the
            // worst a long hold (for usage, say) on any request.
            diffs.sort_by(f64::total_cmp);
            let least = diffs[0];
            let worst = diffs[diffs.len() - 1];
            assert!(
                least <= 5.0,
                "{kind:?}: least TTFVT gap {least:.2} ms (all: {diffs:?})"
            );
            assert!(
                worst <= 250.0,
                "{kind:?}: worst TTFVT gap {worst:.2} ms (all: {diffs:?})"
            );
        }
    });
}

/// A JSON value's shape: every key path, with the type of its value (the
/// numbers and texts differ between two answers; the fields must not).
fn shape(v: &Value) -> Vec<String> {
    fn walk(v: &Value, path: String, out: &mut Vec<String>) {
        match v {
            Value::Object(o) => {
                for (k, x) in o {
                    walk(x, format!("{path}.{k}"), out);
                }
            }
            Value::Array(a) => {
                for x in a.iter().take(1) {
                    walk(x, format!("{path}[]"), out);
                }
            }
            Value::Null => out.push(format!("{path}: null")),
            Value::Bool(_) => out.push(format!("{path}: bool")),
            Value::Number(_) => out.push(format!("{path}: number")),
            Value::String(_) => out.push(format!("{path}: string")),
        }
    }
    let mut out = Vec::new();
    walk(v, String::new(), &mut out);
    out
}

/// Thinking tokens the engine merged into events with other thinking
/// tokens, before thinking closed: each event's words beyond its first.
fn merged_thinking(body: &[u8]) -> usize {
    let deltas: Vec<Value> = wire::data_events(body)
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .map(|v| v["choices"][0]["delta"].clone())
        .collect();
    let field = |d: &Value| {
        d["reasoning"]
            .as_str()
            .or(d["reasoning_content"].as_str())
            .map(str::to_string)
    };
    let parser = deltas.iter().any(|d| field(d).is_some());
    let mut extra = 0;
    for d in &deltas {
        if parser {
            if let Some(t) = field(d) {
                extra += words(&t).len().saturating_sub(1);
            }
        } else if let Some(t) = d["content"].as_str() {
            let before = t.split("</think>").next().unwrap_or("");
            extra += words(before).len().saturating_sub(1);
            if t.contains("</think>") {
                break;
            }
        }
    }
    extra
}

/// Thinking words in a reasoning text (the model's words are one token each).
fn words(s: &str) -> Vec<String> {
    s.replace("<think>", " ")
        .replace("</think>", " ")
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

#[test]
#[ignore = "needs real engines: scripts/engines/install.sh"]
fn a_thinking_budget_is_exact_in_tokens_and_the_forced_answer_looks_like_the_engines() {
    let ch = chain();
    let think: Vec<String> = ch
        .think_words
        .iter()
        .map(|w| w.trim().to_string())
        .collect();
    let answer: Vec<String> = ch
        .answer_words
        .iter()
        .map(|w| w.trim().to_string())
        .collect();
    rt().block_on(async {
        let c = client();
        for kind in Kind::ALL {
            let e = shared(kind);
            let (gw, rec) = gateway_for(&[e], |_| {}).await;
            let via = format!("http://{}", gw.proxy_addr);
            let mut n = 0;
            for budget in [1u64, 10, 25] {
                for (usage, streamed) in [(false, true), (true, true), (false, false)] {
                    let b = budget.to_string();
                    let s = call(
                        &c,
                        &via,
                        "/v1/chat/completions",
                        &chat(streamed, usage),
                        &[("x-thinkgate-thinking-budget", b.as_str())],
                    )
                    .await;
                    n += 1;
                    let what = format!("{kind:?} budget {budget} usage {usage} stream {streamed}");
                    assert_eq!(s.status, 200, "{what}");
                    let (reasoning, content) = if streamed {
                        wire::texts(&wire::canonical_stream(&s.body))
                    } else {
                        let v = wire::canonical_json(&s.body);
                        let m = &v["choices"][0]["message"];
                        let r = m["reasoning"].as_str().or(m["reasoning_content"].as_str()).unwrap_or("");
                        (r.to_string(), m["content"].as_str().unwrap_or("").to_string())
                    };
                    // Inline thinking arrives in content, up to the close marker.
                    let (reasoning, content) = if kind.parser() {
                        (reasoning, content)
                    } else {
                        let (r, c) = content.split_once("</think>").expect("thinking closed");
                        (r.to_string(), c.to_string())
                    };
                    // vLLM reports the tokens of every event when asked: the
                    // budget is exact there (merged events included, see
                    // `managed::budget`). llama.cpp does not, and the gateway counts
                    // events: an engine that merges tokens into one event
                    // lets those extra tokens through (the documented bound).
                    // In a stream they can be counted; a non-streamed body
                    // hides them, so there the bound is checked loosely.
                    let seen = words(&reasoning);
                    let merged = if streamed { merged_thinking(&s.body) } else { 0 };
                    let b = budget as usize;
                    if kind.is_vllm() {
                        assert_eq!(seen.len(), b, "{what}: thinking tokens, exactly: {seen:?}");
                    }
                    assert!(
                        seen.len() >= b && seen.len() <= b + merged + usize::from(!streamed) * 3,
                        "{what}: {} thinking tokens seen, {merged} merged into other events: {seen:?}",
                        seen.len()
                    );
                    assert_eq!(seen, think[..seen.len()], "{what}: thinking seen");
                    assert_eq!(words(&content), answer, "{what}: answer seen");
                    if !streamed {
                        // the assembled body has the engine's own shape
                        let direct = call(&c, &e.url, "/v1/chat/completions", &chat(false, false), &[]).await;
                        let (a, b) = (shape(&wire::canonical_json(&direct.body)), shape(&wire::canonical_json(&s.body)));
                        assert_eq!(b, a, "{what}: body shape");
                    }
                    if streamed {
                        let canon = wire::canonical_stream(&s.body);
                        let direct = call(&c, &e.url, "/v1/chat/completions", &chat(true, usage), &[]).await;
                        let dc = wire::canonical_stream(&direct.body);
                        assert_eq!(canon["choices"], dc["choices"], "{what}: event skeleton");
                        assert_eq!(canon["other"].as_array().map(Vec::len), dc["other"].as_array().map(Vec::len), "{what}: events without choices");
                    }
                }
            }
            let recs = stop(gw, &rec).await;
            assert_eq!(recs.len(), n);
            for r in &recs {
                let budget = r["thinking_budget"].as_u64().expect("budget recorded");
                let a = &r["actions"][0];
                if a["way"] == "native" {
                    // llama.cpp ended the thinking in the stream: the client
                    // saw the budget, the record counts what the engine
                    // thought on while the control call travelled
                    assert_eq!(a["thinking_tokens"], budget, "{kind:?}: record {r}");
                    assert!(r["thinking_tokens"].as_u64().unwrap() >= budget, "{kind:?}: record {r}");
                } else {
                    assert_eq!(r["thinking_tokens"], budget, "{kind:?}: record {r}");
                }
                // vLLM has no control endpoint; llama.cpp's answers only
                // while the request runs, and the tiny model may be done
                // before the call arrives: then the continuation answers
                if a.is_object() && kind.is_vllm() {
                    assert_eq!(a["way"], "continuation", "{kind:?}: record {r}");
                }
            }
        }
    });
}

/// Open a streamed chat request that runs for `max_tokens` unless aborted:
/// the model's chain repeats past its end token with `ignore_eos`.
async fn open_long(
    c: &HttpClient,
    base: &str,
    max_tokens: u32,
) -> http::Response<hyper::body::Incoming> {
    let mut body = chat(true, false);
    body["max_tokens"] = max_tokens.into();
    body["ignore_eos"] = true.into();
    let req = Request::post(format!("{base}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec(&body).unwrap())))
        .unwrap();
    c.request(req).await.unwrap()
}

/// A Prometheus sample from an engine's `/metrics` (summed over labels).
async fn engine_metric(c: &HttpClient, e: &Engine, name: &str) -> Option<f64> {
    let req = Request::get(format!("{}/metrics", e.url))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let body = common::send(c, req).await.body;
    common::metric(&String::from_utf8_lossy(&body), name, &[])
}

/// Whether the engine is still working on any request.
async fn engine_busy(c: &HttpClient, e: &Engine) -> bool {
    if e.kind.is_vllm() {
        engine_metric(c, e, "vllm:num_requests_running")
            .await
            .unwrap_or(0.0)
            > 0.0
    } else {
        let req = Request::get(format!("{}/slots", e.url))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let v: Value = serde_json::from_slice(&common::send(c, req).await.body).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .any(|s| s["is_processing"] == true)
    }
}

#[test]
#[ignore = "needs real engines: scripts/engines/install.sh"]
fn a_client_that_leaves_makes_the_engine_drop_the_request() {
    rt().block_on(async {
        let c = client();
        for kind in Kind::ALL {
            let e = shared(kind);
            let (gw, rec) = gateway_for(&[e], |_| {}).await;
            let via = format!("http://{}", gw.proxy_addr);
            let max_tokens = if kind.is_vllm() { 3000 } else { 4000 };
            let tokens_before = if kind.is_vllm() {
                engine_metric(&c, e, "vllm:generation_tokens_total").await
            } else {
                engine_metric(&c, e, "llamacpp:tokens_predicted_total").await
            };
            let mut b = open_long(&c, &via, max_tokens).await.into_body();
            // the first events, then leave
            let mut got = 0;
            while got < 3 {
                if b.frame().await.is_some() {
                    got += 1;
                }
            }
            // the engine's gauges lag its work a little
            let mut shown = false;
            for _ in 0..100 {
                if engine_busy(&c, e).await {
                    shown = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert!(shown, "{kind:?}: the engine shows the running request");
            drop(b);
            let left = Instant::now();
            let mut busy = true;
            while left.elapsed() < Duration::from_secs(1) {
                if !engine_busy(&c, e).await {
                    busy = false;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let took = left.elapsed();
            assert!(!busy, "{kind:?}: the engine still runs the request 1 s after the client left");
            let tokens_after = if kind.is_vllm() {
                engine_metric(&c, e, "vllm:generation_tokens_total").await
            } else {
                engine_metric(&c, e, "llamacpp:tokens_predicted_total").await
            };
            let generated = tokens_after.unwrap_or(0.0) - tokens_before.unwrap_or(0.0);
            eprintln!("{kind:?}: engine idle {took:?} after the client left, {generated} tokens generated of {max_tokens}");
            assert!(generated < f64::from(max_tokens) * 0.9, "{kind:?}: the engine generated {generated} tokens");
            // vLLM counts no abort (`request_success_total` has no abort
            // reason): the gateway is where a client abort shows.
            let metrics = common::scrape(&gw).await;
            let gone = common::metric(&metrics, "thinkgate_client_disconnects_total", &[]).unwrap_or(0.0);
            assert!(gone >= 1.0, "{kind:?}: client disconnects {gone}");
            let recs = stop(gw, &rec).await;
            assert_eq!(recs.len(), 1);
            assert_eq!(recs[0]["outcome"], "client_gone", "{kind:?}");
        }
    });
}

#[test]
#[ignore = "needs real engines: scripts/engines/install.sh"]
fn engine_state_is_scraped_from_the_real_engines() {
    rt().block_on(async {
        let c = client();
        for kind in [Kind::VllmParser, Kind::LlamaParser] {
            let e = shared(kind);
            let (gw, rec) = gateway_for(&[e], |cfg| cfg.scrape_interval_ms = 50).await;
            let via = format!("http://{}", gw.proxy_addr);
            let mut seen = None;
            // A stream may end before a scrape of the gateway and a read of
            // the engine land inside it (a busy host, a fast engine): up to
            // three streams, each watched until a second after its end.
            for _ in 0..3 {
                if seen.is_some() {
                    break;
                }
                let mut b = open_long(&c, &via, 4000).await.into_body();
                let started = Instant::now();
                // read the stream while watching the gateway's view of the engine
                let mut ended: Option<Instant> = None;
                while started.elapsed() < Duration::from_secs(10) && seen.is_none() {
                    if ended.is_some_and(|t| t.elapsed() > Duration::from_secs(1)) {
                        break;
                    }
                    if ended.is_none() {
                        let f = tokio::time::timeout(Duration::from_millis(20), b.frame()).await;
                        if matches!(f, Ok(None) | Ok(Some(Err(_)))) {
                            ended = Some(Instant::now());
                        }
                    } else {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    let m = common::scrape(&gw).await;
                    let kv = common::metric(
                        &m,
                        "thinkgate_backend_kv_usage",
                        &[("backend", e.url.as_str())],
                    )
                    .unwrap_or(0.0);
                    if kv > 0.0 {
                        let own = if kind.is_vllm() {
                            engine_metric(&c, e, "vllm:kv_cache_usage_perc").await
                        } else {
                            let req = Request::get(format!("{}/slots", e.url))
                                .body(Full::new(Bytes::new()))
                                .unwrap();
                            thinkgate_asu::engine::llamacpp_slots_kv(
                                &common::send(&c, req).await.body,
                            )
                        };
                        // both read while this request runs: a figure left
                        // from an earlier request (a scrape ago) is read again
                        if own.is_some_and(|o| o > 0.0) {
                            seen = Some((kv, own));
                        }
                    }
                }
                drop(b);
            }
            let (kv, own) =
                seen.unwrap_or_else(|| panic!("{kind:?}: the gateway never saw KV-cache use"));
            eprintln!("{kind:?}: KV use at the gateway {kv:.6}, at the engine {own:?}");
            let own = own.expect("the engine's own KV figure");
            assert!(
                kv > 0.0 && kv <= 1.0 && own > 0.0,
                "{kind:?}: {kv} vs {own}"
            );
            if kind.is_vllm() {
                // vLLM's gauge moves by whole blocks: the same value, or a
                // block apart
                assert!(
                    (kv / own) > 0.25 && (kv / own) < 4.0,
                    "{kind:?}: {kv} vs {own}"
                );
            } else {
                // llama.cpp's request grows by thousands of tokens a second,
                // so the two figures are not read at one moment: both count
                // one request's tokens (4,000 at most plus the prompt) over
                // the 4 slots' 16,384-token context
                let one_request = 4100.0 / 16384.0;
                assert!(
                    kv <= one_request && own <= one_request,
                    "{kind:?}: {kv} vs {own}"
                );
            }
            stop(gw, &rec).await;
        }
    });
}

fn openai_modes(base: &str, headers: &[&str]) -> Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/engines/openai_modes.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg(base)
        .args(headers)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "the openai client failed against {base}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the script prints JSON")
}

#[test]
#[ignore = "needs real engines: scripts/engines/install.sh"]
fn the_openai_client_parses_every_mode_as_it_does_directly() {
    assert!(
        std::process::Command::new("python3")
            .args(["-c", "import openai"])
            .status()
            .is_ok_and(|s| s.success()),
        "the conformance suite needs python3 with the openai package"
    );
    let think = chain().think_words;
    rt().block_on(async {
        for kind in Kind::ALL {
            let e = shared(kind);
            let (gw, rec) = gateway_for(&[e], |_| {}).await;
            let via = format!("http://{}", gw.proxy_addr);
            let (url, v) = (e.url.clone(), via.clone());
            let direct = tokio::task::spawn_blocking(move || openai_modes(&url, &[]))
                .await
                .unwrap();
            let through = tokio::task::spawn_blocking(move || openai_modes(&v, &[]))
                .await
                .unwrap();
            for (mode, want) in direct.as_object().unwrap() {
                assert_eq!(
                    &through[mode], want,
                    "{kind:?} {mode}: what the openai client parsed"
                );
            }
            // a forced answer parses too, with the budget's thinking
            let v = via.clone();
            let forced = tokio::task::spawn_blocking(move || {
                openai_modes(&v, &["x-thinkgate-thinking-budget=5"])
            })
            .await
            .unwrap();
            let t = &forced["chat stream usage=False"]["text"];
            let thinking = if kind.parser() {
                t["0:reasoning"].as_str().unwrap_or("").to_string()
            } else {
                t["0:content"]
                    .as_str()
                    .unwrap_or("")
                    .split("</think>")
                    .next()
                    .unwrap_or("")
                    .to_string()
            };
            // (exactness is the budget test's; here: cut, and parsed)
            let n = words(&thinking).len();
            assert!(n >= 5 && n < think.len(), "{kind:?}: {thinking:?}");
            let answer = t["0:content"].as_str().unwrap_or("");
            assert!(
                answer.ends_with(" ansal"),
                "{kind:?}: the forced answer {answer:?}"
            );
            stop(gw, &rec).await;
        }
    });
}

#[test]
#[ignore = "needs real engines: scripts/engines/install.sh"]
fn an_engine_killed_with_sigkill_costs_only_its_own_streams() {
    // Two engines of its own, since this test kills them.
    let a = Engine::start(Kind::LlamaParser, &[]);
    let b = Engine::start(Kind::LlamaParser, &[]);
    rt().block_on(async {
        let c = client();
        let (gw, rec) = gateway_for(&[&a, &b], |cfg| {
            cfg.routing = serde_json::from_value(json!({"type": "round_robin"})).unwrap();
        })
        .await;
        let via = format!("http://{}", gw.proxy_addr);
        // 1. Mid-stream: the stream on the killed engine ends cleanly with an
        //    error event; the client learns why.
        let mut killed = None;
        for _ in 0..2 {
            let resp = open_long(&c, &via, 4000).await;
            let backend = resp.headers()["x-thinkgate-backend"]
                .to_str()
                .unwrap()
                .to_string();
            let mut body = resp.into_body();
            let first = body.frame().await.unwrap().unwrap();
            let mut got = first.into_data().unwrap().to_vec();
            if killed.is_none() && backend == a.url {
                a.kill9();
                killed = Some(backend.clone());
            }
            while let Some(f) = body.frame().await {
                match f {
                    Ok(f) => got.extend_from_slice(&f.into_data().unwrap_or_default()),
                    Err(e) => panic!("the stream was cut instead of ended: {e}"),
                }
            }
            let text = String::from_utf8_lossy(&got);
            if killed.as_deref() == Some(backend.as_str()) {
                assert!(
                    text.contains("upstream_reset"),
                    "the error event: {}",
                    &text[text.len().saturating_sub(400)..]
                );
            }
        }
        assert!(
            killed.is_some(),
            "round robin sent one of two requests to each engine"
        );
        // 2. After the kill, every request is answered (a refused connect is
        //    retried on the other engine) and whole.
        for _ in 0..6 {
            let s = call(&c, &via, "/v1/chat/completions", &chat(true, false), &[]).await;
            assert_eq!(s.status, 200);
            let canon = wire::canonical_stream(&s.body);
            assert!(wire::texts(&canon).1.ends_with(" ansal"), "{canon}");
        }
        let recs = stop(gw, &rec).await;
        let outcomes: Vec<&str> = recs
            .iter()
            .map(|r| r["outcome"].as_str().unwrap())
            .collect();
        assert_eq!(
            outcomes.iter().filter(|o| **o == "upstream_reset").count(),
            1,
            "{outcomes:?}"
        );
        assert_eq!(
            outcomes.iter().filter(|o| **o == "completed").count(),
            7,
            "{outcomes:?}"
        );
    });
}

#[test]
#[ignore = "needs real engines: scripts/engines/install.sh"]
fn native_budgets_end_thinking_in_the_engine_where_they_bind() {
    // vLLM's `thinking_token_budget` binds only with a reasoning parser;
    // llama.cpp's `thinking_budget_tokens` binds in its sampler. Where they
    // bind, the engine ends thinking at the budget itself: no continuation.
    let think: Vec<String> = chain()
        .think_words
        .iter()
        .map(|w| w.trim().to_string())
        .collect();
    rt().block_on(async {
        let c = client();
        for kind in [Kind::VllmParser, Kind::LlamaParser] {
            let e = shared(kind);
            let (gw, rec) = gateway_for(&[e], |cfg| {
                cfg.straggler.native_budget = true;
            })
            .await;
            let via = format!("http://{}", gw.proxy_addr);
            for budget in [3u64, 12] {
                let b = budget.to_string();
                let s = call(
                    &c,
                    &via,
                    "/v1/chat/completions",
                    &chat(true, false),
                    &[("x-thinkgate-thinking-budget", b.as_str())],
                )
                .await;
                let (reasoning, content) = wire::texts(&wire::canonical_stream(&s.body));
                assert_eq!(
                    words(&reasoning),
                    think[..budget as usize],
                    "{kind:?} budget {budget}"
                );
                assert!(content.ends_with(" ansal"), "{kind:?}: {content:?}");
            }
            let recs = stop(gw, &rec).await;
            for r in &recs {
                assert!(
                    r.get("actions").is_none(),
                    "{kind:?}: the engine ended thinking, no forced answer: {r}"
                );
                assert_eq!(r["thinking_tokens"], r["thinking_budget"], "{kind:?}: {r}");
                if kind == Kind::VllmParser {
                    // vLLM's own count: events merged under load would
                    // make a count of events short
                    assert_eq!(r["token_source"], "usage", "{kind:?}: {r}");
                }
            }
        }
    });
}

#[test]
#[ignore = "needs real engines: scripts/engines/install.sh"]
fn a_deadline_forces_the_answer_of_a_request_that_would_think_on() {
    // The loop model never closes its thinking by itself: without the
    // deadline this request would think through all of `max_tokens`.
    let e = Engine::start(Kind::LlamaParser, &["--model", "qwen3-loop"]);
    let answer: Vec<String> = chain()
        .answer_words
        .iter()
        .map(|w| w.trim().to_string())
        .collect();
    rt().block_on(async {
        let c = client();
        // natively (llama.cpp's reasoning control), then by a continuation
        for native in [true, false] {
            let (gw, rec) = gateway_for(&[&e], |cfg| {
                cfg.straggler.deadline_ms = Some(1500);
                cfg.straggler.answer_reserve_ms = Some(1400);
                cfg.straggler.native_end = native;
            })
            .await;
            let via = format!("http://{}", gw.proxy_addr);
            let mut body = chat(true, true);
            body["max_tokens"] = 4000.into();
            let s = call(&c, &via, "/v1/chat/completions", &body, &[]).await;
            assert_eq!(s.status, 200);
            let canon = wire::canonical_stream(&s.body);
            let (reasoning, content) = wire::texts(&canon);
            let thought = words(&reasoning).len();
            assert!(thought > 0 && thought < 3990, "{thought} thinking tokens");
            assert_eq!(words(&content), answer, "the forced answer");
            let e2e = s.asu.t_done_ns as f64 / 1e9;
            assert!(
                e2e < 1.5,
                "the response ended after the deadline: {e2e:.3} s"
            );
            let usage = usage_of(&s.body);
            let recs = stop(gw, &rec).await;
            assert_eq!(recs.len(), 1);
            let r = &recs[0];
            assert_eq!(r["actions"][0]["action"], "forced_answer", "{r}");
            assert_eq!(r["actions"][0]["trigger"], "deadline", "{r}");
            let way = r["actions"][0]["way"].as_str().unwrap();
            if !native {
                assert_eq!(way, "continuation", "{r}");
            }
            assert_eq!(r["actions"][0]["thinking_tokens"], thought as u64, "{r}");
            let completion = usage["completion_tokens"].as_u64().unwrap();
            // (a control call that finds the thinking gone on past its grace
            // falls back to the continuation: either way is checked)
            if way == "native" {
                // one request: the engine's usage, with the thinking it did
                // while the control call travelled (kept from the client)
                let engine_thought = r["thinking_tokens"].as_u64().unwrap();
                assert!(engine_thought >= thought as u64, "{r}");
                // (plus the tokens the engine adds to close the thinking)
                let least = engine_thought + answer.len() as u64;
                assert!((least..=least + 4).contains(&completion), "{usage} {r}");
            } else {
                assert_eq!(
                    completion,
                    thought as u64 + answer.len() as u64 + 1,
                    "{usage}"
                );
                assert_eq!(r["thinking_tokens"], thought as u64, "{r}");
            }
        }
    });
}
