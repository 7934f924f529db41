//! Moving a public TCP connection's bytes between the client and the app.
//!
//! Each direction reads into a per-thread buffer and writes what it read at once (`copy`). The
//! `splice` engine starts the same way and switches a direction to `splice(2)` (socket → pipe →
//! socket, the payload never entering userspace) once one read brings [`SPLICE_AFTER`] bytes or
//! more: small messages (a query, a key lookup, a handshake) cost one `recv` and one `send`
//! and no pipe, bulk transfers move in the kernel. A direction that switched stays spliced.
//!
//! Memory stays bounded without a watchdog: a direction holds at most one pipe's worth
//! ([`PIPE_BYTES`]) or, when the other socket would block, the rest of one read; it reads
//! nothing more until that is written, so a slow reader's full socket buffer stops the reads
//! from the other side and TCP's flow control pushes back on the sender.
//!
//! The end of one direction (FIN) is passed on as a half-close of the other socket's sending
//! side and the other direction carries on (a client may `shutdown(SHUT_WR)` and still read the
//! answer); the direction that ends last leaves its FIN to the close that follows. A reset or
//! an error on either side resets both.
//!
//! Pipes come from a [`PipePool`]: creating one and sizing it costs three system calls and
//! closing it two, about as much as the rest of a short connection's relay.
//!
//! `splice(2)` is called through `libc` rather than a crate: the engine is these calls in
//! tokio's readiness loop, and a wrapper would hide the pipe-size and flag choices.

use crate::edge::limits::Activity;
use nix::sys::socket::MsgFlags;
use std::{
    cell::RefCell,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
};
use tokio::{io::Interest, net::TcpStream};

/// Capacity asked for each pipe (the kernel's default is 64 KiB; `fs.pipe-max-size` caps it).
pub const PIPE_BYTES: usize = 256 * 1024;
/// The most one read of a copying direction takes.
pub const COPY_BUFFER: usize = 64 * 1024;
/// A read of at least this many bytes switches a direction of the `splice` engine to splicing.
pub const SPLICE_AFTER: usize = 16 * 1024;
/// Empty pipes kept for the next connections; more are closed when returned.
const IDLE_PIPES: usize = 64;

thread_local! {
    // One read buffer per worker thread: a read is written out before the thread does anything
    // else, so no connection holds a buffer while it waits.
    static READ_BUFFER: RefCell<Vec<u8>> = RefCell::new(vec![0; COPY_BUFFER]);
}

/// Bytes moved in each direction so far (read by metrics and the access log while it runs).
#[derive(Debug, Default)]
pub struct Moved {
    /// Client → app.
    pub up: AtomicU64,
    /// App → client.
    pub down: AtomicU64,
    /// Of both, those spliced.
    pub spliced: AtomicU64,
}

/// How bytes are moved, with what they need.
#[derive(Clone, Copy)]
pub enum Mode<'a> {
    Copy,
    Splice(&'a PipePool),
}

/// A pipe, both ends non-blocking.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded: both are open descriptors owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // A larger pipe moves more per call; a refusal (over fs.pipe-max-size) keeps 64 KiB.
        // SAFETY: plain fcntl on an open descriptor.
        let _ = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_BYTES as libc::c_int) };
        Ok(Pipe { read, write })
    }
}

/// Empty pipes for reuse, and a bound on how many exist: each holds two descriptors, and a
/// direction that finds none stays on copying.
pub struct PipePool {
    idle: Mutex<Vec<Pipe>>,
    open: AtomicUsize,
    max: usize,
}

impl PipePool {
    /// A pool of at most `max` pipes, in use or idle.
    pub fn new(max: usize) -> PipePool {
        PipePool { idle: Mutex::new(Vec::new()), open: AtomicUsize::new(0), max }
    }

    fn lease(&self) -> Option<Lease<'_>> {
        let idle = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        let pipe = match idle {
            Some(pipe) => pipe,
            None => {
                if self.open.fetch_add(1, Ordering::Relaxed) >= self.max {
                    self.open.fetch_sub(1, Ordering::Relaxed);
                    return None;
                }
                match Pipe::new() {
                    Ok(pipe) => pipe,
                    Err(e) => {
                        self.open.fetch_sub(1, Ordering::Relaxed);
                        tracing::debug!(error = %e, "no pipe for splicing; copying instead");
                        return None;
                    }
                }
            }
        };
        Some(Lease { pool: self, pipe: Some(pipe), in_pipe: 0 })
    }
}

/// A pipe taken from the pool: back to it when dropped empty, closed when dropped with bytes
/// in it (they belong to a connection that ended).
struct Lease<'a> {
    pool: &'a PipePool,
    pipe: Option<Pipe>,
    in_pipe: usize,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let Some(pipe) = self.pipe.take() else { return };
        if self.in_pipe == 0
            && let Ok(mut idle) = self.pool.idle.lock()
            && idle.len() < IDLE_PIPES
        {
            idle.push(pipe);
            return;
        }
        drop(pipe);
        self.pool.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One `splice(2)` call, non-blocking.
fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    let flags = libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK;
    // SAFETY: both descriptors are open for the call's duration; null offsets (pipes and
    // sockets have no offset).
    let n = unsafe { libc::splice(from, std::ptr::null_mut(), to, std::ptr::null_mut(), len, flags) };
    if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
}

/// How the relay ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// Both sides closed their sending side in turn.
    Closed,
    /// One side reset the connection or an error occurred: both are to be reset.
    Reset,
}

/// Moves both directions until both are done (or one fails).
pub async fn relay(
    client: &TcpStream,
    app: &TcpStream,
    mode: Mode<'_>,
    moved: &Moved,
    activity: &Arc<Activity>,
) -> End {
    let one_ended = AtomicBool::new(false);
    let result = tokio::try_join!(
        one_way(client, app, mode, (&moved.up, &moved.spliced), activity, &one_ended),
        one_way(app, client, mode, (&moved.down, &moved.spliced), activity, &one_ended)
    );
    match result {
        Ok(_) => End::Closed,
        Err(e) => {
            tracing::debug!(error = %e, "a relayed connection ended with an error");
            End::Reset
        }
    }
}

/// `from` → `to` until `from`'s FIN, then `to`'s sending side is shut (unless the other
/// direction ended first: the close that follows sends the FIN).
async fn one_way(
    from: &TcpStream,
    to: &TcpStream,
    mode: Mode<'_>,
    (moved, spliced): (&AtomicU64, &AtomicU64),
    activity: &Activity,
    one_ended: &AtomicBool,
) -> io::Result<()> {
    let mut lease = None;
    loop {
        let more = match lease.as_mut() {
            Some(lease) => splice_once(from, to, lease, [moved, spliced], activity).await?,
            None => {
                let read = copy_once(from, to, moved, activity).await?;
                if let (Mode::Splice(pool), Some(n)) = (mode, read)
                    && n >= SPLICE_AFTER
                {
                    lease = pool.lease();
                }
                read.is_some()
            }
        };
        if !more {
            if !one_ended.swap(true, Ordering::Relaxed) {
                shut_write(to);
            }
            return Ok(());
        }
    }
}

/// One read from `from`, written to `to`; `None` at `from`'s FIN, else the bytes read.
async fn copy_once(
    from: &TcpStream,
    to: &TcpStream,
    moved: &AtomicU64,
    activity: &Activity,
) -> io::Result<Option<usize>> {
    let (n, rest) = loop {
        from.readable().await?;
        match read_then_write(from, to) {
            Ok(done) => break done,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    };
    if n == 0 {
        return Ok(None);
    }
    activity.touch();
    moved.fetch_add((n - rest.len()) as u64, Ordering::Relaxed);
    if !rest.is_empty() {
        write_all(to, &rest).await?;
        moved.fetch_add(rest.len() as u64, Ordering::Relaxed);
        activity.touch();
    }
    Ok(Some(n))
}

/// Reads into the thread's buffer and writes as much as `to` takes now: (bytes read, the part
/// not written yet). No await in between, so the buffer is free again when this returns.
fn read_then_write(from: &TcpStream, to: &TcpStream) -> io::Result<(usize, Vec<u8>)> {
    READ_BUFFER.with_borrow_mut(|buf| {
        let mut read = None;
        let outcome = from.try_io(Interest::READABLE, || {
            let n = nix::sys::socket::recv(from.as_raw_fd(), buf, MsgFlags::empty()).map_err(io::Error::from)?;
            read = Some(n);
            // Less than asked: the receive queue is empty now, so the readiness is spent, as
            // the next read's EAGAIN would say at the price of a system call. Telling tokio so
            // is safe: readiness from an event that came after this read is kept, and so is a
            // FIN already seen (a closed state is never cleared).
            if n > 0 && n < buf.len() { Err(io::ErrorKind::WouldBlock.into()) } else { Ok(()) }
        });
        let n = match (read, outcome) {
            (Some(n), _) => n,
            (None, Err(e)) => return Err(e),
            (None, Ok(())) => return Err(io::ErrorKind::WouldBlock.into()),
        };
        if n == 0 {
            return Ok((0, Vec::new()));
        }
        let written = match to.try_write(&buf[..n]) {
            Ok(w) => w,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => return Err(e),
        };
        Ok((n, buf[written..n].to_vec()))
    })
}

/// Fills the (empty) pipe from `from` and drains it into `to`; `false` at `from`'s FIN.
async fn splice_once(
    from: &TcpStream,
    to: &TcpStream,
    lease: &mut Lease<'_>,
    counters: [&AtomicU64; 2],
    activity: &Activity,
) -> io::Result<bool> {
    let Some(pipe) = lease.pipe.as_ref() else { return Ok(false) };
    let (pipe_in, pipe_out) = (pipe.write.as_raw_fd(), pipe.read.as_raw_fd());
    let n = loop {
        from.readable().await?;
        match from.try_io(Interest::READABLE, || splice(from.as_raw_fd(), pipe_in, PIPE_BYTES)) {
            Ok(n) => break n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    };
    if n == 0 {
        return Ok(false);
    }
    lease.in_pipe = n;
    activity.touch();
    while lease.in_pipe > 0 {
        to.writable().await?;
        match to.try_io(Interest::WRITABLE, || splice(pipe_out, to.as_raw_fd(), lease.in_pipe)) {
            Ok(n) => {
                lease.in_pipe -= n;
                for c in counters {
                    c.fetch_add(n as u64, Ordering::Relaxed);
                }
                activity.touch();
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Writes all of `buf` (the socket shared by both directions, hence by reference).
pub async fn write_all(to: &TcpStream, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        to.writable().await?;
        match to.try_write(buf) {
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Passes a FIN on: the peer reads the end of the stream once what was sent before arrives.
fn shut_write(s: &TcpStream) {
    let _ = nix::sys::socket::shutdown(s.as_raw_fd(), nix::sys::socket::Shutdown::Write);
}

/// Makes the next close of `s` send a reset rather than a FIN (a reset on one side, or a
/// connection the gateway refuses, is passed on as such).
pub fn reset_on_close(s: &impl AsRawFd) {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: a valid option value for an open socket.
    let _ = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
}
