//! The kernel data plane: load, pin, attach, typed maps, reconcile.
//!
//! Maps are pinned under `<bpffs>/maps`, program links under `<bpffs>/links`, so enforcement
//! outlives the process. A new process reuses the pinned maps and atomically swaps the programs
//! behind the pinned links (`bpf_link_update`): there is no instant with no program attached.

mod attach;
mod batch;
pub mod bpffs;
mod hostaddrs;
pub mod inspect;
mod l4;
pub mod maps;
mod netns_link;
mod query;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    sync::Mutex,
    time::{Duration, Instant},
};

use aya::{
    Ebpf,
    maps::{MapError, PerCpuValues},
};
use gateway_common::{
    IPPROTO_TCP, IPPROTO_UDP,
    counters::{Hook, Reason},
    policy::{Endpoint, KernelConfig, PolicyValue, PortKey, SandboxKey, SandboxRecord, SandboxStats, origin},
};

pub use attach::{EBPF_OBJECT, load_object, teardown};
pub use inspect::{dump, status};

use crate::{
    errors::{ApiError, ErrorCode},
    model::{preview::Preview, sandbox::Sandbox},
};
use bpffs::PinDir;
use maps::KernelMaps;

/// What the data plane needs from the configuration.
#[derive(Clone, Debug)]
pub struct DataplaneSettings {
    /// `dataplane.enabled`: false runs the control plane without kernel enforcement (tests of
    /// the HTTP layer, development on machines without BPF).
    pub enabled: bool,
    /// `dataplane.mark`: the `SO_MARK` of the gateway's sockets towards sandboxes.
    pub mark: u32,
    /// `dataplane.bpffs`: pin directory (mounted as bpffs if needed).
    pub bpffs: PathBuf,
    /// `dataplane.public_interface`: XDP edge guard interface, `None` = off.
    pub public_interface: Option<String>,
    /// `dataplane.xdp_mode`.
    pub xdp_mode: XdpModeSetting,
    /// Host sockets no sandbox may reach (admin listener, metrics).
    pub protected: Vec<SocketAddr>,
    /// Host TCP ports open to new connections on the public interface (the gateway's public
    /// listeners and `dataplane.extra_public_ports`).
    pub public_ports: Vec<u16>,
    /// Host ports sandboxes may open connections to, on any address of the host
    /// (`dataplane.host_allow` and the HTTPS listener's port). Every other new connection from
    /// a sandbox to the host is dropped.
    pub host_allow: Vec<HostPort>,
}

/// A port on the host, as written in `dataplane.host_allow`: `udp/53`, `tcp/8443`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostPort {
    /// `IPPROTO_TCP` or `IPPROTO_UDP`.
    pub proto: u8,
    /// The port (1..65535).
    pub port: u16,
}

impl HostPort {
    /// A TCP port.
    pub const fn tcp(port: u16) -> Self {
        Self { proto: IPPROTO_TCP, port }
    }
    /// A UDP port.
    pub const fn udp(port: u16) -> Self {
        Self { proto: IPPROTO_UDP, port }
    }
}

impl std::str::FromStr for HostPort {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not \"tcp/PORT\" or \"udp/PORT\" with PORT in 1..65535");
        let (proto, port) = s.split_once('/').ok_or_else(bad)?;
        let port: u16 = port.parse().ok().filter(|p| *p != 0).ok_or_else(bad)?;
        match proto {
            "tcp" => Ok(Self::tcp(port)),
            "udp" => Ok(Self::udp(port)),
            _ => Err(bad()),
        }
    }
}

impl std::fmt::Display for HostPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let proto = if self.proto == IPPROTO_UDP { "udp" } else { "tcp" };
        write!(f, "{proto}/{}", self.port)
    }
}

/// `dataplane.xdp_mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum XdpModeSetting {
    /// Generic XDP (works on every interface).
    #[default]
    Skb,
    /// Driver (native) XDP.
    Native,
}

/// Why an entry exists, for the policy view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PortGrant {
    /// Bit set of `gateway_common::policy::origin`.
    pub origin: u8,
    /// Previews holding the port open.
    pub preview_refs: u32,
}

/// The kernel policy of one sandbox, as the control plane wants it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SandboxPolicy {
    pub address: Ipv4Addr,
    /// Its host-side interface.
    pub interface: String,
    /// TCP ports open to the gateway, and why.
    pub ports: BTreeMap<u16, PortGrant>,
}

impl SandboxPolicy {
    /// The kernel policy of a sandbox: every declared port (origin DECLARED) and every port a
    /// preview holds open (origin PREVIEW, `preview_refs` = how many). A port is open if it is
    /// declared OR used by at least one of `previews` (pass only live ones). A preview of the
    /// sandbox API (built in) needs no entry.
    pub fn of<'a>(sandbox: &Sandbox, previews: impl IntoIterator<Item = &'a Preview>) -> Self {
        let mut ports: BTreeMap<u16, PortGrant> =
            sandbox.ports.iter().map(|p| (p.target, PortGrant { origin: origin::DECLARED, preview_refs: 0 })).collect();
        for port in previews.into_iter().filter_map(Preview::kernel_port) {
            let grant = ports.entry(port).or_default();
            grant.origin |= origin::PREVIEW;
            grant.preview_refs += 1;
        }
        SandboxPolicy { address: sandbox.address, interface: sandbox.interface.clone(), ports }
    }
}

/// Errors of the data plane, by cause.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// The interface does not exist.
    #[error("interface {0:?} does not exist on this host")]
    UnknownInterface(String),
    /// The binary was built without the eBPF object.
    #[error("this binary was built without its eBPF programs; build it with `cargo xtask build`")]
    NoProgram,
    /// Data plane disabled by configuration.
    #[error("the data plane is disabled (dataplane.enabled = false)")]
    Disabled,
    /// This process handed the data plane over to its successor (zero-downtime restart).
    #[error("the gateway is restarting: the data plane now belongs to the new process; retry")]
    HandedOver,
    /// A request the data plane cannot express (a caller's bug: configuration and API
    /// validation come first).
    #[error("invalid data plane request: {0}")]
    Invalid(String),
    /// Anything the kernel refused.
    #[error("{context}: {source}")]
    Kernel {
        /// What we were doing.
        context: String,
        /// The kernel's or aya's error.
        #[source]
        source: anyhow::Error,
    },
}

impl DataplaneError {
    /// The answer to a client whose change this error refused (nothing was changed).
    pub fn api_error(&self) -> ApiError {
        let code = match self {
            DataplaneError::UnknownInterface(_) => ErrorCode::UnknownInterface,
            DataplaneError::Disabled => ErrorCode::DataplaneDisabled,
            DataplaneError::NoProgram => ErrorCode::DataplaneUnavailable,
            DataplaneError::HandedOver => ErrorCode::GatewayRestarting,
            DataplaneError::Invalid(_) => ErrorCode::DataplaneError,
            DataplaneError::Kernel { .. } => {
                return ApiError::new(
                    ErrorCode::DataplaneError,
                    format!("the kernel refused the policy update: {self}"),
                );
            }
        };
        ApiError::new(code, self.to_string())
    }
}

/// Wraps an error with what we were doing.
pub(crate) fn kernel<E>(context: impl Into<String>) -> impl FnOnce(E) -> DataplaneError
where
    E: std::error::Error + Send + Sync + 'static,
{
    let context = context.into();
    move |e| DataplaneError::Kernel { context, source: anyhow::Error::new(e) }
}

/// What the data plane reports as it works. The metrics implement it and are connected at
/// start-up ([`Dataplane::with_observer`]), so the data plane imports nothing above it.
pub trait Observer: Send + Sync {
    /// A policy update reached the kernel and took `took`.
    fn policy_applied(&self, took: Duration);
    /// The kernel refused a policy update.
    fn policy_apply_failed(&self);
    /// How many sandboxes and policy entries the kernel holds now.
    fn entries(&self, sandboxes: usize, policy_entries: usize);
}

/// The observer until one is connected: reports go nowhere.
struct Unobserved;

impl Observer for Unobserved {
    fn policy_applied(&self, _: Duration) {}
    fn policy_apply_failed(&self) {}
    fn entries(&self, _: usize, _: usize) {}
}

/// The running data plane, or a stand-in that enforces nothing.
pub struct Dataplane {
    state: State,
}

enum State {
    /// `dataplane.enabled = false`: every mutation is accepted and does nothing.
    Disabled,
    /// This process programs the kernel.
    Enforcing(Box<Mutex<Inner>>),
    /// The kernel maps belong to a successor process (zero-downtime restart): every call is
    /// refused.
    HandedOver,
}

struct Inner {
    ebpf: Ebpf,
    maps: KernelMaps,
    pins: PinDir,
    /// What the kernel holds per sandbox, kept equal to it by every mutation and `reconcile`.
    shadow: HashMap<Ipv4Addr, Shadow>,
    /// Interfaces this process attached to (or verified), by ifindex.
    attached: HashSet<u32>,
    /// Policy entries in `shadow`, kept by every mutation (summing them per call costs
    /// ~200 µs at 100,000 sandboxes).
    policy_entries: usize,
    /// What the kernel holds of L4 exposure, kept equal to it by every L4 change.
    l4: l4::L4Shadow,
    observer: &'static dyn Observer,
    /// Keeps `GW_HOST_ADDRS` equal to the host's addresses while the data plane is open.
    _host_addrs: hostaddrs::HostAddrWatcher,
}

impl Inner {
    /// Attaches the sandbox programs to an interface once per process.
    fn ensure_hooks(&mut self, ifname: &str, ifindex: u32) -> Result<(), DataplaneError> {
        if !self.attached.contains(&ifindex) {
            attach::ensure_sandbox_hooks(&mut self.ebpf, &self.pins, ifname, ifindex)?;
            self.attached.insert(ifindex);
        }
        Ok(())
    }

    /// Exports how many sandboxes and policy entries the kernel holds (from the shadow, which
    /// every mutation keeps equal to the kernel: no map walk at scrape time).
    fn publish_entries(&self) {
        self.observer.entries(self.shadow.len(), self.policy_entries);
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Shadow {
    ifindex: u32,
    ports: BTreeMap<u16, PolicyValue>,
}

fn ifindex_of(ifname: &str) -> Result<u32, DataplaneError> {
    nix::net::if_::if_nametoindex(ifname).map_err(|_| DataplaneError::UnknownInterface(ifname.to_owned()))
}

fn endpoint(addr: Ipv4Addr, port: u16) -> Endpoint {
    Endpoint::new(addr.octets(), port, IPPROTO_TCP)
}

impl Dataplane {
    /// Loads the programs (reusing pinned maps and links), writes the configuration maps, and
    /// attaches the edge guard. Sandboxes become reachable only through `reconcile` and
    /// `apply_sandbox`; until then, pinned state from a previous process keeps being enforced.
    pub fn open(settings: &DataplaneSettings) -> Result<Self, DataplaneError> {
        if !settings.enabled {
            return Ok(Self::disabled());
        }
        let pins = PinDir::new(&settings.bpffs);
        // The programs log through aya-log, whose records reach `tracing` through the `log`
        // bridge with the eBPF crate's name as target: `GATEWAY_LOG=info,gateway_ebpf=debug`
        // turns on one line per dropped packet, in the kernel as well as here.
        let log_level = if tracing::enabled!(target: "gateway_ebpf", tracing::Level::DEBUG) { 4 } else { 3 };
        let mut ebpf = attach::load_object(&pins, log_level)?;
        spawn_logger(&mut ebpf);
        let mut maps = KernelMaps::open(&pins.maps())?;
        maps.config.set(0, KernelConfig { mark: settings.mark, flags: 0 }, 0).map_err(kernel("writing GW_CONFIG"))?;
        maps.set_protected(&protected_keys(&settings.protected))?;
        // Counters whose record is gone (an older version removed the record first and may
        // have been killed in between) would pass for a registration with the new programs,
        // which are attached only later (reconcile, apply_sandbox).
        let records: HashSet<[u8; 4]> = maps.sandboxes.keys().filter_map(Result::ok).map(|k| k.addr).collect();
        let orphans: Vec<SandboxKey> =
            maps.stats.keys().filter_map(Result::ok).filter(|k| !records.contains(&k.addr)).collect();
        for key in orphans {
            let _ = maps.stats.remove(&key);
        }
        let public = settings.public_ports.iter().map(|p| PortKey::new(*p, IPPROTO_TCP)).collect();
        sync_set(&mut maps.public, public, "GW_PUBLIC")?;
        let host_allow = settings.host_allow.iter().map(|p| PortKey::new(p.port, p.proto)).collect();
        sync_set(&mut maps.host_allow, host_allow, "GW_HOST_ALLOW")?;
        // Before any program is attached to a new interface (reconcile, apply_sandbox).
        let host_addrs = hostaddrs::watch(&pins.maps())?;
        let edge = match &settings.public_interface {
            Some(ifname) => {
                let ifindex = ifindex_of(ifname)?;
                attach::ensure_edge_guard(&mut ebpf, &pins, ifname, ifindex, settings.xdp_mode)?;
                Some(ifindex)
            }
            None => None,
        };
        // A previous process's steering keeps running until `steer_l4`; with this process's
        // program from now on.
        attach::refresh_l4_steer(&mut ebpf, &pins)?;
        for name in attach::prune_links(&pins, edge) {
            tracing::info!(link = %name, "removed stale link pin");
        }
        let l4 = l4::read_l4_shadow(&maps);
        let shadow = read_shadow(&maps);
        let policy_entries = shadow.values().map(|s| s.ports.len()).sum();
        let observer = &Unobserved;
        let inner = Inner {
            ebpf,
            maps,
            pins,
            shadow,
            attached: HashSet::new(),
            policy_entries,
            l4,
            observer,
            _host_addrs: host_addrs,
        };
        Ok(Self { state: State::Enforcing(Box::new(Mutex::new(inner))) })
    }

    /// Reports to `observer` from now on, starting with the entries the kernel holds.
    pub fn with_observer(mut self, observer: &'static dyn Observer) -> Self {
        if let State::Enforcing(inner) = &mut self.state {
            let inner = inner.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner);
            inner.observer = observer;
            inner.publish_entries();
        }
        self
    }

    /// Where the maps are pinned (`None` when nothing is enforced): the metrics read the verdict
    /// counters from there at every scrape.
    pub fn maps_dir(&self) -> Option<PathBuf> {
        self.lock().map(|inner| inner.pins.maps())
    }

    /// A stand-in for `dataplane.enabled = false`: every mutation is accepted and does nothing.
    pub fn disabled() -> Self {
        Self { state: State::Disabled }
    }

    /// A stand-in for a data plane handed over to a successor (`crate::handoff`): every call
    /// fails with [`DataplaneError::HandedOver`], so a mutation racing a restart fails fast and
    /// can be retried against the successor.
    pub fn handed_over() -> Self {
        Self { state: State::HandedOver }
    }

    fn check_owned(&self) -> Result<(), DataplaneError> {
        if matches!(self.state, State::HandedOver) { Err(DataplaneError::HandedOver) } else { Ok(()) }
    }

    /// Whether the kernel is enforced by this instance.
    pub fn is_enabled(&self) -> bool {
        matches!(self.state, State::Enforcing(_))
    }

    fn lock(&self) -> Option<std::sync::MutexGuard<'_, Inner>> {
        match &self.state {
            State::Enforcing(m) => Some(m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)),
            State::Disabled | State::HandedOver => None,
        }
    }

    /// Sets or replaces one sandbox's kernel policy: attaches the programs to its interface if
    /// needed, registers its address, opens new ports, then closes removed ones (never a window
    /// where a port outside old ∪ new is open). Returns how long the map updates took.
    pub fn apply_sandbox(&self, policy: &SandboxPolicy) -> Result<Duration, DataplaneError> {
        self.check_owned()?;
        let ifindex = ifindex_of(&policy.interface)?;
        let Some(mut inner) = self.lock() else { return Ok(Duration::ZERO) };
        let inner = &mut *inner;
        inner.ensure_hooks(&policy.interface, ifindex)?;
        let started = Instant::now();
        let old = inner.shadow.get(&policy.address).cloned().unwrap_or_default();
        let new = desired_shadow(policy, ifindex);
        if let Err(e) = apply_diff(&mut inner.maps, policy.address, &old, Some(&new)) {
            inner.observer.policy_apply_failed();
            return Err(e);
        }
        let took = started.elapsed();
        inner.policy_entries = (inner.policy_entries + new.ports.len()).saturating_sub(old.ports.len());
        inner.shadow.insert(policy.address, new);
        inner.observer.policy_applied(took);
        inner.publish_entries();
        Ok(took)
    }

    /// Removes a sandbox's entries. Its interface stays attached (and so closed to new flows).
    pub fn remove_sandbox(&self, address: Ipv4Addr) -> Result<(), DataplaneError> {
        self.check_owned()?;
        let Some(mut inner) = self.lock() else { return Ok(()) };
        let inner = &mut *inner;
        let old = inner.shadow.remove(&address).unwrap_or_default();
        inner.policy_entries = inner.policy_entries.saturating_sub(old.ports.len());
        let result = apply_diff(&mut inner.maps, address, &old, None);
        if result.is_err() {
            inner.observer.policy_apply_failed();
        }
        inner.publish_entries();
        result
    }

    /// Makes the kernel equal to `all`: attaches to every interface, adds what is missing,
    /// removes what is stale. A sandbox whose interface does not exist yet keeps its entries
    /// (its traffic cannot flow anyway) and is reported in the log.
    pub fn reconcile(&self, all: &[SandboxPolicy]) -> Result<(), DataplaneError> {
        self.check_owned()?;
        let Some(mut inner) = self.lock() else { return Ok(()) };
        let inner = &mut *inner;
        let mut desired: HashMap<Ipv4Addr, Shadow> = HashMap::new();
        for policy in all {
            let ifindex = match ifindex_of(&policy.interface) {
                Ok(i) => {
                    inner.ensure_hooks(&policy.interface, i)?;
                    i
                }
                Err(_) => {
                    tracing::warn!(address = %policy.address, interface = %policy.interface, "sandbox interface missing; entries kept, nothing to attach to");
                    0
                }
            };
            desired.insert(policy.address, desired_shadow(policy, ifindex));
        }
        // The kernel is the truth: diff against it, not against what we believe.
        let current = read_shadow(&inner.maps);

        for (addr, new) in &desired {
            let old = current.get(addr).cloned().unwrap_or_default();
            if &old != new {
                apply_diff(&mut inner.maps, *addr, &old, Some(new))?;
            }
        }
        for (addr, old) in &current {
            if !desired.contains_key(addr) {
                apply_diff(&mut inner.maps, *addr, old, None)?;
            }
        }
        inner.policy_entries = desired.values().map(|s| s.ports.len()).sum();
        inner.shadow = desired;
        inner.publish_entries();
        Ok(())
    }

    /// What the kernel holds for `address`, read back from the maps.
    pub fn policy_view(&self, address: Ipv4Addr) -> Result<PolicyView, DataplaneError> {
        self.check_owned()?;
        let Some(inner) = self.lock() else { return Err(DataplaneError::Disabled) };
        Ok(inspect::policy_view(&inner.maps, address))
    }

    /// Verdict counters by hook and reason, summed over CPUs.
    pub fn verdict_counters(&self) -> Result<Vec<(Hook, Reason, u64)>, DataplaneError> {
        let Some(inner) = self.lock() else { return Err(DataplaneError::Disabled) };
        inner.maps.verdict_counters()
    }
}

fn desired_shadow(policy: &SandboxPolicy, ifindex: u32) -> Shadow {
    Shadow {
        ifindex,
        ports: policy.ports.iter().map(|(p, g)| (*p, PolicyValue::gateway(g.origin, g.preview_refs))).collect(),
    }
}

/// Moves one sandbox's kernel entries from `old` to `new` (`None` unregisters it): opens new
/// ports first, (re)registers the address, then closes removed ports, so no port outside
/// old ∪ new is ever open. Unregistering removes the entries, then the address record.
fn apply_diff(maps: &mut KernelMaps, addr: Ipv4Addr, old: &Shadow, new: Option<&Shadow>) -> Result<(), DataplaneError> {
    let key = SandboxKey { addr: addr.octets() };
    let unregister = new.is_none();
    let empty = Shadow::default();
    let new = new.unwrap_or(&empty);
    let adds: Vec<(Endpoint, PolicyValue)> = new
        .ports
        .iter()
        .filter(|(p, v)| {
            old.ports.get(p).map(|o| (o.allow_from, o.origin, o.preview_refs))
                != Some((v.allow_from, v.origin, v.preview_refs))
        })
        .map(|(p, v)| (endpoint(addr, *p), *v))
        .collect();
    maps.policy_update_batch(&adds)?;
    if !unregister {
        let record = SandboxRecord { ifindex: new.ifindex, flags: 0 };
        maps.sandboxes.insert(key, record, 0).map_err(kernel("writing GW_SANDBOXES"))?;
        if maps.stats.get(&key, 0).is_err() {
            let zero = PerCpuValues::try_from(vec![SandboxStats::default(); maps::nr_cpus()])
                .map_err(kernel("sizing per-CPU counters"))?;
            maps.stats.insert(key, zero, 0).map_err(kernel("writing GW_SBX_STATS"))?;
        }
    }
    let removes: Vec<Endpoint> =
        old.ports.keys().filter(|p| !new.ports.contains_key(p)).map(|p| endpoint(addr, *p)).collect();
    maps.policy_delete_batch(&removes)?;
    if unregister {
        // After its entries: an entry never exists without its sandbox record, which
        // `sandbox_in` relies on to admit with a single lookup. The counters go first: a
        // counter entry proves the record to `sandbox_in` (one lookup for both).
        let _ = maps.stats.remove(&key);
        match maps.sandboxes.remove(&key) {
            Ok(()) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(kernel("removing from GW_SANDBOXES")(e)),
        }
    }
    Ok(())
}

/// aya reports a missing key either as `KeyNotFound` or as the syscall's ENOENT.
fn is_not_found(e: &MapError) -> bool {
    match e {
        MapError::KeyNotFound => true,
        MapError::SyscallError(s) => s.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

/// Reads every sandbox and policy entry back from the kernel.
fn read_shadow(maps: &KernelMaps) -> HashMap<Ipv4Addr, Shadow> {
    let mut out: HashMap<Ipv4Addr, Shadow> = HashMap::new();
    for (key, rec) in maps.sandbox_entries() {
        out.entry(Ipv4Addr::from(key.addr)).or_default().ifindex = rec.ifindex;
    }
    for (ep, value) in maps.policy_entries() {
        // Shadows compare rules, not counters.
        let rule = PolicyValue { admitted: 0, ..value };
        out.entry(Ipv4Addr::from(ep.addr)).or_default().ports.insert(ep.port(), rule);
    }
    out
}

fn protected_keys(addrs: &[SocketAddr]) -> Vec<Endpoint> {
    let mut keys = Vec::new();
    for a in addrs {
        let ip = match a {
            SocketAddr::V4(v4) => v4.ip().octets(),
            SocketAddr::V6(_) => [0; 4],
        };
        for proto in [IPPROTO_TCP, IPPROTO_UDP] {
            keys.push(Endpoint::new(ip, a.port(), proto));
        }
    }
    keys
}

/// Makes a set-like map (value 1) hold exactly `want`.
fn sync_set<K: aya::Pod + Eq + std::hash::Hash>(
    map: &mut aya::maps::HashMap<aya::maps::MapData, K, u32>,
    want: Vec<K>,
    name: &str,
) -> Result<(), DataplaneError> {
    for k in &want {
        map.insert(k, 1, 0).map_err(kernel(format!("writing {name}")))?;
    }
    let stale: Vec<K> = map.keys().filter_map(Result::ok).filter(|k| !want.contains(k)).collect();
    for k in stale {
        let _ = map.remove(&k);
    }
    Ok(())
}

/// Forwards the programs' aya-log records to `tracing` (via `log`) from a task, keeping the
/// logger alive for as long as the runtime runs.
fn spawn_logger(ebpf: &mut Ebpf) {
    let Ok(handle) = tokio::runtime::Handle::try_current() else { return };
    match aya_log::EbpfLogger::init(ebpf) {
        Ok(logger) => {
            // SAFETY: the logger owns its ring-buffer fd and is moved into the AsyncFd, which
            // deregisters it before dropping (and so closing) it.
            let registered =
                unsafe { tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) };
            let Ok(mut fd) = registered else { return };
            handle.spawn(async move {
                loop {
                    let Ok(mut guard) = fd.readable_mut().await else { break };
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
            });
        }
        Err(e) => tracing::warn!(error = %e, "eBPF logs unavailable"),
    }
}

/// What the kernel holds for one sandbox (serialized by the admin API as is).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyView {
    /// The sandbox address.
    pub address: Ipv4Addr,
    /// Whether `GW_SANDBOXES` holds it.
    pub registered: bool,
    /// ifindex recorded for anti-spoofing.
    pub ifindex: u32,
    /// Every entry, built-in ones included.
    pub entries: Vec<PolicyEntryView>,
    /// New connections let in / dropped, summed over CPUs.
    pub counters: SandboxCountersView,
}

/// One kernel entry.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyEntryView {
    /// Port inside the sandbox.
    pub port: u16,
    /// "TCP".
    pub protocol: &'static str,
    /// "gateway" or "nobody".
    pub allow_from: &'static str,
    /// Why it exists: "declared", "preview", "builtin" (80/8080), "reserved" (443, never).
    pub origin: Vec<&'static str>,
    /// Previews holding it open.
    pub preview_refs: u32,
    /// New connections this entry admitted (none for built-in entries, whose connections count
    /// in the sandbox's counters).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admitted: Option<u64>,
}

/// Per-sandbox counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxCountersView {
    /// New connections let in (entries' `admitted` plus the sandbox API's).
    pub allowed: u64,
    /// New connections dropped.
    pub dropped: u64,
}
