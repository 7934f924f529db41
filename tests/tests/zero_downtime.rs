//! Zero-downtime restart and upgrade: a new gateway process takes the listening sockets over
//! from the running one (SCM_RIGHTS over `<state.dir>/handoff.sock`), the old one drains and
//! exits. Under bounded load on loopback no request fails, and the kernel enforcement of a
//! sandbox in a namespace never lapses: unmarked connections stay dropped and the gateway's
//! marked connections keep passing, at every instant of the overlap.

use std::{
    fs,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use gateway_tests::{env::Env, gateway_process::*, harness::*};

fn admin_addr(gw: &GatewayProcess) -> SocketAddr {
    match gw.admin() {
        AdminAddr::Tcp(a) => *a,
        AdminAddr::Unix(_) => unreachable!("the test gateway's admin API is on TCP"),
    }
}

/// One request on a fresh connection; the status, or why it failed.
fn one_request(addr: SocketAddr, path: &str) -> Result<u16, String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    let req =
        format!("GET {path} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {TEST_TOKEN}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&buf);
    text.get(9..12).and_then(|c| c.parse().ok()).ok_or_else(|| format!("no status line: {text:?}"))
}

/// One request on a keep-alive connection; the status, and the connection back unless the
/// answer said `Connection: close`.
fn keepalive_request(mut s: TcpStream, path: &str) -> Result<(u16, Option<TcpStream>), String> {
    s.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {TEST_TOKEN}\r\n\r\n");
    s.write_all(req.as_bytes()).map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = s.read(&mut chunk).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err(format!("closed before a full answer: {:?}", String::from_utf8_lossy(&buf)));
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        let Some(end) = text.find("\r\n\r\n") else { continue };
        let head = text[..end].to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
            .unwrap_or(0);
        if buf.len() < end + 4 + len {
            continue;
        }
        let status = text.get(9..12).and_then(|c| c.parse().ok()).ok_or("no status line")?;
        let close = head.lines().any(|l| l.starts_with("connection:") && l.contains("close"));
        return Ok((status, (!close).then_some(s)));
    }
}

/// The pid answering `/live` now.
fn live_pid(addr: SocketAddr) -> u64 {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.write_all(b"GET /live HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n").expect("write");
    let mut buf = String::new();
    s.read_to_string(&mut buf).expect("read");
    let body = buf.split("\r\n\r\n").nth(1).unwrap_or_default();
    serde_json::from_str::<serde_json::Value>(body).expect("json")["pid"].as_u64().expect("pid")
}

/// Background load and enforcement probes, counting everything.
struct Observers {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<std::sync::Mutex<Vec<String>>>,
    lapses: Arc<std::sync::Mutex<Vec<String>>>,
    probes: Arc<AtomicU64>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Observers {
    fn start(admin: SocketAddr, path: &'static str, declared: SocketAddr) -> Observers {
        let o = Observers {
            stop: Arc::new(AtomicBool::new(false)),
            ok: Arc::default(),
            failed: Arc::default(),
            lapses: Arc::default(),
            probes: Arc::default(),
            threads: Vec::new(),
        };
        let mut threads = Vec::new();
        // Bounded load: 4 clients, each one request at a time, with a new connection each.
        for _ in 0..4 {
            let (stop, ok, failed) = (o.stop.clone(), o.ok.clone(), o.failed.clone());
            threads.push(thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match one_request(admin, path) {
                        Ok(200) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(status) => failed.lock().expect("lock").push(format!("status {status}")),
                        Err(e) => failed.lock().expect("lock").push(e),
                    }
                }
            }));
        }
        // A keep-alive client (a metrics scraper, say): reuses its connection until an answer
        // says `Connection: close`, then opens another. Nothing it sends may fail.
        let (stop, ok, failed) = (o.stop.clone(), o.ok.clone(), o.failed.clone());
        threads.push(thread::spawn(move || {
            let mut conn: Option<TcpStream> = None;
            while !stop.load(Ordering::Relaxed) {
                let stream = match conn.take() {
                    Some(s) => s,
                    None => match TcpStream::connect_timeout(&admin, Duration::from_secs(5)) {
                        Ok(s) => s,
                        Err(e) => {
                            failed.lock().expect("lock").push(format!("keep-alive connect: {e}"));
                            continue;
                        }
                    },
                };
                match keepalive_request(stream, path) {
                    Ok((200, again)) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        conn = again;
                    }
                    Ok((status, _)) => failed.lock().expect("lock").push(format!("keep-alive status {status}")),
                    Err(e) => failed.lock().expect("lock").push(format!("keep-alive: {e}")),
                }
            }
        }));
        // Enforcement: an unmarked SYN to the declared port must never connect, and the
        // gateway's marked connections must always do.
        let (stop, lapses, probes) = (o.stop.clone(), o.lapses.clone(), o.probes.clone());
        threads.push(thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if try_connect(declared, Duration::from_millis(50), None).is_ok() {
                    lapses.lock().expect("lock").push("an unmarked connection reached the declared port".into());
                }
                if let Err(e) = try_connect(declared, Duration::from_secs(2), Some(GATEWAY_MARK)) {
                    lapses.lock().expect("lock").push(format!("a marked connection failed: {e}"));
                }
                probes.fetch_add(1, Ordering::Relaxed);
            }
        }));
        Observers { threads, ..o }
    }

    /// Stops everything; returns (requests ok, failures, lapses, probes).
    fn finish(self) -> (u64, Vec<String>, Vec<String>, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().expect("observer thread");
        }
        let failed = self.failed.lock().expect("lock").clone();
        let lapses = self.lapses.lock().expect("lock").clone();
        (self.ok.load(Ordering::Relaxed), failed, lapses, self.probes.load(Ordering::Relaxed))
    }
}

/// A process the test started indirectly (the SIGUSR2 successor): killed on drop.
struct KillOnDrop(u32);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: kill(2) of a gateway process this test caused to exist.
        unsafe {
            libc::kill(self.0 as libc::pid_t, libc::SIGKILL);
        }
    }
}

fn wait_exit(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait().expect("wait") {
            return s;
        }
        assert!(Instant::now() < deadline, "the process did not exit within {timeout:?}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// The gateway and a sandbox `app` declaring 3000, where a TCP echo listens.
fn setup() -> (Env, Listener) {
    let e = Env::new().sandbox("app", &[(3000, "HTTP")]).start();
    let app = spawn_tcp_echo(e.sb(), e.sb().sock(3000));
    (e, app)
}

/// `wrk` through the HTTPS edge to a sandbox port, for `seconds`; its report.
fn spawn_wrk(https: SocketAddr, host: &str, token: &str, seconds: u32, dir: &std::path::Path) -> Child {
    let script = dir.join("wrk.lua");
    fs::write(
        &script,
        format!("wrk.headers[\"Host\"] = \"{host}\"\nwrk.headers[\"Authorization\"] = \"Bearer {token}\"\n"),
    )
    .expect("wrk script");
    Command::new("wrk")
        .args(["-t2", "-c16", &format!("-d{seconds}s"), "--timeout", "10s", "-s"])
        .arg(&script)
        .arg(format!("https://{https}/port/3000/load"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("wrk (Debian package wrk; `cargo xtask setup` installs it)")
}

/// Requests completed, from wrk's report; panics with the report if anything failed.
fn wrk_requests_without_errors(out: std::process::Output) -> u64 {
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "wrk failed:\n{text}");
    assert!(!text.contains("Socket errors"), "wrk saw socket errors:\n{text}");
    assert!(!text.contains("Non-2xx or 3xx responses"), "wrk saw failed answers:\n{text}");
    text.lines()
        .find_map(|l| l.trim().split_once(" requests in ").and_then(|(n, _)| n.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no request count in:\n{text}"))
}

#[test]
fn a_takeover_under_load_fails_no_request_and_never_lapses_enforcement() {
    use futures_util::{SinkExt, StreamExt};
    use gateway_tests::edge::*;
    use tokio_tungstenite::tungstenite::Message;

    let mut e = Env::new().sandbox("web", &[(3000, "HTTP")]).token("load").start();
    let token = e.token().to_string();
    let Env { gw, sandbox, client, rt, host, .. } = &mut e;
    let sb = sandbox.as_ref().expect("sandbox");
    let _rt = rt.enter();
    let _app = spawn_backend(sb, sb.addr(), 3000, Speaks::Http1);
    let admin = admin_addr(gw);
    let old_pid = live_pid(admin);

    // A WebSocket opened on the old process, kept across the takeover.
    let mut ws = rt.block_on(open_websocket(client, host, "/port/3000/ws", &format!("Bearer {token}")));

    let observers = Observers::start(admin, "/v1/workspaces/acme/sandboxes/web", sb.sock(3000));
    let wrk = spawn_wrk(gw.https_addr(), host, &token, 8, gw.dir());
    thread::sleep(Duration::from_secs(2));

    let log = gw.dir().join("successor.log");
    let out = fs::File::create(&log).expect("log");
    let err = out.try_clone().expect("log");
    let mut successor = gateway_command()
        .args(["serve", "--config"])
        .arg(gw.config_path())
        .args(["--takeover", "--drain-timeout", "20s"])
        .env("GATEWAY_LOG", "info")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("spawn the successor");
    let _successor_guard = KillOnDrop(successor.id());
    let successor_log = || fs::read_to_string(&log).unwrap_or_default();

    // The successor answers; the old process drains but keeps the WebSocket it holds.
    let deadline = Instant::now() + Duration::from_secs(30);
    while live_pid(admin) != u64::from(successor.id()) {
        assert!(Instant::now() < deadline, "the successor never answered:\n{}", successor_log());
        thread::sleep(Duration::from_millis(20));
    }
    thread::sleep(Duration::from_millis(500));
    assert!(gw.try_wait_exit().is_none(), "the old process waits for its WebSocket:\n{}", gw.log());
    rt.block_on(async {
        ws.send(Message::text("still there?")).await.expect("send on the old process's WebSocket");
        let back = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.expect("echo in time");
        assert_eq!(back.expect("message").expect("ok").into_text().expect("text").as_str(), "still there?");
        ws.close(None).await.expect("close");
    });
    drop(ws);

    // Its last tunnel closed, the old process exits, successfully, well before the deadline.
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = gw.try_wait_exit() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the old process did not exit; its log:\n{}\nsuccessor:\n{}",
            gw.log(),
            successor_log()
        );
        thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "old process exit {status}:\n{}", gw.log());
    assert!(successor.try_wait().expect("wait").is_none(), "the successor runs:\n{}", successor_log());

    let requests = wrk_requests_without_errors(wrk.wait_with_output().expect("wrk"));
    let (ok, failed, lapses, probes) = observers.finish();
    assert!(
        failed.is_empty(),
        "{} of {} admin requests failed: {:?}\nold:\n{}\nnew:\n{}",
        failed.len(),
        ok + failed.len() as u64,
        &failed[..failed.len().min(5)],
        gw.log(),
        successor_log()
    );
    assert!(requests > 200 && ok > 100, "too little load to mean anything: {requests} HTTPS, {ok} admin requests");
    assert!(lapses.is_empty(), "enforcement lapsed: {lapses:?}");
    assert!(probes > 5, "too few enforcement probes: {probes}");
    assert_ne!(old_pid, u64::from(successor.id()));
    assert!(gw.log().contains("a new gateway process is taking over"), "{}", gw.log());
    // The state directory stays locked by the successor after the old process exited.
    let third =
        gateway_command().args(["serve", "--config"]).arg(gw.config_path()).stdin(Stdio::null()).output().expect("run");
    assert!(!third.status.success(), "a third gateway must not start on a locked state directory");
    assert!(
        String::from_utf8_lossy(&third.stderr).contains("locked by another running gateway"),
        "{}",
        String::from_utf8_lossy(&third.stderr)
    );

    // The successor owns the state and the kernel: a mutation works and is enforced.
    let body = sandbox_body(sb, &[(3000, "HTTP"), (3001, "HTTP")]);
    let r = gw.client().put_json("/v1/workspaces/acme/sandboxes/web", &body);
    assert_eq!(r.status, 200, "PUT after the takeover: {}\n{}", r.text(), successor_log());
    let _app2 = spawn_tcp_echo(sb, sb.sock(3001));
    assert_reachable(Origin::gateway(), sb.sock(3001), "a port opened by the successor");
    let r = rt.block_on(client.get(host, "/port/3000/after", &[("authorization", &format!("Bearer {token}"))]));
    assert_eq!(r.status, 200, "HTTPS through the successor: {}", r.text());

    // And it stops cleanly, leaving enforcement in place.
    // SAFETY: kill(2) of the successor this test spawned.
    unsafe {
        libc::kill(successor.id() as libc::pid_t, libc::SIGTERM);
    }
    assert!(wait_exit(&mut successor, Duration::from_secs(15)).success());
    assert_unreachable(Origin::host(), sb.sock(3000), "unmarked after both processes ended");
}

#[test]
fn sigusr2_starts_a_successor_that_takes_over() {
    let (mut e, _app) = setup();
    let sock = e.sb().sock(3000);
    let gw = &mut e.gw;
    let admin = admin_addr(gw);
    let old_pid = live_pid(admin);
    let observers = Observers::start(admin, "/v1/workspaces/acme/sandboxes/app", sock);
    thread::sleep(Duration::from_millis(300));
    // SAFETY: kill(2) of our own child.
    unsafe {
        libc::kill(old_pid as libc::pid_t, libc::SIGUSR2);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while gw.try_wait_exit().is_none() {
        assert!(Instant::now() < deadline, "the old process did not hand over:\n{}", gw.log());
        thread::sleep(Duration::from_millis(20));
    }
    let new_pid = live_pid(admin);
    let _guard = KillOnDrop(new_pid as u32);
    thread::sleep(Duration::from_millis(300));
    let (ok, failed, lapses, _) = observers.finish();
    assert_ne!(new_pid, old_pid);
    assert!(failed.is_empty(), "failed requests: {failed:?}\n{}", gw.log());
    assert!(ok > 50, "{ok} requests");
    assert!(lapses.is_empty(), "enforcement lapsed: {lapses:?}");
    assert!(gw.log().contains("started a new gateway process to take over"), "{}", gw.log());
}

#[test]
fn a_failed_successor_leaves_the_running_gateway_serving() {
    let (e, _app) = setup();
    let gw = &e.gw;
    let admin = admin_addr(gw);
    let pid = live_pid(admin);
    // A successor whose configuration moved the admin listener cannot adopt the socket.
    let config = fs::read_to_string(gw.config_path()).expect("config");
    let moved = config.replace(&admin.to_string(), &format!("127.0.0.1:{}", free_port()));
    let bad = gw.dir().join("moved.toml");
    fs::write(&bad, moved).expect("write");
    let out = gateway_command()
        .args(["serve", "--config"])
        .arg(&bad)
        .arg("--takeover")
        .stdin(Stdio::null())
        .output()
        .expect("run the successor");
    assert!(!out.status.success(), "the successor must fail");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("listen.admin"), "the error names the key: {stderr}");
    // The running gateway resumed: same pid, mutations work.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(200) = one_request(admin, "/v1/sandboxes") {
            break;
        }
        assert!(Instant::now() < deadline, "the running gateway did not resume:\n{}", gw.log());
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(live_pid(admin), pid);
    let r = gw.client().delete(&e.sandbox_path());
    assert_eq!(r.status, 204, "{}\n{}", r.text(), gw.log());
    assert!(gw.log().contains("did not take over; serving on"), "{}", gw.log());
}
