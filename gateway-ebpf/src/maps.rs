//! The maps, pinned by name so that a restarted gateway reuses them, and the `Lookups` the pure
//! decision logic needs.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap},
};
use core::cell::Cell;

use gateway_common::{
    counters::VERDICT_SLOTS,
    decide::{Lookups, SandboxLookup},
    names::{
        MAX_HOST_ADDRS, MAX_HOST_ALLOW, MAX_POLICY_ENTRIES, MAX_PROTECTED, MAX_PUBLIC_PORTS, MAX_SANDBOXES,
        MAX_UDP_FLOWS, PROTECTED_PORT_SLOTS,
    },
    policy::{
        Endpoint, HostAddr, KernelConfig, PolicyValue, PortBits, PortKey, SandboxKey, SandboxRecord, SandboxStats,
        UdpFlowKey,
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

/// Handle implementing the decision logic's lookups over the real maps. It remembers the
/// per-sandbox counters found by [`Lookups::registered`], so counting the verdict needs no
/// second lookup.
pub struct KernelMaps {
    stats: Cell<*mut SandboxStats>,
}

impl KernelMaps {
    /// A handle for one packet.
    #[inline(always)]
    pub const fn new() -> Self {
        Self { stats: Cell::new(core::ptr::null_mut()) }
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
