//! The data plane against real TCP in network namespaces: what a marked socket (the gateway),
//! an unmarked one, another sandbox and an outside client can and cannot reach.
//!
//! These drive `gateway::dataplane::Dataplane` directly (the library the daemon uses); the
//! process-level behaviour (admin API, `kill -9`, restart) is in `enforcement_process.rs`.

use std::{collections::BTreeMap, net::SocketAddr};

use gateway::dataplane::{Dataplane, DataplaneSettings, HostPort, PortGrant, SandboxPolicy, XdpModeSetting};
use gateway_common::policy::origin;
use gateway_tests::harness::*;

fn settings(pins: &BpffsDir) -> DataplaneSettings {
    DataplaneSettings {
        enabled: true,
        mark: GATEWAY_MARK,
        bpffs: pins.path().to_path_buf(),
        public_interface: None,
        xdp_mode: XdpModeSetting::Skb,
        protected: vec![],
        public_ports: vec![],
        host_allow: vec![],
    }
}

fn policy(sb: &Sandbox, ports: &[u16]) -> SandboxPolicy {
    SandboxPolicy {
        address: sb.addr(),
        interface: sb.link.host_ifname().to_owned(),
        ports: ports
            .iter()
            .map(|p| (*p, PortGrant { origin: origin::DECLARED, preview_refs: 0 }))
            .collect::<BTreeMap<_, _>>(),
    }
}

#[test]
fn a_registered_sandbox_is_reachable_only_from_the_gateway_on_allowed_ports() {
    let pins = BpffsDir::new();
    let sb = Sandbox::new();
    let _apps: Vec<Listener> = [3000, 3001, 8080, 443].iter().map(|p| spawn_tcp_echo(&sb, sb.sock(*p))).collect();
    let dp = Dataplane::open(&settings(&pins)).expect("open data plane");
    dp.apply_sandbox(&policy(&sb, &[3000])).expect("register");

    let mut s = assert_reachable(Origin::gateway(), sb.sock(3000), "declared port from the gateway");
    assert_eq!(read_greeting(&mut s).expect("greeting"), "port 3000");
    assert_reachable(Origin::gateway(), sb.sock(8080), "sandbox API from the gateway");
    assert_unreachable(Origin::gateway(), sb.sock(3001), "undeclared port from the gateway");
    assert_unreachable(Origin::gateway(), sb.sock(443), "443 from the gateway");
    assert_unreachable(Origin::host(), sb.sock(3000), "declared port, unmarked");
    assert_unreachable(Origin::host(), sb.sock(8080), "sandbox API, unmarked");
    assert_unreachable(Origin::host_marked(GATEWAY_MARK + 1), sb.sock(3000), "declared port, another mark");

    // A second PUT replaces the port list: 3000 closes, 3001 opens.
    dp.apply_sandbox(&policy(&sb, &[3001])).expect("replace ports");
    assert_unreachable(Origin::gateway(), sb.sock(3000), "removed port");
    assert_reachable(Origin::gateway(), sb.sock(3001), "added port");

    let view = dp.policy_view(sb.addr()).expect("policy view");
    assert!(view.registered);
    let ports: Vec<(u16, Vec<&str>)> = view.entries.iter().map(|e| (e.port, e.origin.clone())).collect();
    assert_eq!(
        ports,
        vec![(80, vec!["builtin"]), (443, vec!["reserved"]), (3001, vec!["declared"]), (8080, vec!["builtin"])]
    );
    // Admitted: 8080 once (per sandbox) + 3001 once (on its entry; 3000's entry and its count
    // left with the port). Dropped: 3001 and 443 marked, 3000/8080 unmarked, 3000 other mark.
    assert!(view.counters.allowed >= 2 && view.counters.dropped >= 5, "{:?}", view.counters);
    let entry_3001 = view.entries.iter().find(|e| e.port == 3001).expect("3001");
    assert_eq!(entry_3001.admitted, Some(1), "per-entry counter");

    // Unregistered: nothing is reachable, the interface stays closed.
    dp.remove_sandbox(sb.addr()).expect("remove");
    assert_unreachable(Origin::gateway(), sb.sock(3001), "after delete, declared port");
    assert_unreachable(Origin::gateway(), sb.sock(8080), "after delete, sandbox API");
    assert!(!dp.policy_view(sb.addr()).expect("view").registered);
}

#[test]
fn sandboxes_cannot_reach_each_other_protected_host_sockets_or_the_host() {
    let pins = BpffsDir::new();
    let a = Sandbox::new();
    let b = Sandbox::new();
    let _app = spawn_tcp_echo(&a, a.sock(3000));
    let admin = spawn_tcp_echo(Place::Host, b.link.host_sock(19901));
    let other_host_port = spawn_tcp_echo(Place::Host, b.link.host_sock(19902));
    let allowed_host_port = spawn_tcp_echo(Place::Host, b.link.host_sock(19903));
    let mut s = settings(&pins);
    s.protected = vec![SocketAddr::from(([0, 0, 0, 0], 19901))];
    // Allowing the protected port too: protection wins.
    s.host_allow = vec![HostPort::tcp(19903), HostPort::tcp(19901)];
    let dp = Dataplane::open(&s).expect("open");
    dp.apply_sandbox(&policy(&a, &[3000])).expect("register a");
    dp.apply_sandbox(&policy(&b, &[3000])).expect("register b");

    assert_reachable(Origin::gateway(), a.sock(3000), "gateway to a");
    assert_unreachable(&b, a.sock(3000), "sandbox b to sandbox a");
    assert_unreachable(&b, b.link.host_sock(19901), "sandbox b to the protected admin socket");
    assert_unreachable(&b, b.link.host_sock(19902), "sandbox b to a host port not in host_allow");
    assert_reachable(&b, b.link.host_sock(19903), "sandbox b to a host port in host_allow");
    assert_eq!(admin.accepted(), 0);
    assert_eq!(other_host_port.accepted(), 0);
    drop(allowed_host_port);
}

#[test]
fn enforcement_outlives_the_control_plane_and_a_new_one_takes_over() {
    let pins = BpffsDir::new();
    let sb = Sandbox::new();
    let _apps: Vec<Listener> = [3000, 3001].iter().map(|p| spawn_tcp_echo(&sb, sb.sock(*p))).collect();
    let dp = Dataplane::open(&settings(&pins)).expect("open");
    dp.apply_sandbox(&policy(&sb, &[3000])).expect("register");
    drop(dp); // every fd of this "process" is closed; the pins keep programs and maps.

    assert_unreachable(Origin::host(), sb.sock(3000), "unmarked, no control plane");
    assert_unreachable(Origin::gateway(), sb.sock(3001), "undeclared, no control plane");
    assert_reachable(Origin::gateway(), sb.sock(3000), "declared, no control plane");

    // A new control plane swaps the programs behind the pinned links and reconciles.
    let dp = Dataplane::open(&settings(&pins)).expect("reopen");
    dp.reconcile(&[policy(&sb, &[3001])]).expect("reconcile");
    assert_unreachable(Origin::gateway(), sb.sock(3000), "stale port after reconcile");
    assert_reachable(Origin::gateway(), sb.sock(3001), "reconciled port");
    let status = gateway::dataplane::status(pins.path()).expect("status");
    let links = status["links"].as_array().expect("links").len();
    assert_eq!(links, 2, "one tcx link per direction, none leaked: {status:#}");
}

#[test]
fn the_edge_guard_drops_new_connections_to_closed_host_ports() {
    let pins = BpffsDir::new();
    let client = OutsideClient::new();
    let public = spawn_tcp_echo(Place::Host, client.host_sock(18443));
    let closed = spawn_tcp_echo(Place::Host, client.host_sock(18080));
    let mut s = settings(&pins);
    s.public_interface = Some(client.host_ifname().to_owned());
    s.public_ports = vec![18443];
    let dp = Dataplane::open(&s).expect("open with edge guard");

    assert_reachable(&client, client.host_sock(18443), "public listener from outside");
    assert_unreachable(&client, client.host_sock(18080), "closed host port from outside");
    assert_eq!(closed.accepted(), 0);
    assert!(public.wait_accepted(1, REACH_TIMEOUT) >= 1);
    let dump = gateway::dataplane::dump(pins.path()).expect("dump");
    assert_eq!(dump["publicPorts"], serde_json::json!([18443]));
    drop(dp);
}
