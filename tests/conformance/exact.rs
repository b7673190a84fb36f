//! A thinking budget exact in tokens where vLLM puts several tokens in one
//! event. `--stream-interval 3` makes it do so on every event (under load it
//! does so now and then), so every budget below lands inside a merged event
//! at each of its offsets.

use super::*;

/// Thinking and answer words of one response (streamed or not).
fn thinking_and_answer(kind: Kind, streamed: bool, body: &[u8]) -> (Vec<String>, Vec<String>) {
    let (reasoning, content) = if streamed {
        wire::texts(&wire::canonical_stream(body))
    } else {
        let v = wire::canonical_json(body);
        let m = &v["choices"][0]["message"];
        let r = m["reasoning"]
            .as_str()
            .or(m["reasoning_content"].as_str())
            .unwrap_or("");
        (
            r.to_string(),
            m["content"].as_str().unwrap_or("").to_string(),
        )
    };
    let (reasoning, content) = if kind.parser() {
        (reasoning, content)
    } else {
        let (r, c) = content.split_once("</think>").expect("thinking closed");
        (r.to_string(), c.to_string())
    };
    (words(&reasoning), words(&content))
}

/// Data events of a stream that carry choices and a `usage` member.
fn chunks_with_usage(body: &[u8]) -> usize {
    wire::data_events(body)
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter(|v| v["choices"].as_array().is_some_and(|c| !c.is_empty()))
        .filter(|v| v.get("usage").is_some_and(|u| !u.is_null()))
        .count()
}

#[test]
#[ignore = "needs real engines: scripts/engines/install.sh"]
fn a_budget_is_exact_in_tokens_when_vllm_merges_tokens_into_one_event() {
    let ch = chain();
    let trim = |w: &Vec<String>| w.iter().map(|w| w.trim().to_string()).collect::<Vec<_>>();
    let (think, answer) = (trim(&ch.think_words), trim(&ch.answer_words));
    for kind in [Kind::VllmParser, Kind::VllmInline] {
        let e = Engine::start(kind, &["--stream-interval", "3"]);
        rt().block_on(async {
            let c = client();
            // the engine does merge
            let direct = call(&c, &e.url, "/v1/chat/completions", &chat(true, false), &[]).await;
            assert!(
                merged_thinking(&direct.body) >= 10,
                "{kind:?}: --stream-interval 3 merges thinking tokens"
            );
            let (gw, rec) = gateway_for(&[&e], |_| {}).await;
            let via = format!("http://{}", gw.proxy_addr);
            let mut n = 0;
            // usage: none, include_usage, include_usage + continuous_usage_stats
            let modes = [(0, true), (1, true), (2, true), (0, false)];
            for budget in [1u64, 2, 3, 4, 5, 6, 10, 25] {
                for (usage, streamed) in modes {
                    let mut body = chat(streamed, usage > 0);
                    if usage == 2 {
                        body["stream_options"]["continuous_usage_stats"] = true.into();
                    }
                    let b = budget.to_string();
                    let hdr = [("x-thinkgate-thinking-budget", b.as_str())];
                    let s = call(&c, &via, "/v1/chat/completions", &body, &hdr).await;
                    n += 1;
                    let what = format!("{kind:?} budget {budget} usage {usage} stream {streamed}");
                    assert_eq!(s.status, 200, "{what}");
                    let (seen, words) = thinking_and_answer(kind, streamed, &s.body);
                    assert_eq!(seen, think[..budget as usize], "{what}: thinking, exactly");
                    assert_eq!(words, answer, "{what}: answer");
                    if streamed {
                        // the per-chunk usage the gateway asked for stays
                        // with the gateway; the client's own reaches it
                        let with = chunks_with_usage(&s.body);
                        if usage == 2 {
                            assert!(with > 0, "{what}: the client's per-chunk usage");
                        } else {
                            assert_eq!(with, 0, "{what}: per-chunk usage leaked");
                        }
                        let usage_events = wire::data_events(&s.body)
                            .iter()
                            .filter(|d| d.contains("\"choices\":[]"))
                            .count();
                        assert_eq!(usage_events, usize::from(usage > 0), "{what}: usage event");
                    }
                }
            }
            let recs = stop(gw, &rec).await;
            assert_eq!(recs.len(), n);
            for r in &recs {
                let budget = r["thinking_budget"].as_u64().expect("budget recorded");
                assert_eq!(r["thinking_tokens"], budget, "{kind:?}: record {r}");
            }
        });
    }
}
