//! The service layer shared by the admin API (and, later, the HTTPS edge): configuration, store,
//! data plane, the in-memory index of registered sandboxes, and the access tokens
//! ([`crate::service::tokens`]).
//!
//! A mutation runs under one async mutex, in this order: validate everything → program the
//! data plane → write the store (durable) → update the index → answer. A refused request
//! changes nothing; if a later step fails, the earlier ones are rolled back before answering.
//! Reads (`get`, `list`, route lookups by host label) take a short read lock on the index and
//! never wait for a mutation in progress.
//!
//! Previews (`crate::service::previews::service`) are mutations of the same kind under the same mutex:
//! a sandbox's kernel policy is always computed from its declared ports AND its live previews.

pub mod previews;
pub mod tokens;

use crate::{
    config::Config,
    dataplane::{Dataplane, DataplaneError, PolicyView, PortGrant, SandboxPolicy},
    errors::{ApiError, ErrorCode},
    model::{
        is_dns_label, is_interface_name,
        preview::Preview,
        sandbox::{PortProtocol, PortSpec, Sandbox, SandboxId, sandbox_label},
    },
    state::{Store, StoreError},
};
use arc_swap::ArcSwap;
use gateway_common::policy::origin;
use previews::index::PreviewIndex;
use serde::{Deserialize, Serialize};
use std::{
    collections::{BTreeMap, HashMap},
    net::Ipv4Addr,
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};
use tokens::{CreatedToken, TokenRegistry, TokenRequest, TokenView};

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
    /// Workspace.
    pub workspace: String,
    /// Name.
    pub name: String,
    /// Private address.
    pub address: Ipv4Addr,
    /// Host-side interface.
    pub interface: String,
    /// Declared ports, sorted.
    pub ports: Vec<PortSpec>,
    /// `https://sbx-{name}-{ws}.{region}.{domain}[:port]`.
    pub url: String,
    /// How long the kernel update took (answers to a PUT only).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub policy_applied_micros: Option<u64>,
}

/// The in-memory index of registered sandboxes.
#[derive(Default)]
struct Index {
    by_id: BTreeMap<SandboxId, Arc<Sandbox>>,
    by_label: HashMap<String, Arc<Sandbox>>,
    by_address: HashMap<Ipv4Addr, Arc<Sandbox>>,
}

impl Index {
    fn insert(&mut self, sandbox: Arc<Sandbox>) {
        if let Some(old) = self.by_id.insert(sandbox.id(), sandbox.clone()) {
            self.by_label.remove(&old.label());
            self.by_address.remove(&old.address);
        }
        self.by_label.insert(sandbox.label(), sandbox.clone());
        self.by_address.insert(sandbox.address, sandbox);
    }

    fn remove(&mut self, id: &SandboxId) {
        if let Some(old) = self.by_id.remove(id) {
            self.by_label.remove(&old.label());
            self.by_address.remove(&old.address);
        }
    }

    /// 409 if `sandbox` clashes with a sandbox other than itself.
    fn check_conflicts(&self, sandbox: &Sandbox) -> Result<(), ApiError> {
        let id = sandbox.id();
        if let Some(other) = self.by_address.get(&sandbox.address)
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

/// Errors that stop the gateway from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The store could not be read.
    #[error("cannot load the state from {store}: {source}")]
    Load {
        /// Which store.
        store: String,
        /// Why.
        #[source]
        source: crate::state::StoreError,
    },
    /// The stored state contradicts itself.
    #[error("the stored state is inconsistent: {0}")]
    Inconsistent(String),
    /// The data plane refused the stored state.
    #[error("cannot reconcile the data plane with the stored state: {0}")]
    Reconcile(#[source] DataplaneError),
}

/// What only a mutation may touch.
pub(crate) struct Mutating {
    pub(crate) dataplane: Dataplane,
}

/// Mutations held by [`App::freeze`].
pub struct Frozen<'a> {
    app: &'a App,
    guard: tokio::sync::MutexGuard<'a, Mutating>,
}

impl Frozen<'_> {
    /// The successor owns the state and the kernel maps now: every later mutation of this
    /// process fails fast (503 `GATEWAY_RESTARTING`, retryable) instead of waiting, and reads
    /// keep answering from memory while in-flight requests drain.
    pub fn hand_over(mut self) {
        self.guard.dataplane = Dataplane::handed_over();
        self.app.store.seal();
        self.app.ready.store(false, Ordering::Release);
    }
}

/// The shared application state.
pub struct App {
    /// Swapped whole by a reload (`crate::lifecycle`); readers take a snapshot.
    config: ArcSwap<Config>,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) mutating: tokio::sync::Mutex<Mutating>,
    index: RwLock<Index>,
    tokens: TokenRegistry,
    /// Previews and their tokens, by key and by host label.
    pub(crate) previews: RwLock<PreviewIndex>,
    /// Key of derived preview ids (see `crate::service::previews::ids`).
    pub(crate) preview_key: [u8; 32],
    /// Wakes the preview reaper when previews change.
    pub(crate) previews_changed: tokio::sync::Notify,
    ready: AtomicBool,
}

/// The kernel policy of a sandbox: every declared port (origin DECLARED) and every port a
/// preview holds open (origin PREVIEW, `preview_refs` = how many). A port is open if it is
/// declared OR used by at least one of `previews` (pass only live ones). A preview on 443 (the
/// sandbox API, 8080 inside, built in) needs no entry.
pub fn policy_of<'a>(sandbox: &Sandbox, previews: impl IntoIterator<Item = &'a Preview>) -> SandboxPolicy {
    let mut ports: BTreeMap<u16, PortGrant> =
        sandbox.ports.iter().map(|p| (p.target, PortGrant { origin: origin::DECLARED, preview_refs: 0 })).collect();
    for port in previews.into_iter().filter_map(Preview::kernel_port) {
        let grant = ports.entry(port).or_default();
        grant.origin |= origin::PREVIEW;
        grant.preview_refs += 1;
    }
    SandboxPolicy { address: sandbox.address, interface: sandbox.interface.clone(), ports }
}

/// The API error for a data plane error.
pub fn dataplane_error(e: &DataplaneError) -> ApiError {
    match e {
        DataplaneError::UnknownInterface(_) => ApiError::new(ErrorCode::UnknownInterface, e.to_string()),
        DataplaneError::Disabled => ApiError::new(ErrorCode::DataplaneDisabled, e.to_string()),
        DataplaneError::NoProgram => ApiError::new(ErrorCode::DataplaneUnavailable, e.to_string()),
        DataplaneError::HandedOver => ApiError::new(ErrorCode::GatewayRestarting, e.to_string()),
        DataplaneError::Kernel { .. } => {
            ApiError::new(ErrorCode::DataplaneError, format!("the kernel refused the policy update: {e}"))
        }
    }
}

/// The API error for a failed store write (nothing was changed).
pub fn state_write_failed(e: &StoreError) -> ApiError {
    ApiError::new(ErrorCode::StateWriteFailed, format!("the state could not be saved: {e}"))
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

/// Checks a workspace and a sandbox name, and the label they make.
pub fn validate_names(workspace: &str, name: &str) -> Result<(), ApiError> {
    for (what, value) in [("workspace", workspace), ("sandbox name", name)] {
        if !is_dns_label(value) {
            return Err(bad_request(format!(
                "invalid {what} {value:?}: use 1 to 63 characters among lower-case a-z, 0-9 and '-', not starting or ending with '-'"
            )));
        }
    }
    let label = sandbox_label(name, workspace);
    if label.len() > 63 {
        return Err(bad_request(format!(
            "the host label {label:?} is {} characters long; sbx-{{name}}-{{workspace}} must fit in 63",
            label.len()
        )));
    }
    Ok(())
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

impl App {
    /// Starts the service layer: loads the state, reconciles the data plane with it.
    pub async fn start(config: Config, store: Arc<dyn Store>, dataplane: Dataplane) -> Result<Self, StartError> {
        let snapshot = store.load().await.map_err(|source| StartError::Load { store: store.describe(), source })?;
        let mut index = Index::default();
        for sandbox in snapshot.sandboxes {
            if let Err(e) = index.check_conflicts(&sandbox) {
                return Err(StartError::Inconsistent(format!("sandbox {}: {}", sandbox.id(), e.message)));
            }
            index.insert(Arc::new(sandbox));
        }
        let tokens = TokenRegistry::load(snapshot.tokens).map_err(StartError::Inconsistent)?;
        let preview_key = store
            .secret(crate::service::previews::ids::KEY_SECRET)
            .await
            .map_err(|source| StartError::Load { store: store.describe(), source })?;
        let previews = crate::service::previews::service_impl::load_index(store.as_ref(), snapshot.previews, |id| {
            index.by_id.contains_key(id)
        })
        .await
        .map_err(StartError::Inconsistent)?;
        let now = crate::model::time::now();
        let policies: Vec<SandboxPolicy> =
            index.by_id.values().map(|s| policy_of(s, previews.live_of(&s.id(), now))).collect();
        let started = std::time::Instant::now();
        dataplane.reconcile(&policies).map_err(StartError::Reconcile)?;
        tracing::info!(
            sandboxes = policies.len(),
            tokens = tokens.len(),
            store = %store.describe(),
            micros = started.elapsed().as_micros() as u64,
            "state loaded and data plane reconciled"
        );
        Ok(Self {
            config: ArcSwap::from_pointee(config),
            store,
            mutating: tokio::sync::Mutex::new(Mutating { dataplane }),
            index: RwLock::new(index),
            tokens,
            previews: RwLock::new(previews),
            preview_key,
            previews_changed: tokio::sync::Notify::new(),
            ready: AtomicBool::new(true),
        })
    }

    /// The configuration.
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// Replaces the configuration (a reload). The caller has checked that only reloadable keys
    /// changed; requests already in flight finish with the snapshot they took.
    pub fn replace_config(&self, config: Config) {
        self.config.store(Arc::new(config));
    }

    /// Waits for the mutation in progress and holds every later one while the guard lives
    /// (zero-downtime restart: the successor loads the state and the kernel maps, which must not
    /// change meanwhile). Dropping the guard resumes; [`Frozen::hand_over`] ends this process's
    /// ownership instead.
    pub async fn freeze(&self) -> Frozen<'_> {
        Frozen { app: self, guard: self.mutating.lock().await }
    }

    /// Whether the state is loaded and the data plane reconciled.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The sandbox whose host label is `label` (exact, lower-case).
    pub fn sandbox_by_label(&self, label: &str) -> Option<Arc<Sandbox>> {
        self.read().by_label.get(label).cloned()
    }

    /// The sandbox at `address`.
    pub fn sandbox_by_address(&self, address: Ipv4Addr) -> Option<Arc<Sandbox>> {
        self.read().by_address.get(&address).cloned()
    }

    /// A sandbox as answered by the API.
    pub fn view(&self, sandbox: &Sandbox, applied: Option<Duration>) -> SandboxView {
        SandboxView {
            workspace: sandbox.workspace.clone(),
            name: sandbox.name.clone(),
            address: sandbox.address,
            interface: sandbox.interface.clone(),
            ports: sandbox.ports.clone(),
            url: self.config.load().sandbox_url(&sandbox.label()),
            policy_applied_micros: applied.map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
        }
    }

    /// One sandbox.
    pub fn get(&self, workspace: &str, name: &str) -> Result<Arc<Sandbox>, ApiError> {
        validate_names(workspace, name)?;
        let id = SandboxId::new(workspace, name);
        self.read().by_id.get(&id).cloned().ok_or_else(|| not_found(&id))
    }

    /// The sandboxes of a workspace (every sandbox if `None`), sorted by (workspace, name).
    pub fn list(&self, workspace: Option<&str>) -> Result<Vec<Arc<Sandbox>>, ApiError> {
        if let Some(ws) = workspace
            && !is_dns_label(ws)
        {
            return Err(bad_request(format!("invalid workspace {ws:?}")));
        }
        let index = self.read();
        Ok(match workspace {
            Some(ws) => index
                .by_id
                .range(SandboxId::new(ws, "")..)
                .take_while(|(id, _)| id.workspace == ws)
                .map(|(_, s)| s.clone())
                .collect(),
            None => index.by_id.values().cloned().collect(),
        })
    }

    /// Creates or replaces a sandbox. Returns it and how long the kernel update took.
    pub async fn put_sandbox(
        &self,
        workspace: &str,
        name: &str,
        spec: SandboxSpec,
    ) -> Result<(Arc<Sandbox>, Duration), ApiError> {
        validate_names(workspace, name)?;
        let ports = validate_ports(&spec.ports)?;
        validate_address(spec.address)?;
        validate_interface(&spec.interface)?;
        let sandbox = Sandbox {
            workspace: workspace.to_string(),
            name: name.to_string(),
            address: spec.address,
            interface: spec.interface,
            ports,
        };
        let id = sandbox.id();

        let m = self.mutating.lock().await;
        let prev = {
            let index = self.read();
            index.check_conflicts(&sandbox)?;
            index.by_id.get(&id).cloned()
        };
        let policy = self.policy_for(&sandbox);

        // An address change: the old address's entries go first (fail closed).
        if let Some(prev) = &prev
            && prev.address != sandbox.address
            && let Err(e) = m.dataplane.remove_sandbox(prev.address)
        {
            tracing::error!(sandbox = %id, error = %e, "removing the old address failed");
            self.restore(&m, Some(prev), None);
            return Err(dataplane_error(&e));
        }
        let applied = match m.dataplane.apply_sandbox(&policy) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(sandbox = %id, error = %e, "the data plane refused the policy");
                self.restore(&m, prev.as_deref(), Some(sandbox.address));
                return Err(dataplane_error(&e));
            }
        };
        if prev.as_deref() != Some(&sandbox)
            && let Err(e) = self.store.put_sandbox(sandbox.clone()).await
        {
            tracing::error!(sandbox = %id, error = %e, "state write failed; rolling the data plane back");
            self.restore(&m, prev.as_deref(), Some(sandbox.address));
            return Err(state_write_failed(&e));
        }
        let sandbox = Arc::new(sandbox);
        self.write().insert(sandbox.clone());
        drop(m);
        tracing::info!(
            sandbox = %id,
            address = %sandbox.address,
            ports = sandbox.ports.len(),
            applied_micros = applied.as_micros() as u64,
            created = prev.is_none(),
            "sandbox registered"
        );
        Ok((sandbox, applied))
    }

    /// Deletes a sandbox: its kernel entries first, then its record.
    pub async fn delete_sandbox(&self, workspace: &str, name: &str) -> Result<(), ApiError> {
        validate_names(workspace, name)?;
        let id = SandboxId::new(workspace, name);
        let m = self.mutating.lock().await;
        let prev = self.read().by_id.get(&id).cloned().ok_or_else(|| not_found(&id))?;
        if let Err(e) = m.dataplane.remove_sandbox(prev.address) {
            tracing::error!(sandbox = %id, error = %e, "removing the kernel policy failed");
            self.restore(&m, Some(&prev), None);
            return Err(dataplane_error(&e));
        }
        if let Err(e) = self.store.delete_sandbox(id.clone()).await {
            tracing::error!(sandbox = %id, error = %e, "state write failed; restoring the kernel policy");
            self.restore(&m, Some(&prev), None);
            return Err(state_write_failed(&e));
        }
        self.write().remove(&id);
        self.forget_previews_of(&id).await;
        drop(m);
        tracing::info!(sandbox = %id, address = %prev.address, "sandbox deleted");
        Ok(())
    }

    /// The workspace access tokens (what `crate::auth` checks).
    pub fn tokens(&self) -> &TokenRegistry {
        &self.tokens
    }

    /// The tokens of a workspace, without secrets.
    pub fn list_tokens(&self, workspace: &str) -> Result<Vec<TokenView>, ApiError> {
        self.tokens.list(workspace, time::OffsetDateTime::now_utc())
    }

    /// One token, without its secret.
    pub fn get_token(&self, workspace: &str, name: &str) -> Result<TokenView, ApiError> {
        self.tokens.get(workspace, name, time::OffsetDateTime::now_utc())
    }

    /// Creates a token; the answer holds its secret (shown this once).
    pub async fn create_token(&self, workspace: &str, request: TokenRequest) -> Result<CreatedToken, ApiError> {
        let _m = self.mutating.lock().await;
        self.tokens.create(self.store.as_ref(), workspace, request, time::OffsetDateTime::now_utc()).await
    }

    /// Revokes a token: the next request that presents it is refused.
    pub async fn revoke_token(&self, workspace: &str, name: &str) -> Result<(), ApiError> {
        let _m = self.mutating.lock().await;
        self.tokens.revoke(self.store.as_ref(), workspace, name).await
    }

    /// What the kernel holds for a sandbox.
    pub async fn policy(&self, workspace: &str, name: &str) -> Result<PolicyView, ApiError> {
        let sandbox = self.get(workspace, name)?;
        let m = self.mutating.lock().await;
        m.dataplane.policy_view(sandbox.address).map_err(|e| dataplane_error(&e))
    }

    /// Best-effort return of the kernel to the stored state after a failed mutation:
    /// `attempted` (an address we may have programmed) is removed unless it is `prev`'s, and
    /// `prev` is re-applied.
    fn restore(&self, m: &Mutating, prev: Option<&Sandbox>, attempted: Option<Ipv4Addr>) {
        if let Some(addr) = attempted
            && prev.map(|p| p.address) != Some(addr)
            && let Err(e) = m.dataplane.remove_sandbox(addr)
        {
            tracing::error!(address = %addr, error = %e, "rollback: removing the attempted address failed");
        }
        if let Some(prev) = prev
            && let Err(e) = m.dataplane.apply_sandbox(&self.policy_for(prev))
        {
            tracing::error!(sandbox = %prev.id(), error = %e, "rollback: re-applying the previous policy failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::MemoryStore;

    fn spec(address: &str, ports: &[i64]) -> SandboxSpec {
        SandboxSpec {
            address: address.parse().expect("addr"),
            interface: "lo".into(),
            ports: ports.iter().map(|&target| PortRequest { target, protocol: PortProtocol::Http }).collect(),
        }
    }

    async fn app(store: Arc<MemoryStore>) -> App {
        App::start(Config::default(), store, Dataplane::disabled()).await.expect("start")
    }

    #[tokio::test]
    async fn conflicts_and_rollback() {
        let store = Arc::new(MemoryStore::new());
        let app = app(store.clone()).await;
        app.put_sandbox("c", "a-b", spec("198.18.0.2", &[3000])).await.expect("put");
        let e = app.put_sandbox("b-c", "a", spec("198.18.0.3", &[])).await.expect_err("label");
        assert_eq!(e.code, ErrorCode::LabelConflict);
        let e = app.put_sandbox("c", "x", spec("198.18.0.2", &[])).await.expect_err("address");
        assert_eq!(e.code, ErrorCode::AddressConflict);
        let e = app.put_sandbox("c", "x", spec("198.18.0.4", &[8080])).await.expect_err("reserved");
        assert_eq!(e.code, ErrorCode::ReservedPort);
        assert!(e.message.contains("8080"));
        store.set_fail_writes(true);
        let e = app.put_sandbox("c", "a-b", spec("198.18.0.2", &[3001])).await.expect_err("store");
        assert_eq!(e.status(), 500);
        assert_eq!(app.get("c", "a-b").expect("get").ports[0].target, 3000);
        let e = app.delete_sandbox("c", "a-b").await.expect_err("store");
        assert_eq!(e.status(), 500);
        store.set_fail_writes(false);
        app.delete_sandbox("c", "a-b").await.expect("delete");
        assert_eq!(app.get("c", "a-b").expect_err("gone").code, ErrorCode::WorkloadNotFound);
        assert!(app.sandbox_by_address("198.18.0.2".parse().expect("addr")).is_none());
    }

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
