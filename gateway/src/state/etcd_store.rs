//! The etcd store: the file store's records as keys of etcd (v3 API) under a prefix, so that a
//! fleet of gateways shares one state. A put or delete resolves once etcd committed it (a
//! quorum of its members holds it).
//!
//! Layout under `fleet.prefix` (the records are the file store's JSON, version included):
//! ```text
//! {prefix}sandboxes/{label}   sbx-{name}-{workspace}: one key per host label, so two sandboxes
//!                             can never claim one label, even registered at once on two hosts
//! {prefix}tokens/{workspace}/{name}
//! {prefix}previews/{workspace}/{sandbox}/{name}
//! {prefix}secrets/{name}        32 bytes, created once (a transaction: put if absent, else read)
//! {prefix}hosts/{host}          a live member and its fleet listener's address, on a lease
//!                             ([`HOST_TTL`]) it renews: the key vanishes when it stops renewing
//! ```
//! Names cannot hold a '/' (they are DNS labels), so a key names exactly one record. `load`
//! reads every key at one revision, in pages.
//!
//! The client spreads requests over the endpoints; one that cannot be reached (a member down)
//! answers `Unavailable` without having done anything, so such a request goes again, to the
//! next endpoint, before it counts as failed. Every operation here may be repeated: puts and
//! deletes are idempotent, and the secret's transaction reads back whatever won.
//!
//! **The replica.** The store remembers, per key, the revision of the last change the gateway's
//! replica (the service layer's indexes) holds. Every put or delete is a transaction that
//! succeeds only if the key is still at that revision: a write based on a stale view (another
//! gateway changed the record meanwhile) is refused with [`StoreError::Changed`] and changes
//! nothing; the service layer waits for its replica to catch up (`Store::catch_up`) and
//! decides again. The replica follows etcd through [`EtcdStore::feed`] (a watch from the
//! revision after the one it holds); [`EtcdStore::accept`] turns what the watch delivered into
//! [`Change`]s, skipping what the replica already holds (its own writes), and
//! [`EtcdStore::resync`] reloads everything when the watch cannot resume (history compacted).

use super::{
    file_store::{PREVIEW_RECORD_VERSION, PreviewRecord, RECORD_VERSION, StoredSandbox, TokenRecord},
    replica_file::ReplicaFile,
    store::{StateSnapshot, Store, StoreError, StoreFuture, new_secret},
};
use crate::model::{
    fleet::FleetHost,
    preview::{Preview, PreviewKey},
    sandbox::{AccessToken, Sandbox, SandboxId, TokenId, sandbox_label},
};
use crate::telemetry::metrics;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity, KeyValue, PutOptions,
    TlsOptions, Txn, TxnOp, TxnOpResponse, WatchOptions, WatchStream,
};
use serde::{Serialize, de::DeserializeOwned};
use std::{
    collections::{BTreeMap, HashMap},
    future::Future,
    path::PathBuf,
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicI64, Ordering},
    },
    time::Duration,
};

/// How long one etcd request may take (a member that lost its quorum does not answer): a
/// mutation during an outage is answered 503 after about this long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// How often a watch asks etcd to confirm the revision it reached (so that a quiet fleet is
/// told apart from one cut off from etcd).
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// Keys per range request of `load`: each response stays far below gRPC's 4 MiB default
/// (a sandbox record is about 200 bytes).
const PAGE: i64 = 500;
/// Pause before asking again after `Unavailable` (times the attempt number).
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// The lease of a host key, in seconds: a member that stops renewing it (down, or cut off from
/// etcd) is gone for the others this long after its last renewal.
pub const HOST_TTL: i64 = 10;
/// Version of the host key's record.
const HOST_RECORD_VERSION: u32 = 1;

/// The record of a host key.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct HostRecord {
    version: u32,
    host: FleetHost,
}

/// How long a writer waits for its replica to catch up after [`StoreError::Changed`].
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(5);

/// Milliseconds since the Unix epoch.
fn wall_ms() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis())
}

/// A store in etcd.
pub struct EtcdStore {
    client: Client,
    /// Attempts per operation: one per endpoint, and one more.
    attempts: u32,
    endpoints: String,
    prefix: String,
    sealed: AtomicBool,
    /// Per key: the revision of its last change the replica holds, and whether it exists then
    /// (a deletion is remembered until the replica passed it, so that an older event of the
    /// watch does not bring the record back).
    known: Mutex<HashMap<String, Known>>,
    /// Whether `known` may hold deletions (see `set_applied`).
    tombstones: AtomicBool,
    /// The revision the replica reached: every change up to it is applied.
    applied: tokio::sync::watch::Sender<i64>,
    /// The highest revision etcd answered with (a refused write's answer included).
    seen: AtomicI64,
    /// The lease of this member's host key (0: none yet).
    lease: AtomicI64,
    /// When etcd last confirmed the replica's revision (milliseconds since `started`).
    news_ms: std::sync::atomic::AtomicU64,
    started: std::time::Instant,
    /// Whether etcd confirmed anything since the start; until then, the saved replica's age
    /// (`offline_age_ms`) counts too.
    heard: AtomicBool,
    offline_age_ms: std::sync::atomic::AtomicU64,
    /// Where the replica is saved (`state.dir`), to start from when etcd cannot be reached.
    replica: Option<PathBuf>,
    /// The fleet's secrets once read (they never change).
    secrets: Mutex<BTreeMap<String, [u8; 32]>>,
    /// Full reads after the watch could not resume.
    resyncs: std::sync::atomic::AtomicU64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Known {
    revision: i64,
    exists: bool,
}

/// A change of the shared state, for the replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A sandbox created or replaced.
    Sandbox(Sandbox),
    /// The sandbox with this host label was deleted.
    SandboxGone(String),
    /// A token created or replaced.
    Token(AccessToken),
    /// A token revoked.
    TokenGone(TokenId),
    /// A preview created or replaced (its tokens inside).
    Preview(Preview),
    /// A preview deleted.
    PreviewGone(PreviewKey),
    /// A member announced itself (or moved its fleet listener).
    Host(FleetHost),
    /// A member's host key vanished: it is down or cut off from etcd.
    HostGone(String),
}

/// What the watch delivered.
pub enum FeedItem {
    /// Key changes, and the revision they bring the replica to.
    Events(Vec<RawEvent>, i64),
    /// Nothing changed up to this revision.
    Progress(i64),
    /// The history the replica needs was compacted away: only [`EtcdStore::resync`] can help.
    Compacted(i64),
}

/// One key's change as the watch delivered it.
pub struct RawEvent {
    key: String,
    value: Option<Vec<u8>>,
    revision: i64,
}

/// A watch of every key under the prefix.
pub struct Feed {
    stream: WatchStream,
    from: i64,
    progress: tokio::time::Interval,
}

/// How to reach etcd.
#[derive(Clone, Debug, Default)]
pub struct EtcdSettings {
    /// `http://HOST:PORT` endpoints.
    pub endpoints: Vec<String>,
    /// Key prefix (starts and ends with '/').
    pub prefix: String,
    /// User and password (etcd authentication).
    pub user: Option<(String, String)>,
    /// Where the replica is saved, to start from when etcd cannot be reached.
    pub replica: Option<PathBuf>,
    /// TLS towards `https://` endpoints.
    pub tls: Option<EtcdTls>,
}

/// TLS towards etcd, PEM.
#[derive(Clone, Debug, Default)]
pub struct EtcdTls {
    /// The CA etcd's certificate chains to (one PEM file may hold several).
    pub ca: Vec<u8>,
    /// A client certificate and its key, for etcd's `--client-cert-auth`.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl EtcdStore {
    /// Connects to etcd (a connection to at least one endpoint).
    pub async fn connect(settings: &EtcdSettings) -> Result<Self, StoreError> {
        let endpoints = settings.endpoints.join(",");
        let mut options = ConnectOptions::new()
            .with_connect_timeout(REQUEST_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            // A member cut off from its quorum refuses (and ends watches) instead of answering
            // from a past it cannot know is stale.
            .with_require_leader(true);
        if let Some((user, password)) = &settings.user {
            options = options.with_user(user.clone(), password.clone());
        }
        if let Some(tls) = &settings.tls {
            let mut config = TlsOptions::new().ca_certificate(Certificate::from_pem(&tls.ca));
            if let Some((cert, key)) = &tls.identity {
                config = config.identity(Identity::from_pem(cert, key));
            }
            options = options.with_tls(config);
        }
        let client = Client::connect(&settings.endpoints, Some(options)).await.map_err(|source| StoreError::Etcd {
            endpoints: endpoints.clone(),
            context: "connecting".into(),
            source,
        })?;
        let attempts = u32::try_from(settings.endpoints.len()).unwrap_or(u32::MAX).saturating_add(1);
        Ok(Self {
            client,
            attempts,
            endpoints,
            prefix: settings.prefix.clone(),
            sealed: AtomicBool::new(false),
            known: Mutex::new(HashMap::new()),
            tombstones: AtomicBool::new(false),
            applied: tokio::sync::watch::Sender::new(0),
            seen: AtomicI64::new(0),
            lease: AtomicI64::new(0),
            news_ms: std::sync::atomic::AtomicU64::new(0),
            started: std::time::Instant::now(),
            heard: AtomicBool::new(false),
            offline_age_ms: std::sync::atomic::AtomicU64::new(0),
            replica: settings.replica.clone(),
            secrets: Mutex::new(BTreeMap::new()),
            resyncs: std::sync::atomic::AtomicU64::new(0),
        })
    }

    fn known(&self) -> std::sync::MutexGuard<'_, HashMap<String, Known>> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn saw(&self, revision: i64) {
        self.seen.fetch_max(revision, Ordering::AcqRel);
    }

    /// The revision the replica reached.
    pub fn applied(&self) -> i64 {
        *self.applied.borrow()
    }

    /// The replica reached `revision` (every change up to it is applied); deletions it passed
    /// need not be remembered any more.
    pub fn set_applied(&self, revision: i64) {
        self.saw(revision);
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.news_ms.fetch_max(now, Ordering::AcqRel);
        self.heard.store(true, Ordering::Release);
        metrics::global().fleet_news(self.applied());
        self.applied.send_if_modified(|r| {
            let moved = revision > *r;
            *r = (*r).max(revision);
            moved
        });
        // Deletions are rare: the whole map is walked only when one is remembered.
        if self.tombstones.swap(false, Ordering::AcqRel) {
            let mut known = self.known();
            known.retain(|_, k| k.exists || k.revision > revision);
            if known.values().any(|k| !k.exists) {
                self.tombstones.store(true, Ordering::Release);
            }
        }
    }

    /// How long since etcd last confirmed what the replica holds.
    pub fn stale_for(&self) -> Duration {
        let news = Duration::from_millis(self.news_ms.load(Ordering::Acquire));
        let since = self.started.elapsed().saturating_sub(news);
        match self.heard.load(Ordering::Acquire) {
            true => since,
            false => since + Duration::from_millis(self.offline_age_ms.load(Ordering::Acquire)),
        }
    }

    /// Where the replica is saved.
    pub fn replica_path(&self) -> Option<&std::path::Path> {
        self.replica.as_deref()
    }

    /// The replica to save: `snapshot` (the indexes, taken under the mutation lock with this
    /// call) with the revision and keys it is at.
    pub fn replica_image(&self, snapshot: StateSnapshot) -> ReplicaFile {
        let keys = self.known().iter().filter(|(_, k)| k.exists).map(|(key, k)| (key.clone(), k.revision)).collect();
        let now_ms = i64::try_from(wall_ms()).unwrap_or(i64::MAX);
        let confirmed = now_ms.saturating_sub(i64::try_from(self.stale_for().as_millis()).unwrap_or(i64::MAX));
        let mut file = ReplicaFile::new(&self.prefix, self.applied(), confirmed, keys).with(snapshot);
        let secrets = self.secrets.lock().unwrap_or_else(|p| p.into_inner());
        file.secrets = secrets.iter().map(|(name, s)| (name.clone(), hex::encode(s))).collect();
        file
    }

    /// The saved replica, when etcd cannot be reached at start (`unreachable`: why).
    fn load_saved(&self, path: &std::path::Path, unreachable: StoreError) -> Result<StateSnapshot, StoreError> {
        let file = ReplicaFile::read(path, &self.prefix).map_err(|e| {
            tracing::error!(error = %e, "the saved replica cannot be used either");
            unreachable
        })?;
        *self.known() =
            file.keys.iter().map(|(k, revision)| (k.clone(), Known { revision: *revision, exists: true })).collect();
        let mut secrets = self.secrets.lock().unwrap_or_else(|p| p.into_inner());
        for (name, text) in &file.secrets {
            let mut secret = [0u8; 32];
            if hex::decode_to_slice(text, &mut secret).is_ok() {
                secrets.insert(name.clone(), secret);
            }
        }
        drop(secrets);
        let age = u64::try_from(i64::try_from(wall_ms()).unwrap_or(i64::MAX).saturating_sub(file.confirmed_at_ms))
            .unwrap_or(0);
        self.offline_age_ms.store(age, Ordering::Release);
        self.applied.send_replace(file.revision);
        self.saw(file.revision);
        tracing::warn!(
            revision = file.revision,
            age_secs = age / 1000,
            sandboxes = file.sandboxes.len(),
            "etcd cannot be reached: serving the replica saved in the state directory until it can"
        );
        Ok(file.snapshot())
    }

    /// Waits until the replica holds every change etcd told this gateway about.
    pub async fn wait_caught_up(&self) {
        let target = self.seen.load(Ordering::Acquire);
        let mut applied = self.applied.subscribe();
        let reached = applied.wait_for(|r| *r >= target);
        if tokio::time::timeout(CATCH_UP_TIMEOUT, reached).await.is_err() {
            tracing::warn!(target, applied = self.applied(), "the replica did not catch up in time");
        }
    }

    /// Runs `op` on a client, again on `Unavailable` (see the module's comment).
    async fn call<T, F, Fut>(&self, context: impl FnOnce() -> String, mut op: F) -> Result<T, StoreError>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let mut attempt = 1;
        loop {
            match op(self.client.clone()).await {
                Ok(v) => return Ok(v),
                Err(etcd_client::Error::GRpcStatus(s))
                    if s.code() == tonic::Code::Unavailable && attempt < self.attempts =>
                {
                    tokio::time::sleep(RETRY_PAUSE * attempt).await;
                    attempt += 1;
                }
                Err(source) => {
                    metrics::global().fleet_etcd_error();
                    return Err(StoreError::Etcd { endpoints: self.endpoints.clone(), context: context(), source });
                }
            }
        }
    }

    fn check(&self) -> Result<(), StoreError> {
        if self.sealed.load(Ordering::Acquire) { Err(StoreError::Sealed) } else { Ok(()) }
    }

    fn sandbox_key(&self, sandbox: &Sandbox) -> String {
        format!("{}sandboxes/{}", self.prefix, sandbox.label())
    }

    fn token_key(&self, id: &TokenId) -> String {
        format!("{}tokens/{}/{}", self.prefix, id.workspace, id.name)
    }

    fn preview_key(&self, key: &PreviewKey) -> String {
        format!("{}previews/{}/{}/{}", self.prefix, key.workspace, key.sandbox, key.name)
    }

    async fn put(&self, key: String, record: &impl Serialize) -> Result<(), StoreError> {
        let value = serde_json::to_vec(record).map_err(|e| StoreError::Task(format!("encoding {key}: {e}")))?;
        self.write(key, Some(value)).await
    }

    /// Puts (`Some`) or deletes (`None`) `key` if it is still at the revision the replica holds.
    async fn write(&self, key: String, value: Option<Vec<u8>>) -> Result<(), StoreError> {
        self.check()?;
        let expected = self.known().get(&key).filter(|k| k.exists).map_or(0, |k| k.revision);
        // A missing key has modification revision 0 in a comparison.
        let when = [Compare::mod_revision(key.clone(), CompareOp::Equal, expected)];
        let txn = match &value {
            Some(v) => Txn::new().when(when).and_then([TxnOp::put(key.clone(), v.clone(), None)]),
            None => Txn::new().when(when).and_then([TxnOp::delete(key.clone(), None)]),
        };
        let what = if value.is_some() { "writing" } else { "deleting" };
        let response = self
            .call(
                || format!("{what} {key}"),
                |mut c| {
                    let txn = txn.clone();
                    async move { c.txn(txn).await }
                },
            )
            .await?;
        let revision = response.header().map_or(0, |h| h.revision());
        self.saw(revision);
        if !response.succeeded() {
            return Err(StoreError::Changed { key });
        }
        if value.is_none() {
            self.tombstones.store(true, Ordering::Release);
        }
        self.known().insert(key, Known { revision, exists: value.is_some() });
        Ok(())
    }

    /// Every record, read in pages of [`PAGE`] keys all at the revision of the first page.
    async fn load_all(&self) -> Result<StateSnapshot, StoreError> {
        // The prefix ends with '/': the first key after every key under it ends with '0'.
        let mut end = self.prefix.clone().into_bytes();
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        let mut from = self.prefix.clone().into_bytes();
        let mut revision = 0;
        let mut snapshot = StateSnapshot::default();
        let mut kvs = Vec::new();
        loop {
            let options = GetOptions::new().with_range(end.clone()).with_limit(PAGE).with_revision(revision);
            let response = self
                .call(
                    || format!("reading {}", self.prefix),
                    |mut c| {
                        let (from, options) = (from.clone(), options.clone());
                        async move { c.get(from, Some(options)).await }
                    },
                )
                .await?;
            if revision == 0 {
                revision = response.header().map_or(0, |h| h.revision());
            }
            for kv in response.kvs() {
                self.add(kv.key(), kv.value(), &mut snapshot)?;
                kvs.push((String::from_utf8_lossy(kv.key()).into_owned(), kv.mod_revision()));
            }
            match response.kvs().last() {
                Some(last) if response.more() => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => break,
            }
        }
        snapshot.sandboxes.sort_by_key(Sandbox::id);
        snapshot.tokens.sort_by_key(AccessToken::id);
        snapshot.previews.sort_by_key(Preview::key);
        snapshot.hosts.sort_by(|a, b| a.host.cmp(&b.host));
        *self.known() = kvs.into_iter().map(|(k, revision)| (k, Known { revision, exists: true })).collect();
        self.set_applied(revision);
        Ok(snapshot)
    }

    /// Reads every key again (the watch could not resume): the changes that bring the replica
    /// to etcd's current state, and that state's revision. The caller applies them before any
    /// other write (it holds the service layer's mutation lock).
    pub async fn resync(&self) -> Result<(Vec<Change>, i64), StoreError> {
        self.resyncs.fetch_add(1, Ordering::Relaxed);
        metrics::global().fleet_resync();
        let before: HashMap<String, Known> = self.known().clone();
        let snapshot = self.load_all().await?;
        let revision = self.applied();
        let now = self.known().clone();
        let mut changes = Vec::new();
        for s in snapshot.sandboxes {
            if before.get(&self.sandbox_key(&s)) != now.get(&self.sandbox_key(&s)) {
                changes.push(Change::Sandbox(s));
            }
        }
        for t in snapshot.tokens {
            let key = self.token_key(&t.id());
            if before.get(&key) != now.get(&key) {
                changes.push(Change::Token(t));
            }
        }
        for p in snapshot.previews {
            let key = self.preview_key(&p.key());
            if before.get(&key) != now.get(&key) {
                changes.push(Change::Preview(p));
            }
        }
        for h in snapshot.hosts {
            let key = format!("{}hosts/{}", self.prefix, h.host);
            if before.get(&key) != now.get(&key) {
                changes.push(Change::Host(h));
            }
        }
        for (key, k) in before {
            if k.exists && !now.contains_key(&key) {
                changes.extend(self.gone(&key));
            }
        }
        Ok((changes, revision))
    }

    /// Watches every key under the prefix from revision `from` on.
    pub async fn feed(&self, from: i64) -> Result<Feed, StoreError> {
        let options = WatchOptions::new().with_prefix().with_start_revision(from).with_progress_notify();
        let stream = self
            .call(
                || format!("watching {} from revision {from}", self.prefix),
                |mut c| {
                    let (prefix, options) = (self.prefix.clone(), options.clone());
                    async move { c.watch(prefix, Some(options)).await }
                },
            )
            .await?;
        let mut progress = tokio::time::interval(PROGRESS_EVERY);
        progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ok(Feed { stream, from, progress })
    }

    /// What the watch delivered, minus what the replica already holds, as changes; the replica
    /// is taken to hold them from here on (the caller applies them before any other write).
    /// A record that cannot be read is skipped (and logged): the rest of the fleet's state
    /// still converges.
    pub fn accept(&self, events: Vec<RawEvent>) -> Vec<Change> {
        let mut known = self.known();
        let mut changes = Vec::with_capacity(events.len());
        for e in events {
            if known.get(&e.key).is_some_and(|k| k.revision >= e.revision) {
                continue;
            }
            if e.value.is_none() {
                self.tombstones.store(true, Ordering::Release);
            }
            known.insert(e.key.clone(), Known { revision: e.revision, exists: e.value.is_some() });
            match e.value {
                Some(value) => {
                    let mut one = StateSnapshot::default();
                    match self.add(e.key.as_bytes(), &value, &mut one) {
                        Ok(()) => {
                            changes.extend(one.sandboxes.into_iter().map(Change::Sandbox));
                            changes.extend(one.tokens.into_iter().map(Change::Token));
                            changes.extend(one.previews.into_iter().map(Change::Preview));
                            changes.extend(one.hosts.into_iter().map(Change::Host));
                        }
                        Err(err) => tracing::error!(key = e.key, error = %err, "skipping a record that cannot be read"),
                    }
                }
                None => changes.extend(self.gone(&e.key)),
            }
        }
        changes
    }

    /// The change that deleting `key` is.
    fn gone(&self, key: &str) -> Option<Change> {
        let rest = key.strip_prefix(&self.prefix)?;
        let (kind, name) = rest.split_once('/')?;
        let mut parts = name.split('/');
        let (a, b, c) = (parts.next(), parts.next(), parts.next());
        match (kind, a, b, c) {
            ("sandboxes", Some(label), None, None) => Some(Change::SandboxGone(label.to_string())),
            ("tokens", Some(ws), Some(name), None) => Some(Change::TokenGone(TokenId::new(ws, name))),
            ("previews", Some(ws), Some(sandbox), Some(name)) => {
                Some(Change::PreviewGone(PreviewKey::new(ws, sandbox, name)))
            }
            ("hosts", Some(host), None, None) => Some(Change::HostGone(host.to_string())),
            _ => None,
        }
    }

    /// Adds the record under `key` to `snapshot` (secrets, read by `secret`, and kinds of later
    /// versions are skipped).
    fn add(&self, key: &[u8], value: &[u8], snapshot: &mut StateSnapshot) -> Result<(), StoreError> {
        let key = String::from_utf8_lossy(key);
        let Some(rest) = key.strip_prefix(&self.prefix) else { return Ok(()) };
        let corrupt = |reason: String| StoreError::Corrupt { path: PathBuf::from(format!("etcd:{key}")), reason };
        let (kind, name) = rest.split_once('/').unwrap_or((rest, ""));
        match kind {
            "sandboxes" => snapshot.sandboxes.push(
                record(
                    value,
                    "sandbox",
                    name,
                    RECORD_VERSION,
                    |r: StoredSandbox| (r.version, r.sandbox),
                    Sandbox::label,
                )
                .map_err(corrupt)?,
            ),
            "tokens" => snapshot.tokens.push(
                record(
                    value,
                    "token",
                    name,
                    RECORD_VERSION,
                    |r: TokenRecord| (r.version, r.token),
                    |t| format!("{}/{}", t.workspace, t.name),
                )
                .map_err(corrupt)?,
            ),
            "previews" => snapshot.previews.push(
                record(
                    value,
                    "preview",
                    name,
                    PREVIEW_RECORD_VERSION,
                    |r: PreviewRecord| (r.version, r.preview),
                    |p| format!("{}/{}/{}", p.workspace, p.sandbox, p.name),
                )
                .map_err(corrupt)?,
            ),
            "hosts" => snapshot.hosts.push(
                record(
                    value,
                    "host",
                    name,
                    HOST_RECORD_VERSION,
                    |r: HostRecord| (r.version, r.host),
                    |h| h.host.clone(),
                )
                .map_err(corrupt)?,
            ),
            _ => {}
        }
        Ok(())
    }

    /// Announces this member (`me`) under its host key on a lease, and keeps the lease alive
    /// until renewing fails (etcd unreachable, or the lease expired meanwhile): the caller
    /// announces again. The key is written unconditionally: only this member writes it.
    pub async fn announce(&self, me: &FleetHost) -> Result<(), StoreError> {
        let key = format!("{}hosts/{}", self.prefix, me.host);
        let value = serde_json::to_vec(&HostRecord { version: HOST_RECORD_VERSION, host: me.clone() })
            .map_err(|e| StoreError::Task(format!("encoding {key}: {e}")))?;
        let etcd_err = |context: &str| {
            let context = format!("{context} {key}");
            move |source| StoreError::Etcd { endpoints: self.endpoints.clone(), context, source }
        };
        let lease = self
            .call(|| format!("granting the lease of {key}"), |mut c| async move { c.lease_grant(HOST_TTL, None).await })
            .await?
            .id();
        self.lease.store(lease, Ordering::Release);
        let options = PutOptions::new().with_lease(lease);
        self.call(
            || format!("writing {key}"),
            |mut c| {
                let (key, value, options) = (key.clone(), value.clone(), options.clone());
                async move { c.put(key, value, Some(options)).await }
            },
        )
        .await?;
        tracing::info!(host = me.host, address = %me.address, lease, "announced this host to the fleet");
        let (mut keeper, mut answers) =
            self.client.clone().lease_keep_alive(lease).await.map_err(etcd_err("keeping alive"))?;
        loop {
            tokio::time::sleep(Duration::from_secs(HOST_TTL as u64) / 3).await;
            keeper.keep_alive().await.map_err(etcd_err("keeping alive"))?;
            let answer = tokio::time::timeout(REQUEST_TIMEOUT, answers.message())
                .await
                .map_err(|_| StoreError::Task(format!("keeping {key} alive: no answer in {REQUEST_TIMEOUT:?}")))?
                .map_err(etcd_err("keeping alive"))?;
            match answer {
                Some(a) if a.ttl() > 0 => {}
                _ => return Err(StoreError::Task(format!("the lease of {key} expired"))),
            }
        }
    }

    /// Removes this member's host key at once (a shutdown, not a handover): the others stop
    /// sending it requests now rather than when the lease lapses.
    pub async fn withdraw(&self) {
        let lease = self.lease.swap(0, Ordering::AcqRel);
        if lease != 0
            && let Err(e) = self.client.clone().lease_revoke(lease).await
        {
            tracing::warn!(error = %e, "could not remove this host's key; it lapses with its lease");
        }
    }

    async fn secret_of(&self, name: &'static str) -> Result<[u8; 32], StoreError> {
        if let Some(s) = self.secrets.lock().unwrap_or_else(|p| p.into_inner()).get(name) {
            return Ok(*s);
        }
        let secret = self.offer_secret(name, new_secret()?).await?;
        self.secrets.lock().unwrap_or_else(|p| p.into_inner()).insert(name.to_string(), secret);
        Ok(secret)
    }

    /// The fleet's secret `name`: `offered` if the fleet had none (a single host's, imported;
    /// or a fresh one), else the one it has.
    pub async fn offer_secret(&self, name: &str, offered: [u8; 32]) -> Result<[u8; 32], StoreError> {
        let key = format!("{}secrets/{name}", self.prefix);
        let fresh = offered;
        // Created once for the whole fleet: put only if the key was never created, else read
        // the one that won.
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.clone(), fresh.to_vec(), None)])
            .or_else([TxnOp::get(key.clone(), None)]);
        self.check()?;
        let response = self
            .call(
                || format!("creating {key}"),
                |mut c| {
                    let txn = txn.clone();
                    async move { c.txn(txn).await }
                },
            )
            .await?;
        if response.succeeded() {
            tracing::info!(key, "stored the fleet's secret");
            return Ok(fresh);
        }
        let corrupt =
            |reason: &str| StoreError::Corrupt { path: PathBuf::from(format!("etcd:{key}")), reason: reason.into() };
        let value = response
            .op_responses()
            .into_iter()
            .find_map(|r| match r {
                TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.value().to_vec()),
                _ => None,
            })
            .ok_or_else(|| corrupt("the secret vanished while it was read"))?;
        value.try_into().map_err(|_| corrupt("not 32 bytes"))
    }
}

/// A record of kind `what` stored under `name`: its version must be `version` and it must be
/// the record `name` names (a record copied under another key is refused).
fn record<R: DeserializeOwned, T>(
    value: &[u8],
    what: &str,
    name: &str,
    version: u32,
    open: impl FnOnce(R) -> (u32, T),
    name_of: impl FnOnce(&T) -> String,
) -> Result<T, String> {
    let r: R = serde_json::from_slice(value).map_err(|e| format!("not a {what} record: {e}"))?;
    let (found, item) = open(r);
    if found != version {
        return Err(format!("record version {found} (this gateway reads {version})"));
    }
    let own = name_of(&item);
    if name != own {
        return Err(format!("holds the record of {own}"));
    }
    Ok(item)
}

impl Store for EtcdStore {
    fn load(&self) -> StoreFuture<'_, StateSnapshot> {
        Box::pin(async move {
            match self.load_all().await {
                Err(e @ StoreError::Etcd { .. }) => match self.replica.as_deref() {
                    Some(path) if path.exists() => self.load_saved(path, e),
                    _ => Err(e),
                },
                other => other,
            }
        })
    }
    fn put_sandbox(&self, sandbox: Sandbox) -> StoreFuture<'_, ()> {
        let key = self.sandbox_key(&sandbox);
        Box::pin(async move { self.put(key, &StoredSandbox { version: RECORD_VERSION, sandbox }).await })
    }
    fn delete_sandbox(&self, id: SandboxId) -> StoreFuture<'_, ()> {
        let key = format!("{}sandboxes/{}", self.prefix, sandbox_label(&id.name, &id.workspace));
        Box::pin(self.write(key, None))
    }
    fn put_token(&self, token: AccessToken) -> StoreFuture<'_, ()> {
        let key = self.token_key(&token.id());
        Box::pin(async move { self.put(key, &TokenRecord { version: RECORD_VERSION, token }).await })
    }
    fn delete_token(&self, id: TokenId) -> StoreFuture<'_, ()> {
        Box::pin(self.write(self.token_key(&id), None))
    }
    fn put_preview(&self, preview: Preview) -> StoreFuture<'_, ()> {
        let key = self.preview_key(&preview.key());
        Box::pin(async move { self.put(key, &PreviewRecord { version: PREVIEW_RECORD_VERSION, preview }).await })
    }
    fn delete_preview(&self, key: PreviewKey) -> StoreFuture<'_, ()> {
        Box::pin(self.write(self.preview_key(&key), None))
    }
    fn secret(&self, name: &'static str) -> StoreFuture<'_, [u8; 32]> {
        Box::pin(self.secret_of(name))
    }
    fn describe(&self) -> String {
        format!("etcd:{}{}", self.endpoints, self.prefix)
    }
    fn seal(&self) {
        self.sealed.store(true, Ordering::Release);
    }
    fn catch_up(&self) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            self.wait_caught_up().await;
            Ok(())
        })
    }
    fn stale_for(&self) -> Option<Duration> {
        Some(EtcdStore::stale_for(self))
    }
    fn replica_status(&self) -> Option<super::ReplicaStatus> {
        Some(super::ReplicaStatus {
            revision: self.applied(),
            stale_for: EtcdStore::stale_for(self),
            resyncs: self.resyncs.load(Ordering::Relaxed),
        })
    }
}

impl Feed {
    /// The next thing the watch delivered; an error ends the watch (a new one resumes from the
    /// revision the replica reached).
    pub async fn next(&mut self) -> Result<FeedItem, StoreError> {
        loop {
            let context = |from: i64| format!("watching from revision {from}");
            let etcd =
                |from: i64| move |source| StoreError::Etcd { endpoints: String::new(), context: context(from), source };
            let message = tokio::select! {
                m = self.stream.message() => m,
                _ = self.progress.tick() => {
                    // Answered by an empty response at the revision etcd reached.
                    self.stream.request_progress().await.map_err(etcd(self.from))?;
                    continue;
                }
            };
            let response = message
                .map_err(etcd(self.from))?
                .ok_or_else(|| StoreError::Task(format!("{}: etcd closed the watch", context(self.from))))?;
            if response.compact_revision() > 0 {
                return Ok(FeedItem::Compacted(response.compact_revision()));
            }
            if response.canceled() {
                return Err(StoreError::Task(format!(
                    "{}: canceled: {}",
                    context(self.from),
                    response.cancel_reason()
                )));
            }
            let header = response.header().map_or(0, |h| h.revision());
            if response.created() && response.events().is_empty() {
                continue;
            }
            if response.events().is_empty() {
                return Ok(FeedItem::Progress(header));
            }
            let events: Vec<RawEvent> = response.events().iter().filter_map(raw).collect();
            let last = events.last().map_or(0, |e| e.revision);
            self.from = header.max(last) + 1;
            return Ok(FeedItem::Events(events, header.max(last)));
        }
    }
}

fn raw(e: &etcd_client::Event) -> Option<RawEvent> {
    let kv: &KeyValue = e.kv()?;
    let key = String::from_utf8_lossy(kv.key()).into_owned();
    let value = match e.event_type() {
        EventType::Put => Some(kv.value().to_vec()),
        EventType::Delete => None,
    };
    Some(RawEvent { key, value, revision: kv.mod_revision() })
}
