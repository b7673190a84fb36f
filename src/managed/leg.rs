//! One upstream leg of a managed request: its body read on SSE event
//! boundaries, observed, its injected usage kept from the client, and (with
//! a thinking budget) cut at the event that reaches the budget.

use super::budget;
use super::events::Identity;
use super::pieces;
use super::{ChunkUsageMode, Managed};
use crate::body::strip::UsageStripper;
use crate::context::request::Endpoint;
use crate::fleet::{Backend, LegLoad};
use crate::state::Shared;
use crate::upstream::watched::{Failure, Watched};
use crate::upstream::UpBody;
use bytes::Bytes;
use http::Response;
use http_body_util::BodyExt;
use std::sync::Arc;
use std::time::Instant;
use thinkgate_asu::sse::SseFramer;
use thinkgate_asu::{BodyKind, Observer};

/// One upstream leg that streams reasoning: its observer (thinking count
/// and text) and the bytes it has released on event boundaries.
pub(super) struct Leg {
    pub(super) backend: Arc<Backend>,
    pub(super) head: Option<http::response::Parts>,
    /// An end seen while the leg was held, delivered by the next `step`.
    pub(super) pending: Option<Step>,
    /// The rest of a read past the event where the leg stopped (a budget,
    /// a loop): read from the engine but not yet fed. A leg that goes on
    /// (the engine ended its thinking natively) takes it first; a leg that
    /// is dropped for a continuation drops it unseen.
    unread: Bytes,
    pub(super) body: Watched,
    pub(super) obs: Observer,
    pub(super) strip: UsageStripper,
    /// Bytes released while the leg was held (hedging).
    pub(super) held: Vec<Bytes>,
    /// The response identity, from its first chunk.
    pub(super) ident: Option<Identity>,
    pub(super) endpoint: Endpoint,
    pub(super) t_recv: Instant,
    /// A hedge counts on its backend until it wins (then the context does).
    pub(super) load: Option<LegLoad>,
    /// Stop feeding a read at the event that reaches this many thinking
    /// tokens.
    pub(super) force_budget: Option<u64>,
    /// Thinking counted in tokens from per-chunk usage.
    exact: Option<Counting>,
    /// The engine was asked to end the thinking: events that only carry
    /// more thinking are kept from the client (it saw the thinking up to
    /// the cut), counted in `suppressed`.
    pub(super) suppress_thinking: bool,
    pub(super) suppressed: u64,
    /// Stop a read at the event where a loop is found (`on_loop` acts).
    pub(super) stop_on_loop: bool,
}

/// Thinking counted from the engine's per-chunk usage (see `budget`).
struct Counting {
    pub(super) shared: Arc<Shared>,
    pub(super) model: Option<String>,
    pub(super) strip: bool,
    /// Thinking may be written inline, between markers in the text.
    pub(super) inline_tags: bool,
    /// Usage seen on some chunk: until then events are counted.
    pub(super) seen: bool,
    pub(super) completion: u64,
    pub(super) thinking: u64,
    /// The start of an event whose end is still to come.
    pub(super) partial: Vec<u8>,
}

pub(super) enum Step {
    /// Complete events (possibly none).
    Bytes(Bytes),
    /// The body ended; the bytes of an unfinished event, if any.
    End(Bytes),
    /// The upstream failed (lost, or idle past `upstream_idle_timeout_secs`).
    Failed(Failure),
}

impl Leg {
    pub(super) fn new(
        m: &Managed,
        backend: Arc<Backend>,
        resp: Response<UpBody>,
        load: Option<LegLoad>,
    ) -> Self {
        let (head, body) = resp.into_parts();
        let cfg = if m.injected {
            &m.shared.observer_capture_strip
        } else {
            &m.shared.observer_capture
        };
        Self {
            backend,
            head: Some(head),
            pending: None,
            unread: Bytes::new(),
            body: Watched::new(body, m.shared.cfg.idle_timeout()),
            obs: Observer::new(Arc::clone(cfg), BodyKind::Sse),
            strip: UsageStripper::default(),
            held: Vec::new(),
            ident: None,
            endpoint: m.ctx.endpoint,
            t_recv: m.ctx.t_recv,
            load,
            force_budget: m.ctx.plan.force_budget,
            exact: (m.chunk_usage != ChunkUsageMode::Off).then(|| Counting {
                shared: Arc::clone(&m.shared),
                model: m.ctx.features.model.clone(),
                strip: m.chunk_usage == ChunkUsageMode::Strip,
                inline_tags: cfg.think_tags != thinkgate_asu::ThinkTags::Off,
                seen: false,
                completion: 0,
                thinking: 0,
                partial: Vec::new(),
            }),
            suppress_thinking: false,
            suppressed: 0,
            stop_on_loop: m.ctx.plan.on_loop != crate::straggler::LoopAction::Count,
        }
    }

    pub(super) async fn step(&mut self) -> Step {
        if let Some(s) = self.pending.take() {
            return s;
        }
        // terminal events wait a moment for the usage event (see `strip`)
        let next = if !self.unread.is_empty() {
            Some(Ok(http_body::Frame::data(std::mem::take(&mut self.unread))))
        } else if self.strip.holding() {
            let wait = self.strip.hold_for();
            match tokio::time::timeout(wait, self.body.frame()).await {
                Ok(f) => f,
                Err(_) => {
                    let held = self.strip.release_held();
                    return Step::Bytes(self.out(held));
                }
            }
        } else {
            self.body.frame().await
        };
        match next {
            Some(Ok(f)) => {
                let Ok(data) = f.into_data() else {
                    return Step::Bytes(Bytes::new());
                };
                let now = self.t_recv.elapsed().as_nanos() as u64;
                let out = match self.force_budget {
                    // One read may hold many events: feed them one at a
                    // time and stop at the one that reaches the budget, or
                    // that shows a loop to act on (what follows it waits
                    // in `unread`: sent only if the leg goes on).
                    budget if budget.is_some() || self.stop_on_loop => {
                        let mut out = bytes::BytesMut::new();
                        let mut used = 0;
                        for piece in pieces::events(&data) {
                            used += piece.len();
                            let piece = match budget {
                                Some(b) => match self.count(piece, b).await {
                                    Some(event) => event,
                                    // the rest of the event is still to come
                                    None => continue,
                                },
                                None => piece,
                            };
                            let fed = self.feed(piece, now);
                            out.extend_from_slice(&self.out(fed));
                            let thinking = self.obs.still_thinking();
                            if thinking && budget.is_some_and(|b| self.thinking() >= b) {
                                break;
                            }
                            if thinking && self.stop_on_loop && self.obs.thinking_loop().is_some() {
                                break;
                            }
                        }
                        self.unread = data.slice(used..);
                        out.freeze()
                    }
                    _ if self.suppress_thinking => {
                        let mut out = bytes::BytesMut::new();
                        for piece in pieces::events(&data) {
                            let (before, was) =
                                (self.obs.thinking_so_far(), self.obs.still_thinking());
                            let fed = self.feed(piece, now);
                            let fed = self.out(fed);
                            if was
                                && self.obs.still_thinking()
                                && self.obs.thinking_so_far() > before
                            {
                                self.suppressed += 1;
                                continue;
                            }
                            out.extend_from_slice(&fed);
                        }
                        out.freeze()
                    }
                    _ => {
                        let fed = self.feed(data, now);
                        self.out(fed)
                    }
                };
                if self.ident.is_none() && !out.is_empty() {
                    self.ident = first_identity(self.endpoint, &out);
                }
                Step::Bytes(out)
            }
            Some(Err(failure)) => {
                self.feed_partial();
                Step::Failed(failure)
            }
            None => {
                let held = self.feed_partial();
                let mut rest = bytes::BytesMut::from(&self.out(held)[..]);
                let flushed = self.strip.flush();
                rest.extend_from_slice(&self.out(flushed));
                Step::End(rest.freeze())
            }
        }
    }

    /// Thinking tokens so far: from the engine's usage where it reports it
    /// per chunk, else one per thinking event.
    pub(super) fn thinking(&self) -> u64 {
        match &self.exact {
            Some(c) if c.seen => c.thinking,
            _ => self.obs.thinking_so_far(),
        }
    }

    /// The thinking text the client saw (a forced answer's continuation
    /// goes on from it; an event cut at the budget reached the observer
    /// as the client got it).
    pub(super) fn thinking_text(&self) -> String {
        self.obs.thinking_text().unwrap_or_default()
    }

    /// Bytes on their way to the client: without the per-chunk usage the
    /// gateway asked for.
    fn out(&self, b: Bytes) -> Bytes {
        match &self.exact {
            Some(c) if c.strip => budget::strip_chunk_usage(b),
            _ => b,
        }
    }

    /// Count the thinking tokens of the event `piece` completes from its
    /// usage, before the observer sees it. A read can end inside an event,
    /// whose first part waits here for the rest (`None` until then). When
    /// the event takes the thinking past `budget`, returns it cut at the
    /// budget if the engine's tokenizer says where: with whatever followed
    /// the thinking in it left out, so the forced answer, not the engine's,
    /// follows the cut.
    async fn count(&mut self, piece: Bytes, budget: u64) -> Option<Bytes> {
        let before = self.obs.thinking_so_far();
        let Some(c) = self.exact.as_mut() else {
            return Some(piece);
        };
        let inline_thinking = c.inline_tags && self.obs.peek().t_first_visible_ns.is_none();
        let event = if c.partial.is_empty() {
            piece
        } else {
            let mut whole = std::mem::take(&mut c.partial);
            whole.extend_from_slice(&piece);
            Bytes::from(whole)
        };
        if !(event.ends_with(b"\n\n") || event.ends_with(b"\n\r\n")) {
            // (an event this long is no chunk of a model's output: it goes
            // on uncounted)
            if event.len() > budget::MAX_EVENT {
                return Some(event);
            }
            c.partial = event.to_vec();
            return None;
        }
        let Some(u) = budget::chunk_usage(&event) else {
            return Some(event);
        };
        let k = u.completion.saturating_sub(c.completion);
        c.completion = u.completion;
        if !c.seen {
            // events counted before usage showed up (none, on vLLM)
            c.thinking = before;
            c.seen = true;
        }
        let markers = &c.shared.markers;
        let (open, close) = (markers.open(), markers.close());
        // The event's text is parsed only where it matters: inline, while
        // the thinking may run (or opens here); with vLLM's count, only in
        // the event that crosses the budget.
        let inline_here = inline_thinking || budget::markers_in(&event, &[open]) > 0;
        let crosses = u
            .reasoning
            .is_some_and(|r| r.saturating_sub(c.thinking) > 0 && r > budget);
        let et = (crosses || (u.reasoning.is_none() && inline_here))
            .then(|| budget::event_thinking(&event, open, close, inline_thinking))
            .flatten();
        let mut ids = None;
        let think = match (u.reasoning, &et) {
            (Some(r), _) => r.saturating_sub(c.thinking),
            (None, None) => 0,
            (None, Some(et)) => {
                let most = k.saturating_sub(budget::markers_in(&event, &[open, close]));
                if et.closes && c.thinking + most > budget {
                    // the answer began in this event: how much of it was
                    // thinking, the tokenizer says
                    let t = budget::tokenize(
                        &c.shared.client,
                        &self.backend,
                        c.model.as_deref(),
                        &et.thinking,
                    )
                    .await;
                    let n = t.as_ref().map_or(most, |t| t.len() as u64);
                    ids = t;
                    n
                } else {
                    // (an event that ends the thinking within the budget
                    // counts its answer tokens too: the thinking is over)
                    most
                }
            }
        };
        let from = c.thinking;
        c.thinking += think;
        let Some(et) = et.filter(|_| think > 0 && c.thinking > budget) else {
            return Some(event);
        };
        let keep = budget.saturating_sub(from);
        if ids.is_none() && keep > 0 {
            ids = budget::tokenize(
                &c.shared.client,
                &self.backend,
                c.model.as_deref(),
                &et.thinking,
            )
            .await;
        }
        let ids = ids.unwrap_or_default();
        if keep > 0 && ids.len() as u64 != think {
            // the engine's count and its tokenizer disagree: whole
            return Some(event);
        }
        let lead = budget::markers_in(et.lead().as_bytes(), &[open]);
        let dropped = (k.saturating_sub(keep + lead), think - keep);
        match budget::cut(
            &c.shared.client,
            &self.backend,
            c.model.as_deref(),
            &event,
            &et,
            &ids,
            keep,
            dropped,
        )
        .await
        {
            Some(cut) => {
                c.thinking = budget;
                Some(cut)
            }
            None => Some(event),
        }
    }

    /// The start of an event held for its end, observed as it is when the
    /// body ends without it; what of it the client may get.
    fn feed_partial(&mut self) -> Bytes {
        let held = match self.exact.as_mut() {
            Some(c) if !c.partial.is_empty() => Bytes::from(std::mem::take(&mut c.partial)),
            _ => return Bytes::new(),
        };
        let now = self.t_recv.elapsed().as_nanos() as u64;
        self.feed(held, now)
    }

    /// Observe `data` and return what of it the client may get (complete
    /// events; usage-only events removed when the gateway injected usage).
    fn feed(&mut self, data: Bytes, now: u64) -> Bytes {
        let before = self.obs.fed();
        self.obs.feed(&data, now);
        self.strip.process(data, before, &self.obs)
    }

    pub(super) fn has_token(&self) -> bool {
        self.obs.peek().t_first_token_ns.is_some()
    }
}

/// The identity in the first `data: {...}` event of complete-event bytes.
fn first_identity(endpoint: Endpoint, bytes: &[u8]) -> Option<Identity> {
    let mut found = None;
    let mut framer = SseFramer::default();
    framer.feed(bytes, |ev| {
        if found.is_none() {
            found = Identity::from_chunk(endpoint, ev.data);
        }
    });
    found
}

pub(super) async fn step_opt(l: &mut Option<Leg>) -> Step {
    match l {
        Some(l) => l.step().await,
        None => std::future::pending().await,
    }
}
