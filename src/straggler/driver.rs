//! The managed path: drives a request's upstream legs and writes what the
//! client receives.
//!
//! 1. **First leg**, sent with retries (`proxy::send`). With hedging, its
//!    output is held until its first token; if none comes within the hedge
//!    delay, a duplicate goes to another backend, the first to produce a
//!    token wins and the other is dropped (the engine aborts it). Nothing
//!    reaches the client before the winner is known.
//! 2. The winner's bytes pass to the client on SSE event boundaries,
//!    untouched. When thinking reaches the budget (or the deadline minus the
//!    answer reserve passes while thinking), the leg is dropped at once (the
//!    engine aborts it and frees its KV cache) and a **continuation** goes
//!    out (`continuation`): its events are rewritten into the first leg's
//!    identity (`events`) and follow in the same response, ending with the
//!    summed usage (if the client asked for usage) and one `[DONE]`.
//! 3. At the hard deadline the response ends cleanly with
//!    `finish_reason: "length"`.
//!
//! A client that asked for no stream gets one JSON body assembled from the
//! same events (the first leg streams upstream). Per chunk the path costs a
//! channel send and the observer; only a forced answer's continuation is
//! parsed into JSON values.

use crate::config::Flavor;
use crate::error::GatewayError;
use crate::fleet::{Backend, Fleet, LegLoad};
use crate::proxy::context::RequestCtx;
use crate::proxy::request::Endpoint;
use crate::proxy::send::{self, bytes_body, Outgoing};
use crate::proxy::upstream::UpBody;
use crate::proxy::{headers, Shared};
use crate::record::Outcome;
use crate::straggler::action::{Action, Trigger};
use crate::straggler::continuation::{self, Forced};
use crate::straggler::events::{self, Assembler, Identity, Rewritten};
use crate::stream::body::ObservedBody;
use crate::stream::response::{ChannelBody, ResponseBody};
use crate::stream::strip::UsageStripper;
use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use std::sync::Arc;
use std::time::{Duration, Instant};
use thinkgate_asu::sse::SseFramer;
use thinkgate_asu::{BodyKind, Observer};
use tokio::sync::mpsc;
use tokio::time::sleep_until;

/// Chunks in flight between the task and the client connection.
const CHANNEL_DEPTH: usize = 16;

/// A managed request, ready to send.
pub struct Managed {
    pub shared: Arc<Shared>,
    pub fleet: Arc<Fleet>,
    pub ctx: RequestCtx,
    pub backend: Arc<Backend>,
    /// The first leg (its body may differ from the client's: streamed for a
    /// non-streamed client, usage injected, a native budget).
    pub out: Outgoing,
    /// The body the client sent, for the continuation.
    pub original: Bytes,
    pub client_streams: bool,
    /// The client asked for `stream_options.include_usage`.
    pub client_wants_usage: bool,
    /// The gateway added `include_usage` to a streamed first leg: usage-only
    /// events are kept from the client.
    pub injected: bool,
    /// The first leg asked the engine for usage on every chunk, to keep a
    /// budget exact in tokens (see `exact`).
    pub chunk_usage: ChunkUsageMode,
}

/// Whether a leg counts thinking from per-chunk usage, and whose usage that
/// is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkUsageMode {
    /// Events are counted (the engine reports no usage per chunk).
    Off,
    /// The client asked for usage on every chunk itself: it stays.
    Keep,
    /// The gateway asked for it: it is taken out before the client sees it.
    Strip,
}

/// Serve a managed request (see the module docs).
pub async fn respond(mut m: Managed) -> Response<ResponseBody> {
    let fleet = Arc::clone(&m.fleet);
    if m.ctx.plan.hedge {
        m.shared
            .hedge_budget
            .on_request(fleet.straggler.hedge.max_ratio);
    }
    let backend = Arc::clone(&m.backend);
    let (backend, resp) = match send::send(&m.shared, &fleet, &mut m.ctx, backend, &mut m.out).await
    {
        Ok(x) => x,
        Err(e) => return fail(&mut m.ctx, e),
    };
    m.ctx.t_upstream_ns = Some(m.ctx.elapsed_ns());
    m.ctx.status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    if !resp.status().is_success() || BodyKind::from_content_type(ct) != BodyKind::Sse {
        // An error, or an engine that did not stream: forwarded as is.
        let (mut parts, body) = resp.into_parts();
        headers::remove_hop_by_hop(&mut parts.headers);
        let kind = BodyKind::from_content_type(
            parts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
        );
        let obs = Observer::new(Arc::clone(&m.shared.observer), kind);
        let idle = m.shared.cfg.idle_timeout();
        return Response::from_parts(
            parts,
            ResponseBody::Observed(ObservedBody::new(body, obs, m.ctx, false, false, idle)),
        );
    }
    let mut leg = Leg::new(&m, backend, resp, None);
    if m.ctx.plan.hedge {
        leg = hedge(&mut m, leg).await;
    }
    // (A deadline that passed while the leg was held ends it in `run`.)
    let mut head = leg.head.take().unwrap_or_else(empty_parts);
    headers::remove_hop_by_hop(&mut head.headers);
    head.headers.remove(header::CONTENT_LENGTH);
    m.shared
        .add_response_headers(&mut head.headers, &m.ctx, &fleet);
    if m.client_streams {
        let (tx, body) = ChannelBody::new(CHANNEL_DEPTH);
        let view = View::stream(&m, tx);
        tokio::spawn(run(m, leg, view));
        Response::from_parts(head, ResponseBody::Channel(body))
    } else {
        let view = View::assemble(&m);
        let (status, body) = run(m, leg, view).await;
        head.status = status;
        head.headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        Response::from_parts(head, ResponseBody::Full(Full::new(body)))
    }
}

fn empty_parts() -> http::response::Parts {
    Response::new(()).into_parts().0
}

fn fail(ctx: &mut RequestCtx, err: GatewayError) -> Response<ResponseBody> {
    ctx.fail(&err);
    err.to_response().map(ResponseBody::Full)
}

/// One upstream leg that streams reasoning: its observer (thinking count
/// and text) and the bytes it has released on event boundaries.
struct Leg {
    backend: Arc<Backend>,
    head: Option<http::response::Parts>,
    /// An end seen while the leg was held, delivered by the next `step`.
    pending: Option<Step>,
    body: UpBody,
    obs: Observer,
    strip: UsageStripper,
    /// Bytes released while the leg was held (hedging).
    held: Vec<Bytes>,
    /// The response identity, from its first chunk.
    ident: Option<Identity>,
    endpoint: Endpoint,
    t_recv: Instant,
    /// A hedge counts on its backend until it wins (then the context does).
    load: Option<LegLoad>,
    /// Stop feeding a read at the event that reaches this many thinking
    /// tokens.
    force_budget: Option<u64>,
    /// `upstream_idle_timeout_secs`: the leg fails after this long silent.
    idle: Option<std::time::Duration>,
    /// Thinking counted in tokens from per-chunk usage.
    exact: Option<Counting>,
}

/// Thinking counted from the engine's per-chunk usage (see `exact`).
struct Counting {
    shared: Arc<Shared>,
    model: Option<String>,
    strip: bool,
    /// Usage seen on some chunk: until then events are counted.
    seen: bool,
    completion: u64,
    thinking: u64,
    /// The end of the captured thinking text that a cut left out.
    dropped: Option<String>,
}

enum Step {
    /// Complete events (possibly none).
    Bytes(Bytes),
    /// The body ended; the bytes of an unfinished event, if any.
    End(Bytes),
    Reset,
    /// Nothing from the upstream for the idle timeout.
    Idle,
}

impl Leg {
    fn new(
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
            body,
            obs: Observer::new(Arc::clone(cfg), BodyKind::Sse),
            strip: UsageStripper::default(),
            held: Vec::new(),
            ident: None,
            endpoint: m.ctx.endpoint,
            t_recv: m.ctx.t_recv,
            load,
            force_budget: m.ctx.plan.force_budget,
            idle: m.shared.cfg.idle_timeout(),
            exact: (m.chunk_usage != ChunkUsageMode::Off).then(|| Counting {
                shared: Arc::clone(&m.shared),
                model: m.ctx.features.model.clone(),
                strip: m.chunk_usage == ChunkUsageMode::Strip,
                seen: false,
                completion: 0,
                thinking: 0,
                dropped: None,
            }),
        }
    }

    async fn step(&mut self) -> Step {
        if let Some(s) = self.pending.take() {
            return s;
        }
        // terminal events wait a moment for the usage event (see `strip`)
        let next = if self.strip.holding() {
            let wait = crate::stream::strip::HOLD_FOR_USAGE;
            match tokio::time::timeout(wait, frame_or_idle(&mut self.body, self.idle)).await {
                Ok(f) => f,
                Err(_) => {
                    let held = self.strip.release_held();
                    return Step::Bytes(self.out(held));
                }
            }
        } else {
            frame_or_idle(&mut self.body, self.idle).await
        };
        let Some(frame) = next else {
            return Step::Idle;
        };
        match frame {
            Some(Ok(f)) => {
                let Ok(data) = f.into_data() else {
                    return Step::Bytes(Bytes::new());
                };
                let now = self.t_recv.elapsed().as_nanos() as u64;
                let out = match self.force_budget {
                    // One read may hold many events: feed them one at a
                    // time and stop at the one that reaches the budget
                    // (what follows it is never sent).
                    Some(budget) => {
                        let mut out = bytes::BytesMut::new();
                        for piece in event_pieces(&data) {
                            let before = self.obs.thinking_so_far();
                            let fed = self.feed(piece.clone(), now);
                            let fed = match self.count(&piece, before, budget).await {
                                // the stripper passed the event on as it came
                                Some(cut) if fed == piece => cut,
                                _ => self.out(fed),
                            };
                            out.extend_from_slice(&fed);
                            if self.obs.still_thinking() && self.thinking() >= budget {
                                break;
                            }
                        }
                        out.freeze()
                    }
                    None => {
                        let fed = self.feed(data, now);
                        self.out(fed)
                    }
                };
                if self.ident.is_none() && !out.is_empty() {
                    self.ident = first_identity(self.endpoint, &out);
                }
                Step::Bytes(out)
            }
            Some(Err(_)) => Step::Reset,
            None => {
                let rest = self.strip.flush();
                Step::End(self.out(rest))
            }
        }
    }

    /// Thinking tokens so far: from the engine's usage where it reports it
    /// per chunk, else one per thinking event.
    fn thinking(&self) -> u64 {
        match &self.exact {
            Some(c) if c.seen => c.thinking,
            _ => self.obs.thinking_so_far(),
        }
    }

    /// Bytes on their way to the client: without the per-chunk usage the
    /// gateway asked for.
    fn out(&self, b: Bytes) -> Bytes {
        match &self.exact {
            Some(c) if c.strip => crate::straggler::exact::strip_chunk_usage(b),
            _ => b,
        }
    }

    /// Count the thinking tokens of `event` (just fed; `before` was the
    /// event count before it) from its usage. When they pass `budget`,
    /// returns the event cut at the budget, if the engine's tokenizer says
    /// where.
    async fn count(&mut self, event: &Bytes, before: u64, budget: u64) -> Option<Bytes> {
        let thinking_event = self.obs.thinking_so_far() > before;
        let still = self.obs.still_thinking();
        let c = self.exact.as_mut()?;
        let u = crate::straggler::exact::chunk_usage(event)?;
        let k = u.completion.saturating_sub(c.completion);
        c.completion = u.completion;
        let markers = &c.shared.markers;
        let think = match u.reasoning {
            Some(r) => r.saturating_sub(c.thinking),
            None if thinking_event => k.saturating_sub(crate::straggler::exact::markers_in(
                event,
                &[markers.open(), markers.close()],
            )),
            None => 0,
        };
        if !c.seen {
            // events counted before usage showed up (none, on vLLM)
            c.thinking = self
                .obs
                .thinking_so_far()
                .saturating_sub(u64::from(thinking_event));
            c.seen = true;
        }
        c.thinking += think;
        if !still || think == 0 || c.thinking <= budget {
            return None;
        }
        let keep = think - (c.thinking - budget).min(think);
        let cut = crate::straggler::exact::cut(
            &c.shared.client,
            &self.backend,
            c.model.as_deref(),
            event,
            markers.open(),
            think,
            keep,
            !c.strip,
        )
        .await?;
        c.thinking = budget;
        c.dropped = Some(cut.dropped);
        Some(cut.event)
    }

    /// Observe `data` and return what of it the client may get (complete
    /// events; usage-only events removed when the gateway injected usage).
    fn feed(&mut self, data: Bytes, now: u64) -> Bytes {
        let before = self.obs.fed();
        self.obs.feed(&data, now);
        self.strip.process(data, before, &self.obs)
    }

    fn has_token(&self) -> bool {
        self.obs.peek().t_first_token_ns.is_some()
    }
}

/// `data` cut after each blank line that ends an SSE event (`\n\n` or
/// `\n\r\n`); the last piece is the rest. Other line endings only make the
/// pieces coarser, never wrong: the observer frames the bytes either way.
pub(crate) fn event_pieces(data: &Bytes) -> impl Iterator<Item = Bytes> + '_ {
    let mut start = 0;
    let mut done = false;
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        let rest = &data[start..];
        let mut from = 0;
        while let Some(i) = memchr::memchr(b'\n', &rest[from..]).map(|i| i + from) {
            let end = if rest.get(i + 1) == Some(&b'\n') {
                Some(i + 2)
            } else if rest.get(i + 1..i + 3) == Some(b"\r\n") {
                Some(i + 3)
            } else {
                None
            };
            if let Some(e) = end {
                let piece = data.slice(start..start + e);
                start += e;
                return Some(piece);
            }
            from = i + 1;
        }
        done = true;
        (start < data.len()).then(|| data.slice(start..))
    })
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

/// How long to wait for a first token before hedging `b`.
fn hedge_delay(cfg: &crate::straggler::HedgeConfig, b: &Backend) -> Option<Duration> {
    let pct = cfg
        .after_percentile
        .and_then(|p| b.ttft_ring.percentile_ms(p))
        .map(|ms| ms.max(cfg.min_after_ms));
    pct.or(cfg.after_ms).map(Duration::from_millis)
}

/// Hold `a` until its first token; past the hedge delay race a duplicate.
/// Returns the leg that goes on; the other is dropped, which aborts it
/// upstream.
async fn hedge(m: &mut Managed, mut a: Leg) -> Leg {
    let fleet = Arc::clone(&m.fleet);
    let delay = hedge_delay(&fleet.straggler.hedge, &a.backend);
    let t_hedge = delay.map(|d| tokio::time::Instant::now() + d);
    let deadline = at(m.ctx.t_recv, m.ctx.plan.deadline);
    let mut b: Option<Leg> = None;
    let mut hedged = false;
    loop {
        if a.has_token() || a.pending.is_some() {
            break;
        }
        if b.as_ref().is_some_and(Leg::has_token) {
            if let Some(won) = b.take() {
                return promote(m, won);
            }
        }
        tokio::select! {
            // Past the deadline: `run` ends the response cleanly.
            _ = sleep_opt(deadline), if deadline.is_some() => break,
            s = a.step() => match s {
                Step::Bytes(x) => a.held.push(x),
                end => match b.take() {
                    // The original failed first: the hedge carries on.
                    Some(l) => a = promote(m, l),
                    None => a.pending = Some(end),
                },
            },
            s = step_opt(&mut b), if b.is_some() => match s {
                Step::Bytes(x) => {
                    if let Some(l) = b.as_mut() {
                        l.held.push(x);
                    }
                }
                _ => {
                    if let Some(l) = b.take() {
                        m.ctx.act(Action::HedgeWasted {
                            backend: l.backend.upstream.name.to_string(),
                        });
                    }
                }
            },
            _ = sleep_opt(t_hedge), if !hedged && t_hedge.is_some() => {
                hedged = true;
                if m.shared.hedge_budget.try_spend() {
                    if let Some(leg) = open_hedge(m, &a).await {
                        m.ctx.act(Action::HedgeSent {
                            backend: leg.backend.upstream.name.to_string(),
                            after_ms: delay.map_or(0, |d| d.as_millis() as u64),
                        });
                        b = Some(leg);
                    }
                }
            },
        }
    }
    if let Some(l) = b {
        m.ctx.act(Action::HedgeWasted {
            backend: l.backend.upstream.name.to_string(),
        });
    }
    a
}

/// The hedge goes on: the request's context moves to its backend.
fn promote(m: &mut Managed, mut won: Leg) -> Leg {
    m.ctx.act(Action::HedgeWon {
        backend: won.backend.upstream.name.to_string(),
    });
    m.ctx.switch_backend(Arc::clone(&won.backend));
    won.load = None;
    won
}

/// The next frame, or `None` after `idle` without one.
async fn frame_or_idle(
    body: &mut UpBody,
    idle: Option<std::time::Duration>,
) -> Option<Option<Result<http_body::Frame<Bytes>, crate::proxy::upstream::BoxError>>> {
    match idle {
        Some(d) => tokio::time::timeout(d, body.frame()).await.ok(),
        None => Some(body.frame().await),
    }
}

async fn step_opt(l: &mut Option<Leg>) -> Step {
    match l {
        Some(l) => l.step().await,
        None => std::future::pending().await,
    }
}

/// Send the hedge: the same first-leg request to another healthy backend
/// (no retries: the original is still running).
async fn open_hedge(m: &mut Managed, a: &Leg) -> Option<Leg> {
    let mut info = m.ctx.route().clone();
    let other = m
        .fleet
        .pick_excluding(m.ctx.arm_index(), &mut info, &[a.backend.index])
        .ok()?;
    let load = LegLoad::new(Arc::clone(&other));
    let mut out = Outgoing {
        method: m.out.method.clone(),
        path_q: m.out.path_q.clone(),
        headers: m.out.headers.clone(),
        body: match &m.out.body {
            Some(http_body_util::Either::Left(f)) => Some(http_body_util::Either::Left(f.clone())),
            _ => return None,
        },
    };
    let resp = send::once(&m.shared, &other, &mut out).await.ok()?;
    let ct = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    if !resp.status().is_success() || BodyKind::from_content_type(ct) != BodyKind::Sse {
        return None;
    }
    Some(Leg::new(m, other, resp, Some(load)))
}

/// Where the client's bytes go.
enum Sink {
    Channel(mpsc::Sender<Bytes>),
    Assemble(Box<(SseFramer, Assembler)>),
}

/// The client's view of the response: what it receives, observed.
struct View {
    obs: Observer,
    sink: Sink,
    t_recv: Instant,
    /// Thinking tokens of a forced answer, counted on the first leg (in
    /// tokens where the engine reported usage per chunk): an assembled body
    /// shows only text, and a cut event holds several tokens.
    forced_thinking: Option<u64>,
}

/// The client went away.
struct Gone;

impl View {
    fn stream(m: &Managed, tx: mpsc::Sender<Bytes>) -> Self {
        Self {
            obs: Observer::new(Arc::clone(&m.shared.observer), BodyKind::Sse),
            sink: Sink::Channel(tx),
            t_recv: m.ctx.t_recv,
            forced_thinking: None,
        }
    }

    fn assemble(m: &Managed) -> Self {
        Self {
            obs: Observer::new(Arc::clone(&m.shared.observer), BodyKind::Json),
            sink: Sink::Assemble(Box::new((
                SseFramer::default(),
                Assembler::new(m.backend.flavor),
            ))),
            t_recv: m.ctx.t_recv,
            forced_thinking: None,
        }
    }

    fn now(&self) -> u64 {
        self.t_recv.elapsed().as_nanos() as u64
    }

    /// Send `b` to the client.
    async fn emit(&mut self, b: Bytes) -> Result<(), Gone> {
        if b.is_empty() {
            return Ok(());
        }
        match &mut self.sink {
            Sink::Channel(tx) => {
                let now = self.t_recv.elapsed().as_nanos() as u64;
                self.obs.feed(&b, now);
                tx.send(b).await.map_err(|_| Gone)
            }
            Sink::Assemble(a) => {
                let (framer, asm) = &mut **a;
                framer.feed(&b, |ev| asm.push(ev.data));
                Ok(())
            }
        }
    }

    /// Observe `b` as if the client had received it (the usage the gateway
    /// injected for itself), without sending it.
    fn note(&mut self, b: &[u8]) {
        match &mut self.sink {
            Sink::Channel(_) => {
                let now = self.now();
                self.obs.feed(b, now);
            }
            Sink::Assemble(a) => {
                let (framer, asm) = &mut **a;
                framer.feed(b, |ev| asm.push(ev.data));
            }
        }
    }

    async fn closed(&self) {
        match &self.sink {
            Sink::Channel(tx) => tx.closed().await,
            Sink::Assemble(_) => std::future::pending().await,
        }
    }

    /// Settle the request; for an assembled response, the status and body.
    fn settle(self, ctx: &mut RequestCtx, outcome: Outcome) -> (StatusCode, Bytes) {
        let View {
            mut obs,
            sink,
            t_recv,
            forced_thinking,
        } = self;
        let (status, body) = match sink {
            Sink::Channel(_) => (StatusCode::OK, Bytes::new()),
            Sink::Assemble(a) => {
                let body = a.1.finish(ctx.endpoint);
                obs.feed(&body, t_recv.elapsed().as_nanos() as u64);
                let status = if body.starts_with(b"{\"error\"") {
                    StatusCode::BAD_GATEWAY
                } else {
                    StatusCode::OK
                };
                (status, body)
            }
        };
        ctx.status = status.as_u16();
        let now = t_recv.elapsed().as_nanos() as u64;
        let mut summary = obs.finish(now);
        if let Some(k) = forced_thinking {
            summary.thinking_tokens = k.min(summary.completion_tokens);
            summary.visible_tokens = summary.completion_tokens - summary.thinking_tokens;
            summary.token_source = thinking_counted(summary.token_source);
        }
        ctx.settle(outcome, Some(summary));
        (status, body)
    }
}

/// The token source once thinking was counted on the stream.
fn thinking_counted(s: thinkgate_asu::TokenSource) -> thinkgate_asu::TokenSource {
    use thinkgate_asu::TokenSource as T;
    match s {
        T::UsageSplitByChars | T::UsageSplitByChunks => T::UsageSplitByChunks,
        other => other,
    }
}

/// How the first leg ended.
enum FirstEnd {
    /// The stream ended (normally or not); everything was passed on.
    Done(Outcome),
    /// Thinking must close now: force the answer.
    Force(Trigger),
    /// The hard deadline passed.
    Deadline,
    Gone,
}

fn at(t_recv: Instant, d: Option<Duration>) -> Option<tokio::time::Instant> {
    d.map(|d| tokio::time::Instant::from_std(t_recv + d))
}

async fn sleep_opt(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Stream the first leg, then a forced answer if one is due; settle.
async fn run(mut m: Managed, mut leg: Leg, mut view: View) -> (StatusCode, Bytes) {
    let plan = m.ctx.plan;
    let deadline = at(m.ctx.t_recv, plan.deadline);
    let force_at = at(m.ctx.t_recv, plan.force_at);
    let held = std::mem::take(&mut leg.held);
    let mut end = None;
    for b in held {
        if view.emit(b).await.is_err() {
            end = Some(FirstEnd::Gone);
            break;
        }
    }
    let end = match end {
        Some(e) => e,
        None => first_leg(&mut m, &mut leg, &mut view, deadline, force_at).await,
    };
    match end {
        FirstEnd::Done(outcome) => view.settle(&mut m.ctx, outcome),
        FirstEnd::Gone => view.settle(&mut m.ctx, Outcome::ClientGone),
        FirstEnd::Deadline => {
            let id = leg.ident.take().unwrap_or_else(|| fallback_ident(&m));
            drop(leg);
            end_at_deadline(m, view, &id).await
        }
        FirstEnd::Force(trigger) => forced(m, leg, view, trigger, deadline).await,
    }
}

async fn first_leg(
    m: &mut Managed,
    leg: &mut Leg,
    view: &mut View,
    deadline: Option<tokio::time::Instant>,
    force_at: Option<tokio::time::Instant>,
) -> FirstEnd {
    let force_budget = m.ctx.plan.force_budget;
    loop {
        let may_force = force_at.is_some() && leg.obs.still_thinking();
        tokio::select! {
            biased;
            _ = view.closed() => return FirstEnd::Gone,
            _ = sleep_opt(deadline), if deadline.is_some() => return FirstEnd::Deadline,
            _ = sleep_opt(force_at), if may_force => return FirstEnd::Force(Trigger::Deadline),
            s = leg.step() => match s {
                // past `[DONE]` (already sent), a failed transport end
                // changes nothing for the client: it is the end
                Step::Reset if leg.obs.peek().done_marker => {
                    leg.pending = Some(Step::End(Bytes::new()));
                }
                Step::Bytes(b) => {
                    m.ctx.set_thinking(leg.obs.in_thinking());
                    let p = leg.obs.peek();
                    m.ctx.set_output_tokens(p.reasoning_chunks + p.visible_chunks);
                    if view.emit(b).await.is_err() {
                        return FirstEnd::Gone;
                    }
                    if force_budget.is_some_and(|fb| leg.obs.still_thinking() && leg.thinking() >= fb) {
                        return FirstEnd::Force(Trigger::Budget);
                    }
                }
                Step::End(rest) => {
                    if view.emit(rest).await.is_err() {
                        return FirstEnd::Gone;
                    }
                    if m.injected {
                        if let (Some(u), Some(id)) = (leg.obs.peek().usage.as_ref(), leg.ident.as_ref()) {
                            if let Ok(v) = serde_json::to_value(u) {
                                view.note(&id.usage(&v));
                            }
                        }
                    }
                    return FirstEnd::Done(Outcome::Completed);
                }
                Step::Reset => {
                    let _ = view.emit(upstream_lost()).await;
                    return FirstEnd::Done(Outcome::UpstreamReset);
                }
                Step::Idle => {
                    let _ = view.emit(upstream_idle(m)).await;
                    return FirstEnd::Done(Outcome::UpstreamIdle);
                }
            }
        }
    }
}

fn fallback_ident(m: &Managed) -> Identity {
    Identity::fallback(m.ctx.endpoint, &m.ctx.id, m.ctx.features.model.as_deref())
}

/// The error event sent when an upstream fails mid-stream (vLLM's shape;
/// the same as the plain path's).
fn upstream_lost() -> Bytes {
    crate::stream::body::upstream_lost(
        "upstream_reset",
        "the upstream connection was lost mid-stream",
        false,
    )
}

fn upstream_idle(m: &Managed) -> Bytes {
    let secs = m.shared.cfg.upstream_idle_timeout_secs;
    crate::stream::body::upstream_lost(
        "upstream_idle",
        &format!("the upstream sent nothing for {secs} s"),
        false,
    )
}

async fn end_at_deadline(mut m: Managed, mut view: View, id: &Identity) -> (StatusCode, Bytes) {
    m.ctx.act(Action::DeadlineHit);
    let _ = view.emit(id.finish("length")).await;
    let _ = view.emit(Bytes::from_static(events::DONE)).await;
    view.settle(&mut m.ctx, Outcome::Completed)
}

/// Abort the first leg and answer through a continuation.
async fn forced(
    mut m: Managed,
    leg: Leg,
    mut view: View,
    trigger: Trigger,
    deadline: Option<tokio::time::Instant>,
) -> (StatusCode, Bytes) {
    let thinking_tokens = leg.thinking();
    let mut thinking = leg.obs.thinking_text().unwrap_or_default();
    // the end of the event cut at the budget never reached the client
    if let Some(d) = leg.exact.as_ref().and_then(|c| c.dropped.as_deref()) {
        if thinking.ends_with(d) {
            thinking.truncate(thinking.len() - d.len());
        }
    }
    let in_fields = leg.obs.reasoning_in_fields();
    let id = leg.ident.clone().unwrap_or_else(|| fallback_ident(&m));
    let backend = Arc::clone(&leg.backend);
    // Dropping the leg drops the upstream request: the engine aborts it.
    drop(leg);
    m.ctx.set_thinking(false);
    view.forced_thinking = Some(thinking_tokens);
    m.ctx.act(Action::ForcedAnswer {
        trigger,
        thinking_tokens,
    });
    let cue = m.fleet.straggler.answer_cue.clone();
    let markers = m.shared.markers.clone();
    let cont = continuation::build(&Forced {
        original: &m.original,
        endpoint: m.ctx.endpoint,
        flavor: backend.flavor,
        thinking: &thinking,
        thinking_tokens,
        markers: &markers,
        cue: &cue,
        answer_max_tokens: m.fleet.straggler.answer_max_tokens,
    });
    let Some(continuation::Continuation { body, echo }) = cont else {
        return fallback(m, view, &id, "request cannot be continued").await;
    };
    if !in_fields {
        // The client saw thinking open inline: close it the same way.
        let close = format!("{}{}", markers.close(), cue);
        if view.emit(id.text(&close)).await.is_err() {
            return view.settle(&mut m.ctx, Outcome::ClientGone);
        }
    }
    let mut out = Outgoing {
        method: http::Method::POST,
        path_q: m.out.path_q.clone(),
        headers: m.out.headers.clone(),
        body: bytes_body(body),
    };
    let fleet = Arc::clone(&m.fleet);
    let shared = Arc::clone(&m.shared);
    let sent = tokio::select! {
        r = send::send(&shared, &fleet, &mut m.ctx, backend, &mut out) => Some(r),
        _ = sleep_opt(deadline), if deadline.is_some() => None,
    };
    let resp = match sent {
        None => return end_at_deadline(m, view, &id).await,
        Some(Err(e)) => return fallback(m, view, &id, &e.to_string()).await,
        Some(Ok((_, r))) if !r.status().is_success() => {
            let why = format!("continuation answered {}", r.status());
            return fallback(m, view, &id, &why).await;
        }
        Some(Ok((_, r))) => r,
    };
    let mut body = resp.into_body();
    let idle = m.shared.cfg.idle_timeout();
    let mut echo = events::Echo::new(echo);
    let mut framer = SseFramer::default();
    let mut usage_event: Option<serde_json::Map<String, serde_json::Value>> = None;
    // terminal chunks wait for the usage event (see `events::put_back_moved`)
    let mut terminal: Vec<serde_json::Map<String, serde_json::Value>> = Vec::new();
    let mut pending: Vec<Rewritten> = Vec::new();
    let mut saw_done = false;
    let outcome = loop {
        let frame = tokio::select! {
            biased;
            _ = view.closed() => break Outcome::ClientGone,
            _ = sleep_opt(deadline), if deadline.is_some() => {
                drop(body);
                return end_at_deadline(m, view, &id).await;
            }
            f = frame_or_idle(&mut body, idle) => match f {
                Some(f) => f,
                None => {
                    let _ = view.emit(upstream_idle(&m)).await;
                    break Outcome::UpstreamIdle;
                }
            },
        };
        match frame {
            Some(Ok(f)) => {
                let Ok(data) = f.into_data() else { continue };
                framer.feed(&data, |ev| {
                    saw_done |= ev.data == b"[DONE]";
                    pending.push(events::rewrite(&id, &mut echo, ev.data));
                });
                let mut gone = false;
                for r in pending.drain(..) {
                    let sent = match r {
                        Rewritten::Send(b) | Rewritten::Error(b) => view.emit(b).await,
                        Rewritten::Terminal(t) => {
                            terminal.push(t);
                            Ok(())
                        }
                        Rewritten::Usage(u) => {
                            usage_event = Some(u);
                            Ok(())
                        }
                        Rewritten::Skip => Ok(()),
                    };
                    if sent.is_err() {
                        gone = true;
                        break;
                    }
                }
                if gone {
                    break Outcome::ClientGone;
                }
            }
            Some(Err(_)) if !saw_done => {
                for t in terminal.drain(..) {
                    let _ = view
                        .emit(events::event(&serde_json::Value::Object(t)))
                        .await;
                }
                let _ = view.emit(upstream_lost()).await;
                break Outcome::UpstreamReset;
            }
            // past its `[DONE]`, a failed transport end changes nothing
            Some(Err(_)) | None => {
                let cont_usage = usage_event.as_ref().and_then(|u| u.get("usage"));
                let total = events::summed_usage(thinking_tokens, cont_usage);
                let sends_usage = m.client_wants_usage || !m.client_streams;
                let mut r = Ok(());
                for mut t in terminal.drain(..) {
                    if let (false, Some(u)) = (sends_usage, usage_event.as_ref()) {
                        events::put_back_moved(&mut t, u);
                    }
                    if r.is_ok() {
                        r = view
                            .emit(events::event(&serde_json::Value::Object(t)))
                            .await;
                    }
                }
                // the engine's own usage event, with the summed usage
                let u = match usage_event.take() {
                    Some(mut e) => {
                        e.insert("usage".into(), total);
                        events::event(&serde_json::Value::Object(e))
                    }
                    None => id.usage(&total),
                };
                if r.is_ok() {
                    r = if sends_usage {
                        view.emit(u).await
                    } else {
                        view.note(&u);
                        Ok(())
                    };
                }
                let r = match r {
                    Ok(()) => view.emit(Bytes::from_static(events::DONE)).await,
                    e => e,
                };
                break if r.is_ok() {
                    Outcome::Completed
                } else {
                    Outcome::ClientGone
                };
            }
        }
    };
    view.settle(&mut m.ctx, outcome)
}

/// A forced answer that cannot be continued ends like a length cut.
async fn fallback(mut m: Managed, mut view: View, id: &Identity, why: &str) -> (StatusCode, Bytes) {
    m.ctx.act(Action::ForcedFallback {
        reason: why.chars().take(200).collect(),
    });
    let mut r = view.emit(id.finish("length")).await;
    if r.is_ok() {
        r = view.emit(Bytes::from_static(events::DONE)).await;
    }
    let outcome = if r.is_ok() {
        Outcome::Completed
    } else {
        Outcome::ClientGone
    };
    view.settle(&mut m.ctx, outcome)
}

/// The first leg's body for `backend`: a non-streamed client's request
/// streams upstream (with usage), a native budget is passed to engines that
/// enforce one, and usage on every chunk is asked for when `chunk_usage` is
/// on. `None` when the body is not a JSON object.
pub fn first_leg_body(
    original: &Bytes,
    client_streams: bool,
    native_budget: Option<u64>,
    flavor: Flavor,
    chunk_usage: bool,
) -> Option<Bytes> {
    let native_key = match flavor {
        Flavor::Vllm => Some("thinking_token_budget"),
        Flavor::Llamacpp => Some("thinking_budget_tokens"),
        Flavor::Sglang | Flavor::Openai => None,
    };
    let native = native_budget.zip(native_key);
    if client_streams && native.is_none() && !chunk_usage {
        return Some(original.clone());
    }
    let mut v: serde_json::Value = serde_json::from_slice(original).ok()?;
    let o = v.as_object_mut()?;
    if !client_streams {
        o.insert("stream".into(), true.into());
        o.insert(
            "stream_options".into(),
            serde_json::json!({"include_usage": true}),
        );
    }
    if chunk_usage {
        let so = o
            .entry("stream_options")
            .or_insert_with(|| serde_json::json!({}));
        if !so.is_object() {
            *so = serde_json::json!({});
        }
        if let Some(so) = so.as_object_mut() {
            so.insert("include_usage".into(), true.into());
            so.insert("continuous_usage_stats".into(), true.into());
        }
    }
    if let Some((b, k)) = native {
        o.insert(k.into(), b.into());
    }
    serde_json::to_vec(&v).ok().map(Bytes::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_end_after_each_event() {
        let d = Bytes::from_static(b"data: a\n\ndata: b\r\n\r\n: ping\n\ndata: par");
        let p: Vec<Bytes> = event_pieces(&d).collect();
        assert_eq!(
            p,
            [
                &b"data: a\n\n"[..],
                b"data: b\r\n\r\n",
                b": ping\n\n",
                b"data: par"
            ]
        );
        assert_eq!(p.concat(), d.to_vec());
        assert_eq!(event_pieces(&Bytes::new()).count(), 0);
    }
}
