//! A finished request as spans: the gateway's server span (from the
//! request's record: the same numbers, so a trace and a record never
//! disagree) and one client span per upstream leg. Built once, when the
//! request settles; nothing here runs per chunk.

use super::context::RequestTrace;
use super::names as n;
use crate::record::{Outcome, RequestRecord};
use opentelemetry::trace::{Event, SpanContext, SpanId, SpanKind, Status, TraceFlags};
use opentelemetry::{InstrumentationScope, KeyValue, Value};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
use std::borrow::Cow;
use std::time::Duration;

/// What the record does not hold.
pub struct Finished<'a> {
    pub trace: &'a RequestTrace,
    pub record: &'a RequestRecord,
    /// When each of `record.actions` was taken (since `t_recv`).
    pub action_ns: &'a [u64],
    /// When the request settled (since `t_recv`).
    pub end_ns: u64,
    pub policy: Option<&'static str>,
}

/// Whether the request failed (exported whatever the sampler said).
pub fn failed(r: &RequestRecord) -> bool {
    r.status >= 500
        || matches!(
            r.outcome,
            Outcome::StreamError
                | Outcome::Truncated
                | Outcome::UpstreamReset
                | Outcome::UpstreamIdle
        )
}

fn operation(api: &str) -> &'static str {
    match api {
        "completions" => "text_completion",
        "chat" | "responses" => "chat",
        _ => "other",
    }
}

pub fn build(f: &Finished<'_>, scope: &InstrumentationScope) -> Vec<SpanData> {
    let (t, r) = (f.trace, f.record);
    let at = |ns: u64| t.start + Duration::from_nanos(ns);
    let secs = |ns: u64| ns as f64 / 1e9;
    let flags = if t.sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    let ctx = |span_id| SpanContext::new(t.trace_id, span_id, flags, false, t.state.clone());
    let op = operation(r.api);
    let mut attrs = vec![
        KeyValue::new(n::OPERATION_NAME, op),
        KeyValue::new(n::REQUEST_STREAM, r.stream_requested),
        KeyValue::new(n::HTTP_METHOD, r.method.clone()),
        KeyValue::new(n::URL_PATH, r.path.clone()),
        KeyValue::new(n::HTTP_STATUS, i64::from(r.status)),
        KeyValue::new(n::REQUEST_ID, r.id.clone()),
        KeyValue::new(n::BACKEND, r.backend.clone()),
        KeyValue::new(n::ARM, r.arm.clone()),
        KeyValue::new(n::OUTCOME, r.outcome.as_str()),
    ];
    if let Some(m) = &r.model {
        attrs.push(KeyValue::new(n::REQUEST_MODEL, m.clone()));
    }
    if let Some(p) = f.policy {
        attrs.push(KeyValue::new(n::POLICY, p));
    }
    if let Some(b) = r.thinking_budget {
        attrs.push(KeyValue::new(n::THINKING_BUDGET, b as i64));
    }
    if let Some(d) = r.deadline_ms {
        attrs.push(KeyValue::new(n::DEADLINE_MS, d as i64));
    }
    if let Some(p) = r.predicted_thinking_tokens {
        attrs.push(KeyValue::new(n::PREDICTED_THINKING_TOKENS, p));
    }
    if let Some(f) = r.fault {
        attrs.push(KeyValue::new(n::ERROR_TYPE, f.as_str()));
    } else if failed(r) {
        attrs.push(KeyValue::new(n::ERROR_TYPE, r.outcome.as_str()));
    }
    let mut events = Vec::new();
    let mut event = |name: &'static str, ns: Option<u64>| {
        if let Some(ns) = ns {
            events.push(Event::new(name, at(ns), Vec::new(), 0));
        }
    };
    event(n::EV_UPSTREAM_HEAD, r.t_upstream_ns);
    let mut end_ns = f.end_ns;
    if let Some(s) = &r.asu {
        end_ns = end_ns.max(s.t_done_ns);
        if let Some(m) = &s.response_model {
            attrs.push(KeyValue::new(n::RESPONSE_MODEL, m.clone()));
        }
        if let Some(id) = &s.response_id {
            attrs.push(KeyValue::new(n::RESPONSE_ID, id.clone()));
        }
        if let Some(p) = s.prompt_tokens {
            attrs.push(KeyValue::new(n::INPUT_TOKENS, p as i64));
        }
        attrs.push(KeyValue::new(n::OUTPUT_TOKENS, s.completion_tokens as i64));
        attrs.push(KeyValue::new(
            n::REASONING_OUTPUT_TOKENS,
            s.thinking_tokens as i64,
        ));
        attrs.push(KeyValue::new(n::VISIBLE_TOKENS, s.visible_tokens as i64));
        attrs.push(KeyValue::new(n::TOKEN_SOURCE, s.token_source.as_str()));
        if let Some(fr) = &s.finish_reason {
            attrs.push(KeyValue::new(
                n::FINISH_REASONS,
                Value::Array(vec![opentelemetry::StringValue::from(fr.clone())].into()),
            ));
        }
        if let Some(ns) = s.t_first_token_ns {
            attrs.push(KeyValue::new(n::TIME_TO_FIRST_CHUNK, secs(ns)));
        }
        if let Some(ns) = s.t_first_visible_ns {
            attrs.push(KeyValue::new(n::TTFVT, secs(ns)));
        }
        if let Some(think) = s.thinking_time() {
            attrs.push(KeyValue::new(n::THINKING_TIME, think));
        }
        event(n::EV_FIRST_TOKEN, s.t_first_token_ns);
        event(n::EV_THINKING_START, s.t_think_start_ns);
        event(n::EV_THINKING_END, s.t_think_end_ns);
        if s.streamed {
            event(n::EV_FIRST_VISIBLE, s.t_first_visible_ns);
        }
    }
    if !r.actions.is_empty() {
        let mut names = Vec::with_capacity(r.actions.len());
        for (a, ns) in r.actions.iter().zip(f.action_ns) {
            let v = serde_json::to_value(a).unwrap_or_default();
            let name = v["action"].as_str().unwrap_or("action").to_string();
            let fields = v
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(k, _)| k.as_str() != "action")
                .map(|(k, v)| {
                    let v = match v {
                        serde_json::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    KeyValue::new(format!("thinkgate.{k}"), v)
                })
                .collect();
            events.push(Event::new(
                format!("{}{name}", n::EV_ACTION_PREFIX),
                at(*ns),
                fields,
                0,
            ));
            names.push(opentelemetry::StringValue::from(name));
        }
        attrs.push(KeyValue::new(n::ACTIONS, Value::Array(names.into())));
    }
    events.sort_by_key(|e| e.timestamp);
    let status = if failed(r) {
        Status::error(
            r.error
                .clone()
                .unwrap_or_else(|| r.outcome.as_str().to_string()),
        )
    } else {
        Status::Unset
    };
    let name = match &r.model {
        Some(m) => format!("{op} {m}"),
        None => op.to_string(),
    };
    let end = at(end_ns);
    let span = |id, parent, kind, name, (start, end), attributes, events, status| SpanData {
        span_context: ctx(id),
        parent_span_id: parent,
        // only the server span's parent is the client's
        parent_span_is_remote: kind == SpanKind::Server && parent != SpanId::INVALID,
        span_kind: kind,
        name: Cow::Owned(name),
        start_time: start,
        end_time: end,
        attributes,
        dropped_attributes_count: 0,
        events: events_of(events),
        links: SpanLinks::default(),
        status,
        instrumentation_scope: scope.clone(),
    };
    let mut spans = vec![span(
        t.span_id,
        t.parent.unwrap_or(SpanId::INVALID),
        SpanKind::Server,
        name,
        (t.start, end),
        attrs,
        events,
        status,
    )];
    for leg in t.legs() {
        let mut attrs = vec![
            KeyValue::new(n::HTTP_METHOD, r.method.clone()),
            KeyValue::new(n::URL_PATH, r.path.clone()),
            KeyValue::new(n::BACKEND, leg.backend.clone()),
            KeyValue::new(n::LEG_KIND, leg.kind.as_str()),
        ];
        // the backend is its base URL as configured
        if let Ok(uri) = leg.backend.parse::<http::Uri>() {
            if let Some(host) = uri.host() {
                attrs.push(KeyValue::new(n::SERVER_ADDRESS, host.to_string()));
            }
            if let Some(port) = uri.port_u16().or(match uri.scheme_str() {
                Some("https") => Some(443),
                Some("http") => Some(80),
                _ => None,
            }) {
                attrs.push(KeyValue::new(n::SERVER_PORT, i64::from(port)));
            }
        }
        if let Some(s) = leg.status {
            attrs.push(KeyValue::new(n::HTTP_STATUS, i64::from(s)));
        }
        if leg.cancelled {
            attrs.push(KeyValue::new(n::LEG_CANCELLED, true));
        }
        let mut events = Vec::new();
        if let (Some(h), None, false) = (leg.head_ns, &leg.error, leg.cancelled) {
            events.push(Event::new(n::EV_UPSTREAM_HEAD, at(h), Vec::new(), 0));
        }
        let status = match (&leg.error, leg.status) {
            (Some(e), _) => {
                attrs.push(KeyValue::new(n::ERROR_TYPE, "upstream_error"));
                Status::error(e.clone())
            }
            (None, Some(s)) if s >= 500 => {
                attrs.push(KeyValue::new(n::ERROR_TYPE, s.to_string()));
                Status::error(format!("upstream answered {s}"))
            }
            _ => Status::Unset,
        };
        // A leg that failed or was dropped before its head ends then; one
        // that answered runs until the request ended (a race's loser
        // dropped after its head, until then too).
        let leg_end = match (&leg.error, leg.cancelled, leg.head_ns) {
            (Some(_), _, Some(h)) | (_, true, Some(h)) => at(h),
            _ => end,
        };
        spans.push(span(
            leg.span_id,
            t.span_id,
            SpanKind::Client,
            r.method.clone(),
            (at(leg.start_ns), leg_end.max(at(leg.start_ns))),
            attrs,
            events,
            status,
        ));
    }
    spans
}

fn events_of(events: Vec<Event>) -> SpanEvents {
    let mut e = SpanEvents::default();
    e.events = events;
    e
}
