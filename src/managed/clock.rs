//! The managed path's timers: a deadline as an instant, and a sleep that
//! never ends when there is none.

use std::time::{Duration, Instant};
use tokio::time::sleep_until;

/// `d` after `t_recv`, as a timer instant.
pub(super) fn at(t_recv: Instant, d: Option<Duration>) -> Option<tokio::time::Instant> {
    d.map(|d| tokio::time::Instant::from_std(t_recv + d))
}

pub(super) async fn sleep_opt(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => sleep_until(t).await,
        None => std::future::pending().await,
    }
}
