//! The observer on arbitrary bytes, cut at an arbitrary point, as SSE and
//! as a JSON body: it must never panic, and must account for every byte.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;
use thinkgate_asu::{BodyKind, Observer, ObserverConfig};

fuzz_target!(|data: &[u8]| {
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    let cut = (cut as usize * rest.len()) / 255;
    for strip in [false, true] {
        let cfg = Arc::new(ObserverConfig {
            capture_text: true,
            strip_usage_only: strip,
            max_event_bytes: 4096,
            ..ObserverConfig::default()
        });
        let mut o = Observer::new(Arc::clone(&cfg), BodyKind::Sse);
        o.feed(&rest[..cut], 1);
        o.feed(&rest[cut..], 2);
        assert_eq!(o.fed(), rest.len() as u64);
        assert!(o.boundary() <= o.fed());
        for r in o.strip_ranges() {
            assert!(r.start <= r.end && r.end <= o.fed());
        }
        let s = o.finish(3);
        assert!(s.thinking_tokens + s.visible_tokens <= s.completion_tokens.max(s.thinking_tokens + s.visible_tokens));
        let mut j = Observer::new(cfg, BodyKind::Json);
        j.feed(rest, 1);
        let _ = j.finish(2);
    }
});
