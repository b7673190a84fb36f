//! One request's context: what is known about it as it moves through the
//! stages, and the single place where it is settled (metrics + record).
//!
//! A request is settled exactly once: when its response body ends, when the
//! gateway answers it with an error, or, if neither happened, when the
//! context is dropped (the client went away; dropping also drops the
//! upstream request, which makes vLLM and SGLang abort it and free its KV
//! cache).

pub mod headers;
pub mod request;

use crate::error::GatewayError;
use crate::fleet::{Backend, Fleet};
use crate::metrics::{Labels, UpstreamError};
use crate::record::{Outcome, RequestRecord};
use crate::state::Shared;
use crate::straggler::action::Action;
use crate::straggler::Plan;
use metrics::SharedString;
use request::{Endpoint, Features};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use thinkgate_asu::observe::TokenSource;
use thinkgate_asu::Summary;
use thinkgate_policies::{Completion, RequestInfo};

pub struct RequestCtx {
    shared: Arc<Shared>,
    /// `t_recv`: the complete request head was in hand.
    pub t_recv: Instant,
    start_unix_ms: u64,
    pub id: String,
    method: String,
    path: String,
    pub endpoint: Endpoint,
    pub features: Features,
    labels: Labels,
    /// HTTP status sent to the client (0 until known).
    pub status: u16,
    /// `t_upstream`: the engine's response head arrived.
    pub t_upstream_ns: Option<u64>,
    pub usage_injected: bool,
    thinking: bool,
    /// Counted in the in-flight gauge (from `set_backend` to settling).
    inflight: bool,
    /// The chosen backend, its routing view of this request, and the tokens
    /// this request has added to the backend's in-flight estimate.
    backend: Option<Arc<Backend>>,
    /// The fleet this request was routed by (kept across hot reloads).
    fleet: Option<Arc<Fleet>>,
    arm: usize,
    route: RequestInfo,
    tokens_added: i64,
    settled: bool,
    /// Straggler actions taken, in order.
    actions: Vec<Action>,
    /// The budget and deadline enforced on this request.
    pub plan: Plan,
    /// Holds one of `max_inflight`'s slots (given back on drop).
    holds_slot: bool,
    /// The client key's name, and its in-flight slot (`[auth]`).
    client: Option<SharedString>,
    client_slot: Option<crate::access::keys::ClientSlot>,
    /// The request's trace, when tracing is on.
    pub trace: Option<Arc<crate::trace::context::RequestTrace>>,
    /// When each action was taken (since `t_recv`), for the trace.
    action_ns: Vec<u64>,
}

impl RequestCtx {
    pub fn new(
        shared: Arc<Shared>,
        t_recv: Instant,
        id: String,
        method: &http::Method,
        path: &str,
        endpoint: Endpoint,
    ) -> Self {
        let labels = Labels {
            backend: SharedString::const_str("none"),
            model: SharedString::const_str("unknown"),
            arm: SharedString::const_str("default"),
            api: endpoint.api(),
            client: SharedString::const_str("none"),
        };
        let start_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Self {
            holds_slot: false,
            shared,
            t_recv,
            start_unix_ms,
            id,
            method: method.as_str().to_string(),
            path: path.chars().take(256).collect(),
            endpoint,
            features: Features::default(),
            labels,
            status: 0,
            t_upstream_ns: None,
            usage_injected: false,
            thinking: false,
            inflight: false,
            backend: None,
            fleet: None,
            arm: 0,
            route: RequestInfo::default(),
            tokens_added: 0,
            settled: false,
            actions: Vec::new(),
            plan: Plan::default(),
            client: None,
            client_slot: None,
            trace: None,
            action_ns: Vec::new(),
        }
    }

    /// The request's client key (its name labels the request counter and
    /// the record); `slot` is held until the request ends.
    pub fn set_client(
        &mut self,
        name: SharedString,
        slot: Option<crate::access::keys::ClientSlot>,
    ) {
        self.labels.client = name.clone();
        self.client = Some(name);
        self.client_slot = slot;
    }

    /// Called once the request body was read: the model label is known.
    pub fn set_features(&mut self, f: Features) {
        self.labels.model = self.shared.models.get(f.model.as_deref());
        self.features = f;
    }

    /// The fleet and experiment arm this request is routed by.
    pub fn set_arm(&mut self, fleet: Arc<Fleet>, arm: usize) {
        self.arm = arm;
        if let Some(a) = fleet.arms.get(arm) {
            self.labels.arm = a.name.clone();
        }
        self.fleet = Some(fleet);
    }

    pub fn arm_name(&self) -> &SharedString {
        &self.labels.arm
    }

    /// Called once a backend was chosen: from here the request is in flight
    /// on it (the gauge and the backend's live counters).
    pub fn set_backend(&mut self, backend: Arc<Backend>, route: RequestInfo) {
        self.labels.backend = backend.upstream.name.clone();
        self.labels.inflight(1.0);
        self.inflight = true;
        backend.inflight.fetch_add(1, Ordering::Relaxed);
        self.tokens_added = route.prompt_tokens as i64;
        backend
            .inflight_tokens
            .fetch_add(self.tokens_added, Ordering::Relaxed);
        self.backend = Some(backend);
        self.route = route;
    }

    /// The request moves to `backend` (a retry, or a hedge that won): the
    /// live counters follow it.
    pub fn switch_backend(&mut self, backend: Arc<Backend>) {
        let thinking = self.thinking;
        self.set_thinking(false);
        // what the routing policy counted moves too (`observe` settles it
        // on the new backend)
        if let (Some(f), Some(old)) = (&self.fleet, &self.backend) {
            f.moved(self.arm, &self.route, old.index, backend.index);
        }
        if let Some(old) = self.backend.take() {
            old.inflight.fetch_sub(1, Ordering::Relaxed);
            old.inflight_tokens
                .fetch_sub(self.tokens_added, Ordering::Relaxed);
        }
        if self.inflight {
            self.labels.inflight(-1.0);
            self.inflight = false;
        }
        let route = std::mem::take(&mut self.route);
        self.set_backend(backend, route);
        self.set_thinking(thinking);
    }

    /// Requests in flight when this one arrived, itself included.
    /// The request took a global slot; it is released when the request ends.
    pub fn hold_slot(&mut self) {
        self.holds_slot = true;
    }

    /// Note (and count) a straggler action.
    pub fn act(&mut self, a: Action) {
        a.count(&self.labels);
        self.actions.push(a);
        if self.trace.is_some() {
            self.action_ns.push(self.elapsed_ns());
        }
    }

    /// The routing view of this request.
    pub fn route(&self) -> &RequestInfo {
        &self.route
    }

    pub fn arm_index(&self) -> usize {
        self.arm
    }

    /// The stream so far (`s`, the observer's live summary): keep the
    /// backend's in-flight token estimate current.
    pub fn set_output(&mut self, s: &Summary) {
        let Some(b) = &self.backend else { return };
        let tokens = b.live_tokens(s.reasoning_chunks + s.visible_chunks, s.text_bytes);
        let total = self.route.prompt_tokens as i64 + tokens as i64;
        let delta = total - self.tokens_added;
        if delta != 0 {
            b.inflight_tokens.fetch_add(delta, Ordering::Relaxed);
            self.tokens_added = total;
        }
    }

    pub fn backend_name(&self) -> &SharedString {
        &self.labels.backend
    }

    pub fn elapsed_ns(&self) -> u64 {
        self.t_recv.elapsed().as_nanos() as u64
    }

    /// Track the thinking phase for the in-flight-thinking gauge.
    pub fn set_thinking(&mut self, on: bool) {
        if on != self.thinking {
            self.thinking = on;
            self.labels.inflight_thinking(if on { 1.0 } else { -1.0 });
            if let Some(b) = &self.backend {
                b.inflight_thinking
                    .fetch_add(if on { 1 } else { -1 }, Ordering::Relaxed);
            }
        }
    }

    pub fn note_usage_injected(&mut self) {
        self.usage_injected = true;
        self.labels.usage_injected();
    }

    /// The gateway answers this request itself with `err`.
    pub fn fail(&mut self, err: &GatewayError) {
        self.status = err.status().as_u16();
        match err {
            GatewayError::UpstreamTimeout { .. } => {
                self.labels.upstream_error(UpstreamError::Timeout)
            }
            GatewayError::UpstreamUnreachable { .. } => {
                self.labels.upstream_error(UpstreamError::Connect)
            }
            _ => {}
        }
        self.finish(Outcome::GatewayError, None, Some(err));
    }

    /// The response body ended (`outcome` as seen by the body) with `summary`.
    pub fn settle(&mut self, outcome: Outcome, summary: Option<Summary>) {
        let outcome = match (&summary, outcome) {
            (Some(s), Outcome::Completed) if s.error_event => Outcome::StreamError,
            (Some(s), Outcome::Completed) if s.streamed && !s.done_marker && self.status < 400 => {
                Outcome::Truncated
            }
            (Some(s), Outcome::Completed)
                if self.endpoint.is_inference()
                    && (200..300).contains(&self.status)
                    && s.answerless() =>
            {
                Outcome::Answerless
            }
            (_, o) => o,
        };
        match outcome {
            Outcome::StreamError => self.labels.upstream_error(UpstreamError::StreamError),
            Outcome::Truncated => self.labels.upstream_error(UpstreamError::Truncated),
            Outcome::UpstreamReset => self.labels.upstream_error(UpstreamError::Reset),
            Outcome::UpstreamIdle => self.labels.upstream_error(UpstreamError::Idle),
            _ => {}
        }
        self.finish(outcome, summary, None);
    }

    fn finish(&mut self, outcome: Outcome, summary: Option<Summary>, err: Option<&GatewayError>) {
        if self.settled {
            return;
        }
        self.settled = true;
        self.set_thinking(false);
        if self.inflight {
            self.labels.inflight(-1.0);
        }
        if let Some(b) = self.backend.take() {
            b.inflight.fetch_sub(1, Ordering::Relaxed);
            b.inflight_tokens
                .fetch_sub(self.tokens_added, Ordering::Relaxed);
            if let Some(s) = &summary {
                b.observe_latency(s.ttft(), s.tpot());
                // the engine's own count (not events counted here)
                if !matches!(s.token_source, TokenSource::Chunks | TokenSource::None) {
                    b.observe_text(s.text_bytes, s.completion_tokens);
                }
            }
            let done = Completion {
                ok: outcome.ended_normally() && (200..300).contains(&self.status),
                thinking_tokens: summary.as_ref().map_or(0, |s| s.thinking_tokens),
                visible_tokens: summary.as_ref().map_or(0, |s| s.visible_tokens),
                ttft_s: summary.as_ref().and_then(|s| s.ttft()),
                e2e_s: summary.as_ref().map_or(0.0, |s| s.e2e()),
            };
            if let Some(f) = &self.fleet {
                f.observe(self.arm, &self.route, &b, &done);
            }
        }
        if outcome == Outcome::ClientGone {
            self.labels.client_disconnect();
        }
        self.labels.request(self.status, outcome.as_str());
        if self.endpoint.is_inference() && (200..300).contains(&self.status) {
            if let Some(s) = &summary {
                // Latencies a request reached are real whatever came after;
                // totals (E2E, tokens) only mean something for complete ones.
                self.labels.observe(s, outcome.ended_normally());
            }
        }
        let record = RequestRecord {
            id: std::mem::take(&mut self.id),
            start_unix_ms: self.start_unix_ms,
            method: std::mem::take(&mut self.method),
            path: std::mem::take(&mut self.path),
            api: self.endpoint.api().as_str(),
            client: self.client.as_ref().map(|c| c.to_string()),
            model: self.features.model.take(),
            backend: self.labels.backend.to_string(),
            arm: self.labels.arm.to_string(),
            status: self.status,
            outcome,
            fault: err.map(GatewayError::fault),
            error: err.map(ToString::to_string),
            stream_requested: self.features.stream,
            enable_thinking: self.features.enable_thinking,
            reasoning_effort: self.features.reasoning_effort.map(|e| e.as_str()),
            include_reasoning: self.features.include_reasoning,
            usage_injected: self.usage_injected,
            t_upstream_ns: self.t_upstream_ns,
            predicted_thinking_tokens: self.route.predicted_thinking,
            thinking_budget: self.plan.budget,
            deadline_ms: self.plan.deadline.map(|d| d.as_millis() as u64),
            actions: std::mem::take(&mut self.actions),
            asu: summary,
        };
        if let (Some(tracing), Some(trace)) = (&self.shared.tracing, self.trace.take()) {
            let policy = self
                .fleet
                .as_ref()
                .and_then(|f| f.arms.get(self.arm))
                .map(|a| a.policy.name());
            tracing.finish(&crate::trace::Finished {
                trace: &trace,
                record: &record,
                action_ns: &self.action_ns,
                end_ns: self.t_recv.elapsed().as_nanos() as u64,
                policy,
            });
        }
        self.shared.recorder.send(record);
    }
}

impl Drop for RequestCtx {
    fn drop(&mut self) {
        if !self.settled {
            self.finish(Outcome::ClientGone, None, None);
        }
        // after every counter above: a waiter retrying now sees this
        // request's global and backend slots free
        if self.holds_slot {
            self.shared.admission.release();
        } else {
            self.shared.admission.wake();
        }
    }
}
