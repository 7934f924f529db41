//! Scale: a real `gateway serve` holding N sandboxes × 3 ports, loaded from a
//! prepared state directory at start (one JSON file per sandbox, exactly what the admin API
//! writes; registering 100,000 sandboxes through the API one by one measures the fsyncs of the
//! file store, not the gateway). Measures RSS against the same gateway empty, start and
//! reconcile time, kernel map memory, admin call → enforced at that size, and the host-label
//! route lookup of the library (`App::sandbox_by_label`) at 10 and N sandboxes.

use std::{
    fmt::Write as _,
    fs,
    hint::black_box,
    net::SocketAddr,
    path::Path,
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use gateway::{
    dataplane::{Dataplane, bpffs::PinDir, maps::KernelMaps},
    model::sandbox::{PortProtocol, PortSpec, Sandbox},
    service::App,
    state::store::{MemoryStore, Store},
};
use gateway_common::{IPPROTO_TCP, names, policy::Endpoint};
use gateway_tests::{
    gateway_process::{AdminAddr, GatewayProcess, gateway_command, test_config},
    harness::BpffsDir,
};
use serde_json::{Value, json};

use crate::{
    stats::median,
    veth::{PORTS, sandbox_addr},
};

fn sandbox(i: usize, interface: &str) -> Sandbox {
    Sandbox {
        workspace: format!("ws{}", i % 100),
        name: format!("s{i}"),
        address: sandbox_addr(i),
        interface: interface.to_string(),
        owner: None,
        exposed: Vec::new(),
        ports: PORTS.iter().map(|p| PortSpec { target: *p, protocol: PortProtocol::Http }).collect(),
    }
}

fn status_kib(pid: u32, field: &str) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

/// Bytes of kernel memory charged to the pinned maps (`bytes_memlock`, from bpftool).
fn maps_memlock(pins: &Path) -> u64 {
    let mut total = 0;
    for name in names::ALL_MAPS {
        let path = pins.join("maps").join(name);
        let out = Command::new("bpftool").args(["-j", "map", "show", "pinned"]).arg(&path).output();
        if let Ok(o) = out
            && let Ok(v) = serde_json::from_slice::<Value>(&o.stdout)
        {
            total += v["bytes_memlock"].as_u64().unwrap_or(0);
        }
    }
    total
}

fn write_state(dir: &Path, n: usize, interface: &str) {
    let sbx = dir.join("sandboxes");
    fs::create_dir_all(&sbx).expect("state dir");
    for i in 0..n {
        let s = sandbox(i, interface);
        let body = json!({"version": 1, "sandbox": s});
        fs::write(sbx.join(format!("{}.{}.json", s.workspace, s.name)), body.to_string()).expect("state file");
    }
}

fn put_body(i: usize, interface: &str, extra: Option<u16>) -> Value {
    let mut ports: Vec<Value> = PORTS.iter().map(|p| json!({"target": p})).collect();
    if let Some(p) = extra {
        ports.push(json!({"target": p}));
    }
    json!({"address": sandbox_addr(i).to_string(), "interface": interface, "ports": ports})
}

/// Median wall time of admin PUTs changing one port of sandbox `i` (open 4000 / 4001 in turn),
/// until the kernel map holds the new entry.
fn admin_to_enforced(gw: &GatewayProcess, pins: &Path, i: usize, interface: &str, reps: usize) -> (f64, f64) {
    let maps = KernelMaps::open(&PinDir::new(pins).maps()).expect("maps");
    let s = sandbox(i, interface);
    let path = format!("/v1/workspaces/{}/sandboxes/{}", s.workspace, s.name);
    let client = gw.client();
    let mut call = Vec::new();
    let mut enforced = Vec::new();
    for k in 0..reps {
        let port = 4000 + (k % 2) as u16;
        let t = Instant::now();
        let r = client.put_json(&path, &put_body(i, interface, Some(port)));
        call.push(t.elapsed().as_secs_f64() * 1e6);
        assert!(r.status == 200 || r.status == 201, "PUT {path}: {} {}", r.status, r.text());
        while maps.policy_get(&Endpoint::new(s.address.octets(), port, IPPROTO_TCP)).is_none() {
            std::thread::yield_now();
        }
        enforced.push(t.elapsed().as_secs_f64() * 1e6);
    }
    (median(&mut call), median(&mut enforced))
}

/// Route lookup through the library: ns per `App::sandbox_by_label` of a registered label.
fn route_lookup_ns(n: usize) -> f64 {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let store = Arc::new(MemoryStore::new());
        for i in 0..n {
            store.put_sandbox(sandbox(i, "lo")).await.expect("put");
        }
        let admin = AdminAddr::Tcp(SocketAddr::from(([127, 0, 0, 1], 1)));
        let text = test_config(&admin, 2, Path::new("/nonexistent-gwbench"), "bench-admin-token-0123456789abcdef");
        let config = gateway::config::parse("bench.toml", &text).expect("config");
        let app = App::start(config, store, Dataplane::disabled()).await.expect("app");
        let labels: Vec<String> = (0..4096).map(|k| sandbox((k * 7919) % n, "lo").label()).collect();
        let mut best = f64::MAX;
        for _ in 0..5 {
            let t = Instant::now();
            let mut hits = 0usize;
            for _ in 0..25 {
                for l in &labels {
                    hits += usize::from(black_box(app.sandbox_by_label(black_box(l))).is_some());
                }
            }
            assert_eq!(hits, 25 * labels.len());
            best = best.min(t.elapsed().as_secs_f64() * 1e9 / (25 * labels.len()) as f64);
        }
        best
    })
}

pub fn run(n: usize, interface: &str) -> (String, Value) {
    let mut text = String::new();
    let bpffs = BpffsDir::new();
    let mut gw = GatewayProcess::start_enforcing(bpffs.path());
    std::thread::sleep(Duration::from_millis(500));
    let pid = gw.pid().expect("pid");
    let rss_empty = status_kib(pid, "VmRSS:");
    // Ten sandboxes through the API: the small-size admin figure.
    for i in 0..10 {
        let s = sandbox(i, interface);
        let r = gw
            .client()
            .put_json(&format!("/v1/workspaces/{}/sandboxes/{}", s.workspace, s.name), &put_body(i, interface, None));
        assert!(r.status == 200 || r.status == 201, "PUT: {} {}", r.status, r.text());
    }
    let (call_10, enforced_10) = admin_to_enforced(&gw, bpffs.path(), 5, interface, 50);
    gw.kill();
    for e in fs::read_dir(gw.state_dir().join("sandboxes")).into_iter().flatten().flatten() {
        let _ = fs::remove_file(e.path());
    }
    let t = Instant::now();
    write_state(&gw.state_dir(), n, interface);
    let write_s = t.elapsed().as_secs_f64();
    let kernel_before = maps_memlock(bpffs.path());
    // Started by hand: the harness gives a gateway 20 s to answer, 100,000 sandboxes may need more.
    let log_path = gw.dir().join("scale.log");
    let log = fs::File::create(&log_path).expect("log");
    let t = Instant::now();
    let mut child = gateway_command()
        .args(["serve", "--config"])
        .arg(gw.config_path())
        .env("GATEWAY_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("spawn gateway");
    let client = gw.client();
    loop {
        if client.request("GET", "/live", &[], None).is_ok_and(|r| r.status == 200) {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("gateway exited during start ({status}): {}", fs::read_to_string(&log_path).unwrap_or_default());
        }
        assert!(t.elapsed() < Duration::from_secs(600), "gateway did not start within 600 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    let start_s = t.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(500));
    let pid = child.id();
    let rss_full = status_kib(pid, "VmRSS:");
    let hwm_full = status_kib(pid, "VmHWM:");
    let reconcile_us: Option<u64> = fs::read_to_string(&log_path)
        .unwrap_or_default()
        .lines()
        .rfind(|l| l.contains("data plane reconciled"))
        .and_then(|l| l.split("micros=").nth(1))
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next().and_then(|d| d.parse().ok()));
    let kernel_after = maps_memlock(bpffs.path());
    let entries = KernelMaps::open(&PinDir::new(bpffs.path()).maps()).expect("maps").sandbox_entries().len();
    assert_eq!(entries, n, "sandboxes in the kernel after start");
    let (call_n, enforced_n) = admin_to_enforced(&gw, bpffs.path(), n / 2, interface, 50);
    let _ = child.kill();
    let _ = child.wait();
    let lookup_small = route_lookup_ns(10);
    let lookup_n = route_lookup_ns(n);
    let per_sbx = (rss_full.saturating_sub(rss_empty)) as f64 * 1024.0 / n as f64;
    let _ = writeln!(
        text,
        "\n## Scale: a real gateway with {n} sandboxes × 3 ports ({} policy entries), loaded from a prepared state directory",
        n * 3
    );
    let _ = writeln!(
        text,
        "state written in {write_s:.1} s; start → /live {start_s:.2} s (reconcile {:.2} s)",
        reconcile_us.unwrap_or(0) as f64 / 1e6
    );
    let _ = writeln!(
        text,
        "gateway RSS: empty {:.1} MiB, with {n} sandboxes {:.1} MiB (peak {:.1} MiB): {per_sbx:.0} bytes per sandbox (target ≤ 2048)",
        rss_empty as f64 / 1024.0,
        rss_full as f64 / 1024.0,
        hwm_full as f64 / 1024.0
    );
    let _ = writeln!(
        text,
        "kernel map memory (bytes_memlock of the pinned maps): {:.1} MiB before, {:.1} MiB with {n} sandboxes",
        kernel_before as f64 / 1048576.0,
        kernel_after as f64 / 1048576.0
    );
    let _ = writeln!(
        text,
        "admin PUT (one port changed) → 200: median {call_10:.0} µs at 10 sandboxes, {call_n:.0} µs at {n}; → entry in the kernel map: {enforced_10:.0} µs / {enforced_n:.0} µs"
    );
    let _ = writeln!(
        text,
        "route lookup (App::sandbox_by_label): {lookup_small:.0} ns at 10 sandboxes, {lookup_n:.0} ns at {n}"
    );
    let json = json!({
        "sandboxes": n, "ports": n * 3,
        "rss_empty_kib": rss_empty, "rss_kib": rss_full, "peak_rss_kib": hwm_full, "rss_bytes_per_sandbox": per_sbx,
        "start_seconds": start_s, "reconcile_seconds": reconcile_us.map(|u| u as f64 / 1e6),
        "kernel_memlock_bytes": {"before": kernel_before, "after": kernel_after},
        "admin_put_us": {"10": call_10, "n": call_n}, "admin_put_to_enforced_us": {"10": enforced_10, "n": enforced_n},
        "route_lookup_ns": {"10": lookup_small, "n": lookup_n},
    });
    (text, json)
}
