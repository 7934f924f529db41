//! `cargo xtask bench`: the HTTP proxy comparison. One invocation runs one of four parts.
//!
//! Topology: one sandbox namespace holding the backend (nginx `return 200`, 1 worker; plain
//! HTTP on 3000 for the proxies, TLS on 3443 for the "direct" contender) behind two veth links:
//! link A is registered with the gateway (tcx enforcement attached, reached only by the
//! gateway's marked connector), link B is unregistered and carries the other proxies' and the
//! direct traffic to the same backend process. Contenders on the host, all on 127.0.0.1 with
//! the same ECDSA P-256 certificate, TLS 1.3 only, keepalive upstream:
//!
//! - direct: the backend's own TLS listener;
//! - gateway: `https://sbx-web-acme.local.gw.test/port/3000/` with a workspace token;
//! - nginx: reverse proxy (`proxy_pass` to an upstream with `keepalive`);
//! - haproxy: `mode http`, `http-reuse always`;
//! - reference: `gateway-bench-ref`, a minimal proxy on the gateway's own stack (tokio, hyper,
//!   hyper-util, rustls; no routing, auth, metrics or logs): what the gateway's features cost
//!   per request on top of its libraries.
//!
//! Parts:
//! - (no part flag) the comparison, one worker/thread per proxy (gateway: `proxy.workers = 1`;
//!   reference: `--workers 1`), access logs off. Loads: `wrk -t1 -c50 --latency` keepalive;
//!   the same with `Connection: close`; `h2load -t1 -c10 -m10`; a fixed rate (open loop,
//!   [`openloop`], latency from the scheduled send time) at half of nginx's keep-alive maximum
//!   measured just before, for p50/p99 below saturation. Contenders alternate within every
//!   round (A B C D E A B C D E …); medians over rounds.
//! - `--defaults`: the same comparison with every proxy at its default worker/thread count,
//!   logging every request (nginx `access_log` and HAProxy `option httplog` to files, the
//!   gateway's default access log at info; the reference logs nothing).
//! - `--scaling`: req/s of the gateway (`proxy.workers` = 1…nproc) and of nginx
//!   (`worker_processes` 1…nproc) under the keep-alive and h2 loads, access logs off,
//!   alternated within rounds.
//! - `--idle`: memory while holding [`IDLE_CONNECTIONS`] idle TLS connections ([`idle`]: one
//!   request answered on each, then kept alive) per proxy, at default worker counts, access
//!   logs off, connection limits raised where they are below that.
//! - `--fleet`: two gateways of one fleet (a one-member etcd), defaults and logging: the
//!   sandbox through the gateway that runs it ("local") and through the other one, which
//!   forwards to it over the fleet's mutual TLS ("forwarded"), keep-alive and h2 alternated;
//!   then the replica at scale: [`FLEET_SCALE`] sandboxes of another host written into etcd,
//!   a gateway started on them (its load time, its memory against a gateway on an empty
//!   prefix).
//!
//! Names resolve through a private /etc/hosts bind-mounted in a private mount namespace around
//! each client (`unshare -m`): the host's /etc/hosts is never touched.
//!
//! Usage: `gateway-bench-http [--quick] [--defaults | --scaling | --idle] [--hold] [--out DIR]`
//! (root; GATEWAY_BIN = release gateway; `gateway-bench-ref` next to this binary or at
//! GATEWAY_BENCH_REF). Writes DIR/http.{json,md,svg} (`--defaults`: http-defaults.*),
//! DIR/scaling.{json,md} or DIR/idle.{json,md}. `--hold` (with or without `--defaults`) only
//! sets the comparison up, prints the contenders' pids and client commands (for
//! `perf record -p PID`) and waits.

use std::{
    fs,
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use gateway_tests::{
    attack::raise_nofile,
    benchkit::{Proc, run_ok},
    edge::{WS, create_token, register, sandbox_host},
    gateway_process::{GatewayProcess, TempDir, temp_dir},
    harness::{BpffsDir, Sandbox, SandboxLink, require_root},
    idle, openloop,
};
use serde_json::{Value, json};

const BACKEND_PLAIN: u16 = 3000;
const BACKEND_TLS: u16 = 3443;
/// Idle connections held per proxy by `--idle`.
const IDLE_CONNECTIONS: usize = 10_000;
/// Connection limits of the proxies under `--idle`: room for the idle connections, their
/// upstream connections and the bench's own checks.
const MANY_CONNECTIONS: usize = 20_000;
const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// All pids of the process tree rooted at `root` (nginx master + workers, ip netns exec chains).
fn tree(root: u32) -> Vec<u32> {
    let mut all = vec![root];
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
            if let Some(pp) = stat_field(pid, 4)
                && pp as u32 == p
                && !all.contains(&pid)
            {
                all.push(pid);
                frontier.push(pid);
            }
        }
    }
    all
}

/// Field `n` (1-based, as in proc(5)) of /proc/PID/stat.
fn stat_field(pid: u32, n: usize) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    rest.split_whitespace().nth(n - 3)?.parse().ok()
}

/// utime + stime of these processes, seconds.
fn cpu_seconds(pids: &[u32]) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    pids.iter().map(|p| stat_field(*p, 14).unwrap_or(0) + stat_field(*p, 15).unwrap_or(0)).sum::<u64>() as f64 / tck
}

/// The sum over these processes of a kB line of /proc/PID/`file` (`VmRSS:`, `VmHWM:` in
/// `status`, `Pss:` in `smaps_rollup`), KiB.
fn proc_kib(pids: &[u32], file: &str, field: &str) -> u64 {
    pids.iter()
        .map(|p| {
            fs::read_to_string(format!("/proc/{p}/{file}"))
                .ok()
                .and_then(|s| {
                    s.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
                })
                .unwrap_or(0)
        })
        .sum()
}

fn hwm_kib(pids: &[u32]) -> u64 {
    proc_kib(pids, "status", "VmHWM:")
}

fn free_port() -> u16 {
    gateway_tests::gateway_process::free_port()
}

/// Waits until something listens on 127.0.0.1:`port`; `what` names it in the panic otherwise.
fn wait_port(port: u16, what: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{} did not listen on {port}", what());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

struct Contender {
    name: &'static str,
    url: String,
    /// The same, for the open-loop and idle clients (which resolve nothing).
    target: openloop::Target,
    headers: Vec<String>,
    /// Process tree whose CPU and memory count as "the proxy".
    pids: Vec<u32>,
}

impl Contender {
    fn new(
        name: &'static str,
        ip: IpAddr,
        port: u16,
        host: &str,
        path: &str,
        headers: Vec<String>,
        pids: Vec<u32>,
    ) -> Self {
        let target = openloop::Target {
            addr: (ip, port).into(),
            host: host.to_string(),
            path: path.to_string(),
            headers: headers
                .iter()
                .filter_map(|h| h.split_once(": ").map(|(k, v)| (k.to_string(), v.to_string())))
                .collect(),
        };
        Contender { name, url: format!("https://{host}:{port}{path}"), target, headers, pids }
    }
}

#[derive(Clone, Copy, Default)]
struct Sample {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    cpu_per_10k: f64,
    errors: u64,
}

fn parse_latency(s: &str) -> f64 {
    let s = s.trim();
    let (num, mul) = if let Some(v) = s.strip_suffix("us") {
        (v, 0.001)
    } else if let Some(v) = s.strip_suffix("ms") {
        (v, 1.0)
    } else if let Some(v) = s.strip_suffix('s') {
        (v, 1000.0)
    } else {
        (s, 1.0)
    };
    num.parse::<f64>().unwrap_or(f64::NAN) * mul
}

fn client(hosts: &Path, program: &str) -> Command {
    let mut cmd = Command::new("unshare");
    cmd.args(["-m", "--propagation", "private", "sh", "-c", r#"mount --bind "$0" /etc/hosts && exec "$@""#])
        .arg(hosts)
        .arg(program);
    cmd
}

#[derive(Clone, Copy, PartialEq)]
enum Load {
    Keepalive,
    Close,
    H2,
    /// Open loop at a fixed rate (half of nginx's keep-alive maximum), HTTP/1.1 keep-alive.
    FixedRate,
}

impl Load {
    fn name(self) -> &'static str {
        match self {
            Load::Keepalive => "h1 keepalive (wrk -t1 -c50)",
            Load::Close => "h1 Connection: close (wrk -t1 -c50)",
            Load::H2 => "h2 (h2load -t1 -c10 -m10)",
            Load::FixedRate => "h1 fixed rate (open loop, 50 conns)",
        }
    }
    fn key(self) -> &'static str {
        match self {
            Load::Keepalive => "h1_keepalive",
            Load::Close => "h1_close",
            Load::H2 => "h2",
            Load::FixedRate => "h1_fixed_rate",
        }
    }
}

fn run_load(load: Load, c: &Contender, hosts: &Path, secs: u64, tmp: &Path, rate: f64) -> Sample {
    let cpu0 = cpu_seconds(&c.pids);
    let (requests, rps, p50, p99, errors);
    match load {
        Load::FixedRate => {
            let o = openloop::run(&c.target, rate, Duration::from_secs(secs), 50);
            (requests, rps, p50, p99, errors) = (o.ok as f64, o.achieved_rps, o.p50_ms, o.p99_ms, o.errors);
        }
        Load::Keepalive | Load::Close => {
            let mut cmd = client(hosts, "wrk");
            cmd.args(["-t1", "-c50", "--latency", "-d", &format!("{secs}s")]);
            for h in &c.headers {
                cmd.args(["-H", h]);
            }
            if load == Load::Close {
                cmd.args(["-H", "Connection: close"]);
            }
            cmd.arg(&c.url);
            let out = run_ok(&mut cmd, "wrk");
            let find = |prefix: &str| out.lines().map(str::trim).find(|l| l.starts_with(prefix)).map(str::to_string);
            rps = find("Requests/sec:").and_then(|l| l.split_whitespace().nth(1)?.parse().ok()).unwrap_or(0.0);
            requests = out
                .lines()
                .find(|l| l.contains(" requests in "))
                .and_then(|l| l.split_whitespace().next()?.parse::<f64>().ok())
                .unwrap_or(0.0);
            p50 = find("50%").map(|l| parse_latency(l.split_whitespace().nth(1).unwrap_or(""))).unwrap_or(f64::NAN);
            p99 = find("99%").map(|l| parse_latency(l.split_whitespace().nth(1).unwrap_or(""))).unwrap_or(f64::NAN);
            let non2xx = find("Non-2xx").and_then(|l| l.rsplit(' ').next()?.parse().ok()).unwrap_or(0u64);
            let sock = find("Socket errors:")
                .map(|l| l.split(',').filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok()).sum::<u64>())
                .unwrap_or(0);
            errors = non2xx + sock;
        }
        Load::H2 => {
            let log = tmp.join("h2load.log");
            let _ = fs::remove_file(&log);
            let mut cmd = client(hosts, "h2load");
            cmd.args(["-t1", "-c10", "-m10", "-D", &secs.to_string()]).arg(format!("--log-file={}", log.display()));
            for h in &c.headers {
                cmd.args(["-H", h]);
            }
            cmd.arg(&c.url);
            let out = run_ok(&mut cmd, "h2load");
            rps = out
                .lines()
                .find(|l| l.starts_with("finished in"))
                .and_then(|l| l.split(", ").nth(1)?.split_whitespace().next()?.parse().ok())
                .unwrap_or(0.0);
            let reqline = out.lines().find(|l| l.starts_with("requests:")).unwrap_or("");
            let num = |word: &str| -> u64 {
                reqline
                    .split(',')
                    .find(|p| p.trim().ends_with(word))
                    .and_then(|p| p.split_whitespace().next()?.parse().ok())
                    .unwrap_or(0)
            };
            requests = num("succeeded") as f64;
            errors = num("failed") + num("errored");
            // --log-file: start time, status, duration in µs per request.
            let mut lat: Vec<f64> = fs::read_to_string(&log)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.split('\t').nth(2)?.trim().parse::<f64>().ok())
                .map(|us| us / 1000.0)
                .collect();
            lat.sort_by(f64::total_cmp);
            let pct =
                |p: f64| if lat.is_empty() { f64::NAN } else { lat[((lat.len() - 1) as f64 * p).round() as usize] };
            p50 = pct(0.5);
            p99 = pct(0.99);
        }
    }
    let cpu = cpu_seconds(&c.pids) - cpu0;
    Sample {
        rps,
        p50_ms: p50,
        p99_ms: p99,
        cpu_per_10k: if requests > 0.0 { cpu * 10_000.0 / requests } else { f64::NAN },
        errors,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() { f64::NAN } else { v[v.len() / 2] }
}

fn write_certs(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let key = dir.join("key.pem");
    let cert = dir.join("cert.pem");
    run_ok(
        Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=local.gw.test",
                "-addext",
                "subjectAltName=DNS:*.local.gw.test,DNS:local.gw.test",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert),
        "openssl req",
    );
    // openssl writes PKCS#8 ("BEGIN PRIVATE KEY"), which rustls, nginx and HAProxy all read.
    let combined = dir.join("combined.pem");
    fs::write(
        &combined,
        [fs::read(&cert).expect("read the certificate"), fs::read(&key).expect("read the key")].concat(),
    )
    .expect("write the combined PEM");
    (cert, key, combined)
}

/// How the proxies of one invocation are configured.
#[derive(Clone, Copy)]
struct Profile {
    /// Worker processes/threads of every proxy; `None`: each one's default.
    workers: Option<usize>,
    /// Every request logged (nginx and HAProxy to files, the gateway's default access log).
    logs: bool,
    /// Connection limits raised to [`MANY_CONNECTIONS`] (for `--idle`).
    many: bool,
}

/// An nginx configuration's common part (`workers` None: `auto`, nginx's recommended setting).
fn nginx_common(tmp: &Path, name: &str, workers: Option<usize>, logs: bool, many: bool) -> String {
    let d = tmp.join(name);
    fs::create_dir_all(&d).expect("create the peer's directory");
    let workers = workers.map_or_else(|| "auto".to_string(), |n| n.to_string());
    let access_log = if logs { format!("{}/access.log", d.display()) } else { "off".into() };
    // Each worker may end up with every connection (accepts are not spread evenly), and holds
    // its upstream connection for each request in flight; the workers get the file descriptor
    // limit this process has (nginx warns when worker_connections exceeds it).
    let limits = if many {
        let nofile = nofile_limit();
        format!(
            "worker_rlimit_nofile {nofile};\nevents {{ worker_connections {}; }}\n",
            (MANY_CONNECTIONS as u64).min(nofile)
        )
    } else {
        "events { worker_connections 4096; }\n".into()
    };
    format!(
        "worker_processes {workers};\nuser root;\npid {d}/nginx.pid;\nerror_log {d}/error.log error;\n\
         {limits}http {{\n  access_log {access_log};\n  client_body_temp_path {d}/body;\n\
         proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
         keepalive_requests 1000000;\n  ssl_protocols TLSv1.3;\n  ssl_session_cache off;\n",
        d = d.display()
    )
}

/// What every part shares: certificates, the backend in its sandbox, the gateway with the
/// sandbox registered, and the hosts file of the clients. Fields drop in order: the gateway
/// before its pins, processes before the links they use.
struct Topology {
    gw: GatewayProcess,
    _pins: BpffsDir,
    backend: Proc,
    _link_b: SandboxLink,
    _sb: Sandbox,
    tmp: TempDir,
    cert: PathBuf,
    key: PathBuf,
    combined: PathBuf,
    /// The backend's address on link B (nginx, HAProxy, reference, direct).
    b_addr: Ipv4Addr,
    hosts: PathBuf,
    gw_host: String,
    token: String,
}

impl Topology {
    fn new(profile: Profile) -> Topology {
        Self::with_config(profile, "")
    }

    /// [`Topology::new`] with `more` appended to the gateway's configuration.
    fn with_config(profile: Profile, more: &str) -> Topology {
        let tmp = temp_dir("gateway-bench-http");
        let (cert, key, combined) = write_certs(tmp.path());

        // Sandbox namespace with the backend, two links (A registered with the gateway, B not).
        let sb = Sandbox::new();
        // Link B brings its own default route; link A's peer stays reachable by its connected /30.
        sb.ns.ip(&["route", "del", "default"]).expect("drop link A's default route");
        let link_b = SandboxLink::new(&sb.ns);
        let b_addr = link_b.sandbox_addr();
        let backend_conf = tmp.path().join("backend.conf");
        fs::write(
            &backend_conf,
            nginx_common(tmp.path(), "backend", Some(1), false, false)
                + &format!(
                    "  server {{ listen {BACKEND_PLAIN} reuseport; listen {BACKEND_TLS} ssl http2 reuseport;\n\
                     ssl_certificate {cert}; ssl_certificate_key {key};\n  location / {{ return 200 \"ok\\n\"; }} }}\n}}\n",
                    cert = cert.display(),
                    key = key.display()
                ),
        )
        .expect("write a configuration file");
        let backend =
            Proc::spawn(sb.ns.command("nginx").args(["-g", "daemon off;", "-c"]).arg(&backend_conf), "backend nginx");

        // The gateway: data plane on, same certificate; its default `proxy.max_connections`
        // (10,000) is exactly what `--idle` holds, without room for the bench's own checks.
        let pins = BpffsDir::new();
        let mut extra = format!("\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n", cert.display(), key.display());
        if profile.many {
            extra.push_str(&format!("\n[proxy]\nmax_connections = {MANY_CONNECTIONS}\n"));
        }
        extra.push_str(more);
        let mut gw = GatewayProcess::enforcing(pins.path(), &extra);
        set_gateway_workers(&gw, profile.workers);
        gw.set_log_filter(if profile.logs { "info,rustls=error" } else { "warn" });
        gw.spawn();
        register(&gw, WS, "web", &sb, &[(BACKEND_PLAIN, "HTTP")]);
        let token = create_token(&gw, WS, "bench");
        let gw_host = sandbox_host("web");

        let hosts = tmp.path().join("hosts");
        fs::write(
            &hosts,
            format!(
                "127.0.0.1 localhost\n127.0.0.1 {gw_host} nginx.local.gw.test haproxy.local.gw.test reference.local.gw.test\n\
                 {b_addr} direct.local.gw.test\n"
            ),
        )
        .expect("write a configuration file");
        Topology {
            gw,
            _pins: pins,
            backend,
            _link_b: link_b,
            _sb: sb,
            tmp,
            cert,
            key,
            combined,
            b_addr,
            hosts,
            gw_host,
            token,
        }
    }

    fn dir(&self) -> &Path {
        self.tmp.path()
    }

    /// The gateway again with `workers` edge workers (`None`: its default, one per CPU).
    fn restart_gateway(&mut self, workers: Option<usize>) {
        set_gateway_workers(&self.gw, workers);
        self.gw.restart();
    }

    /// nginx as a reverse proxy on `port`; as many idle upstream connections as the gateway's
    /// pool keeps (256).
    fn nginx(&self, name: &str, port: u16, profile: Profile) -> Proc {
        let conf = self.dir().join(format!("{name}.conf"));
        fs::write(
            &conf,
            nginx_common(self.dir(), name, profile.workers, profile.logs, profile.many)
                + &format!(
                    "  upstream backend {{ server {b}:{BACKEND_PLAIN}; keepalive 256; keepalive_requests 1000000; }}\n\
                     server {{ listen 127.0.0.1:{port} ssl http2; ssl_certificate {cert}; ssl_certificate_key {key};\n\
                     location / {{ proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}\n}}\n",
                    b = self.b_addr,
                    cert = self.cert.display(),
                    key = self.key.display()
                ),
        )
        .expect("write a configuration file");
        let p = Proc::spawn(Command::new("nginx").args(["-g", "daemon off;", "-c"]).arg(&conf), "proxy nginx");
        wait_port(port, || "nginx".into());
        p
    }

    /// HAProxy on `port` (`workers` None: one thread per CPU, its default).
    fn haproxy(&self, port: u16, profile: Profile) -> Proc {
        let conf = self.dir().join("haproxy.cfg");
        // `--idle` keeps connections open for as long as nginx's default keepalive_timeout
        // (75 s); HAProxy's idle keep-alive timeout is `timeout client` when nothing else is set.
        let client_timeout = if profile.many { "75s" } else { "30s" };
        // HAProxy wants two descriptors per connection (client and server side) and refuses to
        // start when it cannot raise RLIMIT_NOFILE that far (without CAP_SYS_RESOURCE, e.g. in
        // a container); idle client connections need one, so it runs with the limit it gets.
        let strict = if profile.many { "  no strict-limits\n" } else { "" };
        fs::write(
            &conf,
            format!(
                "global\n  {threads}maxconn {maxconn}\n{strict}  ssl-default-bind-options ssl-min-ver TLSv1.3\n{log_global}\
                 defaults\n  mode http\n  timeout connect 5s\n  timeout client {client_timeout}\n  timeout server 30s\n  http-reuse always\n{log_defaults}\
                 frontend fe\n  bind 127.0.0.1:{port} ssl crt {combined} alpn h2,http/1.1\n  default_backend be\n\
                 backend be\n  server s1 {b}:{BACKEND_PLAIN}\n",
                b = self.b_addr,
                combined = self.combined.display(),
                threads = profile.workers.map_or_else(String::new, |n| format!("nbthread {n}\n  ")),
                maxconn = if profile.many { MANY_CONNECTIONS } else { 4000 },
                log_global = if profile.logs { "  log stdout format raw local0\n" } else { "" },
                log_defaults = if profile.logs { "  log global\n  option httplog\n" } else { "" },
            ),
        )
        .expect("write a configuration file");
        let log = fs::File::create(self.dir().join("haproxy.log")).expect("haproxy log file");
        // Its start-up notices and warnings (the file descriptor limit under `--idle`) go to a
        // file, shown if it does not come up.
        let stderr_path = self.dir().join("haproxy.stderr");
        let stderr = fs::File::create(&stderr_path).expect("haproxy stderr file");
        let p =
            Proc::spawn(Command::new("haproxy").arg("-f").arg(&conf).arg("-db").stdout(log).stderr(stderr), "haproxy");
        wait_port(port, || format!("haproxy ({})", fs::read_to_string(&stderr_path).unwrap_or_default().trim()));
        p
    }

    /// The reference proxy on `port` (`workers` None: tokio's default, one per CPU).
    fn reference(&self, port: u16, workers: Option<usize>) -> Proc {
        let mut cmd = Command::new(reference_bin());
        cmd.arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--cert")
            .arg(&self.cert)
            .arg("--key")
            .arg(&self.key)
            .arg("--upstream")
            .arg(format!("{}:{BACKEND_PLAIN}", self.b_addr))
            .env_remove("TOKIO_WORKER_THREADS");
        if let Some(n) = workers {
            cmd.arg("--workers").arg(n.to_string());
        }
        let p = Proc::spawn(&mut cmd, "gateway-bench-ref");
        wait_port(port, || "gateway-bench-ref".into());
        p
    }

    /// nginx (configuration `nginx_name`), HAProxy and the reference started on free ports, and
    /// the contenders: the gateway, then those three (kept running until the processes drop).
    fn proxies(
        &self,
        nginx_name: &str,
        profile: Profile,
        reference_workers: Option<usize>,
    ) -> ([Proc; 3], Vec<Contender>) {
        let ports = [free_port(), free_port(), free_port()];
        let procs = [
            self.nginx(nginx_name, ports[0], profile),
            self.haproxy(ports[1], profile),
            self.reference(ports[2], reference_workers),
        ];
        let contenders = vec![
            self.gateway_contender(),
            local_proxy("nginx", ports[0], &procs[0]),
            local_proxy("haproxy", ports[1], &procs[1]),
            local_proxy("reference", ports[2], &procs[2]),
        ];
        (procs, contenders)
    }

    fn gateway_contender(&self) -> Contender {
        Contender::new(
            "gateway",
            LOCALHOST,
            self.gw.https_port(),
            &self.gw_host,
            &format!("/port/{BACKEND_PLAIN}/"),
            vec![format!("Authorization: Bearer {}", self.token)],
            vec![self.gw.pid().expect("gateway pid")],
        )
    }

    /// Asserts that the contender answers 200 (through the whole chain) before anything is timed.
    fn check(&self, c: &Contender) {
        let mut cmd = client(&self.hosts, "curl");
        cmd.args(["-sk", "--tlsv1.3", "-o", "/dev/null", "-w", "%{http_code}"]);
        for h in &c.headers {
            cmd.args(["-H", h]);
        }
        let code = run_ok(cmd.arg(&c.url), "curl");
        assert!(code.trim() == "200", "{} answered {code} at {}", c.name, c.url);
    }
}

/// Sets the gateway's `proxy.workers` (`None`: its default, one per CPU) in its configuration
/// file, read when it starts.
fn set_gateway_workers(gw: &GatewayProcess, workers: Option<usize>) {
    gw.edit_config(|config| {
        let mut lines: Vec<String> =
            config.lines().filter(|l| !l.trim_start().starts_with("workers =")).map(str::to_owned).collect();
        if let Some(n) = workers {
            match lines.iter().position(|l| l.trim() == "[proxy]") {
                Some(i) => lines.insert(i + 1, format!("workers = {n}")),
                None => lines.extend(["[proxy]".to_owned(), format!("workers = {n}")]),
            }
        }
        lines.join("\n") + "\n"
    });
}

/// This process's RLIMIT_NOFILE (soft), which its children inherit.
fn nofile_limit() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit with a valid pointer to a local struct.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0, "getrlimit");
    lim.rlim_cur
}

/// `gateway-bench-ref`: $GATEWAY_BENCH_REF, else next to this binary (cargo builds both into
/// the same directory).
/// A proxy on 127.0.0.1 answering `https://{name}.local.gw.test:{port}/`, measured over the
/// process tree of `proc`.
fn local_proxy(name: &'static str, port: u16, proc: &Proc) -> Contender {
    Contender::new(name, LOCALHOST, port, &format!("{name}.local.gw.test"), "/", vec![], tree(proc.pid()))
}

fn reference_bin() -> PathBuf {
    let bin = std::env::var_os("GATEWAY_BENCH_REF")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::current_exe().expect("this binary's path").with_file_name("gateway-bench-ref"));
    assert!(
        bin.is_file(),
        "{} is missing: cargo build --release -p gateway-tests --bin gateway-bench-ref (or set GATEWAY_BENCH_REF)",
        bin.display()
    );
    bin
}

/// The worker counts of `--scaling`: 1…nproc, thinned to powers of two beyond 8.
fn worker_counts() -> Vec<usize> {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    if n <= 8 {
        (1..=n).collect()
    } else {
        let mut v: Vec<usize> = std::iter::successors(Some(1usize), |c| Some(c * 2)).take_while(|c| *c < n).collect();
        v.push(n);
        v
    }
}

fn main() {
    require_root();
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| args.iter().any(|a| a == name);
    let quick = flag("--quick");
    let hold = flag("--hold");
    // Every proxy at its default worker/thread count, logging every request (nginx and HAProxy
    // to a file, the gateway its default access log): what a user's first benchmark compares.
    let defaults = flag("--defaults");
    let out_dir = args
        .iter()
        .position(|a| a == "--out")
        .and_then(|i| args.get(i + 1))
        .map_or_else(|| PathBuf::from("target/bench"), PathBuf::from);
    fs::create_dir_all(&out_dir).expect("create the output dir");
    for tool in ["wrk", "h2load", "nginx", "haproxy", "openssl", "unshare", "curl"] {
        assert!(
            Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().is_ok_and(|o| o.status.success()),
            "{tool} is missing (cargo xtask bench installs wrk, nghttp2-client, nginx, haproxy)"
        );
    }
    reference_bin();
    // The idle part holds 10,000 connections in this process and as many in each proxy, which
    // inherit this limit (up to the hard limit when the hard one cannot be raised).
    let nofile = raise_nofile(2 * MANY_CONNECTIONS as u64);
    if flag("--fleet") {
        fleet_part(quick, &out_dir);
    } else if flag("--idle") {
        assert!(nofile >= IDLE_CONNECTIONS as u64 + 1024, "RLIMIT_NOFILE {nofile} is too low for --idle");
        idle_part(quick, &out_dir);
    } else if flag("--scaling") {
        scaling(quick, &out_dir);
    } else {
        let profile = if defaults {
            Profile { workers: None, logs: true, many: false }
        } else {
            Profile { workers: Some(1), logs: false, many: false }
        };
        compare(quick, hold, profile, &out_dir);
    }
}

/// Waits for Ctrl-C or SIGTERM (`--hold`).
fn wait_for_signal() {
    static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    extern "C" fn stop(_: libc::c_int) {
        STOP.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    // SAFETY: the handler only stores to an atomic (async-signal-safe).
    unsafe {
        libc::signal(libc::SIGINT, stop as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, stop as *const () as libc::sighandler_t);
    }
    while !STOP.load(std::sync::atomic::Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Contender order in the comparison; the ratio columns look them up by name.
const DIRECT: usize = 0;
const GATEWAY: usize = 1;
const NGINX: usize = 2;
const HAPROXY: usize = 3;
const REFERENCE: usize = 4;

/// The comparison (one worker each, or `--defaults`).
fn compare(quick: bool, hold: bool, profile: Profile, out_dir: &Path) {
    // Quick: 5 contenders × 4 loads × 3 rounds × 2 s = 2 min of load. Full: 5 s per run keeps
    // both comparisons, the scaling and idle parts and the data plane within half an hour.
    let (rounds, secs) = if quick { (3, 2) } else { (5, 5) };
    let started = Instant::now();
    let top = Topology::new(profile);
    let (proxies, mut others) = top.proxies("proxy-nginx", profile, profile.workers);
    // The proxies have just started: let their workers settle before the first check.
    std::thread::sleep(Duration::from_millis(300));

    let mut contenders = vec![Contender::new(
        "direct",
        top.b_addr.into(),
        BACKEND_TLS,
        "direct.local.gw.test",
        "/",
        vec![],
        tree(top.backend.pid()),
    )];
    contenders.append(&mut others);
    for c in &contenders {
        top.check(c);
    }

    if hold {
        // Profiling: everything stays up; the client commands work as pasted (root).
        println!("# holding the bench topology (Ctrl-C or `kill {}` ends it and cleans up)", std::process::id());
        for c in &contenders {
            let hdr: String = c.headers.iter().map(|h| format!(" -H '{h}'")).collect();
            let pre = format!(
                "unshare -m --propagation private sh -c 'mount --bind {} /etc/hosts && exec \"$0\" \"$@\"'",
                top.hosts.display()
            );
            println!("{}: pids {:?}", c.name, c.pids);
            println!("  {pre} wrk -t1 -c50 -d10s{hdr} {}", c.url);
            println!("  {pre} h2load -t1 -c10 -m10 -D 10{hdr} {}", c.url);
        }
        wait_for_signal();
        // Everything (processes, namespaces, links, pins) goes on drop.
        drop((proxies, top));
        return;
    }

    println!(
        "# HTTP proxy benchmark ({}{}): {rounds} alternated rounds × {secs} s per contender and load",
        if quick { "quick" } else { "full" },
        if profile.logs { ", defaults with access logs" } else { ", one worker each, access logs off" }
    );
    let loads = [Load::Keepalive, Load::Close, Load::H2, Load::FixedRate];
    // samples[load][contender][round]
    let mut samples = vec![vec![Vec::<Sample>::new(); contenders.len()]; loads.len()];
    let mut rate = f64::NAN;
    for (li, load) in loads.iter().enumerate() {
        if *load == Load::FixedRate {
            // Half of nginx's keep-alive maximum, measured above in this run.
            rate = (median(samples[0][NGINX].iter().map(|s| s.rps).collect()) / 2.0).round().max(100.0);
            println!("fixed-rate load: {rate} req/s");
        }
        for round in 0..rounds {
            for (ci, c) in contenders.iter().enumerate() {
                let s = run_load(*load, c, &top.hosts, secs, top.dir(), rate);
                if s.errors > 0 {
                    eprintln!("warning: {} / {}: {} errors in round {round}", c.name, load.name(), s.errors);
                }
                samples[li][ci].push(s);
            }
        }
    }
    let rss: Vec<u64> = contenders.iter().map(|c| hwm_kib(&c.pids)).collect();

    // Summaries.
    let mut table = String::new();
    table.push_str(
        "| load | contender | req/s median | req/s min–max | × nginx | × HAProxy | × direct | × reference \
         | p50 ms | p99 ms | CPU s / 10k req | peak RSS MiB |\n",
    );
    table.push_str("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    let mut json_loads = serde_json::Map::new();
    let mut verdicts = Vec::new();
    let label = |l: Load| {
        if l == Load::FixedRate {
            format!("h1 fixed rate {rate:.0} req/s (open loop, 50 conns)")
        } else {
            l.name().to_string()
        }
    };
    for (li, load) in loads.iter().enumerate() {
        let med = |ci: usize, f: fn(&Sample) -> f64| median(samples[li][ci].iter().map(f).collect());
        let rps_of = |ci: usize| med(ci, |s| s.rps);
        let (nginx_rps, haproxy_rps, direct_rps, ref_rps) =
            (rps_of(NGINX), rps_of(HAPROXY), rps_of(DIRECT), rps_of(REFERENCE));
        let mut jl = serde_json::Map::new();
        for (ci, c) in contenders.iter().enumerate() {
            let rps: Vec<f64> = samples[li][ci].iter().map(|s| s.rps).collect();
            let (min, max) = (rps.iter().copied().fold(f64::MAX, f64::min), rps.iter().copied().fold(0.0, f64::max));
            let (r, p50, p99, cpu) =
                (rps_of(ci), med(ci, |s| s.p50_ms), med(ci, |s| s.p99_ms), med(ci, |s| s.cpu_per_10k));
            let errors: u64 = samples[li][ci].iter().map(|s| s.errors).sum();
            table.push_str(&format!(
                "| {} | {} | {:.0} | {:.0}–{:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.3} | {:.1} |\n",
                label(*load),
                c.name,
                r,
                min,
                max,
                r / nginx_rps,
                r / haproxy_rps,
                r / direct_rps,
                r / ref_rps,
                p50,
                p99,
                cpu,
                mib(rss[ci]),
            ));
            jl.insert(
                c.name.into(),
                json!({"rps_median": r, "rps_min": min, "rps_max": max, "rps_rounds": rps, "p50_ms": p50, "p99_ms": p99,
                       "cpu_s_per_10k": cpu, "peak_rss_kib": rss[ci], "errors": errors,
                       "vs_nginx": r / nginx_rps, "vs_haproxy": r / haproxy_rps, "vs_direct": r / direct_rps,
                       "vs_reference": r / ref_rps}),
            );
        }
        json_loads.insert(load.key().into(), Value::Object(jl));
        let g = rps_of(GATEWAY);
        let (gp99, np99) = (med(GATEWAY, |s| s.p99_ms), med(NGINX, |s| s.p99_ms));
        // CPU per request relative to the reference: the gateway's own cost beyond its stack.
        let cpu_vs_ref = med(GATEWAY, |s| s.cpu_per_10k) / med(REFERENCE, |s| s.cpu_per_10k);
        if *load == Load::FixedRate {
            verdicts.push(format!(
                "{}: p99 {:.2} vs nginx {:.2} ms (target ≤: {}); answered {:.0} vs {:.0} req/s; CPU per request {:.2}× reference",
                label(*load),
                gp99,
                np99,
                if gp99 <= np99 { "met" } else { "NOT met" },
                g,
                nginx_rps,
                cpu_vs_ref
            ));
            continue;
        }
        verdicts.push(format!(
            "{}: gateway/nginx {:.2} (target ≥ 1.30: {}), p99 {:.2} vs {:.2} ms (target ≤: {}), gateway/direct {:.2} (target ≥ 0.55: {}), \
             gateway/reference {:.2}, CPU per request {:.2}× reference",
            label(*load),
            g / nginx_rps,
            if g / nginx_rps >= 1.3 { "met" } else { "NOT met" },
            gp99,
            np99,
            if gp99 <= np99 { "met" } else { "NOT met" },
            g / direct_rps,
            if g / direct_rps >= 0.55 { "met" } else { "NOT met" },
            g / ref_rps,
            cpu_vs_ref
        ));
    }
    println!("\n{table}");
    for v in &verdicts {
        println!("{v}");
    }
    let versions = json!({
        "nginx": run_ok(Command::new("nginx").arg("-v"), "nginx -v").trim(),
        "haproxy": run_ok(Command::new("haproxy").arg("-v"), "haproxy -v").lines().next().unwrap_or("").trim(),
        "wrk": Command::new("wrk").arg("-v").output().map(|o| String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or("").trim().to_string()).unwrap_or_default(),
        "h2load": run_ok(Command::new("h2load").arg("--version"), "h2load").trim(),
    });
    let result = json!({
        "mode": if quick { "quick" } else { "full" },
        "defaults": profile.logs,
        "rounds": rounds, "seconds_per_run": secs, "fixed_rate_rps": rate,
        "contender_order": contenders.iter().map(|c| c.name).collect::<Vec<_>>(),
        "loads": json_loads, "targets": verdicts, "versions": versions,
        "elapsed_s": started.elapsed().as_secs_f64(),
    });
    let stem = if profile.logs { "http-defaults" } else { "http" };
    fs::write(out_dir.join(format!("{stem}.json")), serde_json::to_string_pretty(&result).expect("JSON"))
        .expect("write the JSON results");
    fs::write(
        out_dir.join(format!("{stem}.md")),
        format!("{table}\n{}\n", verdicts.iter().map(|v| format!("- {v}")).collect::<Vec<_>>().join("\n")),
    )
    .expect("write the Markdown table");
    fs::write(out_dir.join(format!("{stem}.svg")), svg(&loads, &contenders, &samples)).expect("write the chart");
    println!("\nwrote {}/{stem}.{{json,md,svg}} in {:.0} s", out_dir.display(), started.elapsed().as_secs_f64());
    drop((proxies, top));
}

/// `--scaling`: the gateway's and nginx's req/s at each worker count, alternated within rounds.
fn scaling(quick: bool, out_dir: &Path) {
    let (rounds, secs) = if quick { (2, 2) } else { (3, 5) };
    let started = Instant::now();
    let counts = worker_counts();
    let profile = Profile { workers: Some(1), logs: false, many: false };
    let mut top = Topology::new(profile);
    let loads = [Load::Keepalive, Load::H2];
    let proxies = ["gateway", "nginx"];
    println!(
        "# scaling ({}): workers {counts:?}, {rounds} rounds × {secs} s per proxy, load and worker count",
        if quick { "quick" } else { "full" }
    );
    // rps[proxy][load][count][round]
    let mut rps = vec![vec![vec![Vec::<f64>::new(); counts.len()]; loads.len()]; proxies.len()];
    for _ in 0..rounds {
        for (ni, n) in counts.iter().enumerate() {
            top.restart_gateway(Some(*n));
            let port = free_port();
            let nginx = top.nginx(&format!("scale-nginx-{n}"), port, Profile { workers: Some(*n), ..profile });
            let contenders = [
                top.gateway_contender(),
                Contender::new("nginx", LOCALHOST, port, "nginx.local.gw.test", "/", vec![], tree(nginx.pid())),
            ];
            for c in &contenders {
                top.check(c);
            }
            for (li, load) in loads.iter().enumerate() {
                for (pi, c) in contenders.iter().enumerate() {
                    let s = run_load(*load, c, &top.hosts, secs, top.dir(), f64::NAN);
                    if s.errors > 0 {
                        eprintln!("warning: {} × {n} / {}: {} errors", c.name, load.name(), s.errors);
                    }
                    rps[pi][li][ni].push(s.rps);
                }
            }
        }
    }
    let mut table = String::from("| load | proxy |");
    for n in &counts {
        table.push_str(&format!(" {n} worker{} |", if *n == 1 { "" } else { "s" }));
    }
    table.push_str("\n| --- | --- |");
    table.push_str(&" ---: |".repeat(counts.len()));
    table.push('\n');
    let mut json_rows = Vec::new();
    for (li, load) in loads.iter().enumerate() {
        for (pi, proxy) in proxies.iter().enumerate() {
            let med: Vec<f64> = rps[pi][li].iter().map(|v| median(v.clone())).collect();
            table.push_str(&format!("| {} | {proxy} |", load.name()));
            for m in &med {
                table.push_str(&format!(" {m:.0} ({:.2}) |", m / med[0]));
            }
            table.push('\n');
            json_rows.push(json!({"load": load.key(), "proxy": proxy, "workers": counts, "rps_median": med,
                                   "vs_one": med.iter().map(|m| m / med[0]).collect::<Vec<_>>(), "rps_rounds": rps[pi][li]}));
        }
    }
    println!("\n{table}");
    let result = json!({
        "mode": if quick { "quick" } else { "full" }, "rounds": rounds, "seconds_per_run": secs,
        "workers": counts, "rows": json_rows, "elapsed_s": started.elapsed().as_secs_f64(),
    });
    fs::write(out_dir.join("scaling.json"), serde_json::to_string_pretty(&result).expect("JSON"))
        .expect("write scaling.json");
    fs::write(out_dir.join("scaling.md"), &table).expect("write scaling.md");
    println!("wrote {}/scaling.{{json,md}} in {:.0} s", out_dir.display(), started.elapsed().as_secs_f64());
}

/// `--idle`: each proxy's memory while it holds [`IDLE_CONNECTIONS`] idle TLS connections, one
/// proxy at a time, each freshly started (so VmHWM is this part's peak).
fn idle_part(quick: bool, out_dir: &Path) {
    let started = Instant::now();
    let profile = Profile { workers: None, logs: false, many: true };
    let top = Topology::new(profile);
    let (proxies, contenders) = top.proxies("idle-nginx", profile, None);
    for c in &contenders {
        top.check(c);
    }
    println!(
        "# idle connections ({}): {IDLE_CONNECTIONS} TLS 1.3 connections per proxy, one request each, held",
        if quick { "quick" } else { "full" }
    );
    struct Row {
        opened: usize,
        failed: usize,
        open_at_measure: usize,
        opening_s: f64,
        before_kib: u64,
        held_kib: u64,
        hwm_kib: u64,
        pss_kib: u64,
    }
    let mut rows = Vec::new();
    for c in &contenders {
        let before_kib = proc_kib(&c.pids, "status", "VmRSS:");
        let held = idle::open(&c.target, IDLE_CONNECTIONS);
        // Deferred frees and the proxies' housekeeping timers settle before the reading.
        std::thread::sleep(Duration::from_secs(1));
        let row = Row {
            opened: held.opened(),
            failed: held.failed,
            open_at_measure: held.still_open(),
            opening_s: held.opening.as_secs_f64(),
            before_kib,
            held_kib: proc_kib(&c.pids, "status", "VmRSS:"),
            hwm_kib: hwm_kib(&c.pids),
            pss_kib: proc_kib(&c.pids, "smaps_rollup", "Pss:"),
        };
        drop(held);
        println!(
            "{}: {} opened ({} failed) in {:.1} s, {} open at the reading; VmRSS {:.1} → {:.1} MiB",
            c.name,
            row.opened,
            row.failed,
            row.opening_s,
            row.open_at_measure,
            mib(row.before_kib),
            mib(row.held_kib)
        );
        rows.push(row);
        // The closes reach the proxy before the next one is loaded.
        std::thread::sleep(Duration::from_secs(1));
    }
    let nginx_held = rows[1].held_kib as f64;
    let mut table = String::from(
        "| proxy | connections open at the reading | VmRSS before MiB | VmRSS holding MiB | VmHWM MiB | PSS holding MiB \
         | KiB per connection | VmRSS × nginx |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    let mut json_rows = serde_json::Map::new();
    for (c, r) in contenders.iter().zip(&rows) {
        let per_conn = r.held_kib.saturating_sub(r.before_kib) as f64 / r.open_at_measure.max(1) as f64;
        table.push_str(&format!(
            "| {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2} |\n",
            c.name,
            r.open_at_measure,
            mib(r.before_kib),
            mib(r.held_kib),
            mib(r.hwm_kib),
            mib(r.pss_kib),
            per_conn,
            r.held_kib as f64 / nginx_held
        ));
        json_rows.insert(
            c.name.into(),
            json!({"opened": r.opened, "failed": r.failed, "open_at_reading": r.open_at_measure, "opening_s": r.opening_s,
                   "vmrss_before_kib": r.before_kib, "vmrss_holding_kib": r.held_kib, "vmhwm_kib": r.hwm_kib,
                   "pss_holding_kib": r.pss_kib, "kib_per_connection": per_conn, "vmrss_vs_nginx": r.held_kib as f64 / nginx_held}),
        );
    }
    println!("\n{table}");
    let result = json!({
        "mode": if quick { "quick" } else { "full" }, "connections": IDLE_CONNECTIONS,
        "proxies": json_rows, "elapsed_s": started.elapsed().as_secs_f64(),
    });
    fs::write(out_dir.join("idle.json"), serde_json::to_string_pretty(&result).expect("JSON"))
        .expect("write idle.json");
    fs::write(out_dir.join("idle.md"), &table).expect("write idle.md");
    println!("wrote {}/idle.{{json,md}} in {:.0} s", out_dir.display(), started.elapsed().as_secs_f64());
    drop((proxies, top));
}

/// Grouped horizontal bars: median req/s per load and contender.
fn svg(loads: &[Load], contenders: &[Contender], samples: &[Vec<Vec<Sample>>]) -> String {
    let colors = ["#888888", "#2b7bb9", "#3c9a3c", "#d9822b", "#8e44ad"];
    let max = samples.iter().flatten().flatten().map(|s| s.rps).fold(1.0, f64::max);
    let (w, label_w, bar_h) = (820.0, 260.0, 18.0);
    let mut y = 40.0;
    let mut body = String::new();
    for (li, load) in loads.iter().enumerate().filter(|(_, l)| **l != Load::FixedRate) {
        body.push_str(&format!("<text x=\"10\" y=\"{y}\" font-weight=\"bold\">{}</text>\n", load.name()));
        y += 8.0;
        for (ci, c) in contenders.iter().enumerate() {
            let r = median(samples[li][ci].iter().map(|s| s.rps).collect());
            let bw = (w - label_w - 90.0) * r / max;
            body.push_str(&format!(
                "<text x=\"20\" y=\"{ty}\">{name}</text><rect x=\"{label_w}\" y=\"{y}\" width=\"{bw:.1}\" height=\"{bar_h}\" fill=\"{col}\"/>\
                 <text x=\"{tx:.1}\" y=\"{ty}\">{r:.0} req/s</text>\n",
                ty = y + 14.0,
                name = c.name,
                col = colors[ci % colors.len()],
                tx = label_w + bw + 6.0
            ));
            y += bar_h + 4.0;
        }
        y += 22.0;
    }
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{y}\" font-family=\"sans-serif\" font-size=\"13\">\n\
         <text x=\"10\" y=\"20\" font-size=\"15\">HTTPS through a proxy: median req/s (higher is better)</text>\n{body}</svg>\n"
    )
}

/// Sandboxes of the replica-at-scale figure (`--quick`: a tenth).
const FLEET_SCALE: usize = 100_000;

/// `--fleet`: a forwarded request against a local one, and the replica at scale.
fn fleet_part(quick: bool, out_dir: &Path) {
    use gateway_tests::{
        etcd::EtcdCluster,
        fleet::{fleet_pki, fleet_section},
    };
    let (rounds, secs) = if quick { (3, 2) } else { (5, 5) };
    let etcd = EtcdCluster::start(1);
    let pki = fleet_pki(&["host-a", "host-b", "host-c"]);
    let prefix = format!("/gateway-bench-{}/", std::process::id());
    let section = |prefix: &str, host: &str| {
        fleet_section(&etcd.endpoints(), pki.path(), prefix, host, &format!("127.0.0.1:{}", free_port()))
    };
    let profile = Profile { workers: None, logs: true, many: false };
    let top = Topology::with_config(profile, &section(&prefix, "host-a"));
    let pins_b = BpffsDir::new();
    let tls = format!("\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n", top.cert.display(), top.key.display());
    let mut b = GatewayProcess::enforcing(pins_b.path(), &(tls + &section(&prefix, "host-b")));
    b.set_log_filter("info,rustls=error");
    b.spawn();
    let local = Contender { name: "local", ..top.gateway_contender() };
    let a_pid = top.gw.pid().expect("pid");
    let forwarded = Contender::new(
        "forwarded",
        LOCALHOST,
        b.https_port(),
        &top.gw_host,
        &format!("/port/{BACKEND_PLAIN}/"),
        local.headers.clone(),
        vec![b.pid().expect("pid"), a_pid],
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut cmd = client(&top.hosts, "curl");
        cmd.args(["-sk", "--tlsv1.3", "-o", "/dev/null", "-w", "%{http_code}"]);
        for h in &forwarded.headers {
            cmd.args(["-H", h]);
        }
        if run_ok(cmd.arg(&forwarded.url), "curl").trim() == "200" {
            break;
        }
        assert!(Instant::now() < deadline, "the forwarding gateway does not serve the sandbox");
        std::thread::sleep(Duration::from_millis(100));
    }
    top.check(&local);
    let contenders = [local, forwarded];
    let loads = [Load::Keepalive, Load::H2];
    // samples[load][contender] over rounds; the order of the contenders alternates per round.
    let mut samples = vec![vec![Vec::new(); contenders.len()]; loads.len()];
    for round in 0..rounds {
        for (li, load) in loads.iter().enumerate() {
            for k in 0..contenders.len() {
                let ci = (k + round) % contenders.len();
                samples[li][ci].push(run_load(*load, &contenders[ci], &top.hosts, secs, top.dir(), 0.0));
            }
        }
    }
    let mut md = String::from(
        "| load | local req/s | forwarded req/s | forwarded ÷ local | local p50 / p99 ms | forwarded p50 / p99 ms | CPU s / 10k req local / forwarded (both gateways) |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    let mut json_loads = serde_json::Map::new();
    for (li, load) in loads.iter().enumerate() {
        let m = |ci: usize, f: fn(&Sample) -> f64| median(samples[li][ci].iter().map(f).collect());
        let (l_rps, f_rps) = (m(0, |s| s.rps), m(1, |s| s.rps));
        md.push_str(&format!(
            "| {} | {:.0} | {:.0} | {:.2} | {:.2} / {:.2} | {:.2} / {:.2} | {:.3} / {:.3} |\n",
            load.name(),
            l_rps,
            f_rps,
            f_rps / l_rps,
            m(0, |s| s.p50_ms),
            m(0, |s| s.p99_ms),
            m(1, |s| s.p50_ms),
            m(1, |s| s.p99_ms),
            m(0, |s| s.cpu_per_10k),
            m(1, |s| s.cpu_per_10k),
        ));
        json_loads.insert(
            load.key().into(),
            json!({"local_rps": l_rps, "forwarded_rps": f_rps, "local_p50_ms": m(0, |s| s.p50_ms), "local_p99_ms": m(0, |s| s.p99_ms),
                   "forwarded_p50_ms": m(1, |s| s.p50_ms), "forwarded_p99_ms": m(1, |s| s.p99_ms),
                   "errors": samples[li].iter().flatten().map(|s| s.errors).sum::<u64>()}),
        );
    }
    drop(b);
    drop(top);

    // The replica at scale: sandboxes of another host (no kernel work here), written straight
    // into etcd, then a gateway started on them and one on an empty prefix.
    let n = if quick { FLEET_SCALE / 10 } else { FLEET_SCALE };
    let scale_prefix = format!("/gateway-bench-scale-{}/", std::process::id());
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let written = Instant::now();
    rt.block_on(async {
        use gateway::state::{EtcdSettings, EtcdStore, Store};
        let settings = EtcdSettings {
            endpoints: etcd.endpoints(),
            prefix: scale_prefix.clone(),
            user: None,
            replica: None,
            tls: None,
        };
        let store = std::sync::Arc::new(EtcdStore::connect(&settings).await.expect("etcd"));
        let mut tasks = tokio::task::JoinSet::new();
        for w in 0..64 {
            let store = store.clone();
            tasks.spawn(async move {
                for i in (w..n).step_by(64) {
                    let sandbox: gateway::model::sandbox::Sandbox = serde_json::from_value(json!({
                        "workspace": format!("ws{}", i % 100), "name": format!("s{i}"),
                        "address": format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255),
                        "interface": "eth0", "ports": [{"target": 3000, "protocol": "HTTP"}], "owner": "host-z"
                    }))
                    .expect("sandbox");
                    store.put_sandbox(sandbox).await.expect("put");
                }
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.expect("writer");
        }
    });
    let write_secs = written.elapsed().as_secs_f64();
    let start_on = |prefix: &str, host: &str| {
        let pins = BpffsDir::new();
        let mut gw = GatewayProcess::enforcing(pins.path(), &section(prefix, host));
        let t = Instant::now();
        gw.spawn();
        let ready = t.elapsed().as_secs_f64();
        std::thread::sleep(Duration::from_secs(1));
        let pid = gw.pid().expect("pid");
        let rss = proc_kib(&[pid], "status", "VmRSS:");
        let log = gw.log();
        let load_ms = log
            .lines()
            .find(|l| l.contains("state loaded and data plane reconciled"))
            .and_then(|l| l.split("load_micros=").nth(1)?.split_whitespace().next()?.parse::<f64>().ok())
            .map_or(f64::NAN, |us| us / 1000.0);
        (ready, rss, load_ms, gw, pins)
    };
    let (empty_ready, empty_rss, empty_load, gw_empty, pins_empty) =
        start_on(&format!("{scale_prefix}empty/"), "host-b");
    drop((gw_empty, pins_empty));
    let (full_ready, full_rss, full_load, gw_full, pins_full) = start_on(&scale_prefix, "host-c");
    let sandboxes = gw_full.client().get("/v1/sandboxes").json()["sandboxes"].as_array().map_or(0, Vec::len);
    assert_eq!(sandboxes, n, "the gateway holds every sandbox of the fleet");
    drop((gw_full, pins_full));
    let per_100k_mib = (full_rss.saturating_sub(empty_rss)) as f64 / 1024.0 * (100_000.0 / n as f64);
    md.push_str(&format!(
        "\nReplica at scale: {n} sandboxes of another host in etcd (written by 64 concurrent clients in {write_secs:.1} s). \
         A gateway started on them is ready (admin API answering) in {full_ready:.2} s, against {empty_ready:.2} s on an empty prefix; \
         the paged read of every key at one revision and the indexes built from it (the path a resync takes) took {full_load:.0} ms \
         ({empty_load:.0} ms empty). VmRSS {:.1} MiB against {:.1} MiB: **{per_100k_mib:.1} MiB per 100,000 sandboxes**.\n",
        full_rss as f64 / 1024.0,
        empty_rss as f64 / 1024.0
    ));
    print!("{md}");
    let result = json!({"mode": if quick { "quick" } else { "full" }, "rounds": rounds, "seconds_per_run": secs,
        "loads": json_loads, "scale": {"sandboxes": n, "ready_s": full_ready, "ready_empty_s": empty_ready,
        "load_ms": full_load, "rss_kib": full_rss, "rss_empty_kib": empty_rss, "mib_per_100k": per_100k_mib}});
    fs::write(out_dir.join("fleet.json"), serde_json::to_string_pretty(&result).expect("json")).expect("write");
    fs::write(out_dir.join("fleet.md"), md).expect("write");
}
