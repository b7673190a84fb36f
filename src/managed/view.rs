//! What the client receives: a channel to its connection (streamed), or an
//! assembler of one JSON body (not streamed); observed as sent, and settled
//! once with the request's outcome.

use super::assemble::Assembler;
use super::Managed;
use crate::context::RequestCtx;
use crate::record::Outcome;
use bytes::Bytes;
use http::StatusCode;
use std::sync::Arc;
use std::time::Instant;
use thinkgate_asu::sse::SseFramer;
use thinkgate_asu::{BodyKind, Observer};
use tokio::sync::mpsc;

/// Where the client's bytes go.
enum Sink {
    Channel(mpsc::Sender<Bytes>),
    Assemble(Box<(SseFramer, Assembler)>),
}

/// The client's view of the response: what it receives, observed.
pub(super) struct View {
    pub(super) obs: Observer,
    sink: Sink,
    pub(super) t_recv: Instant,
    /// Thinking tokens of a forced answer, counted on the first leg (in
    /// tokens where the engine reported usage per chunk): an assembled body
    /// shows only text, and a cut event holds several tokens.
    pub(super) forced_thinking: Option<u64>,
}

/// The client went away.
pub(super) struct Gone;

impl View {
    pub(super) fn stream(m: &Managed, tx: mpsc::Sender<Bytes>) -> Self {
        Self {
            obs: Observer::new(Arc::clone(&m.shared.observer), BodyKind::Sse),
            sink: Sink::Channel(tx),
            t_recv: m.ctx.t_recv,
            forced_thinking: None,
        }
    }

    pub(super) fn assemble(m: &Managed) -> Self {
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
    pub(super) async fn emit(&mut self, b: Bytes) -> Result<(), Gone> {
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
    pub(super) fn note(&mut self, b: &[u8]) {
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

    pub(super) async fn closed(&self) {
        match &self.sink {
            Sink::Channel(tx) => tx.closed().await,
            Sink::Assemble(_) => std::future::pending().await,
        }
    }

    /// Settle the request; for an assembled response, the status and body.
    pub(super) fn settle(self, ctx: &mut RequestCtx, outcome: Outcome) -> (StatusCode, Bytes) {
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
