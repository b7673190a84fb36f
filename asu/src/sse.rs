//! Incremental Server-Sent Events framer.
//!
//! Feeds raw body bytes as they arrive (split anywhere: inside a line, inside a
//! `\r\n`, inside a UTF-8 character) and dispatches one [`SseEvent`] per blank
//! line that ends an event carrying `data`. It follows the WHATWG framing rules
//! the engines rely on: lines end in `\n`, `\r\n` or `\r`; lines starting with
//! `:` are comments (keep-alives); several `data:` lines join with `\n`; one
//! space after the colon is dropped; a trailing partial event is not dispatched.
//!
//! It never changes or copies the caller's bytes beyond one reused line buffer
//! and one reused data buffer, so at steady state it does not allocate.
//! It also tracks absolute byte offsets so a caller can cut the raw stream at
//! event boundaries (usage-event stripping does that).

use memchr::memchr2;

/// One dispatched event. Borrowed from the framer's buffers: valid only inside
/// the callback.
#[derive(Debug, Clone, Copy)]
pub struct SseEvent<'a> {
    /// The joined `data` field.
    pub data: &'a [u8],
    /// The `event` field (empty when the event had none).
    pub event: &'a [u8],
    /// Absolute offset of the first byte of the event's first field line.
    pub start: u64,
    /// Absolute offset just past the blank line that ended the event.
    pub end: u64,
}

/// Incremental SSE framer (see the module docs).
#[derive(Debug)]
pub struct SseFramer {
    line: Vec<u8>,
    data: Vec<u8>,
    event: Vec<u8>,
    has_data: bool,
    pending_cr: bool,
    /// Set while a line longer than the limit is being skipped.
    skipping_line: bool,
    /// Absolute offset of the next byte to be fed.
    offset: u64,
    /// Absolute offset where the event in progress began (first field line).
    event_start: Option<u64>,
    /// Absolute offset just past the last line that left no event in progress.
    boundary: u64,
    max_event_bytes: usize,
    comments: u64,
    oversized: bool,
}

impl Default for SseFramer {
    fn default() -> Self {
        Self::new(Self::DEFAULT_MAX_EVENT_BYTES)
    }
}

impl SseFramer {
    /// Default bound on one event's size; larger events are skipped (and
    /// flagged), so a hostile upstream cannot grow the framer's memory.
    pub const DEFAULT_MAX_EVENT_BYTES: usize = 4 << 20;

    pub fn new(max_event_bytes: usize) -> Self {
        Self {
            line: Vec::new(),
            data: Vec::new(),
            event: Vec::new(),
            has_data: false,
            pending_cr: false,
            skipping_line: false,
            offset: 0,
            event_start: None,
            boundary: 0,
            max_event_bytes,
            comments: 0,
            oversized: false,
        }
    }

    /// Comment lines seen (keep-alives such as `: ping`).
    pub fn comments(&self) -> u64 {
        self.comments
    }

    /// True once an event or line exceeded the size bound and was skipped.
    pub fn oversized(&self) -> bool {
        self.oversized
    }

    /// Absolute offset just past the last complete event (or comment) line
    /// that left no event in progress: bytes before it can be released.
    pub fn boundary(&self) -> u64 {
        self.boundary
    }

    /// Absolute number of bytes fed so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// True when bytes of an unfinished line or event are buffered: at the end
    /// of a body this means the stream was cut inside an event.
    pub fn has_partial(&self) -> bool {
        !self.line.is_empty() || self.event_start.is_some()
    }

    /// Feed the next bytes of the body; `on_event` runs for every event that
    /// completes inside them.
    pub fn feed(&mut self, chunk: &[u8], mut on_event: impl FnMut(SseEvent<'_>)) {
        let base = self.offset;
        self.offset += chunk.len() as u64;
        let mut pos = 0usize;
        if self.pending_cr {
            self.pending_cr = false;
            if chunk.first() == Some(&b'\n') {
                pos = 1;
                self.line_done_at(base + 1);
            }
        }
        while pos < chunk.len() {
            let rest = &chunk[pos..];
            let Some(i) = memchr2(b'\n', b'\r', rest) else {
                self.push_partial(rest);
                return;
            };
            let mut term = 1;
            if rest[i] == b'\r' {
                match rest.get(i + 1) {
                    Some(b'\n') => term = 2,
                    Some(_) => {}
                    None => self.pending_cr = true,
                }
            }
            let line_end = base + (pos + i + term) as u64;
            if self.line.is_empty() && !self.skipping_line {
                let line_start = base + pos as u64;
                self.process_line(&rest[..i], line_start, line_end, &mut on_event);
            } else {
                self.push_partial(&rest[..i]);
                let line = std::mem::take(&mut self.line);
                let skipped = std::mem::replace(&mut self.skipping_line, false);
                if !skipped {
                    let line_start = line_end - (line.len() + term) as u64;
                    self.process_line(&line, line_start, line_end, &mut on_event);
                } else {
                    // The oversized line is dropped; its event is dropped too.
                    self.reset_event();
                }
                self.line = line;
                self.line.clear();
            }
            pos += i + term;
        }
    }

    /// A `\n` that completed a `\r\n` split across chunks: the line already
    /// ended at the `\r`, only the boundary moves.
    fn line_done_at(&mut self, end: u64) {
        if self.event_start.is_none() {
            self.boundary = end;
        }
    }

    fn push_partial(&mut self, bytes: &[u8]) {
        if self.skipping_line {
            return;
        }
        if self.line.len() + bytes.len() > self.max_event_bytes {
            self.oversized = true;
            self.skipping_line = true;
            // the line is dropped: so is its buffer (up to the cap), not
            // kept for the rest of the stream
            self.line = Vec::new();
            return;
        }
        self.line.extend_from_slice(bytes);
    }

    fn reset_event(&mut self) {
        self.data.clear();
        self.event.clear();
        self.has_data = false;
        self.event_start = None;
    }

    fn process_line(
        &mut self,
        line: &[u8],
        start: u64,
        end: u64,
        on_event: &mut impl FnMut(SseEvent<'_>),
    ) {
        if line.is_empty() {
            if self.has_data {
                on_event(SseEvent {
                    data: &self.data,
                    event: &self.event,
                    start: self.event_start.unwrap_or(start),
                    end,
                });
            }
            self.reset_event();
            self.boundary = end;
            return;
        }
        if line[0] == b':' {
            self.comments += 1;
            if self.event_start.is_none() {
                self.boundary = end;
            }
            return;
        }
        if self.event_start.is_none() {
            self.event_start = Some(start);
        }
        let (field, value) = match memchr::memchr(b':', line) {
            Some(c) => {
                let v = &line[c + 1..];
                (&line[..c], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"data" => {
                if self.data.len() + value.len() + 1 > self.max_event_bytes {
                    self.oversized = true;
                    self.data.clear();
                    self.has_data = false;
                    return;
                }
                if self.has_data {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(value);
                self.has_data = true;
            }
            b"event" => {
                self.event.clear();
                self.event.extend_from_slice(&value[..value.len().min(64)]);
            }
            _ => {} // id, retry and unknown fields do not affect measurement
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(chunks: &[&[u8]]) -> Vec<(String, String, u64, u64)> {
        let mut f = SseFramer::default();
        let mut out = Vec::new();
        for c in chunks {
            f.feed(c, |e| {
                out.push((
                    String::from_utf8_lossy(e.data).into_owned(),
                    String::from_utf8_lossy(e.event).into_owned(),
                    e.start,
                    e.end,
                ))
            });
        }
        out
    }

    #[test]
    fn frames_lf_crlf_and_cr() {
        let body = b"data: a\n\ndata: b\r\n\r\ndata: c\r\rdata:d\n\n";
        let whole = events(&[body]);
        assert_eq!(
            whole.iter().map(|e| e.0.as_str()).collect::<Vec<_>>(),
            ["a", "b", "c", "d"]
        );
        let data =
            |v: Vec<(String, String, u64, u64)>| v.into_iter().map(|e| e.0).collect::<Vec<_>>();
        for i in 0..body.len() {
            // Offsets agree too, except that an event whose `\r\n` is cut in
            // two ends at the `\r` (the `\n` has not arrived yet).
            let got = events(&[&body[..i], &body[i..]]);
            assert_eq!(data(got.clone()), data(whole.clone()), "split at {i}");
            for (g, w) in got.iter().zip(&whole) {
                assert!(
                    g.3 == w.3 || (g.3 + 1 == w.3 && body[g.3 as usize - 1] == b'\r'),
                    "split at {i}"
                );
            }
        }
    }

    #[test]
    fn comments_event_lines_and_multiline_data() {
        let body = b": ping\n\nevent: error\ndata: x\ndata: y\n\n";
        let ev = events(&[body]);
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].0, "x\ny");
        assert_eq!(ev[0].1, "error");
        assert_eq!(ev[0].2, 8); // the event starts at its `event:` line
        assert_eq!(ev[0].3, body.len() as u64);
    }

    #[test]
    fn partial_event_is_not_dispatched_and_is_reported() {
        let mut f = SseFramer::default();
        let mut n = 0;
        f.feed(b"data: {\"a\":1}\n\ndata: {\"b\"", |_| n += 1);
        assert_eq!(n, 1);
        assert!(f.has_partial());
        assert_eq!(f.boundary(), 15);
    }

    #[test]
    fn oversized_event_is_skipped_and_later_events_still_parse() {
        let mut f = SseFramer::new(16);
        let mut got = Vec::new();
        let big = [b'x'; 100];
        f.feed(b"data: ", |_| {});
        f.feed(&big, |_| {});
        f.feed(b"\n\ndata: ok\n\n", |e| got.push(e.data.to_vec()));
        assert!(f.oversized());
        assert_eq!(got, vec![b"ok".to_vec()]);
    }
}
