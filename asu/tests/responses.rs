#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The Responses API (`/v1/responses`, WIRE.md) through the observer: typed
//! events streamed (split at every byte), and whole bodies.

use std::sync::Arc;
use thinkgate_asu::{BodyKind, Observer, ObserverConfig, Summary, TokenSource};

fn cfg() -> Arc<ObserverConfig> {
    Arc::new(ObserverConfig {
        capture_text: true,
        ..ObserverConfig::default()
    })
}

fn ev(kind: &str, json: &str) -> String {
    format!("event: {kind}\ndata: {json}\n\n")
}

/// A vLLM stream with a reasoning parser: created, a reasoning item, a
/// message item, completed (shapes from vLLM's `streaming_events.py`).
fn vllm_stream(completed_status: &str) -> Vec<String> {
    let resp = |status: &str, usage: &str| {
        format!(
            r#"{{"id":"resp_abc","object":"response","status":"{status}","output":[],"usage":{usage}}}"#
        )
    };
    let mut out = vec![
        ev(
            "response.created",
            &format!(
                r#"{{"type":"response.created","sequence_number":0,"response":{}}}"#,
                resp("in_progress", "null")
            ),
        ),
        ev(
            "response.output_item.added",
            r#"{"type":"response.output_item.added","sequence_number":1,"output_index":0,"item":{"type":"reasoning","id":"rs_1","summary":[],"content":[]}}"#,
        ),
    ];
    for (i, w) in [" thaa", " thab", " thac"].iter().enumerate() {
        out.push(ev(
            "response.reasoning_text.delta",
            &format!(
                r#"{{"type":"response.reasoning_text.delta","sequence_number":{},"item_id":"rs_1","output_index":0,"content_index":0,"delta":"{w}"}}"#,
                2 + i
            ),
        ));
    }
    out.push(ev(
        "response.reasoning_text.done",
        r#"{"type":"response.reasoning_text.done","sequence_number":5,"item_id":"rs_1","output_index":0,"content_index":0,"text":" thaa thab thac"}"#,
    ));
    for (i, w) in ["\n\n", " ansaa", " ansab"].iter().enumerate() {
        let w = w.replace('\n', "\\n");
        out.push(ev(
            "response.output_text.delta",
            &format!(
                r#"{{"type":"response.output_text.delta","sequence_number":{},"item_id":"msg_1","output_index":1,"content_index":0,"delta":"{w}","logprobs":[]}}"#,
                6 + i
            ),
        ));
    }
    let usage = r#"{"input_tokens":12,"output_tokens":8,"total_tokens":20,"input_tokens_details":{"cached_tokens":0},"output_tokens_details":{"reasoning_tokens":4,"tool_output_tokens":0}}"#;
    let end = if completed_status == "incomplete" {
        r#"{"type":"response.completed","sequence_number":9,"response":{"id":"resp_abc","object":"response","status":"incomplete","incomplete_details":{"reason":"max_output_tokens"},"usage":USAGE}}"#.replace("USAGE", usage)
    } else {
        format!(
            r#"{{"type":"response.completed","sequence_number":9,"response":{}}}"#,
            resp(completed_status, usage)
        )
    };
    out.push(ev("response.completed", &end));
    out
}

fn observe_split(body: &[u8], cut: Option<usize>) -> Summary {
    let mut o = Observer::new(cfg(), BodyKind::Sse);
    match cut {
        Some(c) => {
            o.feed(&body[..c], 1_000_000);
            o.feed(&body[c..], 2_000_000);
        }
        None => {
            // one event per millisecond
            let mut t = 0;
            let mut start = 0;
            let s = std::str::from_utf8(body).unwrap();
            for (i, _) in s.match_indices("\n\n") {
                t += 1_000_000;
                o.feed(&body[start..i + 2], t);
                start = i + 2;
            }
        }
    }
    o.finish(100_000_000)
}

#[test]
fn a_streamed_response_is_measured_as_a_chat_stream_is() {
    let body = vllm_stream("completed").concat();
    let s = observe_split(body.as_bytes(), None);
    let t = &s.text.as_ref().unwrap()[0];
    assert_eq!(t.reasoning, " thaa thab thac");
    assert_eq!(t.content, "\n\n ansaa ansab");
    // events 0..: created(1 ms), item added(2), reasoning 3,4,5, done(6),
    // "\n\n"(7, blank), " ansaa"(8)
    assert_eq!(s.t_first_token_ns, Some(3_000_000));
    assert_eq!(s.t_think_start_ns, Some(3_000_000));
    assert_eq!(s.t_think_end_ns, Some(5_000_000));
    assert_eq!(
        s.t_first_visible_ns,
        Some(8_000_000),
        "the blank delta is not visible"
    );
    assert!(s.done_marker, "response.completed ends the stream");
    assert_eq!(s.finish_reason.as_deref(), Some("stop"));
    assert_eq!(s.response_id.as_deref(), Some("resp_abc"));
    assert_eq!(s.token_source, TokenSource::Usage);
    assert_eq!((s.prompt_tokens, s.completion_tokens), (Some(12), 8));
    assert_eq!((s.thinking_tokens, s.visible_tokens), (4, 4));
    assert_eq!(s.reasoning_chunks, 3);
    assert!(!s.error_event);
    assert_eq!(s.parse_errors, 0);
}

#[test]
fn every_split_of_the_bytes_gives_the_same_text_and_counts() {
    let body = vllm_stream("completed").concat();
    let whole = observe_split(body.as_bytes(), Some(0));
    for cut in 1..body.len() {
        let s = observe_split(body.as_bytes(), Some(cut));
        assert_eq!(s.text, whole.text, "cut {cut}");
        assert_eq!(s.thinking_tokens, whole.thinking_tokens, "cut {cut}");
        assert_eq!(s.reasoning_chunks, whole.reasoning_chunks, "cut {cut}");
        assert!(s.done_marker && !s.cut_mid_event, "cut {cut}");
    }
}

#[test]
fn an_incomplete_response_reads_as_length() {
    let body = vllm_stream("incomplete").concat();
    let s = observe_split(body.as_bytes(), None);
    assert_eq!(s.finish_reason.as_deref(), Some("length"));
    assert!(s.done_marker);
}

#[test]
fn a_failed_response_and_an_error_event_are_errors() {
    let mut events = vllm_stream("failed");
    let s = observe_split(events.concat().as_bytes(), None);
    assert!(s.error_event);
    assert_eq!(s.finish_reason.as_deref(), Some("error"));
    events.truncate(4);
    events.push(ev(
        "error",
        r#"{"type":"error","code":"server_error","message":"boom","sequence_number":4}"#,
    ));
    let s = observe_split(events.concat().as_bytes(), None);
    assert!(s.error_event && !s.done_marker);
}

#[test]
fn inline_thinking_in_output_text_is_split_by_its_tags() {
    // vLLM without a reasoning parser: the whole text is output_text.
    let deltas = ["<think>", " thaa", " thab", "</think>", "\n\n", " ansaa"];
    let mut body = String::new();
    for d in deltas {
        body += &ev(
            "response.output_text.delta",
            &format!(
                r#"{{"type":"response.output_text.delta","delta":"{}"}}"#,
                d.replace('\n', "\\n")
            ),
        );
    }
    body += &ev(
        "response.completed",
        r#"{"type":"response.completed","response":{"status":"completed","usage":{"input_tokens":3,"output_tokens":6}}}"#,
    );
    let s = observe_split(body.as_bytes(), None);
    let t = &s.text.as_ref().unwrap()[0];
    assert_eq!(t.reasoning, " thaa thab");
    assert_eq!(t.content, "\n\n ansaa");
    assert_eq!(s.t_think_start_ns, Some(1_000_000));
    assert_eq!(s.t_first_visible_ns, Some(6_000_000));
    assert_eq!(s.token_source, TokenSource::UsageSplitByChunks);
    assert_eq!(s.thinking_tokens, 2);
}

/// vLLM under load merges tokens into events: counting events would miss
/// most of the thinking, so the usage's tokens are split by characters.
#[test]
fn merged_tokens_are_counted_from_usage_split_by_characters() {
    let think: Vec<String> = (0..20).map(|i| format!(" th{i:02}")).collect();
    let deltas = [
        format!("<think>{}", think[..8].concat()),
        format!(
            "{}</think>\n\n ansaa ansab ansac ansad ansae",
            think[8..].concat()
        ),
    ];
    let mut body = String::new();
    for d in &deltas {
        body += &ev(
            "response.output_text.delta",
            &format!(
                r#"{{"type":"response.output_text.delta","delta":"{}"}}"#,
                d.replace('\n', "\\n")
            ),
        );
    }
    // <think>, 20 thinking tokens, </think>, "\n\n", 5 answer tokens, the end
    body += &ev(
        "response.completed",
        r#"{"type":"response.completed","response":{"status":"completed","usage":{"input_tokens":3,"output_tokens":29}}}"#,
    );
    let s = observe_split(body.as_bytes(), None);
    assert_eq!(s.reasoning_chunks, 2);
    assert_eq!(s.token_source, TokenSource::UsageSplitByChars);
    assert!(
        (19..=21).contains(&s.thinking_tokens),
        "{}",
        s.thinking_tokens
    );
    assert_eq!(s.thinking_tokens + s.visible_tokens, 29);
}

#[test]
fn events_without_event_lines_are_read_by_their_type() {
    let body = vllm_stream("completed")
        .iter()
        .map(|e| {
            e.lines()
                .filter(|l| !l.starts_with("event:"))
                .collect::<Vec<_>>()
                .join("\n")
                + "\n\n"
        })
        .collect::<String>();
    let s = observe_split(body.as_bytes(), None);
    assert_eq!(s.text.as_ref().unwrap()[0].reasoning, " thaa thab thac");
    assert_eq!(s.t_first_visible_ns, Some(8_000_000));
    assert!(s.done_marker);
    assert_eq!(s.thinking_tokens, 4);
}

#[test]
fn a_tool_call_is_visible_output() {
    let body = [
        ev(
            "response.reasoning_text.delta",
            r#"{"type":"response.reasoning_text.delta","delta":" hm"}"#,
        ),
        ev(
            "response.function_call_arguments.delta",
            r#"{"type":"response.function_call_arguments.delta","item_id":"fc_1","output_index":1,"delta":"{\"city\":"}"#,
        ),
        ev(
            "response.completed",
            r#"{"type":"response.completed","response":{"status":"completed"}}"#,
        ),
    ]
    .concat();
    let s = observe_split(body.as_bytes(), None);
    assert_eq!(s.t_first_visible_ns, Some(2_000_000));
}

#[test]
fn an_answerless_stream_has_no_first_visible_token() {
    let body = [
        ev(
            "response.reasoning_text.delta",
            r#"{"type":"response.reasoning_text.delta","delta":" thaa"}"#,
        ),
        ev(
            "response.completed",
            r#"{"type":"response.completed","response":{"status":"completed","usage":{"input_tokens":3,"output_tokens":2,"output_tokens_details":{"reasoning_tokens":2}}}}"#,
        ),
    ]
    .concat();
    let s = observe_split(body.as_bytes(), None);
    assert!(s.done_marker);
    assert_eq!(s.t_first_visible_ns, None);
    assert!(s.answerless());
}

#[test]
fn a_whole_response_body_is_read_item_by_item() {
    let body = br#"{"id":"resp_1","object":"response","status":"completed","output":[
        {"type":"reasoning","id":"rs","summary":[],"content":[{"type":"reasoning_text","text":"let me see"}]},
        {"type":"message","id":"m","role":"assistant","content":[{"type":"output_text","text":"Four.","annotations":[]}]}],
        "usage":{"input_tokens":5,"output_tokens":10,"output_tokens_details":{"reasoning_tokens":7}}}"#;
    let mut o = Observer::new(cfg(), BodyKind::Json);
    o.feed(body, 1_000_000);
    let s = o.finish(9_000_000);
    let t = &s.text.as_ref().unwrap()[0];
    assert_eq!(
        (t.reasoning.as_str(), t.content.as_str()),
        ("let me see", "Four.")
    );
    assert_eq!((s.thinking_tokens, s.visible_tokens), (7, 3));
    assert_eq!(s.response_id.as_deref(), Some("resp_1"));
    assert_eq!(s.finish_reason.as_deref(), Some("stop"));
    assert_eq!(s.t_first_visible_ns, Some(9_000_000));
    assert!(!s.answerless());
    let only_thinking = br#"{"object":"response","status":"completed","output":[{"type":"reasoning","content":[{"type":"reasoning_text","text":"hm"}]}]}"#;
    let mut o = Observer::new(cfg(), BodyKind::Json);
    o.feed(only_thinking, 1);
    assert!(o.finish(2).answerless());
}

#[test]
fn sglang_zero_reasoning_tokens_do_not_erase_seen_thinking() {
    let body = concat!(
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"reasoning_content\":\"a\"}}]}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"reasoning_content\":\"b\"}}]}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"c\"},\"finish_reason\":\"stop\"}]}\n\n",
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":3,\"reasoning_tokens\":0}}\n\n",
        "data: [DONE]\n\n",
    );
    let s = observe_split(body.as_bytes(), None);
    assert_eq!((s.thinking_tokens, s.visible_tokens), (2, 1));
    assert_eq!(s.token_source, TokenSource::UsageSplitByChunks);
}

/// An engine's error body (llama.cpp refusing a prompt past its context)
/// is not an answer: no TTFVT, whereas a whole answer's TTFVT is its E2E.
#[test]
fn a_whole_error_body_has_no_first_visible_token() {
    let body = br#"{"error":{"code":400,"message":"request (4201 tokens) exceeds the available context size (4096 tokens), try increasing it","type":"exceed_context_size_error","n_prompt_tokens":4201,"n_ctx":4096}}"#;
    let mut o = Observer::new(cfg(), BodyKind::Json);
    o.feed(body, 1_000_000);
    let s = o.finish(9_000_000);
    assert!(s.error_event);
    assert_eq!(s.t_first_visible_ns, None);
    assert_eq!(s.ttfvt(), None);
    assert_eq!(s.e2e(), 0.009);
}
