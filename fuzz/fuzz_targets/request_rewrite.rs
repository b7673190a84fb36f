//! The request rewriter on arbitrary bodies: reading the fields never
//! panics, and usage injection, when it happens, yields JSON that differs
//! from the input only by `stream_options.include_usage: true`.
#![no_main]
use libfuzzer_sys::fuzz_target;
use thinkgate::context::request::{inject_include_usage, Features};

fuzz_target!(|data: &[u8]| {
    let f = Features::parse(data);
    let body = bytes::Bytes::copy_from_slice(data);
    let Some(out) = inject_include_usage(&body) else {
        return;
    };
    assert!(f.parsed, "injected into a body that did not parse");
    // serde_json's `Value` refuses numbers past f64 (`1e999`) that the
    // gateway's field reader skips: then the output must be refused alike.
    let (before, after) = match (
        serde_json::from_slice::<serde_json::Value>(data),
        serde_json::from_slice::<serde_json::Value>(&out),
    ) {
        (Ok(b), Ok(a)) => (b, a),
        (Err(_), Err(_)) => return,
        (b, a) => panic!("input {:?} vs output {:?}", b.is_ok(), a.is_ok()),
    };
    let mut after = after;
    assert_eq!(after["stream_options"]["include_usage"], serde_json::json!(true));
    // Remove what was added; the rest must be the client's request.
    let so = after["stream_options"].as_object_mut().expect("object");
    so.remove("include_usage");
    let empty = so.is_empty();
    if empty && before.get("stream_options").is_none() {
        after.as_object_mut().expect("object").remove("stream_options");
    }
    let mut before = before;
    if let Some(so) = before.get_mut("stream_options").and_then(|v| v.as_object_mut()) {
        so.remove("include_usage");
    }
    assert_eq!(before, after);
});
