//! `cargo xtask run --fleet`: a fleet of three gateways on this machine, and commands to paste.
//!
//! Creates, and removes on Ctrl-C (SIGINT or SIGTERM, or when a gateway exits):
//! - `.gateway-fleet/` at the workspace root: the fleet's CA and certificates (`gateway fleet
//!   ca`, `gateway fleet cert`), each host's configuration, state, log and admin socket, etcd's
//!   data and logs;
//! - a three-member etcd cluster (Debian's etcd) on 127.0.0.1 and the hosts' uplinks;
//! - per host `host-a`, `host-b`, `host-c`: a network namespace `gwf-host-X` (its uplink a veth
//!   from this namespace, 198.18.0.{4i+4}/30) running a gateway (HTTPS on its address, port
//!   8443; the fleet listener on 9443; pins under `/sys/fs/bpf/gateway-fleet-X`), and behind it
//!   a sandbox namespace `gwf-sbx-X` (198.18.0.{32+4i}/30) running the demo app, registered as
//!   `acme/web-X` on its own host;
//! - `net.ipv4.ip_forward = 1` while it runs (the hosts reach each other through this
//!   namespace), put back as it was.
//!
//! It requests every sandbox through every gateway, prints the table, then commands that work
//! as pasted and a line `fleet: ready` that tests wait for.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{
    demo::{self, STOP, ip},
    output, root,
};

const HOSTS: [&str; 3] = ["host-a", "host-b", "host-c"];
const WORKSPACE: &str = "acme";
const WEB_PORT: u16 = 3000;
const HTTPS_PORT: u16 = 8443;
const FLEET_PORT: u16 = 9443;
const ETCD_CLIENT: u16 = 23790;
const ETCD_PEER: u16 = 23800;
const PREFIX: &str = "/gateway-demo/";

/// Host `i`'s names and addresses.
struct Host {
    name: &'static str,
    letter: char,
    i: u8,
}

impl Host {
    fn all() -> Vec<Host> {
        HOSTS.iter().enumerate().map(|(i, name)| Host { name, letter: (b'a' + i as u8) as char, i: i as u8 }).collect()
    }
    fn netns(&self) -> String {
        format!("gwf-{}", self.name)
    }
    fn sandbox_netns(&self) -> String {
        format!("gwf-sbx-{}", self.letter)
    }
    /// The uplink's end in this namespace, and in the host's.
    fn uplink(&self) -> (String, String) {
        (format!("gwf{}-u", self.letter), format!("gwf{}-n", self.letter))
    }
    fn uplink_root_addr(&self) -> String {
        format!("198.18.0.{}", 4 * self.i + 5)
    }
    fn addr(&self) -> String {
        format!("198.18.0.{}", 4 * self.i + 6)
    }
    /// The sandbox link's end in the host's namespace, and in the sandbox's.
    fn sandbox_link(&self) -> (String, String) {
        (format!("gwf{}-h", self.letter), format!("gwf{}-s", self.letter))
    }
    fn sandbox_host_addr(&self) -> String {
        format!("198.18.0.{}", 32 + 4 * self.i + 1)
    }
    fn sandbox_addr(&self) -> String {
        format!("198.18.0.{}", 32 + 4 * self.i + 2)
    }
    fn sandbox(&self) -> String {
        format!("web-{}", self.letter)
    }
    fn bpffs(&self) -> String {
        format!("/sys/fs/bpf/gateway-fleet-{}", self.letter)
    }
}

/// Everything it created, removed on drop.
struct Fleet {
    dir: PathBuf,
    gateway_bin: PathBuf,
    children: Vec<(String, Child)>,
    ip_forward: Option<String>,
}

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

impl Drop for Fleet {
    fn drop(&mut self) {
        println!("fleet: removing everything it created");
        // Gateways first (SIGTERM: they drain), then the apps and etcd.
        for (_, child) in self.children.iter_mut().rev() {
            // SAFETY: kill(2) of our child.
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for (_, child) in &mut self.children {
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        remove_everything(&self.dir, &self.gateway_bin);
        if let Some(old) = &self.ip_forward {
            let _ = fs::write(IP_FORWARD, old);
        }
        println!("fleet: removed {}, the namespaces gwf-*, the pins /sys/fs/bpf/gateway-fleet-*", self.dir.display());
    }
}

fn remove_everything(dir: &Path, gateway_bin: &Path) {
    for h in Host::all() {
        for ns in [h.netns(), h.sandbox_netns()] {
            let _ = Command::new("ip").args(["netns", "del", &ns]).stderr(Stdio::null()).status();
        }
        let _ = Command::new("ip").args(["link", "del", &h.uplink().0]).stderr(Stdio::null()).status();
        let _ = Command::new(gateway_bin)
            .args(["dataplane", "teardown", "--bpffs", &h.bpffs()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    let _ = fs::remove_dir_all(dir);
}

/// Runs the fleet until Ctrl-C. `gateway_bin`: a prebuilt binary instead of a release build.
pub fn run(gateway_bin: Option<PathBuf>) -> Result<()> {
    let gateway_bin = demo::prepare("network namespaces", gateway_bin)?;
    let dir = root().join(".gateway-fleet");
    remove_everything(&dir, &gateway_bin);
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let previous = fs::read_to_string(IP_FORWARD).context("cannot read ip_forward")?;
    let mut fleet =
        Fleet { dir: dir.clone(), gateway_bin: gateway_bin.clone(), children: Vec::new(), ip_forward: None };
    if previous.trim() != "1" {
        fs::write(IP_FORWARD, "1").context("cannot enable ip_forward")?;
        fleet.ip_forward = Some(previous);
    }
    let hosts = Host::all();

    // The fleet's certificates, made as an operator would.
    let pki = dir.join("pki");
    let pki_s = pki.to_str().context("the workspace path is not UTF-8")?;
    output(Command::new(&gateway_bin).args(["fleet", "ca", "--dir", pki_s]))?;
    for h in &hosts {
        output(Command::new(&gateway_bin).args(["fleet", "cert", h.name, "--dir", pki_s]))?;
    }

    // The namespaces: host, and the sandbox behind it.
    for h in &hosts {
        let (ns, sns) = (h.netns(), h.sandbox_netns());
        let ((up, up_n), (sh, ss)) = (h.uplink(), h.sandbox_link());
        ip(&["netns", "add", &ns])?;
        ip(&["netns", "add", &sns])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        ip(&["-n", &sns, "link", "set", "lo", "up"])?;
        ip(&["link", "add", &up, "type", "veth", "peer", "name", &up_n, "netns", &ns])?;
        ip(&["addr", "add", &format!("{}/30", h.uplink_root_addr()), "dev", &up])?;
        ip(&["link", "set", &up, "up"])?;
        ip(&["-n", &ns, "addr", "add", &format!("{}/30", h.addr()), "dev", &up_n])?;
        ip(&["-n", &ns, "link", "set", &up_n, "up"])?;
        ip(&["-n", &ns, "route", "add", "default", "via", &h.uplink_root_addr()])?;
        ip(&["-n", &ns, "link", "add", &sh, "type", "veth", "peer", "name", &ss, "netns", &sns])?;
        ip(&["-n", &ns, "addr", "add", &format!("{}/30", h.sandbox_host_addr()), "dev", &sh])?;
        ip(&["-n", &ns, "link", "set", &sh, "up"])?;
        ip(&["-n", &sns, "addr", "add", &format!("{}/30", h.sandbox_addr()), "dev", &ss])?;
        ip(&["-n", &sns, "link", "set", &ss, "up"])?;
        ip(&["-n", &sns, "route", "add", "default", "via", &h.sandbox_host_addr()])?;
    }

    // The demo app in each sandbox.
    let xtask = std::env::current_exe().context("cannot find the xtask binary")?;
    for h in &hosts {
        let log = fs::File::create(dir.join(format!("app-{}.log", h.letter)))?;
        let child = Command::new("ip")
            .args(["netns", "exec", &h.sandbox_netns()])
            .arg(&xtask)
            .args(["demo-app", "--web", &format!("0.0.0.0:{WEB_PORT}"), "--api", "0.0.0.0:8080"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start the demo app")?;
        fleet.children.push((format!("app-{}", h.letter), child));
    }

    // etcd: three members on 127.0.0.1, their client ports also on the hosts' uplinks.
    let cluster: Vec<String> = (0..3).map(|m| format!("m{m}=http://127.0.0.1:{}", ETCD_PEER + m)).collect();
    for m in 0..3u16 {
        let client = ETCD_CLIENT + m;
        let listen: Vec<String> = std::iter::once(format!("http://127.0.0.1:{client}"))
            .chain(hosts.iter().map(|h| format!("http://{}:{client}", h.uplink_root_addr())))
            .collect();
        let log = fs::File::create(dir.join(format!("etcd-m{m}.log")))?;
        let child = Command::new("etcd")
            .args(["--name", &format!("m{m}"), "--data-dir"])
            .arg(dir.join(format!("etcd/m{m}")))
            .args([
                "--listen-client-urls",
                &listen.join(","),
                "--advertise-client-urls",
                &format!("http://127.0.0.1:{client}"),
            ])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{}", ETCD_PEER + m)])
            .args(["--initial-advertise-peer-urls", &format!("http://127.0.0.1:{}", ETCD_PEER + m)])
            .args(["--initial-cluster", &cluster.join(","), "--initial-cluster-token", "gateway-fleet-demo"])
            .args(["--initial-cluster-state", "new"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start etcd (cargo xtask setup installs etcd-server)")?;
        fleet.children.push((format!("etcd-m{m}"), child));
    }
    let endpoints = (0..3).map(|m| format!("http://127.0.0.1:{}", ETCD_CLIENT + m)).collect::<Vec<_>>().join(",");
    wait_for("etcd", Duration::from_secs(30), &mut fleet, || {
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &endpoints, "put", "/gateway-demo-ready", "1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })?;

    // The gateways, each in its host's namespace.
    for h in &hosts {
        let hdir = dir.join(h.name);
        fs::create_dir_all(&hdir)?;
        let config = hdir.join("gateway.toml");
        fs::write(&config, host_config(h, &hdir, &pki))?;
        let child = demo::spawn_gateway(&gateway_bin, &config, &hdir.join("gateway.log"), Some(&h.netns()))?;
        fleet.children.push((h.name.to_string(), child));
    }
    let admin = |h: &Host| format!("unix:{}", dir.join(h.name).join("admin.sock").display());
    for h in &hosts {
        let admin = admin(h);
        let bin = gateway_bin.clone();
        wait_for(h.name, Duration::from_secs(60), &mut fleet, move || {
            Command::new(&bin)
                .args(["sandbox", "list", "--admin", &admin])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })?;
    }

    // Each sandbox registered on its own host; one token, made through host-a.
    let cli = |h: &Host, args: &[&str]| demo::cli_json(&gateway_bin, &admin(h), args);
    for h in &hosts {
        let (sh, _) = h.sandbox_link();
        cli(
            h,
            &[
                "sandbox",
                "create",
                &h.sandbox(),
                "-w",
                WORKSPACE,
                "--address",
                &h.sandbox_addr(),
                "--interface",
                &sh,
                "--port",
                &WEB_PORT.to_string(),
            ],
        )?;
    }
    let token = cli(&hosts[0], &["token", "create", WORKSPACE, "fleet-demo"])?;
    let token = token["token"].as_str().with_context(|| format!("no token in {token}"))?.to_string();

    // Every sandbox through every gateway.
    let curl = |via: &Host, target: &Host| {
        let host = format!("sbx-{}-{WORKSPACE}.local.gw.test", target.sandbox());
        format!(
            "curl -sS --cacert {ca} --resolve {host}:{HTTPS_PORT}:{addr} -H 'Authorization: Bearer {token}' https://{host}:{HTTPS_PORT}/port/{WEB_PORT}/",
            ca = dir.join(via.name).join("state/tls/ca.pem").display(),
            addr = via.addr(),
        )
    };
    println!("\nfleet: three gateways on one etcd; each sandbox requested through each gateway:");
    println!("  {:<10} {}", "through", hosts.iter().map(|t| format!("{:<8}", t.sandbox())).collect::<String>());
    let deadline = Instant::now() + Duration::from_secs(20);
    for via in &hosts {
        let mut row = String::new();
        for target in &hosts {
            let mut status;
            loop {
                let command = format!("{} -o /dev/null -w '%{{http_code}}'", curl(via, target));
                status = Command::new("sh")
                    .args(["-c", &command])
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default();
                if status == "200" || Instant::now() > deadline {
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            row.push_str(&format!("{status:<8}"));
        }
        println!("  {:<10} {row}", via.name);
    }

    let cmd = |what: &str, line: String| println!("\n# {what}\n  $ {line}");
    for (via, target) in [(&hosts[0], &hosts[1]), (&hosts[1], &hosts[2]), (&hosts[2], &hosts[0])] {
        cmd(
            &format!(
                "{} through {} (forwarded to {} over the fleet's mutual TLS)",
                target.sandbox(),
                via.name,
                target.name
            ),
            curl(via, target),
        );
    }
    cmd(
        "A token revoked through host-b is refused by every gateway (401 from host-c)",
        format!(
            "{} token revoke {WORKSPACE} fleet-demo --admin {} && {}",
            gateway_bin.display(),
            admin(&hosts[1]),
            curl(&hosts[2], &hosts[0])
        ),
    );
    cmd(
        "The fleet as etcd holds it",
        format!("ETCDCTL_API=3 etcdctl --endpoints {endpoints} get --prefix --keys-only {PREFIX}"),
    );
    println!("\nfleet: logs in {}; Ctrl-C removes everything", dir.display());
    println!("fleet: ready");

    while !STOP.load(Ordering::SeqCst) {
        for (name, child) in &mut fleet.children {
            if let Some(status) = child.try_wait()? {
                println!("fleet: {name} exited ({status}); see the logs in {}", dir.display());
                STOP.store(true, Ordering::SeqCst);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(fleet);
    Ok(())
}

/// Polls `ready` until it holds; fails when a child exits, on Ctrl-C, or after `limit`.
fn wait_for(what: &str, limit: Duration, fleet: &mut Fleet, mut ready: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if ready() {
            return Ok(());
        }
        for (name, child) in &mut fleet.children {
            if let Some(status) = child.try_wait()? {
                bail!("{name} exited ({status}) while waiting for {what}; see the logs in {}", fleet.dir.display());
            }
        }
        if STOP.load(Ordering::SeqCst) {
            bail!("interrupted");
        }
        if Instant::now() > deadline {
            bail!("{what} not ready within {limit:?}; see the logs in {}", fleet.dir.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn host_config(h: &Host, dir: &Path, pki: &Path) -> String {
    let endpoints: Vec<String> =
        (0..3).map(|m| format!("\"http://{}:{}\"", h.uplink_root_addr(), ETCD_CLIENT + m)).collect();
    format!(
        r#"# Written by `cargo xtask run --fleet`; removed with the fleet.
domain = "gw.test"
region = "local"

[listen]
admin = "unix:{admin}"
https = "{addr}:{HTTPS_PORT}"

[state]
dir = "{state}"

[dataplane]
bpffs = "{bpffs}"

[fleet]
etcd = [{endpoints}]
host = "{name}"
listen = "{addr}:{FLEET_PORT}"
ca = "{pki}/ca.pem"
cert = "{pki}/{name}.pem"
key = "{pki}/{name}.key"
prefix = "{PREFIX}"
"#,
        admin = dir.join("admin.sock").display(),
        addr = h.addr(),
        state = dir.join("state").display(),
        bpffs = h.bpffs(),
        endpoints = endpoints.join(", "),
        name = h.name,
        pki = pki.display(),
    )
}
