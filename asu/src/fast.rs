//! A scanner for the one shape nearly every streamed event has: a chat
//! chunk with one choice whose delta carries `content` and/or a reasoning
//! field (vLLM, SGLang, llama.cpp, DeepSeek). It finds those fields without
//! building the document, and gives up (`None`) on anything else (several
//! choices, tool calls, usage, errors, logprobs objects, completions'
//! `text`, malformed input), which the caller then parses with `serde_json`.
//!
//! It is at least as strict as `serde_json`: whenever it answers, serde
//! would have parsed the same event into the same fields (a proptest checks
//! it on generated and mutated events).

use std::borrow::Cow;

/// The fields of a simple chat chunk.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Simple<'a> {
    pub index: u64,
    pub content: Option<Cow<'a, str>>,
    pub reasoning: Option<Cow<'a, str>>,
    pub reasoning_content: Option<Cow<'a, str>>,
    pub finish_reason: Option<Cow<'a, str>>,
}

struct Scan<'a> {
    b: &'a [u8],
    s: &'a str,
    i: usize,
}

impl<'a> Scan<'a> {
    fn ws(&mut self) {
        while let Some(c) = self.b.get(self.i) {
            if matches!(c, b' ' | b'\t' | b'\n' | b'\r') {
                self.i += 1;
            } else {
                break;
            }
        }
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        self.ws();
        (self.b.get(self.i) == Some(&c)).then(|| self.i += 1)
    }

    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.b.get(self.i).copied()
    }

    /// A string; borrowed unless it has escapes (then serde unescapes and
    /// validates it).
    fn string(&mut self) -> Option<Cow<'a, str>> {
        self.eat(b'"')?;
        let start = self.i;
        let b = self.b;
        let mut i = start;
        let mut escaped = false;
        // One pass: the closing quote, escapes, and raw control characters
        // (which JSON forbids in strings). A vectorized search measured no
        // faster on these short strings (a token, an id).
        loop {
            match *b.get(i)? {
                b'"' => break,
                b'\\' => {
                    escaped = true;
                    i += 2;
                }
                c if c < 0x20 => return None,
                _ => i += 1,
            }
        }
        self.i = i + 1;
        if !escaped {
            return self.s.get(start..i).map(Cow::Borrowed);
        }
        let quoted = self.s.get(start - 1..i + 1)?;
        serde_json::from_str::<Cow<'a, str>>(quoted).ok()
    }

    /// `null`, or a string.
    fn null_or_string(&mut self) -> Option<Option<Cow<'a, str>>> {
        if self.peek()? == b'n' {
            self.literal(b"null")?;
            return Some(None);
        }
        self.string().map(Some)
    }

    fn literal(&mut self, lit: &[u8]) -> Option<()> {
        self.ws();
        (self.b.get(self.i..self.i + lit.len())? == lit).then(|| self.i += lit.len())
    }

    /// A JSON number, checked against the grammar; its text.
    fn number(&mut self) -> Option<&'a str> {
        self.ws();
        let start = self.i;
        let b = self.b;
        let mut i = self.i;
        if b.get(i) == Some(&b'-') {
            i += 1;
        }
        // the end of the run of digits from `i`, if it is not empty
        let digits = |i: usize| {
            let end = i + b[i.min(b.len())..]
                .iter()
                .take_while(|c| c.is_ascii_digit())
                .count();
            (end > i).then_some(end)
        };
        i = match b.get(i)? {
            b'0' => i + 1,
            b'1'..=b'9' => digits(i)?,
            _ => return None,
        };
        if b.get(i) == Some(&b'.') {
            i = digits(i + 1)?;
        }
        if matches!(b.get(i), Some(b'e' | b'E')) {
            i += 1;
            if matches!(b.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            i = digits(i)?;
        }
        self.i = i;
        self.s.get(start..i)
    }

    /// Skip a scalar value (string, number, true, false, null). Objects and
    /// arrays are not skipped: the caller falls back.
    fn skip_scalar(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(drop),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => self.number().map(drop),
        }
    }

    /// Iterate an object's members: `f(key, scan)` reads the value.
    fn object(&mut self, mut f: impl FnMut(&str, &mut Self) -> Option<()>) -> Option<()> {
        self.eat(b'{')?;
        if self.peek()? == b'}' {
            self.i += 1;
            return Some(());
        }
        loop {
            let key = self.string()?;
            self.eat(b':')?;
            f(&key, self)?;
            match self.peek()? {
                b',' => self.i += 1,
                b'}' => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }
}

/// Set `slot` once; a repeated key makes serde fail, so give up.
fn once<T>(slot: &mut Option<T>, v: T) -> Option<()> {
    if slot.is_some() {
        return None;
    }
    *slot = Some(v);
    Some(())
}

/// Scan `data` (one SSE event's data); `None`: use the full parser.
pub fn simple(data: &[u8]) -> Option<Simple<'_>> {
    let s = std::str::from_utf8(data).ok()?;
    let mut sc = Scan { b: data, s, i: 0 };
    let mut out = Simple::default();
    let mut seen_choices = false;
    let mut seen_keys: Vec<&'static str> = Vec::new();
    sc.object(|key, sc| {
        match key {
            "choices" => {
                if seen_choices {
                    return None;
                }
                seen_choices = true;
                sc.eat(b'[')?;
                choice(sc, &mut out)?;
                sc.eat(b']')
            }
            // Fields the full parser reads: only their empty forms here.
            "usage" | "error" => {
                let k = if key == "usage" { "usage" } else { "error" };
                if seen_keys.contains(&k) {
                    return None;
                }
                seen_keys.push(k);
                sc.literal(b"null")
            }
            "object" => {
                if seen_keys.contains(&"object") {
                    return None;
                }
                seen_keys.push("object");
                sc.null_or_string().map(drop)
            }
            _ => sc.skip_scalar(),
        }
    })?;
    sc.ws();
    (seen_choices && sc.i == data.len()).then_some(out)
}

/// Exactly one choice object with a delta.
fn choice<'a>(sc: &mut Scan<'a>, out: &mut Simple<'a>) -> Option<()> {
    let mut index = None;
    let mut delta = false;
    let mut finish: Option<Option<Cow<'a, str>>> = None;
    sc.object(|key, sc| match key {
        "index" => {
            let n = sc.number()?.parse::<u64>().ok()?;
            once(&mut index, n)
        }
        "delta" => {
            if delta {
                return None;
            }
            delta = true;
            let (mut c, mut r, mut rc, mut role) = (None, None, None, None);
            sc.object(|k, sc| match k {
                "content" => once(&mut c, sc.null_or_string()?),
                "reasoning" => once(&mut r, sc.null_or_string()?),
                "reasoning_content" => once(&mut rc, sc.null_or_string()?),
                "role" => once(&mut role, sc.null_or_string()?),
                // tool_calls, function_call, ...: the full parser.
                _ => None,
            })?;
            out.content = c.flatten();
            out.reasoning = r.flatten();
            out.reasoning_content = rc.flatten();
            Some(())
        }
        "finish_reason" => once(&mut finish, sc.null_or_string()?),
        "logprobs" => sc.literal(b"null"),
        // message, text: not a streamed chat delta.
        "message" | "text" => None,
        _ => sc.skip_scalar(),
    })?;
    if !delta {
        return None;
    }
    out.index = index.unwrap_or(0);
    out.finish_reason = finish.flatten();
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Chunk;
    use proptest::prelude::*;

    /// What the full parser makes of `data`, in the scanner's terms (`None`
    /// when it fails or the shape is not simple).
    fn full(data: &[u8]) -> Result<Option<Simple<'_>>, ()> {
        let c: Chunk<'_> = serde_json::from_slice(data).map_err(|_| ())?;
        if c.usage.is_some() || c.error.is_some() {
            return Ok(None);
        }
        let Some(ch) = c.choices else { return Ok(None) };
        if ch.len() != 1 {
            return Ok(None);
        }
        let ch = ch.into_iter().next().ok_or(())?;
        let Some(d) = ch.delta else { return Ok(None) };
        if d.has_tool_call() || ch.text.is_some() || ch.message.is_some() {
            return Ok(None);
        }
        Ok(Some(Simple {
            index: ch.index,
            content: d.content,
            reasoning: d.reasoning,
            reasoning_content: d.reasoning_content,
            finish_reason: ch.finish_reason,
        }))
    }

    fn check(data: &[u8]) {
        if let Some(f) = simple(data) {
            match full(data) {
                Ok(Some(s)) => assert_eq!(f, s, "{}", String::from_utf8_lossy(data)),
                other => panic!(
                    "scanner answered where serde gives {other:?}: {}",
                    String::from_utf8_lossy(data)
                ),
            }
        }
    }

    #[test]
    fn engines_chunks_take_the_fast_path() {
        let cases: [&[u8]; 5] = [
            br#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1732300000,"model":"m","choices":[{"index":0,"delta":{"reasoning":" so"},"logprobs":null,"finish_reason":null}]}"#,
            br#"{"id":"x","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}"#,
            br#"{"id":"x","choices":[{"index":0,"delta":{"content":"line\nnext \u003cthink\u003e"},"finish_reason":"stop","stop_reason":null}],"usage":null}"#,
            br#"{"choices":[{"finish_reason":null,"index":0,"delta":{"reasoning_content":"hm","content":null}}],"created":1,"id":"x","model":"m","system_fingerprint":"fp","object":"chat.completion.chunk"}"#,
            br#" { "choices" : [ { "delta" : { "content" : "a" } } ] } "#,
        ];
        for c in cases {
            assert!(simple(c).is_some(), "{}", String::from_utf8_lossy(c));
            check(c);
        }
        let s = simple(cases[2]).unwrap();
        assert_eq!(s.content.as_deref(), Some("line\nnext <think>"));
        assert_eq!(s.finish_reason.as_deref(), Some("stop"));
    }

    #[test]
    fn other_shapes_fall_back() {
        let cases: [&[u8]; 9] = [
            br#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0}]}}]}"#,
            br#"{"choices":[{"index":0,"delta":{"content":"a"}},{"index":1,"delta":{"content":"b"}}]}"#,
            br#"{"choices":[],"usage":{"prompt_tokens":1}}"#,
            br#"{"error":{"message":"x"}}"#,
            br#"{"choices":[{"index":0,"text":"a"}]}"#,
            br#"{"choices":[{"index":0,"delta":{"content":"a"},"logprobs":{"content":[]}}]}"#,
            br#"{"choices":[{"index":0,"delta":{"content":"a","content":"b"}}]}"#,
            br#"{"choices":[{"index":0,"delta":{"content":"a"}}]}x"#,
            br#"{"choices":[{"index":-1,"delta":{"content":"a"}}]}"#,
        ];
        for c in cases {
            assert!(simple(c).is_none(), "{}", String::from_utf8_lossy(c));
        }
    }

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z <>/]{0,12}",
            Just("\\n".to_string()),
            Just("\\u003cthink\\u003e".to_string()),
            Just("\\\"q\\\"".to_string()),
            Just("é😀".to_string()),
        ]
    }

    fn field() -> impl Strategy<Value = String> {
        (
            prop_oneof![
                Just("content"),
                Just("reasoning"),
                Just("reasoning_content"),
                Just("role")
            ],
            prop::option::of(text()),
        )
            .prop_map(|(k, v)| match v {
                Some(v) => format!(r#""{k}":"{v}""#),
                None => format!(r#""{k}":null"#),
            })
    }

    fn chunk() -> impl Strategy<Value = String> {
        (
            prop::collection::vec(field(), 0..3),
            0u64..3,
            prop::option::of("[a-z]{1,6}"),
            prop::sample::select(vec!["", r#""usage":null,"#, r#""created":12,"#, r#""x":1.5e3,"#, r#""y":true,"#]),
            prop::sample::select(vec!["", " ", "\n"]),
        )
            .prop_map(|(fields, index, finish, extra, ws)| {
                let fr = finish.map_or("null".to_string(), |f| format!("\"{f}\""));
                format!(
                    r#"{{{extra}"id":"c",{ws}"choices":[{{"index":{index},"delta":{{{}}},"logprobs":null,"finish_reason":{fr}}}]}}"#,
                    fields.join(",")
                )
            })
    }

    proptest! {
        #[test]
        fn scanner_agrees_with_serde(c in chunk()) {
            check(c.as_bytes());
        }

        #[test]
        fn mutated_chunks_never_fool_the_scanner(
            c in chunk(),
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
            cut in any::<bool>(),
        ) {
            let mut b = c.into_bytes();
            let i = at.index(b.len());
            if cut {
                b.truncate(i);
            } else {
                b[i] = byte;
            }
            check(&b);
        }
    }
}
