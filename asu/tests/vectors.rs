#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The shared splitter vectors (`shared/vectors`, copied into `tests/vectors`)
//! under every split of their bytes into chunks: every single cut, every byte
//! on its own, every pair of cuts for the short tag texts, and random
//! chunkings by proptest.

use proptest::prelude::*;
use serde_json::Value;
use std::sync::Arc;
use thinkgate_asu::{BodyKind, Observer, ObserverConfig, Summary, ThinkTags};

fn load(name: &str) -> Value {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors/");
    let text = std::fs::read_to_string(format!("{dir}{name}")).expect("vector file");
    serde_json::from_str(&text).expect("vector json")
}

fn cfg(mode: ThinkTags) -> Arc<ObserverConfig> {
    Arc::new(ObserverConfig {
        think_tags: mode,
        capture_text: true,
        ..ObserverConfig::default()
    })
}

/// Observe `body` cut at `cuts` (sorted byte offsets); chunk i arrives at
/// time i ms.
fn observe(cfg: &Arc<ObserverConfig>, body: &[u8], cuts: &[usize]) -> Summary {
    let mut obs = Observer::new(Arc::clone(cfg), BodyKind::Sse);
    let mut prev = 0;
    let mut t = 0;
    for &c in cuts.iter().chain(std::iter::once(&body.len())) {
        obs.feed(&body[prev..c], t * 1_000_000);
        prev = c;
        t += 1;
    }
    obs.finish(t * 1_000_000)
}

fn check_sse_case(case: &Value, mode: ThinkTags, s: &Summary, how: &str) {
    let name = case["name"].as_str().unwrap_or("?");
    let texts = s.text.as_ref().expect("captured text");
    if let Some(per) = case["per_choice"].as_object() {
        for (k, want) in per {
            let i: usize = k.parse().expect("choice index");
            assert_eq!(
                texts[i].reasoning,
                want["reasoning"].as_str().unwrap(),
                "{name} {how} choice {i}"
            );
            assert_eq!(
                texts[i].content,
                want["content"].as_str().unwrap(),
                "{name} {how} choice {i}"
            );
        }
    } else {
        let r: String = texts.iter().map(|t| t.reasoning.as_str()).collect();
        let c: String = texts.iter().map(|t| t.content.as_str()).collect();
        assert_eq!(
            r,
            case["reasoning"].as_str().unwrap(),
            "{name} {how} {mode:?} reasoning"
        );
        assert_eq!(
            c,
            case["content"].as_str().unwrap(),
            "{name} {how} {mode:?} content"
        );
    }
    if let Some(n) = case["reasoning_chunks"].as_u64() {
        assert_eq!(s.reasoning_chunks, n, "{name} {how} reasoning_chunks");
    }
    if let Some(n) = case["content_chunks"].as_u64() {
        assert_eq!(s.visible_chunks, n, "{name} {how} content_chunks");
    }
    assert_eq!(
        s.first_visible_event,
        case["first_visible_event"].as_u64(),
        "{name} {how} first_visible_event"
    );
    if let Some(u) = case.get("usage_completion_tokens") {
        assert_eq!(
            s.usage.and_then(|u| u.completion_tokens),
            u.as_u64(),
            "{name} usage"
        );
    }
    if let Some(f) = case.get("finish_reason") {
        assert_eq!(
            s.finish_reason.as_deref(),
            f.as_str(),
            "{name} {how} finish_reason"
        );
    }
    assert_eq!(
        s.done_marker,
        case["done"].as_bool().unwrap_or(false),
        "{name} {how} done"
    );
    assert_eq!(
        s.error_event,
        case["error"].as_bool().unwrap_or(false),
        "{name} {how} error"
    );
    assert_eq!(s.parse_errors, 0, "{name} {how}");
}

fn sse_modes(case: &Value) -> Vec<ThinkTags> {
    match case["mode"].as_str() {
        Some(m) if m.contains("starts_in_thinking") => {
            vec![ThinkTags::Auto, ThinkTags::StartsInThinking]
        }
        _ => vec![ThinkTags::Auto],
    }
}

#[test]
fn sse_vectors_every_single_cut_and_every_byte() {
    let v = load("sse_streams.json");
    for case in v["cases"].as_array().expect("cases") {
        let body = case["body"].as_str().expect("body").as_bytes();
        for mode in sse_modes(case) {
            let c = cfg(mode);
            check_sse_case(case, mode, &observe(&c, body, &[]), "whole");
            for cut in 1..body.len() {
                check_sse_case(
                    case,
                    mode,
                    &observe(&c, body, &[cut]),
                    &format!("cut {cut}"),
                );
            }
            let every: Vec<usize> = (1..body.len()).collect();
            check_sse_case(case, mode, &observe(&c, body, &every), "every byte");
        }
    }
}

/// The first visible event's time must be the time of the chunk that
/// completed that event, whatever the cuts.
#[test]
fn sse_vectors_first_visible_time_is_the_completing_chunk() {
    let v = load("sse_streams.json");
    for case in v["cases"].as_array().expect("cases") {
        let Some(ev) = case["first_visible_event"].as_u64() else {
            continue;
        };
        let body = case["body"].as_str().expect("body");
        // End offset of data event `ev`: the blank line after it.
        let (i, _) = body
            .match_indices("data: ")
            .nth(ev as usize)
            .expect("event");
        // The event completes at the first byte of its blank line's
        // terminator (a `\r` alone already ends a line).
        let lf = body[i..].find("\n\n").map(|p| i + p + 2);
        let crlf = body[i..].find("\r\n\r\n").map(|p| i + p + 3);
        let end = lf.into_iter().chain(crlf).min().expect("event end");
        let every: Vec<usize> = (1..body.len()).collect();
        let s = observe(&cfg(ThinkTags::Auto), body.as_bytes(), &every);
        // Chunk k (0-based) holds byte k and arrives at k ms; the event is
        // complete with its last byte, at end-1.
        assert_eq!(
            s.t_first_visible_ns,
            Some((end as u64 - 1) * 1_000_000),
            "{}",
            case["name"]
        );
    }
}

fn sse_from_content(pieces: &[&str]) -> String {
    let mut body = String::new();
    for p in pieces {
        let delta =
            serde_json::json!({"choices":[{"index":0,"delta":{"content":p},"finish_reason":null}]});
        body.push_str(&format!("data: {delta}\n\n"));
    }
    body.push_str("data: [DONE]\n\n");
    body
}

fn char_cuts(text: &str) -> Vec<usize> {
    (1..text.len())
        .filter(|&i| text.is_char_boundary(i))
        .collect()
}

fn split_text(text: &str, cuts: &[usize]) -> Vec<String> {
    let mut out = Vec::new();
    let mut prev = 0;
    for &c in cuts.iter().chain(std::iter::once(&text.len())) {
        out.push(text[prev..c].to_string());
        prev = c;
    }
    out
}

fn check_tag_case(case: &Value, pieces: &[String]) {
    let name = case["name"].as_str().unwrap_or("?");
    let refs: Vec<&str> = pieces.iter().map(String::as_str).collect();
    let body = sse_from_content(&refs);
    let mut expectations = vec![];
    if let (Some(r), Some(c)) = (case["reasoning"].as_str(), case["content"].as_str()) {
        expectations.push((ThinkTags::Auto, r.to_string(), c.to_string()));
        // With starts_in_thinking, output without an open tag is thinking.
        let text = case["text"].as_str().unwrap_or("");
        if text.trim_start().starts_with("<think>") || text.contains("</think>") {
            expectations.push((ThinkTags::StartsInThinking, r.to_string(), c.to_string()));
        }
    } else {
        // r1_only_thinking_truncated: our documented auto rule is "visible
        // when the stream ends without a close marker".
        let text = case["text"].as_str().unwrap_or("");
        expectations.push((ThinkTags::Auto, String::new(), text.to_string()));
    }
    if let (Some(r), Some(c)) = (
        case["reasoning_when_starts_in_thinking"].as_str(),
        case["content_when_starts_in_thinking"].as_str(),
    ) {
        expectations.push((ThinkTags::StartsInThinking, r.to_string(), c.to_string()));
    }
    for (mode, r, c) in expectations {
        let s = observe(&cfg(mode), body.as_bytes(), &[]);
        let t = &s.text.as_ref().expect("text")[0];
        assert_eq!(t.reasoning, r, "{name} {mode:?} {pieces:?}");
        assert_eq!(t.content, c, "{name} {mode:?} {pieces:?}");
        let visible = !c.trim().is_empty();
        assert_eq!(
            s.t_first_visible_ns.is_some(),
            visible,
            "{name} {mode:?} {pieces:?}"
        );
        assert_eq!(
            s.t_think_start_ns.is_some(),
            !r.is_empty() || case["text"].as_str().is_some_and(|t| t.contains("think>")),
            "{name} {mode:?} {pieces:?}"
        );
    }
}

#[test]
fn think_tag_vectors_every_one_and_two_cuts() {
    let v = load("think_tags.json");
    for case in v["cases"].as_array().expect("cases") {
        let text = case["text"].as_str().expect("text");
        let cuts = char_cuts(text);
        check_tag_case(case, &[text.to_string()]);
        check_tag_case(case, &split_text(text, &cuts));
        for (i, &a) in cuts.iter().enumerate() {
            check_tag_case(case, &split_text(text, &[a]));
            for &b in &cuts[i + 1..] {
                check_tag_case(case, &split_text(text, &[a, b]));
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn sse_vectors_random_chunking(case_i in 0usize..8, seed_cuts in proptest::collection::vec(any::<u16>(), 0..40)) {
        let v = load("sse_streams.json");
        let cases = v["cases"].as_array().expect("cases");
        let case = &cases[case_i % cases.len()];
        let body = case["body"].as_str().expect("body").as_bytes();
        let mut cuts: Vec<usize> = seed_cuts.iter().map(|c| 1 + (*c as usize) % (body.len() - 1)).collect();
        cuts.sort_unstable();
        cuts.dedup();
        for mode in sse_modes(case) {
            check_sse_case(case, mode, &observe(&cfg(mode), body, &cuts), &format!("cuts {cuts:?}"));
        }
    }

    #[test]
    fn think_tag_vectors_random_chunking(case_i in 0usize..16, seed_cuts in proptest::collection::vec(any::<u16>(), 0..20)) {
        let v = load("think_tags.json");
        let cases = v["cases"].as_array().expect("cases");
        let case = &cases[case_i % cases.len()];
        let text = case["text"].as_str().expect("text");
        let all = char_cuts(text);
        if all.is_empty() { return Ok(()); }
        let mut cuts: Vec<usize> = seed_cuts.iter().map(|c| all[(*c as usize) % all.len()]).collect();
        cuts.sort_unstable();
        cuts.dedup();
        check_tag_case(case, &split_text(text, &cuts));
    }
}

#[test]
fn local_vectors_match_shared_when_present() {
    let shared = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/vectors/");
    for name in ["sse_streams.json", "think_tags.json"] {
        if let Ok(theirs) = std::fs::read_to_string(format!("{shared}{name}")) {
            let ours = std::fs::read_to_string(format!(
                "{}/tests/vectors/{name}",
                env!("CARGO_MANIFEST_DIR")
            ))
            .expect("local copy");
            assert_eq!(
                ours, theirs,
                "tests/vectors/{name} is out of date with shared/vectors"
            );
        }
    }
}
