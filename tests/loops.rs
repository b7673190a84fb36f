//! Thinking loops against the simulated engine, which can loop (a share of
//! its requests repeat a span of thinking until `max_tokens`): found in the
//! looping streams and in no other, counted, recorded, and acted on when
//! `straggler.on_loop` says so. The real engines' side (a model that loops)
//! is in the conformance suite.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{client, gateway, post, records, send};
use serde_json::Value;
use thinkgate::straggler::LoopAction;
use thinkgate_sim::config::{Flavor, ReasoningMode};

const MODEL: &str = "sim-r1-distill-qwen-7b";
const LOOP_AFTER: u64 = 200;
const LOOP_PERIOD: u64 = 48;
const MAX_TOKENS: u64 = 2500;

/// A fast simulator whose requests loop at `loop_rate`, thinking about 800
/// tokens otherwise.
async fn looping_sim(loop_rate: f64, reasoning: ReasoningMode) -> String {
    let mut cfg = thinkgate_sim::SimConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        time_scale: 200.0,
        reasoning,
        flavor: Flavor::Vllm,
        ..Default::default()
    };
    cfg.workload.think_median = [800.0; 3];
    cfg.workload.think_sigma = [0.3; 3];
    cfg.workload.loop_rate = loop_rate;
    cfg.workload.loop_after = LOOP_AFTER;
    cfg.workload.loop_period = LOOP_PERIOD;
    let (addr, _sim, task) = thinkgate_sim::server::spawn(cfg).await.unwrap();
    std::mem::forget(task);
    format!("http://{addr}")
}

fn chat(i: usize) -> String {
    format!(
        r#"{{"model":"{MODEL}","messages":[{{"role":"user","content":"Problem {i}: compute {i} * 7 + 3."}}],"stream":true,"max_tokens":{MAX_TOKENS}}}"#
    )
}

fn tmp(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("tg-loops-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("records.jsonl");
    let _ = std::fs::remove_file(&p);
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loops_are_found_in_the_looping_streams_and_in_no_other() {
    for reasoning in [
        ReasoningMode::Field,
        ReasoningMode::Tags,
        ReasoningMode::TagsNoOpen,
    ] {
        let up = looping_sim(0.3, reasoning).await;
        let rec = tmp(&format!("find-{reasoning:?}"));
        let r = rec.clone();
        // (the metrics registry is the process's: this test's series are
        // the ones of its own backend)
        let mine = format!("backend=\"{up}\"");
        let gw = gateway(vec![up], move |c| c.records = Some(r)).await;
        let c = client();
        let url = format!("http://{}/v1/chat/completions", gw.proxy_addr);
        for i in 0..60 {
            let got = send(&c, post(url.clone(), &chat(i))).await;
            assert_eq!(got.status, 200);
        }
        let metrics = common::scrape(&gw).await;
        gw.shutdown();
        gw.wait().await;
        let recs = records(&rec);
        assert_eq!(recs.len(), 60);
        // A looping request thinks until max_tokens and never answers; an
        // ordinary one (about 800 tokens) answers. (In the R1 form, with
        // no open tag, text that no close marker ended counts as visible:
        // the request is not answerless, its `length` end tells.)
        let (looping, ordinary): (Vec<&Value>, Vec<&Value>) =
            recs.iter().partition(|r| r["finish_reason"] == "length");
        assert!(
            looping.len() >= 8 && ordinary.len() >= 25,
            "{reasoning:?}: {} looping, {} ordinary",
            looping.len(),
            ordinary.len()
        );
        let false_positives: Vec<_> = ordinary
            .iter()
            .filter(|r| !r["thinking_loop"].is_null())
            .collect();
        assert!(
            false_positives.is_empty(),
            "{reasoning:?}: loops found in ordinary streams: {false_positives:?}"
        );
        let mut delays = Vec::new();
        for r in &looping {
            assert_eq!(r["finish_reason"], "length");
            let l = &r["thinking_loop"];
            assert!(l.is_object(), "{reasoning:?}: loop not found in {r}");
            // the repeated span is 48 tokens; punctuation tokens join the
            // word before them, so it is at most 48 words
            let period = l["period_words"].as_u64().unwrap();
            assert!((20..=LOOP_PERIOD).contains(&period), "period {period}");
            // detection delay, in thinking tokens past the loop's start
            let at = l["thinking_tokens"].as_u64().unwrap();
            delays.push(at - LOOP_AFTER);
        }
        delays.sort_unstable();
        let (lo, hi) = (delays[0], delays[delays.len() - 1]);
        eprintln!(
            "{reasoning:?}: {} looping requests, {} ordinary (0 false positives); detection delay {lo}..{hi} tokens after the loop began",
            looping.len(),
            ordinary.len()
        );
        // period + 0.9 x 160 words, in tokens (a word is 1 to 2 tokens)
        assert!(
            lo >= LOOP_PERIOD && hi <= 2 * (LOOP_PERIOD + 144),
            "delays {delays:?}"
        );
        let counted: f64 = metrics
            .lines()
            .filter(|l| l.starts_with("thinkgate_thinking_loops_total{") && l.contains(&mine))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        assert_eq!(counted as usize, looping.len(), "the counter agrees");
        let answerless: f64 = metrics
            .lines()
            .filter(|l| {
                l.starts_with("thinkgate_requests_total{")
                    && l.contains("outcome=\"answerless\"")
                    && l.contains(&mine)
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        if reasoning != ReasoningMode::TagsNoOpen {
            assert_eq!(answerless as usize, looping.len());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_loop_forces_the_answer_or_ends_the_stream() {
    for action in [LoopAction::ForceAnswer, LoopAction::End] {
        let up = looping_sim(1.0, ReasoningMode::Field).await;
        let rec = tmp(&format!("act-{action:?}"));
        let r = rec.clone();
        let gw = gateway(vec![up], move |c| {
            c.records = Some(r);
            c.straggler.on_loop = action;
        })
        .await;
        let got = send(
            &client(),
            post(
                format!("http://{}/v1/chat/completions", gw.proxy_addr),
                &chat(1),
            ),
        )
        .await;
        assert_eq!(got.status, 200);
        let body = String::from_utf8_lossy(&got.body).to_string();
        assert!(
            body.ends_with("data: [DONE]\n\n"),
            "{action:?}: one clean end"
        );
        gw.shutdown();
        gw.wait().await;
        let recs = records(&rec);
        let r = &recs[0];
        let loop_at = r["thinking_loop"]["thinking_tokens"]
            .as_u64()
            .expect("found");
        let act = &r["actions"][0];
        match action {
            LoopAction::ForceAnswer => {
                assert_eq!(act["action"], "forced_answer", "{r}");
                assert_eq!(act["trigger"], "loop");
                assert_eq!(
                    act["way"], "continuation",
                    "the simulator has no control endpoint"
                );
                assert_eq!(r["outcome"], "completed", "an answer came: {r}");
                assert!(r["visible_tokens"].as_u64().unwrap() > 0);
                assert!(
                    body.contains("\\boxed{"),
                    "the forced answer is the model's"
                );
            }
            _ => {
                assert_eq!(act["action"], "loop_ended", "{r}");
                assert_eq!(r["finish_reason"], "length");
                assert_eq!(r["outcome"], "answerless");
            }
        }
        // acted on soon after the loop was found, far from max_tokens
        let cut = r["thinking_tokens"].as_u64().unwrap();
        assert!(
            cut >= loop_at && cut < loop_at + 200,
            "{action:?}: cut at {cut}, loop at {loop_at}"
        );
        assert!(cut < MAX_TOKENS / 2);
    }
}
