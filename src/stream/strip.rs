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

use bytes::{Bytes, BytesMut};
use std::ops::Range;

/// The observer's event cap: a longer event in progress is not held.
const MAX_HELD: usize = thinkgate_asu::sse::SseFramer::DEFAULT_MAX_EVENT_BYTES;

#[derive(Debug, Default)]
pub struct UsageStripper {
    held: BytesMut,
    /// Absolute offset of `held[0]`.
    held_start: u64,
    /// A stripped event ended in `\r` at the end of a chunk: its `\n` may
    /// arrive at this offset and belongs to it.
    swallow_lf_at: Option<u64>,
}

impl UsageStripper {
    /// `chunk` holds the bytes at absolute offsets `start..` just fed to the
    /// observer; `boundary` and `strip` are what the observer reported.
    pub fn process(
        &mut self,
        chunk: Bytes,
        start: u64,
        boundary: u64,
        strip: &[Range<u64>],
    ) -> Bytes {
        let end = start + chunk.len() as u64;
        if self.held.is_empty()
            && strip.is_empty()
            && boundary == end
            && self.swallow_lf_at.is_none()
        {
            return chunk;
        }
        if self.held.is_empty() {
            self.held_start = start;
        }
        self.held.extend_from_slice(&chunk);
        let mut release = (boundary.saturating_sub(self.held_start) as usize).min(self.held.len());
        if self.held.len() - release > MAX_HELD && strip.iter().all(|r| r.end <= boundary) {
            release = self.held.len();
        }
        let region = self.held.split_to(release);
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
        if cuts.is_empty() {
            return region.freeze();
        }
        cuts.sort_by_key(|r| r.start);
        let mut out = BytesMut::with_capacity(region.len());
        let mut pos = region_start;
        for r in cuts {
            let (a, b) = (
                r.start.max(pos),
                r.end.min(region_start + region.len() as u64),
            );
            if a > pos {
                out.extend_from_slice(
                    &region[(pos - region_start) as usize..(a - region_start) as usize],
                );
            }
            pos = pos.max(b);
        }
        let tail = (pos - region_start) as usize;
        if tail < region.len() {
            out.extend_from_slice(&region[tail..]);
        }
        out.freeze()
    }

    /// End of the body: release whatever is held (a partial event is
    /// forwarded as received).
    pub fn flush(&mut self) -> Bytes {
        std::mem::take(&mut self.held).freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
            out.extend_from_slice(&st.process(
                chunk,
                prev as u64,
                obs.boundary(),
                obs.strip_ranges(),
            ));
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
        let mut out = st
            .process(
                Bytes::from_static(b"data: "),
                0,
                obs.boundary(),
                obs.strip_ranges(),
            )
            .len();
        let mut most_held = 0;
        for _ in 0..(16 << 20) / piece.len() {
            obs.feed(&piece, 0);
            out += st
                .process(piece.clone(), fed, obs.boundary(), obs.strip_ranges())
                .len();
            fed += piece.len() as u64;
            most_held = most_held.max(st.held.len());
        }
        assert!(most_held <= MAX_HELD + piece.len(), "held {most_held}");
        assert!(out as u64 >= fed - (MAX_HELD + piece.len()) as u64);
        let usage =
            b"\n\ndata: {\"choices\":[],\"usage\":{\"completion_tokens\":1}}\n\ndata: [DONE]\n\n";
        obs.feed(usage, 0);
        out += st
            .process(
                Bytes::from_static(usage),
                fed,
                obs.boundary(),
                obs.strip_ranges(),
            )
            .len();
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
}
