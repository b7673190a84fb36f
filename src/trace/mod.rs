//! OpenTelemetry traces. A request gets a server span (continuing the
//! client's `traceparent`, or a new trace) and a client span per upstream
//! leg; each leg's `traceparent` names its span, so an engine that traces
//! (vLLM with `--otlp-traces-endpoint`) joins the trace under it. Spans are
//! built from the request's record when it settles and exported over OTLP
//! (gRPC or HTTP/protobuf) by one background task: nothing per chunk, and
//! nothing at all when tracing is off (requests and their headers then go
//! as before: the client's `traceparent` reaches the engine unchanged).

//!
//! Layers: `config` (`[tracing]` and the `OTEL_*` variables) and `context`
//! (a request's ids and legs) sit low, where the upstream client and the
//! configuration use them; the spans and their export sit above the
//! records they are built from.

pub mod config;
pub mod context;
mod export;
mod names;
mod spans;

pub use export::ExportTask;
pub use spans::{build, failed, Finished};

use config::{Sampler, TracingConfig};
use context::RequestTrace;
use opentelemetry::InstrumentationScope;
use std::sync::Arc;
use std::time::Instant;

/// Tracing, when on: the sampler, and the queue to the export task.
pub struct Tracing {
    sampler: Sampler,
    queue: export::Queue,
    scope: InstrumentationScope,
}

impl Tracing {
    /// Start exporting per `cfg` (`None`: tracing is off).
    pub fn start(cfg: &TracingConfig) -> Result<Option<(Self, ExportTask)>, String> {
        let Some(resolved) = cfg.resolve(|k| std::env::var(k).ok())? else {
            return Ok(None);
        };
        let exporter = export::exporter(&resolved)?;
        let (queue, task) = export::start(exporter, &resolved);
        tracing::info!(
            protocol = ?resolved.protocol,
            endpoint = resolved.endpoint.as_deref().unwrap_or("(from OTEL_* variables)"),
            "exporting traces over OTLP"
        );
        Ok(Some((
            Self {
                sampler: resolved.sampler,
                queue,
                scope: InstrumentationScope::builder("thinkgate")
                    .with_version(env!("CARGO_PKG_VERSION"))
                    .build(),
            },
            task,
        )))
    }

    /// A request's trace context, from its headers.
    pub fn open(&self, headers: &http::HeaderMap, t0: Instant) -> Arc<RequestTrace> {
        Arc::new(RequestTrace::open(self.sampler, headers, t0))
    }

    /// A settled request: its spans go to the export queue when it was
    /// sampled or failed.
    pub fn finish(&self, f: &Finished<'_>) {
        if f.trace.sampled || failed(f.record) {
            self.queue.send(build(f, &self.scope));
        }
    }
}
