//! Moving a public TCP connection's bytes between the client and the app.
//!
//! - `splice`: each direction goes socket → pipe → socket with `splice(2)`, so the payload never
//!   enters userspace (the pages move between the two sockets' buffers). At most one pipe's
//!   worth ([`PIPE_BYTES`]) is in flight per direction: a slow reader fills its socket buffer,
//!   the pipe stays full, the gateway stops reading the other side, and TCP's own flow control
//!   pushes back on the sender — memory stays bounded without a watchdog.
//! - `copy`: `read`/`write` through a 64 KiB userspace buffer per direction (the baseline).
//!
//! Either way, the end of one direction (FIN) is passed on as a half-close of the other
//! socket's sending side, and the other direction carries on (a client may `shutdown(SHUT_WR)`
//! and still read the answer); a reset or error on either side resets both.
//!
//! `splice(2)` is called through `libc` rather than a crate: the whole engine is these two
//! calls in tokio's readiness loop, and a wrapper would hide the pipe-size and flag choices.

use crate::edge::limits::Activity;
use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};
use tokio::{io::Interest, net::TcpStream};

/// Capacity asked for each pipe (the kernel's default is 64 KiB; `fs.pipe-max-size` caps it).
pub const PIPE_BYTES: usize = 256 * 1024;
/// The userspace buffer of each direction of the copy engine.
pub const COPY_BUFFER: usize = 64 * 1024;

/// Bytes moved in each direction so far (read by metrics and the access log while it runs).
#[derive(Debug, Default)]
pub struct Moved {
    /// Client → app.
    pub up: AtomicU64,
    /// App → client.
    pub down: AtomicU64,
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

/// One `splice(2)` call, non-blocking.
fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    let flags = libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK;
    // SAFETY: both descriptors are open for the call's duration; null offsets (pipes and
    // sockets have no offset).
    let n = unsafe { libc::splice(from, std::ptr::null_mut(), to, std::ptr::null_mut(), len, flags) };
    if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
}

/// How a direction ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// Both sides closed their sending side in turn.
    Closed,
    /// One side reset the connection or an error occurred: both were reset.
    Reset,
}

/// Splices both directions until both are done (or one fails).
pub async fn splice_both(
    client: &TcpStream,
    app: &TcpStream,
    moved: &Moved,
    activity: &Arc<Activity>,
) -> io::Result<End> {
    let (up, down) = (Pipe::new()?, Pipe::new()?);
    let result = tokio::try_join!(
        one_way(client, app, &up, &moved.up, activity),
        one_way(app, client, &down, &moved.down, activity)
    );
    Ok(match result {
        Ok(_) => End::Closed,
        Err(e) => {
            tracing::debug!(error = %e, "a spliced connection ended with an error");
            End::Reset
        }
    })
}

/// `from` → pipe → `to` until `from`'s FIN, then `to`'s sending side is shut.
async fn one_way(
    from: &TcpStream,
    to: &TcpStream,
    pipe: &Pipe,
    moved: &AtomicU64,
    activity: &Activity,
) -> io::Result<()> {
    loop {
        // Fill the (empty) pipe from the socket.
        let mut in_pipe = loop {
            from.readable().await?;
            match from.try_io(Interest::READABLE, || splice(from.as_raw_fd(), pipe.write.as_raw_fd(), PIPE_BYTES)) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        };
        if in_pipe == 0 {
            shut_write(to);
            return Ok(());
        }
        activity.touch();
        // Drain it into the other socket.
        while in_pipe > 0 {
            to.writable().await?;
            match to.try_io(Interest::WRITABLE, || splice(pipe.read.as_raw_fd(), to.as_raw_fd(), in_pipe)) {
                Ok(n) => {
                    in_pipe -= n;
                    moved.fetch_add(n as u64, Ordering::Relaxed);
                    activity.touch();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// Copies both directions through userspace buffers until both are done (or one fails).
pub async fn copy_both(
    client: &TcpStream,
    app: &TcpStream,
    moved: &Moved,
    activity: &Arc<Activity>,
) -> io::Result<End> {
    let result = tokio::try_join!(
        copy_one_way(client, app, &moved.up, activity),
        copy_one_way(app, client, &moved.down, activity)
    );
    Ok(if result.is_ok() { End::Closed } else { End::Reset })
}

async fn copy_one_way(from: &TcpStream, to: &TcpStream, moved: &AtomicU64, activity: &Activity) -> io::Result<()> {
    let mut buf = vec![0u8; COPY_BUFFER];
    loop {
        let n = loop {
            from.readable().await?;
            match from.try_read(&mut buf) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            shut_write(to);
            return Ok(());
        }
        activity.touch();
        write_all(to, &buf[..n]).await?;
        moved.fetch_add(n as u64, Ordering::Relaxed);
        activity.touch();
    }
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
