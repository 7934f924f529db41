//! Registered sandboxes: the request bodies and their validation, the in-memory index (by id,
//! host label and address), and the two mutations, which take the mutation guard.
//!
//! A sandbox's kernel policy is its declared ports plus the ports its live previews hold open,
//! so a mutation asks the preview registry for it.

use super::{
    l4_ports::{self, ExposeRequest, PortBook},
    mutation::Mutating,
    previews::registry::PreviewRegistry,
};
use crate::model::FastMap;
use crate::{
    errors::{ApiError, ErrorCode},
    model::{
        is_dns_label, is_interface_name,
        sandbox::{Exposure, PortProtocol, PortSpec, ProxyProtocol, Sandbox, SandboxId, validate_names},
    },
};
use serde::{Deserialize, Serialize};
use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    sync::{Arc, Mutex, RwLock},
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
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortRequest {
    /// The port inside the sandbox.
    pub target: i64,
    /// How the gateway speaks to it.
    #[serde(default)]
    pub protocol: PortProtocol,
    /// A public TCP port for it (`TCP` and `TLS` ports).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expose: Option<ExposeRequest>,
}

impl PortRequest {
    /// A port declared with `protocol`, not exposed.
    pub fn new(target: i64, protocol: PortProtocol) -> Self {
        Self { target, protocol, expose: None }
    }
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
    /// Declared ports, sorted, each with its public endpoint if exposed.
    pub ports: Vec<PortView>,
    /// `https://sbx-{name}-{ws}.{region}.{domain}[:port]`.
    pub url: String,
    /// The fleet host that runs it (absent on a single host).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub owner: Option<String>,
    /// How long the kernel update took (answers to a PUT only).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub policy_applied_micros: Option<u64>,
}

/// A declared port as answered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortView {
    pub target: u16,
    pub protocol: PortProtocol,
    /// Its public TCP endpoint, if exposed.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub public: Option<PublicView>,
}

/// A public TCP endpoint as answered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PublicView {
    /// The host port.
    pub port: u16,
    /// `sbx-{name}-{ws}.{region}.{domain}:{port}`.
    pub endpoint: String,
    pub allow_from: Vec<ipnet::Ipv4Net>,
    pub proxy_protocol: ProxyProtocol,
}

impl SandboxView {
    /// The view of `sandbox`, reachable at `url`; its public ports on host `public_host`
    /// (`sbx-{name}-{ws}.{region}.{domain}`).
    pub fn of(sandbox: &Sandbox, url: String, public_host: &str, applied: Option<Duration>) -> Self {
        let ports = sandbox
            .ports
            .iter()
            .map(|p| PortView {
                target: p.target,
                protocol: p.protocol,
                public: sandbox.exposure(p.target).map(|e| PublicView {
                    port: e.public_port,
                    endpoint: format!("{public_host}:{}", e.public_port),
                    allow_from: e.allow_from.clone(),
                    proxy_protocol: e.proxy_protocol,
                }),
            })
            .collect();
        Self {
            workspace: sandbox.workspace.clone(),
            name: sandbox.name.clone(),
            address: sandbox.address,
            interface: sandbox.interface.clone(),
            ports,
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

/// The exposures of the requested ports (their public ports still unassigned), sorted by
/// target; call after [`validate_ports`].
pub fn validate_exposures(ports: &[PortRequest]) -> Result<Vec<Exposure>, ApiError> {
    let mut out: Vec<Exposure> = Vec::new();
    for p in ports {
        if let Some(expose) = &p.expose {
            let target = u16::try_from(p.target).unwrap_or_default();
            out.push(l4_ports::validate_expose(target, p.protocol, expose)?);
        }
    }
    out.sort_by_key(|e| e.target);
    Ok(out)
}

/// The sandbox a PUT describes, every field checked, run by fleet host `owner` (`None` on a
/// single host). Its public ports are assigned later, under the mutation lock.
pub fn validate(workspace: &str, name: &str, spec: SandboxSpec, owner: Option<&str>) -> Result<Sandbox, ApiError> {
    validate_names(workspace, name)?;
    let ports = validate_ports(&spec.ports)?;
    let exposed = validate_exposures(&spec.ports)?;
    validate_address(spec.address)?;
    validate_interface(&spec.interface)?;
    Ok(Sandbox {
        workspace: workspace.to_string(),
        name: name.to_string(),
        address: spec.address,
        interface: spec.interface,
        ports,
        owner: owner.map(str::to_string),
        exposed,
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
    /// The local sandboxes by public TCP port.
    by_public_port: FastMap<u16, Arc<Sandbox>>,
    /// Bumped whenever a local sandbox's public ports change, once the index holds the change:
    /// open connections to public ports re-check that they are still allowed.
    exposures: tokio::sync::watch::Sender<u64>,
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
            for e in &sandbox.exposed {
                self.by_public_port.insert(e.public_port, sandbox.clone());
            }
            if !sandbox.exposed.is_empty() {
                self.exposures.send_modify(|n| *n += 1);
            }
        }
        self.by_id.insert(sandbox.id(), sandbox);
    }

    fn remove(&mut self, id: &SandboxId) -> Option<Arc<Sandbox>> {
        let old = self.by_id.remove(id)?;
        self.by_label.remove(&old.label());
        if self.by_address.get(&old.address).is_some_and(|s| s.id() == *id) {
            self.by_address.remove(&old.address);
        }
        for e in &old.exposed {
            if self.by_public_port.get(&e.public_port).is_some_and(|s| s.id() == *id) {
                self.by_public_port.remove(&e.public_port);
            }
        }
        if self.is_local(&old) && !old.exposed.is_empty() {
            self.exposures.send_modify(|n| *n += 1);
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
    /// The public TCP ports of this host; changed only under the mutation lock.
    ports: Mutex<PortBook>,
}

/// Where public TCP ports come from (`[l4]`).
#[derive(Clone, Debug, Default)]
pub struct PortSettings {
    /// `l4.port_range`; `None`: off.
    pub range: Option<std::ops::RangeInclusive<u16>>,
    /// `l4.quarantine`.
    pub quarantine: Duration,
    /// Where released ports are saved (`state.dir/l4-released.json`).
    pub file: Option<std::path::PathBuf>,
}

impl Sandboxes {
    /// The index of the stored sandboxes, for fleet host `host` (`None`: a single host); fails
    /// if two of them clash.
    pub fn load(sandboxes: Vec<Sandbox>, host: Option<String>, ports: PortSettings) -> Result<Self, String> {
        let mut index = Index { host, ..Index::default() };
        for sandbox in sandboxes {
            if let Err(e) = index.check_conflicts(&sandbox) {
                return Err(format!("sandbox {}: {}", sandbox.id(), e.message));
            }
            index.insert(Arc::new(sandbox));
        }
        let local = index.by_id.values().filter(|s| index.is_local(s)).map(|s| s.as_ref());
        let book = PortBook::load(ports.range, ports.quarantine, ports.file, local)?;
        Ok(Self { index: RwLock::new(index), ports: Mutex::new(book) })
    }

    fn book(&self) -> std::sync::MutexGuard<'_, PortBook> {
        self.ports.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a change of a sandbox's public ports that the fleet's replica brought (a local
    /// sandbox deleted through another gateway): `new`'s are held, `old`'s others quarantined.
    pub fn follow_ports(&self, old: Option<&Sandbox>, new: Option<&Sandbox>) {
        let local = |s: &&Sandbox| self.is_local(s);
        let (old, new) = (old.filter(local), new.filter(local));
        if old.is_some() || new.is_some() {
            self.book().commit(old, new);
        }
    }

    /// Changes when a local sandbox's public ports change (read [`Sandboxes::by_public_port`]
    /// again then).
    pub fn exposure_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.read().exposures.subscribe()
    }

    /// The local sandbox holding public TCP port `port`.
    pub fn by_public_port(&self, port: u16) -> Option<Arc<Sandbox>> {
        self.read().by_public_port.get(&port).cloned()
    }

    /// Every public TCP port of this host with its allowed sources (for the kernel at start).
    pub fn exposed(&self) -> Vec<(u16, Vec<ipnet::Ipv4Net>)> {
        let book = self.book();
        let index = self.read();
        index
            .by_public_port
            .iter()
            .filter(|(port, _)| book.in_range(**port))
            .filter_map(|(port, s)| s.exposed.iter().find(|e| e.public_port == *port))
            .map(|e| (e.public_port, e.allow_from.clone()))
            .collect()
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
        let mut sandbox = sandbox;
        let prev = {
            let index = self.read();
            index.check_conflicts(&sandbox)?;
            index.by_id.get(&id).cloned()
        };
        if m.is_local(&sandbox) {
            self.book().assign(&mut sandbox, prev.as_deref())?;
        }
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
        if let Err(e) = m.apply_l4(prev.as_deref(), Some(&sandbox)) {
            tracing::warn!(sandbox = %id, error = %e, "the data plane refused the public ports");
            restore_l4(m, &sandbox, prev.as_deref());
            restore(m, previews, prev.as_deref(), Some(sandbox.address));
            return Err(e.api_error());
        }
        if prev.as_deref() != Some(&sandbox)
            && let Err(e) = m.store.put_sandbox(sandbox.clone()).await
        {
            tracing::error!(sandbox = %id, error = %e, "state write failed; rolling the data plane back");
            restore_l4(m, &sandbox, prev.as_deref());
            restore(m, previews, prev.as_deref(), Some(sandbox.address));
            return Err(e.write_failed());
        }
        let sandbox = Arc::new(sandbox);
        self.write().insert(sandbox.clone());
        if m.is_local(&sandbox) {
            self.book().commit(prev.as_deref(), Some(&sandbox));
        }
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
        // The public ports close first: nothing new reaches a sandbox on its way out.
        if let Err(e) = m.apply_l4(Some(&prev), None) {
            tracing::error!(sandbox = %id, error = %e, "closing the public ports failed");
            restore_l4(m, &prev, Some(&prev));
            return Err(e.api_error());
        }
        if let Err(e) = m.remove(&prev) {
            tracing::error!(sandbox = %id, error = %e, "removing the kernel policy failed");
            restore_l4(m, &prev, Some(&prev));
            restore(m, previews, Some(&prev), None);
            return Err(e.api_error());
        }
        if let Err(e) = m.store.delete_sandbox(id.clone()).await {
            tracing::error!(sandbox = %id, error = %e, "state write failed; restoring the kernel policy");
            restore_l4(m, &prev, Some(&prev));
            restore(m, previews, Some(&prev), None);
            return Err(e.write_failed());
        }
        self.write().remove(id);
        if m.is_local(&prev) {
            self.book().commit(Some(&prev), None);
        }
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

/// Best-effort return of the public ports to `prev`'s after `attempted` was (maybe partly)
/// programmed.
fn restore_l4(m: &Mutating, attempted: &Sandbox, prev: Option<&Sandbox>) {
    if let Err(e) = m.apply_l4(Some(attempted), prev) {
        tracing::error!(sandbox = %attempted.id(), error = %e, "rollback: restoring the public ports failed");
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
            validate_ports(&t.iter().map(|&target| PortRequest::new(target, PortProtocol::Http)).collect::<Vec<_>>())
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
