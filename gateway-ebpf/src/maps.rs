//! The maps, pinned by name so that a restarted gateway reuses them, and the `Lookups` the pure
//! decision logic needs.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap},
};
use gateway_common::{
    counters::VERDICT_SLOTS,
    decide::{Lookups, SandboxLookup},
    names::{MAX_POLICY_ENTRIES, MAX_PROTECTED, MAX_PUBLIC_PORTS, MAX_SANDBOXES, MAX_UDP_FLOWS},
    policy::{
        DataplaneConfig, Endpoint, PolicyValue, PortKey, SandboxKey, SandboxRecord, SandboxStats,
        UdpFlowKey,
    },
};

#[map(name = "GW_POLICY")]
static GW_POLICY: HashMap<Endpoint, PolicyValue> = HashMap::pinned(MAX_POLICY_ENTRIES, BPF_F_NO_PREALLOC);

#[map(name = "GW_SANDBOXES")]
static GW_SANDBOXES: HashMap<SandboxKey, SandboxRecord> =
    HashMap::pinned(MAX_SANDBOXES, BPF_F_NO_PREALLOC);

#[map(name = "GW_SBX_STATS")]
static GW_SBX_STATS: PerCpuHashMap<SandboxKey, SandboxStats> =
    PerCpuHashMap::pinned(MAX_SANDBOXES, BPF_F_NO_PREALLOC);

#[map(name = "GW_PROTECTED")]
static GW_PROTECTED: HashMap<Endpoint, u32> = HashMap::pinned(MAX_PROTECTED, 0);

#[map(name = "GW_PUBLIC")]
static GW_PUBLIC: HashMap<PortKey, u32> = HashMap::pinned(MAX_PUBLIC_PORTS, 0);

#[map(name = "GW_UDP_FLOWS")]
static GW_UDP_FLOWS: LruHashMap<UdpFlowKey, u32> = LruHashMap::pinned(MAX_UDP_FLOWS, 0);

#[map(name = "GW_VERDICTS")]
static GW_VERDICTS: PerCpuArray<u64> = PerCpuArray::pinned(VERDICT_SLOTS, 0);

#[map(name = "GW_CONFIG")]
static GW_CONFIG: Array<DataplaneConfig> = Array::pinned(1, 0);

/// Zero-sized handle implementing the decision logic's lookups over the real maps.
pub struct KernelMaps;

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
    fn public_port(&self, key: &PortKey) -> bool {
        GW_PUBLIC.get_ptr(key).is_some()
    }
    #[inline(always)]
    fn udp_flow(&self, key: &UdpFlowKey) -> bool {
        GW_UDP_FLOWS.get_ptr(key).is_some()
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

/// Adds one to a sandbox's allowed or dropped new-flow counter (if userspace created its entry).
#[inline(always)]
pub fn count_sandbox(addr: [u8; 4], dropped: bool) {
    if let Some(s) = GW_SBX_STATS.get_ptr_mut(SandboxKey { addr }) {
        // SAFETY: per-CPU value, no concurrent writer on this CPU.
        unsafe {
            if dropped {
                (*s).dropped += 1;
            } else {
                (*s).allowed += 1;
            }
        }
    }
}

/// Remembers a UDP flow a sandbox started, so its replies are let back in.
#[inline(always)]
pub fn remember_udp_flow(flow: &UdpFlowKey) {
    if GW_UDP_FLOWS.get_ptr(flow).is_none() {
        let _ = GW_UDP_FLOWS.insert(flow, 1, 0);
    }
}
