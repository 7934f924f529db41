//! The edge's workers: one OS thread per worker, each running its own single-threaded tokio
//! runtime, and every client connection served whole by one of them.
//!
//! A connection's TLS, its requests (HTTP/2 streams included), its upstream connections and
//! their hyper tasks, its timers and its socket's readiness all stay on one thread: no task is
//! woken on another thread and nothing is stolen between threads. The multi-threaded runtime's
//! work stealing cost more than it gained here: on two cores, one worker served more keep-alive
//! requests per second than two (docs/bench-profile.md), every wake-up of a task that
//! had moved being a futex call and cache lines crossing cores.
//!
//! One listening socket, accepted on the main runtime and handed to the worker with the fewest
//! open connections (the hand-off is one wake-up per connection, not per request): the socket
//! handed over at a zero-downtime restart stays one descriptor, and a worker busy with slow
//! clients is not given more of them, which a kernel-hashed `SO_REUSEPORT` group would do.

use std::{
    cell::Cell,
    future::Future,
    io,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    thread::JoinHandle,
};
use tokio::{runtime::Handle, sync::watch};

thread_local! {
    /// This thread's worker number (1…), 0 outside the workers.
    static CURRENT: Cell<usize> = const { Cell::new(0) };
}

/// The worker running the calling thread (1…), or 0 on any other thread: what per-worker state
/// (the upstream pools) is keyed by, so a connection made on one worker is used there only.
pub fn current() -> usize {
    CURRENT.with(Cell::get)
}

struct Worker {
    handle: Handle,
    /// Connections open on this worker.
    open: Arc<AtomicUsize>,
}

/// The running workers; stopped (their remaining tasks dropped) and joined on drop.
pub struct Workers {
    workers: Vec<Worker>,
    stop: watch::Sender<bool>,
    threads: Vec<JoinHandle<()>>,
    next: AtomicUsize,
}

impl Workers {
    /// Starts `count` workers (at least one).
    pub fn start(count: usize) -> io::Result<Self> {
        let (stop, stopped) = watch::channel(false);
        let mut workers = Vec::with_capacity(count);
        let mut threads = Vec::with_capacity(count);
        for n in 1..=count.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let handle = runtime.handle().clone();
            let mut stopped = stopped.clone();
            let thread = std::thread::Builder::new().name(format!("gateway-edge-{n}")).spawn(move || {
                CURRENT.with(|c| c.set(n));
                runtime.block_on(async move {
                    let _ = stopped.wait_for(|s| *s).await;
                });
            })?;
            workers.push(Worker { handle, open: Arc::new(AtomicUsize::new(0)) });
            threads.push(thread);
        }
        Ok(Self { workers, stop, threads, next: AtomicUsize::new(0) })
    }

    /// Runs the future `make` returns on the worker with the fewest open connections (ties
    /// taken in turn); `make` runs on that worker, so the sockets it registers (the accepted
    /// one, converted there) are driven by that worker's reactor.
    pub fn spawn<F, Fut>(&self, make: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let count = self.workers.len();
        let mut best = start % count;
        for i in 1..count {
            let w = (start + i) % count;
            if self.workers[w].open.load(Ordering::Relaxed) < self.workers[best].open.load(Ordering::Relaxed) {
                best = w;
            }
        }
        let worker = &self.workers[best];
        let open = OpenGuard::new(worker.open.clone());
        worker.handle.spawn(async move {
            let _open = open;
            make().await;
        });
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Counts a connection open on its worker until dropped.
struct OpenGuard(Arc<AtomicUsize>);

impl OpenGuard {
    fn new(open: Arc<AtomicUsize>) -> Self {
        open.fetch_add(1, Ordering::Relaxed);
        Self(open)
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{collections::BTreeMap, sync::Mutex, time::Duration};
    use tokio::sync::oneshot;

    type Seen = Arc<Mutex<BTreeMap<usize, usize>>>;

    /// Spawns connection-like task `id`, which records its worker and runs until the returned
    /// sender is dropped.
    fn hold(workers: &Workers, seen: &Seen, id: usize) -> oneshot::Sender<()> {
        let (release, released) = oneshot::channel::<()>();
        let seen = seen.clone();
        workers.spawn(move || async move {
            seen.lock().expect("lock").insert(id, current());
            let _ = released.await;
        });
        release
    }

    fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    #[test]
    fn connections_run_on_the_worker_threads_spread_by_open_count() {
        let workers = Workers::start(2).expect("workers");
        assert_eq!(current(), 0, "not a worker thread");
        let seen = Seen::default();
        let mut held: Vec<_> = (0..4).map(|id| Some(hold(&workers, &seen, id))).collect();
        wait_for("four connections", || seen.lock().expect("lock").len() == 4);
        let mut on: Vec<usize> = seen.lock().expect("lock").values().copied().collect();
        on.sort_unstable();
        assert_eq!(on, [1, 1, 2, 2], "two on each worker");
        let open = |w: usize| workers.workers[w].open.load(Ordering::Relaxed);
        assert_eq!((open(0), open(1)), (2, 2));

        // Both of worker 1's connections end: the next two go to worker 1, not by turn.
        for (id, worker) in seen.lock().expect("lock").iter() {
            if *worker == 1 {
                held[*id] = None;
            }
        }
        wait_for("worker 1 to be free", || open(0) == 0);
        let more: Vec<_> = (4..6).map(|id| hold(&workers, &seen, id)).collect();
        wait_for("two more", || seen.lock().expect("lock").len() == 6);
        let placed = seen.lock().expect("lock").clone();
        assert_eq!((placed[&4], placed[&5]), (1, 1), "the idle worker takes both");
        drop((held, more));
        wait_for("every connection closed", || open(0) == 0 && open(1) == 0);
    }

    #[test]
    fn stopping_drops_what_still_runs_and_joins_the_threads() {
        struct Flag(Arc<std::sync::atomic::AtomicBool>);
        impl Drop for Flag {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let workers = Workers::start(1).expect("workers");
        let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (started, is_started) = std::sync::mpsc::channel();
        let flag = Flag(dropped.clone());
        workers.spawn(move || async move {
            let _flag = flag;
            let _ = started.send(());
            std::future::pending::<()>().await;
        });
        is_started.recv_timeout(Duration::from_secs(5)).expect("the task started");
        drop(workers);
        assert!(dropped.load(Ordering::SeqCst), "the pending task was dropped when the workers stopped");
    }
}
