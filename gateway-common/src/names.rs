//! Every program and map name, in one place. Kernel object names are at most 15 bytes.

/// tcx egress on a sandbox's host-side interface: traffic going INTO the sandbox.
pub const PROG_SANDBOX_IN: &str = "sandbox_in";
/// tcx ingress on a sandbox's host-side interface: traffic coming OUT of the sandbox.
pub const PROG_SANDBOX_OUT: &str = "sandbox_out";
/// XDP on the public interface: drops new TCP connections to non-public host ports, SYNs to an
/// exposed L4 port from outside its allow-list, and SYNs over the per-source rate.
pub const PROG_EDGE_GUARD: &str = "edge_guard";
/// sk_lookup on the gateway's network namespace: steers new TCP connections to an exposed L4
/// port onto the gateway's one L4 listening socket (`MAP_L4_LISTEN`).
pub const PROG_L4_STEER: &str = "l4_steer";

/// A do-nothing tc program, the baseline of the program-cost benchmark. Never attached.
pub const PROG_BENCH_NOOP: &str = "bench_noop";
/// A do-nothing XDP program, the baseline of `edge_guard` in the benchmark. Never attached.
pub const PROG_BENCH_NOOP_XDP: &str = "bench_noop_xdp";

/// `Endpoint` → `PolicyValue`: which (sandbox address, port, protocol) may receive new flows,
/// with a per-entry counter of admitted connections.
pub const MAP_POLICY: &str = "GW_POLICY";
/// sandbox address → `SandboxRecord`: the registered sandboxes.
pub const MAP_SANDBOXES: &str = "GW_SANDBOXES";
/// per-CPU, sandbox address → `SandboxStats`.
pub const MAP_SANDBOX_STATS: &str = "GW_SBX_STATS";
/// `Endpoint` → `u32`: host sockets a sandbox may never reach (admin API, metrics).
pub const MAP_PROTECTED: &str = "GW_PROTECTED";
/// array\[`PROTECTED_PORT_SLOTS`\] of `PortBits`: bit `port % 64` of slot `port / 64` is set
/// when some `MAP_PROTECTED` key has that port (per protocol). A prefilter: written from the
/// same list as `MAP_PROTECTED`, so a clear bit means no lookup is needed.
pub const MAP_PROTECTED_PORTS: &str = "GW_PROT_PORTS";
/// `PortKey` → `u32`: host ports open to new connections on the public interface.
pub const MAP_PUBLIC_PORTS: &str = "GW_PUBLIC";
/// LRU, `UdpFlowKey` → `u32`: UDP flows a sandbox started, whose replies may come back in.
pub const MAP_UDP_FLOWS: &str = "GW_UDP_FLOWS";
/// `HostAddr` → `u32`: every IPv4 address of the host (interface addresses and their
/// broadcast addresses), followed from netlink by userspace. New connections from a sandbox to
/// these are dropped unless `MAP_HOST_ALLOW` has the port.
pub const MAP_HOST_ADDRS: &str = "GW_HOST_ADDRS";
/// `PortKey` → `u32`: host ports (`dataplane.host_allow`) sandboxes may open connections to.
pub const MAP_HOST_ALLOW: &str = "GW_HOST_ALLOW";
/// per-CPU array of `u64`, index `Hook * REASONS_PER_HOOK + Reason`: verdict counters.
pub const MAP_VERDICTS: &str = "GW_VERDICTS";
/// array\[1\] of `KernelConfig`.
pub const MAP_CONFIG: &str = "GW_CONFIG";
/// LPM trie, (`L4AllowKey`, prefix length `32 + CIDR bits`) → `u32`: the source prefixes
/// allowed to open connections to each exposed L4 port.
pub const MAP_L4_ALLOW: &str = "GW_L4_ALLOW";
/// per-CPU, `PortKey` (TCP) → `L4PortStats`: the exposed L4 ports (an entry exists exactly
/// while the port is exposed) and their counters.
pub const MAP_L4_PORTS: &str = "GW_L4_PORTS";
/// LRU, `HostAddr` (a source address) → `SynBucket`: the per-source new-connection rate limit
/// of the edge guard.
pub const MAP_SYN_RATE: &str = "GW_SYN_RATE";
/// array\[1\] of `EdgeConfig`.
pub const MAP_EDGE_CONFIG: &str = "GW_EDGE_CFG";
/// sockmap\[1\]: the gateway's L4 listening socket at index 0 (empty while no gateway runs:
/// nothing is steered then).
pub const MAP_L4_LISTEN: &str = "GW_L4_LISTEN";

/// Every map, for pinning and reuse.
pub const ALL_MAPS: [&str; 16] = [
    MAP_POLICY,
    MAP_SANDBOXES,
    MAP_SANDBOX_STATS,
    MAP_PROTECTED,
    MAP_PROTECTED_PORTS,
    MAP_PUBLIC_PORTS,
    MAP_UDP_FLOWS,
    MAP_HOST_ADDRS,
    MAP_HOST_ALLOW,
    MAP_VERDICTS,
    MAP_CONFIG,
    MAP_L4_ALLOW,
    MAP_L4_PORTS,
    MAP_SYN_RATE,
    MAP_EDGE_CONFIG,
    MAP_L4_LISTEN,
];

/// Capacity of `MAP_SANDBOXES` and `MAP_SANDBOX_STATS`.
pub const MAX_SANDBOXES: u32 = 131_072;
/// Capacity of `MAP_POLICY`.
pub const MAX_POLICY_ENTRIES: u32 = 524_288;
/// Capacity of `MAP_PROTECTED`.
pub const MAX_PROTECTED: u32 = 256;
/// Entries of `MAP_PROTECTED_PORTS` (65,536 ports / 64 bits).
pub const PROTECTED_PORT_SLOTS: u32 = 1024;
/// Capacity of `MAP_PUBLIC_PORTS`.
pub const MAX_PUBLIC_PORTS: u32 = 256;
/// Capacity of `MAP_UDP_FLOWS`.
pub const MAX_UDP_FLOWS: u32 = 65_536;
/// Capacity of `MAP_HOST_ADDRS`: an address and a broadcast address on every sandbox's
/// host-side interface, and room for the host's own.
pub const MAX_HOST_ADDRS: u32 = 2 * MAX_SANDBOXES + 1024;
/// Capacity of `MAP_HOST_ALLOW`.
pub const MAX_HOST_ALLOW: u32 = 256;
/// Capacity of `MAP_L4_PORTS`: every TCP port.
pub const MAX_L4_PORTS: u32 = 65_536;
/// Capacity of `MAP_L4_ALLOW` (prefixes over every exposed port).
pub const MAX_L4_ALLOW: u32 = 262_144;
/// Capacity of `MAP_SYN_RATE`: source addresses tracked at once (least recently used evicted;
/// an evicted source starts again with a full bucket).
pub const MAX_SYN_SOURCES: u32 = 65_536;

#[cfg(test)]
mod tests {
    #[test]
    fn kernel_names_fit() {
        let progs = [
            super::PROG_SANDBOX_IN,
            super::PROG_SANDBOX_OUT,
            super::PROG_EDGE_GUARD,
            super::PROG_L4_STEER,
            super::PROG_BENCH_NOOP,
            super::PROG_BENCH_NOOP_XDP,
        ];
        for name in super::ALL_MAPS.iter().chain(progs.iter()) {
            assert!(name.len() <= 15, "{name} is longer than a kernel object name");
        }
        let mut maps = super::ALL_MAPS.to_vec();
        maps.sort_unstable();
        maps.dedup();
        assert_eq!(maps.len(), super::ALL_MAPS.len(), "map names are unique");
    }
}
