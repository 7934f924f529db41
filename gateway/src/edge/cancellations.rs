//! Client-cancelled requests per connection: the HTTP/2 rapid reset defence (CVE-2023-44487).
//!
//! An HTTP/2 client can open a stream and reset it at once, thousands of times a second, on one
//! connection: every stream costs the gateway its routing, authentication and an upstream
//! request, while the client never waits for an answer and never reaches the concurrent-stream
//! cap. h2's own limits count the streams reset before the server took them, or reset and not
//! yet released by it: a client that lets the server start each request and resets it a few
//! milliseconds later never reaches them (one such connection cancelled 13,000 requests in 20 s
//! without being cut). Like Envoy's "premature reset" check, the edge counts, per
//! connection, the requests the client cancelled within [`PREMATURE`] of sending them, before
//! they were answered; once at least [`MIN_CANCELLED`] were, and they are half or more of the
//! connection's requests, the connection is closed. A browser that cancels a few navigations
//! or a client that gives up on a slow long poll is never affected.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};
use tokio::sync::Notify;

/// A request cancelled later than this after it arrived is a client giving up, not an attack.
pub const PREMATURE: Duration = Duration::from_secs(1);
/// Cancelled requests a connection may have before the ratio is checked.
pub const MIN_CANCELLED: u32 = 100;

/// Whether a connection with `started` requests, `cancelled` of them prematurely, is closed.
pub fn is_abusive(started: u32, cancelled: u32) -> bool {
    cancelled >= MIN_CANCELLED && u64::from(cancelled) * 2 >= u64::from(started)
}

/// One client connection's counts.
#[derive(Debug, Default)]
pub struct Cancellations {
    started: AtomicU32,
    cancelled: AtomicU32,
    tripped: AtomicBool,
    notify: Notify,
}

impl Cancellations {
    /// A fresh count for a new connection.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// A request arrived: the watch counts it as cancelled if dropped before
    /// [`RequestWatch::answered`].
    pub fn start(self: &Arc<Self>) -> RequestWatch {
        self.started.fetch_add(1, Ordering::Relaxed);
        RequestWatch { conn: self.clone(), since: Instant::now(), answered: false }
    }

    /// Resolves once the connection should be closed.
    pub async fn tripped(&self) {
        loop {
            let notified = self.notify.notified();
            if self.tripped.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }

    /// (requests, premature cancellations) so far.
    pub fn counts(&self) -> (u32, u32) {
        (self.started.load(Ordering::Relaxed), self.cancelled.load(Ordering::Relaxed))
    }

    fn cancelled_one(&self) {
        let cancelled = self.cancelled.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        if is_abusive(self.started.load(Ordering::Relaxed), cancelled) && !self.tripped.swap(true, Ordering::AcqRel) {
            self.notify.notify_waiters();
        }
    }
}

/// Watches one request until it is answered.
#[derive(Debug)]
pub struct RequestWatch {
    conn: Arc<Cancellations>,
    since: Instant,
    answered: bool,
}

impl RequestWatch {
    /// The response head is ready: not a cancellation.
    pub fn answered(mut self) {
        self.answered = true;
    }
}

impl Drop for RequestWatch {
    fn drop(&mut self) {
        if !self.answered && self.since.elapsed() < PREMATURE {
            self.conn.cancelled_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ratio_counts_only_after_the_minimum() {
        assert!(!is_abusive(99, 99));
        assert!(is_abusive(100, 100));
        assert!(is_abusive(200, 100));
        assert!(!is_abusive(201, 100));
        assert!(!is_abusive(10_000, 4_999));
        assert!(is_abusive(u32::MAX, u32::MAX / 2 + 1));
    }

    #[tokio::test]
    async fn dropped_watches_trip_the_connection_answered_ones_do_not() {
        let c = Cancellations::new();
        for _ in 0..1_000 {
            c.start().answered();
        }
        for _ in 0..MIN_CANCELLED {
            drop(c.start());
        }
        assert_eq!(c.counts(), (1_100, 100));
        assert!(!c.tripped.load(Ordering::Acquire), "100 of 1,100 cancelled is a client, not an attack");
        let waiter = tokio::spawn({
            let c = c.clone();
            async move { c.tripped().await }
        });
        for _ in 0..1_000 {
            drop(c.start());
        }
        tokio::time::timeout(Duration::from_secs(5), waiter).await.expect("tripped").expect("task");
        // Once tripped, it stays tripped.
        tokio::time::timeout(Duration::from_secs(1), c.tripped()).await.expect("still tripped");
    }
}
