//! `cargo xtask run --demo`: a gateway with a demo sandbox, and commands to paste.
//!
//! Creates, and removes on Ctrl-C (SIGINT or SIGTERM, or when the gateway exits):
//! - `.gateway-demo/` at the workspace root: the configuration, the state (with the generated
//!   development CA), the gateway's log and the admin socket;
//! - the network namespace `gw-demo` with a veth pair (`gwdemo-h` on the host, 198.18.0.1/30;
//!   `gwdemo-s` inside, 198.18.0.2/30) standing in for a sandbox VM;
//! - inside it, the demo app (`cargo xtask demo-app`): a web app on 3000 with a WebSocket echo
//!   on `/ws`, a stand-in sandbox API on 8080, and a raw TCP line service on 7000;
//! - the gateway (`gateway serve`, HTTPS on 127.0.0.1:8443), its pinned data plane under
//!   `/sys/fs/bpf/gateway-demo`, the sandbox `acme/demo` (port 3000 declared, and 7000 as TCP
//!   with a public port on 127.0.0.1 open to 127.0.0.0/8), a workspace token, a public and a
//!   private preview of port 3000 and a preview token.
//!
//! Then it prints commands that work as pasted (curl with `--resolve` and the demo CA, so no
//! DNS or trust store change is needed), and a line `demo: ready` that tests wait for.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::{build, output, root, setup};

const NETNS: &str = "gw-demo";
const HOST_IF: &str = "gwdemo-h";
const SANDBOX_IF: &str = "gwdemo-s";
const HOST_ADDR: &str = "198.18.0.1";
const SANDBOX_ADDR: &str = "198.18.0.2";
const BPFFS: &str = "/sys/fs/bpf/gateway-demo";
const HTTPS: &str = "127.0.0.1:8443";
const WORKSPACE: &str = "acme";
const SANDBOX: &str = "demo";
const WEB_PORT: u16 = 3000;
const TCP_PORT: u16 = 7000;
/// Public TCP ports of the demo, on 127.0.0.1.
const L4_RANGE: &str = "17000-17099";
/// Where the printed `gateway tunnel` command listens.
const TUNNEL_LISTEN: &str = "127.0.0.1:17700";

/// Set by SIGINT or SIGTERM.
pub(crate) static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Sets [`STOP`] on SIGINT and SIGTERM.
pub(crate) fn install_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(sig, on_signal as *const () as libc::sighandler_t);
        }
    }
}

/// Everything the demo created, removed on drop (in reverse order).
struct Demo {
    dir: PathBuf,
    gateway_bin: PathBuf,
    gateway: Option<Child>,
    app: Option<Child>,
    netns: bool,
}

impl Drop for Demo {
    fn drop(&mut self) {
        println!("demo: removing everything it created");
        if let Some(mut gw) = self.gateway.take() {
            // SAFETY: kill(2) of our child.
            unsafe {
                libc::kill(gw.id() as libc::pid_t, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while gw.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = gw.kill();
            let _ = gw.wait();
        }
        if let Some(mut app) = self.app.take() {
            let _ = app.kill();
            let _ = app.wait();
        }
        if self.netns {
            // Deleting the namespace deletes the veth pair with it.
            let _ = Command::new("ip").args(["netns", "del", NETNS]).status();
            let _ = Command::new("ip").args(["link", "del", HOST_IF]).stderr(Stdio::null()).status();
        }
        let _ = Command::new(&self.gateway_bin)
            .args(["dataplane", "teardown", "--bpffs", BPFFS])
            .stdout(Stdio::null())
            .status();
        let _ = fs::remove_dir_all(&self.dir);
        println!("demo: removed {}, netns {NETNS}, {BPFFS}", self.dir.display());
    }
}

/// What a demo (`run --demo`, `run --fleet`) does first: the packages, a check for root (it
/// creates `what` and loads eBPF programs), the gateway binary (`gateway_bin`, else a release
/// build), the Ctrl-C handlers.
pub(crate) fn prepare(what: &str, gateway_bin: Option<PathBuf>) -> Result<PathBuf> {
    setup::run(setup::Scope::All, false)?;
    if !setup::is_root() {
        bail!("it creates {what} and loads eBPF programs: run it as root");
    }
    let gateway_bin = match gateway_bin {
        Some(b) => b,
        None => build::gateway(true)?,
    };
    install_handlers();
    Ok(gateway_bin)
}

/// Runs the demo until Ctrl-C. `gateway_bin`: a prebuilt binary instead of a release build.
pub fn run(gateway_bin: Option<PathBuf>) -> Result<()> {
    let gateway_bin = prepare("a network namespace", gateway_bin)?;
    let dir = root().join(".gateway-demo");
    cleanup_leftovers(&dir, &gateway_bin);
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut demo = Demo { dir: dir.clone(), gateway_bin: gateway_bin.clone(), gateway: None, app: None, netns: false };

    // The sandbox: a namespace behind a veth pair, the app inside.
    demo.netns = true;
    create_netns()?;
    let xtask = std::env::current_exe().context("cannot find the xtask binary")?;
    let app_log = fs::File::create(dir.join("demo-app.log"))?;
    demo.app = Some(
        Command::new("ip")
            .args(["netns", "exec", NETNS])
            .arg(&xtask)
            .args(["demo-app", "--web", &format!("0.0.0.0:{WEB_PORT}"), "--api", "0.0.0.0:8080"])
            .args(["--tcp", &format!("0.0.0.0:{TCP_PORT}")])
            .stdin(Stdio::null())
            .stdout(app_log.try_clone()?)
            .stderr(app_log)
            .spawn()
            .context("cannot start the demo app in the namespace")?,
    );

    // The gateway.
    let config = dir.join("gateway.toml");
    let admin_sock = dir.join("admin.sock");
    fs::write(&config, demo_config(&dir, &admin_sock))?;
    let log_path = dir.join("gateway.log");
    demo.gateway = Some(spawn_gateway(&gateway_bin, &config, &log_path, None)?);
    let admin = format!("unix:{}", admin_sock.display());
    let cli = |args: &[&str]| cli_json(&gateway_bin, &admin, args);
    wait_ready(&mut demo, &admin_sock, &log_path)?;

    // Register the sandbox, mint a token, make the previews.
    let sandbox = cli(&[
        "sandbox",
        "create",
        SANDBOX,
        "-w",
        WORKSPACE,
        "--address",
        SANDBOX_ADDR,
        "--interface",
        HOST_IF,
        "--port",
        &WEB_PORT.to_string(),
        "--port",
        &format!("{TCP_PORT}/tcp"),
        "--expose",
        &format!("{TCP_PORT}=127.0.0.0/8"),
    ])?;
    let token = cli(&["token", "create", WORKSPACE, "demo"])?;
    let public = cli(&[
        "preview",
        "create",
        "-w",
        WORKSPACE,
        "-s",
        SANDBOX,
        "--port",
        &WEB_PORT.to_string(),
        "--public",
        "web-public",
    ])?;
    let private =
        cli(&["preview", "create", "-w", WORKSPACE, "-s", SANDBOX, "--port", &WEB_PORT.to_string(), "web-private"])?;
    let preview_token = cli(&[
        "preview-token",
        "create",
        "-w",
        WORKSPACE,
        "-s",
        SANDBOX,
        "--name",
        "demo",
        "--ttl",
        "24h",
        "web-private",
    ])?;
    let field = |v: &Value, k: &str| -> Result<String> {
        v[k].as_str().map(str::to_owned).with_context(|| format!("no {k:?} in {v}"))
    };
    let tcp_public = sandbox["ports"]
        .as_array()
        .and_then(|ports| ports.iter().find(|p| p["target"] == TCP_PORT))
        .and_then(|p| p["public"]["port"].as_u64())
        .with_context(|| format!("no public port for {TCP_PORT} in {sandbox}"))?;
    let urls = Urls {
        sandbox: field(&sandbox, "url")?,
        public: field(&public, "url")?,
        private: field(&private, "url")?,
        tcp_public,
    };
    let secrets = Secrets { workspace: field(&token, "token")?, preview: field(&preview_token, "token")? };
    let ca = dir.join("state/tls/ca.pem");
    if !ca.is_file() {
        bail!("the gateway did not write its development CA at {}; see {}", ca.display(), log_path.display());
    }
    print_commands(&urls, &secrets, &ca, &gateway_bin, &config);
    println!("demo: gateway log {}; Ctrl-C removes everything", log_path.display());
    println!("demo: ready");

    while !STOP.load(Ordering::SeqCst) {
        if let Some(gw) = demo.gateway.as_mut()
            && let Some(status) = gw.try_wait()?
        {
            println!("demo: the gateway exited ({status}); see {}", log_path.display());
            demo.gateway = None;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(demo);
    Ok(())
}

struct Urls {
    sandbox: String,
    public: String,
    private: String,
    /// The public TCP port of the sandbox's port 7000.
    tcp_public: u64,
}

struct Secrets {
    workspace: String,
    preview: String,
}

/// `host:port` of an `https://host:port` URL.
fn authority(url: &str) -> &str {
    let rest = url.trim_start_matches("https://");
    rest.split('/').next().unwrap_or(rest)
}

fn print_commands(urls: &Urls, secrets: &Secrets, ca: &Path, gateway_bin: &Path, config: &Path) {
    let curl = |url: &str| {
        let authority = authority(url);
        format!("curl -sS --cacert {} --resolve {authority}:127.0.0.1", ca.display())
    };
    let cmd = |what: &str, line: String| println!("\n# {what}\n  $ {line}");
    println!(
        "\ndemo: the gateway serves https://{HTTPS}; sandbox {WORKSPACE}/{SANDBOX} at {SANDBOX_ADDR} (netns {NETNS}), port {WEB_PORT} declared"
    );
    cmd(
        "The web app through the sandbox URL, /port/3000 (workspace token)",
        format!(
            "{} -H 'Authorization: Bearer {}' {}/port/{WEB_PORT}/hello",
            curl(&urls.sandbox),
            secrets.workspace,
            urls.sandbox
        ),
    );
    cmd(
        "The sandbox API (8080 inside) on any other path",
        format!("{} -H 'Authorization: Bearer {}' {}/status", curl(&urls.sandbox), secrets.workspace, urls.sandbox),
    );
    cmd("Without a token: 401, as JSON", format!("{} {}/port/{WEB_PORT}/", curl(&urls.sandbox), urls.sandbox));
    cmd("The public preview of port 3000 (no token)", format!("{} {}/", curl(&urls.public), urls.public));
    cmd(
        "The private preview (preview token)",
        format!("{} -H 'X-Blaxel-Preview-Token: {}' {}/", curl(&urls.private), secrets.preview, urls.private),
    );
    cmd(
        "The WebSocket echo (HTTP/1.1 upgrade: 101, then the app's welcome frame; Ctrl-C ends it)",
        format!(
            "{} --http1.1 -N --max-time 3 -H 'Connection: Upgrade' -H 'Upgrade: websocket' -H 'Sec-WebSocket-Version: 13' -H 'Sec-WebSocket-Key: ZGVtby1kZW1vLWRlbW8tMQ==' -i {}/ws",
            curl(&urls.public),
            urls.public
        ),
    );
    let line = |port: String| format!("bash -c 'exec 3<>/dev/tcp/127.0.0.1/{port}; echo hello >&3; head -n 2 <&3'");
    cmd(
        &format!(
            "Raw TCP: port {TCP_PORT} of the sandbox on its public port {} (open to 127.0.0.0/8; the app speaks first)",
            urls.tcp_public
        ),
        line(urls.tcp_public.to_string()),
    );
    cmd(
        &format!(
            "Raw TCP through an authenticated tunnel (gateway tunnel, like kubectl port-forward) to port {TCP_PORT}"
        ),
        format!(
            "(GATEWAY_TOKEN={} timeout 5 {} tunnel {WORKSPACE}/{SANDBOX} {TCP_PORT} --listen {TUNNEL_LISTEN} --config {} &) ; sleep 1; {}",
            secrets.workspace,
            gateway_bin.display(),
            config.display(),
            line(TUNNEL_LISTEN.rsplit(':').next().unwrap_or_default().to_string())
        ),
    );
    cmd(
        "What the kernel enforces for the sandbox, read back from the maps",
        format!("{} sandbox policy {SANDBOX} -w {WORKSPACE} --config {}", gateway_bin.display(), config.display()),
    );
    cmd(
        "A direct connection (no gateway mark) is dropped by the kernel: it times out",
        format!("curl -sS --max-time 3 http://{SANDBOX_ADDR}:{WEB_PORT}/"),
    );
    cmd(
        "The admin API on its unix socket (mode 0600: only root opens it, so there is no token to leak)",
        format!(
            "curl -sS --unix-socket {} http://gateway/v1/workspaces/{WORKSPACE}/sandboxes",
            config.with_file_name("admin.sock").display()
        ),
    );
    cmd(
        "Metrics (the eBPF verdict counters are read at every scrape)",
        format!("curl -sS --unix-socket {} http://gateway/metrics", config.with_file_name("admin.sock").display()),
    );
    println!();
}

fn demo_config(dir: &Path, admin_sock: &Path) -> String {
    format!(
        r#"# Written by `cargo xtask run --demo`; removed with the demo.
domain = "gw.test"
region = "local"

[listen]
# A unix socket (mode 0600): file permissions are the admin credential, there is no token.
admin = "unix:{admin}"
https = "{HTTPS}"

[state]
dir = "{state}"

[dataplane]
bpffs = "{BPFFS}"

[l4]
# Public TCP ports on the loopback address, for the demo (a host's public address in production).
port_range = "{L4_RANGE}"
address = "127.0.0.1"
"#,
        admin = admin_sock.display(),
        state = dir.join("state").display(),
    )
}

/// Starts `gateway serve --config CONFIG` (in network namespace `netns`, if given), its output
/// to the file `log`.
pub(crate) fn spawn_gateway(gateway_bin: &Path, config: &Path, log: &Path, netns: Option<&str>) -> Result<Child> {
    let log = fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(gateway_bin);
            c
        }
        None => Command::new(gateway_bin),
    };
    cmd.args(["serve", "--config"])
        .arg(config)
        .env("GATEWAY_LOG", std::env::var("GATEWAY_LOG").unwrap_or_else(|_| "info".into()))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("cannot start the gateway")
}

/// `gateway ARGS --admin ADMIN -o json`, its answer parsed.
pub(crate) fn cli_json(gateway_bin: &Path, admin: &str, args: &[&str]) -> Result<Value> {
    let text = output(Command::new(gateway_bin).args(args).args(["--admin", admin, "-o", "json"]))?;
    serde_json::from_str(&text).with_context(|| format!("`gateway {}` did not print JSON: {text}", args.join(" ")))
}

/// Runs `ip` with `args`; fails with its output.
pub(crate) fn ip(args: &[&str]) -> Result<()> {
    output(Command::new("ip").args(args)).map(|_| ())
}

fn create_netns() -> Result<()> {
    ip(&["netns", "add", NETNS])?;
    ip(&["-n", NETNS, "link", "set", "lo", "up"])?;
    ip(&["link", "add", HOST_IF, "type", "veth", "peer", "name", SANDBOX_IF, "netns", NETNS])?;
    ip(&["addr", "add", &format!("{HOST_ADDR}/30"), "dev", HOST_IF])?;
    ip(&["link", "set", HOST_IF, "up"])?;
    ip(&["-n", NETNS, "addr", "add", &format!("{SANDBOX_ADDR}/30"), "dev", SANDBOX_IF])?;
    ip(&["-n", NETNS, "link", "set", SANDBOX_IF, "up"])?;
    ip(&["-n", NETNS, "route", "add", "default", "via", HOST_ADDR])?;
    Ok(())
}

/// Removes what an earlier demo left behind (killed with SIGKILL, say).
fn cleanup_leftovers(dir: &Path, gateway_bin: &Path) {
    let leftovers = Path::new("/run/netns").join(NETNS).exists() || dir.exists() || Path::new(BPFFS).exists();
    if leftovers {
        println!("demo: removing the leftovers of an earlier demo");
        let _ = Command::new("ip").args(["netns", "del", NETNS]).stderr(Stdio::null()).status();
        let _ = Command::new("ip").args(["link", "del", HOST_IF]).stderr(Stdio::null()).status();
        let _ =
            Command::new(gateway_bin).args(["dataplane", "teardown", "--bpffs", BPFFS]).stdout(Stdio::null()).status();
        let _ = fs::remove_dir_all(dir);
    }
}

fn wait_ready(demo: &mut Demo, admin_sock: &Path, log: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(gw) = demo.gateway.as_mut()
            && let Some(status) = gw.try_wait()?
        {
            demo.gateway = None;
            let text = fs::read_to_string(log).unwrap_or_default();
            bail!("the gateway exited during start ({status}):\n{text}");
        }
        if admin_sock.exists()
            && Command::new(&demo.gateway_bin)
                .args(["sandbox", "list", "--admin", &format!("unix:{}", admin_sock.display())])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        {
            return Ok(());
        }
        if STOP.load(Ordering::SeqCst) {
            bail!("interrupted");
        }
        if Instant::now() > deadline {
            bail!("the gateway did not answer within 60 s; see {}", log.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
