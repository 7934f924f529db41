//! Identifiable TCP and HTTP listeners inside a namespace (or the host), stopped on drop.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, poll};

use super::netns::{InNetns, Netns};

/// Where a listener lives: the host namespace (the test process's own) or a [`Netns`].
#[derive(Clone, Copy, Debug)]
pub enum Place<'a> {
    /// The namespace the test runs in.
    Host,
    /// A harness namespace.
    Ns(&'a Netns),
}

impl<'a, T: InNetns> From<&'a T> for Place<'a> {
    fn from(x: &'a T) -> Self {
        Place::Ns(x.netns())
    }
}

impl std::fmt::Display for Place<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Place::Host => f.write_str("host namespace"),
            Place::Ns(ns) => write!(f, "{ns}"),
        }
    }
}

#[derive(Default)]
struct Stats {
    accepted: AtomicUsize,
    requests: Mutex<Vec<String>>,
}

#[derive(Clone, Copy)]
enum Kind {
    Echo,
    Http,
}

/// A listening socket served by a background thread; stopped (socket closed, threads joined)
/// on drop. It is listening when the constructor returns.
pub struct Listener {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    stats: Arc<Stats>,
    thread: Option<JoinHandle<()>>,
}

impl Listener {
    /// The bound address (with the real port when 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// How many connections the listener has accepted so far: lets a test prove a connection
    /// never reached the application (0), not only that the client gave up. See
    /// [`Listener::wait_accepted`] to count connections that just succeeded.
    pub fn accepted(&self) -> usize {
        self.stats.accepted.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` connections were accepted, or `timeout` passed; returns the
    /// count. The kernel completes the handshake before the listener thread calls `accept`,
    /// so right after a successful connect [`Listener::accepted`] may still lag by one.
    pub fn wait_accepted(&self, n: usize, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let count = self.accepted();
            if count >= n || Instant::now() >= deadline {
                return count;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// The request heads (request line and headers, as received) seen by an HTTP listener,
    /// in order. Empty for echo listeners.
    pub fn requests(&self) -> Vec<String> {
        self.stats.requests.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Listener({}, accepted {})", self.addr, self.accepted())
    }
}

/// A TCP listener on `addr` in `place` that, on each connection, writes `port <N>\n` (N = the
/// listening port) and then echoes back whatever it receives until the peer closes.
///
/// ```no_run
/// # use gateway_tests::harness::*;
/// let sb = Sandbox::new();
/// let app = spawn_tcp_echo(&sb, sb.sock(3000));
/// let mut s = assert_reachable(Origin::host(), sb.sock(3000), "app");
/// assert_eq!(read_greeting(&mut s).expect("greeting"), "port 3000");
/// ```
pub fn spawn_tcp_echo<'a>(place: impl Into<Place<'a>>, addr: SocketAddr) -> Listener {
    spawn(place.into(), addr, Kind::Echo, String::new())
}

/// An HTTP/1.1 server on `0.0.0.0:port` inside `ns` answering every request with
/// `200 OK`, header `X-Harness-Port: <N>` and `body`, where `{port}` in `body` is replaced
/// by the listening port; an empty `body` means `port <N>\n`. Keep-alive is supported;
/// request bodies with `Content-Length` are read and discarded (chunked request bodies are not
/// supported: the connection is closed after the response). Request heads are recorded
/// ([`Listener::requests`]).
pub fn spawn_http_ok(ns: &Netns, port: u16, body: &str) -> Listener {
    spawn_http_ok_at(ns, SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)), body)
}

/// [`spawn_http_ok`] on any address and place (e.g. `127.0.0.1:port` inside a sandbox, to model
/// an app bound to localhost, or `client.host_sock(p)` in [`Place::Host`]).
pub fn spawn_http_ok_at<'a>(place: impl Into<Place<'a>>, addr: SocketAddr, body: &str) -> Listener {
    spawn(place.into(), addr, Kind::Http, body.to_owned())
}

fn spawn(place: Place<'_>, addr: SocketAddr, kind: Kind, body: String) -> Listener {
    let bind = move || TcpListener::bind(addr);
    let listener = match place {
        Place::Host => bind(),
        Place::Ns(ns) => ns.run(bind),
    }
    .unwrap_or_else(|e| panic!("cannot listen on {addr} in {place}: {e}"));
    let local = listener.local_addr().unwrap_or_else(|e| panic!("local_addr of listener {addr} in {place}: {e}"));
    listener.set_nonblocking(true).unwrap_or_else(|e| panic!("set_nonblocking on listener {local}: {e}"));

    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(Stats::default());
    let body = if body.is_empty() {
        format!("port {}\n", local.port())
    } else {
        body.replace("{port}", &local.port().to_string())
    };
    let (stop2, stats2) = (stop.clone(), stats.clone());
    let thread = thread::Builder::new()
        .name(format!("listener {local}"))
        .spawn(move || accept_loop(listener, local, kind, Arc::new(body), stop2, stats2))
        .unwrap_or_else(|e| panic!("cannot spawn listener thread: {e}"));
    Listener { addr: local, stop, stats, thread: Some(thread) }
}

const TICK: Duration = Duration::from_millis(50);

fn accept_loop(
    listener: TcpListener,
    local: SocketAddr,
    kind: Kind,
    body: Arc<String>,
    stop: Arc<AtomicBool>,
    stats: Arc<Stats>,
) {
    let mut conns: Vec<JoinHandle<()>> = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _peer)) => {
                stats.accepted.fetch_add(1, Ordering::SeqCst);
                let (stop, stats, body) = (stop.clone(), stats.clone(), body.clone());
                let spawned = thread::Builder::new().name(format!("conn {local}")).spawn(move || {
                    let _ = match kind {
                        Kind::Echo => serve_echo(stream, local.port(), &stop),
                        Kind::Http => serve_http(stream, local.port(), &body, &stop, &stats),
                    };
                });
                match spawned {
                    Ok(h) => conns.push(h),
                    Err(e) => eprintln!("harness: listener {local}: cannot spawn: {e}"),
                }
                conns.retain(|h| !h.is_finished());
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
                let _ = poll(&mut fds, 50u16);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                // e.g. ECONNABORTED, EMFILE: keep serving, but don't spin.
                eprintln!("harness: listener {local}: accept: {e}");
                thread::sleep(TICK);
            }
        }
    }
    drop(listener);
    for h in conns {
        let _ = h.join();
    }
}

/// Reads into `buf`, returning Ok(None) on a read timeout so the caller can check `stop`.
fn read_some(s: &mut TcpStream, buf: &mut [u8]) -> io::Result<Option<usize>> {
    match s.read(buf) {
        Ok(n) => Ok(Some(n)),
        Err(e)
            if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

fn serve_echo(mut s: TcpStream, port: u16, stop: &AtomicBool) -> io::Result<()> {
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(TICK))?;
    s.write_all(format!("port {port}\n").as_bytes())?;
    let mut buf = [0u8; 16 * 1024];
    while !stop.load(Ordering::SeqCst) {
        match read_some(&mut s, &mut buf)? {
            Some(0) => break,
            Some(n) => s.write_all(&buf[..n])?,
            None => {}
        }
    }
    Ok(())
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

fn header<'h>(head: &'h str, name: &str) -> Option<&'h str> {
    head.lines().skip(1).find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn serve_http(mut s: TcpStream, port: u16, body: &str, stop: &AtomicBool, stats: &Stats) -> io::Result<()> {
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(TICK))?;
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    while !stop.load(Ordering::SeqCst) {
        let Some(end) = find_head_end(&buf) else {
            match read_some(&mut s, &mut chunk)? {
                Some(0) => return Ok(()),
                Some(n) => buf.extend_from_slice(&chunk[..n]),
                None => {}
            }
            if buf.len() > 1 << 20 {
                return Ok(()); // not HTTP, give up
            }
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        stats.requests.lock().unwrap_or_else(PoisonError::into_inner).push(head.clone());

        // Discard the request body.
        let mut remaining: usize = header(&head, "content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
        let take = remaining.min(buf.len());
        buf.drain(..take);
        remaining -= take;
        while remaining > 0 && !stop.load(Ordering::SeqCst) {
            match read_some(&mut s, &mut chunk)? {
                Some(0) => return Ok(()),
                Some(n) => {
                    let used = n.min(remaining);
                    remaining -= used;
                    buf.extend_from_slice(&chunk[used..n]);
                }
                None => {}
            }
        }

        let first = head.lines().next().unwrap_or("");
        let chunked = header(&head, "transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        let close = chunked
            || first.ends_with("HTTP/1.0")
            || header(&head, "connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let is_head = first.starts_with("HEAD ");
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
             X-Harness-Port: {port}\r\nConnection: {}\r\n\r\n{}",
            body.len(),
            if close { "close" } else { "keep-alive" },
            if is_head { "" } else { body }
        );
        s.write_all(response.as_bytes())?;
        if close {
            return Ok(());
        }
    }
    Ok(())
}
