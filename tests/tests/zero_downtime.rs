//! Zero-downtime restart and upgrade: a new gateway process takes the listening sockets over
//! from the running one (SCM_RIGHTS over `<state.dir>/handoff.sock`), the old one drains and
//! exits. Under bounded load on loopback no request fails, and the kernel enforcement of a
//! sandbox in a namespace never lapses: unmarked connections stay dropped and the gateway's
//! marked connections keep passing, at every instant of the overlap.

use std::{
    fs,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    process::{Child, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use gateway_tests::{gateway_process::*, harness::*};
use serde_json::json;

const MARK: u32 = 0x6777;

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
    let req = format!("GET {path} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {TEST_TOKEN}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&buf);
    text.get(9..12).and_then(|c| c.parse().ok()).ok_or_else(|| format!("no status line: {text:?}"))
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
    fn start(admin: SocketAddr, declared: SocketAddr) -> Observers {
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
                    match one_request(admin, "/v1/workspaces/ws1/sandboxes/app") {
                        Ok(200) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(status) => failed.lock().expect("lock").push(format!("status {status}")),
                        Err(e) => failed.lock().expect("lock").push(e),
                    }
                }
            }));
        }
        // Enforcement: an unmarked SYN to the declared port must never connect, and the
        // gateway's marked connections must always do.
        let (stop, lapses, probes) = (o.stop.clone(), o.lapses.clone(), o.probes.clone());
        threads.push(thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if try_connect(declared, Duration::from_millis(50), None).is_ok() {
                    lapses.lock().expect("lock").push("an unmarked connection reached the declared port".into());
                }
                if let Err(e) = try_connect(declared, Duration::from_secs(2), Some(MARK)) {
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

fn setup() -> (BpffsDir, Sandbox, Listener, GatewayProcess) {
    require_root();
    let bpffs = BpffsDir::new();
    let sb = Sandbox::new();
    let app = spawn_tcp_echo(&sb, sb.sock(3000));
    let gw = GatewayProcess::start_enforcing(bpffs.path());
    let body = json!({"address": sb.addr().to_string(), "interface": sb.link.host_ifname(), "ports": [{"target": 3000}]});
    let r = gw.client().put_json("/v1/workspaces/ws1/sandboxes/app", &body);
    assert_eq!(r.status, 200, "PUT: {}", r.text());
    (bpffs, sb, app, gw)
}

#[test]
fn a_takeover_under_load_fails_no_request_and_never_lapses_enforcement() {
    let (_bpffs, sb, _app, mut gw) = setup();
    let admin = admin_addr(&gw);
    let old_pid = live_pid(admin);
    let observers = Observers::start(admin, sb.sock(3000));
    thread::sleep(Duration::from_millis(500));

    let log = gw.dir().join("successor.log");
    let out = fs::File::create(&log).expect("log");
    let err = out.try_clone().expect("log");
    let mut successor = gateway_command()
        .args(["serve", "--config"])
        .arg(gw.config_path())
        .args(["--takeover", "--drain-timeout", "5s"])
        .env("GATEWAY_LOG", "info")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("spawn the successor");
    let _successor_guard = KillOnDrop(successor.id());

    // The old process drains and exits by itself, successfully.
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = gw.try_wait_exit() {
            break s;
        }
        assert!(Instant::now() < deadline, "the old process did not exit; its log:\n{}\nsuccessor:\n{}", gw.log(), fs::read_to_string(&log).unwrap_or_default());
        thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "old process exit {status}:\n{}", gw.log());
    assert!(successor.try_wait().expect("wait").is_none(), "the successor runs:\n{}", fs::read_to_string(&log).unwrap_or_default());
    thread::sleep(Duration::from_millis(500));
    let (ok, failed, lapses, probes) = observers.finish();

    let successor_log = fs::read_to_string(&log).unwrap_or_default();
    assert!(failed.is_empty(), "{} of {} requests failed: {:?}\nold:\n{}\nnew:\n{successor_log}", failed.len(), ok + failed.len() as u64, &failed[..failed.len().min(5)], gw.log());
    assert!(ok > 100, "too little load to mean anything: {ok} requests");
    assert!(lapses.is_empty(), "enforcement lapsed: {lapses:?}");
    assert!(probes > 5, "too few enforcement probes: {probes}");
    assert_eq!(live_pid(admin), u64::from(successor.id()), "the successor answers");
    assert_ne!(old_pid, u64::from(successor.id()));
    assert!(gw.log().contains("a new gateway process is taking over"), "{}", gw.log());
    // The state directory stays locked by the successor after the old process exited.
    let third = gateway_command().args(["serve", "--config"]).arg(gw.config_path()).stdin(Stdio::null()).output().expect("run");
    assert!(!third.status.success(), "a third gateway must not start on a locked state directory");
    assert!(String::from_utf8_lossy(&third.stderr).contains("locked by another running gateway"), "{}", String::from_utf8_lossy(&third.stderr));

    // The successor owns the state and the kernel: a mutation works and is enforced.
    let body = json!({"address": sb.addr().to_string(), "interface": sb.link.host_ifname(), "ports": [{"target": 3000}, {"target": 3001}]});
    let r = gw.client().put_json("/v1/workspaces/ws1/sandboxes/app", &body);
    assert_eq!(r.status, 200, "PUT after the takeover: {}\n{successor_log}", r.text());
    let _app2 = spawn_tcp_echo(&sb, sb.sock(3001));
    assert_reachable(Origin::host_marked(MARK), sb.sock(3001), "a port opened by the successor");

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
    let (_bpffs, sb, _app, mut gw) = setup();
    let admin = admin_addr(&gw);
    let old_pid = live_pid(admin);
    let observers = Observers::start(admin, sb.sock(3000));
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
    let (_bpffs, _sb, _app, gw) = setup();
    let admin = admin_addr(&gw);
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
    let r = gw.client().delete("/v1/workspaces/ws1/sandboxes/app");
    assert_eq!(r.status, 204, "{}\n{}", r.text(), gw.log());
    assert!(gw.log().contains("did not take over; serving on"), "{}", gw.log());
}
