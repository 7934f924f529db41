//! The replica of a fleet member: every gateway holds the whole fleet's state in its indexes
//! and follows etcd's changes, so that any gateway serves any sandbox and a revocation made on
//! one is refused on all.
//!
//! [`follow`] watches every key under the fleet's prefix from the revision after the one the
//! replica holds. Each batch of changes is applied under the mutation lock, so it never
//! interleaves with a local mutation: the indexes first, then the kernel policy of every
//! sandbox of this host the batch touched (a preview made on another gateway opens its port
//! here, on the sandbox's host). A watch that breaks (a member down, a partition) resumes from
//! the revision reached; one whose history was compacted away resyncs from a full read.

use super::App;
use crate::{
    model::{
        fleet::FleetHost,
        sandbox::{Sandbox, SandboxId},
    },
    state::{Change, EtcdStore, FeedItem, StoreError},
};
use std::{
    collections::BTreeMap,
    future::Future,
    net::SocketAddr,
    sync::{Arc, RwLock},
    time::Duration,
};

/// The fleet's live members, as their host keys say: host → its fleet listener's address.
#[derive(Default)]
pub struct Peers(RwLock<BTreeMap<String, SocketAddr>>);

impl Peers {
    /// The members of a snapshot.
    pub fn load(hosts: Vec<FleetHost>) -> Self {
        Self(RwLock::new(hosts.into_iter().map(|h| (h.host, h.address)).collect()))
    }

    /// Where `host` listens, while its host key lives.
    pub fn get(&self, host: &str) -> Option<SocketAddr> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).get(host).copied()
    }

    /// Every live member, by host.
    pub fn all(&self) -> Vec<FleetHost> {
        let map = self.0.read().unwrap_or_else(|p| p.into_inner());
        map.iter().map(|(host, address)| FleetHost { host: host.clone(), address: *address }).collect()
    }

    fn set(&self, host: FleetHost) {
        self.0.write().unwrap_or_else(|p| p.into_inner()).insert(host.host, host.address);
    }

    fn remove(&self, host: &str) {
        self.0.write().unwrap_or_else(|p| p.into_inner()).remove(host);
    }
}

/// How often the replica is saved while it changes.
const SAVE_EVERY: Duration = Duration::from_secs(1);

/// Saves the replica under `state.dir` while it changes, and once more when `stop` resolves.
pub async fn persist(app: Arc<App>, store: Arc<EtcdStore>, stop: impl Future<Output = ()>) {
    let Some(path) = store.replica_path().map(|p| p.to_path_buf()) else { return };
    tokio::pin!(stop);
    let mut saved = None;
    loop {
        let stopping = tokio::select! {
            () = &mut stop => true,
            () = tokio::time::sleep(SAVE_EVERY) => false,
        };
        if saved != Some(store.applied()) {
            let image = {
                let _m = app.mutating.lock().await;
                store.replica_image(app.snapshot())
            };
            let revision = image.revision;
            let path = path.clone();
            match tokio::task::spawn_blocking(move || image.write(&path)).await {
                Ok(Ok(())) => saved = Some(revision),
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot save the replica"),
                Err(e) => tracing::warn!(error = %e, "the task saving the replica failed"),
            }
        }
        if stopping {
            return;
        }
    }
}

/// Keeps this member's host key alive until `stop` resolves (announcing again after every
/// failure: etcd unreachable, or the lease lapsed during an outage).
pub async fn announce(store: Arc<EtcdStore>, me: FleetHost, stop: impl Future<Output = ()>) {
    tokio::pin!(stop);
    let mut pause = FIRST_PAUSE;
    loop {
        tokio::select! {
            () = &mut stop => return,
            Err(e) = store.announce(&me) => {
                tracing::warn!(error = %e, host = me.host, "this host's key in etcd lapsed or cannot be renewed; announcing again");
            }
        }
        tokio::select! {
            () = &mut stop => return,
            () = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

/// Pause before watching again after an error, doubled up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(100);
const MAX_PAUSE: Duration = Duration::from_secs(2);

/// Follows etcd until `stop` resolves.
pub async fn follow(app: Arc<App>, store: Arc<EtcdStore>, stop: impl Future<Output = ()>) {
    tokio::pin!(stop);
    let mut pause = FIRST_PAUSE;
    loop {
        tokio::select! {
            () = &mut stop => return,
            result = watch(&app, &store) => {
                if let Err(e) = result {
                    crate::telemetry::metrics::global().fleet_watch_restart();
                    tracing::warn!(error = %e, applied = store.applied(), "the fleet's watch stopped; resuming");
                }
            }
        }
        tokio::select! {
            () = &mut stop => return,
            () = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

/// One watch, until it fails.
async fn watch(app: &App, store: &EtcdStore) -> Result<(), StoreError> {
    let mut feed = store.feed(store.applied() + 1).await?;
    loop {
        match feed.next().await? {
            FeedItem::Events(events, revision) => {
                let m = app.mutating.lock().await;
                let changes = store.accept(events);
                app.apply_changes(&m, changes);
                store.set_applied(revision);
            }
            FeedItem::Progress(revision) => store.set_applied(revision),
            FeedItem::Compacted(compacted) => {
                tracing::warn!(
                    compacted,
                    applied = store.applied(),
                    "etcd compacted the history the replica needs; reading everything again"
                );
                let started = std::time::Instant::now();
                let m = app.mutating.lock().await;
                let (changes, revision) = store.resync().await?;
                let count = changes.len();
                app.apply_changes(&m, changes);
                drop(m);
                let millis = started.elapsed().as_millis() as u64;
                tracing::info!(revision, changes = count, millis, "the replica resynced");
                return Ok(());
            }
        }
    }
}

/// `GET /v1/fleet`: this member, its replica, and the fleet's hosts.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FleetView {
    /// This gateway's `fleet.host`.
    pub host: String,
    /// The etcd revision its replica reached.
    pub revision: i64,
    /// Milliseconds since etcd last confirmed it.
    pub stale_for_ms: u64,
    /// Full reads after the watch could not resume.
    pub resyncs: u64,
    /// Every host: the live ones (their host key in etcd) and those that run sandboxes but
    /// whose key lapsed.
    pub peers: Vec<PeerView>,
}

/// One host of the fleet.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerView {
    pub host: String,
    /// Its fleet listener (absent when its key lapsed).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub address: Option<SocketAddr>,
    /// Whether its host key lives.
    pub alive: bool,
}

impl App {
    /// This member's view of the fleet; `None` on a single host.
    pub fn fleet_view(&self) -> Option<FleetView> {
        let host = self.host.clone()?;
        let status = self.store.replica_status()?;
        let mut peers: BTreeMap<String, PeerView> = self
            .peers
            .all()
            .into_iter()
            .map(|h| (h.host.clone(), PeerView { host: h.host, address: Some(h.address), alive: true }))
            .collect();
        for sandbox in self.sandboxes.all() {
            if let Some(owner) = &sandbox.owner {
                peers.entry(owner.clone()).or_insert_with(|| PeerView {
                    host: owner.clone(),
                    address: None,
                    alive: false,
                });
            }
        }
        Some(FleetView {
            host,
            revision: status.revision,
            stale_for_ms: u64::try_from(status.stale_for.as_millis()).unwrap_or(u64::MAX),
            resyncs: status.resyncs,
            peers: peers.into_values().collect(),
        })
    }

    /// Everything the indexes hold, as the store's records.
    pub fn snapshot(&self) -> crate::state::StateSnapshot {
        crate::state::StateSnapshot {
            sandboxes: self.sandboxes.all().iter().map(|s| Sandbox::clone(s)).collect(),
            tokens: self.tokens.all(),
            previews: self.previews.all(),
            hosts: self.peers.all(),
        }
    }

    /// Applies the replica's changes: the indexes, then the kernel policy of every sandbox of
    /// this host they touched (a sandbox gone, or moved to another address, leaves the kernel
    /// first: fail closed).
    fn apply_changes(&self, m: &super::mutation::Mutating, changes: Vec<Change>) {
        let mut touched: BTreeMap<SandboxId, ()> = BTreeMap::new();
        for change in changes {
            match change {
                Change::Token(token) => self.tokens.follow(token),
                Change::TokenGone(id) => self.tokens.follow_gone(&id),
                Change::Sandbox(sandbox) => {
                    let sandbox = Arc::new(sandbox);
                    let prev = self.sandboxes.follow(sandbox.clone());
                    if let Some(prev) = &prev
                        && (prev.address != sandbox.address || prev.owner != sandbox.owner)
                    {
                        remove(m, prev);
                    }
                    public_ports(m, prev.as_deref(), Some(&sandbox));
                    self.sandboxes.follow_ports(prev.as_deref(), Some(&sandbox));
                    touched.insert(sandbox.id(), ());
                }
                Change::SandboxGone(label) => {
                    if let Some(prev) = self.sandboxes.follow_gone(&label) {
                        public_ports(m, Some(&prev), None);
                        self.sandboxes.follow_ports(Some(&prev), None);
                        remove(m, &prev);
                    }
                }
                Change::Preview(preview) => {
                    touched.insert(preview.sandbox_id(), ());
                    self.previews.follow(preview);
                }
                Change::PreviewGone(key) => {
                    touched.insert(key.sandbox_id(), ());
                    self.previews.follow_gone(&key);
                }
                Change::Host(host) => {
                    tracing::info!(host = host.host, address = %host.address, "a fleet member is up");
                    self.peers.set(host);
                }
                Change::HostGone(host) => {
                    tracing::warn!(host, "a fleet member is gone (its host key lapsed or was removed)");
                    self.peers.remove(&host);
                }
            }
        }
        for id in touched.into_keys() {
            let Ok(sandbox) = self.sandboxes.get(&id.workspace, &id.name) else { continue };
            if let Err(e) = m.apply(&sandbox, &self.previews.policy_for(&sandbox)) {
                tracing::error!(sandbox = %id, error = %e, "the data plane refused a policy from the fleet");
            }
        }
    }
}

/// The kernel's public TCP ports of a local sandbox, from `old`'s to `new`'s.
fn public_ports(m: &super::mutation::Mutating, old: Option<&Sandbox>, new: Option<&Sandbox>) {
    if let Err(e) = m.apply_l4(old, new) {
        let id = new.or(old).map(|s| s.id().to_string()).unwrap_or_default();
        tracing::error!(sandbox = %id, error = %e, "the data plane refused public ports from the fleet");
    }
}

fn remove(m: &super::mutation::Mutating, sandbox: &Sandbox) {
    if let Err(e) = m.remove(sandbox) {
        tracing::error!(sandbox = %sandbox.id(), error = %e, "removing a sandbox's kernel policy failed");
    }
}
