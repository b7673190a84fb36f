//! Drives a run: open loop (each send at its planned absolute time, so a
//! slow server cannot slow the arrivals: no coordinated omission) or closed
//! loop (`concurrency` requests always in flight). Always bounded by a count
//! and/or a duration, and every request by a timeout.

use crate::arrivals::Arrivals;
use crate::client::{self, RequestResult, Target};
use crate::dataset::Item;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How requests are issued.
#[derive(Debug, Clone)]
pub enum Mode {
    Open(Arrivals),
    Closed { concurrency: usize },
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub mode: Mode,
    /// Open loop: at most this many requests in flight; an arrival waits
    /// for a slot (vllm bench serve's `--max-concurrency`).
    pub max_concurrency: Option<usize>,
    pub num_requests: usize,
    pub duration: Option<Duration>,
    pub seed: u64,
    pub progress: bool,
    /// Send the items in their order (a workload whose sessions' turns
    /// must come in sequence) instead of a seeded shuffle.
    pub ordered: bool,
}

/// The dataset order of a run: a seeded shuffle, cycled.
fn order(len: usize, n: usize, seed: u64, shuffle: bool) -> Vec<usize> {
    if !shuffle {
        return (0..n).map(|i| i % len.max(1)).collect();
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5eed);
    let mut idx: Vec<usize> = (0..len).collect();
    let mut out = Vec::with_capacity(n);
    while out.len() < n && len > 0 {
        idx.shuffle(&mut rng);
        out.extend(idx.iter().copied().take(n - out.len()));
    }
    out
}

fn progress_bar(total: usize, enabled: bool) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(
        Some(total as u64),
        if enabled && std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr_with_hz(4)
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    if let Ok(style) =
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} done {msg}")
    {
        pb.set_style(style.progress_chars("=> "));
    }
    pb
}

/// Run the plan against `target`; returns one result per request sent.
pub async fn run(
    plan: &Plan,
    target: Arc<Target>,
    items: Arc<Vec<Item>>,
) -> anyhow::Result<Vec<RequestResult>> {
    anyhow::ensure!(!items.is_empty(), "the dataset is empty");
    let n = plan.num_requests;
    let picks = Arc::new(order(items.len(), n, plan.seed, !plan.ordered));
    let (tx, mut rx) = mpsc::unbounded_channel::<RequestResult>();
    let start = Instant::now() + Duration::from_millis(20);
    let deadline = plan.duration.map(|d| start + d);
    let in_flight = Arc::new(AtomicUsize::new(0));
    let pb = progress_bar(n, plan.progress);
    match &plan.mode {
        Mode::Open(arrivals) => {
            let offsets = arrivals
                .schedule(n, plan.seed)
                .map_err(anyhow::Error::msg)?;
            let handle = tokio::runtime::Handle::current();
            let slots = plan
                .max_concurrency
                .map(|n| Arc::new(tokio::sync::Semaphore::new(n.max(1))));
            let (target, items, picks, in_flight) = (
                Arc::clone(&target),
                Arc::clone(&items),
                Arc::clone(&picks),
                Arc::clone(&in_flight),
            );
            // A dedicated thread keeps the schedule: `thread::sleep` wakes
            // within tens of microseconds, where the async timer rounds to
            // whole milliseconds.
            std::thread::Builder::new()
                .name("loadgen-schedule".into())
                .spawn(move || {
                    for (i, off) in offsets.into_iter().enumerate() {
                        let at = start + off;
                        if deadline.is_some_and(|d| at > d) {
                            break;
                        }
                        let now = Instant::now();
                        if at > now {
                            std::thread::sleep(at - now);
                        }
                        let (t, items, picks, tx, fl, slots) = (
                            Arc::clone(&target),
                            Arc::clone(&items),
                            Arc::clone(&picks),
                            tx.clone(),
                            Arc::clone(&in_flight),
                            slots.clone(),
                        );
                        fl.fetch_add(1, Ordering::Relaxed);
                        handle.spawn(async move {
                            // held until the response ends
                            let _slot = match slots {
                                Some(s) => s.acquire_owned().await.ok(),
                                None => None,
                            };
                            let item = &items[picks[i]];
                            let r = client::send(&t, i, item, off, start).await;
                            fl.fetch_sub(1, Ordering::Relaxed);
                            let _ = tx.send(r);
                        });
                    }
                })?;
        }
        Mode::Closed { concurrency } => {
            let next = Arc::new(AtomicUsize::new(0));
            for _ in 0..(*concurrency).max(1) {
                let (t, items, picks, tx, next, fl) = (
                    Arc::clone(&target),
                    Arc::clone(&items),
                    Arc::clone(&picks),
                    tx.clone(),
                    Arc::clone(&next),
                    Arc::clone(&in_flight),
                );
                tokio::spawn(async move {
                    tokio::time::sleep_until(start.into()).await;
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= n || deadline.is_some_and(|d| Instant::now() > d) {
                            break;
                        }
                        let off = Instant::now().saturating_duration_since(start);
                        fl.fetch_add(1, Ordering::Relaxed);
                        let r = client::send(&t, i, &items[picks[i]], off, start).await;
                        fl.fetch_sub(1, Ordering::Relaxed);
                        let _ = tx.send(r);
                    }
                });
            }
            drop(tx);
        }
    }
    let mut results = Vec::with_capacity(n);
    let mut errors = 0;
    let mut tokens = 0u64;
    while let Some(r) = rx.recv().await {
        errors += usize::from(!r.ok());
        tokens += r.thinking_tokens + r.visible_tokens;
        results.push(r);
        pb.inc(1);
        let secs = start.elapsed().as_secs_f64().max(1e-3);
        pb.set_message(format!(
            "{} in flight, {errors} errors, {:.0} tok/s",
            in_flight.load(Ordering::Relaxed),
            tokens as f64 / secs
        ));
    }
    pb.finish_and_clear();
    results.sort_by_key(|r| r.index);
    Ok(results)
}
