//! Connection caps and the idle timeout.
//!
//! - **Total connections** ([`Limits::admit`]): up to `max_connections` client connections are
//!   served; beyond, up to [`REJECT_SLACK`] more are accepted only to answer every request 429
//!   with `Retry-After` (and close), and any further one is closed at once, so a flood cannot
//!   make the gateway do unbounded TLS work.
//! - **Per sandbox** ([`Limits::sandbox_slot`]): concurrent proxied requests and tunnels per
//!   sandbox; a slot lives until the response body (or the tunnel) ends.
//! - **Idle timeout** ([`ActivityIo`] + [`idle_timeout`]): a connection with no byte read or
//!   written for the configured time is closed (tunnels alike), checked four times per timeout
//!   (so within a quarter more).
//!
//! The header read timeout is hyper's own (`http1.header_read_timeout`, with a timer) for each
//! HTTP/1.1 request head; the TLS handshake and the first request share one such budget from the
//! accept ([`no_request_by`] in [`super::serve`]): hyper's timer does not run while the protocol
//! is being detected (a TLS connection that never sends a byte), nor on HTTP/2 (a connection
//! that sends its preface and no request).

use crate::model::FastMap;
use std::{
    io,
    net::Ipv4Addr,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Connections accepted beyond `max_connections` only to be answered 429.
pub const REJECT_SLACK: usize = 256;

/// The counters.
#[derive(Debug)]
pub struct Limits {
    max_total: usize,
    max_per_sandbox: usize,
    active: AtomicUsize,
    rejecting: AtomicUsize,
    per_sandbox: Mutex<FastMap<Ipv4Addr, usize>>,
}

/// What to do with a new connection.
#[derive(Debug)]
pub enum Admission {
    /// Serve it (the guard counts it until dropped).
    Serve(ConnectionGuard),
    /// Over the cap: answer every request 429, then close.
    Reject(ConnectionGuard),
    /// Far over the cap: close at once.
    Close,
}

/// Counts one connection until dropped.
#[derive(Debug)]
pub struct ConnectionGuard {
    limits: Arc<Limits>,
    rejecting: bool,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let counter = if self.rejecting { &self.limits.rejecting } else { &self.limits.active };
        counter.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One of a sandbox's concurrent request slots, released on drop.
#[derive(Debug)]
pub struct SandboxSlot {
    limits: Arc<Limits>,
    address: Ipv4Addr,
}

impl Drop for SandboxSlot {
    fn drop(&mut self) {
        let mut map = self.limits.per_sandbox.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.address) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.address);
            }
        }
    }
}

impl Limits {
    /// Caps: total client connections, concurrent requests per sandbox.
    pub fn new(max_total: usize, max_per_sandbox: usize) -> Arc<Self> {
        Arc::new(Self {
            max_total,
            max_per_sandbox,
            active: AtomicUsize::new(0),
            rejecting: AtomicUsize::new(0),
            per_sandbox: Mutex::new(FastMap::default()),
        })
    }

    /// Counts a new client connection.
    pub fn admit(self: &Arc<Self>) -> Admission {
        let take = |counter: &AtomicUsize, max: usize| {
            counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1)).is_ok()
        };
        if take(&self.active, self.max_total) {
            Admission::Serve(ConnectionGuard { limits: self.clone(), rejecting: false })
        } else if take(&self.rejecting, REJECT_SLACK) {
            Admission::Reject(ConnectionGuard { limits: self.clone(), rejecting: true })
        } else {
            Admission::Close
        }
    }

    /// A request slot of the sandbox at `address`, or `None` when it has `max_per_sandbox`.
    pub fn sandbox_slot(self: &Arc<Self>, address: Ipv4Addr) -> Option<SandboxSlot> {
        let mut map = self.per_sandbox.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(address).or_insert(0);
        if *n >= self.max_per_sandbox {
            return None;
        }
        *n += 1;
        Some(SandboxSlot { limits: self.clone(), address })
    }

    /// Client connections being served.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }
}

/// Whether a connection moved a byte since the idle check last looked.
#[derive(Debug)]
pub struct Activity {
    moved: AtomicBool,
}

impl Activity {
    /// A fresh connection.
    pub fn new() -> Arc<Self> {
        Arc::new(Self { moved: AtomicBool::new(false) })
    }

    /// A byte moved. A flag rather than a timestamp: this runs on every read and write, and
    /// reading the clock there cost more than the whole idle check does. The load first keeps
    /// the cache line clean while the flag is already set.
    pub fn touch(&self) {
        if !self.moved.load(Ordering::Relaxed) {
            self.moved.store(true, Ordering::Relaxed);
        }
    }
}

/// How many times per timeout [`idle_timeout`] looks at the activity flag: a connection is
/// closed after between `timeout` and `timeout × (1 + 1/IDLE_CHECKS)` without a byte.
const IDLE_CHECKS: u32 = 4;

/// Resolves once `activity` has moved no byte for `timeout` (up to a quarter more).
pub async fn idle_timeout(activity: &Activity, timeout: Duration) {
    let step = (timeout / IDLE_CHECKS).max(Duration::from_millis(1));
    let mut idle = Duration::ZERO;
    loop {
        tokio::time::sleep(step).await;
        if activity.moved.swap(false, Ordering::Relaxed) {
            idle = Duration::ZERO;
        } else {
            idle += step;
            if idle >= timeout {
                return;
            }
        }
    }
}

/// An IO object that records every byte moved in an [`Activity`].
#[derive(Debug)]
pub struct ActivityIo<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T> ActivityIo<T> {
    /// Wraps `inner`.
    pub fn new(inner: T, activity: Arc<Activity>) -> Self {
        Self { inner, activity }
    }
    /// The wrapped object.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ActivityIo<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ActivityIo<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Resolves at `deadline` unless a request has started by then (`requested`), and never after:
/// a connection that has not sent a complete request head by its header read deadline is closed.
pub async fn no_request_by(requested: &std::sync::atomic::AtomicBool, deadline: tokio::time::Instant) {
    tokio::time::sleep_until(deadline).await;
    if requested.load(Ordering::Acquire) {
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn total_cap_then_reject_slack_then_close() {
        let l = Limits::new(2, 1);
        let a = l.admit();
        let b = l.admit();
        assert!(matches!((&a, &b), (Admission::Serve(_), Admission::Serve(_))));
        let rejected: Vec<Admission> = (0..REJECT_SLACK).map(|_| l.admit()).collect();
        assert!(rejected.iter().all(|r| matches!(r, Admission::Reject(_))));
        assert!(matches!(l.admit(), Admission::Close));
        drop(a);
        assert!(matches!(l.admit(), Admission::Serve(_)));
        assert_eq!(l.active(), 1);
    }

    #[test]
    fn per_sandbox_slots() {
        let l = Limits::new(10, 2);
        let ip: Ipv4Addr = "198.18.0.2".parse().expect("ip");
        let other: Ipv4Addr = "198.18.0.6".parse().expect("ip");
        let s1 = l.sandbox_slot(ip).expect("1");
        let _s2 = l.sandbox_slot(ip).expect("2");
        assert!(l.sandbox_slot(ip).is_none());
        assert!(l.sandbox_slot(other).is_some());
        drop(s1);
        assert!(l.sandbox_slot(ip).is_some());
    }

    #[tokio::test]
    async fn idle_timeout_follows_activity() {
        let a = Activity::new();
        let start = Instant::now();
        idle_timeout(&a, Duration::from_millis(100)).await;
        assert!(start.elapsed() >= Duration::from_millis(100));
        a.touch();
        let a2 = a.clone();
        let toucher = tokio::spawn(async move {
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_millis(40)).await;
                a2.touch();
            }
        });
        let start = Instant::now();
        idle_timeout(&a, Duration::from_millis(100)).await;
        assert!(start.elapsed() >= Duration::from_millis(250), "{:?}", start.elapsed());
        toucher.await.expect("toucher");
    }
}
