//! Admission: the global limit of requests in flight, and a bounded wait
//! for a slot (global or per backend) before the fast 503.
//!
//! Without `max_queued` nothing waits: past a limit the answer is an
//! immediate 503 with `Retry-After`. With it, up to `max_queued` requests
//! wait up to `queue_timeout_ms` for a request to finish; the rest, and
//! those whose wait runs out, get the same 503. The queue is never longer
//! than that, so a burst cannot pile up in the gateway.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;
use tokio::sync::Notify;

#[derive(Debug, Default)]
pub struct Admission {
    admitted: AtomicUsize,
    queued: AtomicUsize,
    freed: Notify,
}

impl Admission {
    /// Take a global slot if fewer than `limit` are taken (0: no limit,
    /// and nothing is counted).
    pub fn try_admit(&self, limit: usize) -> bool {
        if limit == 0 {
            return true;
        }
        self.admitted
            .fetch_update(SeqCst, SeqCst, |n| (n < limit).then_some(n + 1))
            .is_ok()
    }

    /// Give back a slot taken with a non-zero limit.
    pub fn release(&self) {
        self.admitted.fetch_sub(1, SeqCst);
        self.wake();
    }

    /// A request ended (its backend slot is free): wake the waiters, if
    /// any. One atomic load when nobody waits.
    pub fn wake(&self) {
        if self.queued.load(SeqCst) > 0 {
            self.freed.notify_waiters();
        }
    }

    pub fn admitted(&self) -> usize {
        self.admitted.load(SeqCst)
    }

    pub fn queued(&self) -> usize {
        self.queued.load(SeqCst)
    }

    /// Retry `attempt` each time a request ends, for up to `timeout`, if
    /// fewer than `max_queued` already wait. `None`: no place in the queue,
    /// or the wait ran out.
    pub async fn wait<T>(
        &self,
        max_queued: usize,
        timeout: Duration,
        mut attempt: impl FnMut() -> Option<T>,
    ) -> Option<T> {
        if max_queued == 0 {
            return None;
        }
        if self
            .queued
            .fetch_update(SeqCst, SeqCst, |n| (n < max_queued).then_some(n + 1))
            .is_err()
        {
            return None;
        }
        let _leave = Leave(&self.queued);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // registered before the attempt, so a release between the two
            // is not missed
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(t) = attempt() {
                return Some(t);
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return attempt();
            }
        }
    }
}

struct Leave<'a>(&'a AtomicUsize);

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn limits_count_and_release() {
        let a = Admission::default();
        assert!(a.try_admit(2) && a.try_admit(2));
        assert!(!a.try_admit(2));
        a.release();
        assert!(a.try_admit(2));
        assert!(a.try_admit(0), "no limit");
        assert_eq!(a.admitted(), 2);
    }

    #[tokio::test]
    async fn waiters_get_freed_slots_and_the_queue_is_bounded() {
        let a = Arc::new(Admission::default());
        assert!(a.try_admit(1));
        let a2 = Arc::clone(&a);
        let waiter = tokio::spawn(async move {
            a2.wait(1, Duration::from_secs(5), || a2.try_admit(1).then_some(()))
                .await
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(a.queued(), 1);
        // the queue holds one: the next is refused at once
        let t = std::time::Instant::now();
        assert!(a
            .wait(1, Duration::from_secs(5), || a.try_admit(1).then_some(()))
            .await
            .is_none());
        assert!(t.elapsed() < Duration::from_millis(50));
        a.release();
        assert_eq!(waiter.await.ok().flatten(), Some(()));
        assert_eq!(a.queued(), 0);
        // a wait that runs out
        let t = std::time::Instant::now();
        assert!(a
            .wait(4, Duration::from_millis(50), || a
                .try_admit(1)
                .then_some(()))
            .await
            .is_none());
        assert!(t.elapsed() >= Duration::from_millis(50));
    }
}
