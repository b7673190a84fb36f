//! Export off the hot path: a request hands its spans to a bounded queue
//! and never waits (a full queue drops them, counted); one task batches
//! them to the OTLP exporter, at most `max_batch` spans at a time and at
//! least every `export_interval_ms`.

use super::config::{Protocol, Resolved};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use opentelemetry_sdk::Resource;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// The OTLP exporter `cfg` names (the `OTEL_EXPORTER_OTLP_*` variables it
/// leaves open, headers and timeout included, are read by the exporter).
pub fn exporter(cfg: &Resolved) -> Result<opentelemetry_otlp::SpanExporter, String> {
    let built = match cfg.protocol {
        Protocol::Grpc => {
            let mut b = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_protocol(opentelemetry_otlp::Protocol::Grpc);
            if let Some(e) = &cfg.endpoint {
                b = b.with_endpoint(e.clone());
            }
            // an `https://` collector is checked against the system's roots
            // (read when the exporter is built, so only then)
            let endpoint = cfg.endpoint.clone().or_else(|| {
                std::env::var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                    .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT"))
                    .ok()
            });
            if endpoint.is_some_and(|e| e.trim().starts_with("https://")) {
                b = b.with_tls_config(
                    opentelemetry_otlp::tonic_types::transport::ClientTlsConfig::new()
                        .with_enabled_roots(),
                );
            }
            b.build()
        }
        Protocol::HttpProtobuf => {
            let mut b = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_http_client(collector_client()?)
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary);
            if let Some(e) = &cfg.endpoint {
                let e = e.trim_end_matches('/');
                let full = if e.ends_with("/v1/traces") {
                    e.to_string()
                } else {
                    format!("{e}/v1/traces")
                };
                b = b.with_endpoint(full);
            }
            b.build()
        }
    };
    let mut exp = built.map_err(|e| format!("tracing exporter: {e}"))?;
    exp.set_resource(
        &Resource::builder()
            .with_service_name(cfg.service_name.clone())
            .build(),
    );
    Ok(exp)
}

/// An HTTP client for the collector, `https://` included (the system's
/// roots, as for engines without `upstream_tls.ca_file`).
fn collector_client() -> Result<opentelemetry_http::hyper::HyperClient<Connector>, String> {
    let tls = crate::tls::client::config(&Default::default()).map_err(|e| e.to_string())?;
    // (the connector sets ALPN itself from the versions it enables)
    let mut tls = (*tls).clone();
    tls.alpn_protocols.clear();
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    let conn = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(opentelemetry_http::hyper::HyperClient::new(
        conn,
        Duration::from_secs(10),
        None,
    ))
}

type Connector = hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>;

/// The sending side, held by the gateway.
pub struct Queue {
    tx: mpsc::Sender<Vec<SpanData>>,
}

impl Queue {
    /// Hand one request's spans over; never waits.
    pub fn send(&self, spans: Vec<SpanData>) {
        let n = spans.len() as u64;
        if self.tx.try_send(spans).is_err() {
            crate::metrics::spans("dropped", n);
        }
    }
}

/// Stops the export task: what is queued is exported first.
pub struct ExportTask {
    stop: oneshot::Sender<()>,
    join: tokio::task::JoinHandle<()>,
}

impl ExportTask {
    pub async fn shutdown(self, within: Duration) {
        let _ = self.stop.send(());
        let _ = tokio::time::timeout(within, self.join).await;
    }
}

/// Start the export task for `exporter`.
pub fn start<E: SpanExporter + 'static>(exporter: E, cfg: &Resolved) -> (Queue, ExportTask) {
    let (tx, rx) = mpsc::channel(cfg.queue);
    let (stop, stopped) = oneshot::channel();
    let join = tokio::spawn(run(
        exporter,
        rx,
        stopped,
        cfg.max_batch,
        Duration::from_millis(cfg.export_interval_ms),
    ));
    (Queue { tx }, ExportTask { stop, join })
}

async fn run<E: SpanExporter>(
    exporter: E,
    mut rx: mpsc::Receiver<Vec<SpanData>>,
    mut stopped: oneshot::Receiver<()>,
    max_batch: usize,
    every: Duration,
) {
    let mut batch: Vec<SpanData> = Vec::new();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            got = rx.recv() => match got {
                Some(spans) => {
                    batch.extend(spans);
                    if batch.len() >= max_batch {
                        flush(&exporter, &mut batch, max_batch).await;
                    }
                }
                None => break,
            },
            _ = tick.tick() => flush(&exporter, &mut batch, max_batch).await,
            _ = &mut stopped => {
                while let Ok(spans) = rx.try_recv() {
                    batch.extend(spans);
                }
                break;
            }
        }
    }
    flush(&exporter, &mut batch, max_batch).await;
    let _ = exporter.shutdown();
}

async fn flush<E: SpanExporter>(exporter: &E, batch: &mut Vec<SpanData>, max_batch: usize) {
    while !batch.is_empty() {
        let rest = batch.split_off(batch.len().min(max_batch));
        let now = std::mem::replace(batch, rest);
        let n = now.len() as u64;
        match exporter.export(now).await {
            Ok(()) => crate::metrics::spans("exported", n),
            Err(e) => {
                crate::metrics::spans("failed", n);
                tracing::warn!(error = %e, spans = n, "span export failed");
            }
        }
    }
}
