//! The kernel data plane: load, pin, attach, typed maps, reconcile.
//!
//! Maps are pinned under `<bpffs>/maps`, program links under `<bpffs>/links`, so enforcement
//! outlives the process. A new process reuses the pinned maps and atomically swaps the programs
//! behind the pinned links (`bpf_link_update`): there is no instant with no program attached.

use std::{collections::BTreeMap, net::{Ipv4Addr, SocketAddr}, path::PathBuf, time::Duration};

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
    /// Its address.
    pub address: Ipv4Addr,
    /// Its host-side interface.
    pub interface: String,
    /// TCP ports open to the gateway, and why.
    pub ports: BTreeMap<u16, PortGrant>,
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

/// The running data plane (or a disabled stand-in).
pub struct Dataplane {
    _private: (),
}

impl Dataplane {
    /// Loads the programs (reusing pinned maps and links), writes the configuration maps, and
    /// attaches the edge guard. Nothing is reachable until `reconcile` or `apply_sandbox` says so.
    pub fn open(_settings: &DataplaneSettings) -> Result<Self, DataplaneError> {
        Err(DataplaneError::NoProgram)
    }

    /// A stand-in for `dataplane.enabled = false`: every mutation is accepted and does nothing.
    pub fn disabled() -> Self {
        Self { _private: () }
    }

    /// Sets or replaces one sandbox's kernel policy: attaches the programs to its interface if
    /// needed, registers its address, opens new ports, then closes removed ones (never a window
    /// where a port outside old ∪ new is open). Returns how long the map updates took.
    pub fn apply_sandbox(&self, _policy: &SandboxPolicy) -> Result<Duration, DataplaneError> {
        Ok(Duration::ZERO)
    }

    /// Removes a sandbox's entries. Its interface stays attached (and so closed to new flows).
    pub fn remove_sandbox(&self, _address: Ipv4Addr) -> Result<(), DataplaneError> {
        Ok(())
    }

    /// Makes the kernel equal to `all`: adds what is missing, removes what is stale.
    pub fn reconcile(&self, _all: &[SandboxPolicy]) -> Result<(), DataplaneError> {
        Ok(())
    }

    /// What the kernel holds for `address`, read back from the maps.
    pub fn policy_view(&self, _address: Ipv4Addr) -> Result<PolicyView, DataplaneError> {
        Err(DataplaneError::Disabled)
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
}

/// Per-sandbox counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxCountersView {
    /// New connections let in.
    pub allowed: u64,
    /// New connections dropped.
    pub dropped: u64,
}
