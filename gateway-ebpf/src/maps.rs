//! The maps, pinned by name so that a restarted gateway reuses them, and the `Lookups` the pure
//! decision logic needs.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    helpers::bpf_ktime_get_coarse_ns,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, SockMap, lpm_trie::Key},
};
use core::cell::Cell;

use gateway_common::{
    IPPROTO_TCP,
    counters::Reason,
    counters::VERDICT_SLOTS,
    decide::{self, Lookups, SandboxLookup},
    names::{
        MAX_HOST_ADDRS, MAX_HOST_ALLOW, MAX_L4_ALLOW, MAX_L4_PORTS, MAX_POLICY_ENTRIES, MAX_PROTECTED,
        MAX_PUBLIC_PORTS, MAX_SANDBOXES, MAX_SYN_SOURCES, MAX_UDP_FLOWS, PROTECTED_PORT_SLOTS,
    },
    policy::{
        EdgeConfig, Endpoint, HostAddr, KernelConfig, L4AllowKey, L4PortStats, PolicyValue, PortBits, PortKey,
        SandboxKey, SandboxRecord, SandboxStats, SynBucket, UdpFlowKey,
    },
};

#[map(name = "GW_POLICY")]
static GW_POLICY: HashMap<Endpoint, PolicyValue> = HashMap::pinned(MAX_POLICY_ENTRIES, BPF_F_NO_PREALLOC);

#[map(name = "GW_SANDBOXES")]
static GW_SANDBOXES: HashMap<SandboxKey, SandboxRecord> = HashMap::pinned(MAX_SANDBOXES, BPF_F_NO_PREALLOC);

#[map(name = "GW_SBX_STATS")]
static GW_SBX_STATS: PerCpuHashMap<SandboxKey, SandboxStats> = PerCpuHashMap::pinned(MAX_SANDBOXES, BPF_F_NO_PREALLOC);

#[map(name = "GW_PROTECTED")]
static GW_PROTECTED: HashMap<Endpoint, u32> = HashMap::pinned(MAX_PROTECTED, 0);

#[map(name = "GW_PROT_PORTS")]
static GW_PROT_PORTS: Array<PortBits> = Array::pinned(PROTECTED_PORT_SLOTS, 0);

#[map(name = "GW_PUBLIC")]
static GW_PUBLIC: HashMap<PortKey, u32> = HashMap::pinned(MAX_PUBLIC_PORTS, 0);

#[map(name = "GW_UDP_FLOWS")]
static GW_UDP_FLOWS: LruHashMap<UdpFlowKey, u32> = LruHashMap::pinned(MAX_UDP_FLOWS, 0);

#[map(name = "GW_HOST_ADDRS")]
static GW_HOST_ADDRS: HashMap<HostAddr, u32> = HashMap::pinned(MAX_HOST_ADDRS, BPF_F_NO_PREALLOC);

#[map(name = "GW_HOST_ALLOW")]
static GW_HOST_ALLOW: HashMap<PortKey, u32> = HashMap::pinned(MAX_HOST_ALLOW, 0);

#[map(name = "GW_VERDICTS")]
static GW_VERDICTS: PerCpuArray<u64> = PerCpuArray::pinned(VERDICT_SLOTS, 0);

#[map(name = "GW_CONFIG")]
static GW_CONFIG: Array<KernelConfig> = Array::pinned(1, 0);

// `LpmTrie` always adds `BPF_F_NO_PREALLOC`, which the kernel requires of an LPM trie.
#[map(name = "GW_L4_ALLOW")]
static GW_L4_ALLOW: LpmTrie<L4AllowKey, u32> = LpmTrie::pinned(MAX_L4_ALLOW, 0);

#[map(name = "GW_L4_PORTS")]
static GW_L4_PORTS: PerCpuHashMap<PortKey, L4PortStats> = PerCpuHashMap::pinned(MAX_L4_PORTS, BPF_F_NO_PREALLOC);

#[map(name = "GW_SYN_RATE")]
static GW_SYN_RATE: LruHashMap<HostAddr, SynBucket> = LruHashMap::pinned(MAX_SYN_SOURCES, 0);

#[map(name = "GW_EDGE_CFG")]
static GW_EDGE_CFG: Array<EdgeConfig> = Array::pinned(1, 0);

#[map(name = "GW_L4_LISTEN")]
static GW_L4_LISTEN: SockMap = SockMap::pinned(1, 0);

/// Handle implementing the decision logic's lookups over the real maps. It remembers the
/// per-sandbox counters found by [`Lookups::registered`] and the per-port counters found by
/// [`Lookups::l4_port`], so counting the verdict needs no second lookup.
pub struct KernelMaps {
    stats: Cell<*mut SandboxStats>,
    l4: Cell<*mut L4PortStats>,
}

impl KernelMaps {
    /// A handle for one packet.
    #[inline(always)]
    pub const fn new() -> Self {
        Self { stats: Cell::new(core::ptr::null_mut()), l4: Cell::new(core::ptr::null_mut()) }
    }

    /// Adds one to an exposed L4 port's counter of `reason` (nothing if the port is not
    /// exposed), reusing the counters [`Lookups::l4_port`] found.
    #[inline(always)]
    pub fn count_l4(&self, port: u16, reason: Reason) {
        let mut s = self.l4.get();
        if s.is_null() {
            s = GW_L4_PORTS.get_ptr_mut(PortKey::new(port, IPPROTO_TCP)).unwrap_or_default();
        }
        if !s.is_null() {
            // SAFETY: a live per-CPU value, no concurrent writer on this CPU.
            unsafe {
                match reason {
                    Reason::PassEdgeL4 => (*s).syn_pass += 1,
                    Reason::DropEdgeNotAllowed => (*s).drop_not_allowed += 1,
                    _ => (*s).drop_rate += 1,
                }
            }
        }
    }

    /// Adds one to a sandbox's allowed or dropped new-flow counter (if userspace created its
    /// entry), reusing the counters [`Lookups::registered`] found.
    #[inline(always)]
    pub fn count_sandbox(&self, addr: [u8; 4], dropped: bool) {
        let mut s = self.stats.get();
        if s.is_null() {
            s = GW_SBX_STATS.get_ptr_mut(SandboxKey { addr }).unwrap_or_default();
        }
        if !s.is_null() {
            // SAFETY: a live per-CPU value, no concurrent writer on this CPU.
            unsafe {
                if dropped {
                    (*s).dropped += 1;
                } else {
                    (*s).allowed += 1;
                }
            }
        }
    }
}

impl Lookups for KernelMaps {
    #[inline(always)]
    fn gateway_mark(&self) -> u32 {
        GW_CONFIG.get(0).map_or(0, |c| c.mark)
    }
    #[inline(always)]
    fn sandbox(&self, addr: [u8; 4]) -> SandboxLookup {
        match GW_SANDBOXES.get_ptr(SandboxKey { addr }) {
            // SAFETY: the pointer comes from a successful lookup and the value is plain data;
            // a concurrent update can at worst make us read the old or new record.
            Some(p) => SandboxLookup::hit(unsafe { *p }),
            None => SandboxLookup::MISS,
        }
    }
    #[inline(always)]
    fn policy_admit(&self, key: &Endpoint) -> u8 {
        match GW_POLICY.get_ptr_mut(key) {
            // SAFETY: a live map value. The increment is a plain read-modify-write (the bpf
            // target has no atomic RMW in `core`): two CPUs admitting to the same entry at the
            // same instant may lose one count, which a statistic can afford.
            Some(p) => unsafe {
                let allow = (*p).allow_from;
                if allow == gateway_common::policy::allow::FROM_GATEWAY {
                    (*p).admitted += 1;
                }
                allow
            },
            None => 0,
        }
    }
    #[inline(always)]
    fn protected(&self, key: &Endpoint) -> bool {
        GW_PROTECTED.get_ptr(key).is_some()
    }
    #[inline(always)]
    fn protected_port(&self, port: u16, proto: u8) -> bool {
        GW_PROT_PORTS.get(PortBits::slot(port)).is_some_and(|b| b.has(port, proto))
    }
    #[inline(always)]
    fn registered(&self, addr: [u8; 4]) -> bool {
        // Userspace creates the counters after the record and removes them before it, so a
        // counter entry proves the record; without one, ask the record (a sandbox being
        // registered or unregistered right now).
        match GW_SBX_STATS.get_ptr_mut(SandboxKey { addr }) {
            Some(p) => {
                self.stats.set(p);
                true
            }
            None => self.sandbox(addr).found,
        }
    }
    #[inline(always)]
    fn public_port(&self, key: &PortKey) -> bool {
        GW_PUBLIC.get_ptr(key).is_some()
    }
    #[inline(always)]
    fn udp_flow(&self, key: &UdpFlowKey) -> bool {
        GW_UDP_FLOWS.get_ptr(key).is_some()
    }
    #[inline(always)]
    fn host_addr(&self, addr: [u8; 4]) -> bool {
        GW_HOST_ADDRS.get_ptr(HostAddr { addr }).is_some()
    }
    #[inline(always)]
    fn host_allowed(&self, key: &PortKey) -> bool {
        GW_HOST_ALLOW.get_ptr(key).is_some()
    }
    #[inline(always)]
    fn syn_admit(&self, src: [u8; 4]) -> bool {
        let Some(cfg) = GW_EDGE_CFG.get(0) else { return true };
        let (rate, burst) = (cfg.syn_rate, cfg.syn_burst);
        if rate == 0 {
            return true;
        }
        // The coarse clock (a tick's resolution, a few ms) is cheaper to read than the precise
        // one, and precise enough: a bucket refills at most a few hundred tokens a second, and
        // a refill measured a tick late is carried to the next SYN, not lost.
        // SAFETY: a helper without arguments.
        let now = unsafe { bpf_ktime_get_coarse_ns() };
        let key = HostAddr { addr: src };
        match GW_SYN_RATE.get_ptr_mut(key) {
            // SAFETY: a live map value. Two CPUs judging SYNs of one source at the same instant
            // may both take the same token: the limit is approximate by one connection per CPU
            // at worst, which a flood limit can afford.
            Some(b) => decide::syn_admit(unsafe { &mut *b }, now, rate, burst),
            None => {
                let mut b = SynBucket::full(burst, now);
                let admitted = decide::syn_admit(&mut b, now, rate, burst);
                // A full map evicts its least recently used source (which starts afresh, full,
                // if it comes back).
                let _ = GW_SYN_RATE.insert(key, b, 0);
                admitted
            }
        }
    }
    #[inline(always)]
    fn l4_port(&self, port: u16) -> bool {
        match GW_L4_PORTS.get_ptr_mut(PortKey::new(port, IPPROTO_TCP)) {
            Some(p) => {
                self.l4.set(p);
                true
            }
            None => false,
        }
    }
    #[inline(always)]
    fn l4_allowed(&self, port: u16, src: [u8; 4]) -> bool {
        GW_L4_ALLOW.get(Key::new(L4AllowKey::LOOKUP_PREFIX_LEN, L4AllowKey::new(port, src))).is_some()
    }
}

/// `l4_steer`'s question: whether a new TCP connection to the local `addr:port` goes to the
/// gateway's L4 listener (inside the configured range and address, and exposed now).
#[inline(always)]
pub fn l4_steered(addr: [u8; 4], port: u16) -> bool {
    match GW_EDGE_CFG.get(0) {
        Some(cfg) if cfg.in_l4_range(addr, port) => GW_L4_PORTS.get_ptr(PortKey::new(port, IPPROTO_TCP)).is_some(),
        _ => false,
    }
}

/// The gateway's L4 listening socket (index 0 of `GW_L4_LISTEN`) as the socket of this lookup.
/// Fails when the slot is empty (no gateway runs: the normal lookup goes on and, since nothing
/// else listens in the range, the client gets a reset).
#[inline(always)]
pub fn assign_l4_listener(ctx: &aya_ebpf::programs::SkLookupContext) -> Result<(), i32> {
    GW_L4_LISTEN.redirect_sk_lookup(ctx, 0, 0)
}

/// Adds one to a verdict counter.
#[inline(always)]
pub fn count_verdict(slot: u32) {
    if let Some(c) = GW_VERDICTS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *c += 1 };
    }
}

/// Remembers a UDP flow a sandbox started, so its replies are let back in.
#[inline(always)]
pub fn remember_udp_flow(flow: &UdpFlowKey) {
    // The key is rebuilt from three words: taking the address of the verdict's byte arrays
    // would keep the whole verdict in memory, zeroed by a `memset` call (a byte loop in BPF)
    // on every packet of `sandbox_out`.
    let (sp, pp) = (flow.sandbox_port, flow.peer_port);
    let words: [u32; 3] = [
        u32::from_ne_bytes(flow.sandbox),
        u32::from_ne_bytes(flow.peer),
        u32::from_ne_bytes([sp[0], sp[1], pp[0], pp[1]]),
    ];
    // SAFETY: `UdpFlowKey` is 12 bytes of byte arrays (alignment 1), the layout of `words`.
    let key = unsafe { &*words.as_ptr().cast::<UdpFlowKey>() };
    if GW_UDP_FLOWS.get_ptr(key).is_none() {
        let _ = GW_UDP_FLOWS.insert(key, 1, 0);
    }
}
