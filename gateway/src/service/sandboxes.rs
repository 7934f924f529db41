//! Registered sandboxes: the request bodies and their validation, the in-memory index (by id,
//! host label and address), and the two mutations, which take the mutation guard.
//!
//! A sandbox's kernel policy is its declared ports plus the ports its live previews hold open,
//! so a mutation asks the preview registry for it.

use super::{mutation::Mutating, previews::registry::PreviewRegistry};
use crate::model::FastMap;
use crate::{
    errors::{ApiError, ErrorCode},
    model::{
        is_dns_label, is_interface_name,
        sandbox::{PortProtocol, PortSpec, Sandbox, SandboxId, validate_names},
    },
};
use serde::{Deserialize, Serialize};
use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    sync::{Arc, RwLock},
    time::Duration,
};

/// Body of `PUT /v1/workspaces/{ws}/sandboxes/{name}`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SandboxSpec {
    /// The sandbox's private address.
    pub address: Ipv4Addr,
    /// The host-side interface leading to it.
    pub interface: String,
    /// Declared ports.
    #[serde(default)]
    pub ports: Vec<PortRequest>,
}

/// One declared port as requested (wide integer, so an out-of-range port gets a clear message).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortRequest {
    /// The port inside the sandbox.
    pub target: i64,
    /// How the gateway speaks to it.
    #[serde(default)]
    pub protocol: PortProtocol,
}

/// A sandbox as answered by the API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxView {
    pub workspace: String,
    pub name: String,
    /// Private address.
    pub address: Ipv4Addr,
    /// Host-side interface.
    pub interface: String,
    /// Declared ports, sorted.
    pub ports: Vec<PortSpec>,
    /// `https://sbx-{name}-{ws}.{region}.{domain}[:port]`.
    pub url: String,
    /// The fleet host that runs it (absent on a single host).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub owner: Option<String>,
    /// How long the kernel update took (answers to a PUT only).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub policy_applied_micros: Option<u64>,
}

impl SandboxView {
    /// The view of `sandbox`, reachable at `url`.
    pub fn of(sandbox: &Sandbox, url: String, applied: Option<Duration>) -> Self {
        Self {
            workspace: sandbox.workspace.clone(),
            name: sandbox.name.clone(),
            address: sandbox.address,
            interface: sandbox.interface.clone(),
            ports: sandbox.ports.clone(),
            url,
            owner: sandbox.owner.clone(),
            policy_applied_micros: applied.map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
        }
    }
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::BadRequest, message)
}

fn not_found(id: &SandboxId) -> ApiError {
    ApiError::new(
        ErrorCode::WorkloadNotFound,
        format!("sandbox {:?} not found in workspace {:?}", id.name, id.workspace),
    )
}

/// Checks declared ports: range, reserved, duplicates. Returns them sorted.
pub fn validate_ports(ports: &[PortRequest]) -> Result<Vec<PortSpec>, ApiError> {
    let mut out: BTreeMap<u16, PortSpec> = BTreeMap::new();
    for p in ports {
        let target = match u16::try_from(p.target) {
            Ok(t) if t != 0 => t,
            _ => return Err(bad_request(format!("port {} is out of range: a port is 1 to 65535", p.target))),
        };
        if gateway_common::is_reserved_port(target) {
            return Err(ApiError::new(
                ErrorCode::ReservedPort,
                format!(
                    "port {target} is reserved and can never be declared (reserved: {})",
                    gateway_common::RESERVED_PORTS.map(|p| p.to_string()).join(", ")
                ),
            ));
        }
        if out.insert(target, PortSpec { target, protocol: p.protocol }).is_some() {
            return Err(bad_request(format!("port {target} is declared more than once")));
        }
    }
    Ok(out.into_values().collect())
}

/// Checks that an address can be a sandbox's.
pub fn validate_address(address: Ipv4Addr) -> Result<(), ApiError> {
    if address.is_unspecified() || address.is_broadcast() || address.is_multicast() || address.is_loopback() {
        return Err(bad_request(format!(
            "address {address} cannot be a sandbox address (unspecified, broadcast, multicast and loopback addresses are refused)"
        )));
    }
    Ok(())
}

/// Checks that an interface exists on this host.
pub fn validate_interface(interface: &str) -> Result<(), ApiError> {
    if !is_interface_name(interface) {
        return Err(bad_request(format!(
            "{interface:?} is not a valid interface name (1 to 15 printable characters, no '/' or ':')"
        )));
    }
    nix::net::if_::if_nametoindex(interface).map_err(|_| {
        ApiError::new(ErrorCode::UnknownInterface, format!("interface {interface:?} does not exist on this host"))
    })?;
    Ok(())
}

/// The sandbox a PUT describes, every field checked, run by fleet host `owner` (`None` on a
/// single host).
pub fn validate(workspace: &str, name: &str, spec: SandboxSpec, owner: Option<&str>) -> Result<Sandbox, ApiError> {
    validate_names(workspace, name)?;
    let ports = validate_ports(&spec.ports)?;
    validate_address(spec.address)?;
    validate_interface(&spec.interface)?;
    Ok(Sandbox {
        workspace: workspace.to_string(),
        name: name.to_string(),
        address: spec.address,
        interface: spec.interface,
        ports,
        owner: owner.map(str::to_string),
    })
}

#[derive(Default)]
struct Index {
    by_id: BTreeMap<SandboxId, Arc<Sandbox>>,
    by_label: FastMap<String, Arc<Sandbox>>,
    /// The sandboxes this host runs (addresses are host-local: another fleet host's sandbox
    /// may have the same one).
    by_address: FastMap<Ipv4Addr, Arc<Sandbox>>,
    /// This gateway's `fleet.host`; `None` on a single host.
    host: Option<String>,
}

impl Index {
    fn is_local(&self, sandbox: &Sandbox) -> bool {
        sandbox.owner == self.host
    }

    fn insert(&mut self, sandbox: Arc<Sandbox>) {
        self.remove(&sandbox.id());
        self.by_label.insert(sandbox.label(), sandbox.clone());
        if self.is_local(&sandbox) {
            self.by_address.insert(sandbox.address, sandbox.clone());
        }
        self.by_id.insert(sandbox.id(), sandbox);
    }

    fn remove(&mut self, id: &SandboxId) -> Option<Arc<Sandbox>> {
        let old = self.by_id.remove(id)?;
        self.by_label.remove(&old.label());
        if self.by_address.get(&old.address).is_some_and(|s| s.id() == *id) {
            self.by_address.remove(&old.address);
        }
        Some(old)
    }

    /// 409 if `sandbox` clashes with a sandbox other than itself, or another host runs it.
    fn check_conflicts(&self, sandbox: &Sandbox) -> Result<(), ApiError> {
        let id = sandbox.id();
        if let Some(other) = self.by_id.get(&id)
            && other.owner != sandbox.owner
        {
            return Err(ApiError::new(
                ErrorCode::OwnedByAnotherHost,
                format!(
                    "sandbox {id} is registered by fleet host {:?}: change or delete it there (a sandbox has one host)",
                    other.owner.as_deref().unwrap_or("?")
                ),
            ));
        }
        if self.is_local(sandbox)
            && let Some(other) = self.by_address.get(&sandbox.address)
            && other.id() != id
        {
            return Err(ApiError::new(
                ErrorCode::AddressConflict,
                format!("address {} is already used by sandbox {}", sandbox.address, other.id()),
            ));
        }
        let label = sandbox.label();
        if let Some(other) = self.by_label.get(&label)
            && other.id() != id
        {
            return Err(ApiError::new(
                ErrorCode::LabelConflict,
                format!(
                    "host label {label} is already the label of sandbox {} (name {:?}, workspace {:?}); choose another name",
                    other.id(),
                    other.name,
                    other.workspace
                ),
            ));
        }
        Ok(())
    }
}

/// The registered sandboxes. Reads take a short read lock and never wait for a mutation.
#[derive(Default)]
pub struct Sandboxes {
    index: RwLock<Index>,
}

impl Sandboxes {
    /// The index of the stored sandboxes, for fleet host `host` (`None`: a single host); fails
    /// if two of them clash.
    pub fn load(sandboxes: Vec<Sandbox>, host: Option<String>) -> Result<Self, String> {
        let mut index = Index { host, ..Index::default() };
        for sandbox in sandboxes {
            if let Err(e) = index.check_conflicts(&sandbox) {
                return Err(format!("sandbox {}: {}", sandbox.id(), e.message));
            }
            index.insert(Arc::new(sandbox));
        }
        Ok(Self { index: RwLock::new(index) })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The sandbox whose host label is `label` (exact, lower-case).
    pub fn by_label(&self, label: &str) -> Option<Arc<Sandbox>> {
        self.read().by_label.get(label).cloned()
    }

    /// The sandbox at `address`.
    pub fn by_address(&self, address: Ipv4Addr) -> Option<Arc<Sandbox>> {
        self.read().by_address.get(&address).cloned()
    }

    /// Whether `id` is registered.
    pub fn contains(&self, id: &SandboxId) -> bool {
        self.read().by_id.contains_key(id)
    }

    /// Every sandbox, sorted by (workspace, name).
    pub fn all(&self) -> Vec<Arc<Sandbox>> {
        self.read().by_id.values().cloned().collect()
    }

    /// One sandbox.
    pub fn get(&self, workspace: &str, name: &str) -> Result<Arc<Sandbox>, ApiError> {
        validate_names(workspace, name)?;
        let id = SandboxId::new(workspace, name);
        self.read().by_id.get(&id).cloned().ok_or_else(|| not_found(&id))
    }

    /// The sandboxes of a workspace (every sandbox if `None`), sorted by (workspace, name).
    pub fn list(&self, workspace: Option<&str>) -> Result<Vec<Arc<Sandbox>>, ApiError> {
        let Some(ws) = workspace else { return Ok(self.all()) };
        if !is_dns_label(ws) {
            return Err(bad_request(format!("invalid workspace {ws:?}")));
        }
        Ok(self
            .read()
            .by_id
            .range(SandboxId::new(ws, "")..)
            .take_while(|(id, _)| id.workspace == ws)
            .map(|(_, s)| s.clone())
            .collect())
    }

    /// Creates or replaces a sandbox: kernel → store → index. Returns it, how long the kernel
    /// update took, and whether it was created.
    pub async fn put(
        &self,
        m: &Mutating,
        previews: &PreviewRegistry,
        sandbox: Sandbox,
    ) -> Result<(Arc<Sandbox>, Duration, bool), ApiError> {
        let id = sandbox.id();
        let prev = {
            let index = self.read();
            index.check_conflicts(&sandbox)?;
            index.by_id.get(&id).cloned()
        };
        let policy = previews.policy_for(&sandbox);

        // An address change: the old address's entries go first (fail closed).
        if let Some(prev) = &prev
            && prev.address != sandbox.address
            && let Err(e) = m.remove(prev)
        {
            tracing::error!(sandbox = %id, error = %e, "removing the old address failed");
            restore(m, previews, Some(prev), None);
            return Err(e.api_error());
        }
        let applied = match m.apply(&sandbox, &policy) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(sandbox = %id, error = %e, "the data plane refused the policy");
                restore(m, previews, prev.as_deref(), Some(sandbox.address));
                return Err(e.api_error());
            }
        };
        if prev.as_deref() != Some(&sandbox)
            && let Err(e) = m.store.put_sandbox(sandbox.clone()).await
        {
            tracing::error!(sandbox = %id, error = %e, "state write failed; rolling the data plane back");
            restore(m, previews, prev.as_deref(), Some(sandbox.address));
            return Err(e.write_failed());
        }
        let sandbox = Arc::new(sandbox);
        self.write().insert(sandbox.clone());
        Ok((sandbox, applied, prev.is_none()))
    }

    /// Deletes a sandbox: its kernel entries first, then its record, then its index entry.
    /// Its previews are the caller's to forget.
    pub async fn delete(
        &self,
        m: &Mutating,
        previews: &PreviewRegistry,
        id: &SandboxId,
    ) -> Result<Arc<Sandbox>, ApiError> {
        let prev = self.read().by_id.get(id).cloned().ok_or_else(|| not_found(id))?;
        if let Err(e) = m.remove(&prev) {
            tracing::error!(sandbox = %id, error = %e, "removing the kernel policy failed");
            restore(m, previews, Some(&prev), None);
            return Err(e.api_error());
        }
        if let Err(e) = m.store.delete_sandbox(id.clone()).await {
            tracing::error!(sandbox = %id, error = %e, "state write failed; restoring the kernel policy");
            restore(m, previews, Some(&prev), None);
            return Err(e.write_failed());
        }
        self.write().remove(id);
        Ok(prev)
    }

    /// The replica's change: `sandbox` as etcd holds it now. Returns what it replaces.
    pub fn follow(&self, sandbox: Arc<Sandbox>) -> Option<Arc<Sandbox>> {
        let mut index = self.write();
        let prev = index.by_label.get(&sandbox.label()).cloned();
        if let Some(p) = &prev {
            index.remove(&p.id());
        }
        index.insert(sandbox);
        prev
    }

    /// The replica's change: the sandbox with host label `label` was deleted. Returns it.
    pub fn follow_gone(&self, label: &str) -> Option<Arc<Sandbox>> {
        let mut index = self.write();
        let id = index.by_label.get(label)?.id();
        index.remove(&id)
    }

    /// Whether this gateway runs `sandbox`.
    pub fn is_local(&self, sandbox: &Sandbox) -> bool {
        self.read().is_local(sandbox)
    }
}

/// Best-effort return of the kernel to the stored state after a failed mutation: `attempted`
/// (an address we may have programmed) is removed unless it is `prev`'s, and `prev` is
/// re-applied.
fn restore(m: &Mutating, previews: &PreviewRegistry, prev: Option<&Sandbox>, attempted: Option<Ipv4Addr>) {
    if let Some(addr) = attempted
        && prev.map(|p| p.address) != Some(addr)
        && let Err(e) = m.dataplane.remove_sandbox(addr)
    {
        tracing::error!(address = %addr, error = %e, "rollback: removing the attempted address failed");
    }
    if let Some(prev) = prev
        && let Err(e) = m.apply(prev, &previews.policy_for(prev))
    {
        tracing::error!(sandbox = %prev.id(), error = %e, "rollback: re-applying the previous policy failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports() {
        let p = |t: &[i64]| {
            validate_ports(
                &t.iter().map(|&target| PortRequest { target, protocol: PortProtocol::Http }).collect::<Vec<_>>(),
            )
        };
        assert_eq!(p(&[5000, 3000]).expect("ok").iter().map(|p| p.target).collect::<Vec<_>>(), vec![3000, 5000]);
        assert_eq!(p(&[0]).expect_err("0").code, ErrorCode::BadRequest);
        assert_eq!(p(&[65536]).expect_err("big").code, ErrorCode::BadRequest);
        assert_eq!(p(&[3000, 3000]).expect_err("dup").code, ErrorCode::BadRequest);
        assert_eq!(p(&[80]).expect_err("80").code, ErrorCode::ReservedPort);
        assert_eq!(p(&[443]).expect_err("443").code, ErrorCode::ReservedPort);
    }

    #[test]
    fn names() {
        assert!(validate_names("ws", "my-sandbox").is_ok());
        assert!(validate_names("ws", "-x").is_err());
        assert!(validate_names("WS", "x").is_err());
        assert!(validate_names("ws", "a.b").is_err());
        assert!(validate_names(&"w".repeat(30), &"n".repeat(30)).is_err());
    }
}
