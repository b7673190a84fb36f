//! One request's trace: its ids (continuing the client's `traceparent`, or
//! a new trace), whether it is sampled, and the upstream legs it sent, each
//! with the span id the engine was given as its parent. Legs are noted once
//! per attempt (never per chunk), so a mutex is cheap here.

use super::config::Sampler;
use http::{HeaderMap, HeaderValue};
use opentelemetry::trace::{SpanId, TraceId, TraceState};
use std::sync::Mutex;
use std::time::{Instant, SystemTime};

pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

/// What an upstream leg was sent for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LegKind {
    /// The request as the client sent it.
    #[default]
    First,
    /// Again on another backend, after a failure before any byte.
    Retry,
    /// A duplicate raced against a slow leg.
    Hedge,
    /// The forced answer's second request.
    Continuation,
}

impl LegKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LegKind::First => "first",
            LegKind::Retry => "retry",
            LegKind::Hedge => "hedge",
            LegKind::Continuation => "continuation",
        }
    }
}

/// One upstream leg, as its span will show it.
#[derive(Debug, Clone)]
pub struct Leg {
    pub span_id: SpanId,
    pub kind: LegKind,
    pub backend: String,
    /// Since the request's `t_recv`.
    pub start_ns: u64,
    /// The response head or the failure.
    pub head_ns: Option<u64>,
    pub status: Option<u16>,
    pub error: Option<String>,
    /// Dropped before its response head (a hedge race's loser, a client
    /// gone): it ended then, without a failure.
    pub cancelled: bool,
}

/// A request's trace context.
#[derive(Debug)]
pub struct RequestTrace {
    pub trace_id: TraceId,
    /// The gateway's server span.
    pub span_id: SpanId,
    /// The client's span, when it sent a `traceparent`.
    pub parent: Option<SpanId>,
    pub sampled: bool,
    /// The client's `tracestate` (kept only with a valid `traceparent`, as
    /// W3C asks; the header itself goes on to the engine unchanged).
    pub state: TraceState,
    /// Wall-clock time at `t0`.
    pub start: SystemTime,
    pub t0: Instant,
    legs: Mutex<Vec<Leg>>,
}

impl RequestTrace {
    /// The context of a request that arrived at `t0` with `headers`.
    pub fn open(sampler: Sampler, headers: &HeaderMap, t0: Instant) -> Self {
        let parent = headers
            .get(TRACEPARENT)
            .and_then(|v| parse_traceparent(v.as_bytes()));
        let trace_id = parent.map_or_else(new_trace_id, |p| p.0);
        let sampled = match (sampler, parent) {
            (Sampler::ParentBased { .. }, Some((_, _, flag))) => flag,
            (Sampler::ParentBased { root }, None) => by_ratio(trace_id, root),
            (Sampler::Ratio(r), _) => by_ratio(trace_id, r),
        };
        let elapsed = t0.elapsed();
        Self {
            trace_id,
            span_id: new_span_id(),
            parent: parent.map(|p| p.1),
            sampled,
            state: parent
                .and_then(|_| headers.get(TRACESTATE)?.to_str().ok()?.parse().ok())
                .unwrap_or_default(),
            start: SystemTime::now() - elapsed,
            t0,
            legs: Mutex::new(Vec::new()),
        }
    }

    /// Note a leg to `backend` starting now, and set its `traceparent` in
    /// `headers`: the engine's span becomes the leg's child.
    pub fn begin_leg(&self, kind: LegKind, backend: &str, headers: &mut HeaderMap) -> usize {
        let span_id = new_span_id();
        let flags = if self.sampled { "01" } else { "00" };
        let v = format!("00-{}-{}-{flags}", self.trace_id, span_id);
        if let Ok(v) = HeaderValue::from_str(&v) {
            headers.insert(TRACEPARENT, v);
        }
        let leg = Leg {
            span_id,
            kind,
            backend: backend.to_string(),
            start_ns: self.t0.elapsed().as_nanos() as u64,
            head_ns: None,
            status: None,
            error: None,
            cancelled: false,
        };
        let mut legs = self.legs.lock().unwrap_or_else(|e| e.into_inner());
        legs.push(leg);
        legs.len() - 1
    }

    /// Leg `i` got its response head (`Ok(status)`) or failed.
    pub fn end_leg(&self, i: usize, result: Result<u16, String>) {
        let now = self.t0.elapsed().as_nanos() as u64;
        let mut legs = self.legs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(l) = legs.get_mut(i) {
            l.head_ns = Some(now);
            match result {
                Ok(s) => l.status = Some(s),
                Err(e) => l.error = Some(e),
            }
        }
    }

    /// Leg `i` was dropped before its head (see [`Leg::cancelled`]).
    pub fn cancel_leg(&self, i: usize) {
        let now = self.t0.elapsed().as_nanos() as u64;
        let mut legs = self.legs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(l) = legs.get_mut(i).filter(|l| l.head_ns.is_none()) {
            l.head_ns = Some(now);
            l.cancelled = true;
        }
    }

    pub fn legs(&self) -> Vec<Leg> {
        self.legs.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

/// A W3C `traceparent`: version 00 (or a later one, read as 00 as the
/// specification asks), non-zero ids, lower-case hex.
fn parse_traceparent(v: &[u8]) -> Option<(TraceId, SpanId, bool)> {
    let s = std::str::from_utf8(v).ok()?.trim();
    let mut parts = s.split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |p: &str, n: usize| {
        p.len() == n
            && p.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if !hex(version, 2) || version == "ff" || !hex(trace, 32) || !hex(span, 16) || !hex(flags, 2) {
        return None;
    }
    if version == "00" && parts.next().is_some() {
        return None;
    }
    let trace_id = TraceId::from_hex(trace)
        .ok()
        .filter(|t| *t != TraceId::INVALID)?;
    let span_id = SpanId::from_hex(span)
        .ok()
        .filter(|s| *s != SpanId::INVALID)?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some((trace_id, span_id, flags & 1 == 1))
}

fn new_trace_id() -> TraceId {
    loop {
        let id: u128 = rand::random();
        if id != 0 {
            return TraceId::from(id);
        }
    }
}

fn new_span_id() -> SpanId {
    loop {
        let id: u64 = rand::random();
        if id != 0 {
            return SpanId::from(id);
        }
    }
}

/// The SDK's `TraceIdRatioBased`: the trace id's low 63 bits against the
/// ratio, so every service sampling by ratio agrees on a trace.
fn by_ratio(id: TraceId, ratio: f64) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    let bound = (ratio.max(0.0) * (1u64 << 63) as f64) as u64;
    let low = (u128::from_be_bytes(id.to_bytes()) as u64) >> 1;
    low < bound
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(tp: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(TRACEPARENT, HeaderValue::from_str(tp).unwrap());
        h
    }

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_client_traceparent_is_continued_and_legs_carry_their_own_span() {
        let t = RequestTrace::open(
            Sampler::ParentBased { root: 0.0 },
            &with(TP),
            Instant::now(),
        );
        assert_eq!(t.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.parent.unwrap().to_string(), "00f067aa0ba902b7");
        assert!(t.sampled, "the client's sampled flag is followed");
        let mut h = with(TP);
        let i = t.begin_leg(LegKind::First, "a", &mut h);
        t.end_leg(i, Ok(200));
        let sent = h.get(TRACEPARENT).unwrap().to_str().unwrap().to_string();
        let leg = &t.legs()[0];
        assert_eq!(
            sent,
            format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01", leg.span_id)
        );
        assert_ne!(leg.span_id, t.span_id);
        assert_eq!(leg.status, Some(200));
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        let t = RequestTrace::open(
            Sampler::ParentBased { root: 1.0 },
            &with(unsampled),
            Instant::now(),
        );
        assert!(!t.sampled);
        let mut h = HeaderMap::new();
        t.begin_leg(LegKind::Hedge, "b", &mut h);
        assert!(h
            .get(TRACEPARENT)
            .unwrap()
            .to_str()
            .unwrap()
            .ends_with("-00"));
    }

    #[test]
    fn malformed_traceparents_start_a_new_trace() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e47-00f067aa0ba902b7-01",
        ] {
            let t = RequestTrace::open(Sampler::Ratio(1.0), &with(bad), Instant::now());
            assert!(t.parent.is_none(), "{bad:?}");
            assert_ne!(t.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        }
        // a later version is read as 00, with what follows ignored
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what";
        let t = RequestTrace::open(Sampler::Ratio(1.0), &with(later), Instant::now());
        assert!(t.parent.is_some());
    }

    #[test]
    fn the_ratio_samples_its_share_of_new_traces() {
        let n = 20_000;
        let kept = (0..n)
            .filter(|_| {
                RequestTrace::open(Sampler::Ratio(0.25), &HeaderMap::new(), Instant::now()).sampled
            })
            .count();
        let share = kept as f64 / n as f64;
        assert!((0.23..0.27).contains(&share), "{share}");
        assert!(
            !RequestTrace::open(Sampler::Ratio(0.0), &HeaderMap::new(), Instant::now()).sampled
        );
    }
}
