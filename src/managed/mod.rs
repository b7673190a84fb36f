//! The managed path: drives a request's upstream legs and writes what the
//! client receives.
//!
//! 1. **First leg**, sent with retries (`upstream::send`). With hedging, its
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
//!
//! Files, in the order a managed request meets them: `leg_body` (the first
//! leg's request), `leg` (reading a leg, where the thinking budget is
//! counted and cut), `budget` (the budget exact in tokens where the engine
//! says how many each event holds), `hedge` (the race before the first
//! token), `view` (what the client receives), `first_leg` (streaming the
//! first leg until it ends or must be cut), `forced` (the forced answer
//! through a `continuation` whose `events` are rewritten into the first
//! leg's identity), `assemble` (the body of a client that asked for no
//! stream).

mod assemble;
mod budget;
mod clock;
mod continuation;
pub mod events;
mod first_leg;
mod forced;
mod hedge;
mod leg;
mod leg_body;
mod native_end;
mod pieces;
mod view;

pub use leg_body::first_leg_body;

use crate::body::response::{error_response, observed, ChannelBody, ResponseBody};
use crate::config::Flavor;
use crate::context::request::{Endpoint, Features};
use crate::context::{headers, RequestCtx};
use crate::fleet::{Backend, Fleet};
use crate::state::Shared;
use crate::straggler::{LoopAction, Plan};
use crate::upstream::send::{self, Outgoing};
use bytes::Bytes;
use http::{header, HeaderValue, Response};
use http_body_util::{Either, Full};
use leg::Leg;
use std::sync::Arc;
use view::View;

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
    /// budget exact in tokens (see `budget`).
    pub chunk_usage: ChunkUsageMode,
    /// The first leg asked llama.cpp for `reasoning_control`: a forced
    /// answer first asks the engine to end the thinking (`native_end`).
    pub reasoning_control: bool,
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
            .extra_legs
            .on_hedgeable(fleet.straggler.hedge.max_ratio);
    }
    let backend = Arc::clone(&m.backend);
    let t_sent = tokio::time::Instant::now();
    // every backend this request went to, by a retry or a hedge: neither
    // goes where the other has been
    let tried = send::Tried::default();
    let (sent, hedged) = if m.ctx.plan.hedge {
        hedge::send_racing(&mut m, backend, t_sent, &tried).await
    } else {
        (
            send::send(&m.shared, &fleet, &mut m.ctx, backend, &mut m.out).await,
            false,
        )
    };
    let (backend, resp) = match sent {
        Ok(x) => x,
        Err(e) => return error_response(&mut m.ctx, e),
    };
    m.ctx.t_upstream_ns = Some(m.ctx.elapsed_ns());
    m.ctx.status = resp.status().as_u16();
    if !crate::upstream::is_event_stream(&resp) {
        // An error, or an engine that did not stream: forwarded as is, with
        // the same head as on the plain path.
        return observed(&m.shared, &fleet, m.ctx, resp, m.injected);
    }
    let mut leg = Leg::new(&m, backend, resp, None);
    if m.ctx.plan.hedge {
        leg = hedge::race(&mut m, leg, t_sent, hedged, &tried).await;
    }
    // (A deadline that passed while the leg was held ends it in `run`.)
    let mut head = leg.head.take().unwrap_or_else(empty_parts);
    head.headers.remove(header::CONTENT_LENGTH);
    headers::client_head(&mut head.headers, &m.ctx, &m.shared.cfg, &fleet);
    if m.client_streams {
        let (tx, body) = ChannelBody::new(CHANNEL_DEPTH);
        let view = View::stream(&m, tx);
        tokio::spawn(first_leg::run(m, leg, view));
        Response::from_parts(head, ResponseBody::Channel(body))
    } else {
        let view = View::assemble(&m);
        let (status, body) = Box::pin(first_leg::run(m, leg, view)).await;
        head.status = status;
        head.headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        Response::from_parts(head, ResponseBody::Full(Full::new(body)))
    }
}

impl Managed {
    /// The response identity when the first leg gave none (no event yet).
    fn fallback_ident(&self) -> events::Identity {
        events::Identity::fallback(
            self.ctx.endpoint,
            &self.ctx.id,
            self.ctx.features.model.as_deref(),
        )
    }
}

fn empty_parts() -> http::response::Parts {
    Response::new(()).into_parts().0
}

/// A request the managed path takes, before its context joins it.
pub struct Prepared {
    shared: Arc<Shared>,
    fleet: Arc<Fleet>,
    backend: Arc<Backend>,
    plan: Plan,
    out: Outgoing,
    original: Bytes,
    client_streams: bool,
    client_wants_usage: bool,
    injected: bool,
    /// The first leg adds usage the gateway did not inject before.
    adds_usage: bool,
    chunk_usage: ChunkUsageMode,
    reasoning_control: bool,
}

impl Prepared {
    pub fn with_ctx(self, mut ctx: RequestCtx) -> Managed {
        if self.adds_usage {
            ctx.note_usage_injected();
        }
        ctx.plan = self.plan;
        Managed {
            shared: self.shared,
            fleet: self.fleet,
            ctx,
            backend: self.backend,
            out: self.out,
            original: self.original,
            client_streams: self.client_streams,
            client_wants_usage: self.client_wants_usage,
            injected: self.injected,
            chunk_usage: self.chunk_usage,
            reasoning_control: self.reasoning_control,
        }
    }
}

/// Prepare a request for the managed path: its first leg's body (see
/// [`first_leg_body`]). `None` when that body cannot be written (a body
/// that is not a JSON object, a streamed upload): the plain path takes it.
#[expect(
    clippy::too_many_arguments,
    reason = "the request as the pipeline read it"
)]
pub fn prepare(
    shared: &Arc<Shared>,
    fleet: &Arc<Fleet>,
    backend: &Arc<Backend>,
    plan: Plan,
    features: &Features,
    out: &Outgoing,
    sent: &Bytes,
    original: &Bytes,
    injected: bool,
    endpoint: Endpoint,
) -> Option<Prepared> {
    let native = plan.budget.filter(|_| fleet.straggler.native_budget);
    // llama.cpp ends a running stream's thinking on request (its control
    // endpoint serves chat completions only)
    let reasoning_control = fleet.straggler.native_end
        && backend.flavor == Flavor::Llamacpp
        && endpoint == Endpoint::Chat
        && (plan.forces() || plan.on_loop == LoopAction::ForceAnswer);
    let client_streams = features.stream;
    // vLLM says how many tokens each chunk carried when asked: a budget the
    // gateway enforces is then exact in tokens (`budget`)
    let chunk_usage = match (plan.force_budget, backend.flavor) {
        (Some(_), Flavor::Vllm) if features.include_usage && features.continuous_usage => {
            ChunkUsageMode::Keep
        }
        (Some(_), Flavor::Vllm) => ChunkUsageMode::Strip,
        _ => ChunkUsageMode::Off,
    };
    let Some(Either::Left(as_read)) = &out.body else {
        return None;
    };
    let leg_body = if client_streams
        && native.is_none()
        && chunk_usage == ChunkUsageMode::Off
        && !reasoning_control
    {
        as_read.clone()
    } else {
        // the body as sent (usage injected) gets what the leg needs
        let b = first_leg_body(
            sent,
            client_streams,
            native,
            backend.flavor,
            chunk_usage != ChunkUsageMode::Off,
            reasoning_control,
        )?;
        Full::new(b)
    };
    // usage the client did not ask for is kept from it
    let adds_usage = chunk_usage == ChunkUsageMode::Strip && !features.include_usage;
    Some(Prepared {
        shared: Arc::clone(shared),
        fleet: Arc::clone(fleet),
        backend: Arc::clone(backend),
        plan,
        out: out.with_body(leg_body),
        original: original.clone(),
        client_streams,
        client_wants_usage: features.include_usage,
        injected: (injected || adds_usage) && client_streams,
        adds_usage: adds_usage && !injected && client_streams,
        chunk_usage,
        reasoning_control,
    })
}
