//! Every metric the gateway exports, declared here with its help text and
//! buckets. Names follow `shared/ASU.md`; see the README's metric reference.
//!
//! Nothing here runs per chunk: handles are resolved once per request when
//! it settles, and the phase gauge moves at most twice per request.

use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, SharedString,
    Unit,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

pub const TTFT: &str = "thinkgate_ttft_seconds";
pub const TTFVT: &str = "thinkgate_ttfvt_seconds";
pub const E2E: &str = "thinkgate_e2e_seconds";
pub const THINKING_SECONDS: &str = "thinkgate_thinking_seconds";
pub const TPOT: &str = "thinkgate_tpot_seconds";
pub const THINKING_TOKENS: &str = "thinkgate_thinking_tokens";
pub const VISIBLE_TOKENS: &str = "thinkgate_visible_tokens";
// The OpenTelemetry GenAI metrics, under the names the OpenTelemetry
// Prometheus exporter gives them (units as suffixes, dots as underscores):
// a dashboard built for any GenAI server reads these. TTFVT and thinking
// time have no convention name and stay `thinkgate_*` only.
pub const GENAI_TTFT: &str = "gen_ai_server_time_to_first_token_seconds";
pub const GENAI_DURATION: &str = "gen_ai_server_request_duration_seconds";
pub const GENAI_TOKENS: &str = "gen_ai_client_token_usage";
pub const REQUESTS: &str = "thinkgate_requests_total";
pub const OUTPUT_TOKENS: &str = "thinkgate_output_tokens_total";
pub const UPSTREAM_ERRORS: &str = "thinkgate_upstream_errors_total";
pub const CLIENT_DISCONNECTS: &str = "thinkgate_client_disconnects_total";
pub const INFLIGHT: &str = "thinkgate_inflight_requests";
pub const INFLIGHT_THINKING: &str = "thinkgate_inflight_thinking_requests";
pub const RECORDS_DROPPED: &str = "thinkgate_records_dropped_total";
pub const OTEL_SPANS: &str = "thinkgate_otel_spans_total";
pub const FEEDBACK: &str = "thinkgate_feedback_total";
pub const USAGE_INJECTED: &str = "thinkgate_usage_injected_total";
pub const BACKEND_HEALTHY: &str = "thinkgate_backend_healthy";
pub const ARM_STOPPED: &str = "thinkgate_experiment_arm_stopped";
pub const ARM_ACCURACY: &str = "thinkgate_experiment_accuracy";
pub const DECISION: &str = "thinkgate_experiment_decision";
pub const BACKEND_KV: &str = "thinkgate_backend_kv_usage";
pub const NO_BACKEND: &str = "thinkgate_no_backend_total";
pub const CONFIG_RELOADS: &str = "thinkgate_config_reloads_total";
pub const FORCED_ANSWERS: &str = "thinkgate_forced_answers_total";
pub const FORCED_THINKING_TOKENS: &str = "thinkgate_forced_thinking_tokens";
pub const FORCED_FALLBACKS: &str = "thinkgate_forced_fallbacks_total";
pub const HEDGES: &str = "thinkgate_hedges_total";
pub const RETRIES: &str = "thinkgate_retries_total";
pub const EXTRA_REFUSED: &str = "thinkgate_extra_legs_refused_total";
pub const DEADLINE_HITS: &str = "thinkgate_deadline_hits_total";
pub const NOT_ENFORCED: &str = "thinkgate_not_enforced_total";
pub const THINKING_LOOPS: &str = "thinkgate_thinking_loops_total";
pub const LOOP_ENDS: &str = "thinkgate_loop_ends_total";
pub const ROUTES_REFUSED: &str = "thinkgate_routes_refused_total";
pub const CLIENT_REFUSED: &str = "thinkgate_client_refused_total";
pub const KEYS_RELOADS: &str = "thinkgate_keys_reloads_total";
pub const PANIC_ROUTING: &str = "thinkgate_panic_routing";
pub const TLS_ERRORS: &str = "thinkgate_tls_errors_total";
pub const TLS_RELOADS: &str = "thinkgate_tls_reloads_total";

mod labels;
pub use labels::{
    Api, ForcedTrigger, ForcedWayLabel, HedgeResult, LegKind, ReloadResult, RetryReason,
    TlsFailure, TlsSide, TokenKind, UpstreamError,
};

/// The per-request histograms (exported from the start, see [`zero_series`]).
const REQUEST_HISTOGRAMS: [&str; 7] = [
    TTFT,
    TTFVT,
    E2E,
    THINKING_SECONDS,
    TPOT,
    THINKING_TOKENS,
    VISIBLE_TOKENS,
];

/// Every metric the gateway exports (dashboards and alert rules may name
/// only these; a test checks both, and a live scrape).
pub const ALL: &[&str] = &[
    TTFT,
    TTFVT,
    E2E,
    THINKING_SECONDS,
    TPOT,
    THINKING_TOKENS,
    VISIBLE_TOKENS,
    REQUESTS,
    OUTPUT_TOKENS,
    UPSTREAM_ERRORS,
    CLIENT_DISCONNECTS,
    INFLIGHT,
    INFLIGHT_THINKING,
    RECORDS_DROPPED,
    FEEDBACK,
    OTEL_SPANS,
    GENAI_TTFT,
    GENAI_DURATION,
    GENAI_TOKENS,
    USAGE_INJECTED,
    BACKEND_HEALTHY,
    ARM_STOPPED,
    ARM_ACCURACY,
    DECISION,
    BACKEND_KV,
    NO_BACKEND,
    CONFIG_RELOADS,
    FORCED_ANSWERS,
    FORCED_THINKING_TOKENS,
    FORCED_FALLBACKS,
    HEDGES,
    RETRIES,
    EXTRA_REFUSED,
    DEADLINE_HITS,
    NOT_ENFORCED,
    THINKING_LOOPS,
    LOOP_ENDS,
    ROUTES_REFUSED,
    CLIENT_REFUSED,
    KEYS_RELOADS,
    PANIC_ROUTING,
    TLS_ERRORS,
    TLS_RELOADS,
];

/// Latency buckets: 5 ms to 30 minutes (reasoning requests run for minutes).
pub const SECONDS_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0,
    600.0, 1200.0, 1800.0,
];
/// Per-token time buckets: 1 ms to 1 s.
pub const TPOT_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0,
];
/// Token-count buckets: powers of two up to 128k.
pub const TOKEN_BUCKETS: &[f64] = &[
    1.0, 16.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0, 32768.0,
    65536.0, 131072.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Install the process-wide Prometheus recorder once and describe every
/// metric. Returns `None` if another recorder was installed first.
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(TPOT.into()), TPOT_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(GENAI_TOKENS.into()), TOKEN_BUCKETS)
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Suffix("_tokens".into()), TOKEN_BUCKETS)
                })
                .ok()?;
            let handle = builder.install_recorder().ok()?;
            describe();
            Some(handle)
        })
        .clone()
}

fn describe() {
    describe_histogram!(TTFT, Unit::Seconds, "Time from the complete request head to the first generated token of any kind (reasoning or visible). Streamed requests only.");
    describe_histogram!(GENAI_TTFT, Unit::Seconds, "OpenTelemetry GenAI gen_ai.server.time_to_first_token: time to the first generated token (thinking or visible), as thinkgate_ttft_seconds.");
    describe_histogram!(GENAI_DURATION, Unit::Seconds, "OpenTelemetry GenAI gen_ai.server.request.duration: end-to-end time of completed requests, as thinkgate_e2e_seconds.");
    describe_histogram!(GENAI_TOKENS, Unit::Count, "OpenTelemetry GenAI gen_ai.client.token.usage (the gateway is the engine's client): tokens per completed request by gen_ai_token_type: input, output (all generated tokens), reasoning (the thinking part of output).");
    describe_histogram!(TTFVT, Unit::Seconds, "Time from the complete request head to the first visible token (content outside thinking, or a tool call); for non-streamed responses, the time to the last byte.");
    describe_histogram!(
        E2E,
        Unit::Seconds,
        "Time from the complete request head to the last byte of the response."
    );
    describe_histogram!(THINKING_SECONDS, Unit::Seconds, "Time from the first to the last reasoning token (0 without reasoning). Streamed requests only.");
    describe_histogram!(
        TPOT,
        Unit::Seconds,
        "(t_done - t_first_token) / (completion_tokens - 1). Streamed requests only."
    );
    describe_histogram!(
        THINKING_TOKENS,
        Unit::Count,
        "Reasoning tokens of a request (engine usage when given, else counted chunks)."
    );
    describe_histogram!(
        VISIBLE_TOKENS,
        Unit::Count,
        "Completion tokens minus thinking tokens."
    );
    describe_counter!(
        REQUESTS,
        Unit::Count,
        "Finished requests by HTTP status and outcome."
    );
    describe_counter!(
        OUTPUT_TOKENS,
        Unit::Count,
        "Output tokens by kind (thinking or visible)."
    );
    describe_counter!(
        UPSTREAM_ERRORS,
        Unit::Count,
        "Upstream failures by kind: connect, timeout, reset, stream_error, truncated."
    );
    describe_counter!(CLIENT_DISCONNECTS, Unit::Count, "Requests whose client went away before the response ended (the upstream request is dropped at once).");
    describe_gauge!(INFLIGHT, Unit::Count, "Requests in flight.");
    describe_gauge!(
        INFLIGHT_THINKING,
        Unit::Count,
        "Streamed requests in their thinking phase (reasoning started, nothing visible yet)."
    );
    describe_counter!(
        RECORDS_DROPPED,
        Unit::Count,
        "Per-request records dropped because the writer fell behind."
    );
    describe_counter!(OTEL_SPANS, Unit::Count, "OpenTelemetry spans by result: exported, failed (the collector refused them or was unreachable), dropped (the export queue was full; requests never wait for it).");
    describe_counter!(FEEDBACK, Unit::Count, "Feedback grades by result: accepted (queued for the records file), dropped (the writer fell behind, or no --records), invalid (refused with 400).");
    describe_counter!(
        USAGE_INJECTED,
        Unit::Count,
        "Streamed requests to which the gateway added stream_options.include_usage."
    );
    describe_counter!(FORCED_ANSWERS, Unit::Count, "Answers the gateway forced, by trigger (budget, deadline, loop) and way (native: the engine ended the thinking inside the running stream; continuation: the first leg was aborted and a continuation answered).");
    describe_histogram!(FORCED_THINKING_TOKENS, Unit::Count, "Thinking tokens a forced request had spent when it was cut (the tokens it would have gone on to think are unknowable; see docs/stragglers.md).");
    describe_counter!(FORCED_FALLBACKS, Unit::Count, "Forced answers that could not be continued: the stream was ended with finish_reason length.");
    describe_counter!(ROUTES_REFUSED, Unit::Count, "Requests refused with 404 by the route policy ([routes]), by route: the engine control endpoint they aimed at, suspicious (a path spelled to reach another route), or other.");
    describe_counter!(CLIENT_REFUSED, Unit::Count, "Requests refused for their client key ([auth]), by client (unknown without a known key) and reason: unknown_key (401) or limited (429).");
    describe_gauge!(PANIC_ROUTING, Unit::Count, "Per pool: 1 while fewer than panic_threshold of its backends are healthy and requests are routed over all of them (Envoy's panic mode), else 0.");
    describe_counter!(TLS_ERRORS, Unit::Count, "TLS handshakes that failed, by side (upstream: an https engine; listener: a client of the https listener) and kind (unknown_ca, name_mismatch, expired, bad_certificate, refused, handshake).");
    describe_counter!(
        TLS_RELOADS,
        Unit::Count,
        "Reloads of the listener's certificate by result (error: the old one serves on)."
    );
    describe_counter!(
        KEYS_RELOADS,
        Unit::Count,
        "Reloads of the client keys file by result."
    );
    describe_counter!(THINKING_LOOPS, Unit::Count, "Streamed responses whose thinking looped: a span repeated over most of a recent window ([loops]; the record's thinking_loop says when and where). Counted whatever straggler.on_loop does.");
    describe_counter!(
        LOOP_ENDS,
        Unit::Count,
        "Streams the gateway ended because their thinking looped (straggler.on_loop = end)."
    );
    describe_counter!(NOT_ENFORCED, Unit::Count, "Requests with a thinking budget or deadline that the gateway could not enforce, by API (the Responses API is forwarded and measured, not rewritten; see docs/stragglers.md).");
    describe_counter!(HEDGES, Unit::Count, "Hedges before the first token by result: sent, won (the hedge answered first), wasted (the original did).");
    describe_counter!(RETRIES, Unit::Count, "Requests sent again to another backend after failing before any byte reached the client, by reason.");
    describe_counter!(EXTRA_REFUSED, Unit::Count, "Retries and hedges that were due but not sent: the budget they share (straggler.extra_legs_ratio) had no credit, by kind.");
    describe_counter!(
        DEADLINE_HITS,
        Unit::Count,
        "Responses the gateway ended at their hard deadline."
    );
    describe_gauge!(
        ARM_ACCURACY,
        Unit::Count,
        "Per arm of the experiment: the share of its graded requests whose feedback says correct (appears with the first grade)."
    );
    describe_gauge!(
        DECISION,
        Unit::Count,
        "Per test of the experiment's live view (ttfvt.mean, e2e.mean, errors, accuracy): the always-valid test's decision on arm B against arm A: -1 B lower, 1 B higher, 0 keep running."
    );
    describe_gauge!(
        ARM_STOPPED,
        Unit::Count,
        "1 while the experiment's guardrail keeps new requests off this arm (worse than the other beyond a margin), else 0."
    );
    describe_gauge!(
        BACKEND_HEALTHY,
        Unit::Count,
        "Per backend: 1 while the gateway routes to it (its last health check passed, or none failed yet), else 0."
    );
    describe_gauge!(
        BACKEND_KV,
        Unit::Percent,
        "Per backend: the engine's KV-cache use (0..1) at the last scrape of its /metrics."
    );
    describe_counter!(
        NO_BACKEND,
        Unit::Count,
        "Requests answered 503 for want of a healthy backend."
    );
    describe_counter!(
        CONFIG_RELOADS,
        Unit::Count,
        "Hot reloads of the configuration by result (ok, error)."
    );
}

/// Bounded interning of label values that come from clients (`model`), so a
/// client cannot create unbounded series.
#[derive(Debug)]
pub struct LabelSet {
    max: usize,
    seen: RwLock<HashMap<Box<str>, SharedString>>,
}

impl LabelSet {
    pub fn new(max: usize) -> Self {
        Self {
            max,
            seen: RwLock::new(HashMap::new()),
        }
    }

    /// The label for `value`: itself while fewer than `max` values were
    /// seen, then `other`. Empty or absent values are `unknown`.
    pub fn get(&self, value: Option<&str>) -> SharedString {
        let Some(v) = value.filter(|v| !v.is_empty() && v.len() <= 256) else {
            return SharedString::const_str("unknown");
        };
        if let Ok(seen) = self.seen.read() {
            if let Some(l) = seen.get(v) {
                return l.clone();
            }
        }
        let Ok(mut seen) = self.seen.write() else {
            return SharedString::const_str("other");
        };
        if let Some(l) = seen.get(v) {
            return l.clone();
        }
        if seen.len() >= self.max {
            return SharedString::const_str("other");
        }
        let l = SharedString::from(Arc::<str>::from(v));
        seen.insert(v.into(), l.clone());
        l
    }
}

/// The labels every request-level series carries.
#[derive(Debug, Clone)]
pub struct Labels {
    pub backend: SharedString,
    pub model: SharedString,
    /// Experiment arm (`default` without an experiment).
    pub arm: SharedString,
    pub api: Api,
    /// The client key's name (`[auth]`), `none` without keys; on the
    /// request counter only.
    pub client: SharedString,
}

type Pairs<const N: usize> = [(&'static str, SharedString); N];

impl Labels {
    fn pairs(&self) -> Pairs<4> {
        [
            ("backend", self.backend.clone()),
            ("model", self.model.clone()),
            ("arm", self.arm.clone()),
            ("api", SharedString::const_str(self.api.as_str())),
        ]
    }

    /// The common labels plus one more.
    fn plus(&self, key: &'static str, value: SharedString) -> Pairs<5> {
        let [b, m, a, i] = self.pairs();
        [b, m, a, i, (key, value)]
    }

    /// This label set's request series, at 0 (see [`zero_series`]).
    fn zero(&self) {
        let p = self.pairs();
        for name in REQUEST_HISTOGRAMS {
            // registered: exported with empty buckets
            let _ = histogram!(name, &p);
        }
        gauge!(INFLIGHT, &p).increment(0.0);
        gauge!(INFLIGHT_THINKING, &p).increment(0.0);
        counter!(CLIENT_DISCONNECTS, &p).increment(0);
        counter!(THINKING_LOOPS, &p).increment(0);
        counter!(USAGE_INJECTED, &p).increment(0);
        for k in TokenKind::ALL {
            counter!(
                OUTPUT_TOKENS,
                &self.plus("kind", SharedString::const_str(k.as_str()))
            )
            .increment(0);
        }
        for k in UpstreamError::ALL {
            counter!(
                UPSTREAM_ERRORS,
                &self.plus("kind", SharedString::const_str(k.as_str()))
            )
            .increment(0);
        }
        for outcome in ["completed", "answerless"] {
            let [b, m, a, i, s] = self.plus("status", SharedString::const_str("200"));
            let labels = [
                b,
                m,
                a,
                i,
                s,
                ("outcome", SharedString::const_str(outcome)),
                ("client", self.client.clone()),
            ];
            counter!(REQUESTS, &labels).increment(0);
        }
    }

    pub fn inflight(&self, delta: f64) {
        gauge!(INFLIGHT, &self.pairs()).increment(delta);
    }

    pub fn inflight_thinking(&self, delta: f64) {
        gauge!(INFLIGHT_THINKING, &self.pairs()).increment(delta);
    }

    pub fn request(&self, status: u16, outcome: &'static str) {
        let [b, m, a, i, s] = self.plus("status", status_label(status));
        let labels = [
            b,
            m,
            a,
            i,
            s,
            ("outcome", SharedString::const_str(outcome)),
            ("client", self.client.clone()),
        ];
        counter!(REQUESTS, &labels).increment(1);
    }

    pub fn upstream_error(&self, kind: UpstreamError) {
        counter!(
            UPSTREAM_ERRORS,
            &self.plus("kind", SharedString::const_str(kind.as_str()))
        )
        .increment(1);
    }

    pub fn client_disconnect(&self) {
        counter!(CLIENT_DISCONNECTS, &self.pairs()).increment(1);
    }

    pub fn straggler_retry(&self, reason: RetryReason) {
        counter!(RETRIES, "arm" => self.arm.clone(), "reason" => reason.label()).increment(1);
    }

    pub fn straggler_extra_refused(&self, kind: LegKind) {
        counter!(EXTRA_REFUSED, "arm" => self.arm.clone(), "kind" => kind.as_str()).increment(1);
    }

    pub fn straggler_hedge(&self, result: HedgeResult) {
        counter!(HEDGES, "arm" => self.arm.clone(), "result" => result.as_str()).increment(1);
    }

    pub fn straggler_forced(
        &self,
        trigger: ForcedTrigger,
        way: ForcedWayLabel,
        thinking_tokens: u64,
    ) {
        counter!(FORCED_ANSWERS, "arm" => self.arm.clone(), "trigger" => trigger.as_str(), "way" => way.as_str())
            .increment(1);
        histogram!(FORCED_THINKING_TOKENS, "arm" => self.arm.clone())
            .record(thinking_tokens as f64);
    }

    pub fn straggler_fallback(&self) {
        counter!(FORCED_FALLBACKS, "arm" => self.arm.clone()).increment(1);
    }

    pub fn straggler_deadline(&self) {
        counter!(DEADLINE_HITS, "arm" => self.arm.clone()).increment(1);
    }

    pub fn straggler_loop_end(&self) {
        counter!(LOOP_ENDS, "arm" => self.arm.clone()).increment(1);
    }

    pub fn straggler_not_enforced(&self) {
        counter!(
            NOT_ENFORCED,
            &[
                ("arm", self.arm.clone()),
                ("api", SharedString::const_str(self.api.as_str()))
            ]
        )
        .increment(1);
    }

    pub fn usage_injected(&self) {
        counter!(USAGE_INJECTED, &self.pairs()).increment(1);
    }

    /// Record a settled request's ASU values; `complete` when the response
    /// ended normally.
    /// The labels of the GenAI convention's series.
    fn gen_ai(&self) -> Pairs<2> {
        let op = match self.api {
            Api::Chat | Api::Responses => "chat",
            Api::Completions => "text_completion",
            Api::Other => "other",
        };
        [
            ("gen_ai_operation_name", SharedString::const_str(op)),
            ("gen_ai_request_model", self.model.clone()),
        ]
    }

    pub fn observe(&self, s: &thinkgate_asu::Summary, complete: bool) {
        let p = self.pairs();
        let g = self.gen_ai();
        if let Some(v) = s.ttft() {
            histogram!(TTFT, &p).record(v);
            histogram!(GENAI_TTFT, &g).record(v);
        }
        if let Some(v) = s.ttfvt() {
            histogram!(TTFVT, &p).record(v);
        }
        counter!(
            OUTPUT_TOKENS,
            &self.plus(
                "kind",
                SharedString::const_str(TokenKind::Thinking.as_str())
            )
        )
        .increment(s.thinking_tokens);
        counter!(
            OUTPUT_TOKENS,
            &self.plus("kind", SharedString::const_str(TokenKind::Visible.as_str()))
        )
        .increment(s.visible_tokens);
        if s.thinking_loop.is_some() {
            counter!(THINKING_LOOPS, &p).increment(1);
        }
        if !complete {
            return;
        }
        histogram!(E2E, &p).record(s.e2e());
        histogram!(GENAI_DURATION, &g).record(s.e2e());
        let [op, model] = g;
        let usage = |kind: &'static str, n: u64| {
            let l = [
                op.clone(),
                model.clone(),
                ("gen_ai_token_type", SharedString::const_str(kind)),
            ];
            histogram!(GENAI_TOKENS, &l).record(n as f64);
        };
        if let Some(n) = s.prompt_tokens {
            usage("input", n);
        }
        usage("output", s.completion_tokens);
        usage("reasoning", s.thinking_tokens);
        if let Some(v) = s.thinking_time() {
            histogram!(THINKING_SECONDS, &p).record(v);
        }
        if let Some(v) = s.tpot() {
            histogram!(TPOT, &p).record(v);
        }
        if s.completion_tokens > 0 {
            histogram!(THINKING_TOKENS, &p).record(s.thinking_tokens as f64);
            histogram!(VISIBLE_TOKENS, &p).record(s.visible_tokens as f64);
        }
    }
}

/// Every series whose labels are known before any request, exported at 0
/// from the start (and on a reload, for new backends and arms), so a fresh
/// gateway's dashboard shows 0 where it would show "No data", and an alert
/// over a counter that has not moved yet matches a series. Per-request
/// series get `model="unknown"` (the model is known only per request).
/// Measured gauges are not among them (`thinkgate_backend_kv_usage` waits
/// for the first scrape; `thinkgate_backend_healthy` is set by the caller
/// from the fleet's own view).
pub fn zero_series(backends: &[SharedString], arms: &[SharedString]) {
    let unknown = SharedString::const_str("unknown");
    for b in backends {
        for a in arms {
            // chat: the API nearly every client uses; the other APIs'
            // series appear with their first request
            let l = Labels {
                backend: b.clone(),
                model: unknown.clone(),
                arm: a.clone(),
                api: Api::Chat,
                client: SharedString::const_str("none"),
            };
            l.zero();
        }
    }
    for a in arms {
        let arm = || ("arm", a.clone());
        for t in ForcedTrigger::ALL {
            for w in ForcedWayLabel::ALL {
                counter!(
                    FORCED_ANSWERS,
                    &[
                        arm(),
                        ("trigger", SharedString::const_str(t.as_str())),
                        ("way", SharedString::const_str(w.as_str()))
                    ]
                )
                .increment(0);
            }
        }
        let _ = histogram!(FORCED_THINKING_TOKENS, &[arm()]);
        counter!(FORCED_FALLBACKS, &[arm()]).increment(0);
        counter!(DEADLINE_HITS, &[arm()]).increment(0);
        counter!(LOOP_ENDS, &[arm()]).increment(0);
        counter!(
            NOT_ENFORCED,
            &[
                arm(),
                ("api", SharedString::const_str(Api::Responses.as_str()))
            ]
        )
        .increment(0);
        for r in HedgeResult::ALL {
            counter!(
                HEDGES,
                &[arm(), ("result", SharedString::const_str(r.as_str()))]
            )
            .increment(0);
        }
        for r in [RetryReason::Connect, RetryReason::Reset] {
            counter!(RETRIES, &[arm(), ("reason", r.label())]).increment(0);
        }
        for k in ["retry", "hedge"] {
            counter!(
                EXTRA_REFUSED,
                &[arm(), ("kind", SharedString::const_str(k))]
            )
            .increment(0);
        }
    }
    counter!(NO_BACKEND).increment(0);
    counter!(ROUTES_REFUSED, "route" => "other").increment(0);
    counter!(RECORDS_DROPPED).increment(0);
    for r in FEEDBACK_RESULTS {
        counter!(FEEDBACK, "result" => *r).increment(0);
    }
    for r in SPAN_RESULTS {
        counter!(OTEL_SPANS, "result" => *r).increment(0);
    }
    for r in ReloadResult::ALL {
        counter!(CONFIG_RELOADS, "result" => r.as_str()).increment(0);
        counter!(TLS_RELOADS, "result" => r.as_str()).increment(0);
    }
    for side in TlsSide::ALL {
        for k in TlsFailure::ALL {
            counter!(TLS_ERRORS, "side" => side.as_str(), "kind" => k.as_str()).increment(0);
        }
    }
}

pub fn tls_error(side: TlsSide, kind: TlsFailure) {
    counter!(TLS_ERRORS, "side" => side.as_str(), "kind" => kind.as_str()).increment(1);
}

pub fn tls_reload(result: ReloadResult) {
    counter!(TLS_RELOADS, "result" => result.as_str()).increment(1);
}

pub fn experiment_accuracy(arm: &str, share: f64) {
    gauge!(ARM_ACCURACY, "arm" => arm.to_string()).set(share);
}

/// `decision`: -1 B lower, 0 keep running, 1 B higher.
pub fn experiment_decision(test: &'static str, decision: f64) {
    gauge!(DECISION, "test" => test).set(decision);
}

pub fn experiment_arm_stopped(arm: &str, stopped: bool) {
    gauge!(ARM_STOPPED, "arm" => arm.to_string()).set(if stopped { 1.0 } else { 0.0 });
}

pub fn backend_health(backend: &SharedString, ok: bool) {
    gauge!(BACKEND_HEALTHY, "backend" => backend.clone()).set(if ok { 1.0 } else { 0.0 });
}

pub fn backend_kv(backend: &SharedString, kv: Option<f64>) {
    if let Some(v) = kv {
        gauge!(BACKEND_KV, "backend" => backend.clone()).set(v);
    }
}

pub fn config_reload(ok: bool) {
    let result = if ok {
        ReloadResult::Ok
    } else {
        ReloadResult::Error
    };
    counter!(CONFIG_RELOADS, "result" => result.as_str()).increment(1);
}

pub fn panic_routing(pool: &str, on: bool) {
    gauge!(PANIC_ROUTING, "pool" => pool.to_string()).set(if on { 1.0 } else { 0.0 });
}

pub fn route_refused(route: &'static str) {
    counter!(ROUTES_REFUSED, "route" => route).increment(1);
}

pub fn client_refused(client: SharedString, reason: &'static str) {
    counter!(CLIENT_REFUSED, "client" => client, "reason" => reason).increment(1);
}

pub fn keys_reload(ok: bool) {
    counter!(KEYS_RELOADS, "result" => if ok { "ok" } else { "error" }).increment(1);
}

pub fn no_backend() {
    counter!(NO_BACKEND).increment(1);
}

pub fn records_dropped() {
    counter!(RECORDS_DROPPED).increment(1);
}

/// The `result` values of `thinkgate_otel_spans_total`.
pub const SPAN_RESULTS: &[&str] = &["exported", "failed", "dropped"];

/// Spans by what became of them: exported, failed (the collector refused
/// or could not be reached), dropped (the export queue was full).
pub fn spans(result: &'static str, n: u64) {
    counter!(OTEL_SPANS, "result" => result).increment(n);
}

/// The `result` values of `thinkgate_feedback_total`.
pub const FEEDBACK_RESULTS: &[&str] = &["accepted", "dropped", "invalid"];

pub fn feedback(result: &'static str, n: u64) {
    counter!(FEEDBACK, "result" => result).increment(n);
}

pub(crate) fn status_label(status: u16) -> SharedString {
    // Status codes are few; format once per request.
    SharedString::from(status.to_string())
}
