//! The etcd store: the file store's records as keys of etcd (v3 API) under a prefix, so that a
//! fleet of gateways shares one state. A put or delete resolves once etcd committed it (a
//! quorum of its members holds it).
//!
//! Layout under `fleet.prefix` (the records are the file store's JSON, version included):
//! ```text
//! {prefix}sandboxes/{workspace}/{name}
//! {prefix}tokens/{workspace}/{name}
//! {prefix}previews/{workspace}/{sandbox}/{name}
//! {prefix}secrets/{name}        32 bytes, created once (a transaction: put if absent, else read)
//! ```
//! Names cannot hold a '/' (they are DNS labels), so a key names exactly one record. `load`
//! reads every key at one revision, in pages.
//!
//! The client spreads requests over the endpoints; one that cannot be reached (a member down)
//! answers `Unavailable` without having done anything, so such a request goes again, to the
//! next endpoint, before it counts as failed. Every operation here may be repeated: puts and
//! deletes are idempotent, and the secret's transaction reads back whatever won.

use super::{
    file_store::{PREVIEW_RECORD_VERSION, PreviewRecord, RECORD_VERSION, StoredSandbox, TokenRecord},
    store::{StateSnapshot, Store, StoreError, StoreFuture, new_secret},
};
use crate::model::{
    preview::{Preview, PreviewKey},
    sandbox::{AccessToken, Sandbox, SandboxId, TokenId},
};
use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, Txn, TxnOp, TxnOpResponse};
use serde::{Serialize, de::DeserializeOwned};
use std::{
    future::Future,
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

/// How long one etcd request may take (a member that lost its quorum does not answer).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Keys per range request of `load`: each response stays far below gRPC's 4 MiB default
/// (a sandbox record is about 200 bytes).
const PAGE: i64 = 500;
/// Pause before asking again after `Unavailable` (times the attempt number).
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// A store in etcd.
pub struct EtcdStore {
    client: Client,
    /// Attempts per operation: one per endpoint, and one more.
    attempts: u32,
    endpoints: String,
    prefix: String,
    sealed: AtomicBool,
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
}

impl EtcdStore {
    /// Connects to etcd (a connection to at least one endpoint).
    pub async fn connect(settings: &EtcdSettings) -> Result<Self, StoreError> {
        let endpoints = settings.endpoints.join(",");
        let mut options = ConnectOptions::new()
            .with_connect_timeout(REQUEST_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
        if let Some((user, password)) = &settings.user {
            options = options.with_user(user.clone(), password.clone());
        }
        let client = Client::connect(&settings.endpoints, Some(options)).await.map_err(|source| StoreError::Etcd {
            endpoints: endpoints.clone(),
            context: "connecting".into(),
            source,
        })?;
        let attempts = u32::try_from(settings.endpoints.len()).unwrap_or(u32::MAX).saturating_add(1);
        Ok(Self { client, attempts, endpoints, prefix: settings.prefix.clone(), sealed: AtomicBool::new(false) })
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
                    return Err(StoreError::Etcd { endpoints: self.endpoints.clone(), context: context(), source });
                }
            }
        }
    }

    fn check(&self) -> Result<(), StoreError> {
        if self.sealed.load(Ordering::Acquire) { Err(StoreError::Sealed) } else { Ok(()) }
    }

    fn sandbox_key(&self, id: &SandboxId) -> String {
        format!("{}sandboxes/{}/{}", self.prefix, id.workspace, id.name)
    }

    fn token_key(&self, id: &TokenId) -> String {
        format!("{}tokens/{}/{}", self.prefix, id.workspace, id.name)
    }

    fn preview_key(&self, key: &PreviewKey) -> String {
        format!("{}previews/{}/{}/{}", self.prefix, key.workspace, key.sandbox, key.name)
    }

    async fn put(&self, key: String, record: &impl Serialize) -> Result<(), StoreError> {
        self.check()?;
        let value = serde_json::to_vec(record).map_err(|e| StoreError::Task(format!("encoding {key}: {e}")))?;
        self.call(
            || format!("writing {key}"),
            |mut c| {
                let (key, value) = (key.clone(), value.clone());
                async move { c.put(key, value, None).await }
            },
        )
        .await?;
        Ok(())
    }

    async fn delete(&self, key: String) -> Result<(), StoreError> {
        self.check()?;
        self.call(
            || format!("deleting {key}"),
            |mut c| {
                let key = key.clone();
                async move { c.delete(key, None).await }
            },
        )
        .await?;
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
        Ok(snapshot)
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
                    |s| format!("{}/{}", s.workspace, s.name),
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
            _ => {}
        }
        Ok(())
    }

    async fn secret_of(&self, name: &'static str) -> Result<[u8; 32], StoreError> {
        let key = format!("{}secrets/{name}", self.prefix);
        let fresh = new_secret()?;
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
            tracing::info!(key, "generated a new secret");
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
        Box::pin(self.load_all())
    }
    fn put_sandbox(&self, sandbox: Sandbox) -> StoreFuture<'_, ()> {
        let key = self.sandbox_key(&sandbox.id());
        Box::pin(async move { self.put(key, &StoredSandbox { version: RECORD_VERSION, sandbox }).await })
    }
    fn delete_sandbox(&self, id: SandboxId) -> StoreFuture<'_, ()> {
        Box::pin(self.delete(self.sandbox_key(&id)))
    }
    fn put_token(&self, token: AccessToken) -> StoreFuture<'_, ()> {
        let key = self.token_key(&token.id());
        Box::pin(async move { self.put(key, &TokenRecord { version: RECORD_VERSION, token }).await })
    }
    fn delete_token(&self, id: TokenId) -> StoreFuture<'_, ()> {
        Box::pin(self.delete(self.token_key(&id)))
    }
    fn put_preview(&self, preview: Preview) -> StoreFuture<'_, ()> {
        let key = self.preview_key(&preview.key());
        Box::pin(async move { self.put(key, &PreviewRecord { version: PREVIEW_RECORD_VERSION, preview }).await })
    }
    fn delete_preview(&self, key: PreviewKey) -> StoreFuture<'_, ()> {
        Box::pin(self.delete(self.preview_key(&key)))
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
}
