//! A connection prober for the data-plane tests under fire (`tests/tests/dataplane_under_fire.rs`):
//! a thread (inside a namespace, or in the host namespace with or without `SO_MARK`) that every
//! interval starts a non-blocking TCP connection to each target and classifies every attempt:
//! established (the handshake completed), refused (RST), dropped (no answer within
//! [`PROBE_TIMEOUT`]) or another error. It never blocks on one attempt, so a tick of 1 ms holds.

use crate::harness::Netns;
use std::{
    io,
    net::SocketAddr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

/// How long an attempt may wait for the handshake before it counts as dropped (under the first
/// SYN retransmission at 1 s, so exactly one SYN is sent per attempt).
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(300);

/// Counts of one prober.
#[derive(Debug, Default)]
pub struct ProbeCounts {
    /// Connection attempts started.
    pub attempts: AtomicU64,
    /// Handshakes completed.
    pub established: AtomicU64,
    /// RST answers.
    pub refused: AtomicU64,
    /// No answer within [`PROBE_TIMEOUT`].
    pub dropped: AtomicU64,
    /// Other errors (socket, unreachable...).
    pub errors: AtomicU64,
    /// The first few established / refused attempts: target and time since start.
    pub lapses: Mutex<Vec<String>>,
    /// The first few other errors.
    pub error_samples: Mutex<Vec<String>>,
}

/// A snapshot of [`ProbeCounts`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProbeSummary {
    /// Who probed.
    pub name: String,
    /// Attempts.
    pub attempts: u64,
    /// Established.
    pub established: u64,
    /// Refused.
    pub refused: u64,
    /// Dropped.
    pub dropped: u64,
    /// Other errors.
    pub errors: u64,
    /// First lapses.
    pub lapses: Vec<String>,
    /// First errors.
    pub error_samples: Vec<String>,
}

/// A running prober; [`Prober::finish`] stops it.
pub struct Prober {
    name: String,
    stop: Arc<AtomicBool>,
    counts: Arc<ProbeCounts>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Prober {
    /// Starts probing `targets` every `interval` from `ns` (None: the host namespace) with
    /// `SO_MARK = mark` when given.
    pub fn start(
        name: &str,
        ns: Option<&Netns>,
        mark: Option<u32>,
        targets: Vec<SocketAddr>,
        interval: Duration,
    ) -> Prober {
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(ProbeCounts::default());
        let (s, c) = (stop.clone(), counts.clone());
        let body = move || run(targets, mark, interval, &s, &c);
        let thread = match ns {
            Some(ns) => ns.spawn(body),
            None => thread::Builder::new().name("prober".into()).spawn(body).expect("spawn the prober"),
        };
        Prober { name: name.to_string(), stop, counts, thread: Some(thread) }
    }

    /// Attempts so far.
    pub fn attempts(&self) -> u64 {
        self.counts.attempts.load(Ordering::Relaxed)
    }

    /// Stops and summarises.
    pub fn finish(mut self) -> ProbeSummary {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("prober thread");
        }
        let c = &self.counts;
        ProbeSummary {
            name: self.name.clone(),
            attempts: c.attempts.load(Ordering::Relaxed),
            established: c.established.load(Ordering::Relaxed),
            refused: c.refused.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            errors: c.errors.load(Ordering::Relaxed),
            lapses: c.lapses.lock().map(|v| v.clone()).unwrap_or_default(),
            error_samples: c.error_samples.lock().map(|v| v.clone()).unwrap_or_default(),
        }
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

struct Pending {
    fd: OwnedFd,
    target: SocketAddr,
    deadline: Instant,
}

fn note(list: &Mutex<Vec<String>>, what: String) {
    if let Ok(mut l) = list.lock()
        && l.len() < 20
    {
        l.push(what);
    }
}

fn start_connect(target: SocketAddr, mark: Option<u32>) -> io::Result<(OwnedFd, bool)> {
    let SocketAddr::V4(v4) = target else { return Err(io::Error::other("IPv4 only")) };
    // SAFETY: plain socket(2); the fd is owned right away.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    if let Some(m) = mark {
        // SAFETY: setsockopt with a pointer to a local u32 and its size.
        let r = unsafe {
            libc::setsockopt(
                raw,
                libc::SOL_SOCKET,
                libc::SO_MARK,
                (&m as *const u32).cast(),
                size_of::<u32>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    // Close with RST, no FIN/TIME_WAIT, if it ever connects.
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: as above.
    unsafe {
        libc::setsockopt(
            raw,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    let sa = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: v4.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(*v4.ip()).to_be() },
        sin_zero: [0; 8],
    };
    // SAFETY: connect(2) with a valid sockaddr_in and its size.
    let r = unsafe {
        libc::connect(raw, (&sa as *const libc::sockaddr_in).cast(), size_of::<libc::sockaddr_in>() as libc::socklen_t)
    };
    if r == 0 {
        return Ok((fd, true));
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EINPROGRESS) { Ok((fd, false)) } else { Err(e) }
}

fn so_error(fd: &OwnedFd) -> i32 {
    let mut err: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt into a local int.
    unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut err as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    err
}

fn run(targets: Vec<SocketAddr>, mark: Option<u32>, interval: Duration, stop: &AtomicBool, c: &ProbeCounts) {
    let started = Instant::now();
    let mut pending: Vec<Pending> = Vec::new();
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now >= next {
            next += interval;
            if next < now {
                next = now + interval; // fell behind (a loaded machine): do not burst
            }
            for t in &targets {
                c.attempts.fetch_add(1, Ordering::Relaxed);
                match start_connect(*t, mark) {
                    Ok((_fd, true)) => {
                        c.established.fetch_add(1, Ordering::Relaxed);
                        note(&c.lapses, format!("{t} established at once after {:?}", started.elapsed()));
                    }
                    Ok((fd, false)) => pending.push(Pending { fd, target: *t, deadline: now + PROBE_TIMEOUT }),
                    Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
                        c.refused.fetch_add(1, Ordering::Relaxed);
                        note(&c.lapses, format!("{t} refused at once after {:?}", started.elapsed()));
                    }
                    Err(e) => {
                        c.errors.fetch_add(1, Ordering::Relaxed);
                        note(&c.error_samples, format!("{t}: {e}"));
                    }
                }
            }
        }
        // Which attempts have an answer?
        let mut fds: Vec<libc::pollfd> =
            pending.iter().map(|p| libc::pollfd { fd: p.fd.as_raw_fd(), events: libc::POLLOUT, revents: 0 }).collect();
        let wait_ms = next.saturating_duration_since(Instant::now()).as_millis().min(1) as libc::c_int;
        // SAFETY: poll(2) over a vector of pollfd we own, with its length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, wait_ms) };
        let now = Instant::now();
        let mut keep = Vec::with_capacity(pending.len());
        for (p, pfd) in pending.into_iter().zip(fds.iter()) {
            if n > 0 && pfd.revents != 0 {
                match so_error(&p.fd) {
                    0 => {
                        c.established.fetch_add(1, Ordering::Relaxed);
                        note(&c.lapses, format!("{} ESTABLISHED after {:?}", p.target, started.elapsed()));
                    }
                    libc::ECONNREFUSED => {
                        c.refused.fetch_add(1, Ordering::Relaxed);
                        note(
                            &c.lapses,
                            format!("{} REFUSED (the SYN arrived) after {:?}", p.target, started.elapsed()),
                        );
                    }
                    e => {
                        c.errors.fetch_add(1, Ordering::Relaxed);
                        note(&c.error_samples, format!("{}: {}", p.target, io::Error::from_raw_os_error(e)));
                    }
                }
            } else if now >= p.deadline {
                c.dropped.fetch_add(1, Ordering::Relaxed);
            } else {
                keep.push(p);
            }
        }
        pending = keep;
    }
    // Attempts still waiting at the end: dropped so far (they had no answer).
    c.dropped.fetch_add(pending.len() as u64, Ordering::Relaxed);
}
