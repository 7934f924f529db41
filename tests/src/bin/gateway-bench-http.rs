//! `cargo xtask bench`: the HTTP proxy comparison.
//!
//! Topology: one sandbox namespace holding the backend (nginx `return 200`, 1 worker; plain
//! HTTP on 3000 for the proxies, TLS on 3443 for the "direct" contender) behind two veth links:
//! link A is registered with the gateway (tcx enforcement attached, reached only by the
//! gateway's marked connector), link B is unregistered and carries nginx-proxy, HAProxy and
//! direct traffic to the same backend process. Contenders on the host, all on 127.0.0.1 with the
//! same ECDSA P-256 certificate, TLS 1.3 only, one worker/thread, access logs off, keepalive
//! upstream:
//!
//! - direct: the backend's own TLS listener;
//! - gateway: `https://sbx-web-acme.local.gw.test/port/3000/` with a workspace token;
//! - nginx: reverse proxy (`proxy_pass` to an upstream with `keepalive`);
//! - haproxy: `mode http`, `http-reuse always`.
//!
//! Loads: `wrk -t1 -c50 --latency` keepalive; the same with `Connection: close`; `h2load -t1
//! -c10 -m10`; a fixed rate (open loop, [`openloop`], latency from the scheduled send time) at
//! half of nginx's keep-alive maximum measured just before, for p50/p99 below saturation. Contenders alternate within every round (A B C D A B C D …); medians over rounds.
//! Names resolve through a private /etc/hosts bind-mounted in a private mount namespace around
//! each client (`unshare -m`): the host's /etc/hosts is never touched.
//!
//! `--defaults` runs every proxy at its default worker/thread count instead, logging every
//! request (nginx `access_log` and HAProxy `option httplog` to files, the gateway's default
//! access log).
//!
//! Usage: `gateway-bench-http [--quick] [--defaults] [--hold] [--out DIR]` (root; GATEWAY_BIN = release
//! gateway). Writes DIR/http.json, DIR/http.svg and DIR/http.md. `--hold` only sets everything
//! up, prints the contenders' pids and client commands (for `perf record -p PID`) and waits.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use gateway_tests::{
    edge::{WS, create_token, register, sandbox_host},
    gateway_process::{GatewayProcess, temp_dir},
    harness::{BpffsDir, Sandbox, SandboxLink, require_root},
    openloop,
};
use serde_json::{Value, json};

const BACKEND_PLAIN: u16 = 3000;
const BACKEND_TLS: u16 = 3443;

/// A child process killed (whole process group) on drop.
struct Proc {
    child: Child,
}

impl Proc {
    fn spawn(cmd: &mut Command, what: &str) -> Proc {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0).stdin(Stdio::null());
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {what}: {e}"));
        Proc { child }
    }
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group we created for our own child.
        unsafe {
            libc::kill(-(self.child.id() as libc::pid_t), libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

fn run_ok(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(out.status.success(), "{what} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

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

fn hwm_kib(pids: &[u32]) -> u64 {
    pids.iter()
        .map(|p| {
            fs::read_to_string(format!("/proc/{p}/status"))
                .ok()
                .and_then(|s| {
                    s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
                })
                .unwrap_or(0)
        })
        .sum()
}

fn free_port() -> u16 {
    gateway_tests::gateway_process::free_port()
}

fn wait_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Contender {
    name: &'static str,
    url: String,
    /// The same, for the open-loop client (which resolves nothing).
    target: openloop::Target,
    headers: Vec<String>,
    /// Process tree whose CPU and memory count as "the proxy".
    pids: Vec<u32>,
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

/// An nginx configuration's common part: one worker and no access log, or (`defaults`) nginx's
/// own defaults, `worker_processes auto` and an access log file.
fn nginx_common(tmp: &Path, name: &str, defaults: bool) -> String {
    let d = tmp.join(name);
    fs::create_dir_all(&d).expect("create the peer's directory");
    let (workers, access_log) =
        if defaults { ("auto".to_string(), format!("{}/access.log", d.display())) } else { ("1".into(), "off".into()) };
    format!(
        "worker_processes {workers};\nuser root;\npid {d}/nginx.pid;\nerror_log {d}/error.log error;\n\
         events {{ worker_connections 4096; }}\nhttp {{\n  access_log {access_log};\n  client_body_temp_path {d}/body;\n\
         proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
         keepalive_requests 1000000;\n  ssl_protocols TLSv1.3;\n  ssl_session_cache off;\n",
        d = d.display()
    )
}

fn main() {
    require_root();
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let hold = args.iter().any(|a| a == "--hold");
    // Every proxy at its default worker/thread count, logging every request (nginx and HAProxy
    // to a file, the gateway its default access log): what a user's first benchmark compares.
    let defaults = args.iter().any(|a| a == "--defaults");
    let out_dir = args
        .iter()
        .position(|a| a == "--out")
        .and_then(|i| args.get(i + 1))
        .map_or_else(|| PathBuf::from("target/bench"), PathBuf::from);
    fs::create_dir_all(&out_dir).expect("create the output dir");
    // Quick: 4 contenders × 3 loads × 3 rounds × 2 s = 72 s of load, under two minutes in all.
    let (rounds, secs) = if quick { (3, 2) } else { (5, 10) };
    for tool in ["wrk", "h2load", "nginx", "haproxy", "openssl", "unshare"] {
        assert!(
            Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().is_ok_and(|o| o.status.success()),
            "{tool} is missing (cargo xtask bench installs wrk, nghttp2-client, nginx, haproxy)"
        );
    }
    let started = Instant::now();
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
        nginx_common(tmp.path(), "backend", false)
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

    // The gateway: data plane on, one runtime thread (like one nginx worker) unless `defaults`,
    // same certificate.
    if !defaults {
        // SAFETY: single-threaded at this point; the variable is read by the spawned gateway only.
        unsafe { std::env::set_var("TOKIO_WORKER_THREADS", "1") };
    }
    let pins = BpffsDir::new();
    let mut gw = GatewayProcess::start_enforcing_with(
        pins.path(),
        &format!("\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n", cert.display(), key.display()),
    );
    gw.set_log_filter(if defaults { "info,rustls=error" } else { "warn" });
    gw.restart();
    register(&gw, WS, "web", &sb, &[(BACKEND_PLAIN, "HTTP")]);
    let token = create_token(&gw, WS, "bench");
    let gw_host = sandbox_host("web");

    // nginx reverse proxy; as many idle upstream connections as the gateway's pool keeps (256).
    let nginx_port = free_port();
    let nginx_conf = tmp.path().join("proxy-nginx.conf");
    fs::write(
        &nginx_conf,
        nginx_common(tmp.path(), "proxy-nginx", defaults)
            + &format!(
                "  upstream backend {{ server {b_addr}:{BACKEND_PLAIN}; keepalive 256; keepalive_requests 1000000; }}\n\
                 server {{ listen 127.0.0.1:{nginx_port} ssl http2; ssl_certificate {cert}; ssl_certificate_key {key};\n\
                 location / {{ proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}\n}}\n",
                cert = cert.display(),
                key = key.display()
            ),
    )
    .expect("write a configuration file");
    let nginx = Proc::spawn(Command::new("nginx").args(["-g", "daemon off;", "-c"]).arg(&nginx_conf), "proxy nginx");

    // HAProxy.
    let haproxy_port = free_port();
    let haproxy_conf = tmp.path().join("haproxy.cfg");
    fs::write(
        &haproxy_conf,
        format!(
            "global\n  {threads}maxconn 4000\n  ssl-default-bind-options ssl-min-ver TLSv1.3\n{log_global}\
             defaults\n  mode http\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n  http-reuse always\n{log_defaults}\
             frontend fe\n  bind 127.0.0.1:{haproxy_port} ssl crt {combined} alpn h2,http/1.1\n  default_backend be\n\
             backend be\n  server s1 {b_addr}:{BACKEND_PLAIN}\n",
            combined = combined.display(),
            threads = if defaults { "" } else { "nbthread 1\n  " },
            log_global = if defaults { "  log stdout format raw local0\n" } else { "" },
            log_defaults = if defaults { "  log global\n  option httplog\n" } else { "" },
        ),
    )
    .expect("write a configuration file");
    let haproxy_log = fs::File::create(tmp.path().join("haproxy.log")).expect("haproxy log file");
    let haproxy =
        Proc::spawn(Command::new("haproxy").arg("-f").arg(&haproxy_conf).arg("-db").stdout(haproxy_log), "haproxy");

    wait_port(nginx_port, "nginx");
    wait_port(haproxy_port, "haproxy");
    std::thread::sleep(Duration::from_millis(300));

    let hosts = tmp.path().join("hosts");
    fs::write(
        &hosts,
        format!("127.0.0.1 localhost\n127.0.0.1 {gw_host} nginx.local.gw.test haproxy.local.gw.test\n{b_addr} direct.local.gw.test\n"),
    )
    .expect("write a configuration file");

    let backend_pids = tree(backend.pid());
    let contender = |name: &'static str,
                     ip: std::net::IpAddr,
                     port: u16,
                     host: &str,
                     path: &str,
                     headers: Vec<String>,
                     pids: Vec<u32>| {
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
    };
    let lo = std::net::IpAddr::from([127, 0, 0, 1]);
    let contenders = vec![
        contender("direct", b_addr.into(), BACKEND_TLS, "direct.local.gw.test", "/", vec![], backend_pids),
        contender(
            "gateway",
            lo,
            gw.https_port(),
            &gw_host,
            &format!("/port/{BACKEND_PLAIN}/"),
            vec![format!("Authorization: Bearer {token}")],
            vec![gw.pid().expect("gateway pid")],
        ),
        contender("nginx", lo, nginx_port, "nginx.local.gw.test", "/", vec![], tree(nginx.pid())),
        contender("haproxy", lo, haproxy_port, "haproxy.local.gw.test", "/", vec![], tree(haproxy.pid())),
    ];

    // Every contender answers 200 before anything is timed.
    for c in &contenders {
        let mut cmd = client(&hosts, "curl");
        cmd.args(["-sk", "--tlsv1.3", "-o", "/dev/null", "-w", "%{http_code}"]);
        for h in &c.headers {
            cmd.args(["-H", h]);
        }
        let code = run_ok(cmd.arg(&c.url), "curl");
        assert!(code.trim() == "200", "{} answered {code} at {}", c.name, c.url);
    }

    if hold {
        // Profiling: everything stays up; the client commands work as pasted (root).
        println!("# holding the bench topology (Ctrl-C or `kill {}` ends it and cleans up)", std::process::id());
        for c in &contenders {
            let hdr: String = c.headers.iter().map(|h| format!(" -H '{h}'")).collect();
            let pre = format!(
                "unshare -m --propagation private sh -c 'mount --bind {} /etc/hosts && exec \"$0\" \"$@\"'",
                hosts.display()
            );
            println!("{}: pids {:?}", c.name, c.pids);
            println!("  {pre} wrk -t1 -c50 -d10s{hdr} {}", c.url);
            println!("  {pre} h2load -t1 -c10 -m10 -D 10{hdr} {}", c.url);
        }
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
        // Everything (processes, namespaces, links, pins) goes on drop.
        drop((haproxy, nginx, gw, backend, link_b));
        return;
    }

    println!(
        "# HTTP proxy benchmark ({}{}): {rounds} alternated rounds × {secs} s per contender and load",
        if quick { "quick" } else { "full" },
        if defaults { ", defaults with access logs" } else { ", one worker each, access logs off" }
    );
    let loads = [Load::Keepalive, Load::Close, Load::H2, Load::FixedRate];
    // samples[load][contender][round]
    let mut samples = vec![vec![Vec::<Sample>::new(); contenders.len()]; loads.len()];
    let mut rate = f64::NAN;
    for (li, load) in loads.iter().enumerate() {
        if *load == Load::FixedRate {
            // Half of nginx's keep-alive maximum, measured above in this run.
            rate = (median(samples[0][2].iter().map(|s| s.rps).collect()) / 2.0).round().max(100.0);
            println!("fixed-rate load: {rate} req/s");
        }
        for round in 0..rounds {
            for (ci, c) in contenders.iter().enumerate() {
                let s = run_load(*load, c, &hosts, secs, tmp.path(), rate);
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
    table.push_str("| load | contender | req/s median | req/s min–max | p50 ms | p99 ms | CPU s / 10k req | peak RSS MiB | ×nginx | ×direct |\n");
    table.push_str("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
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
        let nginx_rps = med(2, |s| s.rps);
        let direct_rps = med(0, |s| s.rps);
        let mut jl = serde_json::Map::new();
        for (ci, c) in contenders.iter().enumerate() {
            let rps: Vec<f64> = samples[li][ci].iter().map(|s| s.rps).collect();
            let (min, max) = (rps.iter().copied().fold(f64::MAX, f64::min), rps.iter().copied().fold(0.0, f64::max));
            let (r, p50, p99, cpu) =
                (med(ci, |s| s.rps), med(ci, |s| s.p50_ms), med(ci, |s| s.p99_ms), med(ci, |s| s.cpu_per_10k));
            let errors: u64 = samples[li][ci].iter().map(|s| s.errors).sum();
            table.push_str(&format!(
                "| {} | {} | {:.0} | {:.0}–{:.0} | {:.2} | {:.2} | {:.3} | {:.1} | {:.2} | {:.2} |\n",
                label(*load),
                c.name,
                r,
                min,
                max,
                p50,
                p99,
                cpu,
                rss[ci] as f64 / 1024.0,
                r / nginx_rps,
                r / direct_rps
            ));
            jl.insert(
                c.name.into(),
                json!({"rps_median": r, "rps_min": min, "rps_max": max, "rps_rounds": rps, "p50_ms": p50, "p99_ms": p99,
                       "cpu_s_per_10k": cpu, "peak_rss_kib": rss[ci], "errors": errors,
                       "vs_nginx": r / nginx_rps, "vs_direct": r / direct_rps}),
            );
        }
        let g = med(1, |s| s.rps);
        let (gp99, np99) = (med(1, |s| s.p99_ms), med(2, |s| s.p99_ms));
        if *load == Load::FixedRate {
            verdicts.push(format!(
                "{}: p99 {:.2} vs nginx {:.2} ms (target ≤: {}); answered {:.0} vs {:.0} req/s",
                label(*load),
                gp99,
                np99,
                if gp99 <= np99 { "met" } else { "NOT met" },
                g,
                nginx_rps
            ));
            json_loads.insert(load.key().into(), Value::Object(jl));
            continue;
        }
        verdicts.push(format!(
            "{}: gateway/nginx {:.2} (target ≥ 1.30: {}), p99 {:.2} vs {:.2} ms (target ≤: {}), gateway/direct {:.2} (target ≥ 0.55: {})",
            label(*load),
            g / nginx_rps,
            if g / nginx_rps >= 1.3 { "met" } else { "NOT met" },
            gp99,
            np99,
            if gp99 <= np99 { "met" } else { "NOT met" },
            g / direct_rps,
            if g / direct_rps >= 0.55 { "met" } else { "NOT met" }
        ));
        json_loads.insert(load.key().into(), Value::Object(jl));
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
        "defaults": defaults,
        "rounds": rounds, "seconds_per_run": secs, "fixed_rate_rps": rate,
        "contender_order": contenders.iter().map(|c| c.name).collect::<Vec<_>>(),
        "loads": json_loads, "targets": verdicts, "versions": versions,
        "elapsed_s": started.elapsed().as_secs_f64(),
    });
    fs::write(out_dir.join("http.json"), serde_json::to_string_pretty(&result).expect("JSON"))
        .expect("write http.json");
    fs::write(
        out_dir.join("http.md"),
        format!("{table}\n{}\n", verdicts.iter().map(|v| format!("- {v}")).collect::<Vec<_>>().join("\n")),
    )
    .expect("write http.md");
    fs::write(out_dir.join("http.svg"), svg(&loads, &contenders, &samples)).expect("write http.svg");
    println!("\nwrote {}/http.{{json,md,svg}} in {:.0} s", out_dir.display(), started.elapsed().as_secs_f64());
    drop((haproxy, nginx, gw, backend, link_b));
}

/// Grouped horizontal bars: median req/s per load and contender.
fn svg(loads: &[Load], contenders: &[Contender], samples: &[Vec<Vec<Sample>>]) -> String {
    let colors = ["#888888", "#2b7bb9", "#3c9a3c", "#d9822b"];
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
