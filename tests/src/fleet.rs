//! A fleet on one machine for tests ([`FleetLab`]): a real three-member etcd, and per host a
//! network namespace holding a gateway that enforces in the kernel (its own pin directory) and
//! a sandbox namespace behind it. Each host's namespace reaches the test's own through a veth
//! (its uplink); the hosts reach each other through the test's namespace (routed), and etcd,
//! which listens on an address of the test's namespace of its own (the near end of a veth into
//! an empty namespace, claimed like every harness address). Cutting a host off from etcd alone
//! is an nftables table in its namespace that drops every packet from that address and answers
//! every packet to it with a TCP reset ([`LabHost::cut_from_etcd`]): nothing more arrives from
//! etcd, its connections break and new ones are refused, while clients and peers still reach it.
//!
//! Everything is removed on drop: the gateways are stopped first, then the namespaces (and
//! their interfaces), the pin directories, etcd and the certificates.

use crate::{
    edge::{EdgeClient, WS, register},
    etcd::EtcdCluster,
    gateway_process::{GatewayProcess, TempDir, run_gateway, temp_dir},
    harness::{BpffsDir, Netns, Sandbox, SandboxLink},
};
use std::{net::Ipv4Addr, path::Path};

/// The fleet listener's port inside each host's namespace.
pub const FLEET_PORT: u16 = 9443;

/// A fleet CA and the certificates of `hosts`, made with the CLI (`gateway fleet ca`,
/// `gateway fleet cert HOST`).
pub fn fleet_pki(hosts: &[&str]) -> TempDir {
    let dir = temp_dir("gateway-fleet-pki");
    let d = dir.path().to_str().expect("utf-8");
    let out = run_gateway(&["fleet", "ca", "--dir", d]);
    assert!(out.status.success(), "fleet ca: {}", String::from_utf8_lossy(&out.stderr));
    for host in hosts {
        let out = run_gateway(&["fleet", "cert", host, "--dir", d]);
        assert!(out.status.success(), "fleet cert: {}", String::from_utf8_lossy(&out.stderr));
    }
    dir
}

/// The `[fleet]` section of host `host`: etcd at `endpoints`, its fleet listener on `listen`.
pub fn fleet_section(endpoints: &[String], pki: &Path, prefix: &str, host: &str, listen: &str) -> String {
    let endpoints: Vec<String> = endpoints.iter().map(|e| format!("{e:?}")).collect();
    let p = pki.display();
    format!(
        "\n[fleet]\netcd = [{}]\nhost = \"{host}\"\nlisten = \"{listen}\"\nca = \"{p}/ca.pem\"\ncert = \"{p}/{host}.pem\"\nkey = \"{p}/{host}.key\"\nprefix = \"{prefix}\"\n",
        endpoints.join(", ")
    )
}

/// One host of the lab. Fields drop in order: the gateway first.
pub struct LabHost {
    /// Its `fleet.host`: `host-a`, `host-b`…
    pub name: String,
    /// Its gateway (admin API on a unix socket, HTTPS on [`LabHost::addr`]).
    pub gw: GatewayProcess,
    /// The sandbox behind it, registered as `s{index}` of [`WS`] once [`FleetLab::register`]ed.
    pub sandbox: Sandbox,
    /// The veth from the test's namespace into the host's.
    pub uplink: SandboxLink,
    /// The host's namespace.
    pub ns: Netns,
    /// The gateway's pin directory.
    pub pins: BpffsDir,
    /// Where etcd listens for the hosts.
    etcd_addr: Ipv4Addr,
}

impl LabHost {
    /// The host's address (its HTTPS and fleet listeners).
    pub fn addr(&self) -> Ipv4Addr {
        self.uplink.sandbox_addr()
    }

    /// A client of its HTTPS listener, trusting its development CA.
    pub fn edge(&self) -> EdgeClient {
        EdgeClient::new(&self.gw)
    }

    /// Cuts the host off from etcd (`true`) or heals it: a table of its namespace's own that
    /// drops every packet from the address etcd listens on and rejects every packet to it with
    /// a TCP reset, so that nothing more arrives on the connections established before and they
    /// break (a route would not touch them, and a silent drop on the way out only would let
    /// them resume where they stopped, the history in between never missed).
    pub fn cut_from_etcd(&self, cut: bool) {
        let etcd = self.etcd_addr.to_string();
        let commands: Vec<Vec<&str>> = match cut {
            true => vec![
                vec!["nft", "add", "table", "inet", "gwlab"],
                vec!["nft", "add", "chain", "inet", "gwlab", "in", "{ type filter hook input priority 0 ; }"],
                vec!["nft", "add", "rule", "inet", "gwlab", "in", "ip", "saddr", &etcd, "drop"],
                vec!["nft", "add", "chain", "inet", "gwlab", "out", "{ type filter hook output priority 0 ; }"],
                vec![
                    "nft", "add", "rule", "inet", "gwlab", "out", "ip", "daddr", &etcd, "meta", "l4proto", "tcp",
                    "reject", "with", "tcp", "reset",
                ],
            ],
            false => vec![vec!["nft", "delete", "table", "inet", "gwlab"]],
        };
        for c in commands {
            self.ns.exec(&c).unwrap_or_else(|e| panic!("{}: {e}", c.join(" ")));
        }
    }
}

/// The lab: etcd and the hosts.
pub struct FleetLab {
    /// The hosts, `host-a` first.
    pub hosts: Vec<LabHost>,
    /// The etcd cluster (in the test's namespace).
    pub etcd: EtcdCluster,
    /// The fleet CA and the hosts' certificates.
    pub pki: TempDir,
    /// The fleet's etcd prefix (unique per test).
    pub prefix: String,
    /// The address etcd listens on for the hosts (see the module's comment).
    _etcd_link: (SandboxLink, Netns),
}

impl FleetLab {
    /// Starts etcd and `n` hosts; `extra_config(i)` is appended to host `i`'s configuration,
    /// after its `[fleet]` section (a plain key there is a `fleet` key).
    pub fn start(n: usize, extra_config: impl Fn(usize) -> String) -> FleetLab {
        let names: Vec<String> = (0..n).map(|i| format!("host-{}", (b'a' + i as u8) as char)).collect();
        let pki = fleet_pki(&names.iter().map(String::as_str).collect::<Vec<_>>());
        let prefix = format!("/gateway-lab-{}-{}/", std::process::id(), crate::gateway_process::free_port());
        let nets: Vec<(Netns, SandboxLink)> = (0..n)
            .map(|_| {
                let ns = Netns::new();
                let uplink = SandboxLink::new(&ns);
                (ns, uplink)
            })
            .collect();
        let etcd_ns = Netns::new();
        let etcd_link = SandboxLink::new(&etcd_ns);
        let etcd_addr = etcd_link.host_addr();
        let etcd = EtcdCluster::start_on(3, &[etcd_addr]);
        let hosts = nets
            .into_iter()
            .zip(names)
            .enumerate()
            .map(|(i, ((ns, uplink), name))| {
                let sandbox = Sandbox::new_in(&ns);
                let pins = BpffsDir::new();
                let listen = format!("{}:{FLEET_PORT}", uplink.sandbox_addr());
                let endpoints = etcd.endpoints_via(etcd_addr);
                let config = fleet_section(&endpoints, pki.path(), &prefix, &name, &listen) + &extra_config(i);
                let mut gw = GatewayProcess::in_netns(ns.name(), uplink.sandbox_addr(), pins.path(), &config);
                gw.spawn();
                LabHost { name, gw, sandbox, uplink, ns, pins, etcd_addr }
            })
            .collect();
        FleetLab { hosts, etcd, pki, prefix, _etcd_link: (etcd_link, etcd_ns) }
    }

    /// Registers host `i`'s sandbox as `s{i}` of [`WS`] on its own gateway, with these
    /// (port, protocol) declarations.
    pub fn register(&self, i: usize, ports: &[(u16, &str)]) -> serde_json::Value {
        let h = &self.hosts[i];
        register(&h.gw, WS, &format!("s{i}"), &h.sandbox, ports)
    }
}
