//! Quick throughput check of the observer: `cargo run --release -p thinkgate-asu --example observe_speed`.
use std::sync::Arc;
use std::time::Instant;
use thinkgate_asu::{BodyKind, Observer, ObserverConfig};

fn main() {
    let mut body = Vec::new();
    for i in 0..200_000 {
        body.extend_from_slice(format!("data: {{\"id\":\"chatcmpl-b\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"bench\",\"choices\":[{{\"index\":0,\"delta\":{{\"{}\":\" token{i}\"}},\"logprobs\":null,\"finish_reason\":null}}]}}\n\n", if i % 2 == 0 { "reasoning" } else { "content" }).as_bytes());
    }
    let cfg = Arc::new(ObserverConfig::default());
    for piece in [64 * 1024, 16 * 1024, 250] {
        let t = Instant::now();
        let mut o = Observer::new(cfg.clone(), BodyKind::Sse);
        for (i, c) in body.chunks(piece).enumerate() {
            o.feed(c, i as u64);
        }
        let s = o.finish(1);
        let el = t.elapsed().as_secs_f64();
        println!(
            "pieces of {piece}: {:.0} MB/s, {:.0} ns/event ({} events)",
            body.len() as f64 / el / 1e6,
            el * 1e9 / 200_000.0,
            s.reasoning_chunks + s.visible_chunks
        );
    }
}
