//! An OTLP trace receiver for the tests: `tests/python/otlp_receiver.py`,
//! which decodes with the official protobuf definitions (PyPI
//! `opentelemetry-proto`) over HTTP and gRPC; the spans it prints, as JSON.

use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The receiver, its ports, and the spans it printed so far.
pub struct Receiver {
    child: Child,
    pub http: u16,
    pub grpc: u16,
    spans: Arc<Mutex<Vec<Value>>>,
}

impl Receiver {
    pub fn start() -> Self {
        let mut child = Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/python/otlp_receiver.py"
            ))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines
            .next()
            .expect("the receiver prints its ports (needs opentelemetry-proto and grpcio)")
            .unwrap();
        let ports: Value = serde_json::from_str(&first).unwrap();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&spans);
        std::thread::spawn(move || {
            for l in lines.map_while(Result::ok) {
                sink.lock().unwrap().push(serde_json::from_str(&l).unwrap());
            }
        });
        Self {
            child,
            http: ports["http"].as_u64().unwrap() as u16,
            grpc: ports["grpc"].as_u64().unwrap() as u16,
            spans,
        }
    }

    /// The spans of `trace_id` once `n` have arrived (waits up to 15 s).
    pub async fn trace(&self, trace_id: &str, n: usize) -> Vec<Value> {
        let t0 = Instant::now();
        loop {
            let got: Vec<Value> = self
                .spans
                .lock()
                .unwrap()
                .iter()
                .filter(|s| s["trace_id"] == trace_id)
                .cloned()
                .collect();
            if got.len() >= n || t0.elapsed() > Duration::from_secs(15) {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn all(&self) -> Vec<Value> {
        self.spans.lock().unwrap().clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(mut i) = self.child.stdin.take() {
            let _ = i.flush();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
