//! Micro-benchmarks of the per-chunk and per-request hot path (criterion):
//! SSE framing and the thinking split per MB of stream, the request rewrite
//! (usage injection) per request, and a policy pick among 64 backends.
//!
//! `cargo bench --bench hot_path`; figures in `docs/performance.md`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use std::sync::Arc;
use thinkgate_asu::sse::SseFramer;
use thinkgate_asu::think::TagSplitter;
use thinkgate_asu::{BodyKind, Markers, Observer, ObserverConfig, ThinkTags};
use thinkgate_policies::{Candidate, EngineState, PolicyConfig, RequestInfo};

/// About 1 MiB of a vLLM stream: reasoning deltas, then content, usage, `[DONE]`.
fn stream(field: bool) -> Vec<u8> {
    let mut s = Vec::with_capacity(1 << 20);
    let mut i = 0u64;
    while s.len() < (1 << 20) - 512 {
        let (k, text) = if field {
            if i < 4000 {
                ("reasoning", format!(" step{i}"))
            } else {
                ("content", format!(" word{i}"))
            }
        } else {
            let t = match i {
                0 => "<think>".to_string(),
                4000 => "</think>".to_string(),
                _ => format!(" tok{i}"),
            };
            ("content", t)
        };
        s.extend_from_slice(format!(
            "data: {{\"id\":\"chatcmpl-5f1c\",\"object\":\"chat.completion.chunk\",\"created\":1732300000,\"model\":\"deepseek-r1-distill-qwen-7b\",\"choices\":[{{\"index\":0,\"delta\":{{\"{k}\":\"{text}\"}},\"logprobs\":null,\"finish_reason\":null}}]}}\n\n"
        ).as_bytes());
        i += 1;
    }
    s.extend_from_slice(b"data: {\"id\":\"chatcmpl-5f1c\",\"object\":\"chat.completion.chunk\",\"created\":1732300000,\"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":20,\"completion_tokens\":8000,\"total_tokens\":8020}}\n\ndata: [DONE]\n\n");
    s
}

fn observe(c: &mut Criterion) {
    let mut g = c.benchmark_group("stream");
    for (name, field) in [("reasoning_field", true), ("inline_tags", false)] {
        let data = stream(field);
        g.throughput(Throughput::Bytes(data.len() as u64));
        let cfg = Arc::new(ObserverConfig::default());
        g.bench_with_input(BenchmarkId::new("observer", name), &data, |b, data| {
            b.iter(|| {
                let mut o = Observer::new(Arc::clone(&cfg), BodyKind::Sse);
                for (i, chunk) in data.chunks(4096).enumerate() {
                    o.feed(chunk, i as u64);
                }
                black_box(o.finish(1).thinking_tokens)
            })
        });
        g.bench_with_input(BenchmarkId::new("sse_framer", name), &data, |b, data| {
            b.iter(|| {
                let mut f = SseFramer::default();
                let mut n = 0usize;
                for chunk in data.chunks(4096) {
                    f.feed(chunk, |ev| n += ev.data.len());
                }
                black_box(n)
            })
        });
    }
    // The tag splitter alone, over the text of an inline-tag stream.
    let text: String = (0..60_000)
        .map(|i| match i {
            0 => "<think>".to_string(),
            30_000 => "</think>".to_string(),
            _ => format!(" tok{i}"),
        })
        .collect();
    g.throughput(Throughput::Bytes(text.len() as u64));
    let m = Markers::default();
    g.bench_function("tag_splitter/text", |b| {
        b.iter(|| {
            let mut s = TagSplitter::new(ThinkTags::Auto);
            let mut n = 0usize;
            for piece in text.as_bytes().chunks(7) {
                let piece = std::str::from_utf8(piece).unwrap();
                s.push(ThinkTags::Auto, &m, piece, &mut |_, t: &str| n += t.len());
            }
            black_box(n)
        })
    });
    g.finish();
}

fn rewrite(c: &mut Criterion) {
    let prompt = "Solve step by step. ".repeat(100);
    let body = Bytes::from(format!(
        r#"{{"model":"deepseek-r1-distill-qwen-7b","messages":[{{"role":"system","content":"You are a careful assistant."}},{{"role":"user","content":"{prompt}"}}],"stream":true,"max_tokens":8192,"temperature":0.6}}"#
    ));
    let mut g = c.benchmark_group("request");
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse_features", |b| {
        b.iter(|| black_box(thinkgate::context::request::Features::parse(&body)))
    });
    g.bench_function("inject_include_usage", |b| {
        b.iter(|| black_box(thinkgate::context::request::inject_include_usage(&body)))
    });
    g.finish();
}

fn pick(c: &mut Criterion) {
    let names: Vec<String> = (0..64).map(|i| format!("http://10.0.0.{i}:8000")).collect();
    let cands: Vec<Candidate> = (0..64)
        .map(|i| Candidate {
            index: i,
            name: names[i].clone(),
            pool: "default".into(),
            weight: 1,
            healthy: true,
            inflight: (i * 7 % 13) as u64,
            inflight_tokens: (i * 7919 % 50_000) as u64,
            inflight_thinking: (i % 5) as u64,
            ewma_ttft_s: 0.1 + (i % 9) as f64 * 0.01,
            ewma_tpot_s: 0.02,
            engine: EngineState {
                kv_usage: Some((i % 10) as f64 / 10.0),
                running: Some(10.0),
                waiting: Some(0.0),
                preemptions: Some(0.0),
            },
        })
        .collect();
    let mut g = c.benchmark_group("pick_64_backends");
    g.throughput(Throughput::Elements(1));
    for name in thinkgate_policies::registry::NAMES {
        let cfg: PolicyConfig = toml::from_str(&format!("type = {name:?}")).unwrap();
        let policy = thinkgate_policies::build(&cfg, &names);
        g.bench_function(*name, |b| {
            let mut i = 0u64;
            b.iter(|| {
                i += 1;
                let mut req = RequestInfo {
                    prefix_hash: i,
                    prompt_tokens: 500,
                    ..RequestInfo::default()
                };
                policy.prepare(&mut req);
                black_box(thinkgate_policies::select(policy.as_ref(), &req, &cands, None).unwrap())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, observe, rewrite, pick);
criterion_main!(benches);
