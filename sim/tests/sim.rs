//! The simulated engine: wire compatibility per flavour and reasoning mode,
//! and the engine behaviours the gateway's policies depend on.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use thinkgate_asu::{BodyKind, Observer, ObserverConfig, Summary, ThinkTags};
use thinkgate_sim::server::Sim;
use thinkgate_sim::{Flavor, ReasoningMode, SimConfig};

type C = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

async fn sim(tweak: impl FnOnce(&mut SimConfig)) -> (String, Arc<Sim>) {
    let mut cfg = SimConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        time_scale: 200.0,
        ..SimConfig::default()
    };
    tweak(&mut cfg);
    let (addr, sim, _task) = thinkgate_sim::server::spawn(cfg).await.unwrap();
    (format!("http://{addr}"), sim)
}

fn client() -> C {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn post(c: &C, url: &str, body: serde_json::Value) -> (u16, String, Bytes) {
    let req = http::Request::post(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let resp = c.request(req).await.unwrap();
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (
        status,
        ct,
        resp.into_body().collect().await.unwrap().to_bytes(),
    )
}

fn observe(body: &[u8], kind: BodyKind, mode: ThinkTags) -> Summary {
    let cfg = Arc::new(ObserverConfig {
        think_tags: mode,
        capture_text: true,
        ..Default::default()
    });
    let mut o = Observer::new(cfg, kind);
    o.feed(body, 1);
    o.finish(2)
}

fn chat(model: &str, content: &str) -> serde_json::Value {
    serde_json::json!({"model": model, "messages": [{"role": "user", "content": content}]})
}

#[tokio::test]
async fn wire_format_per_flavour_and_reasoning_mode() {
    let cases = [
        (Flavor::Vllm, ReasoningMode::Field, "\"reasoning\":"),
        (
            Flavor::Vllm,
            ReasoningMode::FieldLegacy,
            "\"reasoning_content\":",
        ),
        (
            Flavor::Sglang,
            ReasoningMode::Field,
            "\"reasoning_content\":",
        ),
        (
            Flavor::Llamacpp,
            ReasoningMode::Field,
            "\"reasoning_content\":",
        ),
        (Flavor::Vllm, ReasoningMode::Tags, "\"content\":\"<think>\""),
        (
            Flavor::Vllm,
            ReasoningMode::TagsNoOpen,
            "\"content\":\"</think>\"",
        ),
    ];
    let c = client();
    for (flavor, mode, marker) in cases {
        let (url, s) = sim(|c| {
            c.flavor = flavor;
            c.reasoning = mode;
        })
        .await;
        let mut body = chat(&s.cfg.model, "difficulty: easy. Compute 2 + 3.");
        body["stream"] = true.into();
        body["stream_options"] = serde_json::json!({"include_usage": true});
        let (status, ct, bytes) = post(&c, &format!("{url}/v1/chat/completions"), body).await;
        let text = String::from_utf8_lossy(&bytes);
        assert_eq!(status, 200);
        assert!(ct.starts_with("text/event-stream"), "{ct}");
        assert!(
            text.contains(marker),
            "{flavor:?} {mode:?}: {}",
            &text[..600.min(text.len())]
        );
        assert!(text.ends_with("data: [DONE]\n\n"));
        assert!(text.starts_with("data: {"));
        if mode == ReasoningMode::TagsNoOpen {
            assert!(!text.contains("<think>"));
        }
        let tags = if mode == ReasoningMode::TagsNoOpen {
            ThinkTags::StartsInThinking
        } else {
            ThinkTags::Auto
        };
        let sum = observe(&bytes, BodyKind::Sse, tags);
        let t = &sum.text.as_ref().unwrap()[0];
        assert!(!t.reasoning.is_empty(), "{flavor:?} {mode:?}");
        assert!(
            t.content.contains("\\boxed{5}") || t.content.contains("\\boxed{"),
            "{flavor:?} {mode:?} {}",
            t.content
        );
        assert_eq!(sum.parse_errors, 0);
        assert!(sum.done_marker);
        let u = sum.usage.unwrap();
        // One token per chunk; a chunk holding only a thinking marker is a
        // token but not a thinking one (real engines do not count it).
        let markers = match mode {
            ReasoningMode::Tags => 2,
            ReasoningMode::TagsNoOpen => 1,
            _ => 0,
        };
        assert_eq!(
            u.completion_tokens,
            Some(sum.reasoning_chunks + sum.visible_chunks + markers),
            "{flavor:?} {mode:?}"
        );
        match (flavor, mode) {
            (Flavor::Vllm, ReasoningMode::Field) => {
                assert_eq!(u.engine_reasoning_tokens(), Some(sum.reasoning_chunks))
            }
            (Flavor::Sglang, _) => assert!(text.contains("\"reasoning_tokens\":")),
            (Flavor::Llamacpp, _) => assert!(text.contains("\"timings\":")),
            _ => {}
        }
        // Every event is one JSON object whose id is the same.
        let ids: std::collections::BTreeSet<String> = text
            .split("\n\n")
            .filter(|e| e.starts_with("data: {"))
            .map(|e| {
                serde_json::from_str::<serde_json::Value>(&e[6..]).unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(ids.len(), 1);
    }
}

#[tokio::test]
async fn no_reasoning_modes_and_non_streamed_and_completions() {
    let c = client();
    let (url, s) = sim(|c| c.reasoning = ReasoningMode::None).await;
    let (_, _, b) = post(&c, &format!("{url}/v1/chat/completions"), {
        let mut v = chat(&s.cfg.model, "Compute 1 + 1.");
        v["stream"] = true.into();
        v
    })
    .await;
    let sum = observe(&b, BodyKind::Sse, ThinkTags::Auto);
    assert_eq!(sum.reasoning_chunks, 0);
    assert!(
        !String::from_utf8_lossy(&b).contains("usage"),
        "no usage unless asked"
    );

    let (url, s) = sim(|_| {}).await;
    let mut v = chat(&s.cfg.model, "Compute 1 + 1.");
    v["chat_template_kwargs"] = serde_json::json!({"enable_thinking": false});
    v["stream"] = true.into();
    let (_, _, b) = post(&c, &format!("{url}/v1/chat/completions"), v).await;
    assert_eq!(
        observe(&b, BodyKind::Sse, ThinkTags::Auto).reasoning_chunks,
        0,
        "enable_thinking=false"
    );

    let (status, ct, b) = post(
        &c,
        &format!("{url}/v1/chat/completions"),
        chat(&s.cfg.model, "difficulty: easy. Compute 1 + 1."),
    )
    .await;
    assert_eq!((status, ct.as_str()), (200, "application/json"));
    let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert!(v["choices"][0]["message"]["reasoning"]
        .as_str()
        .is_some_and(|r| !r.is_empty()));
    assert!(v["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
    assert_eq!(keys[0], "id", "vLLM's key order");

    let (_, _, b) = post(&c, &format!("{url}/v1/completions"), serde_json::json!({"model": s.cfg.model, "prompt": "Compute 2 * 2.", "stream": true, "n": 2})).await;
    let sum = observe(&b, BodyKind::Sse, ThinkTags::Auto);
    assert_eq!(sum.choices, 2);
    let t = sum.text.unwrap();
    assert!(t[0].content.contains("\\boxed{") && !t[0].reasoning.is_empty());
    assert!(String::from_utf8_lossy(&b).contains("\"object\":\"text_completion\""));
}

#[tokio::test]
async fn errors_like_vllm() {
    let c = client();
    let (url, s) = sim(|_| {}).await;
    let cases = [
        (chat("other-model", "x"), 404, "NotFoundError"),
        (
            serde_json::json!({"model": s.cfg.model}),
            400,
            "BadRequestError",
        ),
        (
            {
                let mut v = chat(&s.cfg.model, "x");
                v["max_tokens"] = 0.into();
                v
            },
            400,
            "BadRequestError",
        ),
        (
            {
                let mut v = chat(&s.cfg.model, "x");
                v["max_tokens"] = 10_000_000.into();
                v
            },
            400,
            "BadRequestError",
        ),
        (
            {
                let mut v = chat(&s.cfg.model, "x");
                v["continue_final_message"] = true.into();
                v
            },
            400,
            "BadRequestError",
        ),
    ];
    for (body, status, kind) in cases {
        let (st, ct, b) = post(&c, &format!("{url}/v1/chat/completions"), body.clone()).await;
        assert_eq!(st, status, "{body}");
        assert_eq!(ct, "application/json");
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["error"]["type"], kind);
        assert_eq!(v["error"]["code"], status);
    }
    let req = http::Request::post(format!("{url}/v1/chat/completions"))
        .body(Full::new(Bytes::from_static(b"{not json")))
        .unwrap();
    assert_eq!(c.request(req).await.unwrap().status(), 400);
}

#[tokio::test]
async fn continue_final_message_answers_without_more_thinking() {
    let c = client();
    let (url, s) = sim(|_| {}).await;
    let body = serde_json::json!({
        "model": s.cfg.model, "stream": true, "stream_options": {"include_usage": true},
        "messages": [
            {"role": "user", "content": "difficulty: hard. Compute (12 * 13) - 6."},
            {"role": "assistant", "content": "<think>Let me multiply twelve by thirteen then subtract six.</think>\n\nFinal answer:"}
        ],
        "continue_final_message": true, "add_generation_prompt": false,
    });
    let (status, _, b) = post(&c, &format!("{url}/v1/chat/completions"), body).await;
    assert_eq!(status, 200);
    let sum = observe(&b, BodyKind::Sse, ThinkTags::Auto);
    assert_eq!(sum.reasoning_chunks, 0, "no more thinking");
    assert!(sum.text.unwrap()[0].content.contains("\\boxed{"));
    assert!(sum.usage.unwrap().completion_tokens.unwrap() < 200);
}

#[tokio::test]
async fn same_seed_same_outputs() {
    let c = client();
    let (a, sa) = sim(|c| c.seed = 9).await;
    let (b, _) = sim(|c| c.seed = 9).await;
    let (d, _) = sim(|c| c.seed = 10).await;
    let mut texts = Vec::new();
    for url in [&a, &b, &d] {
        let mut v = chat(&sa.cfg.model, "Compute 17 * 3.");
        v["stream"] = true.into();
        let (_, _, body) = post(&c, &format!("{url}/v1/chat/completions"), v).await;
        texts.push(observe(&body, BodyKind::Sse, ThinkTags::Auto).text.unwrap());
    }
    assert_eq!(texts[0], texts[1]);
    assert_ne!(texts[0], texts[2]);
}

/// The study: under a batch of mixed-difficulty requests KV use rises, stays
/// high while long thinkers run, and drops abruptly as requests finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_usage_rises_and_falls_with_a_mixed_batch() {
    let (url, s) = sim(|c| {
        c.time_scale = 50.0;
        c.engine.num_blocks = 4096;
    })
    .await;
    let c = client();
    let mut tasks = Vec::new();
    for i in 0..24 {
        let level = ["easy", "medium", "hard"][i % 3];
        let (c, url, model) = (c.clone(), url.clone(), s.cfg.model.clone());
        tasks.push(tokio::spawn(async move {
            let mut v = chat(&model, &format!("difficulty: {level}. Compute {i} + 7."));
            v["stream"] = true.into();
            post(&c, &format!("{url}/v1/chat/completions"), v).await
        }));
    }
    let start = Instant::now();
    let mut samples = Vec::new();
    while !tasks.iter().all(|t| t.is_finished()) && start.elapsed() < Duration::from_secs(60) {
        samples.push(s.engine.stats.kv_usage());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().0, 200);
    }
    let peak = samples.iter().cloned().fold(0.0, f64::max);
    let peak_at = samples.iter().position(|x| *x == peak).unwrap();
    assert!(peak > 0.2, "peak KV {peak}");
    assert!(
        samples[..peak_at].iter().any(|x| *x < peak * 0.5),
        "KV rises"
    );
    assert!(
        samples[peak_at..].iter().any(|x| *x < peak * 0.3),
        "KV falls as requests finish"
    );
    assert!(
        samples.windows(2).any(|w| w[0] - w[1] > 0.02),
        "completions release KV abruptly"
    );
    assert_eq!(s.engine.stats.kv_usage(), 0.0, "all freed at the end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preempts_when_kv_is_exhausted_and_still_finishes_everything() {
    let (url, s) = sim(|c| {
        c.engine.num_blocks = 300; // 4,800 tokens for 8 requests of ~5,000 thinking tokens
    })
    .await;
    let c = client();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (c, url, model) = (c.clone(), url.clone(), s.cfg.model.clone());
        tasks.push(tokio::spawn(async move {
            let mut v = chat(&model, &format!("difficulty: medium. Compute {i} * 9."));
            v["max_tokens"] = 1500.into();
            post(&c, &format!("{url}/v1/chat/completions"), v).await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().0, 200);
    }
    assert!(s.engine.stats.preemptions.load(Ordering::Relaxed) > 0);
    assert_eq!(s.engine.stats.used_blocks.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn abort_frees_the_request_at_once() {
    let (url, s) = sim(|c| c.time_scale = 1.0).await;
    let c = client();
    let mut v = chat(&s.cfg.model, "difficulty: hard. Compute 5 * 5.");
    v["stream"] = true.into();
    let req = http::Request::post(format!("{url}/v1/chat/completions"))
        .body(Full::new(Bytes::from(v.to_string())))
        .unwrap();
    let mut body = c.request(req).await.unwrap().into_body();
    for _ in 0..3 {
        body.frame().await.unwrap().unwrap();
    }
    assert_eq!(s.engine.stats.running.load(Ordering::Relaxed), 1);
    assert!(s.engine.stats.used_blocks.load(Ordering::Relaxed) > 0);
    drop(body);
    let t = Instant::now();
    while s.engine.stats.running.load(Ordering::Relaxed) != 0 {
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "abort did not take"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(s.engine.stats.used_blocks.load(Ordering::Relaxed), 0);
    assert_eq!(s.engine.stats.aborted.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn metrics_use_the_flavours_names() {
    let c = client();
    for (flavor, names) in [
        (
            Flavor::Vllm,
            &[
                "vllm:num_requests_running",
                "vllm:num_requests_waiting",
                "vllm:kv_cache_usage_perc",
                "vllm:num_preemptions_total",
                "vllm:generation_tokens_total",
                "vllm:time_to_first_token_seconds_bucket",
            ][..],
        ),
        (
            Flavor::Sglang,
            &[
                "sglang:num_running_reqs",
                "sglang:num_queue_reqs",
                "sglang:token_usage",
                "sglang:num_retracted_reqs",
            ][..],
        ),
        (
            Flavor::Llamacpp,
            &[
                "llamacpp:requests_processing",
                "llamacpp:requests_deferred",
                "llamacpp:tokens_predicted_total",
            ][..],
        ),
    ] {
        let (url, _) = sim(|c| c.flavor = flavor).await;
        let req = http::Request::get(format!("{url}/metrics"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let text = String::from_utf8(
            c.request(req)
                .await
                .unwrap()
                .into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .to_vec(),
        )
        .unwrap();
        for n in names {
            assert!(text.contains(n), "{flavor:?} lacks {n}");
        }
    }
}

#[tokio::test]
async fn stop_strings_and_continuous_usage() {
    let c = client();
    let (url, s) = sim(|_| {}).await;
    // The answer always ends "The answer is \boxed{N}.": stopping at "answer"
    // ends the stream before the boxed value, with finish_reason stop.
    let mut v = chat(&s.cfg.model, "difficulty: easy. Compute 8 + 1.");
    v["stream"] = true.into();
    v["stop"] = serde_json::json!(["answer"]);
    let (_, _, b) = post(&c, &format!("{url}/v1/chat/completions"), v).await;
    let sum = observe(&b, BodyKind::Sse, ThinkTags::Auto);
    assert_eq!(sum.finish_reason.as_deref(), Some("stop"));
    assert!(!sum.text.unwrap()[0].content.contains("\\boxed"));

    let mut v = chat(&s.cfg.model, "difficulty: easy. Compute 8 + 2.");
    v["stream"] = true.into();
    v["max_tokens"] = 5.into();
    v["stream_options"] =
        serde_json::json!({"include_usage": true, "continuous_usage_stats": true});
    let (_, _, b) = post(&c, &format!("{url}/v1/chat/completions"), v).await;
    let text = String::from_utf8_lossy(&b);
    let usages: Vec<u64> = text
        .split("\n\n")
        .filter(|e| e.starts_with("data: {"))
        .map(|e| {
            serde_json::from_str::<serde_json::Value>(&e[6..]).unwrap()["usage"]
                ["completion_tokens"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(
        usages,
        vec![0, 1, 2, 3, 4, 5, 5],
        "cumulative usage on every chunk, then the usage chunk"
    );
    assert_eq!(
        observe(&b, BodyKind::Sse, ThinkTags::Auto)
            .finish_reason
            .as_deref(),
        Some("length")
    );
}

/// Tokens one long sequence gets from `engine` in `window`.
async fn tokens_in(engine: &thinkgate_sim::engine::Engine, window: Duration) -> usize {
    use thinkgate_sim::engine::{Event, Finish, SeqSpec, Submit};
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    assert!(engine.submit(Submit {
        seqs: vec![SeqSpec {
            choice: 0,
            prompt_tokens: 4,
            block_hashes: Arc::from(Vec::new()),
            target: 100_000,
            finish: Finish::Stop,
        }],
        events: tx,
        arrival: Instant::now(),
    }));
    let end = tokio::time::Instant::now() + window;
    let mut n = 0;
    while let Ok(Some(e)) = tokio::time::timeout_at(end, rx.recv()).await {
        n += usize::from(matches!(e, Event::Token { .. }));
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engines_on_one_host_take_turns_and_engines_alone_do_not() {
    use thinkgate_sim::engine::{Engine, Host};
    let cfg = thinkgate_sim::EngineConfig {
        step_base_ms: 20.0,
        step_per_seq_ms: 0.0,
        ..Default::default()
    };
    let window = Duration::from_millis(600);
    // on compute of their own, two engines step at the engine's pace
    let (a, b) = (
        Engine::start(cfg.clone(), 1.0, None),
        Engine::start(cfg.clone(), 1.0, None),
    );
    let (na, nb) = tokio::join!(tokens_in(&a, window), tokens_in(&b, window));
    // on one host, both busy, each step takes twice as long
    let host = Arc::new(Host::default());
    let (c, d) = (
        Engine::start(cfg.clone(), 1.0, Some(Arc::clone(&host))),
        Engine::start(cfg, 1.0, Some(Arc::clone(&host))),
    );
    let (nc, nd) = tokio::join!(tokens_in(&c, window), tokens_in(&d, window));
    assert_eq!(host.busy(), 2);
    let alone = (na + nb) as f64;
    let shared = (nc + nd) as f64;
    assert!(
        alone >= 40.0,
        "alone: {na} + {nb} tokens in 600 ms of 20 ms steps"
    );
    let ratio = alone / shared;
    assert!(
        (1.6..=2.5).contains(&ratio),
        "{na}+{nb} alone, {nc}+{nd} shared"
    );
}

/// `stream_interval` (vLLM's `--stream-interval`): the same text and usage
/// in about a quarter of the events, the thinking and the answer never in one
/// event.
#[tokio::test]
async fn stream_interval_merges_tokens_into_fewer_events() {
    let c = client();
    let mut got = Vec::new();
    for interval in [1, 4] {
        let (url, s) = sim(|c| {
            c.seed = 9;
            c.engine.stream_interval = interval;
        })
        .await;
        let mut v = chat(&s.cfg.model, "Compute 17 * 3.");
        v["stream"] = true.into();
        v["stream_options"] = serde_json::json!({"include_usage": true});
        let (_, _, body) = post(&c, &format!("{url}/v1/chat/completions"), v).await;
        got.push(observe(&body, BodyKind::Sse, ThinkTags::Auto));
    }
    let (one, four) = (&got[0], &got[1]);
    assert_eq!(one.text, four.text);
    assert_eq!(one.completion_tokens, four.completion_tokens);
    assert_eq!(one.thinking_tokens, four.thinking_tokens);
    let events = |s: &Summary| s.reasoning_chunks + s.visible_chunks;
    assert!(events(one) >= 40, "{}", events(one));
    // each channel ends on an event of its own remainder
    let most = events(one).div_ceil(4) + 2;
    assert!(events(four) <= most, "{} of {}", events(four), events(one));
    assert!(
        events(four) * 4 >= events(one),
        "{} of {}",
        events(four),
        events(one)
    );
}
