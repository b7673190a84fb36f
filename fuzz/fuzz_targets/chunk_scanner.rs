//! The chunk-shape scanner must never answer where serde fails, nor answer
//! differently (the observer relies on it instead of serde).
#![no_main]
use libfuzzer_sys::fuzz_target;
use thinkgate_asu::wire::Chunk;

fuzz_target!(|data: &[u8]| {
    let Some(fast) = thinkgate_asu::fast::simple(data) else {
        return;
    };
    let c: Chunk<'_> = serde_json::from_slice(data).expect("scanner accepted what serde rejects");
    assert!(c.usage.is_none() && c.error.is_none());
    let choices = c.choices.expect("choices");
    assert_eq!(choices.len(), 1);
    let ch = &choices[0];
    let d = ch.delta.as_ref().expect("delta");
    assert!(!d.has_tool_call());
    assert_eq!(ch.index, fast.index);
    assert_eq!(d.content.as_deref(), fast.content.as_deref());
    assert_eq!(d.reasoning.as_deref(), fast.reasoning.as_deref());
    assert_eq!(d.reasoning_content.as_deref(), fast.reasoning_content.as_deref());
    assert_eq!(ch.finish_reason.as_deref(), fast.finish_reason.as_deref());
});
