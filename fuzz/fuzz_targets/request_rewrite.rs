//! The request rewriter on arbitrary bodies: reading the fields never
//! panics, and usage injection, when it happens, yields JSON that differs
//! from the input only by `stream_options.include_usage: true`.
#![no_main]
use libfuzzer_sys::fuzz_target;
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use thinkgate::context::request::{inject_include_usage, Features};

/// The oracle: a JSON tree as an engine's parser (Python's `json`) reads it.
/// `serde_json::Value` itself is not one here: with the `raw_value` feature
/// (which thinkgate enables) it reads an object whose first key is spelled
/// `$serde_json::private::RawValue` as a marker, not as data, and refuses
/// `{"$serde_json::private::RawValue":1}`, a body every engine accepts.
/// Moving that key to second place (as usage injection does) made the
/// oracle disagree with itself; this visitor has no private keys.
struct Plain(Value);

impl<'de> Deserialize<'de> for Plain {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(PlainVisitor).map(Plain)
    }
}

struct PlainVisitor;

impl<'de> Visitor<'de> for PlainVisitor {
    type Value = Value;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(v.into())
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(v.into())
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(Plain(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        // Last duplicate wins, as in Python's `json` and in serde_json.
        let mut out = Map::new();
        while let Some((k, Plain(v))) = map.next_entry::<String, Plain>()? {
            out.insert(k, v);
        }
        Ok(Value::Object(out))
    }
}

fn parse(data: &[u8]) -> Result<Value, serde_json::Error> {
    serde_json::from_slice::<Plain>(data).map(|p| p.0)
}

fuzz_target!(|data: &[u8]| {
    let f = Features::parse(data);
    let body = bytes::Bytes::copy_from_slice(data);
    let Some(out) = inject_include_usage(&body) else {
        return;
    };
    assert!(f.parsed, "injected into a body that did not parse");
    // serde_json refuses numbers past f64 (`1e999`) that the gateway's
    // field reader skips: then the output must be refused alike.
    let (before, after) = match (parse(data), parse(&out)) {
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
