//! Splits inline `<think>...</think>` text into reasoning and visible parts.
//!
//! Engines without a reasoning parser put the model's thinking into `content`
//! between markers (WIRE.md "No reasoning parser"). DeepSeek-R1 and its
//! distills often omit the opening marker, so the output starts inside
//! thinking and only the closing marker shows the switch.
//!
//! The rule (documented in the README, "Inline thinking"):
//! - `Off`: everything is visible.
//! - `Auto`: output that starts (after white space) with the open marker is
//!   thinking until the close marker. Output that does not is *undecided*: if
//!   a close marker arrives later, all of it was thinking (the R1 form); if the
//!   stream ends without one, all of it was visible. Callers keep undecided
//!   timestamps apart and settle them with [`Span::Undecided`] resolution.
//! - `StartsInThinking`: like `Auto`, but output without an open marker is
//!   thinking from the first byte (right live state for the R1 family).
//!
//! Markers may be split anywhere across pushes; a partial marker is carried as
//! a match length (KMP state), never as buffered text, so a push costs one
//! `memchr` pass and no allocation. Markers must be ASCII (checked by
//! [`Markers::new`]) so every cut the splitter makes is a UTF-8 boundary.

/// How inline markers are interpreted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ThinkTags {
    /// Detect `<think>` at the start, and the R1 form by a late close marker.
    #[default]
    Auto,
    /// The model's output starts inside thinking (DeepSeek-R1 family).
    StartsInThinking,
    /// Never split content.
    Off,
}

/// The open and close marker strings, with the KMP failure table of the close
/// marker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Markers {
    open: Box<str>,
    close: Box<str>,
    close_fail: Box<[usize]>,
}

impl Default for Markers {
    fn default() -> Self {
        // Both default markers are ASCII and non-empty.
        Self::new("<think>", "</think>").unwrap_or_else(|_| unreachable_markers())
    }
}

#[cold]
fn unreachable_markers() -> Markers {
    Markers {
        open: "<think>".into(),
        close: "</think>".into(),
        close_fail: vec![0; 8].into(),
    }
}

/// A marker was empty, too long or not ASCII.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadMarker(pub String);

impl std::fmt::Display for BadMarker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "thinking marker {:?} must be 1..=32 ASCII characters",
            self.0
        )
    }
}

impl std::error::Error for BadMarker {}

impl Markers {
    pub fn new(open: &str, close: &str) -> Result<Self, BadMarker> {
        for m in [open, close] {
            if m.is_empty() || m.len() > 32 || !m.is_ascii() {
                return Err(BadMarker(m.to_string()));
            }
        }
        Ok(Self {
            open: open.into(),
            close: close.into(),
            close_fail: kmp_table(close.as_bytes()).into(),
        })
    }

    pub fn open(&self) -> &str {
        &self.open
    }

    pub fn close(&self) -> &str {
        &self.close
    }
}

fn kmp_table(p: &[u8]) -> Vec<usize> {
    let mut fail = vec![0usize; p.len()];
    let mut k = 0;
    for i in 1..p.len() {
        while k > 0 && p[i] != p[k] {
            k = fail[k - 1];
        }
        if p[i] == p[k] {
            k += 1;
        }
        fail[i] = k;
    }
    fail
}

/// What a piece of text is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Span {
    Reasoning,
    Visible,
    /// Not known yet (`Auto` mode, no open marker seen): settled later.
    Undecided,
}

/// Where the splitter is in one choice's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitState {
    /// Nothing but white space seen yet.
    Start,
    Thinking,
    Undecided,
    Visible,
}

/// Per-choice splitter state: two words.
#[derive(Debug, Clone)]
pub struct TagSplitter {
    state: SplitState,
    /// Bytes of the current target marker matched so far (carried across
    /// pushes; those bytes have not been emitted yet).
    matched: usize,
}

impl TagSplitter {
    pub fn new(mode: ThinkTags) -> Self {
        Self {
            state: if mode == ThinkTags::Off {
                SplitState::Visible
            } else {
                SplitState::Start
            },
            matched: 0,
        }
    }

    pub fn state(&self) -> SplitState {
        self.state
    }

    /// Split the next piece of text. `out` receives the classified pieces in
    /// order (possibly none while a marker is incomplete).
    pub fn push(
        &mut self,
        mode: ThinkTags,
        m: &Markers,
        text: &str,
        out: &mut impl FnMut(Span, &str),
    ) {
        let mut rest = text;
        while !rest.is_empty() {
            let used = match self.state {
                SplitState::Start => self.push_start(mode, m, rest, out),
                SplitState::Thinking => self.push_search(Span::Reasoning, m, rest, out),
                SplitState::Undecided => self.push_search(Span::Undecided, m, rest, out),
                SplitState::Visible => {
                    out(Span::Visible, rest);
                    rest.len()
                }
            };
            rest = rest.get(used..).unwrap_or("");
        }
    }

    /// End of the choice's text: release a partial marker as text of the
    /// current kind.
    pub fn finish(&mut self, mode: ThinkTags, m: &Markers, out: &mut impl FnMut(Span, &str)) {
        let held = std::mem::take(&mut self.matched);
        if held == 0 {
            return;
        }
        match self.state {
            SplitState::Start => out(start_span(mode), m.open.get(..held).unwrap_or("")),
            SplitState::Thinking => out(Span::Reasoning, m.close.get(..held).unwrap_or("")),
            SplitState::Undecided => out(Span::Undecided, m.close.get(..held).unwrap_or("")),
            SplitState::Visible => {}
        }
    }

    /// Anchored match of the open marker after leading white space.
    fn push_start(
        &mut self,
        mode: ThinkTags,
        m: &Markers,
        text: &str,
        out: &mut impl FnMut(Span, &str),
    ) -> usize {
        let open = m.open.as_bytes();
        let b = text.as_bytes();
        let mut i = 0;
        if self.matched == 0 {
            while i < b.len() && b[i].is_ascii_whitespace() {
                i += 1;
            }
            if i > 0 {
                out(start_span(mode), &text[..i]);
            }
        }
        while i < b.len() {
            if b[i] == open[self.matched] {
                self.matched += 1;
                i += 1;
                if self.matched == open.len() {
                    self.matched = 0;
                    self.state = SplitState::Thinking;
                    return i;
                }
            } else {
                // Not an open marker: the output starts without one.
                let released = self.matched;
                self.matched = 0;
                self.state = match mode {
                    ThinkTags::StartsInThinking => SplitState::Thinking,
                    _ => SplitState::Undecided,
                };
                if released > 0 {
                    // The released bytes (a prefix of the open marker) are
                    // text of the new state and may begin a close marker.
                    let prefix = m.open.get(..released).unwrap_or("");
                    self.push(mode, m, prefix, out);
                }
                return i;
            }
        }
        i
    }

    /// Search for the close marker; text before it is of kind `kind`.
    fn push_search(
        &mut self,
        kind: Span,
        m: &Markers,
        text: &str,
        out: &mut impl FnMut(Span, &str),
    ) -> usize {
        let t = m.close.as_bytes();
        let b = text.as_bytes();
        let carried = self.matched;
        let mut i = 0;
        loop {
            if self.matched == 0 {
                match memchr::memchr(t[0], &b[i..]) {
                    Some(p) => i += p,
                    None => {
                        i = b.len();
                        break;
                    }
                }
            }
            if i >= b.len() {
                break;
            }
            let c = b[i];
            while self.matched > 0 && c != t[self.matched] {
                self.matched = m.close_fail[self.matched - 1];
            }
            if c == t[self.matched] {
                self.matched += 1;
            }
            i += 1;
            if self.matched == t.len() {
                self.matched = 0;
                emit_pending(kind, &m.close, carried, text, (carried + i) - t.len(), out);
                self.state = SplitState::Visible;
                return i;
            }
        }
        emit_pending(
            kind,
            &m.close,
            carried,
            text,
            (carried + i) - self.matched,
            out,
        );
        i
    }
}

fn start_span(mode: ThinkTags) -> Span {
    match mode {
        ThinkTags::StartsInThinking => Span::Reasoning,
        _ => Span::Undecided,
    }
}

/// Emit the first `len` bytes of `marker[..carried] ++ text`.
fn emit_pending(
    kind: Span,
    marker: &str,
    carried: usize,
    text: &str,
    len: usize,
    out: &mut impl FnMut(Span, &str),
) {
    if len == 0 {
        return;
    }
    let from_marker = len.min(carried);
    if from_marker > 0 {
        out(kind, marker.get(..from_marker).unwrap_or(""));
    }
    let from_text = len - from_marker;
    if from_text > 0 {
        out(kind, text.get(..from_text).unwrap_or(""));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(mode: ThinkTags, chunks: &[&str]) -> (String, String, String) {
        let m = Markers::default();
        let mut s = TagSplitter::new(mode);
        let (mut r, mut v, mut u) = (String::new(), String::new(), String::new());
        let mut sink = |k: Span, t: &str| match k {
            Span::Reasoning => r.push_str(t),
            Span::Visible => v.push_str(t),
            Span::Undecided => u.push_str(t),
        };
        for c in chunks {
            s.push(mode, &m, c, &mut sink);
        }
        s.finish(mode, &m, &mut sink);
        (r, v, u)
    }

    #[test]
    fn split_marker_across_chunks() {
        let (r, v, _) = split(ThinkTags::Auto, &["<thi", "nk>ab</th", "ink>cd"]);
        assert_eq!((r.as_str(), v.as_str()), ("ab", "cd"));
    }

    #[test]
    fn r1_form_is_undecided_until_close() {
        let (r, v, u) = split(ThinkTags::Auto, &["ab", "c</think>d"]);
        assert_eq!((r.as_str(), v.as_str(), u.as_str()), ("", "d", "abc"));
        let (r, v, u) = split(ThinkTags::StartsInThinking, &["ab", "c</think>d"]);
        assert_eq!((r.as_str(), v.as_str(), u.as_str()), ("abc", "d", ""));
    }

    #[test]
    fn output_starting_with_close_marker() {
        let (_, v, u) = split(ThinkTags::Auto, &["<", "/think>x"]);
        assert_eq!((v.as_str(), u.as_str()), ("x", ""));
    }

    #[test]
    fn truncated_partial_marker_is_released() {
        let (r, v, _) = split(ThinkTags::Auto, &["<think>a</th"]);
        assert_eq!((r.as_str(), v.as_str()), ("a</th", ""));
    }

    #[test]
    fn self_overlapping_close_marker() {
        let m = Markers::new("[[", "aab").unwrap_or_default();
        let mut s = TagSplitter::new(ThinkTags::StartsInThinking);
        let mut r = String::new();
        let mut v = String::new();
        for c in ["xa", "a", "ab", "z"] {
            s.push(ThinkTags::StartsInThinking, &m, c, &mut |k, t| match k {
                Span::Visible => v.push_str(t),
                _ => r.push_str(t),
            });
        }
        assert_eq!((r.as_str(), v.as_str()), ("xa", "z"));
    }

    #[test]
    fn markers_must_be_ascii() {
        assert!(Markers::new("<think>", "</думать>").is_err());
        assert!(Markers::new("", "</think>").is_err());
    }
}
