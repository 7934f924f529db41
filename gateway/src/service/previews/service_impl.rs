//! The preview service: previews, preview tokens and sessions as mutations of [`App`], under
//! its one mutation mutex and in its order (validate → kernel → store → index → answer), plus
//! the lookups the HTTPS edge makes on every preview request.
//!
//! A sandbox's kernel policy is recomputed from its declared ports and its live previews on
//! every change ([`crate::service::policy_of`]), so a preview on an undeclared port opens it, and
//! deleting (or reaping) the last preview using it closes it again unless it is declared. A
//! refused request changes nothing; a failed store write puts the previous kernel policy back.

use super::{
    ids,
    index::PreviewIndex,
    spec::{DEFAULT_SESSION_TTL, PreviewSpec, SessionSpec, TokenSpec, ValidPreview, expiry, validate_name},
    views::{PreviewView, SessionView, TokenView},
};
use crate::model::preview::{Preview, PreviewKey, PreviewToken};
use crate::model::time::{self, Timestamp};
use crate::{
    dataplane::SandboxPolicy,
    errors::{ApiError, ErrorCode},
    model::sandbox::{Sandbox, SandboxId},
    service::{App, Mutating, dataplane_error, policy_of, validate_names},
    state::Store,
};
use std::{sync::Arc, time::Duration};
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

fn state_write_failed(e: &crate::state::StoreError) -> ApiError {
    ApiError::new(ErrorCode::StateWriteFailed, format!("the state could not be saved: {e}"))
}

/// Builds the preview index at start: previews of sandboxes that no longer exist are deleted
/// (a sandbox deletion removes its previews after its own record; a crash in between leaves
/// them behind), and two previews claiming one host label make the state inconsistent.
pub(crate) async fn load_index(
    store: &dyn Store,
    previews: Vec<Preview>,
    sandbox_exists: impl Fn(&SandboxId) -> bool,
) -> Result<PreviewIndex, String> {
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
    Ok(index)
}

/// A session as created: its preview and its one token.
#[derive(Clone, Debug)]
pub struct Session {
    /// The preview (port 443, private).
    pub preview: Arc<Preview>,
    /// Its token.
    pub token: PreviewToken,
}

impl App {
    fn previews_read(&self) -> std::sync::RwLockReadGuard<'_, PreviewIndex> {
        self.previews.read().unwrap_or_else(|p| p.into_inner())
    }

    fn previews_write(&self) -> std::sync::RwLockWriteGuard<'_, PreviewIndex> {
        self.previews.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The kernel policy of `sandbox` with its live previews.
    pub(crate) fn policy_for(&self, sandbox: &Sandbox) -> SandboxPolicy {
        let id = sandbox.id();
        let previews = self.previews_read();
        policy_of(sandbox, previews.live_of(&id, time::now()))
    }

    /// The kernel policy of `sandbox` if preview `key` were `with` (`None`: deleted).
    fn policy_with(&self, sandbox: &Sandbox, key: &PreviewKey, with: Option<&Preview>) -> SandboxPolicy {
        let id = sandbox.id();
        let now = time::now();
        let previews = self.previews_read();
        let others = previews.live_of(&id, now).filter(|p| p.key() != *key);
        policy_of(sandbox, others.chain(with.filter(|p| !p.is_expired(now))))
    }

    /// `https://{id}.{region}.preview.{domain}`, with the public port when it is not 443.
    pub fn preview_url(&self, id: &str) -> String {
        let config = self.config();
        let port = config.https_addr().map(|a| a.port()).unwrap_or(443);
        let host = format!("{id}.{}.preview.{}", config.region, config.domain);
        if port == 443 { format!("https://{host}") } else { format!("https://{host}:{port}") }
    }

    /// The `/v1` view of a preview.
    pub fn preview_view(&self, preview: &Preview) -> PreviewView {
        PreviewView::new(preview, self.preview_url(&preview.id), time::now())
    }

    fn sandbox_of(&self, id: &SandboxId) -> Result<Arc<Sandbox>, ApiError> {
        self.get(&id.workspace, &id.name)
    }

    fn check_key(workspace: &str, sandbox: &str, name: &str) -> Result<PreviewKey, ApiError> {
        validate_names(workspace, sandbox)?;
        validate_name("preview name", name)?;
        Ok(PreviewKey::new(workspace, sandbox, name))
    }

    /// One preview (404 once expired: it no longer exists for clients).
    pub fn get_preview(&self, workspace: &str, sandbox: &str, name: &str) -> Result<Arc<Preview>, ApiError> {
        let key = Self::check_key(workspace, sandbox, name)?;
        self.sandbox_of(&key.sandbox_id())?;
        let previews = self.previews_read();
        previews.get(&key).filter(|p| !p.is_expired(time::now())).cloned().ok_or_else(|| preview_not_found(&key))
    }

    /// The live previews of a sandbox, sorted by name.
    pub fn list_previews(&self, workspace: &str, sandbox: &str) -> Result<Vec<Arc<Preview>>, ApiError> {
        validate_names(workspace, sandbox)?;
        let id = SandboxId::new(workspace, sandbox);
        self.sandbox_of(&id)?;
        let now = time::now();
        Ok(self.previews_read().of(&id).filter(|p| !p.is_expired(now)).cloned().collect())
    }

    /// Creates or replaces a preview. Returns it, how long the kernel update took, and whether
    /// it was created (rather than replaced).
    pub async fn put_preview(
        &self,
        workspace: &str,
        sandbox: &str,
        name: &str,
        spec: &PreviewSpec,
    ) -> Result<(Arc<Preview>, Duration, bool), ApiError> {
        let key = Self::check_key(workspace, sandbox, name)?;
        let now = time::now();
        let valid = spec.validate(workspace, now)?;
        let m = self.mutating.lock().await;
        let sandbox = self.sandbox_of(&key.sandbox_id())?;
        let prev = self.previews_read().get(&key).filter(|p| !p.is_expired(now)).cloned();
        let preview = self.build_preview(&key, valid, prev.as_deref(), now)?;
        let created = prev.is_none();
        let (preview, applied) = self.commit_preview(&m, &sandbox, preview).await?;
        drop(m);
        tracing::info!(
            preview = %key,
            id = %preview.id,
            port = preview.port,
            public = preview.public,
            expires_at = ?preview.expires_at.map(time::format_timestamp),
            created,
            "preview saved"
        );
        Ok((preview, applied, created))
    }

    /// The record a PUT makes: a new id unless the name and prefix are unchanged, tokens kept
    /// (their expiry clamped to the preview's), conflicts refused.
    fn build_preview(
        &self,
        key: &PreviewKey,
        valid: ValidPreview,
        prev: Option<&Preview>,
        now: Timestamp,
    ) -> Result<Preview, ApiError> {
        let id = match &valid.prefix_url {
            Some(prefix) => ids::prefixed_id(prefix, &key.workspace),
            None => ids::derived_id(&self.preview_key, &key.workspace, &key.sandbox, &key.name),
        };
        let previews = self.previews_read();
        if let Some(other) = previews.by_id(&id)
            && other.key() != *key
        {
            return Err(ApiError::new(
                ErrorCode::PreviewUrlConflict,
                format!(
                    "the preview URL {} is already used by preview {:?} of sandbox {:?}; choose another prefixUrl",
                    self.preview_url(&id),
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

    /// Kernel → store → index for a new version of a preview (the mutex held).
    async fn commit_preview(
        &self,
        m: &Mutating,
        sandbox: &Sandbox,
        preview: Preview,
    ) -> Result<(Arc<Preview>, Duration), ApiError> {
        let key = preview.key();
        let policy = self.policy_with(sandbox, &key, Some(&preview));
        let applied = self.apply(m, sandbox, &policy)?;
        if let Err(e) = self.store.put_preview(preview.clone()).await {
            tracing::error!(preview = %key, error = %e, "state write failed; rolling the data plane back");
            self.reapply(m, sandbox);
            return Err(state_write_failed(&e));
        }
        let preview = Arc::new(preview);
        self.previews_write().insert(preview.clone());
        self.previews_changed.notify_one();
        Ok((preview, applied))
    }

    /// Programs a sandbox's policy; on failure, puts the current one back.
    fn apply(&self, m: &Mutating, sandbox: &Sandbox, policy: &SandboxPolicy) -> Result<Duration, ApiError> {
        m.dataplane.apply_sandbox(policy).map_err(|e| {
            tracing::warn!(sandbox = %sandbox.id(), error = %e, "the data plane refused the policy");
            self.reapply(m, sandbox);
            dataplane_error(&e)
        })
    }

    /// Best effort: the kernel back to the policy of the current index.
    fn reapply(&self, m: &Mutating, sandbox: &Sandbox) {
        if let Err(e) = m.dataplane.apply_sandbox(&self.policy_for(sandbox)) {
            tracing::error!(sandbox = %sandbox.id(), error = %e, "rollback: re-applying the policy failed");
        }
    }

    /// Deletes a preview and its tokens; its port closes unless declared or used by another.
    pub async fn delete_preview(&self, workspace: &str, sandbox: &str, name: &str) -> Result<Arc<Preview>, ApiError> {
        let key = Self::check_key(workspace, sandbox, name)?;
        let m = self.mutating.lock().await;
        let sandbox = self.sandbox_of(&key.sandbox_id())?;
        let prev = self
            .previews_read()
            .get(&key)
            .filter(|p| !p.is_expired(time::now()))
            .cloned()
            .ok_or_else(|| preview_not_found(&key))?;
        self.remove_preview(&m, &sandbox, &key).await?;
        drop(m);
        tracing::info!(preview = %key, id = %prev.id, port = prev.port, "preview deleted");
        Ok(prev)
    }

    /// Kernel → store → index for a deletion (the mutex held).
    async fn remove_preview(&self, m: &Mutating, sandbox: &Sandbox, key: &PreviewKey) -> Result<(), ApiError> {
        let policy = self.policy_with(sandbox, key, None);
        self.apply(m, sandbox, &policy)?;
        if let Err(e) = self.store.delete_preview(key.clone()).await {
            tracing::error!(preview = %key, error = %e, "state write failed; rolling the data plane back");
            self.reapply(m, sandbox);
            return Err(state_write_failed(&e));
        }
        self.previews_write().remove(key);
        self.previews_changed.notify_one();
        Ok(())
    }

    /// After a sandbox's deletion (its kernel entries already gone): deletes its previews.
    /// Best effort: a preview left on disk is removed at the next start.
    pub(crate) async fn forget_previews_of(&self, id: &SandboxId) {
        let keys: Vec<PreviewKey> = self.previews_read().of(id).map(|p| p.key()).collect();
        for key in keys {
            if let Err(e) = self.store.delete_preview(key.clone()).await {
                tracing::error!(preview = %key, error = %e, "cannot delete the preview of a deleted sandbox");
            }
            self.previews_write().remove(&key);
        }
        self.previews_changed.notify_one();
    }

    /// Creates a token for a preview (its expiry clamped to the preview's).
    pub async fn create_preview_token(
        &self,
        workspace: &str,
        sandbox: &str,
        preview: &str,
        spec: &TokenSpec,
    ) -> Result<(Arc<Preview>, PreviewToken), ApiError> {
        let key = Self::check_key(workspace, sandbox, preview)?;
        let now = time::now();
        let requested = expiry(spec.ttl.as_deref(), spec.expires_at.as_deref(), now)?;
        let name = match spec.name.as_deref() {
            Some(n) if !n.is_empty() => {
                validate_name("token name", n)?;
                n.to_string()
            }
            _ => ids::new_token_name().map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?,
        };
        let m = self.mutating.lock().await;
        let sandbox = self.sandbox_of(&key.sandbox_id())?;
        let prev = self
            .previews_read()
            .get(&key)
            .filter(|p| !p.is_expired(now))
            .cloned()
            .ok_or_else(|| preview_not_found(&key))?;
        if prev.tokens.iter().any(|t| t.name == name) {
            return Err(ApiError::new(
                ErrorCode::TokenConflict,
                format!("preview {:?} already has a token named {name:?}", key.name),
            ));
        }
        let token = new_token(name, requested, prev.expires_at, now)?;
        let mut next = (*prev).clone();
        if next.tokens.len() >= MAX_TOKENS_PER_PREVIEW {
            next.tokens.retain(|t| !t.is_expired(now));
        }
        if next.tokens.len() >= MAX_TOKENS_PER_PREVIEW {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                format!("a preview holds at most {MAX_TOKENS_PER_PREVIEW} tokens; revoke one first"),
            ));
        }
        next.tokens.push(token.clone());
        next.tokens.sort_by(|a, b| a.name.cmp(&b.name));
        let (preview, _) = self.commit_preview(&m, &sandbox, next).await?;
        drop(m);
        tracing::info!(
            preview = %key,
            token = %token.name,
            expires_at = %time::format_timestamp(token.expires_at),
            "preview token created"
        );
        Ok((preview, token))
    }

    /// The tokens of a preview, sorted by name (expired ones included, marked).
    pub fn list_preview_tokens(
        &self,
        workspace: &str,
        sandbox: &str,
        preview: &str,
    ) -> Result<Vec<PreviewToken>, ApiError> {
        Ok(self.get_preview(workspace, sandbox, preview)?.tokens.clone())
    }

    /// Revokes one token by name: it stops working at once.
    pub async fn revoke_preview_token(
        &self,
        workspace: &str,
        sandbox: &str,
        preview: &str,
        token: &str,
    ) -> Result<PreviewToken, ApiError> {
        let key = Self::check_key(workspace, sandbox, preview)?;
        let m = self.mutating.lock().await;
        let sandbox = self.sandbox_of(&key.sandbox_id())?;
        let prev = self
            .previews_read()
            .get(&key)
            .filter(|p| !p.is_expired(time::now()))
            .cloned()
            .ok_or_else(|| preview_not_found(&key))?;
        let Some(revoked) = prev.tokens.iter().find(|t| t.name == token).cloned() else {
            return Err(ApiError::new(
                ErrorCode::TokenNotFound,
                format!("preview {:?} has no token named {token:?}", key.name),
            ));
        };
        let mut next = (*prev).clone();
        next.tokens.retain(|t| t.name != token);
        self.commit_preview(&m, &sandbox, next).await?;
        drop(m);
        tracing::info!(preview = %key, token = %revoked.name, "preview token revoked");
        Ok(revoked)
    }

    /// Creates a session: a private preview on 443 (the sandbox API) plus one token, both
    /// expiring together (default 24 h), written in one store write.
    pub async fn create_session(
        &self,
        workspace: &str,
        sandbox: &str,
        spec: &SessionSpec,
    ) -> Result<Session, ApiError> {
        let now = time::now();
        let name = match spec.name.as_deref() {
            Some(n) if !n.is_empty() => n.to_string(),
            _ => format!("session-{}", (now.unix_timestamp_nanos() / 1_000_000).max(0)),
        };
        let key = Self::check_key(workspace, sandbox, &name)?;
        let requested = expiry(spec.ttl.as_deref(), spec.expires_at.as_deref(), now)?;
        let expires_at = requested.unwrap_or_else(|| time::truncate_millis(time::add(now, DEFAULT_SESSION_TTL)));
        let preview_spec = PreviewSpec {
            port: Some(i64::from(crate::model::preview::SANDBOX_API_PORT)),
            public: Some(false),
            request_headers: spec.request_headers.clone(),
            response_headers: spec.response_headers.clone(),
            expires_at: Some(time::format_timestamp(expires_at)),
            ..PreviewSpec::default()
        };
        let valid = preview_spec.validate(workspace, now)?;
        let token_name = ids::new_token_name().map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
        let token = new_token(token_name, Some(expires_at), Some(expires_at), now)?;
        let m = self.mutating.lock().await;
        let sandbox = self.sandbox_of(&key.sandbox_id())?;
        if self.previews_read().get(&key).is_some_and(|p| !p.is_expired(now)) {
            return Err(ApiError::new(
                ErrorCode::PreviewConflict,
                format!("sandbox {:?} already has a preview named {name:?}", key.sandbox),
            ));
        }
        let mut preview = self.build_preview(&key, valid, None, now)?;
        preview.tokens = vec![token.clone()];
        let (preview, _) = self.commit_preview(&m, &sandbox, preview).await?;
        drop(m);
        tracing::info!(preview = %key, id = %preview.id, expires_at = %time::format_timestamp(expires_at), "session created");
        Ok(Session { preview, token })
    }

    /// The `/v1` view of a session.
    pub fn session_view(&self, session: &Session) -> SessionView {
        SessionView {
            name: session.preview.name.clone(),
            url: self.preview_url(&session.preview.id),
            token: session.token.token.clone(),
            expires_at: time::format_timestamp(session.token.expires_at),
            preview: self.preview_view(&session.preview),
        }
    }

    /// The `/v1` views of tokens.
    pub fn token_views(&self, tokens: &[PreviewToken]) -> Vec<TokenView> {
        let now = time::now();
        tokens.iter().map(|t| TokenView::listed(t, now)).collect()
    }

    // ---- what the HTTPS edge asks on every preview request ----

    /// The live preview whose host label is `id` (lower-case); `None` once expired, at once.
    pub fn preview_by_host_label(&self, id: &str) -> Option<Arc<Preview>> {
        self.previews_read().by_id(id).filter(|p| !p.is_expired(time::now())).cloned()
    }

    /// Whether `secret` is a live token of `preview` (constant-time comparison of digests).
    pub fn preview_token_valid(&self, preview: &Preview, secret: &str) -> bool {
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

    // ---- the reaper ----

    /// The earliest preview expiry.
    pub fn next_preview_expiry(&self) -> Option<Timestamp> {
        self.previews_read().next_expiry()
    }

    /// Deletes every expired preview (kernel, store, index). Returns how many.
    pub async fn reap_expired_previews(&self) -> usize {
        let expired = self.previews_read().expired(time::now());
        let mut reaped = 0;
        for key in expired {
            let m = self.mutating.lock().await;
            // Re-check under the mutex: it may have been replaced or deleted meanwhile.
            let still = self.previews_read().get(&key).is_some_and(|p| p.is_expired(time::now()));
            if !still {
                continue;
            }
            let result = match self.sandbox_of(&key.sandbox_id()).ok() {
                Some(sandbox) => self.remove_preview(&m, &sandbox, &key).await,
                None => {
                    self.previews_write().remove(&key);
                    self.store.delete_preview(key.clone()).await.map_err(|e| state_write_failed(&e))
                }
            };
            drop(m);
            match result {
                Ok(()) => {
                    reaped += 1;
                    tracing::info!(preview = %key, "expired preview reaped");
                }
                Err(e) => tracing::error!(preview = %key, error = %e.message, "reaping an expired preview failed"),
            }
        }
        reaped
    }
}

fn new_token(
    name: String,
    requested: Option<Timestamp>,
    preview_end: Option<Timestamp>,
    now: Timestamp,
) -> Result<PreviewToken, ApiError> {
    let default = time::truncate_millis(time::add(now, DEFAULT_SESSION_TTL));
    let mut expires_at = requested.unwrap_or(default);
    if let Some(end) = preview_end {
        // A token never outlives its preview.
        expires_at = expires_at.min(end);
    }
    let token = ids::new_token_secret().map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
    Ok(PreviewToken { name, token, expires_at, created_at: time::truncate_millis(now) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        config::Config,
        dataplane::{Dataplane, PortGrant},
        model::sandbox::PortProtocol,
        service::{PortRequest, SandboxSpec},
        state::MemoryStore,
    };
    use gateway_common::policy::origin;

    async fn app(store: Arc<MemoryStore>) -> App {
        App::start(Config::default(), store, Dataplane::disabled()).await.expect("start")
    }

    async fn with_sandbox(store: Arc<MemoryStore>) -> App {
        let app = app(store).await;
        let spec = SandboxSpec {
            address: "198.18.0.2".parse().expect("addr"),
            interface: "lo".into(),
            ports: vec![PortRequest { target: 3000, protocol: PortProtocol::Http }],
        };
        app.put_sandbox("ws", "app", spec).await.expect("sandbox");
        app
    }

    fn port(p: i64) -> PreviewSpec {
        PreviewSpec { port: Some(p), ..PreviewSpec::default() }
    }

    /// Everything a client can observe of the previews of ws/app.
    fn observe(app: &App) -> Vec<(String, String, u16, usize)> {
        app.list_previews("ws", "app")
            .expect("list")
            .iter()
            .map(|p| (p.name.clone(), p.id.clone(), p.port, p.tokens.len()))
            .collect()
    }

    #[tokio::test]
    async fn the_policy_counts_previews_per_port() {
        let app = with_sandbox(Arc::new(MemoryStore::new())).await;
        for (name, p) in [("a", 3000), ("b", 4000), ("c", 4000), ("api", 443)] {
            app.put_preview("ws", "app", name, &port(p)).await.expect("put");
        }
        let sandbox = app.get("ws", "app").expect("sandbox");
        let policy = app.policy_for(&sandbox);
        assert_eq!(
            policy.ports.into_iter().collect::<Vec<_>>(),
            vec![
                (3000, PortGrant { origin: origin::DECLARED | origin::PREVIEW, preview_refs: 1 }),
                (4000, PortGrant { origin: origin::PREVIEW, preview_refs: 2 }),
            ]
        );
        app.delete_preview("ws", "app", "b").await.expect("delete");
        app.delete_preview("ws", "app", "c").await.expect("delete");
        app.delete_preview("ws", "app", "a").await.expect("delete");
        let policy = app.policy_for(&sandbox);
        assert_eq!(
            policy.ports.into_iter().collect::<Vec<_>>(),
            vec![(3000, PortGrant { origin: origin::DECLARED, preview_refs: 0 })]
        );
    }

    #[tokio::test]
    async fn ids_are_stable_across_delete_and_recreate_and_prefixes_conflict() {
        let app = with_sandbox(Arc::new(MemoryStore::new())).await;
        let (a, _, created) = app.put_preview("ws", "app", "web", &port(3000)).await.expect("put");
        assert!(created);
        assert_eq!(a.id.len(), 16);
        assert_eq!(app.preview_url(&a.id), format!("https://{}.local.preview.gw.test:443", a.id).replace(":443", ""));
        app.delete_preview("ws", "app", "web").await.expect("delete");
        let (b, _, _) = app.put_preview("ws", "app", "web", &port(5000)).await.expect("re-create");
        assert_eq!(a.id, b.id, "same (sandbox, name), same URL");
        let (c, _, _) = app.put_preview("ws", "app", "other", &port(5000)).await.expect("other");
        assert_ne!(c.id, b.id);

        let pre = PreviewSpec { prefix_url: Some("shop".into()), ..port(3000) };
        let (d, _, _) = app.put_preview("ws", "app", "shop", &pre).await.expect("prefix");
        assert_eq!(d.id, "shop-ws");
        let before = observe(&app);
        let e = app.put_preview("ws", "app", "shop2", &pre).await.expect_err("conflict");
        assert_eq!((e.status(), e.code), (409, ErrorCode::PreviewUrlConflict));
        assert_eq!(observe(&app), before);
        assert!(app.preview_by_host_label("shop-ws").is_some());
    }

    #[tokio::test]
    async fn every_refusal_and_store_failure_changes_nothing() {
        let store = Arc::new(MemoryStore::new());
        let app = with_sandbox(store.clone()).await;
        app.put_preview("ws", "app", "web", &port(4000)).await.expect("put");
        let (_, token) = app.create_preview_token("ws", "app", "web", &TokenSpec::default()).await.expect("token");
        let before = observe(&app);
        let sandbox = app.get("ws", "app").expect("sandbox");
        let policy = app.policy_for(&sandbox);
        for (spec, code) in [
            (port(80), ErrorCode::ReservedPort),
            (port(8080), ErrorCode::ReservedPort),
            (port(0), ErrorCode::BadRequest),
            (PreviewSpec { ttl: Some("soon".into()), ..port(3000) }, ErrorCode::BadRequest),
            (PreviewSpec { expires_at: Some("2001-01-01T00:00:00Z".into()), ..port(3000) }, ErrorCode::BadRequest),
        ] {
            let e = app.put_preview("ws", "app", "web", &spec).await.expect_err("refused");
            assert_eq!(e.code, code, "{spec:?}: {e:?}");
        }
        assert_eq!(
            app.put_preview("ws", "nope", "web", &port(3000)).await.expect_err("404").code,
            ErrorCode::WorkloadNotFound
        );
        assert_eq!(
            app.put_preview("ws", "app", "Bad_Name", &port(3000)).await.expect_err("name").code,
            ErrorCode::BadRequest
        );
        store.set_fail_writes(true);
        assert_eq!(app.put_preview("ws", "app", "web", &port(5000)).await.expect_err("store").status(), 500);
        assert_eq!(app.put_preview("ws", "app", "new", &port(5000)).await.expect_err("store").status(), 500);
        assert_eq!(app.delete_preview("ws", "app", "web").await.expect_err("store").status(), 500);
        assert_eq!(
            app.create_preview_token("ws", "app", "web", &TokenSpec::default()).await.expect_err("store").status(),
            500
        );
        assert_eq!(app.revoke_preview_token("ws", "app", "web", &token.name).await.expect_err("store").status(), 500);
        assert_eq!(app.create_session("ws", "app", &SessionSpec::default()).await.expect_err("store").status(), 500);
        store.set_fail_writes(false);
        assert_eq!(observe(&app), before);
        assert_eq!(app.policy_for(&sandbox), policy);
        let web = app.get_preview("ws", "app", "web").expect("web");
        assert!(app.preview_token_valid(&web, &token.token));
        // What the store holds is what the index holds.
        let stored = store.load().await.expect("load").previews;
        assert_eq!(stored.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), vec!["web"]);
    }

    #[tokio::test]
    async fn tokens_never_outlive_their_preview_and_revocation_is_immediate() {
        let app = with_sandbox(Arc::new(MemoryStore::new())).await;
        let spec = PreviewSpec { ttl: Some("1h".into()), ..port(3000) };
        let (p, _, _) = app.put_preview("ws", "app", "web", &spec).await.expect("put");
        let end = p.expires_at.expect("expiry");
        let (_, long) = app
            .create_preview_token("ws", "app", "web", &TokenSpec { ttl: Some("7d".into()), ..TokenSpec::default() })
            .await
            .expect("token");
        assert_eq!(long.expires_at, end, "clamped to the preview's expiry");
        assert!(long.name.starts_with("token-"));
        let named = TokenSpec {
            name: Some("ci".into()),
            expires_at: Some("2099-01-01T00:00:00".into()),
            ..TokenSpec::default()
        };
        let (p, ci) = app.create_preview_token("ws", "app", "web", &named).await.expect("named");
        assert_eq!(ci.name, "ci");
        assert_eq!(
            app.create_preview_token("ws", "app", "web", &named).await.expect_err("dup").code,
            ErrorCode::TokenConflict
        );
        assert!(app.preview_token_valid(&p, &ci.token));
        assert!(app.preview_token_valid(&p, &long.token));
        assert!(!app.preview_token_valid(&p, "gwpt_nope"));
        assert!(!app.preview_token_valid(&p, ""));
        app.revoke_preview_token("ws", "app", "web", "ci").await.expect("revoke");
        let p = app.preview_by_host_label(&p.id).expect("live");
        assert!(!app.preview_token_valid(&p, &ci.token));
        assert!(app.preview_token_valid(&p, &long.token));
        assert_eq!(
            app.revoke_preview_token("ws", "app", "web", "ci").await.expect_err("gone").code,
            ErrorCode::TokenNotFound
        );
        // Shortening the preview clamps its tokens.
        let shorter = PreviewSpec { ttl: Some("10m".into()), ..port(3000) };
        let (p, _, created) = app.put_preview("ws", "app", "web", &shorter).await.expect("replace");
        assert!(!created);
        assert!(p.tokens.iter().all(|t| Some(t.expires_at) <= p.expires_at));
    }

    #[tokio::test]
    async fn sessions_expiry_reaping_and_sandbox_deletion() {
        let store = Arc::new(MemoryStore::new());
        let app = with_sandbox(store.clone()).await;
        let s = app.create_session("ws", "app", &SessionSpec::default()).await.expect("session");
        assert_eq!(s.preview.port, 443);
        assert!(!s.preview.public);
        assert_eq!(s.preview.tokens.len(), 1);
        let day = time::until(s.token.expires_at, time::now());
        assert!(day > Duration::from_secs(23 * 3600) && day <= Duration::from_secs(24 * 3600), "{day:?}");
        assert!(app.preview_token_valid(&s.preview, &s.token.token));
        let v = app.session_view(&s);
        assert_eq!(v.url, app.preview_url(&s.preview.id));

        // An expiry 1 s away: answers until then, 404 right after, reaped by the reaper.
        let soon = time::format_timestamp(time::add(time::now(), Duration::from_millis(1200)));
        let spec = PreviewSpec { expires_at: Some(soon), ..port(4000) };
        let (p, _, _) = app.put_preview("ws", "app", "brief", &spec).await.expect("put");
        assert!(app.preview_by_host_label(&p.id).is_some());
        assert_eq!(app.reap_expired_previews().await, 0);
        tokio::time::sleep(Duration::from_millis(1300)).await;
        assert!(app.preview_by_host_label(&p.id).is_none(), "expired: gone at once");
        assert_eq!(app.get_preview("ws", "app", "brief").expect_err("404").code, ErrorCode::PreviewNotFound);
        let sandbox = app.get("ws", "app").expect("sandbox");
        assert!(!app.policy_for(&sandbox).ports.contains_key(&4000));
        assert_eq!(app.reap_expired_previews().await, 1);
        assert!(store.load().await.expect("load").previews.iter().all(|p| p.name != "brief"));

        // Deleting the sandbox deletes its previews; re-creating it does not bring them back.
        app.delete_sandbox("ws", "app").await.expect("delete");
        assert!(store.load().await.expect("load").previews.is_empty());
        assert!(app.preview_by_host_label(&s.preview.id).is_none());
        let spec = SandboxSpec { address: "198.18.0.2".parse().expect("addr"), interface: "lo".into(), ports: vec![] };
        app.put_sandbox("ws", "app", spec).await.expect("again");
        assert!(app.list_previews("ws", "app").expect("list").is_empty());
    }
}
