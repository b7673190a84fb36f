//! Removes the usage-only event that the gateway caused by injecting
//! `stream_options.include_usage`, so the client receives exactly the bytes it
//! would have received without the gateway.
//!
//! Complete events are released as soon as they are complete; the bytes of
//! an event still in progress are held until it completes (it might be the
//! usage event). When nothing is held and the chunk ends on an event
//! boundary (the usual case) the chunk passes through without a copy.
//! An event in progress past the observer's event cap cannot be the usage
//! event (the observer drops oversized events), so its bytes are released
//! as they come: a stream holds at most the cap, whatever the upstream sends.
//!
//! Engines also *move* fields when usage is on: vLLM puts
//! `system_fingerprint` on the terminal chunks (those with a
//! `finish_reason`) only without usage, and llama.cpp moves `timings` from
//! the terminal chunk to the usage chunk. So from the first terminal event
//! on, the stream is held until the usage event arrives (the engine sends it
//! right after) and the fields of the usage event that a terminal event
//! lacks are put back on it, before its closing brace, where the engine
//! writes them. A stream that ends without a usage event, or holds more than
//! the cap, is released unchanged.

use bytes::{Bytes, BytesMut};
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::ops::Range;
use thinkgate_asu::Observer;

/// The observer's event cap: a longer event in progress is not held.
const MAX_HELD: usize = thinkgate_asu::sse::SseFramer::DEFAULT_MAX_EVENT_BYTES;

/// Fields of a usage event that are never moved onto terminal chunks: the
/// identity every chunk has, and what makes it the usage event.
pub const NOT_MOVED: [&str; 6] = ["id", "object", "created", "model", "choices", "usage"];

#[derive(Debug, Default)]
pub struct UsageStripper {
    held: BytesMut,
    /// Absolute offset of `held[0]`.
    held_start: u64,
    /// A stripped event ended in `\r` at the end of a chunk: its `\n` may
    /// arrive at this offset and belongs to it.
    swallow_lf_at: Option<u64>,
    /// Terminal events held for the usage event's fields.
    terminal: Vec<Range<u64>>,
    /// The observer's last event boundary.
    boundary: u64,
    /// Every choice had finished at the last `process`.
    all_finished: bool,
}

/// How long terminal events wait for the usage event. Engines send it right
/// after them (the same step of the same request); a stalled engine must
/// not delay what the client has been sent already, visible text merged
/// into a terminal chunk included: past this, they go as they came.
pub const HOLD_FOR_USAGE: std::time::Duration = std::time::Duration::from_millis(2);

/// How long terminal events that carry no text (the usual finish chunk:
/// an empty delta and a `finish_reason`) wait for the usage event. Holding
/// them delays no token the client would see, and an engine sharing its
/// cores can take more than `HOLD_FOR_USAGE` between the two writes (vLLM
/// with `n: 2` on a busy 2-core host lost `system_fingerprint` that way).
pub const HOLD_EMPTY_FOR_USAGE: std::time::Duration = std::time::Duration::from_millis(100);

/// How long textless terminal events wait once every choice has finished.
/// Nothing the model writes can follow them, only the usage event and
/// `[DONE]`, which a client waits for anyway: holding them costs the client
/// nothing, and a loaded engine took more than `HOLD_EMPTY_FOR_USAGE`
/// between its last finish chunk and the usage event (`n: 2`, conformance
/// under CI load). The bound only matters for an engine that stalls there.
pub const HOLD_LAST_FOR_USAGE: std::time::Duration = std::time::Duration::from_secs(2);

impl UsageStripper {
    /// `chunk` holds the bytes at absolute offsets `start..` just fed to
    /// `obs` (which strips usage-only events).
    pub fn process(&mut self, chunk: Bytes, start: u64, obs: &Observer) -> Bytes {
        let (boundary, strip) = (obs.boundary(), obs.strip_ranges());
        self.boundary = boundary;
        self.all_finished = obs.every_choice_finished();
        let terminal = obs.terminal_ranges();
        let end = start + chunk.len() as u64;
        // nothing to cut or hold: the chunk ends on an event boundary, or
        // inside an event already past the cap (a huge line passes without
        // a copy)
        if self.held.is_empty()
            && strip.is_empty()
            && terminal.is_empty()
            && (boundary == end || end.saturating_sub(boundary) > MAX_HELD as u64)
            && self.swallow_lf_at.is_none()
        {
            return chunk;
        }
        if self.held.is_empty() {
            self.held_start = start;
        }
        self.held.extend_from_slice(&chunk);
        self.terminal.extend_from_slice(terminal);
        let mut release_to = boundary;
        let mut moving = false;
        if let Some(first) = self.terminal.first() {
            if !strip.is_empty() {
                moving = true;
            } else if self.held.len() > MAX_HELD || obs.peek().done_marker {
                // no usage event is coming (it precedes `[DONE]`)
                self.terminal.clear();
            } else {
                release_to = release_to.min(first.start);
            }
        }
        let mut release =
            (release_to.saturating_sub(self.held_start) as usize).min(self.held.len());
        if self.held.len() - release > MAX_HELD && strip.iter().all(|r| r.end <= boundary) {
            release = self.held.len();
        }
        let region = self.held.split_to(release);
        if self.held.is_empty() && self.held.capacity() > 64 << 10 {
            // what is left of a large hold's buffer would keep all of it
            // alive for the rest of the stream
            self.held = BytesMut::new();
        }
        let region_start = self.held_start;
        self.held_start += release as u64;
        let mut cuts: Vec<Range<u64>> = strip.to_vec();
        if let Some(at) = self.swallow_lf_at {
            if at < region_start + region.len() as u64 {
                self.swallow_lf_at = None;
                if at >= region_start && region.get((at - region_start) as usize) == Some(&b'\n') {
                    cuts.push(at..at + 1);
                }
            }
        }
        for r in strip {
            if r.end == end && r.end > r.start && chunk.last() == Some(&b'\r') {
                self.swallow_lf_at = Some(r.end);
            }
        }
        let inserts = if moving {
            let terminal = std::mem::take(&mut self.terminal);
            moved_fields(&region, region_start, strip, &terminal)
        } else {
            Vec::new()
        };
        if cuts.is_empty() && inserts.is_empty() {
            return region.freeze();
        }
        cuts.sort_by_key(|r| r.start);
        let mut out = BytesMut::with_capacity(region.len() + 256);
        let mut pos = region_start;
        let mut ins = inserts.into_iter().peekable();
        let region_end = region_start + region.len() as u64;
        let copy_to =
            |out: &mut BytesMut,
             pos: u64,
             to: u64,
             ins: &mut std::iter::Peekable<std::vec::IntoIter<(u64, Vec<u8>)>>| {
                let mut p = pos;
                while let Some((at, _)) = ins.peek() {
                    if *at >= to {
                        break;
                    }
                    if let Some((at, bytes)) = ins.next() {
                        let at = at.max(p);
                        out.extend_from_slice(
                            &region[(p - region_start) as usize..(at - region_start) as usize],
                        );
                        out.extend_from_slice(&bytes);
                        p = at;
                    }
                }
                if to > p {
                    out.extend_from_slice(
                        &region[(p - region_start) as usize..(to - region_start) as usize],
                    );
                }
            };
        for r in cuts {
            let (a, b) = (r.start.max(pos), r.end.min(region_end));
            if a > pos {
                copy_to(&mut out, pos, a, &mut ins);
            }
            pos = pos.max(b);
        }
        if pos < region_end {
            copy_to(&mut out, pos, region_end, &mut ins);
        }
        out.freeze()
    }

    /// Whether terminal events wait for the usage event.
    pub fn holding(&self) -> bool {
        !self.terminal.is_empty()
    }

    /// How long the held events may wait for the usage event: briefly when
    /// they carry text or a tool call, longer when they only end choices,
    /// longest once every choice has ended.
    pub fn hold_for(&self) -> std::time::Duration {
        let n = (self.boundary.saturating_sub(self.held_start) as usize).min(self.held.len());
        let mut text = false;
        let mut framer = thinkgate_asu::sse::SseFramer::new(MAX_HELD);
        framer.feed(&self.held[..n], |ev| {
            text |= carries_text(ev.data);
        });
        if text {
            HOLD_FOR_USAGE
        } else if self.all_finished {
            HOLD_LAST_FOR_USAGE
        } else {
            HOLD_EMPTY_FOR_USAGE
        }
    }

    /// Stop waiting for the usage event: the complete events held go as
    /// they came (an event still arriving stays held).
    pub fn release_held(&mut self) -> Bytes {
        self.terminal.clear();
        let n = (self.boundary.saturating_sub(self.held_start) as usize).min(self.held.len());
        self.held_start += n as u64;
        self.held.split_to(n).freeze()
    }

    /// End of the body: release whatever is held (a partial event, or
    /// terminal events that no usage event followed, as received).
    pub fn flush(&mut self) -> Bytes {
        self.terminal.clear();
        std::mem::take(&mut self.held).freeze()
    }
}

/// The JSON object in one complete event's bytes (its `data:` line) and
/// the offset of its closing brace within them.
fn event_object(ev: &[u8]) -> Option<(serde_json::Map<String, serde_json::Value>, usize)> {
    let (data, json) = data_line(ev)?;
    let close = memchr::memrchr(b'}', json)?;
    let map = serde_json::from_slice(json).ok()?;
    Some((map, data + close))
}

/// The `data:` line of one complete event (engines write one JSON line), and
/// its offset in the event.
fn data_line(ev: &[u8]) -> Option<(usize, &[u8])> {
    let data = memchr::memmem::find(ev, b"data:")? + 5;
    let line_end = memchr::memchr(b'\n', &ev[data..]).map_or(ev.len(), |i| data + i);
    Some((data, &ev[data..line_end]))
}

/// Where to insert what: for each terminal event in `region`, the fields of
/// the stripped usage event that it lacks, as `,"key":value` before its
/// closing brace (absolute offsets).
fn moved_fields(
    region: &[u8],
    region_start: u64,
    strip: &[Range<u64>],
    terminal: &[Range<u64>],
) -> Vec<(u64, Vec<u8>)> {
    let slice = |r: &Range<u64>| {
        let a = r.start.checked_sub(region_start)? as usize;
        let b = r.end.checked_sub(region_start)? as usize;
        region.get(a..b)
    };
    let Some((order, raw)) = strip.iter().find_map(|r| {
        let (_, json) = data_line(slice(r)?)?;
        // the keys in the engine's order, the values as the engine wrote them
        let order: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(json).ok()?;
        let raw: HashMap<String, Box<RawValue>> = serde_json::from_slice(json).ok()?;
        Some((order, raw))
    }) else {
        return Vec::new();
    };
    let extra: Vec<(&String, &RawValue)> = order
        .keys()
        .filter(|k| !NOT_MOVED.contains(&k.as_str()))
        .filter_map(|k| Some((k, &**raw.get(k)?)))
        .collect();
    if extra.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    for t in terminal {
        let Some((have, close)) = slice(t).and_then(event_object) else {
            continue;
        };
        let mut add = Vec::new();
        for (k, v) in &extra {
            if !have.contains_key(k.as_str()) {
                add.push(b',');
                if serde_json::to_writer(&mut add, k).is_err() {
                    continue;
                }
                add.push(b':');
                add.extend_from_slice(v.get().as_bytes());
            }
        }
        if !add.is_empty() {
            out.push((t.start + close as u64, add));
        }
    }
    out.sort_by_key(|x| x.0);
    out
}

/// An event with output the client would see: any non-empty text, or a
/// tool call (anything unreadable counts as text: it is not held long).
fn carries_text(data: &[u8]) -> bool {
    if data == b"[DONE]" {
        return false;
    }
    let Ok(c) = serde_json::from_slice::<thinkgate_asu::wire::Chunk<'_>>(data) else {
        return true;
    };
    c.choices.iter().flatten().any(|ch| {
        ch.text.as_deref().is_some_and(|t| !t.is_empty())
            || ch.delta.as_ref().is_some_and(|d| {
                d.content.as_deref().is_some_and(|t| !t.is_empty())
                    || d.reasoning_text().is_some()
                    || d.has_tool_call()
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_finish_chunks_without_text_wait_long_for_the_usage_event() {
        let empty =
            br#"{"id":"x","choices":[{"index":0,"delta":{"content":""},"finish_reason":"stop"}]}"#;
        let bare = br#"{"id":"x","choices":[{"index":1,"delta":{},"finish_reason":"length"}]}"#;
        let text =
            br#"{"id":"x","choices":[{"index":0,"delta":{"content":"!"},"finish_reason":"stop"}]}"#;
        let tool = br#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0}]},"finish_reason":"tool_calls"}]}"#;
        let completion = br#"{"choices":[{"index":0,"text":"a","finish_reason":"length"}]}"#;
        assert!(!carries_text(empty) && !carries_text(bare) && !carries_text(b"[DONE]"));
        assert!(carries_text(text) && carries_text(tool) && carries_text(completion));
        assert!(
            carries_text(b"not json"),
            "what cannot be read is not held long"
        );
    }
    use std::sync::Arc;
    use thinkgate_asu::{BodyKind, Observer, ObserverConfig};

    fn run(body: &[u8], cuts: &[usize]) -> Vec<u8> {
        let cfg = Arc::new(ObserverConfig {
            strip_usage_only: true,
            ..ObserverConfig::default()
        });
        let mut obs = Observer::new(cfg, BodyKind::Sse);
        let mut st = UsageStripper::default();
        let mut out = Vec::new();
        let mut prev = 0;
        for &c in cuts.iter().chain(std::iter::once(&body.len())) {
            let chunk = Bytes::copy_from_slice(&body[prev..c]);
            obs.feed(&chunk, 0);
            out.extend_from_slice(&st.process(chunk, prev as u64, &obs));
            prev = c;
        }
        out.extend_from_slice(&st.flush());
        out
    }

    #[test]
    fn strips_usage_event_under_every_cut() {
        for nl in ["\n", "\r\n"] {
            let ev = |d: &str| format!("data: {d}{nl}{nl}");
            let a = ev(r#"{"choices":[{"index":0,"delta":{"content":"x"}}]}"#);
            let u = ev(r#"{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1}}"#);
            let d = ev("[DONE]");
            let body = format!(": ping{nl}{nl}{a}{u}{d}");
            let want = format!(": ping{nl}{nl}{a}{d}");
            assert_eq!(String::from_utf8_lossy(&run(body.as_bytes(), &[])), want);
            for i in 1..body.len() {
                assert_eq!(
                    String::from_utf8_lossy(&run(body.as_bytes(), &[i])),
                    want,
                    "cut {i}"
                );
            }
            let every: Vec<usize> = (1..body.len()).collect();
            assert_eq!(String::from_utf8_lossy(&run(body.as_bytes(), &every)), want);
        }
    }

    #[test]
    fn an_oversized_event_in_progress_is_not_held() {
        let mut obs = Observer::new(
            Arc::new(ObserverConfig {
                strip_usage_only: true,
                ..ObserverConfig::default()
            }),
            BodyKind::Sse,
        );
        let mut st = UsageStripper::default();
        let piece = Bytes::from(vec![b'x'; 64 << 10]);
        let mut fed = 6u64;
        obs.feed(b"data: ", 0);
        let mut out = st.process(Bytes::from_static(b"data: "), 0, &obs).len();
        let mut most_held = 0;
        let mut copies_past_cap = 0;
        for _ in 0..(16 << 20) / piece.len() {
            obs.feed(&piece, 0);
            let passed = st.process(piece.clone(), fed, &obs);
            fed += piece.len() as u64;
            if fed > 2 * (MAX_HELD + piece.len()) as u64 && passed.as_ptr() != piece.as_ptr() {
                copies_past_cap += 1;
            }
            out += passed.len();
            most_held = most_held.max(st.held.len());
        }
        assert_eq!(copies_past_cap, 0, "past the cap a chunk passes as is");
        assert!(most_held <= MAX_HELD + piece.len(), "held {most_held}");
        assert!(out as u64 >= fed - (MAX_HELD + piece.len()) as u64);
        let usage =
            b"\n\ndata: {\"choices\":[],\"usage\":{\"completion_tokens\":1}}\n\ndata: [DONE]\n\n";
        obs.feed(usage, 0);
        out += st.process(Bytes::from_static(usage), fed, &obs).len();
        out += st.flush().len();
        assert_eq!(
            out as u64,
            fed + 2 + 14,
            "the oversized event passes whole; the usage event is stripped"
        );
    }

    #[test]
    fn keeps_usage_on_chunks_with_choices_and_partial_tails() {
        let body = "data: {\"choices\":[{\"index\":0,\"delta\":{}}],\"usage\":{\"completion_tokens\":1}}\n\ndata: {\"partial";
        assert_eq!(
            String::from_utf8_lossy(&run(body.as_bytes(), &[10, 50])),
            body
        );
    }

    #[test]
    fn fields_the_engine_moved_to_the_usage_event_go_back_under_every_cut() {
        // vLLM: `system_fingerprint` on terminal chunks only without usage;
        // llama.cpp: `timings` moves; a field the terminal chunk has stays.
        let role = "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\"},\"finish_reason\":null}]}\n\n";
        let fin0 = "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]";
        let fin1 = "data: {\"id\":\"c\",\"choices\":[{\"index\":1,\"delta\":{},\"finish_reason\":\"length\"}],\"system_fingerprint\":\"own\"";
        let usage = "data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"completion_tokens\":3},\"system_fingerprint\":\"fp-1\",\"timings\":{\"predicted_ms\":20533.880903490757}}\n\n";
        let done = "data: [DONE]\n\n";
        let body = format!("{role}{fin0}}}\n\n{fin1}}}\n\n{usage}{done}");
        let want = format!(
            "{role}{fin0},\"system_fingerprint\":\"fp-1\",\"timings\":{{\"predicted_ms\":20533.880903490757}}}}\n\n\
             {fin1},\"timings\":{{\"predicted_ms\":20533.880903490757}}}}\n\n{done}"
        );
        assert_eq!(String::from_utf8_lossy(&run(body.as_bytes(), &[])), want);
        for i in 1..body.len() {
            assert_eq!(
                String::from_utf8_lossy(&run(body.as_bytes(), &[i])),
                want,
                "cut {i}"
            );
        }
        let every: Vec<usize> = (1..body.len()).collect();
        assert_eq!(String::from_utf8_lossy(&run(body.as_bytes(), &every)), want);
    }

    #[test]
    fn finish_chunks_wait_longest_once_every_choice_has_finished() {
        let cfg = Arc::new(ObserverConfig {
            strip_usage_only: true,
            ..ObserverConfig::default()
        });
        let mut obs = Observer::new(cfg, BodyKind::Sse);
        let mut st = UsageStripper::default();
        let mut at = 0u64;
        let mut feed = |obs: &mut Observer, st: &mut UsageStripper, e: &str| {
            obs.feed(e.as_bytes(), 0);
            st.process(Bytes::from(e.to_string()), at, obs);
            at += e.len() as u64;
        };
        for i in 0..2 {
            feed(&mut obs, &mut st, &format!("data: {{\"choices\":[{{\"index\":{i},\"delta\":{{\"role\":\"assistant\"}},\"finish_reason\":null}}]}}\n\n"));
        }
        let fin = |i: u32| {
            format!("data: {{\"choices\":[{{\"index\":{i},\"delta\":{{}},\"finish_reason\":\"stop\"}}]}}\n\n")
        };
        // choice 1 may still write: a finish chunk waits briefly
        feed(&mut obs, &mut st, &fin(0));
        assert!(st.holding());
        assert_eq!(st.hold_for(), HOLD_EMPTY_FOR_USAGE);
        // both done: only the usage event and [DONE] can follow
        feed(&mut obs, &mut st, &fin(1));
        assert_eq!(st.hold_for(), HOLD_LAST_FOR_USAGE);
    }

    #[test]
    fn held_terminal_events_can_be_released_unchanged() {
        let cfg = Arc::new(ObserverConfig {
            strip_usage_only: true,
            ..ObserverConfig::default()
        });
        let mut obs = Observer::new(cfg, BodyKind::Sse);
        let mut st = UsageStripper::default();
        let fin = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\" 4\"},\"finish_reason\":\"stop\"}]}\n\ndata: {\"cho";
        obs.feed(fin.as_bytes(), 0);
        assert!(st
            .process(Bytes::from_static(fin.as_bytes()), 0, &obs)
            .is_empty());
        assert!(st.holding());
        let out = st.release_held();
        assert_eq!(out, fin.as_bytes()[..fin.len() - 11]);
        assert!(!st.holding());
        // the rest streams on as usual
        let rest = "ices\":[],\"usage\":{\"completion_tokens\":1}}\n\ndata: [DONE]\n\n";
        obs.feed(rest.as_bytes(), fin.len() as u64);
        let out = st.process(Bytes::from_static(rest.as_bytes()), fin.len() as u64, &obs);
        assert_eq!(out, &b"data: [DONE]\n\n"[..]);
    }

    #[test]
    fn terminal_events_pass_unchanged_when_no_usage_event_follows() {
        let body = "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n";
        assert_eq!(String::from_utf8_lossy(&run(body.as_bytes(), &[])), body);
        assert_eq!(
            String::from_utf8_lossy(&run(body.as_bytes(), &[30, 70])),
            body
        );
        // `[DONE]` releases what was held without waiting for the end
        let cfg = Arc::new(ObserverConfig {
            strip_usage_only: true,
            ..ObserverConfig::default()
        });
        let mut obs = Observer::new(cfg, BodyKind::Sse);
        let mut st = UsageStripper::default();
        obs.feed(body.as_bytes(), 0);
        let out = st.process(Bytes::from_static(body.as_bytes()), 0, &obs);
        assert_eq!(out, body.as_bytes());
    }
}
