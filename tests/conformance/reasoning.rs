//! Reasoning end to end against the real engines: the Responses API
//! forwarded unchanged and measured, thinking loops on a model that loops
//! (found, counted, and ended natively or by a continuation, with the cost
//! of each), and answerless completions.

use super::*;

fn responses(stream: bool) -> Value {
    json!({
        "model": "tiny",
        "input": "What is two plus two?",
        "max_output_tokens": 200,
        "stream": stream,
    })
}

fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_string).collect()
}

/// The thinking words a Responses API stream carried beyond one per event:
/// tokens the engine merged into one event, which the gateway's per-event
/// count cannot see (the chat completions twin is `merged_thinking`).
fn merged_in_responses(body: &[u8]) -> u64 {
    let mut extra = 0;
    for v in wire::data_events(body)
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
    {
        let Some(t) = v["delta"].as_str() else {
            continue;
        };
        match v["type"].as_str() {
            Some("response.reasoning_text.delta") => {
                extra += words(t).len().saturating_sub(1);
            }
            Some("response.output_text.delta") => {
                let before = t.split("</think>").next().unwrap_or("");
                extra += words(&before.replace("<think>", " "))
                    .len()
                    .saturating_sub(1);
                if t.contains("</think>") {
                    break;
                }
            }
            _ => {}
        }
    }
    extra as u64
}

#[test]
#[ignore = "needs real engines: scripts/engines/install.sh"]
fn the_responses_api_is_forwarded_unchanged_and_measured() {
    let think = chain().think_words.len() as u64;
    rt().block_on(async {
        let c = client();
        let mut failures = Vec::new();
        for kind in Kind::ALL {
            let e = shared(kind);
            let (gw, rec) = gateway_for(&[e], |cfg| {
                // a budget the gateway cannot enforce on this API: said, not
                // pretended
                cfg.straggler.thinking_budget = Some(5);
            })
            .await;
            let via = format!("http://{}", gw.proxy_addr);
            let path = "/v1/responses";
            // streamed
            let direct = call(&c, &e.url, path, &responses(true), &[]).await;
            assert_eq!(
                direct.status,
                200,
                "{kind:?}: {}",
                String::from_utf8_lossy(&direct.body)
            );
            let through = call(&c, &via, path, &responses(true), &[]).await;
            let (a, b) = (
                wire::canonical_responses(&direct.body),
                wire::canonical_responses(&through.body),
            );
            if a != b {
                failures.push(format!("{kind:?} stream:\n  direct:  {a}\n  gateway: {b}"));
            }
            if comparable_headers(&direct.headers) != comparable_headers(&through.headers) {
                failures.push(format!("{kind:?} stream: headers differ"));
            }
            // whole
            let direct_json = call(&c, &e.url, path, &responses(false), &[]).await;
            let through_json = call(&c, &via, path, &responses(false), &[]).await;
            let (a, b) = (
                wire::canonical_response_json(&direct_json.body),
                wire::canonical_response_json(&through_json.body),
            );
            if a != b {
                failures.push(format!("{kind:?} json:\n  direct:  {a}\n  gateway: {b}"));
            }
            let recs = stop(gw, &rec).await;
            assert_eq!(recs.len(), 2, "{kind:?}");
            for r in &recs {
                assert_eq!(r["api"], "responses", "{kind:?}: {r}");
                assert_eq!(r["outcome"], "completed", "{kind:?}: {r}");
                assert_eq!(r["actions"][0]["action"], "not_enforced", "{kind:?}: {r}");
                assert!(
                    r.get("thinking_budget").is_none(),
                    "{kind:?}: nothing enforced"
                );
                assert!(
                    r["response_id"].as_str().unwrap().starts_with("resp"),
                    "{r}"
                );
                // the engine's count where it gives one (vLLM with a parser),
                // else the thinking events: the chain's words
                let thinking = r["thinking_tokens"].as_u64().unwrap();
                // (an engine that merged tokens into events, as vLLM does
                // under load, leaves an estimate by characters: a tenth)
                // Below that threshold, the events undercount by the tokens
                // merged into them, which the stream shows.
                let merged = if r["streamed"] == true {
                    merged_in_responses(&through.body)
                } else {
                    0
                };
                let (lo, hi) = if kind.parser() {
                    (think, think + 2)
                } else if r["token_source"] == "usage_split_by_chars" {
                    (think - think / 10, think + think / 10)
                } else {
                    (think - merged - 2, think + 2)
                };
                assert!(
                    (lo..=hi).contains(&thinking),
                    "{kind:?}: thinking tokens {thinking}, want about {think}: {r}"
                );
                assert!(r["visible_tokens"].as_u64().unwrap() >= 12, "{kind:?}: {r}");
            }
            let streamed = &recs[0];
            assert_eq!(streamed["streamed"], true);
            assert!(
                streamed["done_marker"] == true,
                "response.completed ends it: {streamed}"
            );
            let (t0, tv) = (
                streamed["t_think_start_ns"].as_u64().unwrap(),
                streamed["t_first_visible_ns"].as_u64().unwrap(),
            );
            assert!(tv > t0, "{kind:?}: thinking before the first visible token");
            // the gateway's TTFVT agrees with the client's
            let client_ttfvt = through
                .asu
                .t_first_visible_ns
                .expect("visible at the client");
            let gap_ms = (client_ttfvt as f64 - tv as f64).abs() / 1e6;
            assert!(gap_ms < 250.0, "{kind:?}: TTFVT gap {gap_ms} ms");
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    });
}

/// `llamacpp:prompt_tokens_total` of `e` now.
async fn prompt_tokens_total(c: &HttpClient, e: &Engine) -> f64 {
    let req = Request::get(format!("{}/metrics", e.url))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = c.request(req).await.unwrap();
    let text = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&text)
        .lines()
        .find(|l| l.starts_with("llamacpp:prompt_tokens_total"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .expect("llama.cpp exports prompt_tokens_total")
}

fn loop_chat(max_tokens: u64) -> Value {
    let mut v = chat(true, false);
    v["max_tokens"] = max_tokens.into();
    v
}

#[test]
#[ignore = "needs real engines: scripts/engines/install.sh"]
fn thinking_loops_are_found_and_ended_natively_or_by_a_continuation() {
    // The loop model's thinking cycles through its 40 words until
    // max_tokens: a loop of period 40 from its first word.
    let e = Engine::start(Kind::LlamaParser, &["--model", "qwen3-loop"]);
    let answer: Vec<String> = chain()
        .answer_words
        .iter()
        .map(|w| w.trim().to_string())
        .collect();
    rt().block_on(async {
        let c = client();
        // counted, nothing else
        let (gw, rec) = gateway_for(&[&e], |_| {}).await;
        let via = format!("http://{}", gw.proxy_addr);
        let s = call(&c, &via, "/v1/chat/completions", &loop_chat(600), &[]).await;
        assert_eq!(s.status, 200);
        let recs = stop(gw, &rec).await;
        let r = &recs[0];
        let l = &r["thinking_loop"];
        assert_eq!(l["period_words"], 40, "{r}");
        let at = l["at_word"].as_u64().unwrap();
        // 40 words of the first cycle, then 0.9 x 160 matching words
        assert!((180..=190).contains(&at), "found at word {at}");
        assert_eq!(r["outcome"], "answerless", "{r}");
        assert_eq!(r["finish_reason"], "length");
        eprintln!("loop model: loop of 40 words found at word {at} (thinking token {})", l["thinking_tokens"]);

        // acted on: natively (the engine's control endpoint), and by a
        // continuation when the native way is off
        // (way, cut to first answer token ms, prompt tokens processed)
        let mut seen: Vec<(String, f64, f64)> = Vec::new();
        for native in [true, false] {
            let (gw, rec) = gateway_for(&[&e], |cfg| {
                cfg.straggler.on_loop = thinkgate::straggler::LoopAction::ForceAnswer;
                cfg.straggler.native_end = native;
            })
            .await;
            let via = format!("http://{}", gw.proxy_addr);
            let mut prefill = Vec::new();
            for _ in 0..5 {
                let before = prompt_tokens_total(&c, &e).await;
                let s = call(&c, &via, "/v1/chat/completions", &loop_chat(3000), &[]).await;
                assert_eq!(s.status, 200);
                let (_, content) = wire::texts(&wire::canonical_stream(&s.body));
                assert_eq!(words(&content), answer, "native={native}: the model's own answer");
                prefill.push(prompt_tokens_total(&c, &e).await - before);
            }
            let recs = stop(gw, &rec).await;
            for (r, p) in recs.iter().zip(&prefill) {
                let a = &r["actions"][0];
                assert_eq!(a["action"], "forced_answer", "{r}");
                assert_eq!(a["trigger"], "loop");
                assert_eq!(r["outcome"], "completed");
                let way = a["way"].as_str().unwrap().to_string();
                if !native {
                    assert_eq!(way, "continuation", "{r}");
                }
                let t = |k: &str| r[k].as_u64().unwrap() as f64 / 1e6;
                seen.push((way, t("t_first_visible_ns") - t("t_think_end_ns"), *p));
            }
        }
        // The tiny model makes 16,000 tokens a second: a control call that
        // waits for a busy core can find thinking gone on past the grace,
        // and the continuation answers. Most calls arrive in time.
        let of = |way: &str| -> Vec<(f64, f64)> {
            seen.iter().filter(|s| s.0 == way).map(|s| (s.1, s.2)).collect()
        };
        let (native, cont) = (of("native"), of("continuation"));
        for (way, v) in [("natively", &native), ("by continuation", &cont)] {
            let n = v.len().max(1) as f64;
            eprintln!(
                "loop forced {way} ({} requests): cut to first answer token {:.2} ms mean ({:?}), prompt tokens the engine processed per request {:?}",
                v.len(),
                v.iter().map(|x| x.0).sum::<f64>() / n,
                v.iter().map(|x| (x.0 * 100.0).round() / 100.0).collect::<Vec<_>>(),
                v.iter().map(|x| x.1).collect::<Vec<_>>()
            );
        }
        assert!(native.len() >= 3, "the native way answered {} of 5", native.len());
        assert!(
            native.iter().all(|n| n.1 <= 2.0),
            "the native end prefills nothing again: {native:?}"
        );
        assert!(cont.iter().any(|c| c.1 > 100.0), "a continuation prefills the thinking: {cont:?}");
    });
}

#[test]
#[ignore = "needs real engines: scripts/engines/install.sh"]
fn ordinary_streams_show_no_loop_and_thinking_only_streams_are_answerless() {
    rt().block_on(async {
        let c = client();
        for kind in Kind::ALL {
            let e = shared(kind);
            let (gw, rec) = gateway_for(&[e], |_| {}).await;
            let via = format!("http://{}", gw.proxy_addr);
            for _ in 0..5 {
                let s = call(&c, &via, "/v1/chat/completions", &chat(true, false), &[]).await;
                assert_eq!(s.status, 200);
            }
            // 10 tokens: all of them thinking
            let short = loop_chat(10);
            let s = call(&c, &via, "/v1/chat/completions", &short, &[]).await;
            assert_eq!(s.status, 200);
            let recs = stop(gw, &rec).await;
            for r in &recs[..5] {
                assert!(r.get("thinking_loop").is_none(), "{kind:?}: {r}");
                assert_eq!(r["outcome"], "completed", "{kind:?}");
            }
            let r = &recs[5];
            assert_eq!(r["finish_reason"], "length", "{kind:?}: {r}");
            assert_eq!(r["outcome"], "answerless", "{kind:?}: {r}");
            assert!(
                r.get("t_first_visible_ns").is_none_or(Value::is_null),
                "{r}"
            );
        }
    });
}
