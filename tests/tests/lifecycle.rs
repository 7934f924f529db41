//! The process lifecycle of a real gateway: the systemd unit verifies, the gateway runs with
//! only the unit's capabilities, tells a (stand-in) service manager READY only once it serves,
//! pings the watchdog, reports RELOADING/READY around a SIGHUP and STOPPING on SIGTERM; a
//! reload applies a valid configuration without dropping connections and refuses a bad one,
//! which is logged and counted while the old configuration keeps serving.

use std::{
    fs,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use gateway::telemetry::metrics::sum_samples;
use gateway_tests::env::Env;
use gateway_tests::{edge::sandbox_body, gateway_process::*, harness::*};

const MARK: u32 = 0x6777;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The packaged unit, its binary and documentation paths pointing at files that exist here.
fn unit_for_tests(dir: &Path) -> PathBuf {
    let unit = fs::read_to_string(repo().join("packaging/gateway.service")).expect("read packaging/gateway.service");
    let unit = unit.replace("/usr/local/bin/gateway", &gateway_bin().display().to_string()).replace(
        "/usr/local/share/doc/gateway/README.md",
        &repo().join("README.md").canonicalize().expect("README").display().to_string(),
    );
    let path = dir.join("gateway.service");
    fs::write(&path, unit).expect("write the unit");
    path
}

#[test]
fn the_systemd_unit_verifies_and_asks_for_what_the_issue_lists() {
    let dir = temp_dir("gateway-unit");
    let unit = unit_for_tests(dir.path());
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze (Debian package systemd; `cargo xtask setup` installs it)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // verify exits 0 on unknown keys and bad values, which it only prints: both must be silent.
    assert!(out.status.success() && stderr.trim().is_empty(), "systemd-analyze verify: {}\n{stderr}", out.status);

    let text = fs::read_to_string(&unit).expect("unit");
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    for want in [
        "Type=notify",
        "WatchdogSec=30s",
        "CapabilityBoundingSet=CAP_BPF CAP_NET_ADMIN CAP_PERFMON CAP_SYS_RESOURCE CAP_NET_BIND_SERVICE",
        "LimitMEMLOCK=infinity",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_NETLINK AF_UNIX",
        "SystemCallFilter=@system-service bpf perf_event_open",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ] {
        assert!(lines.contains(&want), "the unit lacks {want:?}");
    }
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("ExecStartPre=") && l.ends_with("check-config --config /etc/gateway/gateway.toml"))
    );
}

/// A stand-in for systemd's notification socket.
struct NotifySocket {
    socket: UnixDatagram,
    path: PathBuf,
    seen: Vec<String>,
}

impl NotifySocket {
    fn new(dir: &Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        NotifySocket { socket, path, seen: Vec::new() }
    }

    /// Waits for a datagram holding `line` (one of its `KEY=VALUE` lines); returns the datagram.
    fn wait_for(&mut self, line: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no {line:?} within {timeout:?}; got {:?}", self.seen);
            self.socket.set_read_timeout(Some(left)).expect("timeout");
            let mut buf = [0u8; 4096];
            let Ok(n) = self.socket.recv(&mut buf) else { continue };
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            self.seen.push(msg.clone());
            if msg.lines().any(|l| l == line) {
                return msg;
            }
        }
    }
}

/// `gateway serve` with only the unit's capabilities (those this host's bounding set has;
/// CAP_SYS_RESOURCE is absent from containers), and a notify socket.
fn spawn_confined(config: &Path, notify: &Path, log: &Path) -> Child {
    let log = fs::File::create(log).expect("log");
    let log2 = log.try_clone().expect("log");
    let mut caps = String::from("-all");
    for cap in ["bpf", "net_admin", "perfmon", "sys_resource", "net_bind_service"] {
        if host_has_cap(cap) {
            caps.push_str(&format!(",+{cap}"));
        }
    }
    Command::new("setpriv")
        .args(["--bounding-set", &caps, "--inh-caps", "-all", "--no-new-privs", "--"])
        .arg(gateway_bin())
        .args(["serve", "--config"])
        .arg(config)
        .env("NOTIFY_SOCKET", notify)
        .env("WATCHDOG_USEC", "1000000")
        .env("GATEWAY_LOG", "info")
        .env_remove("GATEWAY_ADMIN")
        .env_remove("GATEWAY_ADMIN_TOKEN")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .spawn()
        .expect("spawn setpriv (util-linux)")
}

fn host_has_cap(name: &str) -> bool {
    let bit = match name {
        "net_bind_service" => 10,
        "net_admin" => 12,
        "sys_resource" => 24,
        "perfmon" => 38,
        "bpf" => 39,
        _ => return false,
    };
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let bnd = status.lines().find_map(|l| l.strip_prefix("CapBnd:")).map(str::trim).unwrap_or("0");
    u64::from_str_radix(bnd, 16).is_ok_and(|mask| mask & (1 << bit) != 0)
}

fn signal(child: &Child, sig: libc::c_int) {
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(child.id() as libc::pid_t, sig);
    }
}

/// The running process, its capabilities, as the kernel reports them.
fn effective_caps(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let eff = status.lines().find_map(|l| l.strip_prefix("CapEff:")).map(str::trim).unwrap_or("0");
    u64::from_str_radix(eff, 16).unwrap_or(0)
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn notify_ready_watchdog_reload_and_stop_with_only_the_units_capabilities() {
    let bpffs = BpffsDir::new();
    let dir = temp_dir("gateway-notify");
    let sb = Sandbox::new();
    let _app = spawn_tcp_echo(&sb, sb.sock(3000));
    let admin = AdminAddr::Tcp(SocketAddr::from(([127, 0, 0, 1], free_port())));
    let config = dir.path().join("gateway.toml");
    let https_port = free_port();
    fs::write(&config, test_config_with(&admin, https_port, &dir.path().join("state"), TEST_TOKEN, Some(bpffs.path())))
        .expect("config");
    let mut notify = NotifySocket::new(dir.path());
    let log = dir.path().join("gateway.log");
    let child = Killed(spawn_confined(&config, &notify.path, &log));
    let client = AdminClient::new(admin.clone(), Some(TEST_TOKEN.to_string()));
    let show_log = || fs::read_to_string(&log).unwrap_or_default();

    let ready = notify.wait_for("READY=1", Duration::from_secs(30));
    // READY=1 means serving: no retry needed.
    let r = client
        .request("GET", "/ready", &[], None)
        .unwrap_or_else(|e| panic!("admin after READY=1: {e}\n{}", show_log()));
    assert_eq!(r.status, 200, "{}", show_log());
    TcpStream::connect(("127.0.0.1", https_port))
        .unwrap_or_else(|e| panic!("HTTPS after READY=1: {e}\n{}", show_log()));
    assert!(ready.contains("MAINPID="), "{ready}");
    assert!(ready.lines().any(|l| l.starts_with("STATUS=serving")), "{ready}");
    let eff = effective_caps(child.0.id());
    assert_eq!(
        eff & !((1 << 10) | (1 << 12) | (1 << 24) | (1 << 38) | (1 << 39)),
        0,
        "capabilities beyond the unit's: {eff:#x}"
    );

    // The data plane works with these capabilities: attach, maps, enforcement.
    let r = client.put_json("/v1/workspaces/ws1/sandboxes/app", &sandbox_body(&sb, &[(3000, "HTTP")]));
    assert_eq!(r.status, 200, "PUT: {}\n{}", r.text(), show_log());
    assert_reachable(Origin::host_marked(MARK), sb.sock(3000), "declared port, marked");
    assert_unreachable(Origin::host(), sb.sock(3000), "declared port, unmarked");

    notify.wait_for("WATCHDOG=1", Duration::from_secs(3));

    signal(&child.0, libc::SIGHUP);
    notify.wait_for("RELOADING=1", Duration::from_secs(10));
    let after = notify.wait_for("READY=1", Duration::from_secs(10));
    assert!(after.contains("STATUS=serving; configuration reloaded"), "{after}");

    signal(&child.0, libc::SIGTERM);
    notify.wait_for("STOPPING=1", Duration::from_secs(10));
    let mut child = child;
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = child.0.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM:\n{}", show_log());
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit {status}:\n{}", show_log());
    // Enforcement outlives the process.
    assert_reachable(Origin::host_marked(MARK), sb.sock(3000), "declared port after stop");
    assert_unreachable(Origin::host(), sb.sock(3000), "unmarked after stop");
}

/// One HTTP/1.1 request on an open keep-alive connection; returns the status.
fn keepalive_request(stream: &mut TcpStream, path: &str, token: &str) -> u16 {
    let req = format!("GET {path} HTTP/1.1\r\nHost: gateway-admin\r\nAuthorization: Bearer {token}\r\n\r\n");
    stream.write_all(req.as_bytes()).expect("write");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).expect("read");
        assert!(n > 0, "connection closed: {:?}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some(end) = text.find("\r\n\r\n") {
            let len: usize = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0))
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return text[9..12].parse().expect("status");
            }
        }
    }
}

fn reloads(gw: &GatewayProcess, result: &str) -> u64 {
    sum_samples(&gw.anonymous_client().get("/metrics").text(), "gateway_config_reloads_total", &[("result", result)])
}

fn sighup(gw: &GatewayProcess) {
    let pid = gw.pid().expect("running");
    // SAFETY: kill(2) on the test's own child.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGHUP);
    }
}

/// Waits until the reload counter for `result` reaches `n`.
fn wait_reloads(gw: &GatewayProcess, result: &str, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while reloads(gw, result) < n {
        assert!(Instant::now() < deadline, "reload {result} not counted; log:\n{}", gw.log());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The admin token after a rotation.
const ROTATED: &str = "rotated-admin-token-0123456789abcdef";

#[test]
fn sighup_applies_a_valid_configuration_without_dropping_connections_and_refuses_a_bad_one() {
    let gw = GatewayProcess::start();
    let original = fs::read_to_string(gw.config_path()).expect("config");
    let mut conn = match gw.admin() {
        AdminAddr::Tcp(a) => TcpStream::connect(a).expect("connect"),
        AdminAddr::Unix(_) => unreachable!("TCP admin"),
    };
    conn.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    assert_eq!(keepalive_request(&mut conn, "/v1/sandboxes", TEST_TOKEN), 200);

    // A valid change of a reloadable key (admin.token): applied; the open connection lives on.
    let rotated = original.replace(TEST_TOKEN, ROTATED);
    fs::write(gw.config_path(), &rotated).expect("write");
    sighup(&gw);
    wait_reloads(&gw, "ok", 1);
    assert_eq!(keepalive_request(&mut conn, "/v1/sandboxes", ROTATED), 200, "same connection, new token");
    assert_eq!(keepalive_request(&mut conn, "/v1/sandboxes", TEST_TOKEN), 401, "the old token is refused");

    // An invalid file: refused, logged with the key, counted; the running configuration serves.
    fs::write(gw.config_path(), format!("{rotated}\nbogus_key = 1\n")).expect("write");
    sighup(&gw);
    wait_reloads(&gw, "refused", 1);
    assert!(gw.log().contains("bogus_key"), "the refusal names the key:\n{}", gw.log());
    assert_eq!(keepalive_request(&mut conn, "/v1/sandboxes", ROTATED), 200);

    // A syntax error: the same.
    fs::write(gw.config_path(), "domain = \"unterminated\n").expect("write");
    sighup(&gw);
    wait_reloads(&gw, "refused", 2);
    assert_eq!(keepalive_request(&mut conn, "/v1/sandboxes", ROTATED), 200);

    // A restart-only key: refused with what to do instead.
    let port_moved = rotated.replace(&format!("127.0.0.1:{}", gw.https_port()), &format!("127.0.0.1:{}", free_port()));
    fs::write(gw.config_path(), port_moved).expect("write");
    sighup(&gw);
    wait_reloads(&gw, "refused", 3);
    assert!(gw.log().contains("listen.https changed: restart the gateway"), "{}", gw.log());
    assert_eq!(keepalive_request(&mut conn, "/v1/sandboxes", ROTATED), 200);
    assert_eq!(reloads(&gw, "ok"), 1);
}

/// A reload that cannot read its certificate is refused (logged, counted) and the running
/// certificate keeps serving; a good reload swaps certificates for new handshakes; an HTTPS
/// connection open across both keeps serving requests.
#[test]
fn sighup_keeps_https_connections_and_refuses_unreadable_certificates() {
    use gateway_tests::edge::*;
    let mut e = Env::new().sandbox("web", &[(3000, "HTTP")]).token("reload").start();
    let Env { gw, sandbox, client, rt, host, bearer, .. } = &mut e;
    let sb = sandbox.as_ref().expect("sandbox");
    let _rt = rt.enter();
    // First start: the development certificate; then serve it from files named in [tls].
    gw.kill();
    let certs = gw.dir().join("certs");
    fs::create_dir_all(&certs).expect("certs dir");
    fs::copy(gw.state_dir().join("tls/cert.pem"), certs.join("cert.pem")).expect("cert");
    fs::copy(gw.state_dir().join("tls/key.pem"), certs.join("key.pem")).expect("key");
    let base = fs::read_to_string(gw.config_path()).expect("config");
    let with_tls = |cert: &str| {
        format!(
            "{base}\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            certs.join(cert).display(),
            certs.join("key.pem").display()
        )
    };
    fs::write(gw.config_path(), with_tls("cert.pem")).expect("config");
    gw.spawn();
    let _app = spawn_backend(sb, sb.addr(), 3000, Speaks::Http1);
    let mut h2 = rt.block_on(client.h2("any.local.gw.test"));
    let ask = |h2: &mut hyper::client::conn::http2::SendRequest<TestBody>| {
        let req = build_h2(http::Method::GET, host, "/port/3000/x", &[("authorization", bearer)], empty());
        rt.block_on(async { read_reply(h2.send_request(req).await.expect("send on the open connection")).await.status })
    };
    assert_eq!(ask(&mut h2), 200);

    fs::write(gw.config_path(), with_tls("missing.pem")).expect("config");
    sighup(gw);
    wait_reloads(gw, "refused", 1);
    assert!(gw.log().contains("missing.pem"), "the refusal names the file:\n{}", gw.log());
    assert_eq!(ask(&mut h2), 200, "the open connection survives a refused reload");
    rt.block_on(client.tls("any.local.gw.test", Alpn::H1))
        .expect("the running certificate still serves new handshakes");

    fs::write(gw.config_path(), with_tls("cert.pem")).expect("config");
    sighup(gw);
    wait_reloads(gw, "ok", 1);
    assert_eq!(ask(&mut h2), 200, "the open connection survives an applied reload");
    let r = rt.block_on(client.get(host, "/port/3000/y", &[("authorization", bearer)]));
    assert_eq!(r.status, 200, "a new connection after the reload");
}
