//! Runs the real `gateway` binary for end-to-end tests: writes a configuration into a temporary
//! directory, spawns `gateway serve`, waits until the admin listener answers, and kills the
//! process (and removes the directory) on drop. Plus a tiny blocking HTTP/1.1 client for the
//! admin API, over TCP or a unix socket.
//!
//! The binary is `$GATEWAY_BIN`, else `$CARGO_TARGET_DIR/debug/gateway`, else
//! `../target/debug/gateway` relative to this crate. Build it first (`cargo build -p gateway`).

use std::{
    fs,
    io::{self, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    time::{Duration, Instant},
};

/// The admin token the default test configuration uses (a TCP admin listener needs ≥ 32 bytes).
pub const TEST_TOKEN: &str = "test-admin-token-0123456789abcdef";

/// How long the gateway may take to answer after spawning.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The gateway binary under test.
pub fn gateway_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("GATEWAY_BIN") {
        return PathBuf::from(bin);
    }
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        let bin = PathBuf::from(dir).join("debug/gateway");
        if bin.is_file() {
            return bin;
        }
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/gateway")
}

/// A `Command` for the gateway binary, with a helpful panic if it is missing.
pub fn gateway_command() -> Command {
    let bin = gateway_bin();
    assert!(
        bin.is_file(),
        "gateway binary not found at {} (build it with `cargo build -p gateway`, or set GATEWAY_BIN)",
        bin.display()
    );
    let mut cmd = Command::new(bin);
    cmd.env_remove("GATEWAY_ADMIN").env_remove("GATEWAY_ADMIN_TOKEN").env_remove("GATEWAY_CONFIG");
    cmd
}

/// Runs the gateway binary with `args` to completion.
pub fn run_gateway(args: &[&str]) -> Output {
    gateway_command().args(args).stdin(Stdio::null()).output().expect("run the gateway binary")
}

/// A free TCP port on 127.0.0.1 (bound then released: a small race, fine for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("bind an ephemeral port").port()
}

pub use tempfile::TempDir;

/// A new empty directory under the system temp dir named `{prefix}…`, removed on drop.
pub fn temp_dir(prefix: &str) -> TempDir {
    tempfile::Builder::new().prefix(&format!("{prefix}-")).tempdir().expect("create a temp dir")
}

/// Where the admin API of a test gateway listens.
#[derive(Clone, Debug)]
pub enum AdminAddr {
    /// TCP, token required.
    Tcp(SocketAddr),
    /// Unix socket.
    Unix(PathBuf),
}

impl AdminAddr {
    /// As written in `listen.admin`.
    pub fn config_value(&self) -> String {
        match self {
            AdminAddr::Tcp(a) => a.to_string(),
            AdminAddr::Unix(p) => format!("unix:{}", p.display()),
        }
    }
}

/// The configuration of a test gateway: contract keys, data plane disabled.
pub fn test_config(admin: &AdminAddr, https_port: u16, state_dir: &Path, token: &str) -> String {
    test_config_with(admin, https_port, state_dir, token, None)
}

/// The configuration of a test gateway, enforcing in the kernel with its maps and links pinned
/// under `bpffs` when that is given.
pub fn test_config_with(
    admin: &AdminAddr,
    https_port: u16,
    state_dir: &Path,
    token: &str,
    bpffs: Option<&Path>,
) -> String {
    format!(
        r#"domain = "gw.test"
region = "local"

[listen]
admin = "{admin}"
https = "127.0.0.1:{https_port}"

[admin]
token = "{token}"

[state]
dir = "{state}"

[dataplane]
enabled = {enabled}
mark = {mark:#x}
bpffs = "{bpffs}"
public_interface = ""
xdp_mode = "skb"
"#,
        admin = admin.config_value(),
        mark = crate::harness::GATEWAY_MARK,
        state = state_dir.display(),
        enabled = bpffs.is_some(),
        bpffs = bpffs.map_or_else(|| "/sys/fs/bpf/gateway-test-unused".to_string(), |p| p.display().to_string()),
    )
}

/// `gateway dataplane dump --json` of the pins under `bpffs` (what the kernel holds).
pub fn dataplane_dump(bpffs: &Path) -> serde_json::Value {
    let out = run_gateway(&["dataplane", "dump", "--json", "--bpffs", bpffs.to_str().expect("UTF-8 path")]);
    assert!(out.status.success(), "dataplane dump: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("dump is JSON")
}

/// A running `gateway serve`, killed on drop.
pub struct GatewayProcess {
    child: Option<Child>,
    dir: TempDir,
    config_path: PathBuf,
    log_path: PathBuf,
    admin: AdminAddr,
    https_port: u16,
    token: String,
    log_filter: String,
    /// The network namespace it runs in (`None`: the test's own).
    netns: Option<String>,
    /// The address of its HTTPS listener.
    https_ip: std::net::Ipv4Addr,
}

impl GatewayProcess {
    /// A gateway with the test configuration on a free 127.0.0.1 port.
    pub fn start() -> GatewayProcess {
        let admin = AdminAddr::Tcp(SocketAddr::from(([127, 0, 0, 1], free_port())));
        Self::start_with_admin(admin)
    }

    /// A gateway whose admin API listens on a unix socket inside its directory.
    pub fn start_unix() -> GatewayProcess {
        let dir = temp_dir("gateway-admin-test");
        let admin = AdminAddr::Unix(dir.path().join("run/admin.sock"));
        Self::start_in(dir, admin)
    }

    /// A gateway enforcing in the kernel, its pins under `bpffs` (use a harness `BpffsDir`).
    pub fn start_enforcing(bpffs: &Path) -> GatewayProcess {
        let admin = AdminAddr::Tcp(SocketAddr::from(([127, 0, 0, 1], free_port())));
        Self::start_configured(temp_dir("gateway-dp-test"), admin, Some(bpffs), "")
    }

    /// [`GatewayProcess::start_enforcing`] with `extra_config` (TOML, e.g. a `[proxy]` section)
    /// appended to the configuration.
    pub fn start_enforcing_with(bpffs: &Path, extra_config: &str) -> GatewayProcess {
        let mut gw = Self::enforcing(bpffs, extra_config);
        gw.spawn();
        gw
    }

    /// [`GatewayProcess::start_enforcing_with`] not yet spawned: its configuration written, for
    /// [`GatewayProcess::edit_config`] and [`GatewayProcess::set_log_filter`] before
    /// [`GatewayProcess::spawn`].
    pub fn enforcing(bpffs: &Path, extra_config: &str) -> GatewayProcess {
        let admin = AdminAddr::Tcp(SocketAddr::from(([127, 0, 0, 1], free_port())));
        Self::configured(temp_dir("gateway-edge-test"), admin, Some(bpffs), extra_config)
    }

    fn start_with_admin(admin: AdminAddr) -> GatewayProcess {
        Self::start_in(temp_dir("gateway-admin-test"), admin)
    }

    fn start_in(dir: TempDir, admin: AdminAddr) -> GatewayProcess {
        Self::start_configured(dir, admin, None, "")
    }

    fn start_configured(dir: TempDir, admin: AdminAddr, bpffs: Option<&Path>, extra_config: &str) -> GatewayProcess {
        let mut gw = Self::configured(dir, admin, bpffs, extra_config);
        gw.spawn();
        gw
    }

    fn configured(dir: TempDir, admin: AdminAddr, bpffs: Option<&Path>, extra_config: &str) -> GatewayProcess {
        let https_port = free_port();
        let config_path = dir.path().join("gateway.toml");
        let log_path = dir.path().join("gateway.log");
        let state = dir.path().join("state");
        let config = test_config_with(&admin, https_port, &state, TEST_TOKEN, bpffs) + extra_config;
        fs::write(&config_path, config).expect("write the config");
        GatewayProcess {
            child: None,
            dir,
            config_path,
            log_path,
            admin,
            https_port,
            token: TEST_TOKEN.to_string(),
            log_filter: "info".to_string(),
            netns: None,
            https_ip: std::net::Ipv4Addr::LOCALHOST,
        }
    }

    /// [`GatewayProcess::enforcing`] inside network namespace `netns`, its HTTPS listener on
    /// `https_ip` there and its admin API on a unix socket (reachable from any namespace).
    pub fn in_netns(netns: &str, https_ip: std::net::Ipv4Addr, bpffs: &Path, extra_config: &str) -> GatewayProcess {
        let dir = temp_dir("gateway-netns-test");
        let admin = AdminAddr::Unix(dir.path().join("run/admin.sock"));
        let mut gw = Self::configured(dir, admin, Some(bpffs), extra_config);
        gw.edit_config(|c| c.replace("https = \"127.0.0.1:", &format!("https = \"{https_ip}:")));
        gw.netns = Some(netns.to_string());
        gw.https_ip = https_ip;
        gw
    }

    /// Spawns `gateway serve` and waits until `/live` answers (panics with the log if it exits).
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = self.spawn_raw();
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.try_wait() {
                panic!("gateway exited during start ({status}); log:\n{}", self.log());
            }
            if let Ok(r) = self.client().request("GET", "/live", &[], None)
                && r.status == 200
            {
                return;
            }
            assert!(Instant::now() < deadline, "gateway did not answer within {START_TIMEOUT:?}; log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Spawns `gateway serve` with this configuration and waits for it to exit (for start
    /// failures). Returns its status and log.
    pub fn spawn_expect_exit(&mut self) -> (ExitStatus, String) {
        assert!(self.child.is_none(), "already running");
        let mut child = self.spawn_raw();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return (status, self.log());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("gateway did not exit; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn spawn_raw(&self) -> Child {
        let log = fs::OpenOptions::new().create(true).append(true).open(&self.log_path).expect("open the log");
        let log2 = log.try_clone().expect("clone the log");
        let mut command = match &self.netns {
            // `ip netns exec` enters the namespace and execs the gateway: the child's pid is
            // the gateway's.
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(gateway_bin());
                c.env_remove("GATEWAY_ADMIN").env_remove("GATEWAY_ADMIN_TOKEN").env_remove("GATEWAY_CONFIG");
                c
            }
            None => gateway_command(),
        };
        command
            .arg("serve")
            .arg("--config")
            .arg(&self.config_path)
            .env("GATEWAY_LOG", &self.log_filter)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .expect("spawn the gateway")
    }

    fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// Rewrites the configuration file (read by the next start).
    pub fn edit_config(&self, edit: impl FnOnce(String) -> String) {
        let config = fs::read_to_string(&self.config_path).expect("read the config");
        fs::write(&self.config_path, edit(config)).expect("write the config");
    }

    /// The `GATEWAY_LOG` filter of the next start (default `info`), e.g. `trace`.
    pub fn set_log_filter(&mut self, filter: &str) {
        self.log_filter = filter.to_string();
    }

    /// SIGKILL and wait: what a crash looks like.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; returns the exit status.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return child.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the process (SIGKILL) and starts it again on the same configuration and state.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// The exit status once the process has exited by itself (a drain after a handover),
    /// else `None`.
    pub fn try_wait_exit(&mut self) -> Option<ExitStatus> {
        let status = self.try_wait()?;
        self.child = None;
        Some(status)
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Runs `gateway COMMAND ARGS --admin ADDR --token TOKEN` against this gateway's admin API.
    pub fn cli(&self, command: &str, args: &[&str]) -> Output {
        let admin = self.admin.config_value();
        let mut full = vec![command];
        full.extend_from_slice(args);
        full.extend_from_slice(&["--admin", &admin, "--token", &self.token]);
        run_gateway(&full)
    }

    /// An authenticated admin client.
    pub fn client(&self) -> AdminClient {
        AdminClient { addr: self.admin.clone(), token: Some(self.token.clone()) }
    }

    /// An admin client that sends no token.
    pub fn anonymous_client(&self) -> AdminClient {
        AdminClient { addr: self.admin.clone(), token: None }
    }

    /// The admin address.
    pub fn admin(&self) -> &AdminAddr {
        &self.admin
    }

    /// The admin token.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The HTTPS port written in the configuration.
    pub fn https_port(&self) -> u16 {
        self.https_port
    }

    /// The HTTPS listener (127.0.0.1).
    pub fn https_addr(&self) -> SocketAddr {
        SocketAddr::from((self.https_ip, self.https_port))
    }

    /// The development CA the gateway generates when no certificate is configured.
    pub fn dev_ca_path(&self) -> PathBuf {
        self.state_dir().join("tls/ca.pem")
    }

    /// The configuration file.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The state directory.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The temporary directory holding everything.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Everything the process wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- gateway log ({}) ---\n{}", self.log_path.display(), self.log());
        }
    }
}

/// An HTTP answer.
#[derive(Clone, Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// Body (chunked encoding removed).
    pub body: Vec<u8>,
}

impl Response {
    /// The first header named `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// The body as JSON (panics with the body if it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): status {} body {:?}", self.status, self.text()))
    }
    /// Asserts the gateway's error shape with this status and code ([`assert_error`]); returns
    /// the error object.
    pub fn assert_error(&self, status: u16, code: &str) -> serde_json::Value {
        assert_error(self.status, |name| self.header(name).map(str::to_owned), &self.body, status, code)
    }
}

/// Asserts that an answer (`got` status, its headers by name, body) is the gateway's error shape
/// with `status` and `code`: `application/json`, `{"error": {"code", "status", "origin":
/// "gateway", "retryable": bool, "message": non-empty}}`, `WWW-Authenticate: Bearer` on a 401,
/// `Retry-After` on a 429 or 503. Returns the error object. Used by the admin client's
/// [`Response`] and the edge client's `Reply`.
pub fn assert_error(
    got: u16,
    header: impl Fn(&str) -> Option<String>,
    body: &[u8],
    status: u16,
    code: &str,
) -> serde_json::Value {
    let text = String::from_utf8_lossy(body);
    assert_eq!(got, status, "expected {status} {code}, got {got}: {text}");
    assert_eq!(header("content-type").as_deref(), Some("application/json"), "content type of {status} {code}: {text}");
    match status {
        401 => assert_eq!(header("www-authenticate").as_deref(), Some("Bearer"), "401 {code} without WWW-Authenticate"),
        429 | 503 => assert!(header("retry-after").is_some(), "{status} {code} without Retry-After"),
        _ => {}
    }
    let v: serde_json::Value =
        serde_json::from_slice(body).unwrap_or_else(|e| panic!("error body is not JSON ({e}): {text}"));
    let e = v.get("error").unwrap_or_else(|| panic!("no error object: {v}")).clone();
    assert_eq!(e["code"], code, "{v}");
    assert_eq!(e["status"], status, "{v}");
    assert_eq!(e["origin"], "gateway", "{v}");
    assert!(e["retryable"].is_boolean(), "{v}");
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    e
}

/// A blocking HTTP/1.1 client for the admin API (one connection per request).
#[derive(Clone, Debug)]
pub struct AdminClient {
    addr: AdminAddr,
    token: Option<String>,
}

impl AdminClient {
    /// A client for `addr` with an optional Bearer token.
    pub fn new(addr: AdminAddr, token: Option<String>) -> AdminClient {
        AdminClient { addr, token }
    }

    /// GET.
    pub fn get(&self, path: &str) -> Response {
        self.request("GET", path, &[], None).expect("GET")
    }

    /// PUT a JSON body.
    pub fn put_json(&self, path: &str, body: &serde_json::Value) -> Response {
        let body = serde_json::to_vec(body).expect("serialize");
        self.request("PUT", path, &[("content-type", "application/json")], Some(&body)).expect("PUT")
    }

    /// PUT raw bytes.
    pub fn put_raw(&self, path: &str, body: &[u8]) -> Response {
        self.request("PUT", path, &[("content-type", "application/json")], Some(body)).expect("PUT")
    }

    /// POST a JSON body.
    pub fn post_json(&self, path: &str, body: &serde_json::Value) -> Response {
        let body = serde_json::to_vec(body).expect("serialize");
        self.post_raw(path, &body)
    }

    /// POST raw bytes.
    pub fn post_raw(&self, path: &str, body: &[u8]) -> Response {
        self.request("POST", path, &[("content-type", "application/json")], Some(body)).expect("POST")
    }

    /// DELETE.
    pub fn delete(&self, path: &str) -> Response {
        self.request("DELETE", path, &[], None).expect("DELETE")
    }

    /// Any request; `headers` are added after Host, Authorization (if a token is set),
    /// Content-Length and `Connection: close`.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> io::Result<Response> {
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: gateway-admin\r\nConnection: close\r\n");
        if let Some(token) = &self.token {
            head.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        if let Some(body) = body {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(body.unwrap_or_default());
        self.exchange(&bytes)
    }

    /// Sends raw bytes and parses the answer.
    pub fn exchange(&self, request: &[u8]) -> io::Result<Response> {
        let raw = match &self.addr {
            AdminAddr::Tcp(a) => {
                let s = TcpStream::connect_timeout(a, Duration::from_secs(5))?;
                s.set_read_timeout(Some(Duration::from_secs(30)))?;
                roundtrip(s, request)?
            }
            AdminAddr::Unix(p) => {
                let s = UnixStream::connect(p)?;
                s.set_read_timeout(Some(Duration::from_secs(30)))?;
                roundtrip(s, request)?
            }
        };
        parse_response(&raw)
    }
}

fn roundtrip<S: Read + Write>(mut s: S, request: &[u8]) -> io::Result<Vec<u8>> {
    // The server may answer (413) and close before reading everything: keep what it said.
    let write = s.write_all(request).and_then(|()| s.flush());
    let mut raw = Vec::new();
    let read = s.read_to_end(&mut raw);
    match (read, write) {
        (Ok(_), _) => Ok(raw),
        (Err(_), _) if !raw.is_empty() => Ok(raw),
        (Err(e), Ok(())) => Err(e),
        (Err(_), Err(e)) => Err(e),
    }
}

fn parse_response(raw: &[u8]) -> io::Result<Response> {
    let bad =
        |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("{what}: {:?}", String::from_utf8_lossy(raw)));
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| bad("no end of headers"))?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| bad("headers are not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or_else(|| bad("no status line"))?;
    let status: u16 =
        status_line.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| bad("bad status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers.iter().any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    if chunked {
        body = dechunk(&body).ok_or_else(|| bad("bad chunked body"))?;
    } else if let Some(len) =
        headers.iter().find(|(n, _)| n == "content-length").and_then(|(_, v)| v.parse::<usize>().ok())
    {
        body.truncate(len);
    }
    Ok(Response { status, headers, body })
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}
