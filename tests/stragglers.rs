//! Straggler handling against the simulated engine (and scripted upstreams
//! for faults): forced answers, deadlines, hedging, retries and long-thinker
//! isolation, checked on the bytes the client receives.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use bytes::Bytes;
use common::{client, gateway, post, records, send, upstream, End, Script};
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use thinkgate_sim::config::{Flavor, ReasoningMode};
use thinkgate_sim::server::Sim;

async fn sim_with(
    reasoning: ReasoningMode,
    think: f64,
    time_scale: f64,
    tweak: impl FnOnce(&mut thinkgate_sim::SimConfig),
) -> (String, Arc<Sim>) {
    let mut cfg = thinkgate_sim::SimConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        time_scale,
        reasoning,
        flavor: Flavor::Vllm,
        ..Default::default()
    };
    cfg.workload.think_median = [think; 3];
    cfg.workload.think_sigma = [0.01; 3];
    tweak(&mut cfg);
    let (addr, sim, task) = thinkgate_sim::server::spawn(cfg).await.unwrap();
    // The server task lives as long as the test's runtime.
    std::mem::forget(task);
    (format!("http://{addr}"), sim)
}

async fn sim(reasoning: ReasoningMode, think: f64) -> (String, Arc<Sim>) {
    sim_with(reasoning, think, 50.0, |_| {}).await
}

fn tmp(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("tg-strag-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("records.jsonl");
    let _ = std::fs::remove_file(&p);
    p
}

const MODEL: &str = "sim-r1-distill-qwen-7b";

fn chat(stream: bool, usage: bool) -> String {
    let so = if usage {
        r#","stream_options":{"include_usage":true}"#
    } else {
        ""
    };
    format!(
        r#"{{"model":"{MODEL}","messages":[{{"role":"user","content":"difficulty: hard. Compute 17 + 25. Put the answer in \\boxed{{}}."}}],"stream":{stream}{so},"max_tokens":6000}}"#
    )
}

/// A chat completion request to the gateway.
fn chat_req(
    gw: &thinkgate::server::Gateway,
    body: &str,
) -> http::Request<http_body_util::Full<Bytes>> {
    post(
        format!("http://{}/v1/chat/completions", gw.proxy_addr),
        body,
    )
}

/// Send `body` to the gateway's chat endpoint.
async fn ask(gw: &thinkgate::server::Gateway, body: &str) -> common::Got {
    send(&client(), chat_req(gw, body)).await
}

/// The `data` payloads of an SSE body, checking its framing on the way.
fn sse(body: &[u8]) -> Vec<String> {
    let text = std::str::from_utf8(body).expect("utf-8 SSE");
    assert!(
        text.ends_with("\n\n"),
        "ends on an event boundary: {text:?}"
    );
    text.split_terminator("\n\n")
        .map(|ev| {
            ev.strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not a data event: {ev:?}"))
                .to_string()
        })
        .collect()
}

/// What a streamed chat response carried, in order.
#[derive(Debug, Default)]
struct Seen {
    /// "r" or "c" per content-bearing chunk.
    order: String,
    reasoning: String,
    content: String,
    usage: Option<Value>,
    finish: Option<String>,
    ids: std::collections::BTreeSet<String>,
    created: std::collections::BTreeSet<String>,
    dones: usize,
}

fn read_chat(body: &[u8]) -> Seen {
    let events = sse(body);
    let mut s = Seen::default();
    for (i, d) in events.iter().enumerate() {
        if d == "[DONE]" {
            assert_eq!(i, events.len() - 1, "[DONE] is last");
            s.dones += 1;
            continue;
        }
        let v: Value = serde_json::from_str(d).unwrap_or_else(|e| panic!("{e}: {d}"));
        assert!(v.get("error").is_none(), "{d}");
        s.ids.insert(v["id"].to_string());
        s.created.insert(v["created"].to_string());
        assert_eq!(v["model"], MODEL);
        if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
            s.usage = Some(u.clone());
        }
        for c in v["choices"].as_array().unwrap() {
            assert_eq!(c["index"], 0);
            let d = &c["delta"];
            let r = d
                .get("reasoning")
                .or_else(|| d.get("reasoning_content"))
                .and_then(Value::as_str)
                .unwrap_or("");
            let t = d.get("content").and_then(Value::as_str).unwrap_or("");
            if !r.is_empty() {
                s.order.push('r');
                s.reasoning.push_str(r);
            }
            if !t.is_empty() {
                s.order.push('c');
                s.content.push_str(t);
            }
            if let Some(f) = c["finish_reason"].as_str() {
                s.finish = Some(f.to_string());
            }
        }
    }
    s
}

/// Prompt tokens the engine counts for `body` (asked directly, 1 token).
async fn prompt_tokens(sim_url: &str, body: &str) -> u64 {
    let mut v: Value = serde_json::from_str(body).unwrap();
    v["stream"] = false.into();
    v["max_tokens"] = 1.into();
    v.as_object_mut().unwrap().remove("stream_options");
    let got = send(
        &client(),
        post(format!("{sim_url}/v1/chat/completions"), &v.to_string()),
    )
    .await;
    let v: Value = serde_json::from_slice(&got.body).unwrap();
    v["usage"]["prompt_tokens"].as_u64().unwrap()
}

async fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let t = Instant::now();
    while !ok() {
        assert!(t.elapsed() < Duration::from_secs(5), "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_answer_is_one_well_formed_stream_with_usage_that_adds_up() {
    let (url, sim) = sim(ReasoningMode::Field, 800.0).await;
    let rec = tmp("forced");
    let gw = gateway(vec![url.clone()], |c| {
        c.straggler.thinking_budget = Some(64);
        c.records = Some(rec.clone());
    })
    .await;
    let body = chat(true, true);
    let got = ask(&gw, &body).await;
    assert_eq!(got.status, 200);
    assert!(got.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let s = read_chat(&got.body);
    assert_eq!(s.dones, 1);
    assert_eq!(s.ids.len(), 1, "one id: {:?}", s.ids);
    assert_eq!(s.created.len(), 1, "one created: {:?}", s.created);
    let r = s.order.matches('r').count();
    assert_eq!(r, 64, "thinking cut at the budget: {}", s.order);
    assert!(
        s.order.starts_with(&"r".repeat(64)) && !s.order[64..].contains('r'),
        "reasoning, then content: {}",
        s.order
    );
    assert!(s.content.contains("\\boxed{"), "{}", s.content);
    assert_eq!(s.finish.as_deref(), Some("stop"));
    let u = s.usage.expect("usage requested, usage given");
    let answer = s.order.matches('c').count() as u64;
    assert_eq!(u["completion_tokens_details"]["reasoning_tokens"], 64);
    assert_eq!(u["completion_tokens"], 64 + answer, "{u}");
    assert_eq!(
        u["total_tokens"].as_u64().unwrap(),
        u["prompt_tokens"].as_u64().unwrap() + 64 + answer
    );
    // The client's prompt, not the continuation's (which holds the
    // thinking): exact up to how the engine re-tokenizes the thinking text
    // (the sim counts its words; real engines differ by the few tokens of
    // the close marker and cue).
    let prompt = u["prompt_tokens"].as_u64().unwrap() as i64;
    let direct = prompt_tokens(&url, &body).await as i64;
    assert!((prompt - direct).abs() <= 4, "{prompt} vs {direct}");
    // The first leg was aborted: the engine freed it at once.
    let st = &sim.engine.stats;
    wait_for("abort reaches the engine", || {
        st.aborted.load(Ordering::Relaxed) >= 1 && st.running.load(Ordering::Relaxed) == 0
    })
    .await;
    gw.shutdown();
    gw.wait().await;
    let recs = records(&rec);
    assert_eq!(recs.len(), 1);
    let r = &recs[0];
    assert_eq!(r["thinking_budget"], 64);
    assert_eq!(r["actions"][0]["action"], "forced_answer");
    assert_eq!(r["actions"][0]["trigger"], "budget");
    assert_eq!(r["actions"][0]["thinking_tokens"], 64);
    assert_eq!(r["outcome"], "completed");
    assert_eq!(r["thinking_tokens"], 64);
    assert_eq!(r["token_source"], "usage");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_answer_without_usage_requested_hides_usage_and_counts_it() {
    let (url, _sim) = sim(ReasoningMode::FieldLegacy, 800.0).await;
    let rec = tmp("hidden");
    let gw = gateway(vec![url], |c| {
        c.records = Some(rec.clone());
    })
    .await;
    // A per-request budget (lowering an unlimited operator setting).
    let mut req = chat_req(&gw, &chat(true, false));
    req.headers_mut()
        .insert("x-thinkgate-thinking-budget", "40".parse().unwrap());
    let got = send(&client(), req).await;
    let s = read_chat(&got.body);
    assert_eq!(s.order.matches('r').count(), 40);
    assert!(s.usage.is_none(), "usage was not asked for");
    assert!(s.content.contains("\\boxed{"));
    gw.shutdown();
    gw.wait().await;
    let r = &records(&rec)[0];
    assert_eq!(r["thinking_tokens"], 40);
    assert_eq!(r["token_source"], "usage");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_streamed_request_gets_one_json_body() {
    let (url, _sim) = sim(ReasoningMode::Field, 800.0).await;
    let gw = gateway(vec![url], |c| c.straggler.thinking_budget = Some(50)).await;
    let got = ask(&gw, &chat(false, false)).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.headers["content-type"], "application/json");
    let v: Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], MODEL);
    let m = &v["choices"][0]["message"];
    assert_eq!(m["role"], "assistant");
    assert!(!m["reasoning"].as_str().unwrap().is_empty(), "{v}");
    assert!(m["content"].as_str().unwrap().contains("\\boxed{"), "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    let u = &v["usage"];
    assert_eq!(u["completion_tokens_details"]["reasoning_tokens"], 50);
    assert_eq!(
        u["total_tokens"].as_u64().unwrap(),
        u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_tags_are_closed_for_the_client_and_completions_continue_too() {
    let (url, _sim) = sim(ReasoningMode::Tags, 800.0).await;
    let gw = gateway(vec![url], |c| c.straggler.thinking_budget = Some(30)).await;
    let got = ask(&gw, &chat(true, false)).await;
    let s = read_chat(&got.body);
    assert!(s.reasoning.is_empty());
    // The open tag's chunk, 30 thinking chunks (the tag is not a thinking
    // token: real engines do not count it), then the close.
    let mut before_close = 0;
    for d in sse(&got.body) {
        if d.contains("</think>") {
            break;
        }
        if d.contains(r#""content":"#) && !d.contains(r#""content":"""#) {
            before_close += 1;
        }
    }
    assert_eq!(before_close, 31);
    let c = &s.content;
    assert!(c.starts_with("<think>"), "{c}");
    assert_eq!(c.matches("</think>").count(), 1, "{c}");
    let (_, answer) = c.split_once("</think>").unwrap();
    assert!(answer.contains("\\boxed{"), "{c}");

    // /v1/completions: the prompt plus the generated text, closed.
    let body = format!(
        r#"{{"model":"{MODEL}","prompt":"difficulty: hard. Compute 2 + 3.","stream":true,"max_tokens":5000}}"#
    );
    let got = send(
        &client(),
        post(format!("http://{}/v1/completions", gw.proxy_addr), &body),
    )
    .await;
    let mut text = String::new();
    for d in sse(&got.body) {
        if d != "[DONE]" {
            let v: Value = serde_json::from_str(&d).unwrap();
            text.push_str(v["choices"][0]["text"].as_str().unwrap_or(""));
        }
    }
    let (thought, answer) = text.split_once("</think>").expect("closed");
    assert!(thought.starts_with("<think>"), "{text}");
    assert!(answer.contains("\\boxed{"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_forces_early_and_the_hard_deadline_ends_cleanly() {
    // Thinking would take seconds; the deadline forces the answer at
    // deadline - reserve, and the answer fits in the reserve.
    let (url, _sim) = sim_with(ReasoningMode::Field, 20_000.0, 20.0, |_| {}).await;
    let rec = tmp("deadline");
    let gw = gateway(vec![url], |c| {
        c.straggler.answer_reserve_ms = Some(500);
        c.records = Some(rec.clone());
    })
    .await;
    let mut req = chat_req(&gw, &chat(true, false));
    req.headers_mut()
        .insert("x-thinkgate-deadline-ms", "1200".parse().unwrap());
    let t = Instant::now();
    let got = send(&client(), req).await;
    let took = t.elapsed();
    let s = read_chat(&got.body);
    assert_eq!(s.finish.as_deref(), Some("stop"), "answered: {}", s.content);
    assert!(s.content.contains("\\boxed{"));
    assert!(took < Duration::from_millis(1200 + 300), "{took:?}");
    assert!(took > Duration::from_millis(650), "{took:?}");

    // An answer too long for the reserve: cut at the hard deadline.
    let (url, _sim) = sim_with(ReasoningMode::Field, 20_000.0, 20.0, |c| {
        c.workload.answer_median = 3000.0;
    })
    .await;
    let gw2 = gateway(vec![url], |c| {
        c.straggler.deadline_ms = Some(1000);
    })
    .await;
    let t = Instant::now();
    let got = ask(&gw2, &chat(true, false)).await;
    let took = t.elapsed();
    let s = read_chat(&got.body);
    assert_eq!(s.finish.as_deref(), Some("length"));
    assert_eq!(s.dones, 1);
    assert!(took < Duration::from_millis(1000 + 300), "{took:?}");
    assert!(took >= Duration::from_millis(1000), "{took:?}");
    gw.shutdown();
    gw.wait().await;
    let r = &records(&rec)[0];
    assert_eq!(r["actions"][0]["trigger"], "deadline");
    assert_eq!(r["deadline_ms"], 1200);
}

fn stalled() -> Script {
    let mut s = Script::sse(vec![(
        Duration::from_secs(30),
        Bytes::from_static(b"data: {}\n\n"),
    )]);
    s.end = End::Hang;
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hedge_races_a_stalled_backend_and_cancels_the_loser() {
    let slow = upstream(|_, _| stalled()).await;
    let (url, _sim) = sim(ReasoningMode::Field, 100.0).await;
    let rec = tmp("hedge");
    let gw = gateway(vec![format!("http://{}", slow.addr), url.clone()], |c| {
        c.straggler.hedge.after_ms = Some(100);
        c.straggler.hedge.max_ratio = 1.0;
        c.records = Some(rec.clone());
    })
    .await;
    // Round robin sends the first request to the stalled backend.
    let t = Instant::now();
    let got = ask(&gw, &chat(true, false)).await;
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(got.headers["x-thinkgate-backend"], url.as_str());
    let s = read_chat(&got.body);
    assert!(s.order.starts_with('r') && s.content.contains("\\boxed{"));
    assert_eq!(s.dones, 1);
    // The loser's connection was dropped.
    let seen = slow.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    let gone = Arc::clone(&seen[0].client_gone);
    wait_for("the loser is cancelled", || gone.lock().unwrap().is_some()).await;
    gw.shutdown();
    gw.wait().await;
    let r = &records(&rec)[0];
    let actions: Vec<&str> = r["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["hedge_sent", "hedge_won"]);
    assert_eq!(r["backend"], url.as_str());
}

/// A hedge's backend is chosen without counting as a pick: round robin
/// keeps alternating the originals with hedging on (the hedge's pick once
/// moved the cursor, and every original of two backends landed on the
/// stalled one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hedging_keeps_round_robins_split_of_the_originals() {
    let slow = upstream(|_, _| stalled()).await;
    let (url, _sim) = sim(ReasoningMode::Field, 100.0).await;
    let rec = tmp("hedge-split");
    let gw = gateway(vec![format!("http://{}", slow.addr), url.clone()], |c| {
        c.straggler.hedge.after_ms = Some(50);
        c.straggler.hedge.max_ratio = 1.0;
        c.records = Some(rec.clone());
    })
    .await;
    let c = client();
    for i in 0..6 {
        let got = send(&c, chat_req(&gw, &chat(true, false))).await;
        assert_eq!(got.status, 200, "request {i}");
        assert_eq!(
            got.headers["x-thinkgate-backend"],
            url.as_str(),
            "request {i}"
        );
    }
    assert_eq!(
        slow.seen.lock().unwrap().len(),
        3,
        "round robin sent every other original to the stalled backend"
    );
    gw.shutdown();
    gw.wait().await;
    let hedged = records(&rec)
        .iter()
        .filter(|r| r["actions"].as_array().is_some_and(|a| !a.is_empty()))
        .count();
    assert_eq!(
        hedged, 3,
        "the three originals on the stalled backend were hedged"
    );
}

/// A backend that holds its response head (llama.cpp's slot queue sends
/// none until a slot frees; a stuck engine accepts and says nothing) is
/// hedged like one that holds its first token: the timer runs from the
/// send. The originals keep round robin's split.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_slow_to_send_its_head_is_hedged() {
    let slow = upstream(|_, _| {
        let mut s = Script::sse(vec![(
            Duration::ZERO,
            Bytes::from_static(b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"late\"}}]}\n\ndata: [DONE]\n\n"),
        )]);
        s.head_delay = Duration::from_secs(4);
        s
    })
    .await;
    let (url, _sim) = sim(ReasoningMode::Field, 100.0).await;
    let rec = tmp("hedge-head");
    let gw = gateway(vec![format!("http://{}", slow.addr), url.clone()], |c| {
        c.straggler.hedge.after_ms = Some(300);
        c.straggler.hedge.max_ratio = 1.0;
        c.records = Some(rec.clone());
    })
    .await;
    let c = client();
    let mut slowest = Duration::ZERO;
    for i in 0..4 {
        let t = Instant::now();
        let got = send(&c, chat_req(&gw, &chat(true, false))).await;
        slowest = slowest.max(t.elapsed());
        assert_eq!(got.status, 200, "request {i}");
        assert_eq!(
            got.headers["x-thinkgate-backend"],
            url.as_str(),
            "request {i}"
        );
        let s = read_chat(&got.body);
        assert!(s.content.contains("\\boxed{"), "request {i}: {}", s.content);
        assert_eq!(s.dones, 1);
    }
    // the hedge delay plus a fast backend's answer, never the 4 s head
    assert!(slowest < Duration::from_secs(2), "{slowest:?}");
    // round robin sent every other original to the slow backend, whose
    // legs were dropped before their heads
    let seen = slow.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    for s in &seen {
        let gone = Arc::clone(&s.client_gone);
        wait_for("the slow leg is dropped", || gone.lock().unwrap().is_some()).await;
    }
    gw.shutdown();
    gw.wait().await;
    let won: Vec<Vec<String>> = records(&rec)
        .iter()
        .map(|r| {
            r["actions"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|x| x["action"].as_str().unwrap().to_string())
                        .collect()
                })
                .unwrap_or_default()
        })
        .filter(|a: &Vec<String>| !a.is_empty())
        .collect();
    assert_eq!(
        won,
        vec![vec!["hedge_sent".to_string(), "hedge_won".into()]; 2]
    );
}

/// An upstream that answers every request with a 503 (retried by default).
async fn overloaded() -> common::Upstream {
    upstream(|_, _| {
        let mut s = Script::json(r#"{"error":{"message":"overloaded"}}"#);
        s.status = 503;
        s
    })
    .await
}

/// The names of a record's actions, in order.
fn action_names(r: &Value) -> Vec<String> {
    r["actions"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|x| x["action"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// A connect left pending (a half-dead host, a listener whose accept
/// queue is full: the kernel drops the SYN and the client waits for its
/// retransmits) is hedged like a leg waiting for its head.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_left_pending_is_hedged() {
    use socket2::{Domain, Socket, Type};
    // a listener that never accepts, its queue filled by held connections
    let full = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    full.bind(
        &"127.0.0.1:0"
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into(),
    )
    .unwrap();
    full.listen(0).unwrap();
    let addr = full.local_addr().unwrap().as_socket().unwrap();
    let mut held = Vec::new();
    let pending = loop {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
            Ok(c) => held.push(c),
            Err(_) => break true,
        }
        if held.len() > 64 {
            break false;
        }
    };
    assert!(
        pending,
        "the accept queue never filled: connects do not pend"
    );
    let (url, _sim) = sim(ReasoningMode::Field, 100.0).await;
    let rec = tmp("hedge-connect");
    let gw = gateway(vec![format!("http://{addr}"), url.clone()], |c| {
        c.connect_timeout_ms = 20_000;
        c.straggler.hedge.after_ms = Some(300);
        c.straggler.hedge.max_ratio = 1.0;
        c.records = Some(rec.clone());
    })
    .await;
    // round robin sends the first original to the full listener
    let t = Instant::now();
    let got = tokio::time::timeout(Duration::from_secs(10), ask(&gw, &chat(true, false)))
        .await
        .expect("not answered: a pending connect was not hedged");
    let took = t.elapsed();
    assert_eq!(got.status, 200);
    assert_eq!(got.headers["x-thinkgate-backend"], url.as_str());
    assert_eq!(read_chat(&got.body).dones, 1);
    // the hedge delay plus the fast backend's answer, not a connect
    // timeout (20 s) nor the SYN's retransmits (1 s, 3 s, ...)
    assert!(took < Duration::from_millis(2500), "{took:?}");
    gw.shutdown();
    gw.wait().await;
    let r = &records(&rec)[0];
    assert_eq!(action_names(r), ["hedge_sent", "hedge_won"]);
    drop(held);
}

/// A request's retries and its hedge share one list of the backends it
/// went to: here the original got a 503 on `a`, its retry went to `b`,
/// which sent its head and stalled, and the hedge must go to `c`, not
/// back to `a` (before, the hedge avoided only `b`, went to `a`, got the
/// 503 again, and the request waited on `b`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hedge_never_goes_where_a_retry_has_been() {
    let a = overloaded().await;
    let b = upstream(|_, _| stalled()).await;
    let (c_url, _sim) = sim(ReasoningMode::Field, 100.0).await;
    let rec = tmp("hedge-after-retry");
    let gw = gateway(
        vec![
            format!("http://{}", a.addr),
            format!("http://{}", b.addr),
            c_url.clone(),
        ],
        |c| {
            c.straggler.hedge.after_ms = Some(300);
            c.straggler.hedge.max_ratio = 1.0;
            c.records = Some(rec.clone());
        },
    )
    .await;
    let t = Instant::now();
    let got = tokio::time::timeout(Duration::from_secs(5), ask(&gw, &chat(true, false)))
        .await
        .expect("not answered: the hedge went back to a and the request waits on b");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert_eq!(got.status, 200);
    assert_eq!(got.headers["x-thinkgate-backend"], c_url.as_str());
    assert_eq!(a.seen.lock().unwrap().len(), 1, "the hedge went back to a");
    assert_eq!(b.seen.lock().unwrap().len(), 1);
    gw.shutdown();
    gw.wait().await;
    let r = &records(&rec)[0];
    assert_eq!(action_names(r), ["retry", "hedge_sent", "hedge_won"]);
    assert_eq!(r["actions"][1]["backend"], c_url.as_str());
}

/// Retries spend from the budget they share with hedges: a backend that
/// answers every request with a 503 gets half of round robin's originals;
/// the first ones are retried on the other backend until the credit (10
/// to start, 0.2 a request) runs out, then the engine's 503 stands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_spend_the_budget_they_share_with_hedges() {
    let busy = overloaded().await;
    let (url, _sim) = sim(ReasoningMode::Field, 100.0).await;
    let rec = tmp("retry-budget");
    let gw = gateway(vec![format!("http://{}", busy.addr), url.clone()], |c| {
        c.straggler.extra_legs_ratio = 0.2;
        c.straggler.extra_legs_per_sec = 0.0;
        c.records = Some(rec.clone());
    })
    .await;
    let c = client();
    let mut statuses = Vec::new();
    for _ in 0..40 {
        statuses.push(
            send(&c, chat_req(&gw, &chat(true, false)))
                .await
                .status
                .as_u16(),
        );
    }
    // 20 originals on the busy backend: 10 + 0.2 x 40 of credit, spent
    // as it came (worked out in order: 17 retried, 3 refused)
    assert_eq!(
        statuses.iter().filter(|s| **s == 503).count(),
        3,
        "{statuses:?}"
    );
    assert_eq!(busy.seen.lock().unwrap().len(), 20);
    let metrics = common::scrape(&gw).await;
    let refused = common::metric(
        &metrics,
        "thinkgate_extra_legs_refused_total",
        &[("kind", "retry")],
    );
    assert_eq!(refused, Some(3.0), "{metrics}");
    gw.shutdown();
    gw.wait().await;
    let recs = records(&rec);
    let count = |what: &str| {
        recs.iter()
            .filter(|r| action_names(r).iter().any(|a| a == what))
            .count()
    };
    assert_eq!(count("retry"), 17);
    assert_eq!(count("extra_refused"), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hedges_stay_within_their_budget() {
    let slow = upstream(|_, _| stalled()).await;
    let (url, _sim) = sim(ReasoningMode::Field, 50.0).await;
    let rec = tmp("hedge-budget");
    let gw = gateway(vec![format!("http://{}", slow.addr), url], |c| {
        c.straggler.hedge.after_ms = Some(50);
        c.straggler.hedge.max_ratio = 0.5;
        c.straggler.deadline_ms = Some(1500);
        c.records = Some(rec.clone());
    })
    .await;
    // Ten requests, half to the stalled backend: credit for five hedges.
    let c = client();
    let mut finishes = Vec::new();
    for _ in 0..10 {
        let got = send(&c, chat_req(&gw, &chat(true, false))).await;
        finishes.push(read_chat(&got.body).finish);
    }
    let saved = finishes
        .iter()
        .filter(|f| f.as_deref() == Some("stop"))
        .count();
    // Five on the healthy backend, and at most five hedged away from the
    // stalled one (the rest end at their deadline).
    assert!((5..=10).contains(&saved), "{finishes:?}");
    // (counted in this gateway's records: the metrics registry is shared by
    // the tests of this binary running beside it)
    gw.shutdown();
    gw.wait().await;
    let sent: usize = records(&rec)
        .iter()
        .map(|r| {
            r["actions"].as_array().map_or(0, |a| {
                a.iter().filter(|x| x["action"] == "hedge_sent").count()
            })
        })
        .sum();
    assert!(sent <= 5, "hedges {sent}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_go_elsewhere_only_before_the_first_byte() {
    // 503 before any byte: retried on the other backend.
    let busy = overloaded().await;
    let (url, _sim) = sim(ReasoningMode::Field, 100.0).await;
    let rec = tmp("retry");
    let gw = gateway(vec![format!("http://{}", busy.addr), url.clone()], |c| {
        c.records = Some(rec.clone());
    })
    .await;
    let got = ask(&gw, &chat(true, false)).await;
    assert_eq!(got.status, 200);
    let s = read_chat(&got.body);
    assert_eq!(s.dones, 1);
    assert_eq!(busy.seen.lock().unwrap().len(), 1);

    // A reset after bytes reached the client: never retried (the client
    // would see output twice); the client sees the stream end with an
    // error event.
    let first =
        b"data: {\"id\":\"x\",\"choices\":[{\"index\":0,\"delta\":{\"reasoning\":\"hmm\"}}]}\n\n";
    let reset = upstream(move |_, _| {
        let mut s = Script::sse(vec![(Duration::ZERO, Bytes::from_static(first))]);
        s.end = End::Reset;
        s
    })
    .await;
    let other = upstream(|_, _| Script::sse(vec![])).await;
    let gw2 = gateway(
        vec![
            format!("http://{}", reset.addr),
            format!("http://{}", other.addr),
        ],
        |_| {},
    )
    .await;
    let resp = client()
        .request(chat_req(&gw2, &chat(true, false)))
        .await
        .unwrap();
    use http_body_util::BodyExt;
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.starts_with(std::str::from_utf8(first).unwrap()),
        "{text}"
    );
    assert!(
        text.contains(r#""type":"upstream_reset""#),
        "the client sees the reset as an error event: {text}"
    );
    assert_eq!(other.seen.lock().unwrap().len(), 0, "no duplicate request");
    gw.shutdown();
    gw.wait().await;
    let r = &records(&rec)[0];
    assert_eq!(r["actions"][0]["action"], "retry");
    assert_eq!(r["actions"][0]["reason"], "503");
    assert_eq!(r["backend"], url.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thinking_cap_steers_new_requests_away() {
    let (a, _sa) = sim_with(ReasoningMode::Field, 20_000.0, 5.0, |_| {}).await;
    let (b, _sb) = sim(ReasoningMode::Field, 50.0).await;
    let gw = gateway(vec![a.clone(), b.clone()], |c| {
        c.routing = thinkgate_policies::PolicyConfig::RoundRobin;
        c.straggler.max_thinking_per_backend = Some(1);
    })
    .await;
    let c = client();
    // A long thinker on `a` (round robin starts there).
    let long = c.request(chat_req(&gw, &chat(true, false))).await.unwrap();
    assert_eq!(long.headers()["x-thinkgate-backend"], a.as_str());
    let shared = Arc::clone(&gw.shared);
    wait_for("the long request is thinking", || {
        shared.fleet.load().backends[0]
            .inflight_thinking
            .load(Ordering::Relaxed)
            == 1
    })
    .await;
    // Round robin alone would alternate; the cap keeps `a` out.
    for _ in 0..4 {
        let got = send(&c, chat_req(&gw, &chat(false, false))).await;
        assert_eq!(got.headers["x-thinkgate-backend"], b.as_str());
    }
    drop(long);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_budget_lets_the_engine_stop_thinking_itself() {
    let (url, _sim) = sim(ReasoningMode::Field, 800.0).await;
    let rec = tmp("native");
    let gw = gateway(vec![url], |c| {
        c.straggler.thinking_budget = Some(64);
        c.straggler.native_budget = true;
        c.records = Some(rec.clone());
    })
    .await;
    let got = ask(&gw, &chat(true, false)).await;
    let s = read_chat(&got.body);
    // vLLM's `thinking_token_budget` ended thinking in the sampler: one
    // leg, nothing forced.
    assert_eq!(s.order.matches('r').count(), 64);
    assert!(s.content.contains("\\boxed{"));
    gw.shutdown();
    gw.wait().await;
    let r = &records(&rec)[0];
    assert!(r.get("actions").is_none(), "{r}");
    // The thinking count is the engine's own (its usage), not the events
    // counted: an engine that merged tokens would make those short.
    assert_eq!(r["token_source"], "usage", "{r}");
    assert_eq!(r["thinking_tokens"], 64, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_cannot_be_continued_ends_as_a_length_cut() {
    let (url, _sim) = sim(ReasoningMode::Tags, 800.0).await;
    let rec = tmp("fallback");
    let gw = gateway(vec![url], |c| {
        c.straggler.thinking_budget = Some(20);
        c.records = Some(rec.clone());
    })
    .await;
    // A prompt given as a list cannot be extended with the thinking.
    let body = format!(
        r#"{{"model":"{MODEL}","prompt":["difficulty: hard. Compute 2 + 3."],"stream":true,"max_tokens":5000}}"#
    );
    let got = send(
        &client(),
        post(format!("http://{}/v1/completions", gw.proxy_addr), &body),
    )
    .await;
    let events = sse(&got.body);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let last: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "length");
    gw.shutdown();
    gw.wait().await;
    let r = &records(&rec)[0];
    assert_eq!(r["actions"][1]["action"], "forced_fallback");
}

#[ignore = "needs python3 with the openai package: just external (CI runs it)"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_python_client_reads_a_forced_answer() {
    common::require_python_with_openai();
    let mut sim_cfg = thinkgate_sim::SimConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        time_scale: 50.0,
        ..Default::default()
    };
    sim_cfg.workload.think_median = [800.0; 3];
    sim_cfg.workload.think_sigma = [0.01; 3];
    let model = sim_cfg.model.clone();
    let (sim_addr, _sim, _task) = thinkgate_sim::server::spawn(sim_cfg).await.unwrap();
    let gw = common::gateway(vec![format!("http://{sim_addr}")], |_| {}).await;
    let base = format!("http://{}", gw.proxy_addr);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/forced_answer.py");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .args([script, &base, &model, "48"])
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let s = &v["stream"];
    let order = s["order"].as_str().unwrap();
    let answer = order.matches('c').count() as u64;
    assert!(
        order.starts_with(&"r".repeat(48)) && order[48..].chars().all(|c| c == 'c') && answer > 0,
        "48 reasoning chunks, then only content: {order}"
    );
    assert!(s["content"].as_str().unwrap().contains("\\boxed{"), "{s}");
    assert_eq!(s["ids"].as_array().unwrap().len(), 1, "one stream id");
    assert_eq!(s["finish"], "stop");
    let u = &s["usage"];
    assert_eq!(
        u["completion_tokens_details"]["reasoning_tokens"], 48,
        "{u}"
    );
    assert_eq!(u["completion_tokens"], 48 + answer, "{u}");
    assert_eq!(
        u["total_tokens"].as_u64().unwrap(),
        u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap()
    );
    let p = &v["plain"];
    assert_eq!(p["object"], "chat.completion");
    assert!(
        p["reasoning"].as_str().is_some_and(|r| !r.is_empty()),
        "{p}"
    );
    assert!(p["content"].as_str().unwrap().contains("\\boxed{"), "{p}");
    assert_eq!(p["finish"], "stop");
    assert_eq!(
        p["usage"]["completion_tokens_details"]["reasoning_tokens"],
        48
    );
}

/// A managed request whose engine answers with an error, or with a body
/// that is not an event stream, gets the same head as on the plain path:
/// the `x-thinkgate-*` headers included.
#[tokio::test]
async fn a_managed_request_answered_without_a_stream_has_the_gateways_headers() {
    let error = r#"{"error":{"message":"bad","type":"BadRequestError","code":400}}"#;
    let json = r#"{"id":"x","object":"chat.completion","choices":[]}"#;
    let up = upstream(move |_, body| {
        if String::from_utf8_lossy(body).contains("error-please") {
            let mut s = Script::json(error);
            s.status = 400;
            s
        } else {
            Script::json(json)
        }
    })
    .await;
    let gw = gateway(vec![up.url()], |c| c.straggler.thinking_budget = Some(10)).await;
    let c = client();
    for (content, status, body) in [("error-please", 400, error), ("fine", 200, json)] {
        let req = post(
            format!("http://{}/v1/chat/completions", gw.proxy_addr),
            &format!(
                r#"{{"model":"m","stream":true,"messages":[{{"role":"user","content":"{content}"}}]}}"#
            ),
        );
        let got = send(&c, req).await;
        assert_eq!(got.status, status);
        assert_eq!(got.body, body.as_bytes());
        assert!(
            got.headers.contains_key("x-thinkgate-request-id"),
            "{content}"
        );
        assert_eq!(
            got.headers["x-thinkgate-backend"],
            up.url().as_str(),
            "{content}"
        );
    }
}

/// A gateway with a thinking budget of `budget` over one scripted engine
/// that says it is vLLM (so the budget counts its per-chunk usage).
async fn budgeted_vllm(
    url: String,
    budget: u64,
    records: Option<std::path::PathBuf>,
) -> thinkgate::server::Gateway {
    gateway(vec![], move |c| {
        c.records = records;
        c.backends = vec![thinkgate::config::BackendConfig {
            url,
            weight: 1,
            pool: "default".into(),
            models: vec![],
            flavor: thinkgate::config::Flavor::Vllm,
        }];
        c.straggler.thinking_budget = Some(budget);
    })
    .await
}

/// One streamed chat through `gw`: the body as text.
async fn streamed_chat(gw: &thinkgate::server::Gateway) -> String {
    let got = send(
        &client(),
        post(
            format!("http://{}/v1/chat/completions", gw.proxy_addr),
            r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"q"}]}"#,
        ),
    )
    .await;
    String::from_utf8_lossy(&got.body).to_string()
}

/// A budget on vLLM counts the tokens each event carried from the
/// per-chunk usage the gateway asked for, also when a read ends inside an
/// event (the event is counted when its end arrives), and that usage never
/// reaches the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_counts_tokens_of_events_split_across_reads() {
    let chunk = |text: &str, tokens: u64| {
        format!(
            "data: {{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":{}}},\"finish_reason\":null}}],\"usage\":{{\"prompt_tokens\":5,\"total_tokens\":{},\"completion_tokens\":{tokens}}}}}\n\n",
            serde_json::to_string(text).unwrap(),
            5 + tokens
        )
    };
    let up = upstream(move |_, body| {
        let req: Value = serde_json::from_slice(body).unwrap();
        if req.get("continue_final_message").is_some() {
            // the continuation: the answer
            let answer = "data: {\"id\":\"c2\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" yes\"},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n";
            return Script::sse(vec![(Duration::ZERO, Bytes::from(answer))]);
        }
        assert_eq!(req["stream_options"]["continuous_usage_stats"], true);
        let mut events = vec![chunk("<think>", 1)];
        for i in 1..=8u64 {
            events.push(chunk(&format!(" w{i}"), 1 + i));
        }
        // every other event is written in two halves, a moment apart
        let mut writes = Vec::new();
        for (i, e) in events.iter().enumerate() {
            let gap = Duration::from_millis(3);
            if i % 2 == 1 {
                let (a, b) = e.as_bytes().split_at(e.len() / 2);
                writes.push((gap, Bytes::copy_from_slice(a)));
                writes.push((gap, Bytes::copy_from_slice(b)));
            } else {
                writes.push((gap, Bytes::from(e.clone())));
            }
        }
        let mut s = Script::sse(writes);
        s.end = End::Hang;
        s
    })
    .await;
    let gw = budgeted_vllm(up.url(), 3, None).await;
    let text = streamed_chat(&gw).await;
    assert!(
        !text.contains("\"usage\""),
        "per-chunk usage leaked: {text}"
    );
    let content: String = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    let thinking = content.split("</think>").next().unwrap();
    assert_eq!(thinking, "<think> w1 w2 w3", "{text}");
    assert!(content.ends_with(" yes"), "{content}");
}

/// vLLM under load merges tokens into one event, up to the whole thinking,
/// its close marker and the start of the answer. A budget that falls
/// inside such an event cuts it there, before the observer sees it: the
/// client gets the budget's tokens and the forced answer, never the
/// engine's answer to a thinking it did not see; TTFVT is the forced
/// answer's. Both ways vLLM writes thinking (inline, and in `reasoning`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_cuts_an_event_that_also_ends_the_thinking() {
    // the scripted engine's tokenizer: " wN" is token N
    fn tokenize(text: &str) -> Vec<u64> {
        text.split(" w")
            .skip(1)
            .map(|n| n.parse().unwrap())
            .collect()
    }
    for parser in [false, true] {
        let chunk = move |delta: Value, finish: Option<&str>, completion: u64, reasoning: u64| {
            let usage = if parser {
                json!({"prompt_tokens":5,"total_tokens":5 + completion,"completion_tokens":completion,
                       "completion_tokens_details":{"reasoning_tokens":reasoning}})
            } else {
                json!({"prompt_tokens":5,"total_tokens":5 + completion,"completion_tokens":completion})
            };
            let v = json!({"id":"c1","object":"chat.completion.chunk","created":1,"model":"m",
                "choices":[{"index":0,"delta":delta,"finish_reason":finish}],"usage":usage});
            format!("data: {v}\n\n")
        };
        let up = upstream(move |parts, body| {
            let req: Value = serde_json::from_slice(body).unwrap();
            match parts.uri.path() {
                "/tokenize" => {
                    let ids = tokenize(req["prompt"].as_str().unwrap());
                    return Script::json(&json!({ "tokens": ids }).to_string());
                }
                "/detokenize" => {
                    let ids = req["tokens"].as_array().unwrap();
                    let words: String = ids.iter().map(|i| format!(" w{i}")).collect();
                    return Script::json(&json!({ "prompt": words }).to_string());
                }
                _ => {}
            }
            if req.get("continue_final_message").is_some() {
                let answer = "data: {\"id\":\"c2\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" forced\"},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n";
                return Script::sse(vec![(Duration::from_millis(50), Bytes::from(answer))]);
            }
            // one event: two thinking words; the next: eight more, the
            // close marker and the answer, with the finish reason
            let events = if parser {
                [
                    chunk(json!({"role":"assistant","content":""}), None, 0, 0),
                    chunk(json!({"reasoning":" w1 w2"}), None, 3, 2),
                    chunk(
                        json!({"reasoning":" w3 w4 w5 w6 w7 w8 w9 w10","content":"\n\n engine answer"}),
                        Some("stop"),
                        16,
                        10,
                    ),
                ]
            } else {
                [
                    chunk(json!({"role":"assistant","content":""}), None, 0, 0),
                    chunk(json!({"content":"<think> w1 w2"}), None, 3, 0),
                    chunk(
                        json!({"content":" w3 w4 w5 w6 w7 w8 w9 w10</think>\n\n engine answer"}),
                        Some("stop"),
                        16,
                        0,
                    ),
                ]
            };
            let mut writes: Vec<_> = events
                .iter()
                .map(|e| (Duration::from_millis(5), Bytes::from(e.clone())))
                .collect();
            writes.push((Duration::from_millis(5), Bytes::from_static(b"data: [DONE]\n\n")));
            Script::sse(writes)
        })
        .await;
        let rec = tmp(if parser { "cut-parser" } else { "cut-inline" });
        let gw = budgeted_vllm(up.url(), 5, Some(rec.clone())).await;
        let text = streamed_chat(&gw).await;
        assert!(
            !text.contains("\"usage\""),
            "{parser}: usage leaked: {text}"
        );
        assert!(
            !text.contains("engine answer"),
            "{parser}: the engine's answer leaked: {text}"
        );
        let deltas: Vec<Value> = text
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .collect();
        let field = |k: &str| -> String {
            deltas
                .iter()
                .filter_map(|v| v["choices"][0]["delta"][k].as_str())
                .collect()
        };
        let (thinking, content) = if parser {
            (field("reasoning"), field("content"))
        } else {
            let all = field("content");
            let (t, c) = all.split_once("</think>").expect("thinking closed");
            (t.to_string(), c.to_string())
        };
        let want = if parser {
            " w1 w2 w3 w4 w5"
        } else {
            "<think> w1 w2 w3 w4 w5"
        };
        assert_eq!(thinking, want, "{parser}: {text}");
        assert!(content.ends_with(" forced"), "{parser}: {text}");
        // only the forced answer's last event finishes the stream
        let finishes = deltas
            .iter()
            .filter(|v| v["choices"][0]["finish_reason"].is_string())
            .count();
        assert_eq!(finishes, 1, "{parser}: {text}");
        gw.shutdown();
        gw.wait().await;
        let recs = records(&rec);
        assert_eq!(recs[0]["thinking_tokens"], 5, "{parser}: {}", recs[0]);
        assert_eq!(recs[0]["actions"][0]["way"], "continuation", "{}", recs[0]);
        // the first visible token is the forced answer's (50 ms after the
        // continuation was sent), not the cut event's
        let ttfvt = recs[0]["t_first_visible_ns"].as_u64().unwrap();
        assert!(
            ttfvt >= 60_000_000,
            "{parser}: TTFVT {ttfvt} ns: {}",
            recs[0]
        );
    }
}

/// The managed path's timers on paused time, against scripted bodies: the
/// answer is forced at the deadline less the answer reserve and the hard
/// deadline ends the response, each at its time, token for token (no
/// wall-clock windows: the clock only moves when every task waits).
#[tokio::test(start_paused = true)]
async fn deadline_timers_fire_at_their_exact_times() {
    let chunk = |text: &str| {
        Bytes::from(format!(
            "data: {{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{{\"index\":0,\"delta\":{{\"reasoning_content\":{}}},\"finish_reason\":null}}]}}\n\n",
            serde_json::to_string(text).unwrap()
        ))
    };
    let answer = |text: &str| {
        Bytes::from(format!(
            "data: {{\"id\":\"c2\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":{}}},\"finish_reason\":null}}]}}\n\n",
            serde_json::to_string(text).unwrap()
        ))
    };
    let gap = Duration::from_millis(90);
    let up = upstream(move |_, body| {
        let req: Value = serde_json::from_slice(body).unwrap();
        let mut s = if req.get("continue_final_message").is_some() {
            // an answer that would take 5 s
            Script::sse((1..=50).map(|i| (gap, answer(&format!(" a{i}")))).collect())
        } else {
            // thinking that never ends: a token every 90 ms
            Script::sse((1..=100).map(|i| (gap, chunk(&format!(" w{i}")))).collect())
        };
        s.end = End::Hang;
        s
    })
    .await;
    let gw = gateway(vec![up.url()], |c| {
        c.straggler.deadline_ms = Some(1000);
        c.straggler.answer_reserve_ms = Some(500);
    })
    .await;
    let t0 = tokio::time::Instant::now();
    let got = send(
        &client(),
        post(
            format!("http://{}/v1/chat/completions", gw.proxy_addr),
            r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"q"}]}"#,
        ),
    )
    .await;
    let took = t0.elapsed();
    let events: Vec<Value> = String::from_utf8_lossy(&got.body)
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str(d).ok())
        .collect();
    let text = |k: &str| -> String {
        events
            .iter()
            .filter_map(|v| v["choices"][0]["delta"][k].as_str().map(str::to_string))
            .collect()
    };
    // forced at 500 ms: the thinking tokens of 90..450 ms
    assert_eq!(text("reasoning_content"), " w1 w2 w3 w4 w5");
    // the answer ran until the hard deadline at 1000 ms: 5 tokens 90 ms apart
    assert_eq!(text("content"), " a1 a2 a3 a4 a5");
    let last = events.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "length");
    // at the hard deadline; the paused clock may jump a few ms past it when
    // it auto-advances (to a short timer) while a loopback read is in flight
    let deadline = Duration::from_millis(1000);
    assert!(
        took >= deadline && took < deadline + Duration::from_millis(20),
        "ended at the hard deadline: {took:?}"
    );
}

/// The hedge timer on paused time: a backend that sends its head and then
/// nothing is raced by a hedge at `after_ms`, which answers at once.
#[tokio::test(start_paused = true)]
async fn a_hedge_goes_at_its_delay() {
    let body = "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n";
    let stuck = upstream(|_, _| stalled()).await;
    let quick = upstream(move |_, _| Script::sse(vec![(Duration::ZERO, Bytes::from(body))])).await;
    let gw = gateway(vec![stuck.url(), quick.url()], |c| {
        c.straggler.hedge.after_ms = Some(300);
        c.straggler.hedge.max_ratio = 1.0;
    })
    .await;
    // round robin sends the first request to the stuck backend
    let t0 = tokio::time::Instant::now();
    let got = send(
        &client(),
        post(
            format!("http://{}/v1/chat/completions", gw.proxy_addr),
            r#"{"model":"m","stream":true,"messages":[]}"#,
        ),
    )
    .await;
    let took = t0.elapsed();
    assert_eq!(got.headers["x-thinkgate-backend"], quick.url().as_str());
    assert_eq!(got.body, body.as_bytes());
    let after = Duration::from_millis(300);
    assert!(
        took >= after && took < after + Duration::from_millis(20),
        "{took:?}"
    );
}

/// A budget reached inside a read that also holds the end of the thinking
/// and the answer (llama.cpp on a busy machine writes many events at once):
/// the engine ends its thinking natively, and the events the leg had read
/// past the cut still reach the client: the thinking ones are kept from it
/// (it saw the thinking up to the cut), the answer is whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_native_end_keeps_the_answer_read_with_the_cut() {
    let event = |field: &str, text: &str, finish: &str| {
        format!(
            "data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{{\"index\":0,\"delta\":{{\"{field}\":{}}},\"finish_reason\":{finish}}}]}}\n\n",
            serde_json::to_string(text).unwrap()
        )
    };
    let mut all = String::new();
    for w in [" r1", " r2", " r3", " r4"] {
        all += &event("reasoning_content", w, "null");
    }
    for w in [" a1", " a2", " a3"] {
        all += &event("content", w, "null");
    }
    all += &event("content", "", "\"stop\"");
    all += "data: [DONE]\n\n";
    let up = upstream(move |parts, body| {
        if parts.uri.path() == "/v1/chat/completions/control" {
            let req: Value = serde_json::from_slice(body).unwrap();
            assert_eq!(req["action"], "reasoning_end");
            return Script::json(r#"{"success":true}"#);
        }
        let req: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(req["reasoning_control"], true, "{req}");
        // every event in one write: the gateway reads them at once
        Script::sse(vec![(Duration::ZERO, Bytes::from(all.clone()))])
    })
    .await;
    let rec = tmp("native-read");
    let gw = gateway(vec![], |c| {
        c.records = Some(rec.clone());
        c.backends = vec![thinkgate::config::BackendConfig {
            url: up.url(),
            weight: 1,
            pool: "default".into(),
            models: vec![],
            flavor: thinkgate::config::Flavor::Llamacpp,
        }];
        c.straggler.thinking_budget = Some(2);
    })
    .await;
    let text = streamed_chat(&gw).await;
    let field = |name: &str| -> String {
        text.lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .filter_map(|v| v["choices"][0]["delta"][name].as_str().map(str::to_string))
            .collect()
    };
    assert_eq!(field("reasoning_content"), " r1 r2", "{text}");
    assert_eq!(field("content"), " a1 a2 a3", "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    gw.shutdown();
    gw.wait().await;
    let r = &records(&rec)[0];
    assert_eq!(r["actions"][0]["way"], "native", "{r}");
    assert_eq!(r["outcome"], "completed", "{r}");
}
