//! TCP clients from the host or a namespace, with optional `SO_MARK`, and reachability asserts.
//!
//! A SYN dropped by a BPF program produces no answer at all, so the client sees a *timeout*;
//! a port with nothing listening answers with RST (*refused*). The first SYN retransmission
//! happens after 1 s, so with [`DROP_TIMEOUT`] (300 ms) exactly one SYN is sent.

use std::fmt;
use std::io::{self, Read};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{
    AddressFamily, SockFlag, SockType, SockaddrStorage, connect, getsockopt, setsockopt, socket, sockopt,
};

use super::netns::{InNetns, Netns};

/// How long [`assert_reachable`] waits for the handshake (generous: a loaded CI machine).
pub const REACH_TIMEOUT: Duration = Duration::from_secs(2);
/// How long [`assert_unreachable`] waits before concluding the SYN was dropped.
pub const DROP_TIMEOUT: Duration = Duration::from_millis(300);

/// The `SO_MARK` of the gateway's sockets towards sandboxes (`dataplane.mark` of the test
/// configuration).
pub const GATEWAY_MARK: u32 = 0x6777;

/// Where a connection is made from: the host namespace or a [`Netns`], with or without
/// `SO_MARK` (setting a mark needs CAP_NET_ADMIN, which the tests have as root).
#[derive(Clone, Copy, Debug)]
pub struct Origin<'a> {
    /// `None`: the test process's own (host) namespace.
    pub ns: Option<&'a Netns>,
    /// `SO_MARK` for the socket.
    pub mark: Option<u32>,
}

impl<'a> Origin<'a> {
    /// The host namespace, no mark: an ordinary host process.
    pub fn host() -> Origin<'static> {
        Origin { ns: None, mark: None }
    }

    /// The host namespace with `SO_MARK = mark`.
    pub fn host_marked(mark: u32) -> Origin<'static> {
        Origin { ns: None, mark: Some(mark) }
    }

    /// The host namespace with [`GATEWAY_MARK`]: how the gateway's sockets look.
    pub fn gateway() -> Origin<'static> {
        Origin::host_marked(GATEWAY_MARK)
    }

    /// Inside `ns`, no mark.
    pub fn ns(ns: &'a Netns) -> Origin<'a> {
        Origin { ns: Some(ns), mark: None }
    }

    /// The same origin with `SO_MARK = mark`.
    pub fn with_mark(self, mark: u32) -> Origin<'a> {
        Origin { mark: Some(mark), ..self }
    }
}

impl<'a, T: InNetns> From<&'a T> for Origin<'a> {
    fn from(x: &'a T) -> Self {
        Origin::ns(x.netns())
    }
}

impl fmt::Display for Origin<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ns {
            None => f.write_str("host namespace")?,
            Some(ns) => write!(f, "{ns}")?,
        }
        match self.mark {
            None => f.write_str(" (no mark)"),
            Some(m) => write!(f, " (SO_MARK {m:#x})"),
        }
    }
}

/// Connects to `addr` from the calling thread's namespace (the host, for test code), with
/// `SO_MARK = mark` when given. Times out with [`io::ErrorKind::TimedOut`] after `timeout`.
pub fn try_connect(addr: SocketAddr, timeout: Duration, mark: Option<u32>) -> io::Result<TcpStream> {
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    let fd: OwnedFd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK, None)?;
    if let Some(m) = mark {
        setsockopt(&fd, sockopt::Mark, &m)
            .map_err(|e| io::Error::new(io::Error::from(e).kind(), format!("SO_MARK {m:#x}: {e}")))?;
    }
    match connect(fd.as_raw_fd(), &SockaddrStorage::from(addr)) {
        Ok(()) => {}
        Err(Errno::EINPROGRESS) => wait_connected(&fd, timeout)?,
        Err(e) => return Err(e.into()),
    }
    let stream = TcpStream::from(fd);
    stream.set_nonblocking(false)?;
    Ok(stream)
}

/// Waits up to `timeout` for the handshake of a non-blocking socket whose `connect` returned
/// `EINPROGRESS`; its error if it failed, [`io::ErrorKind::TimedOut`] if no answer came.
pub fn wait_connected(fd: &OwnedFd, timeout: Duration) -> io::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ms = PollTimeout::try_from(left.as_millis().max(1)).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLOUT)];
        match poll(&mut fds, ms) {
            Ok(0) if Instant::now() >= deadline => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no answer to the SYN within {timeout:?}"),
                ));
            }
            Ok(0) | Err(Errno::EINTR) => continue,
            Ok(_) => break,
            Err(e) => return Err(e.into()),
        }
    }
    match getsockopt(fd, sockopt::SocketError)? {
        0 => Ok(()),
        errno => Err(io::Error::from_raw_os_error(errno)),
    }
}

/// Connects to `addr` from inside `ns` (no mark). The stream can be used from any thread.
pub fn try_connect_from(ns: &Netns, addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    ns.run(|| try_connect(addr, timeout, None))
}

/// Connects to `addr` from `origin` (namespace and mark).
pub fn connect_from(origin: Origin<'_>, addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    match origin.ns {
        None => try_connect(addr, timeout, origin.mark),
        Some(ns) => ns.run(|| try_connect(addr, timeout, origin.mark)),
    }
}

/// The outcome of a connection attempt.
#[derive(Debug)]
pub enum Reach {
    /// The handshake completed.
    Connected(TcpStream),
    /// RST: the SYN reached a host where nothing listens on that port.
    Refused,
    /// No answer within the timeout: the SYN (or the SYN-ACK) was dropped.
    TimedOut,
    /// Anything else (no route, ICMP unreachable, ...).
    Failed(io::Error),
}

/// Tries to connect and classifies the outcome.
pub fn probe(origin: Origin<'_>, addr: SocketAddr, timeout: Duration) -> Reach {
    match connect_from(origin, addr, timeout) {
        Ok(s) => Reach::Connected(s),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Reach::Refused,
        Err(e) if e.kind() == io::ErrorKind::TimedOut => Reach::TimedOut,
        Err(e) => Reach::Failed(e),
    }
}

/// Asserts that a TCP connection from `from` to `to` is established within [`REACH_TIMEOUT`];
/// returns the stream. `what` says what is being checked (it starts the panic message).
#[track_caller]
pub fn assert_reachable<'a>(from: impl Into<Origin<'a>>, to: SocketAddr, what: &str) -> TcpStream {
    let from = from.into();
    match connect_from(from, to, REACH_TIMEOUT) {
        Ok(s) => s,
        Err(e) => {
            let why = match e.kind() {
                io::ErrorKind::TimedOut => "no answer: the SYN or SYN-ACK was dropped on the way",
                io::ErrorKind::ConnectionRefused => {
                    "RST: the packet arrived but nothing listens on that address and port"
                }
                _ => "the connection could not be attempted or was rejected",
            };
            panic!(
                "{what}: expected {from} -> {to} to be REACHABLE (TCP handshake within \
                 {REACH_TIMEOUT:?}), but connect failed: {e} ({:?}); {why}",
                e.kind()
            )
        }
    }
}

/// Asserts that a TCP connection from `from` to `to` is *dropped*: connect must time out after
/// [`DROP_TIMEOUT`]. A refusal (RST) or an ICMP error also fails the assertion, because it means
/// the SYN was not silently dropped (for a closed port, see [`assert_refused`]).
#[track_caller]
pub fn assert_unreachable<'a>(from: impl Into<Origin<'a>>, to: SocketAddr, what: &str) {
    let from = from.into();
    match probe(from, to, DROP_TIMEOUT) {
        Reach::TimedOut => {}
        Reach::Connected(s) => panic!(
            "{what}: expected {from} -> {to} to be DROPPED (connect timing out after \
             {DROP_TIMEOUT:?}), but the connection was ESTABLISHED (local {}, peer {})",
            s.local_addr().map_or_else(|e| e.to_string(), |a| a.to_string()),
            s.peer_addr().map_or_else(|e| e.to_string(), |a| a.to_string()),
        ),
        Reach::Refused => panic!(
            "{what}: expected {from} -> {to} to be DROPPED (connect timing out after \
             {DROP_TIMEOUT:?}), but it was REFUSED (RST): the SYN reached the destination, \
             where nothing listens on that port; nothing dropped it"
        ),
        Reach::Failed(e) => panic!(
            "{what}: expected {from} -> {to} to be DROPPED (connect timing out after \
             {DROP_TIMEOUT:?}), but connect failed otherwise: {e} ({:?}) (routing problem?)",
            e.kind()
        ),
    }
}

/// Asserts that the connection is refused with RST (the SYN arrived; nothing listens).
#[track_caller]
pub fn assert_refused<'a>(from: impl Into<Origin<'a>>, to: SocketAddr, what: &str) {
    let from = from.into();
    match probe(from, to, REACH_TIMEOUT) {
        Reach::Refused => {}
        Reach::Connected(_) => {
            panic!("{what}: expected {from} -> {to} to be REFUSED (RST), but it was ESTABLISHED")
        }
        Reach::TimedOut => panic!(
            "{what}: expected {from} -> {to} to be REFUSED (RST), but it TIMED OUT after \
             {REACH_TIMEOUT:?}: something dropped the SYN or the RST"
        ),
        Reach::Failed(e) => {
            panic!("{what}: expected {from} -> {to} to be REFUSED (RST), but connect failed: {e} ({:?})", e.kind())
        }
    }
}

/// Reads the first line an echo listener sends (`port <N>`), without the newline, waiting at
/// most [`REACH_TIMEOUT`]. Restores the stream's previous read timeout.
pub fn read_greeting(stream: &mut TcpStream) -> io::Result<String> {
    let previous = stream.read_timeout()?;
    stream.set_read_timeout(Some(REACH_TIMEOUT))?;
    // Byte by byte, so that nothing after the line is consumed.
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    let result = loop {
        match stream.read(&mut byte) {
            Ok(0) => break Ok(()),
            Ok(_) if byte[0] == b'\n' => break Ok(()),
            Ok(_) => line.push(byte[0]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => break Err(e),
        }
    };
    stream.set_read_timeout(previous)?;
    result?;
    Ok(String::from_utf8_lossy(&line).trim_end_matches('\r').to_owned())
}
