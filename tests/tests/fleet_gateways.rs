//! Gateways of one fleet on a real three-member etcd, each enforcing in the kernel with its own
//! pin directory: tokens, previews and sandboxes made through one gateway's admin API are
//! known to the other within milliseconds (the replica follows etcd's watch), revocations too;
//! only the sandbox's host programs its kernel policy, also for a preview made through another
//! gateway; two hosts registering one sandbox at once: exactly one wins.
//!
//! Requests for a sandbox of another host are authenticated and then answered 503
//! `PEER_UNAVAILABLE` (forwarding between gateways is not there yet), which tells a valid
//! credential (503) from a revoked one (401) on the gateway that does not run the sandbox.

use gateway_tests::{
    edge::*,
    etcd::EtcdCluster,
    gateway_process::{GatewayProcess, dataplane_dump, free_port},
    harness::{BpffsDir, Sandbox},
};
use serde_json::json;
use std::time::{Duration, Instant};

/// The `[fleet]` section of host `host`.
fn fleet_section(etcd: &EtcdCluster, prefix: &str, host: &str) -> String {
    let endpoints: Vec<String> = etcd.endpoints().iter().map(|e| format!("{e:?}")).collect();
    format!(
        "\n[fleet]\netcd = [{}]\nhost = \"{host}\"\nlisten = \"127.0.0.1:{}\"\nca = \"/nonexistent/fleet/ca.pem\"\ncert = \"/nonexistent/fleet/{host}.pem\"\nkey = \"/nonexistent/fleet/{host}.key\"\nprefix = \"{prefix}\"\n",
        endpoints.join(", "),
        free_port()
    )
}

/// Polls `check` every millisecond until it holds; how long that took (panics after 5 s: the
/// bound is liveness, the figures are printed).
fn until(what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < Duration::from_secs(5), "{what}: not within 5 s");
        std::thread::sleep(Duration::from_millis(1));
    }
    started.elapsed()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[test]
fn a_fleet_shares_tokens_previews_and_sandboxes_and_one_host_runs_each() {
    let etcd = EtcdCluster::start(3);
    let prefix = format!("/gateway-fleet-test-{}/", std::process::id());
    let (pins_a, pins_b) = (BpffsDir::new(), BpffsDir::new());
    let rt = runtime();
    let _rt = rt.enter();
    let mut a = GatewayProcess::enforcing(pins_a.path(), &fleet_section(&etcd, &prefix, "host-a"));
    a.spawn();
    let mut b = GatewayProcess::enforcing(pins_b.path(), &fleet_section(&etcd, &prefix, "host-b"));
    b.spawn();
    let (edge_a, edge_b) = (EdgeClient::new(&a), EdgeClient::new(&b));
    let sb = Sandbox::new();
    let _app = spawn_backend(&sb, sb.addr(), 3000, Speaks::Http1);
    let _preview_app = spawn_backend(&sb, sb.addr(), 4000, Speaks::Http1);
    let host = sandbox_host("web");

    // Registered on A: A runs it; B knows it, and names its host.
    let view = register(&a, WS, "web", &sb, &[(3000, "HTTP")]);
    assert_eq!(view["owner"], "host-a", "{view}");
    let on_b = b.client().get("/v1/workspaces/acme/sandboxes/web");
    assert_eq!(on_b.status, 200, "read your writes: B answers once A answered? {}", on_b.text());
    assert_eq!(on_b.json()["owner"], "host-a");
    b.client().get("/v1/workspaces/acme/sandboxes/web/policy").assert_error(409, "OWNED_BY_ANOTHER_HOST");
    let dump_a = dataplane_dump(pins_a.path()).to_string();
    assert!(dump_a.contains(&sb.addr().to_string()), "A programs its sandbox: {dump_a}");
    let dump_b = dataplane_dump(pins_b.path()).to_string();
    assert!(!dump_b.contains(&sb.addr().to_string()), "B does not: {dump_b}");

    // B cannot take it over: 409 naming A, nothing changed.
    let r =
        b.client().put_json("/v1/workspaces/acme/sandboxes/web", &sandbox_body(&sb, &[(3000, "HTTP"), (5000, "HTTP")]));
    let message = r.assert_error(409, "OWNED_BY_ANOTHER_HOST");
    assert!(message.to_string().contains("host-a"), "{message}");

    // A token made on B opens the sandbox through A, which runs it.
    let token = create_token(&b, WS, "ci");
    let bearer = format!("Bearer {token}");
    rt.block_on(async {
        let r = edge_a.get(&host, "/port/3000/hello", &[("authorization", &bearer)]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        // Through B: authenticated there, then 503 naming the host (no forwarding yet).
        let r = edge_b.get(&host, "/port/3000/hello", &[("authorization", &bearer)]).await;
        assert!(r.assert_error(503, "PEER_UNAVAILABLE").contains("host-a"));
        let r = edge_b.get(&host, "/port/3000/hello", &[("authorization", "Bearer gw_nope")]).await;
        r.assert_error(401, "AUTHENTICATION_FAILED");
    });

    // Convergence of new tokens and revocations, A's admin API → B's edge, over 200 trials.
    let (mut created, mut revoked) = (Vec::new(), Vec::new());
    for i in 0..200 {
        let name = format!("t{i}");
        let secret = create_token(&a, WS, &name);
        let bearer = format!("Bearer {secret}");
        let status = || rt.block_on(edge_b.get(&host, "/port/3000/", &[("authorization", &bearer)])).status;
        created.push(until("a new token accepted on B", || status() == 503));
        assert_eq!(a.client().delete(&format!("/v1/workspaces/acme/tokens/{name}")).status, 204);
        revoked.push(until("a revoked token refused on B", || status() == 401));
    }
    created.sort();
    revoked.sort();
    eprintln!(
        "convergence over 200 trials (admin answer on A → B's edge, polled every ms): new token p50 {:?} p99 {:?}; revocation p50 {:?} p99 {:?}",
        percentile(&created, 0.5),
        percentile(&created, 0.99),
        percentile(&revoked, 0.5),
        percentile(&revoked, 0.99)
    );

    // A public preview made on B opens its port in A's kernel; its URL is the same on both.
    let r =
        b.client().put_json("/v1/workspaces/acme/sandboxes/web/previews/site", &json!({"port": 4000, "public": true}));
    assert_eq!(r.status, 200, "{}", r.text());
    let preview = r.json();
    let preview_host = preview["url"]
        .as_str()
        .expect("url")
        .trim_start_matches("https://")
        .split(':')
        .next()
        .expect("host")
        .to_string();
    let on_a = a.client().get("/v1/workspaces/acme/sandboxes/web/previews/site");
    assert_eq!(on_a.status, 200, "{}", on_a.text());
    assert_eq!(on_a.json()["id"], preview["id"], "one preview id (host name) fleet-wide");
    until("A serves the preview made on B", || rt.block_on(edge_a.get(&preview_host, "/", &[])).status == 200);
    let policy = a.client().get("/v1/workspaces/acme/sandboxes/web/policy").json();
    assert!(policy.to_string().contains("4000"), "A's kernel opened the preview's port: {policy}");

    // Two hosts registering one new sandbox at once: exactly one wins, the other gets 409.
    for i in 0..10 {
        let path = format!("/v1/workspaces/acme/sandboxes/race-{i}");
        let mut body = sandbox_body(&sb, &[]);
        // An address of its own: the race is about the name, not a clash with "web" on one host.
        body["address"] = json!(format!("198.18.200.{}", i + 1));
        let (ra, rb) = std::thread::scope(|s| {
            let ta = s.spawn(|| a.client().put_json(&path, &body));
            let tb = s.spawn(|| b.client().put_json(&path, &body));
            (ta.join().expect("a"), tb.join().expect("b"))
        });
        let mut statuses = [ra.status, rb.status];
        statuses.sort();
        assert_eq!(statuses, [200, 409], "race {i}: A {} / B {}", ra.text(), rb.text());
        let winner = if ra.status == 200 { &a } else { &b };
        assert_eq!(winner.client().delete(&path).status, 204);
    }

    // Deleted through B: A's kernel forgets it.
    assert_eq!(b.client().delete("/v1/workspaces/acme/sandboxes/web").status, 204);
    until("A removed the deleted sandbox from its kernel", || {
        !dataplane_dump(pins_a.path()).to_string().contains(&sb.addr().to_string())
    });
    a.client().get("/v1/workspaces/acme/sandboxes/web").assert_error(404, "WORKLOAD_NOT_FOUND");
}
