//! Per-request records, written off the hot path.
//!
//! A settled request sends one [`RequestRecord`] on a bounded channel
//! (`try_send`: a full queue drops the record and counts it, it never blocks
//! the proxy). One writer task appends JSON lines to `--records FILE` and
//! keeps the recent window that `/stats` summarises. The writer flushes on
//! shutdown.

mod experiment;

use crate::error::Fault;
use experiment::Experiment;
pub use experiment::StoppedArms;
use serde::Serialize;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use thinkgate_asu::Summary;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The body ended normally (and, for SSE, with `[DONE]`).
    Completed,
    /// The body ended normally without an answer: no visible token and no
    /// tool call (an end of sequence inside thinking, or `max_tokens` spent
    /// thinking). The engine worked; the user got nothing.
    Answerless,
    /// An SSE body ended without `[DONE]` (upstream closed early).
    Truncated,
    /// An error event arrived in the stream.
    StreamError,
    /// The upstream connection failed after the response head.
    UpstreamReset,
    /// The upstream sent nothing for `upstream_idle_timeout_secs` after the
    /// response head; the gateway ended the response.
    UpstreamIdle,
    /// The client went away before the end; the upstream request was dropped.
    ClientGone,
    /// The gateway answered with an error (see `error`).
    GatewayError,
}

impl Outcome {
    /// A request whose upstream failed after its response head.
    pub fn of(f: &crate::upstream::watched::Failure) -> Self {
        match f {
            crate::upstream::watched::Failure::Reset(_) => Outcome::UpstreamReset,
            crate::upstream::watched::Failure::Idle(_) => Outcome::UpstreamIdle,
        }
    }

    /// The response ended as the protocol says a response ends (with or
    /// without an answer): its totals (E2E, tokens) mean something.
    pub fn ended_normally(self) -> bool {
        matches!(self, Outcome::Completed | Outcome::Answerless)
    }

    pub const ALL: &'static [Outcome] = &[
        Outcome::Completed,
        Outcome::Answerless,
        Outcome::Truncated,
        Outcome::StreamError,
        Outcome::UpstreamReset,
        Outcome::UpstreamIdle,
        Outcome::ClientGone,
        Outcome::GatewayError,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Answerless => "answerless",
            Outcome::Truncated => "truncated",
            Outcome::StreamError => "stream_error",
            Outcome::UpstreamReset => "upstream_reset",
            Outcome::UpstreamIdle => "upstream_idle",
            Outcome::ClientGone => "client_gone",
            Outcome::GatewayError => "gateway_error",
        }
    }
}

/// One finished request. Times are nanoseconds since `t_recv` (monotonic);
/// `start_unix_ms` places the request on the wall clock.
#[derive(Debug, Clone, Serialize)]
pub struct RequestRecord {
    pub id: String,
    pub start_unix_ms: u64,
    pub method: String,
    pub path: String,
    /// `chat`, `completions`, `responses` or `other` (the metric label).
    pub api: &'static str,
    /// The client key's name (`[auth]`), never the key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    pub model: Option<String>,
    pub backend: String,
    /// Experiment arm (`default` without an experiment).
    pub arm: String,
    pub status: u16,
    pub outcome: Outcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fault: Option<Fault>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub stream_requested: bool,
    /// `chat_template_kwargs.enable_thinking`, as the client sent it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enable_thinking: Option<bool>,
    /// `reasoning_effort` / `reasoning.effort`, as the client sent it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_effort: Option<&'static str>,
    /// `include_reasoning`, as the client sent it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub include_reasoning: Option<bool>,
    pub usage_injected: bool,
    pub t_upstream_ns: Option<u64>,
    /// The routing policy's prediction of thinking tokens, when it made one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub predicted_thinking_tokens: Option<f64>,
    /// Thinking budget enforced (tokens), when one applied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thinking_budget: Option<u64>,
    /// End-to-end deadline enforced (ms), when one applied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    /// Straggler actions taken (retries, hedges, forced answers), in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<crate::straggler::action::Action>,
    #[serde(flatten)]
    pub asu: Option<Summary>,
}

/// The numbers `/stats` keeps per request.
#[derive(Debug, Clone, Copy)]
struct Point {
    at: Instant,
    ok: bool,
    ttft: Option<f64>,
    ttfvt: Option<f64>,
    e2e: f64,
    thinking: Option<f64>,
    tpot: Option<f64>,
    thinking_tokens: f64,
    visible_tokens: f64,
}

/// Recent requests, for `/stats`. Bounded in time and in count.
#[derive(Debug)]
pub struct StatsWindow {
    window: Duration,
    points: VecDeque<Point>,
    /// The live view of an experiment of two or more arms.
    experiment: Option<Experiment>,
    /// The arms its guardrail stopped (shared with the assignment).
    stopped: Arc<StoppedArms>,
}

const MAX_POINTS: usize = 200_000;

impl StatsWindow {
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            points: VecDeque::new(),
            experiment: None,
            stopped: Arc::default(),
        }
    }

    /// The experiment's arms, in the configuration's order (fewer than
    /// two: no experiment), and its guardrail. New arms start a new live
    /// view (every arm running again); the same arms keep theirs, and what
    /// the guardrail stopped, across reloads.
    pub fn set_arms(&mut self, arms: &[String], guardrail: Option<crate::config::GuardrailConfig>) {
        if arms.len() < 2 {
            self.experiment = None;
            self.stopped.clear();
        } else if let Some(e) = self.experiment.as_mut().filter(|e| e.arms() == arms) {
            e.set_guardrail(guardrail);
        } else {
            self.experiment = Some(Experiment::new(arms, guardrail, Arc::clone(&self.stopped)));
        }
    }

    /// The arms the experiment's guardrail stopped.
    pub fn stopped(&self) -> Arc<StoppedArms> {
        Arc::clone(&self.stopped)
    }

    fn feedback(&mut self, f: &crate::feedback::Feedback) {
        if let Some(e) = self.experiment.as_mut() {
            e.feedback(f);
        }
    }

    fn push(&mut self, r: &RequestRecord) {
        if let Some(e) = self.experiment.as_mut() {
            e.push(r);
        }
        let Some(s) = &r.asu else { return };
        if self.points.len() >= MAX_POINTS {
            self.points.pop_front();
        }
        self.points.push_back(Point {
            at: Instant::now(),
            ok: r.status < 400 && matches!(r.outcome, Outcome::Completed),
            ttft: s.ttft(),
            ttfvt: s.ttfvt(),
            e2e: s.e2e(),
            thinking: s.thinking_time(),
            tpot: s.tpot(),
            thinking_tokens: s.thinking_tokens as f64,
            visible_tokens: s.visible_tokens as f64,
        });
    }

    /// JSON summary: counts and p50/p90/p99 of each ASU metric.
    pub fn summary(&mut self) -> serde_json::Value {
        let now = Instant::now();
        while self
            .points
            .front()
            .is_some_and(|p| now.duration_since(p.at) > self.window)
        {
            self.points.pop_front();
        }
        let pts = &self.points;
        let col = |f: &dyn Fn(&Point) -> Option<f64>| -> serde_json::Value {
            let mut v: Vec<f64> = pts.iter().filter_map(f).collect();
            quantiles(&mut v)
        };
        let span = pts
            .front()
            .map(|p| now.duration_since(p.at).as_secs_f64())
            .unwrap_or(0.0)
            .max(1e-9);
        let tokens: f64 = pts
            .iter()
            .map(|p| p.thinking_tokens + p.visible_tokens)
            .sum();
        let experiment = self.experiment.as_ref().map(Experiment::summary);
        let mut v = serde_json::json!({
            "window_seconds": self.window.as_secs(),
            "requests": pts.len(),
            "ok": pts.iter().filter(|p| p.ok).count(),
            "output_tokens_per_second": if pts.is_empty() { 0.0 } else { tokens / span },
            "ttft_seconds": col(&|p| p.ttft),
            "ttfvt_seconds": col(&|p| p.ttfvt),
            "e2e_seconds": col(&|p| Some(p.e2e)),
            "thinking_seconds": col(&|p| p.thinking),
            "tpot_seconds": col(&|p| p.tpot),
            "thinking_tokens": col(&|p| Some(p.thinking_tokens)),
            "visible_tokens": col(&|p| Some(p.visible_tokens)),
        });
        if let Some(e) = experiment {
            v["experiment"] = e;
        }
        v
    }
}

fn quantiles(v: &mut [f64]) -> serde_json::Value {
    if v.is_empty() {
        return serde_json::json!({"count": 0});
    }
    v.sort_by(f64::total_cmp);
    // Nearest rank, as the load generator computes it.
    let q = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    serde_json::json!({"count": v.len(), "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "max": v[v.len() - 1]})
}

/// The sending side, held by the proxy.
#[derive(Debug, Clone)]
pub struct Recorder {
    tx: mpsc::Sender<RequestRecord>,
    /// Feedback grades, to the same file (`None`: no records file).
    feedback: Option<mpsc::Sender<crate::feedback::Feedback>>,
    pub stats: Arc<Mutex<StatsWindow>>,
    /// The arms the experiment's guardrail stopped: read by every
    /// assignment without taking the stats lock.
    pub stopped: Arc<StoppedArms>,
}

impl Recorder {
    /// A recorder whose records go to the returned receiver (no writer
    /// task): for tests of what settles, and when.
    pub fn channel(queue: usize) -> (Self, mpsc::Receiver<RequestRecord>) {
        let (tx, rx) = mpsc::channel(queue);
        let window = StatsWindow::new(Duration::from_secs(60));
        let stopped = window.stopped();
        let stats = Arc::new(Mutex::new(window));
        (
            Self {
                tx,
                feedback: None,
                stats,
                stopped,
            },
            rx,
        )
    }

    /// Whether feedback has somewhere to go (a records file).
    pub fn takes_feedback(&self) -> bool {
        self.feedback.is_some()
    }

    /// Hand a grade to the writer; never waits (a full queue drops it and
    /// counts it).
    pub fn send_feedback(&self, f: crate::feedback::Feedback) -> bool {
        let sent = self
            .feedback
            .as_ref()
            .is_some_and(|tx| tx.try_send(f).is_ok());
        crate::metrics::feedback(if sent { "accepted" } else { "dropped" }, 1);
        sent
    }

    /// Hand a record to the writer; never waits.
    pub fn send(&self, r: RequestRecord) {
        if self.tx.try_send(r).is_err() {
            crate::metrics::records_dropped();
        }
    }
}

/// Handle to stop the writer: flushes what is queued, then returns.
pub struct RecorderTask {
    stop: oneshot::Sender<()>,
    join: tokio::task::JoinHandle<()>,
}

impl RecorderTask {
    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        let _ = self.join.await;
    }
}

/// Start the writer task.
pub async fn start(
    path: Option<PathBuf>,
    queue: usize,
    window: Duration,
) -> std::io::Result<(Recorder, RecorderTask)> {
    let file = match path {
        Some(p) => Some(
            tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .await?,
        ),
        None => None,
    };
    let (tx, mut rx) = mpsc::channel::<RequestRecord>(queue);
    let (fb_tx, mut fb_rx) = mpsc::channel::<crate::feedback::Feedback>(queue);
    let feedback = file.is_some().then_some(fb_tx);
    let window = StatsWindow::new(window);
    let stopped = window.stopped();
    let stats = Arc::new(Mutex::new(window));
    let (stop, mut stop_rx) = oneshot::channel();
    let st = Arc::clone(&stats);
    let join = tokio::spawn(async move {
        let mut out = file.map(|f| tokio::io::BufWriter::with_capacity(256 << 10, f));
        let mut line = Vec::with_capacity(2048);
        let mut flush_tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            let rec = tokio::select! {
                r = rx.recv() => r,
                Some(f) = fb_rx.recv() => {
                    if let Ok(mut s) = st.lock() {
                        s.feedback(&f);
                    }
                    write_feedback(&mut out, &mut line, f).await;
                    continue;
                }
                _ = flush_tick.tick() => {
                    if let Some(o) = out.as_mut() { let _ = o.flush().await; }
                    continue;
                }
                _ = &mut stop_rx => {
                    // Drain what is queued, then flush and stop.
                    rx.close();
                    while let Some(r) = rx.recv().await {
                        write_one(&st, &mut out, &mut line, r).await;
                    }
                    fb_rx.close();
                    while let Some(f) = fb_rx.recv().await {
                        if let Ok(mut s) = st.lock() {
                            s.feedback(&f);
                        }
                        write_feedback(&mut out, &mut line, f).await;
                    }
                    break;
                }
            };
            match rec {
                Some(r) => write_one(&st, &mut out, &mut line, r).await,
                None => break,
            }
        }
        if let Some(o) = out.as_mut() {
            let _ = o.flush().await;
        }
    });
    Ok((
        Recorder {
            tx,
            feedback,
            stats,
            stopped,
        },
        RecorderTask { stop, join },
    ))
}

/// A feedback line: `{"feedback": {...}}`.
async fn write_feedback(
    out: &mut Option<tokio::io::BufWriter<tokio::fs::File>>,
    line: &mut Vec<u8>,
    f: crate::feedback::Feedback,
) {
    if let Some(o) = out.as_mut() {
        line.clear();
        if serde_json::to_writer(&mut *line, &serde_json::json!({ "feedback": f })).is_ok() {
            line.push(b'\n');
            if let Err(e) = o.write_all(line).await {
                tracing::warn!(error = %e, "cannot write feedback");
            }
        }
    }
}

async fn write_one(
    stats: &Mutex<StatsWindow>,
    out: &mut Option<tokio::io::BufWriter<tokio::fs::File>>,
    line: &mut Vec<u8>,
    r: RequestRecord,
) {
    if let Ok(mut s) = stats.lock() {
        s.push(&r);
    }
    if let Some(o) = out.as_mut() {
        line.clear();
        if serde_json::to_writer(&mut *line, &r).is_ok() {
            line.push(b'\n');
            if let Err(e) = o.write_all(line).await {
                tracing::warn!(error = %e, "cannot write request record");
            }
        }
    }
}
