//! The real gateway process programming the kernel through its admin API, in network
//! namespaces: enforcement follows every mutation, survives `kill -9`, and a restart reloads the
//! state and reconciles the kernel with it (adding what is missing, removing what is stale).

use std::collections::BTreeSet;

use gateway::dataplane::maps::KernelMaps;
use gateway_common::{
    IPPROTO_TCP,
    policy::{Endpoint, PolicyValue, origin},
};
use gateway_tests::{
    edge::{WS, register},
    env::Env,
    gateway_process::*,
    harness::*,
};
use serde_json::json;

fn kernel_ports(gw: &GatewayProcess) -> BTreeSet<u64> {
    let r = gw.client().get(&format!("/v1/workspaces/{WS}/sandboxes/app/policy"));
    assert_eq!(r.status, 200, "GET policy: {}", r.text());
    r.json()["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["origin"] == json!(["declared"]))
        .map(|e| e["port"].as_u64().expect("port"))
        .collect()
}

#[test]
fn the_admin_api_programs_the_kernel_and_enforcement_survives_kill_9() {
    let mut e = Env::new().unregistered_sandbox("app").start();
    let Env { gw, sandbox, pins, .. } = &mut e;
    let sb = sandbox.as_ref().expect("sandbox");
    let _apps: Vec<Listener> = [3000, 3001, 8080].iter().map(|p| spawn_tcp_echo(sb, sb.sock(*p))).collect();

    let before = gw.client().get(&format!("/v1/workspaces/{WS}/sandboxes")).text();
    let r = gw.client().put_json(
        &format!("/v1/workspaces/{WS}/sandboxes/app"),
        &json!({"address": sb.addr().to_string(), "interface": "gwt-nope0", "ports": [{"target": 3000}]}),
    );
    assert_eq!(r.status, 400, "unknown interface: {}", r.text());
    assert!(r.text().contains("gwt-nope0"), "the error names the interface: {}", r.text());
    assert_eq!(
        gw.client().get(&format!("/v1/workspaces/{WS}/sandboxes")).text(),
        before,
        "a refused PUT changes nothing"
    );

    let v = register(gw, WS, "app", sb, &[(3000, "HTTP")]);
    assert!(v["policyAppliedMicros"].as_u64().is_some(), "PUT reports the kernel update time: {v}");
    assert_eq!(v["url"], json!(format!("https://sbx-app-{WS}.local.gw.test:{}", gw.https_port())));
    assert_eq!(kernel_ports(gw), BTreeSet::from([3000]));
    assert_reachable(Origin::gateway(), sb.sock(3000), "declared port from the gateway");
    assert_reachable(Origin::gateway(), sb.sock(8080), "sandbox API from the gateway");
    assert_unreachable(Origin::gateway(), sb.sock(3001), "undeclared port");
    assert_unreachable(Origin::host(), sb.sock(3000), "declared port, unmarked");

    // A crash: the process is gone, the kernel keeps enforcing, the pins stay readable.
    gw.kill();
    assert_reachable(Origin::gateway(), sb.sock(3000), "declared port, gateway dead");
    assert_unreachable(Origin::gateway(), sb.sock(3001), "undeclared port, gateway dead");
    assert_unreachable(Origin::host(), sb.sock(3000), "unmarked, gateway dead");
    let d = dataplane_dump(pins.path());
    let ports: Vec<u64> = d["sandboxes"][0]["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["origin"] == json!(["declared"]))
        .map(|e| e["port"].as_u64().expect("port"))
        .collect();
    assert_eq!(ports, vec![3000], "dump after kill -9: {d:#}");

    // Restart: the state is back and the kernel still agrees.
    gw.spawn();
    let r = gw.client().get(&format!("/v1/workspaces/{WS}/sandboxes/app"));
    assert_eq!(r.status, 200, "state survived: {}", r.text());
    assert_eq!(kernel_ports(gw), BTreeSet::from([3000]));
    assert_reachable(Origin::gateway(), sb.sock(3000), "declared port after restart");

    // A second PUT replaces the ports; the kernel follows.
    register(gw, WS, "app", sb, &[(3001, "HTTP")]);
    assert_unreachable(Origin::gateway(), sb.sock(3000), "removed port");
    assert_reachable(Origin::gateway(), sb.sock(3001), "added port");

    // DELETE: nothing is reachable any more, the interface stays closed.
    assert_eq!(gw.client().delete(&format!("/v1/workspaces/{WS}/sandboxes/app")).status, 204);
    for port in [3000, 3001, 8080] {
        assert_unreachable(Origin::gateway(), sb.sock(port), &format!("port {port} after DELETE"));
    }
    assert_eq!(gw.client().get(&format!("/v1/workspaces/{WS}/sandboxes/app/policy")).status, 404);
    assert_eq!(dataplane_dump(pins.path())["sandboxes"], json!([]));
}

#[test]
fn a_restart_reconciles_the_kernel_with_the_state() {
    let mut e = Env::new().sandbox("app", &[(3000, "HTTP")]).start();
    let Env { gw, sandbox, pins, .. } = &mut e;
    let sb = sandbox.as_ref().expect("sandbox");
    let _apps: Vec<Listener> = [3000, 3001].iter().map(|p| spawn_tcp_echo(sb, sb.sock(*p))).collect();
    gw.kill();

    // Drift while the gateway is down: an entry the state does not hold, one it lost.
    let mut maps = KernelMaps::open(&pins.path().join("maps")).expect("open pinned maps");
    maps.policy_insert(Endpoint::new(sb.addr().octets(), 3001, IPPROTO_TCP), PolicyValue::gateway(origin::DECLARED, 0))
        .expect("insert a stale entry");
    maps.policy_remove(&Endpoint::new(sb.addr().octets(), 3000, IPPROTO_TCP)).expect("remove an entry");
    assert_reachable(Origin::gateway(), sb.sock(3001), "the stale entry is enforced as written");
    assert_unreachable(Origin::gateway(), sb.sock(3000), "the lost entry is closed");

    gw.spawn();
    assert_eq!(kernel_ports(gw), BTreeSet::from([3000]));
    assert_reachable(Origin::gateway(), sb.sock(3000), "missing entry added back");
    assert_unreachable(Origin::gateway(), sb.sock(3001), "stale entry removed");
}
