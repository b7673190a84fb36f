//! Hedging between real engines. One engine is stuck after its response
//! head: vLLM's engine core stopped with SIGSTOP, so its API server answers
//! `200` with the event-stream head and then nothing, as an engine whose
//! scheduler hangs does. The other engine is healthy.

use super::*;

/// A gateway over `a` and `b`: round robin, a hedge 300 ms after the send,
/// as many hedges as requests.
async fn hedging_gateway(a: &Engine, b: &Engine) -> (Gateway, std::path::PathBuf) {
    gateway_for(&[a, b], |cfg| {
        cfg.routing = serde_json::from_value(json!({"type": "round_robin"})).unwrap();
        cfg.straggler.hedge.after_ms = Some(300);
        cfg.straggler.hedge.max_ratio = 1.0;
    })
    .await
}

/// How many of `recs` a hedge won.
fn hedges_won(recs: &[Value]) -> usize {
    recs.iter()
        .filter(|r| {
            r["actions"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x["action"] == "hedge_won"))
        })
        .count()
}

/// Four streamed requests through `via`, each answered in full by the
/// healthy engine `b` well before the stuck one could (it never would).
async fn all_answered_by(c: &HttpClient, via: &str, b: &Engine) {
    for i in 0..4 {
        let t0 = Instant::now();
        let body = chat(true, false);
        let req = call(c, via, "/v1/chat/completions", &body, &[]);
        let s = tokio::time::timeout(Duration::from_secs(20), req)
            .await
            .unwrap_or_else(|_| panic!("request {i} was never answered: not hedged"));
        let took = t0.elapsed();
        assert_eq!(s.status, 200, "request {i}");
        assert_eq!(
            s.headers["x-thinkgate-backend"].to_str().unwrap(),
            b.url,
            "request {i}: the healthy engine answered"
        );
        let canon = wire::canonical_stream(&s.body);
        assert!(
            wire::texts(&canon).1.ends_with(" ansal"),
            "request {i}: {canon}"
        );
        // the stuck engine would never answer; the hedge goes at 300 ms
        assert!(took < Duration::from_secs(5), "request {i} took {took:?}");
    }
}

#[test]
#[ignore = "needs real engines: scripts/engines/install.sh"]
fn a_request_stuck_after_its_head_is_hedged_to_the_other_engine() {
    let (a, b) = (shared(Kind::VllmParser), shared(Kind::VllmInline));
    rt().block_on(async {
        let c = client();
        let (gw, rec) = hedging_gateway(a, b).await;
        let via = format!("http://{}", gw.proxy_addr);
        let stuck = Stopped::new(engine_core(a.pid));
        all_answered_by(&c, &via, b).await;
        drop(stuck);
        // Once it runs again, the stuck engine drops the legs the gateway
        // abandoned: nothing left running or waiting.
        let t0 = Instant::now();
        loop {
            let waiting = engine_metric(&c, a, "vllm:num_requests_waiting").await;
            if !engine_busy(&c, a).await && waiting.unwrap_or(0.0) == 0.0 {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "the stuck engine still holds the abandoned legs"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // and it serves again
        let s = call(&c, &a.url, "/v1/chat/completions", &chat(true, false), &[]).await;
        assert_eq!(s.status, 200);
        let recs = stop(gw, &rec).await;
        assert_eq!(recs.len(), 4);
        let hedged = recs
            .iter()
            .filter(|r| {
                let acts = r["actions"].as_array().cloned().unwrap_or_default();
                let did = |what: &str| {
                    acts.iter()
                        .any(|x| x["action"] == what && x["backend"] == b.url.as_str())
                };
                did("hedge_sent") && did("hedge_won")
            })
            .count();
        // round robin sent some originals to the stuck engine; each of
        // those was hedged to the healthy one and won there
        assert!(hedged >= 1, "no request was hedged: {recs:?}");
        for r in &recs {
            assert_eq!(r["outcome"], "completed", "{r}");
        }
    });
}

/// The same before the response head: vLLM's API server stopped (it
/// accepts connections into its backlog and answers nothing, as an engine
/// that queues without a head, or hangs, does). The hedge timer runs from
/// the send, so these requests are hedged too.
#[test]
#[ignore = "needs real engines: scripts/engines/install.sh"]
fn a_request_without_a_response_head_is_hedged_to_the_other_engine() {
    let (a, b) = (shared(Kind::VllmParser), shared(Kind::LlamaParser));
    rt().block_on(async {
        let c = client();
        let (gw, rec) = hedging_gateway(a, b).await;
        let via = format!("http://{}", gw.proxy_addr);
        let stopped = Stopped::new(a.pid);
        all_answered_by(&c, &via, b).await;
        drop(stopped);
        let recs = stop(gw, &rec).await;
        let won = hedges_won(&recs);
        // round robin's originals alternate: two went to the stopped engine
        assert_eq!(won, 2, "{recs:?}");
        // and it serves again once resumed
        let s = call(&c, &a.url, "/v1/chat/completions", &chat(true, false), &[]).await;
        assert_eq!(s.status, 200);
    });
}

/// llama.cpp with every slot busy: its server sends no response head while
/// a request waits for a free slot, so a request routed there is hedged
/// before its head. A llama.cpp server of its own with one slot, held by a
/// long request sent to it directly; the other engine is vLLM.
///
/// The slot's context is capped at the model's 4,096 tokens whatever `-c`
/// says, and without a context shift a stream ends there: about 3 s on
/// this model, which a loaded CI machine outlasted. With the shift the
/// filler's 30,000 tokens hold the slot for about 30 s.
#[test]
#[ignore = "needs real engines: scripts/engines/install.sh"]
fn a_request_queued_behind_busy_llama_slots_is_hedged_to_the_other_engine() {
    let llama = Engine::start(
        Kind::LlamaParser,
        &["-np", "1", "-c", "4096", "--context-shift"],
    );
    let vllm = shared(Kind::VllmParser);
    rt().block_on(async {
        let c = client();
        // the one slot: a stream of 30,000 tokens, held open, not read
        let filler = open_long(&c, &llama.url, 30_000).await;
        assert_eq!(filler.status(), 200);
        let (gw, rec) = hedging_gateway(&llama, vllm).await;
        let via = format!("http://{}", gw.proxy_addr);
        let mut ttft = Vec::new();
        let mut wrong = Vec::new();
        for i in 0..6 {
            let t0 = Instant::now();
            let body = chat(true, false);
            let req = call(&c, &via, "/v1/chat/completions", &body, &[]);
            let Ok(s) = tokio::time::timeout(Duration::from_secs(20), req).await else {
                wrong.push(format!("request {i} was never answered: not hedged"));
                break;
            };
            ttft.push(t0.elapsed());
            let by = s.headers["x-thinkgate-backend"]
                .to_str()
                .unwrap()
                .to_string();
            if s.status != 200 || by != vllm.url {
                wrong.push(format!("request {i}: {} from {by}, not vLLM", s.status));
            }
        }
        if !wrong.is_empty() {
            let recs = stop(gw, &rec).await;
            panic!("{wrong:?} after {ttft:?}: {recs:#?}");
        }
        // the premise: the slot was busy the whole time
        let req = Request::get(format!("{}/slots", llama.url))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let slots: Value = serde_json::from_slice(&common::send(&c, req).await.body).unwrap();
        assert_eq!(
            slots[0]["is_processing"], true,
            "the filler ended early: nothing was queued ({slots})"
        );
        eprintln!("queued behind a busy llama.cpp slot, hedged at 300 ms: {ttft:?}");
        // the hedge delay plus vLLM's own time, never the filler's
        let slowest = ttft.iter().max().copied().unwrap_or_default();
        assert!(slowest < Duration::from_secs(3), "{ttft:?}");
        drop(filler);
        let recs = stop(gw, &rec).await;
        let won = hedges_won(&recs);
        // round robin's originals alternate: three waited in llama.cpp's queue
        assert_eq!(won, 3, "{recs:?}");
        // the queued legs were dropped: the engine serves again at once
        let s = call(
            &c,
            &llama.url,
            "/v1/chat/completions",
            &chat(true, false),
            &[],
        )
        .await;
        assert_eq!(s.status, 200);
    });
    drop(llama);
}
