//! The request observer: reads a response body as it passes and produces the
//! timestamps and counts of `ASU.md` for one request.
//!
//! The caller owns the clock: every [`Observer::feed`] gets the time the bytes
//! arrived as nanoseconds since `t_recv`, so the same code serves the gateway
//! (time at the proxy) and the load generator (time at the client). Per chunk
//! it frames SSE, parses each event's JSON borrowed, splits reasoning from
//! visible text and stamps first/last moments; it allocates nothing at steady
//! state and never touches the bytes it is given.

use crate::repeat::{LoopConfig, LoopDetector, LoopFound};
use crate::sse::{SseEvent, SseFramer};
use crate::think::{Markers, Span, SplitState, TagSplitter, ThinkTags};
use crate::wire::{Chunk, ResponseObject, ResponsesEvent, Usage};
use serde::Serialize;
use std::ops::Range;
use std::sync::Arc;

/// Choice indices above this are ignored (and counted as anomalies), so an
/// upstream cannot make the observer allocate per index.
pub const MAX_CHOICES: usize = 128;

/// What the response body is, from its `content-type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// `text/event-stream`: parsed event by event.
    Sse,
    /// `application/json`: a non-streamed response, parsed once at the end.
    Json,
    /// Anything else: only timed.
    Opaque,
}

impl BodyKind {
    pub fn from_content_type(ct: Option<&str>) -> Self {
        let ct = ct.unwrap_or("").trim_start().to_ascii_lowercase();
        if ct.starts_with("text/event-stream") {
            BodyKind::Sse
        } else if ct.starts_with("application/json") {
            BodyKind::Json
        } else {
            BodyKind::Opaque
        }
    }
}

/// Settings shared by every observer of a gateway or load run.
#[derive(Debug, Clone)]
pub struct ObserverConfig {
    pub think_tags: ThinkTags,
    pub markers: Markers,
    /// Keep reasoning and visible text (records with text, tests, loadgen
    /// grading). Off in the gateway by default.
    pub capture_text: bool,
    /// Report the byte ranges of usage-only events so the caller can remove
    /// them (the gateway injected `include_usage`).
    pub strip_usage_only: bool,
    /// Bound on one SSE event.
    pub max_event_bytes: usize,
    /// Bound on a non-streamed JSON body kept for parsing.
    pub max_json_bytes: usize,
    /// Watch choice 0's thinking for loops (`repeat`); `None` turns it off.
    pub loops: Option<LoopConfig>,
}

impl Default for ObserverConfig {
    fn default() -> Self {
        Self {
            think_tags: ThinkTags::Auto,
            markers: Markers::default(),
            capture_text: false,
            strip_usage_only: false,
            max_event_bytes: SseFramer::DEFAULT_MAX_EVENT_BYTES,
            max_json_bytes: 16 << 20,
            loops: Some(LoopConfig::default()),
        }
    }
}

/// Where token counts came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenSource {
    /// The engine's usage gave completion and reasoning tokens.
    Usage,
    /// The engine's usage gave completion tokens; thinking tokens are the
    /// events that carried thinking text (one token each), visible tokens
    /// the rest.
    UsageSplitByChunks,
    /// Non-streamed: usage total split in proportion to reasoning/visible
    /// characters.
    UsageSplitByChars,
    /// No usage: content-bearing chunks were counted (one token each).
    Chunks,
    /// Nothing to count (non-streamed without usage, opaque body).
    #[default]
    None,
}

impl TokenSource {
    /// The record's word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenSource::Usage => "usage",
            TokenSource::UsageSplitByChunks => "usage_split_by_chunks",
            TokenSource::UsageSplitByChars => "usage_split_by_chars",
            TokenSource::Chunks => "chunks",
            TokenSource::None => "none",
        }
    }
}

/// The captured text of one choice.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ChoiceText {
    pub reasoning: String,
    pub content: String,
}

/// Everything measured about one response. Times are nanoseconds since
/// `t_recv` on the caller's monotonic clock.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub streamed: bool,
    /// First chunk carrying any generated text (reasoning or visible).
    pub t_first_token_ns: Option<u64>,
    /// First reasoning chunk.
    pub t_think_start_ns: Option<u64>,
    /// Last reasoning chunk, or the chunk that carried the close marker.
    pub t_think_end_ns: Option<u64>,
    /// First chunk with visible output (non-white-space content outside
    /// thinking, or a tool call); for non-streamed bodies, `t_done`.
    pub t_first_visible_ns: Option<u64>,
    /// Last byte of the body.
    pub t_done_ns: u64,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: u64,
    pub thinking_tokens: u64,
    pub visible_tokens: u64,
    pub token_source: TokenSource,
    /// Events carrying reasoning text (an event with only a thinking marker
    /// starts or ends thinking but is not a thinking token).
    pub reasoning_chunks: u64,
    /// Events carrying visible text.
    pub visible_chunks: u64,
    /// Largest gap between successive token-bearing body chunks.
    pub itl_max_ns: Option<u64>,
    pub itl_mean_ns: Option<u64>,
    pub finish_reason: Option<String>,
    pub choices: u32,
    /// `data: [DONE]` arrived.
    pub done_marker: bool,
    /// An error event arrived (mid-stream, or a JSON error body).
    pub error_event: bool,
    /// Events whose data was neither JSON nor `[DONE]`.
    pub parse_errors: u32,
    /// An event exceeded the size bound and was skipped.
    pub oversized: bool,
    /// The body ended inside an event.
    pub cut_mid_event: bool,
    /// 0-based index of the data event that carried the first visible output.
    pub first_visible_event: Option<u64>,
    /// The response `id` the engine gave (its first event's, or the JSON
    /// body's): what the engine logs, to join records with engine logs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_id: Option<String>,
    /// The model the engine says answered (its first event's `model`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_model: Option<String>,
    /// A thinking loop, where it was found (streamed responses).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thinking_loop: Option<LoopFound>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<Vec<ChoiceText>>,
    #[serde(skip)]
    pub usage: Option<Usage>,
    /// Bytes of generated text (reasoning and content, every choice), to
    /// estimate live tokens where an engine merges several into one event.
    #[serde(skip)]
    pub text_bytes: u64,
}

const NS: f64 = 1e9;

impl Summary {
    /// TTFT: first generated token of any kind.
    pub fn ttft(&self) -> Option<f64> {
        self.t_first_token_ns.map(|t| t as f64 / NS)
    }
    /// TTFVT: first visible token (non-streamed: E2E).
    pub fn ttfvt(&self) -> Option<f64> {
        self.t_first_visible_ns.map(|t| t as f64 / NS)
    }
    /// Thinking time: last minus first reasoning token (0 without reasoning).
    pub fn thinking_time(&self) -> Option<f64> {
        if !self.streamed {
            return None;
        }
        Some(match (self.t_think_start_ns, self.t_think_end_ns) {
            (Some(a), Some(b)) => b.saturating_sub(a) as f64 / NS,
            _ => 0.0,
        })
    }
    /// The response ended without an answer: the engine generated (or
    /// ended a stream) but nothing visible came, no text outside thinking
    /// and no tool call. An end of sequence inside thinking does this
    /// (`finish_reason: "stop"` and no content), and so does a budget of
    /// `max_tokens` spent on thinking. Meaningful once `finish` ran.
    pub fn answerless(&self) -> bool {
        self.first_visible_event.is_none()
            && (self.choices > 0 || self.done_marker)
            && !self.error_event
    }
    pub fn e2e(&self) -> f64 {
        self.t_done_ns as f64 / NS
    }
    /// TPOT: `(t_done - t_first_token) / (completion_tokens - 1)`.
    pub fn tpot(&self) -> Option<f64> {
        let first = self.t_first_token_ns?;
        if self.completion_tokens < 2 {
            return None;
        }
        Some(self.t_done_ns.saturating_sub(first) as f64 / NS / (self.completion_tokens - 1) as f64)
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Undecided {
    first: Option<u64>,
    first_nonws: Option<(u64, u64)>,
    chunks: u64,
}

#[derive(Debug, Clone)]
struct ChoiceState {
    split: TagSplitter,
    saw_reasoning_field: bool,
    undecided: Undecided,
    text: Option<Box<(ChoiceText, String)>>,
}

/// Flags of one choice's delta in one event.
#[derive(Debug, Default, Clone, Copy)]
struct Marks {
    /// The delta belongs to thinking (text, or only a marker).
    reasoning: bool,
    /// It carried thinking text, not only a marker: a thinking token. The
    /// markers are tokens of their own that engines do not count as
    /// reasoning (vLLM's `reasoning_tokens` leaves them out).
    reasoning_text: bool,
    visible: bool,
    visible_nonws: bool,
    undecided: bool,
    undecided_nonws: bool,
    tool: bool,
}

/// Per-request state, apart from the framer so the framer's callback can
/// borrow it.
#[derive(Debug)]
struct State {
    cfg: Arc<ObserverConfig>,
    choices: Vec<ChoiceState>,
    s: Summary,
    data_events: u64,
    now: u64,
    token_in_feed: bool,
    last_token_feed: Option<u64>,
    itl_sum: u64,
    itl_n: u64,
    strip: Vec<Range<u64>>,
    /// Terminal events (a choice's `finish_reason`) completed by the last
    /// `feed`, when `strip_usage_only` is set.
    terminal: Vec<Range<u64>>,
    /// Finish reasons seen (engines send one per choice).
    finished: usize,
    reasoning_bytes: u64,
    visible_bytes: u64,
    /// Choice 0's loop detector, from its first thinking text until a loop
    /// is found.
    detector: Option<Box<LoopDetector>>,
}

/// Observes one response body. See the module docs.
#[derive(Debug)]
pub struct Observer {
    kind: BodyKind,
    framer: SseFramer,
    json: Vec<u8>,
    json_overflow: bool,
    st: State,
}

impl Observer {
    pub fn new(cfg: Arc<ObserverConfig>, kind: BodyKind) -> Self {
        let framer = SseFramer::new(cfg.max_event_bytes);
        Self {
            kind,
            framer,
            json: Vec::new(),
            json_overflow: false,
            st: State {
                cfg,
                choices: Vec::new(),
                s: Summary {
                    streamed: kind == BodyKind::Sse,
                    token_source: TokenSource::None,
                    ..Summary::default()
                },
                data_events: 0,
                now: 0,
                token_in_feed: false,
                last_token_feed: None,
                itl_sum: 0,
                itl_n: 0,
                strip: Vec::new(),
                terminal: Vec::new(),
                finished: 0,
                reasoning_bytes: 0,
                visible_bytes: 0,
                detector: None,
            },
        }
    }

    pub fn kind(&self) -> BodyKind {
        self.kind
    }

    /// Observe the next body bytes, which arrived `now_ns` after `t_recv`.
    pub fn feed(&mut self, bytes: &[u8], now_ns: u64) {
        match self.kind {
            BodyKind::Sse => {
                let st = &mut self.st;
                st.now = now_ns;
                st.token_in_feed = false;
                st.strip.clear();
                st.terminal.clear();
                self.framer.feed(bytes, |ev| st.on_event(ev));
                if st.token_in_feed {
                    if let Some(last) = st.last_token_feed {
                        let gap = now_ns.saturating_sub(last);
                        st.itl_sum += gap;
                        st.itl_n += 1;
                        st.s.itl_max_ns = Some(st.s.itl_max_ns.unwrap_or(0).max(gap));
                    }
                    st.last_token_feed = Some(now_ns);
                }
            }
            BodyKind::Json => {
                if self.json.len() + bytes.len() <= self.st.cfg.max_json_bytes {
                    self.json.extend_from_slice(bytes);
                } else {
                    self.json_overflow = true;
                }
            }
            BodyKind::Opaque => {}
        }
    }

    /// Bytes fed so far (SSE only).
    pub fn fed(&self) -> u64 {
        self.framer.offset()
    }

    /// Absolute offset past the last complete event (SSE only).
    pub fn boundary(&self) -> u64 {
        self.framer.boundary()
    }

    /// Byte ranges (absolute offsets) of usage-only events completed by the
    /// last `feed`, when `strip_usage_only` is set.
    pub fn strip_ranges(&self) -> &[Range<u64>] {
        &self.st.strip
    }

    /// Byte ranges (absolute offsets) of terminal events (those carrying a
    /// `finish_reason`) completed by the last `feed`, when
    /// `strip_usage_only` is set: engines move fields from these to the
    /// usage event when usage is on (vLLM's `system_fingerprint`,
    /// llama.cpp's `timings`), and the caller moves them back.
    pub fn terminal_ranges(&self) -> &[Range<u64>] {
        &self.st.terminal
    }

    /// Every choice seen has sent its finish reason: nothing the model
    /// writes can follow, only a usage event and the end.
    pub fn every_choice_finished(&self) -> bool {
        !self.st.choices.is_empty() && self.st.finished >= self.st.choices.len()
    }

    /// True while the request is in its thinking phase: reasoning has started
    /// and nothing visible has been seen yet.
    pub fn in_thinking(&self) -> bool {
        self.st.s.t_think_start_ns.is_some() && self.st.s.t_first_visible_ns.is_none()
    }

    /// Live view of the measurement so far (no end-of-stream settling).
    pub fn peek(&self) -> &Summary {
        &self.st.s
    }

    /// The thinking loop found so far, if any.
    pub fn thinking_loop(&self) -> Option<&LoopFound> {
        self.st.s.thinking_loop.as_ref()
    }

    /// Thinking chunks counted so far (live estimate of thinking tokens).
    pub fn thinking_chunks(&self) -> u64 {
        self.st.s.reasoning_chunks
    }

    /// Whether choice 0 is still thinking as far as a budget is concerned:
    /// nothing visible yet, and either reasoning has started or text is
    /// waiting for a close marker (the R1 form, which has no open tag).
    pub fn still_thinking(&self) -> bool {
        self.st.s.t_first_visible_ns.is_none()
            && (self.st.s.t_think_start_ns.is_some()
                || self
                    .st
                    .choices
                    .first()
                    .is_some_and(|c| c.undecided.chunks > 0))
    }

    /// Thinking tokens of choice 0 so far, counting text still waiting for a
    /// close marker (one per content-bearing chunk, as engines stream one
    /// token per chunk by default).
    pub fn thinking_so_far(&self) -> u64 {
        let undecided = self.st.choices.first().map_or(0, |c| c.undecided.chunks);
        self.st.s.reasoning_chunks + undecided
    }

    /// Choice 0 carried its reasoning in `reasoning`/`reasoning_content`
    /// fields (not inline tags).
    pub fn reasoning_in_fields(&self) -> bool {
        self.st
            .choices
            .first()
            .is_some_and(|c| c.saw_reasoning_field)
    }

    /// The thinking text of choice 0 so far, including text still waiting
    /// for a close marker. `None` unless `capture_text` is on.
    pub fn thinking_text(&self) -> Option<String> {
        let t = self.st.choices.first()?.text.as_ref()?;
        let mut s = t.0.reasoning.clone();
        s.push_str(&t.1);
        Some(s)
    }

    /// End of the body at `t_done_ns`: settle undecided text, counts and
    /// derived values.
    pub fn finish(mut self, t_done_ns: u64) -> Summary {
        self.st.now = t_done_ns;
        self.st.s.t_done_ns = t_done_ns;
        match self.kind {
            BodyKind::Sse => {
                self.st.s.cut_mid_event = self.framer.has_partial();
                self.st.s.oversized = self.framer.oversized();
            }
            BodyKind::Json => {
                self.st.s.oversized = self.json_overflow;
                if !self.json_overflow {
                    self.st.on_json(&self.json);
                }
                // Only TTFVT (= E2E) is defined for a non-streamed body: no
                // token arrives before the whole body. An error body has no
                // visible token at all (an engine's 400 is not an answer).
                let s = &mut self.st.s;
                s.t_first_visible_ns = (!s.error_event).then_some(t_done_ns);
                s.t_first_token_ns = None;
                s.t_think_start_ns = None;
                s.t_think_end_ns = None;
            }
            BodyKind::Opaque => {}
        }
        self.st.settle();
        self.st.s
    }
}

/// The top-level `"id"` and `"model"` strings of an engine's JSON (once
/// per response), each at most 128 bytes.
fn response_id(json: &[u8]) -> (Option<String>, Option<String>) {
    #[derive(serde::Deserialize)]
    struct Id<'a> {
        #[serde(borrow)]
        id: Option<std::borrow::Cow<'a, str>>,
        #[serde(borrow)]
        model: Option<std::borrow::Cow<'a, str>>,
    }
    let Ok(v) = serde_json::from_slice::<Id<'_>>(json) else {
        return (None, None);
    };
    (short(v.id), short(v.model))
}

fn short(s: Option<std::borrow::Cow<'_, str>>) -> Option<String> {
    s.filter(|s| s.len() <= 128).map(|s| s.into_owned())
}

/// A Responses API event that streams a tool call's input (function,
/// custom tool, MCP, code interpreter): visible output, as a chat
/// `tool_calls` delta is.
fn is_call_delta(kind: &str) -> bool {
    kind.ends_with(".delta")
        && (kind.contains("call_arguments")
            || kind.contains("call_input")
            || kind.contains("call_code"))
}

fn is_blank(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_whitespace())
}

fn choice_mut<'c>(
    choices: &'c mut Vec<ChoiceState>,
    cfg: &ObserverConfig,
    index: u64,
) -> Option<&'c mut ChoiceState> {
    let i = usize::try_from(index).ok().filter(|&i| i < MAX_CHOICES)?;
    while choices.len() <= i {
        choices.push(ChoiceState {
            split: TagSplitter::new(cfg.think_tags),
            saw_reasoning_field: false,
            undecided: Undecided::default(),
            text: cfg.capture_text.then(Default::default),
        });
    }
    choices.get_mut(i)
}

impl State {
    fn on_event(&mut self, ev: SseEvent<'_>) {
        let idx = self.data_events;
        self.data_events += 1;
        let data = ev.data;
        if data == b"[DONE]" {
            self.s.done_marker = true;
            return;
        }
        // The Responses API names its events (`event: response.*`).
        if ev.event.starts_with(b"response.") {
            self.on_responses_event(data, idx);
            return;
        }
        if self.s.response_id.is_none() && idx == 0 {
            (self.s.response_id, self.s.response_model) = response_id(data);
        }
        // Nearly every event is one choice's delta: scan it without building
        // the document (see `fast`); anything else takes the full parser.
        if ev.event != b"error" {
            if let Some(c) = crate::fast::simple(data) {
                let reasoning = c
                    .reasoning
                    .as_deref()
                    .or(c.reasoning_content.as_deref())
                    .filter(|t| !t.is_empty());
                let marks = self.on_delta(c.index, reasoning, c.content.as_deref(), false, idx);
                if let Some(fr) = &c.finish_reason {
                    self.finished += 1;
                    if self.s.finish_reason.is_none() {
                        self.s.finish_reason = Some(fr.chars().take(32).collect());
                    }
                    if self.cfg.strip_usage_only {
                        self.terminal.push(ev.start..ev.end);
                    }
                }
                self.stamp(marks, idx);
                return;
            }
        }
        let chunk: Chunk<'_> = match serde_json::from_slice(data) {
            Ok(c) => c,
            Err(_) => {
                self.s.parse_errors = self.s.parse_errors.saturating_add(1);
                if ev.event == b"error" {
                    self.s.error_event = true;
                }
                return;
            }
        };
        if chunk
            .kind
            .as_deref()
            .is_some_and(|k| k.starts_with("response."))
        {
            // A Responses API event from an engine that sent no `event:`.
            self.on_responses_event(data, idx);
            return;
        }
        if chunk.is_error() || ev.event == b"error" {
            self.s.error_event = true;
        }
        if let Some(u) = chunk.usage {
            // With continuous_usage_stats every chunk carries cumulative
            // usage: the last one wins.
            self.s.usage = Some(u);
            if self.cfg.strip_usage_only && chunk.is_usage_only() {
                self.strip.push(ev.start..ev.end);
            }
        }
        if self.cfg.strip_usage_only
            && chunk
                .choices
                .iter()
                .flatten()
                .any(|c| c.finish_reason.is_some())
        {
            self.terminal.push(ev.start..ev.end);
        }
        for choice in chunk.choices.iter().flatten() {
            let (reasoning, content, tool) = match &choice.delta {
                Some(d) => (d.reasoning_text(), d.content.as_deref(), d.has_tool_call()),
                None => (None, choice.text.as_deref(), false),
            };
            let marks = self.on_delta(choice.index, reasoning, content, tool, idx);
            if let Some(fr) = &choice.finish_reason {
                self.finished += 1;
                if self.s.finish_reason.is_none() {
                    self.s.finish_reason = Some(fr.chars().take(32).collect());
                }
            }
            self.stamp(marks, idx);
        }
    }

    /// One Responses API event (WIRE.md): reasoning deltas are thinking,
    /// output text and refusals are visible (tag-split when no reasoning
    /// parser took the thinking out), tool-call deltas are visible output,
    /// and `response.completed` / `.incomplete` / `.failed` end the stream
    /// as `[DONE]` does, with the usage and the status.
    fn on_responses_event(&mut self, data: &[u8], idx: u64) {
        let Ok(e) = serde_json::from_slice::<ResponsesEvent<'_>>(data) else {
            self.s.parse_errors = self.s.parse_errors.saturating_add(1);
            return;
        };
        let kind = e.kind.as_deref().unwrap_or("");
        if let Some(r) = &e.response {
            if self.s.response_id.is_none() {
                self.s.response_id = short(r.id.clone());
                self.s.response_model = short(r.model.clone());
            }
        }
        let delta = e.delta.as_deref().filter(|d| !d.is_empty());
        let marks = match kind {
            "response.reasoning_text.delta" | "response.reasoning_summary_text.delta" => {
                self.on_delta(0, delta, None, false, idx)
            }
            "response.output_text.delta" | "response.refusal.delta" => {
                self.on_delta(0, None, delta, false, idx)
            }
            k if is_call_delta(k) => self.on_delta(0, None, None, delta.is_some(), idx),
            "response.completed" | "response.incomplete" | "response.failed" => {
                self.s.done_marker = true;
                if let Some(r) = &e.response {
                    self.end_response(r);
                }
                None
            }
            _ => None,
        };
        self.stamp(marks, idx);
    }

    /// Usage, finish reason and error state of a finished response object.
    fn end_response(&mut self, r: &ResponseObject<'_>) {
        if let Some(u) = r.usage {
            self.s.usage = Some(u.into());
        }
        if self.s.finish_reason.is_none() {
            self.s.finish_reason = r.finish_reason();
        }
        if r.is_error() {
            self.s.error_event = true;
        }
    }

    /// A non-streamed Responses API body: its output items in order.
    fn on_response_json(&mut self, body: &[u8]) {
        let Ok(r) = serde_json::from_slice::<ResponseObject<'_>>(body) else {
            self.s.parse_errors = 1;
            return;
        };
        for item in r.output.iter().flatten() {
            let parts = || item.content.iter().flatten();
            match item.kind.as_deref().unwrap_or("") {
                "reasoning" => {
                    let summary = item.summary.iter().flatten();
                    for t in parts().chain(summary).filter_map(|p| p.text.as_deref()) {
                        let marks =
                            self.on_delta(0, Some(t).filter(|t| !t.is_empty()), None, false, 0);
                        self.stamp(marks, 0);
                    }
                }
                "message" => {
                    for p in parts() {
                        let t = p.text.as_deref().or(p.refusal.as_deref());
                        let marks = self.on_delta(0, None, t, false, 0);
                        self.stamp(marks, 0);
                    }
                }
                k if k.ends_with("_call") => {
                    let marks = self.on_delta(0, None, None, true, 0);
                    self.stamp(marks, 0);
                }
                _ => {}
            }
        }
        self.end_response(&r);
    }

    /// Classify one choice's delta; returns what it carried.
    fn on_delta(
        &mut self,
        index: u64,
        reasoning: Option<&str>,
        content: Option<&str>,
        tool: bool,
        event_idx: u64,
    ) -> Option<Marks> {
        let now = self.now;
        self.s.text_bytes +=
            reasoning.map_or(0, |r| r.len() as u64) + content.map_or(0, |c| c.len() as u64);
        let cfg = &*self.cfg;
        let (mode, capture) = (cfg.think_tags, cfg.capture_text);
        let cs = choice_mut(&mut self.choices, cfg, index)?;
        let mut m = Marks {
            tool,
            ..Marks::default()
        };
        let mut closed = false;
        let (mut r_bytes, mut v_bytes) = (0u64, 0u64);
        // Choice 0's thinking text (and text that may turn out to be
        // thinking) goes to the loop detector while it has not found one.
        let watch = index == 0 && self.s.thinking_loop.is_none() && cfg.loops.is_some();
        let mut det = watch.then_some(&mut self.detector);
        let mut looped: Option<u32> = None;
        let mut watch_text = |t: &str| {
            if let Some(d) = det.as_mut() {
                if looped.is_none() && !t.is_empty() {
                    let d = d.get_or_insert_with(|| {
                        Box::new(LoopDetector::new(cfg.loops.unwrap_or_default()))
                    });
                    looped = d.feed(t);
                }
            }
        };
        if let Some(r) = reasoning {
            watch_text(r);
            cs.saw_reasoning_field = true;
            m.reasoning = true;
            m.reasoning_text = true;
            r_bytes += r.len() as u64;
            if let Some(t) = cs.text.as_mut() {
                t.0.reasoning.push_str(r);
            }
        }
        if let Some(c) = content.filter(|c| !c.is_empty()) {
            if cs.saw_reasoning_field || mode == ThinkTags::Off {
                m.visible = true;
                m.visible_nonws = !is_blank(c);
                v_bytes += c.len() as u64;
                if let Some(t) = cs.text.as_mut() {
                    t.0.content.push_str(c);
                }
            } else {
                let before = cs.split.state();
                let text = &mut cs.text;
                cs.split.push(mode, &cfg.markers, c, &mut |k, s: &str| {
                    match k {
                        Span::Reasoning => {
                            m.reasoning = true;
                            m.reasoning_text |= !s.is_empty();
                            r_bytes += s.len() as u64;
                            watch_text(s);
                        }
                        Span::Visible => {
                            m.visible = true;
                            m.visible_nonws |= !is_blank(s);
                            v_bytes += s.len() as u64;
                        }
                        Span::Undecided => {
                            m.undecided = true;
                            m.undecided_nonws |= !is_blank(s);
                            watch_text(s);
                        }
                    }
                    if capture {
                        if let Some(t) = text.as_mut() {
                            match k {
                                Span::Reasoning => t.0.reasoning.push_str(s),
                                Span::Visible => t.0.content.push_str(s),
                                Span::Undecided => t.1.push_str(s),
                            }
                        }
                    }
                });
                let after = cs.split.state();
                closed = before != SplitState::Visible && after == SplitState::Visible;
                // A chunk that only opened thinking starts thinking (it is
                // the marker's token, not a thinking token).
                if before == SplitState::Start && after == SplitState::Thinking {
                    m.reasoning = true;
                }
            }
        }
        if m.undecided {
            let u = &mut cs.undecided;
            u.first.get_or_insert(now);
            u.chunks += 1;
            if m.undecided_nonws && u.first_nonws.is_none() {
                u.first_nonws = Some((now, event_idx));
            }
        }
        if closed {
            // The close marker settles undecided text as thinking (the R1
            // form), and the chunk that carried it ends thinking; it is a
            // thinking token if it carried text before the marker.
            m.reasoning = true;
            m.reasoning_text |= m.undecided;
            let u = std::mem::take(&mut cs.undecided);
            if let Some(t) = cs.text.as_mut() {
                let und = std::mem::take(&mut t.1);
                t.0.reasoning.insert_str(0, &und);
            }
            if let Some(first) = u.first {
                let ts = self.s.t_think_start_ns.get_or_insert(first);
                *ts = (*ts).min(first);
                // This chunk is counted once below, as a reasoning chunk.
                self.s.reasoning_chunks += u.chunks - u64::from(m.undecided);
            }
        }
        if let Some(period) = looped {
            let words = self.detector.as_ref().map_or(0, |d| d.words());
            self.s.thinking_loop = Some(LoopFound {
                at_ns: now,
                at_word: words,
                // this event's token included
                thinking_tokens: self.s.reasoning_chunks
                    + cs.undecided.chunks
                    + u64::from(m.reasoning_text),
                period_words: period,
            });
            self.detector = None;
        }
        self.reasoning_bytes += r_bytes;
        self.visible_bytes += v_bytes;
        Some(m)
    }

    fn stamp(&mut self, marks: Option<Marks>, event_idx: u64) {
        let Some(m) = marks else { return };
        let now = self.now;
        let tool = m.tool;
        if m.reasoning || m.visible || m.undecided || tool {
            self.s.t_first_token_ns.get_or_insert(now);
            self.token_in_feed = true;
        }
        if m.reasoning {
            self.s.t_think_start_ns.get_or_insert(now);
            self.s.t_think_end_ns = Some(now);
            if m.reasoning_text {
                self.s.reasoning_chunks += 1;
            }
        }
        if m.visible {
            self.s.visible_chunks += 1;
        }
        if (m.visible_nonws || tool) && self.s.t_first_visible_ns.is_none() {
            self.s.t_first_visible_ns = Some(now);
            self.s.first_visible_event = Some(event_idx);
        }
    }

    fn on_json(&mut self, body: &[u8]) {
        (self.s.response_id, self.s.response_model) = response_id(body);
        let Ok(chunk) = serde_json::from_slice::<Chunk<'_>>(body) else {
            if !body.is_empty() {
                self.s.parse_errors = 1;
            }
            return;
        };
        if chunk.object.as_deref() == Some("response") {
            return self.on_response_json(body);
        }
        self.s.error_event = chunk.is_error();
        self.s.usage = chunk.usage;
        for choice in chunk.choices.iter().flatten() {
            let (reasoning, content, tool) = match &choice.message {
                Some(m) => (m.reasoning_text(), m.content.as_deref(), m.has_tool_call()),
                None => (None, choice.text.as_deref(), false),
            };
            if self.s.finish_reason.is_none() {
                self.s.finish_reason = choice
                    .finish_reason
                    .as_ref()
                    .map(|f| f.chars().take(32).collect());
            }
            // Text bytes split the usage total in proportion (no
            // tokenizer); `on_delta` counts them, inline thinking included.
            let marks = self.on_delta(choice.index, reasoning, content, tool, 0);
            self.stamp(marks, 0);
        }
    }

    /// End of body: settle undecided text as visible, release partial
    /// markers, compute token counts.
    fn settle(&mut self) {
        let cfg = &*self.cfg;
        let mode = cfg.think_tags;
        let mut first_vis: Option<(u64, u64)> = None;
        let mut extra_visible = 0;
        for cs in self.choices.iter_mut() {
            let text = &mut cs.text;
            cs.split.finish(mode, &cfg.markers, &mut |k, s: &str| {
                if let Some(t) = text.as_mut() {
                    match k {
                        Span::Reasoning => t.0.reasoning.push_str(s),
                        Span::Visible => t.0.content.push_str(s),
                        Span::Undecided => t.1.push_str(s),
                    }
                }
            });
            let u = std::mem::take(&mut cs.undecided);
            if u.first.is_some() {
                // No close marker ever came: the undecided text was visible.
                extra_visible += u.chunks;
                if let Some((t, i)) = u.first_nonws {
                    if first_vis.is_none_or(|f| (t, i) < f) {
                        first_vis = Some((t, i));
                    }
                }
                if let Some(t) = cs.text.as_mut() {
                    let und = std::mem::take(&mut t.1);
                    t.0.content.insert_str(0, &und);
                }
            }
        }
        self.s.visible_chunks += extra_visible;
        if let Some((t, i)) = first_vis {
            let cur = self.s.t_first_visible_ns.zip(self.s.first_visible_event);
            if cur.is_none_or(|cur| (t, i) < cur) {
                self.s.t_first_visible_ns = Some(t);
                self.s.first_visible_event = Some(i);
            }
        }
        if self.s.streamed && self.s.t_first_visible_ns.is_none() {
            self.s.first_visible_event = None;
        }
        self.s.itl_mean_ns = self.itl_sum.checked_div(self.itl_n);
        self.s.choices = self.choices.len() as u32;
        if self.cfg.capture_text {
            self.s.text = Some(
                self.choices
                    .iter()
                    .map(|c| c.text.as_ref().map(|t| t.0.clone()).unwrap_or_default())
                    .collect(),
            );
        }
        self.count_tokens();
    }

    fn count_tokens(&mut self) {
        // Tokens of a completion that carry no text: the two thinking
        // markers and the end token.
        const NO_TEXT_TOKENS: u64 = 3;
        // `completion` tokens came in `events` text-bearing events: more
        // than the tokens without text and a quarter more than the events
        // means the engine merged tokens (a format with more tokens that
        // carry no text, gpt-oss's channels say, stays under it in any
        // stream longer than a few dozen events).
        let merged = |completion: u64, events: u64| completion > events + 8 + events / 4;
        let s = &mut self.s;
        let usage = s.usage;
        s.prompt_tokens = usage.and_then(|u| u.prompt_tokens);
        let (think_c, vis_c) = (s.reasoning_chunks, s.visible_chunks);
        let split = |total: u64, a: u64, b: u64| -> u64 {
            if a + b == 0 {
                0
            } else {
                ((total as f64) * (a as f64) / ((a + b) as f64)).round() as u64
            }
        };
        let (think, total, source) = match usage.and_then(|u| u.completion_tokens) {
            // SGLang reports `reasoning_tokens: 0` where it did not count
            // them: zero is no answer when thinking text was seen.
            Some(ct) => match usage
                .and_then(|u| u.engine_reasoning_tokens())
                .filter(|&rt| rt > 0 || think_c == 0)
            {
                Some(rt) => (rt.min(ct), ct, TokenSource::Usage),
                // Streamed: each event carrying thinking text is one token
                // (engines stream a token per event; the markers and the
                // end token carry no thinking text).
                None if s.streamed && !merged(ct, think_c + vis_c) => {
                    (think_c.min(ct), ct, TokenSource::UsageSplitByChunks)
                }
                // An engine that merged tokens into events (vLLM under load
                // or with `--stream-interval`) left far more tokens than
                // events: counting events would miss the merged ones, so the
                // tokens that carry text are split by characters, as for a
                // whole body, and never below the events counted.
                None if s.streamed => {
                    let text = ct.saturating_sub(NO_TEXT_TOKENS);
                    let t = split(text, self.reasoning_bytes, self.visible_bytes);
                    let t = t.max(think_c).min(ct.saturating_sub(vis_c).max(think_c));
                    (t.min(ct), ct, TokenSource::UsageSplitByChars)
                }
                None => (
                    split(ct, self.reasoning_bytes, self.visible_bytes),
                    ct,
                    TokenSource::UsageSplitByChars,
                ),
            },
            None if s.streamed => (think_c, think_c + vis_c, TokenSource::Chunks),
            None => (0, 0, TokenSource::None),
        };
        s.completion_tokens = total;
        s.thinking_tokens = think;
        s.visible_tokens = total - think;
        s.token_source = source;
    }
}
