//! Raw TCP apps for the TCP tests (tunnels and public ports): a listener in a sandbox's
//! namespace that runs one behaviour per connection on its own thread, and the behaviours.

use crate::harness::Sandbox;
use sha2::{Digest, Sha256};
use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

/// What the sink app says first (a server-first protocol, like SSH, SMTP or PostgreSQL's errors).
pub const GREETING: &str = "hello from the sandbox\n";

/// A listener in a sandbox running `behaviour` for each connection; stops accepting on drop.
pub struct TcpApp {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TcpApp {
    /// Listens on `port` of the sandbox's address.
    pub fn spawn(sb: &Sandbox, port: u16, behaviour: fn(TcpStream)) -> TcpApp {
        let addr = sb.sock(port);
        let listener = sb.ns.run(|| TcpListener::bind(addr)).expect("bind the app");
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let _ = conn.set_nonblocking(false);
                        std::thread::spawn(move || behaviour(conn));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        TcpApp { stop, thread: Some(thread) }
    }
}

impl Drop for TcpApp {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Writes [`GREETING`], reads until the client's half-close, then answers
/// `{bytes} {sha256}\n` (data after the client's `SHUT_WR`) and closes.
pub fn sink(mut conn: TcpStream) {
    if conn.write_all(GREETING.as_bytes()).is_err() {
        return;
    }
    let mut hash = Sha256::new();
    let mut total = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                hash.update(&buf[..n]);
                total += n as u64;
            }
            Err(_) => return,
        }
    }
    let _ = conn.write_all(format!("{total} {}\n", hex(&hash.finalize())).as_bytes());
}

/// Echoes every byte until the client's half-close, then closes.
pub fn echo(mut conn: TcpStream) {
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if conn.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

/// Reads a PROXY protocol v2 header for TCP over IPv4 (28 bytes) and answers
/// `proxy {client ip}:{port} -> {public ip}:{port}\n`, or `no proxy header\n`.
pub fn proxy_v2(mut conn: TcpStream) {
    let mut h = [0u8; 28];
    if conn.read_exact(&mut h).is_err() {
        return;
    }
    let answer = if &h[..12] == b"\r\n\r\n\0\r\nQUIT\n" && h[12] == 0x21 && h[13] == 0x11 {
        let port = |i: usize| u16::from_be_bytes([h[i], h[i + 1]]);
        format!(
            "proxy {}.{}.{}.{}:{} -> {}.{}.{}.{}:{}\n",
            h[16],
            h[17],
            h[18],
            h[19],
            port(24),
            h[20],
            h[21],
            h[22],
            h[23],
            port(26)
        )
    } else {
        "no proxy header\n".to_string()
    };
    let _ = conn.write_all(answer.as_bytes());
}

/// Reads one line, then closes with a reset (`SO_LINGER` 0).
pub fn reset_after_a_line(mut conn: TcpStream) {
    let mut buf = [0u8; 256];
    let _ = conn.read(&mut buf);
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: a valid option value for an open socket.
    unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&conn),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// Bytes the `flood` behaviour managed to write, across connections.
pub static FLOOD_WRITTEN: AtomicU64 = AtomicU64::new(0);

/// Writes as fast as the connection takes (64 KiB at a time) until it breaks, counting into
/// [`FLOOD_WRITTEN`]: with a slow reader on the other end, how far it gets is what the path
/// buffers.
pub fn flood(mut conn: TcpStream) {
    let chunk = vec![7u8; 64 * 1024];
    while conn.write_all(&chunk).is_ok() {
        FLOOD_WRITTEN.fetch_add(chunk.len() as u64, Ordering::Relaxed);
    }
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `len` bytes of a pattern that does not repeat with a power-of-two period.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}
