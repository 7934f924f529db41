//! The store trait: what the service layer needs from durable state.
//!
//! Futures are boxed so the trait is object-safe (`Arc<dyn Store>`) and a networked store
//! (etcd, a database) can be added later without touching callers. New record kinds (previews)
//! are added as new methods and new fields of [`StateSnapshot`].

use crate::errors::{ApiError, ErrorCode};
use crate::model::fleet::FleetHost;
use crate::model::preview::{Preview, PreviewKey};
use crate::model::sandbox::{AccessToken, Sandbox, SandboxId, TokenId};
use std::{
    collections::BTreeMap,
    future::Future,
    path::PathBuf,
    pin::Pin,
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

/// Where a fleet member's replica stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplicaStatus {
    /// The etcd revision it reached.
    pub revision: i64,
    /// How long since etcd last confirmed it.
    pub stale_for: std::time::Duration,
    /// How many times it read everything again (its watch could not resume).
    pub resyncs: u64,
}

/// A boxed store future.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Everything the store holds, as loaded at start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StateSnapshot {
    /// Registered sandboxes, sorted by (workspace, name).
    pub sandboxes: Vec<Sandbox>,
    /// Workspace access tokens, sorted by (workspace, name).
    pub tokens: Vec<AccessToken>,
    /// Previews (their tokens inside), sorted by (workspace, sandbox, name).
    pub previews: Vec<Preview>,
    /// The fleet's live members (an etcd store only), sorted by host.
    pub hosts: Vec<FleetHost>,
}

/// Errors of a store, by cause.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An I/O error on a path.
    #[error("{context} {}: {source}", path.display())]
    Io {
        /// What we were doing.
        context: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A file that cannot be understood.
    #[error("{}: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Another process holds the state directory.
    #[error("{} is locked by another running gateway", path.display())]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// A background task failed.
    #[error("store task failed: {0}")]
    Task(String),
    /// etcd refused or could not be reached.
    #[error("etcd ({endpoints}): {context}: {source}")]
    Etcd {
        /// The endpoints asked.
        endpoints: String,
        /// What we were doing.
        context: String,
        /// The client's error.
        #[source]
        source: etcd_client::Error,
    },
    /// The record changed (on another gateway) since the replica saw it: nothing was written.
    #[error("{key} changed meanwhile (another gateway wrote it); nothing was written")]
    Changed {
        /// The record's key.
        key: String,
    },
    /// The state was handed over to the gateway process that took over (zero-downtime
    /// restart): this process may not write any more.
    #[error("the state now belongs to the gateway process that took over (restart in progress); retry")]
    Sealed,
}

/// Durable state of the gateway.
pub trait Store: Send + Sync + 'static {
    /// Everything stored. Fails (never returns an empty snapshot) when anything is unreadable.
    fn load(&self) -> StoreFuture<'_, StateSnapshot>;
    /// Creates or replaces a sandbox; durable when the future resolves `Ok`.
    fn put_sandbox(&self, sandbox: Sandbox) -> StoreFuture<'_, ()>;
    /// Deletes a sandbox (no error if absent); durable when the future resolves `Ok`.
    fn delete_sandbox(&self, id: SandboxId) -> StoreFuture<'_, ()>;
    /// Creates or replaces an access token; durable when the future resolves `Ok`.
    fn put_token(&self, token: AccessToken) -> StoreFuture<'_, ()>;
    /// Deletes an access token (no error if absent); durable when the future resolves `Ok`.
    fn delete_token(&self, id: TokenId) -> StoreFuture<'_, ()>;
    /// Creates or replaces a preview and its tokens; durable when the future resolves `Ok`.
    fn put_preview(&self, preview: Preview) -> StoreFuture<'_, ()>;
    /// Deletes a preview and its tokens (no error if absent).
    fn delete_preview(&self, key: PreviewKey) -> StoreFuture<'_, ()>;
    /// A 256-bit secret named `name`, generated from OS randomness and stored the first time.
    fn secret(&self, name: &'static str) -> StoreFuture<'_, [u8; 32]>;
    /// A short description for logs (`file:/var/lib/gateway`).
    fn describe(&self) -> String;
    /// Refuses every later operation with [`StoreError::Sealed`], once the operation in
    /// progress is done (zero-downtime restart: the successor owns the state).
    fn seal(&self) {}
    /// Waits until the service layer's indexes hold every change the store knows of (a fleet's
    /// replica after [`StoreError::Changed`]); at once for a store only this gateway writes.
    fn catch_up(&self) -> StoreFuture<'_, ()> {
        Box::pin(async { Ok(()) })
    }
    /// How long since the shared store last confirmed what the indexes hold (a fleet's
    /// replica); `None` for a store only this gateway writes.
    fn stale_for(&self) -> Option<std::time::Duration> {
        None
    }
    /// Where a fleet member's replica stands; `None` for a store only this gateway writes.
    fn replica_status(&self) -> Option<ReplicaStatus> {
        None
    }
}

/// An in-memory store (tests), whose writes can be made to fail.
#[derive(Default)]
pub struct MemoryStore {
    sandboxes: Mutex<BTreeMap<SandboxId, Sandbox>>,
    tokens: Mutex<BTreeMap<TokenId, AccessToken>>,
    previews: Mutex<BTreeMap<PreviewKey, Preview>>,
    secrets: Mutex<BTreeMap<&'static str, [u8; 32]>>,
    fail_writes: AtomicBool,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
    /// Makes every following write fail (or succeed again).
    pub fn set_fail_writes(&self, fail: bool) {
        self.fail_writes.store(fail, Ordering::SeqCst);
    }
    fn check(&self) -> Result<(), StoreError> {
        if self.fail_writes.load(Ordering::SeqCst) {
            Err(StoreError::Io {
                context: "writing",
                path: PathBuf::from("memory"),
                source: std::io::Error::other("injected failure"),
            })
        } else {
            Ok(())
        }
    }
    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<SandboxId, Sandbox>> {
        self.sandboxes.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn token_map(&self) -> std::sync::MutexGuard<'_, BTreeMap<TokenId, AccessToken>> {
        self.tokens.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Store for MemoryStore {
    fn load(&self) -> StoreFuture<'_, StateSnapshot> {
        let sandboxes = self.map().values().cloned().collect();
        let tokens = self.token_map().values().cloned().collect();
        let previews = self.previews.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        Box::pin(async move { Ok(StateSnapshot { sandboxes, tokens, previews, hosts: Vec::new() }) })
    }
    fn put_sandbox(&self, sandbox: Sandbox) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            self.check()?;
            self.map().insert(sandbox.id(), sandbox);
            Ok(())
        })
    }
    fn delete_sandbox(&self, id: SandboxId) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            self.check()?;
            self.map().remove(&id);
            Ok(())
        })
    }
    fn put_token(&self, token: AccessToken) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            self.check()?;
            self.token_map().insert(token.id(), token);
            Ok(())
        })
    }
    fn delete_token(&self, id: TokenId) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            self.check()?;
            self.token_map().remove(&id);
            Ok(())
        })
    }
    fn put_preview(&self, preview: Preview) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            self.check()?;
            self.previews.lock().unwrap_or_else(|p| p.into_inner()).insert(preview.key(), preview);
            Ok(())
        })
    }
    fn delete_preview(&self, key: PreviewKey) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            self.check()?;
            self.previews.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
            Ok(())
        })
    }
    fn secret(&self, name: &'static str) -> StoreFuture<'_, [u8; 32]> {
        Box::pin(async move {
            let mut secrets = self.secrets.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(s) = secrets.get(name) {
                return Ok(*s);
            }
            let s = new_secret()?;
            secrets.insert(name, s);
            Ok(s)
        })
    }
    fn describe(&self) -> String {
        "memory".into()
    }
}
impl StoreError {
    /// The answer to a client whose change could not be saved (nothing was changed).
    pub fn write_failed(&self) -> ApiError {
        match self {
            Self::Changed { .. } => {
                ApiError::new(ErrorCode::StateChanged, format!("the state changed meanwhile: {self}"))
            }
            Self::Etcd { .. } => ApiError::new(
                ErrorCode::StoreUnavailable,
                format!("the fleet's store cannot be written, nothing was changed: {self}"),
            ),
            _ => ApiError::new(ErrorCode::StateWriteFailed, format!("the state could not be saved: {self}")),
        }
    }
}

/// 32 bytes from the OS random number generator: a new named secret.
pub(crate) fn new_secret() -> Result<[u8; 32], StoreError> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret)
        .map_err(|e| StoreError::Task(format!("the OS random number generator failed: {e}")))?;
    Ok(secret)
}
