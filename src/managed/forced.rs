//! The forced answer: the first leg is dropped (its engine aborts it and
//! frees its KV cache) and a continuation carries the answer, its events
//! rewritten into the first leg's identity; the ends when that cannot be
//! done (a fallback) or the hard deadline passes.

use super::clock::sleep_opt;
use super::continuation::{self, Forced};
use super::events::{self, Identity, Rewritten};
use super::leg::Leg;
use super::view::View;
use super::Managed;
use crate::record::Outcome;
use crate::straggler::action::{Action, ForcedWay, Trigger};
use crate::upstream::send;
use crate::upstream::watched::Watched;
use bytes::Bytes;
use http::StatusCode;
use http_body_util::BodyExt;
use std::sync::Arc;
use thinkgate_asu::sse::SseFramer;

pub(super) async fn end_at_deadline(
    mut m: Managed,
    mut view: View,
    id: &Identity,
) -> (StatusCode, Bytes) {
    m.ctx.act(Action::DeadlineHit);
    let _ = view.emit(id.finish("length")).await;
    let _ = view.emit(Bytes::from_static(events::DONE)).await;
    view.settle(&mut m.ctx, Outcome::Completed)
}

/// A looping request ended as `max_tokens` would have ended it, without
/// the tokens it would have burnt on the way (the leg is already dropped:
/// the engine aborted it).
pub(super) async fn end_looping(
    mut m: Managed,
    view: View,
    id: &Identity,
    thinking_tokens: u64,
) -> (StatusCode, Bytes) {
    m.ctx.set_thinking(false);
    m.ctx.act(Action::LoopEnded { thinking_tokens });
    end_as_length(m, view, id).await
}

/// End the stream as a `max_tokens` cut: a `finish_reason: "length"` chunk
/// and `[DONE]`.
async fn end_as_length(mut m: Managed, mut view: View, id: &Identity) -> (StatusCode, Bytes) {
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

/// The thinking the client saw when its answer was forced.
pub(super) struct Cut {
    pub tokens: u64,
    pub text: String,
    /// Thinking came in reasoning fields (not inline tags).
    pub in_fields: bool,
}

impl Cut {
    pub(super) fn of(leg: &Leg) -> Self {
        Self {
            tokens: leg.thinking(),
            text: leg.thinking_text(),
            in_fields: leg.obs.reasoning_in_fields(),
        }
    }
}

/// Abort the first leg and answer through a continuation from `cut` (the
/// leg's thinking so far, when `None`).
pub(super) async fn forced(
    mut m: Managed,
    leg: Leg,
    mut view: View,
    trigger: Trigger,
    deadline: Option<tokio::time::Instant>,
    cut: Option<Cut>,
) -> (StatusCode, Bytes) {
    let Cut {
        tokens: thinking_tokens,
        text: thinking,
        in_fields,
    } = cut.unwrap_or_else(|| Cut::of(&leg));
    let id = leg.ident.clone().unwrap_or_else(|| m.fallback_ident());
    let backend = Arc::clone(&leg.backend);
    // Dropping the leg drops the upstream request: the engine aborts it.
    drop(leg);
    m.ctx.set_thinking(false);
    view.forced_thinking = Some(thinking_tokens);
    m.ctx.act(Action::ForcedAnswer {
        trigger,
        thinking_tokens,
        way: ForcedWay::Continuation,
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
    // (the first leg's request, so a POST)
    let mut out = m.out.with_body(http_body_util::Full::new(body));
    out.leg = crate::trace::context::LegKind::Continuation;
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
    let mut body = Watched::new(resp.into_body(), m.shared.cfg.idle_timeout());
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
            f = body.frame() => f,
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
            Some(Err(failure)) if !saw_done => {
                for t in terminal.drain(..) {
                    let _ = view
                        .emit(events::event(&serde_json::Value::Object(t)))
                        .await;
                }
                let _ = view.emit(failure.event(false)).await;
                break Outcome::of(&failure);
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
async fn fallback(mut m: Managed, view: View, id: &Identity, why: &str) -> (StatusCode, Bytes) {
    m.ctx.act(Action::ForcedFallback {
        reason: why.chars().take(200).collect(),
    });
    end_as_length(m, view, id).await
}
