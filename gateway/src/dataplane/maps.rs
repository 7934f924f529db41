//! Typed handles on the pinned maps. Opened from the pins, so the daemon and the CLI (`gateway
//! dataplane dump`, working after the daemon died) read the same objects.

use std::{net::Ipv4Addr, os::fd::AsFd, path::Path};

use aya::maps::{Array, HashMap, LpmTrie, Map, MapData, PerCpuArray, PerCpuHashMap, SockMap, lpm_trie::Key};
use gateway_common::{
    IPPROTO_TCP,
    counters::{Hook, Reason, VERDICT_SLOTS},
    names,
    policy::{
        EdgeConfig, Endpoint, HostAddr, KernelConfig, L4AllowKey, L4PortStats, PolicyValue, PortBits, PortKey,
        SandboxKey, SandboxRecord, SandboxStats, SynBucket,
    },
};
use ipnet::Ipv4Net;

use super::{DataplaneError, batch, kernel};

/// Every map the programs use.
pub struct KernelMaps {
    /// `GW_POLICY`.
    pub policy: HashMap<MapData, Endpoint, PolicyValue>,
    /// A second handle on `GW_POLICY` for batch syscalls.
    policy_raw: MapData,
    /// `GW_SANDBOXES`.
    pub sandboxes: HashMap<MapData, SandboxKey, SandboxRecord>,
    /// `GW_SBX_STATS`.
    pub stats: PerCpuHashMap<MapData, SandboxKey, SandboxStats>,
    /// `GW_PROTECTED` (write it with [`KernelMaps::set_protected`] or [`KernelMaps::protect`],
    /// which keep `GW_PROT_PORTS` in step).
    pub protected: HashMap<MapData, Endpoint, u32>,
    /// `GW_PROT_PORTS`.
    pub protected_ports: Array<MapData, PortBits>,
    /// `GW_PUBLIC`.
    pub public: HashMap<MapData, PortKey, u32>,
    /// `GW_HOST_ADDRS` (written by the host address watcher).
    pub host_addrs: HashMap<MapData, HostAddr, u32>,
    /// `GW_HOST_ALLOW`.
    pub host_allow: HashMap<MapData, PortKey, u32>,
    /// `GW_VERDICTS`.
    pub verdicts: PerCpuArray<MapData, u64>,
    /// `GW_CONFIG`.
    pub config: Array<MapData, KernelConfig>,
    /// `GW_L4_ALLOW` (write it with [`KernelMaps::l4_allow_insert`] / [`KernelMaps::l4_allow_remove`]).
    pub l4_allow: LpmTrie<MapData, L4AllowKey, u32>,
    /// `GW_L4_PORTS`.
    pub l4_ports: PerCpuHashMap<MapData, PortKey, L4PortStats>,
    /// `GW_SYN_RATE`, an LRU hash (written by the edge guard only).
    pub syn_rate: HashMap<MapData, HostAddr, SynBucket>,
    /// `GW_EDGE_CFG`.
    pub edge_config: Array<MapData, EdgeConfig>,
    /// `GW_L4_LISTEN`.
    pub l4_listen: SockMap<MapData>,
}

/// The `GW_L4_ALLOW` key of `port`'s allow-list entry `net` (host bits cleared).
pub fn l4_allow_key(port: u16, net: Ipv4Net) -> Key<L4AllowKey> {
    let net = net.trunc();
    Key::new(L4AllowKey::prefix_len(net.prefix_len()), L4AllowKey::new(port, net.addr().octets()))
}

/// The `GW_L4_PORTS` key of `port`.
pub fn l4_port_key(port: u16) -> PortKey {
    PortKey::new(port, IPPROTO_TCP)
}

/// The number of possible CPUs (the length of every per-CPU value).
pub fn nr_cpus() -> usize {
    aya::util::nr_cpus().map(|n| n.max(1)).unwrap_or(1)
}

/// A handle on `GW_VERDICTS` alone, for readers that need nothing else (the metrics scrape).
pub struct VerdictMap {
    map: PerCpuArray<MapData, u64>,
}

impl VerdictMap {
    /// Opens the pinned `GW_VERDICTS` in `dir` (`<bpffs>/maps`).
    pub fn open(dir: &Path) -> Result<Self, DataplaneError> {
        Ok(Self { map: typed(dir, names::MAP_VERDICTS)? })
    }

    /// Every verdict counter, summed over CPUs.
    pub fn read(&self) -> Result<Vec<(Hook, Reason, u64)>, DataplaneError> {
        read_verdicts(&self.map)
    }
}

/// A handle on `GW_L4_PORTS` alone: the edge guard's counters of each exposed public TCP port,
/// for the metrics scrape.
pub struct L4StatsMap {
    map: PerCpuHashMap<MapData, PortKey, L4PortStats>,
}

impl L4StatsMap {
    /// Opens the pinned `GW_L4_PORTS` in `dir` (`<bpffs>/maps`).
    pub fn open(dir: &Path) -> Result<Self, DataplaneError> {
        Ok(Self { map: typed(dir, names::MAP_L4_PORTS)? })
    }

    /// Every exposed port's counters, summed over CPUs, by port.
    pub fn read(&self) -> Vec<(u16, L4PortStats)> {
        sum_l4_stats(&self.map)
    }
}

fn sum_l4_stats(map: &PerCpuHashMap<MapData, PortKey, L4PortStats>) -> Vec<(u16, L4PortStats)> {
    let mut out: Vec<(u16, L4PortStats)> = map
        .iter()
        .filter_map(Result::ok)
        .map(|(k, per_cpu)| {
            let sum = per_cpu.iter().fold(L4PortStats::default(), |a, s| L4PortStats {
                syn_pass: a.syn_pass + s.syn_pass,
                drop_not_allowed: a.drop_not_allowed + s.drop_not_allowed,
                drop_rate: a.drop_rate + s.drop_rate,
            });
            (k.port(), sum)
        })
        .collect();
    out.sort_by_key(|(port, _)| *port);
    out
}

fn read_verdicts(map: &PerCpuArray<MapData, u64>) -> Result<Vec<(Hook, Reason, u64)>, DataplaneError> {
    let mut out = Vec::with_capacity(Hook::ALL.len() * Reason::ALL.len());
    for hook in Hook::ALL {
        for reason in Reason::ALL {
            let slot = hook.slot(reason);
            if slot >= VERDICT_SLOTS {
                continue;
            }
            let per_cpu = map.get(&slot, 0).map_err(kernel("reading GW_VERDICTS"))?;
            out.push((hook, reason, per_cpu.iter().sum()));
        }
    }
    Ok(out)
}

fn open(dir: &Path, name: &str) -> Result<Map, DataplaneError> {
    let path = dir.join(name);
    let data = MapData::from_pin(&path).map_err(kernel(format!("opening pinned map {}", path.display())))?;
    Map::from_map_data(data).map_err(kernel(format!("map {name}")))
}

fn typed<T: TryFrom<Map, Error = aya::maps::MapError>>(dir: &Path, name: &str) -> Result<T, DataplaneError> {
    T::try_from(open(dir, name)?).map_err(kernel(format!("map {name} has an unexpected type")))
}

impl KernelMaps {
    /// Opens every map pinned in `dir`.
    pub fn open(dir: &Path) -> Result<Self, DataplaneError> {
        let raw_path = dir.join(names::MAP_POLICY);
        Ok(Self {
            policy: typed(dir, names::MAP_POLICY)?,
            policy_raw: MapData::from_pin(&raw_path).map_err(kernel(format!("opening {}", raw_path.display())))?,
            sandboxes: typed(dir, names::MAP_SANDBOXES)?,
            stats: typed(dir, names::MAP_SANDBOX_STATS)?,
            protected: typed(dir, names::MAP_PROTECTED)?,
            protected_ports: typed(dir, names::MAP_PROTECTED_PORTS)?,
            public: typed(dir, names::MAP_PUBLIC_PORTS)?,
            host_addrs: typed(dir, names::MAP_HOST_ADDRS)?,
            host_allow: typed(dir, names::MAP_HOST_ALLOW)?,
            verdicts: typed(dir, names::MAP_VERDICTS)?,
            config: typed(dir, names::MAP_CONFIG)?,
            l4_allow: typed(dir, names::MAP_L4_ALLOW)?,
            l4_ports: typed(dir, names::MAP_L4_PORTS)?,
            syn_rate: typed(dir, names::MAP_SYN_RATE)?,
            edge_config: typed(dir, names::MAP_EDGE_CONFIG)?,
            l4_listen: typed(dir, names::MAP_L4_LISTEN)?,
        })
    }

    /// `GW_EDGE_CFG[0]`.
    pub fn edge_config(&self) -> Result<EdgeConfig, DataplaneError> {
        self.edge_config.get(&0, 0).map_err(kernel("reading GW_EDGE_CFG"))
    }

    /// Every `GW_L4_ALLOW` entry as (port, prefix), in the kernel's order.
    pub fn l4_allow_entries(&self) -> Vec<(u16, Ipv4Net)> {
        self.l4_allow
            .keys()
            .filter_map(Result::ok)
            .filter_map(|k| {
                let data = k.data();
                let bits = L4AllowKey::cidr_bits(k.prefix_len())?;
                Some((data.port(), Ipv4Net::new(Ipv4Addr::from(data.addr), bits).ok()?))
            })
            .collect()
    }

    /// Adds `net` to `port`'s allow-list.
    pub fn l4_allow_insert(&mut self, port: u16, net: Ipv4Net) -> Result<(), DataplaneError> {
        self.l4_allow
            .insert(&l4_allow_key(port, net), 1, 0)
            .map_err(kernel(format!("writing GW_L4_ALLOW ({port}: {net})")))
    }

    /// Removes `net` from `port`'s allow-list (absent is fine).
    pub fn l4_allow_remove(&mut self, port: u16, net: Ipv4Net) -> Result<(), DataplaneError> {
        match self.l4_allow.remove(&l4_allow_key(port, net)) {
            Ok(()) => Ok(()),
            Err(e) if super::is_not_found(&e) => Ok(()),
            Err(e) => Err(kernel(format!("removing from GW_L4_ALLOW ({port}: {net})"))(e)),
        }
    }

    /// Every exposed L4 port (a `GW_L4_PORTS` entry).
    pub fn l4_exposed(&self) -> Vec<u16> {
        self.l4_ports.keys().filter_map(Result::ok).map(|k| k.port()).collect()
    }

    /// Every exposed L4 port's counters, summed over CPUs, by port.
    pub fn l4_stats(&self) -> Vec<(u16, L4PortStats)> {
        sum_l4_stats(&self.l4_ports)
    }

    /// Makes `GW_PROTECTED` hold exactly `keys` and `GW_PROT_PORTS` their ports: new keys and
    /// their bits first, then stale bits and keys, so a protected socket is never unprotected
    /// by the change.
    pub fn set_protected(&mut self, keys: &[Endpoint]) -> Result<(), DataplaneError> {
        for k in keys {
            self.protected.insert(k, 1, 0).map_err(kernel("writing GW_PROTECTED"))?;
        }
        let mut want = vec![PortBits::default(); names::PROTECTED_PORT_SLOTS as usize];
        for k in keys {
            want[PortBits::slot(k.port()) as usize].set(k.port(), k.proto);
        }
        for (slot, bits) in want.iter().enumerate() {
            let slot = slot as u32;
            let have = self.protected_ports.get(&slot, 0).map_err(kernel("reading GW_PROT_PORTS"))?;
            if have != *bits {
                self.protected_ports.set(slot, *bits, 0).map_err(kernel("writing GW_PROT_PORTS"))?;
            }
        }
        let stale: Vec<Endpoint> = self.protected.keys().filter_map(Result::ok).filter(|k| !keys.contains(k)).collect();
        for k in stale {
            let _ = self.protected.remove(&k);
        }
        Ok(())
    }

    /// Adds one protected socket (its key, then its port bit).
    pub fn protect(&mut self, key: Endpoint) -> Result<(), DataplaneError> {
        self.protected.insert(key, 1, 0).map_err(kernel("writing GW_PROTECTED"))?;
        let slot = PortBits::slot(key.port());
        let mut bits = self.protected_ports.get(&slot, 0).map_err(kernel("reading GW_PROT_PORTS"))?;
        bits.set(key.port(), key.proto);
        self.protected_ports.set(slot, bits, 0).map_err(kernel("writing GW_PROT_PORTS"))
    }

    /// Writes many policy entries in one syscall (which resets their admitted counters).
    pub fn policy_update_batch(&self, entries: &[(Endpoint, PolicyValue)]) -> Result<(), DataplaneError> {
        let keys: Vec<Endpoint> = entries.iter().map(|e| e.0).collect();
        let values: Vec<PolicyValue> = entries.iter().map(|e| e.1).collect();
        batch::update(self.policy_raw.fd().as_fd(), &keys, &values)
            .map_err(|e| DataplaneError::Kernel { context: "batch update of GW_POLICY".into(), source: e.into() })
    }

    /// Inserts or replaces one policy entry.
    pub fn policy_insert(&mut self, key: Endpoint, value: PolicyValue) -> Result<(), DataplaneError> {
        self.policy.insert(key, value, 0).map_err(kernel("writing GW_POLICY"))
    }

    /// Removes one policy entry.
    pub fn policy_remove(&mut self, key: &Endpoint) -> Result<(), DataplaneError> {
        self.policy.remove(key).map_err(kernel("removing from GW_POLICY"))
    }

    /// One policy entry as the kernel holds it.
    pub fn policy_get(&self, key: &Endpoint) -> Option<PolicyValue> {
        self.policy.get(key, 0).ok()
    }

    /// Deletes many policy entries in one syscall.
    pub fn policy_delete_batch(&self, keys: &[Endpoint]) -> Result<(), DataplaneError> {
        batch::delete(self.policy_raw.fd().as_fd(), keys)
            .map_err(|e| DataplaneError::Kernel { context: "batch delete from GW_POLICY".into(), source: e.into() })
    }

    /// Every verdict counter, summed over CPUs.
    pub fn verdict_counters(&self) -> Result<Vec<(Hook, Reason, u64)>, DataplaneError> {
        read_verdicts(&self.verdicts)
    }

    /// A sandbox's new-flow counters, summed over CPUs.
    pub fn sandbox_counters(&self, key: &SandboxKey) -> SandboxStats {
        self.stats.get(key, 0).map_or_else(
            |_| SandboxStats::default(),
            |v| {
                v.iter().fold(SandboxStats::default(), |a, s| SandboxStats {
                    allowed: a.allowed + s.allowed,
                    dropped: a.dropped + s.dropped,
                })
            },
        )
    }

    /// Every policy entry in the kernel.
    pub fn policy_entries(&self) -> Vec<(Endpoint, PolicyValue)> {
        self.policy.iter().filter_map(Result::ok).collect()
    }

    /// Every registered sandbox in the kernel.
    pub fn sandbox_entries(&self) -> Vec<(SandboxKey, SandboxRecord)> {
        self.sandboxes.iter().filter_map(Result::ok).collect()
    }
}
