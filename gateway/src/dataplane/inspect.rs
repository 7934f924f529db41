//! Reading enforcement back from the kernel: the per-sandbox policy view (admin API), and
//! `gateway dataplane status|dump`, which work from the pins alone, while the daemon runs or
//! after it died.

use std::{net::Ipv4Addr, path::Path};

use aya::programs::links::{FdLink, PinnedLink};
use gateway_common::{
    SANDBOX_API_PORT, SANDBOX_NEVER_PORT, SANDBOX_SYSTEM_PORT,
    policy::{SandboxKey, allow, origin},
};
use serde_json::{Value, json};

use super::{
    DataplaneError, PolicyEntryView, PolicyView, SandboxCountersView,
    bpffs::{LinkKind, PinDir},
    maps::KernelMaps,
};

fn origins(bits: u8) -> Vec<&'static str> {
    let mut v = Vec::new();
    if bits & origin::DECLARED != 0 {
        v.push("declared");
    }
    if bits & origin::PREVIEW != 0 {
        v.push("preview");
    }
    v
}

/// What the kernel holds for one sandbox: its record, the built-in entries the program applies to
/// every registered sandbox, and every `GW_POLICY` entry for its address.
pub fn policy_view(maps: &KernelMaps, address: Ipv4Addr) -> PolicyView {
    let key = SandboxKey { addr: address.octets() };
    let record = maps.sandboxes.get(&key, 0).ok();
    let mut entries = Vec::new();
    if record.is_some() {
        for port in [SANDBOX_SYSTEM_PORT, SANDBOX_API_PORT] {
            entries.push(PolicyEntryView {
                port,
                protocol: "TCP",
                allow_from: "gateway",
                origin: vec!["builtin"],
                preview_refs: 0,
                admitted: None,
            });
        }
        entries.push(PolicyEntryView {
            port: SANDBOX_NEVER_PORT,
            protocol: "TCP",
            allow_from: "nobody",
            origin: vec!["reserved"],
            preview_refs: 0,
            admitted: None,
        });
    }
    for (ep, value) in maps.policy_entries() {
        if ep.addr == key.addr {
            entries.push(PolicyEntryView {
                port: ep.port(),
                protocol: "TCP",
                allow_from: if value.allow_from == allow::FROM_GATEWAY { "gateway" } else { "nobody" },
                origin: origins(value.origin),
                preview_refs: value.preview_refs,
                admitted: Some(value.admitted),
            });
        }
    }
    entries.sort_by_key(|e| e.port);
    let c = maps.sandbox_counters(&key);
    let admitted: u64 = entries.iter().filter_map(|e| e.admitted).sum();
    PolicyView {
        address,
        registered: record.is_some(),
        ifindex: record.map_or(0, |r| r.ifindex),
        entries,
        counters: SandboxCountersView { allowed: c.allowed + admitted, dropped: c.dropped },
    }
}

fn open_maps(root: &Path) -> Result<KernelMaps, DataplaneError> {
    let pins = PinDir::new(root);
    if !pins.exists() {
        return Err(DataplaneError::Kernel {
            context: format!("no data plane pinned under {}", root.display()),
            source: anyhow::anyhow!("nothing to read (was the gateway ever started with this dataplane.bpffs?)"),
        });
    }
    KernelMaps::open(&pins.maps())
}

fn counters_json(maps: &KernelMaps) -> Result<Value, DataplaneError> {
    Ok(Value::Array(
        maps.verdict_counters()?
            .into_iter()
            .filter(|(_, _, n)| *n > 0)
            .map(|(h, r, n)| json!({"hook": h.name(), "reason": r.name(), "packets": n}))
            .collect(),
    ))
}

/// Every policy entry decoded, by sandbox (like `cilium bpf policy get`).
pub fn dump(root: &Path) -> Result<Value, DataplaneError> {
    let maps = open_maps(root)?;
    let mut sandboxes: Vec<(Ipv4Addr, u32)> =
        maps.sandbox_entries().into_iter().map(|(k, r)| (Ipv4Addr::from(k.addr), r.ifindex)).collect();
    sandboxes.sort();
    let mut orphans: Vec<Ipv4Addr> = maps
        .policy_entries()
        .into_iter()
        .map(|(e, _)| Ipv4Addr::from(e.addr))
        .filter(|a| !sandboxes.iter().any(|(s, _)| s == a))
        .collect();
    orphans.sort();
    orphans.dedup();
    let views: Vec<PolicyView> =
        sandboxes.iter().map(|(a, _)| *a).chain(orphans).map(|a| policy_view(&maps, a)).collect();
    Ok(json!({
        "bpffs": root.display().to_string(),
        "sandboxes": views,
        "protected": maps.protected.keys().filter_map(Result::ok)
            .map(|k| format!("{}:{}/{}", Ipv4Addr::from(k.addr), k.port(), proto_name(k.proto))).collect::<Vec<_>>(),
        "publicPorts": maps.public.keys().filter_map(Result::ok).map(|k| k.port()).collect::<Vec<_>>(),
        "hostAddresses": host_addresses(&maps),
        "hostAllow": host_allow(&maps),
        "edge": edge_json(&maps),
        "l4Ports": l4_json(&maps),
        "counters": counters_json(&maps)?,
    }))
}

/// `GW_HOST_ADDRS`, sorted.
fn host_addresses(maps: &KernelMaps) -> Vec<String> {
    let mut v: Vec<Ipv4Addr> = maps.host_addrs.keys().filter_map(Result::ok).map(|k| Ipv4Addr::from(k.addr)).collect();
    v.sort();
    v.iter().map(Ipv4Addr::to_string).collect()
}

/// `GW_HOST_ALLOW` as written in `dataplane.host_allow`, sorted.
fn host_allow(maps: &KernelMaps) -> Vec<String> {
    let mut v: Vec<(u8, u16)> = maps.host_allow.keys().filter_map(Result::ok).map(|k| (k.proto, k.port())).collect();
    v.sort();
    v.iter().map(|(proto, port)| format!("{}/{port}", proto_name(*proto))).collect()
}

fn proto_name(p: u8) -> &'static str {
    match p {
        gateway_common::IPPROTO_TCP => "tcp",
        gateway_common::IPPROTO_UDP => "udp",
        _ => "other",
    }
}

/// Attached programs per interface (with link and program ids), map fill levels, counters.
pub fn status(root: &Path) -> Result<Value, DataplaneError> {
    let maps = open_maps(root)?;
    let pins = PinDir::new(root);
    let mut links = Vec::new();
    if let Ok(dir) = std::fs::read_dir(pins.links()) {
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some((kind, number)) = LinkKind::parse_pin(&name) else { continue };
            let info = PinnedLink::from_pin(entry.path()).ok().and_then(|p| FdLink::from(p).info().ok());
            // An sk_lookup pin is numbered by its network namespace's inode, the others by ifindex.
            let (ifindex, netns) = if kind == LinkKind::SkLookup { (None, Some(number)) } else { (Some(number), None) };
            links.push(json!({
                "interface": ifindex.and_then(|i| nix::net::if_::if_indextoname(i).ok()).map(|s| s.to_string_lossy().into_owned()),
                "ifindex": ifindex,
                "netns": netns,
                "hook": match kind {
                    LinkKind::TcxIn => "tcx/egress (sandbox_in)",
                    LinkKind::TcxOut => "tcx/ingress (sandbox_out)",
                    LinkKind::Xdp => "xdp (edge_guard)",
                    LinkKind::SkLookup => "sk_lookup (l4_steer)",
                },
                "linkId": info.as_ref().map(|i| i.id()),
                "programId": info.as_ref().map(|i| i.program_id()),
                "pin": entry.path().display().to_string(),
            }));
        }
    }
    let config = maps.config.get(&0, 0).ok();
    Ok(json!({
        "bpffs": root.display().to_string(),
        "mark": config.map(|c| format!("{:#x}", c.mark)),
        "links": links,
        "maps": {
            "sandboxes": {"entries": maps.sandboxes.keys().count(), "capacity": gateway_common::names::MAX_SANDBOXES},
            "policy": {"entries": maps.policy.keys().count(), "capacity": gateway_common::names::MAX_POLICY_ENTRIES},
            "protected": {"entries": maps.protected.keys().count(), "capacity": gateway_common::names::MAX_PROTECTED},
            "publicPorts": {"entries": maps.public.keys().count(), "capacity": gateway_common::names::MAX_PUBLIC_PORTS},
            "hostAddresses": {"entries": maps.host_addrs.keys().count(), "capacity": gateway_common::names::MAX_HOST_ADDRS},
            "l4Ports": {"entries": maps.l4_ports.keys().count(), "capacity": gateway_common::names::MAX_L4_PORTS},
            "l4Allow": {"entries": maps.l4_allow.keys().count(), "capacity": gateway_common::names::MAX_L4_ALLOW},
            "synSources": {"entries": maps.syn_rate.keys().count(), "capacity": gateway_common::names::MAX_SYN_SOURCES},
        },
        "edge": edge_json(&maps),
        "hostAllow": host_allow(&maps),
        "counters": counters_json(&maps)?,
    }))
}

/// `GW_EDGE_CFG`: the rate limit and the L4 steering.
fn edge_json(maps: &KernelMaps) -> Value {
    let Ok(c) = maps.edge_config() else { return Value::Null };
    json!({
        "synRate": c.syn_rate,
        "synBurst": c.syn_burst,
        "l4Address": Ipv4Addr::from(c.l4_addr).to_string(),
        "l4Ports": (c.l4_port_lo != 0).then(|| format!("{}-{}", c.l4_port_lo, c.l4_port_hi)),
        "l4Listener": maps.l4_listen.indices().filter_map(Result::ok).any(|i| i == 0),
    })
}

/// Every exposed L4 port with its allow-list and counters; and prefixes left for a port that is
/// not exposed (a process stopped half-way), under `exposed: false`.
fn l4_json(maps: &KernelMaps) -> Value {
    let mut allow: std::collections::BTreeMap<u16, Vec<String>> = std::collections::BTreeMap::new();
    for (port, net) in maps.l4_allow_entries() {
        allow.entry(port).or_default().push(net.to_string());
    }
    let stats = maps.l4_stats();
    let mut ports: Vec<u16> = allow.keys().copied().chain(stats.iter().map(|(p, _)| *p)).collect();
    ports.sort_unstable();
    ports.dedup();
    Value::Array(
        ports
            .into_iter()
            .map(|port| {
                let s = stats.iter().find(|(p, _)| *p == port).map(|(_, s)| *s);
                let mut from = allow.remove(&port).unwrap_or_default();
                from.sort();
                json!({
                    "port": port,
                    "exposed": s.is_some(),
                    "allowFrom": from,
                    "synPass": s.map(|s| s.syn_pass),
                    "dropNotAllowed": s.map(|s| s.drop_not_allowed),
                    "dropRate": s.map(|s| s.drop_rate),
                })
            })
            .collect(),
    )
}
