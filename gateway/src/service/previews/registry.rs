//! The preview registry: the live previews and their tokens, the mutations on them (each takes
//! the mutation guard and the sandbox it belongs to, and runs kernel → store → index), and the
//! lookups the HTTPS edge makes on every preview request.
//!
//! A sandbox's kernel policy is recomputed from its declared ports and its live previews on
//! every change ([`PreviewRegistry::policy_for`]), so a preview on an undeclared port opens it,
//! and deleting (or reaping) the last preview using it closes it again unless it is declared. A
//! refused request changes nothing; a failed store write puts the previous kernel policy back.

use super::{ids, index::PreviewIndex, spec::ValidPreview, views::preview_url};
use crate::{
    config::Config,
    dataplane::SandboxPolicy,
    errors::{ApiError, ErrorCode},
    model::{
        preview::{Preview, PreviewKey, PreviewToken},
        sandbox::{Sandbox, SandboxId},
        time::{self, Timestamp},
    },
    service::mutation::Mutating,
    state::Store,
};
use std::{
    sync::{Arc, RwLock},
    time::Duration,
};
use subtle::ConstantTimeEq;

/// Most previews per sandbox.
pub const MAX_PREVIEWS_PER_SANDBOX: usize = 100;
/// Most tokens per preview (expired ones are pruned first when a new one needs room).
pub const MAX_TOKENS_PER_PREVIEW: usize = 100;

fn preview_not_found(key: &PreviewKey) -> ApiError {
    ApiError::new(
        ErrorCode::PreviewNotFound,
        format!("preview {:?} of sandbox {:?} not found in workspace {:?}", key.name, key.sandbox, key.workspace),
    )
}

/// The previews, their tokens, and the key of derived preview ids.
pub struct PreviewRegistry {
    index: RwLock<PreviewIndex>,
    /// Key of derived preview ids (see [`ids`]).
    key: [u8; 32],
    /// Wakes the reaper when previews change.
    changed: tokio::sync::Notify,
}

impl PreviewRegistry {
    /// The registry of the stored previews. Previews of sandboxes that no longer exist are
    /// deleted (a sandbox deletion removes its previews after its own record; a crash in between
    /// leaves them behind); two previews claiming one host label make the state inconsistent.
    pub async fn load(
        store: &dyn Store,
        previews: Vec<Preview>,
        key: [u8; 32],
        sandbox_exists: impl Fn(&SandboxId) -> bool,
    ) -> Result<Self, String> {
        let mut index = PreviewIndex::default();
        for preview in previews {
            if !sandbox_exists(&preview.sandbox_id()) {
                tracing::warn!(preview = %preview.key(), "removing a preview whose sandbox is gone");
                if let Err(e) = store.delete_preview(preview.key()).await {
                    tracing::error!(preview = %preview.key(), error = %e, "cannot remove the orphan preview");
                }
                continue;
            }
            if let Some(other) = index.by_id(&preview.id) {
                return Err(format!(
                    "previews {} and {} both claim the host label {}",
                    other.key(),
                    preview.key(),
                    preview.id
                ));
            }
            index.insert(Arc::new(preview));
        }
        Ok(Self { index: RwLock::new(index), key, changed: tokio::sync::Notify::new() })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, PreviewIndex> {
        self.index.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, PreviewIndex> {
        self.index.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Resolves when previews change (the reaper re-reads the next expiry then).
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }

    /// The kernel policy of `sandbox` with its live previews.
    pub fn policy_for(&self, sandbox: &Sandbox) -> SandboxPolicy {
        let id = sandbox.id();
        SandboxPolicy::of(sandbox, self.read().live_of(&id, time::now()))
    }

    /// The kernel policy of `sandbox` if preview `key` were `with` (`None`: deleted).
    fn policy_with(&self, sandbox: &Sandbox, key: &PreviewKey, with: Option<&Preview>) -> SandboxPolicy {
        let id = sandbox.id();
        let now = time::now();
        let previews = self.read();
        let others = previews.live_of(&id, now).filter(|p| p.key() != *key);
        SandboxPolicy::of(sandbox, others.chain(with.filter(|p| !p.is_expired(now))))
    }

    /// One live preview (an expired one no longer exists for clients).
    pub fn get(&self, key: &PreviewKey) -> Result<Arc<Preview>, ApiError> {
        self.read().get(key).filter(|p| !p.is_expired(time::now())).cloned().ok_or_else(|| preview_not_found(key))
    }

    /// Whether a live preview has this key.
    pub fn exists(&self, key: &PreviewKey, now: Timestamp) -> bool {
        self.read().get(key).is_some_and(|p| !p.is_expired(now))
    }

    /// The live previews of a sandbox, sorted by name.
    pub fn list(&self, id: &SandboxId) -> Vec<Arc<Preview>> {
        let now = time::now();
        self.read().of(id).filter(|p| !p.is_expired(now)).cloned().collect()
    }

    /// The live preview whose host label is `id` (lower-case); `None` once expired, at once.
    pub fn by_host_label(&self, id: &str) -> Option<Arc<Preview>> {
        self.read().by_id(id).filter(|p| !p.is_expired(time::now())).cloned()
    }

    /// Whether `secret` is a live token of `preview` (constant-time comparison of digests).
    pub fn token_valid(preview: &Preview, secret: &str) -> bool {
        let now = time::now();
        if preview.is_expired(now) {
            return false;
        }
        let candidate = ids::digest(secret);
        // Every token is compared, whatever matched, so timing says nothing about which.
        preview.tokens.iter().fold(false, |found, t| {
            let same: bool = ids::digest(&t.token).ct_eq(&candidate).into();
            found | (same & !t.is_expired(now))
        })
    }

    /// The earliest preview expiry.
    pub fn next_expiry(&self) -> Option<Timestamp> {
        self.read().next_expiry()
    }

    /// Whether the preview `key` is still in the index and expired (the reaper's re-check).
    pub fn is_expired(&self, key: &PreviewKey, now: Timestamp) -> bool {
        self.read().get(key).is_some_and(|p| p.is_expired(now))
    }

    /// The keys of the expired previews.
    pub fn expired(&self, now: Timestamp) -> Vec<PreviewKey> {
        self.read().expired(now)
    }

    /// The record a PUT makes: a new id unless the name and prefix are unchanged, tokens kept
    /// (their expiry clamped to the preview's), conflicts refused.
    pub fn build(
        &self,
        config: &Config,
        key: &PreviewKey,
        valid: ValidPreview,
        prev: Option<&Preview>,
        now: Timestamp,
    ) -> Result<Preview, ApiError> {
        let id = match &valid.prefix_url {
            Some(prefix) => ids::prefixed_id(prefix, &key.workspace),
            None => ids::derived_id(&self.key, &key.workspace, &key.sandbox, &key.name),
        };
        let previews = self.read();
        if let Some(other) = previews.by_id(&id)
            && other.key() != *key
        {
            return Err(ApiError::new(
                ErrorCode::PreviewUrlConflict,
                format!(
                    "the preview URL {} is already used by preview {:?} of sandbox {:?}; choose another prefixUrl",
                    preview_url(config, &id),
                    other.name,
                    other.sandbox
                ),
            ));
        }
        if prev.is_none() && previews.of(&key.sandbox_id()).count() >= MAX_PREVIEWS_PER_SANDBOX {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                format!("a sandbox holds at most {MAX_PREVIEWS_PER_SANDBOX} previews; delete one first"),
            ));
        }
        drop(previews);
        let tokens = prev
            .map(|p| {
                p.tokens
                    .iter()
                    .cloned()
                    .map(|mut t| {
                        if let Some(end) = valid.expires_at {
                            t.expires_at = t.expires_at.min(end);
                        }
                        t
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(Preview {
            workspace: key.workspace.clone(),
            sandbox: key.sandbox.clone(),
            name: key.name.clone(),
            id,
            port: valid.port,
            public: valid.public,
            prefix_url: valid.prefix_url,
            request_headers: valid.request_headers,
            response_headers: valid.response_headers,
            ttl: valid.ttl,
            expires_at: valid.expires_at,
            created_at: prev.map_or_else(|| time::truncate_millis(now), |p| p.created_at),
            tokens,
        })
    }

    /// Kernel → store → index for a new version of a preview of `sandbox`.
    pub async fn commit(
        &self,
        m: &Mutating,
        sandbox: &Sandbox,
        preview: Preview,
    ) -> Result<(Arc<Preview>, Duration), ApiError> {
        let key = preview.key();
        let policy = self.policy_with(sandbox, &key, Some(&preview));
        let applied = self.apply(m, sandbox, &policy)?;
        if let Err(e) = m.store.put_preview(preview.clone()).await {
            tracing::error!(preview = %key, error = %e, "state write failed; rolling the data plane back");
            self.reapply(m, sandbox);
            return Err(e.write_failed());
        }
        let preview = Arc::new(preview);
        self.write().insert(preview.clone());
        self.changed.notify_one();
        Ok((preview, applied))
    }

    /// Programs a sandbox's policy; on failure, puts the current one back.
    fn apply(&self, m: &Mutating, sandbox: &Sandbox, policy: &SandboxPolicy) -> Result<Duration, ApiError> {
        m.apply(sandbox, policy).map_err(|e| {
            tracing::warn!(sandbox = %sandbox.id(), error = %e, "the data plane refused the policy");
            self.reapply(m, sandbox);
            e.api_error()
        })
    }

    /// Best effort: the kernel back to the policy of the current index.
    fn reapply(&self, m: &Mutating, sandbox: &Sandbox) {
        if let Err(e) = m.apply(sandbox, &self.policy_for(sandbox)) {
            tracing::error!(sandbox = %sandbox.id(), error = %e, "rollback: re-applying the policy failed");
        }
    }

    /// Kernel → store → index for a deletion of a preview of `sandbox`.
    pub async fn remove(&self, m: &Mutating, sandbox: &Sandbox, key: &PreviewKey) -> Result<(), ApiError> {
        let policy = self.policy_with(sandbox, key, None);
        self.apply(m, sandbox, &policy)?;
        if let Err(e) = m.store.delete_preview(key.clone()).await {
            tracing::error!(preview = %key, error = %e, "state write failed; rolling the data plane back");
            self.reapply(m, sandbox);
            return Err(e.write_failed());
        }
        self.write().remove(key);
        self.changed.notify_one();
        Ok(())
    }

    /// Store → index for a preview whose sandbox is gone (its kernel entries went with it).
    pub async fn remove_orphan(&self, m: &Mutating, key: &PreviewKey) -> Result<(), ApiError> {
        self.write().remove(key);
        m.store.delete_preview(key.clone()).await.map_err(|e| e.write_failed())
    }

    /// After a sandbox's deletion (its kernel entries already gone): deletes its previews.
    /// Best effort: a preview left on disk is removed at the next start.
    pub async fn forget_of(&self, m: &Mutating, id: &SandboxId) {
        let keys: Vec<PreviewKey> = self.read().of(id).map(|p| p.key()).collect();
        for key in keys {
            if let Err(e) = m.store.delete_preview(key.clone()).await {
                tracing::error!(preview = %key, error = %e, "cannot delete the preview of a deleted sandbox");
            }
            self.write().remove(&key);
        }
        self.changed.notify_one();
    }

    /// Every preview (expired ones not yet reaped included), by key.
    pub fn all(&self) -> Vec<Preview> {
        self.read().all().map(|p| Preview::clone(p)).collect()
    }

    /// The replica's change: `preview` as etcd holds it now.
    pub fn follow(&self, preview: Preview) {
        self.write().insert(Arc::new(preview));
        self.changed.notify_one();
    }

    /// The replica's change: preview `key` was deleted.
    pub fn follow_gone(&self, key: &PreviewKey) {
        self.write().remove(key);
        self.changed.notify_one();
    }

    /// A new version of a live preview with `token` added (expired tokens pruned when it is
    /// full); 409 when the name is taken.
    pub fn with_token(prev: &Preview, token: PreviewToken, now: Timestamp) -> Result<Preview, ApiError> {
        if prev.tokens.iter().any(|t| t.name == token.name) {
            return Err(ApiError::new(
                ErrorCode::TokenConflict,
                format!("preview {:?} already has a token named {:?}", prev.name, token.name),
            ));
        }
        let mut next = prev.clone();
        if next.tokens.len() >= MAX_TOKENS_PER_PREVIEW {
            next.tokens.retain(|t| !t.is_expired(now));
        }
        if next.tokens.len() >= MAX_TOKENS_PER_PREVIEW {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                format!("a preview holds at most {MAX_TOKENS_PER_PREVIEW} tokens; revoke one first"),
            ));
        }
        next.tokens.push(token);
        next.tokens.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(next)
    }

    /// A new version of a preview without the token named `token`, and that token; 404 when
    /// it has none of that name.
    pub fn without_token(prev: &Preview, token: &str) -> Result<(Preview, PreviewToken), ApiError> {
        let Some(revoked) = prev.tokens.iter().find(|t| t.name == token).cloned() else {
            return Err(ApiError::new(
                ErrorCode::TokenNotFound,
                format!("preview {:?} has no token named {token:?}", prev.name),
            ));
        };
        let mut next = prev.clone();
        next.tokens.retain(|t| t.name != token);
        Ok((next, revoked))
    }
}

/// A new preview token: its expiry is `requested` (default 24 h) but never after the preview's.
pub fn new_token(
    name: String,
    requested: Option<Timestamp>,
    preview_end: Option<Timestamp>,
    now: Timestamp,
) -> Result<PreviewToken, ApiError> {
    let default = time::truncate_millis(time::add(now, super::spec::DEFAULT_SESSION_TTL));
    let mut expires_at = requested.unwrap_or(default);
    if let Some(end) = preview_end {
        expires_at = expires_at.min(end);
    }
    let token = ids::new_token_secret().map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
    Ok(PreviewToken { name, token, expires_at, created_at: time::truncate_millis(now) })
}
