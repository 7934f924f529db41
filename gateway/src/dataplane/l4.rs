//! Public TCP ports ("L4 exposure"): the edge guard's rate limit and allow-lists, and the
//! sk_lookup steering of exposed ports onto the gateway's one L4 listening socket.
//!
//! A port is exposed exactly while `GW_L4_PORTS` has its entry: `l4_steer` steers it and the
//! edge guard judges its SYNs against its `GW_L4_ALLOW` prefixes. Allow-list changes add the new
//! prefixes before removing the old ones, and exposing creates the port entry only after its
//! prefixes exist, so a port is never open wider than old ∪ new; unexposing removes the entry
//! first, which closes the port in both programs at once.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    ops::RangeInclusive,
    os::fd::BorrowedFd,
};

use aya::maps::PerCpuValues;
use gateway_common::policy::{EdgeConfig, L4PortStats};
use ipnet::Ipv4Net;

use super::{
    Dataplane, DataplaneError, Inner, attach, is_not_found, kernel,
    maps::{KernelMaps, l4_port_key, nr_cpus},
};

/// What the kernel holds for L4 exposure: each port's allow-list (prefixes of `GW_L4_ALLOW`,
/// also for a port whose `GW_L4_PORTS` entry is missing) and the exposed ports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct L4Shadow {
    /// `GW_L4_ALLOW`, by port.
    pub allow: BTreeMap<u16, BTreeSet<Ipv4Net>>,
    /// `GW_L4_PORTS`' keys.
    pub exposed: BTreeSet<u16>,
}

/// Reads the L4 maps back from the kernel.
pub(super) fn read_l4_shadow(maps: &KernelMaps) -> L4Shadow {
    let mut shadow = L4Shadow::default();
    for (port, net) in maps.l4_allow_entries() {
        shadow.allow.entry(port).or_default().insert(net);
    }
    shadow.exposed = maps.l4_exposed().into_iter().collect();
    shadow
}

/// `BPF_NOEXIST`: create only.
const BPF_NOEXIST: u64 = 1;

fn invalid_port(port: u16) -> Result<(), DataplaneError> {
    if port == 0 { Err(DataplaneError::Invalid("port 0 cannot be exposed".into())) } else { Ok(()) }
}

impl Inner {
    /// Makes `port` exposed with exactly `allow` (already truncated): new prefixes, then the
    /// port entry, then stale prefixes. The shadow follows every step, so a failure half-way
    /// leaves it equal to the kernel.
    fn expose_l4(&mut self, port: u16, allow: &BTreeSet<Ipv4Net>) -> Result<(), DataplaneError> {
        let have = self.l4.allow.get(&port).cloned().unwrap_or_default();
        for net in allow.difference(&have) {
            self.maps.l4_allow_insert(port, *net)?;
            self.l4.allow.entry(port).or_default().insert(*net);
        }
        if !self.l4.exposed.contains(&port) {
            let zero = PerCpuValues::try_from(vec![L4PortStats::default(); nr_cpus()])
                .map_err(kernel("sizing per-CPU counters"))?;
            // BPF_NOEXIST: a concurrent creation (none expected) keeps its counters.
            match self.maps.l4_ports.insert(l4_port_key(port), zero, BPF_NOEXIST) {
                Ok(()) => {}
                Err(aya::maps::MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => return Err(kernel(format!("writing GW_L4_PORTS ({port})"))(e)),
            }
            self.l4.exposed.insert(port);
        }
        for net in have.difference(allow) {
            self.maps.l4_allow_remove(port, *net)?;
            if let Some(set) = self.l4.allow.get_mut(&port) {
                set.remove(net);
            }
        }
        if self.l4.allow.get(&port).is_some_and(BTreeSet::is_empty) {
            self.l4.allow.remove(&port);
        }
        Ok(())
    }

    /// Closes `port`: its entry first (sk_lookup and XDP stop at once), then its prefixes.
    fn unexpose_l4(&mut self, port: u16) -> Result<(), DataplaneError> {
        match self.maps.l4_ports.remove(&l4_port_key(port)) {
            Ok(()) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(kernel(format!("removing from GW_L4_PORTS ({port})"))(e)),
        }
        self.l4.exposed.remove(&port);
        let stale = self.l4.allow.get(&port).cloned().unwrap_or_default();
        for net in stale {
            self.maps.l4_allow_remove(port, net)?;
            if let Some(set) = self.l4.allow.get_mut(&port) {
                set.remove(&net);
            }
        }
        self.l4.allow.remove(&port);
        Ok(())
    }

    /// Read-modify-write of `GW_EDGE_CFG[0]`.
    fn update_edge_config(&mut self, f: impl FnOnce(&mut EdgeConfig)) -> Result<(), DataplaneError> {
        let mut cfg = self.maps.edge_config()?;
        f(&mut cfg);
        self.maps.edge_config.set(0, cfg, 0).map_err(kernel("writing GW_EDGE_CFG"))
    }
}

/// `allow_from` as the kernel stores it: host bits cleared, duplicates gone.
fn prefixes(allow_from: &[Ipv4Net]) -> BTreeSet<Ipv4Net> {
    allow_from.iter().map(Ipv4Net::trunc).collect()
}

impl Dataplane {
    /// Sets the edge guard's per-source limit of new TCP connections (IPv4): `syn_rate` per
    /// second (0: no limit) in bursts of at most `syn_burst` (at least 1). Applies to the next
    /// SYN; sources keep the tokens they hold, up to the new burst.
    pub fn set_edge_limits(&self, syn_rate: u32, syn_burst: u32) -> Result<(), DataplaneError> {
        self.check_owned()?;
        let Some(mut inner) = self.lock() else { return Ok(()) };
        inner.update_edge_config(|c| {
            c.syn_rate = syn_rate;
            c.syn_burst = syn_burst;
        })
    }

    /// Steers new TCP connections to the exposed ports of `ports` on `address` (`0.0.0.0`: any
    /// local address) onto `listener`: puts it at index 0 of `GW_L4_LISTEN` (replacing the
    /// socket there), makes sure `l4_steer` is attached to the network namespace of the calling
    /// thread behind its pinned link (swapping the program of a previous process), then writes
    /// the range. `listener` must be a listening TCP socket of that namespace.
    ///
    /// The socket stays in the map only while it is open: once every process holding it has
    /// closed it, the kernel removes it, and exposed ports are reset rather than steered.
    pub fn steer_l4(
        &self,
        listener: BorrowedFd<'_>,
        address: Ipv4Addr,
        ports: RangeInclusive<u16>,
    ) -> Result<(), DataplaneError> {
        self.check_owned()?;
        let Some(mut inner) = self.lock() else { return Ok(()) };
        let (lo, hi) = (*ports.start(), *ports.end());
        if lo == 0 || lo > hi {
            return Err(DataplaneError::Invalid(format!("L4 port range {lo}-{hi} is empty or starts at 0")));
        }
        let inner = &mut *inner;
        inner.maps.l4_listen.set(0, &listener, 0).map_err(kernel("putting the L4 listener in GW_L4_LISTEN"))?;
        attach::ensure_l4_steer(&mut inner.ebpf, &inner.pins)?;
        inner.update_edge_config(|c| {
            c.l4_addr = address.octets();
            c.l4_port_lo = lo;
            c.l4_port_hi = hi;
        })
    }

    /// Makes `port` exposed with exactly `allow_from` as its allow-list (an empty list: exposed,
    /// every SYN dropped). New prefixes first, then the port's entry (zeroed counters) if it is
    /// missing, then prefixes no longer listed: a change never opens the port wider than
    /// old ∪ new, and never closes it in between.
    pub fn expose_l4_port(&self, port: u16, allow_from: &[Ipv4Net]) -> Result<(), DataplaneError> {
        self.check_owned()?;
        let Some(mut inner) = self.lock() else { return Ok(()) };
        invalid_port(port)?;
        inner.expose_l4(port, &prefixes(allow_from))
    }

    /// Closes `port`: its `GW_L4_PORTS` entry first (no longer steered nor let through the edge
    /// guard, from the next SYN), then its prefixes. Connections already open are not touched.
    pub fn unexpose_l4_port(&self, port: u16) -> Result<(), DataplaneError> {
        self.check_owned()?;
        let Some(mut inner) = self.lock() else { return Ok(()) };
        inner.unexpose_l4(port)
    }

    /// Every exposed port's counters, summed over CPUs, by port (none when nothing is enforced).
    pub fn l4_port_stats(&self) -> Result<Vec<(u16, L4PortStats)>, DataplaneError> {
        let Some(inner) = self.lock() else { return Ok(Vec::new()) };
        Ok(inner.maps.l4_stats())
    }

    /// Makes the kernel's L4 maps hold exactly `exposed` (port, allow-list): at start-up, against
    /// what the kernel holds (a previous process's ports keep being enforced until then), ports
    /// and prefixes no longer exposed are removed.
    pub fn reconcile_l4(&self, exposed: &[(u16, Vec<Ipv4Net>)]) -> Result<(), DataplaneError> {
        self.check_owned()?;
        let Some(mut inner) = self.lock() else { return Ok(()) };
        for (port, _) in exposed {
            invalid_port(*port)?;
        }
        let inner = &mut *inner;
        // The kernel is the truth: diff against it, not against what we believe.
        inner.l4 = read_l4_shadow(&inner.maps);
        let mut desired: BTreeMap<u16, BTreeSet<Ipv4Net>> = BTreeMap::new();
        for (port, allow) in exposed {
            desired.entry(*port).or_default().extend(prefixes(allow));
        }
        for (port, allow) in &desired {
            inner.expose_l4(*port, allow)?;
        }
        let stale: BTreeSet<u16> = inner
            .l4
            .exposed
            .iter()
            .chain(inner.l4.allow.keys())
            .copied()
            .filter(|p| !desired.contains_key(p))
            .collect();
        for port in stale {
            inner.unexpose_l4(port)?;
        }
        Ok(())
    }
}
