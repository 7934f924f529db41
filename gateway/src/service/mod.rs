//! The service layer: the three services and the one mutation mutex that orders their changes.
//!
//! - [`sandboxes`]: registered sandboxes (the index by id, host label and address);
//! - [`previews`]: preview URLs, their tokens and sessions;
//! - [`tokens`]: workspace access tokens;
//! - [`mutation`]: the kernel and the store, reached only through the mutex's guard;
//! - [`reaper`]: deletes expired previews in the background.
//!
//! [`App`] wires them: every mutation takes the mutex, then runs in one order: validate
//! everything → program the data plane → write the store (durable) → update the index →
//! answer. A refused request changes nothing; if a later step fails, the earlier ones are rolled
//! back before answering. Reads (lookups by host label, lists) take a short read lock on an
//! index and never wait for a mutation in progress. A sandbox's kernel policy is always
//! computed from its declared ports AND its live previews.

pub mod fleet;
pub mod l4_ports;
pub mod mutation;
pub mod previews;
pub mod reaper;
pub mod sandboxes;
pub mod tokens;

use crate::{
    config::Config,
    dataplane::{Dataplane, DataplaneError, PolicyView, SandboxPolicy},
    errors::{ApiError, ErrorCode},
    model::{
        preview::{API_PREVIEW_PORT, Preview, PreviewKey, PreviewToken},
        sandbox::{Sandbox, SandboxId, validate_names},
        time::{self, Timestamp},
    },
    state::Store,
};
use arc_swap::ArcSwap;
use mutation::Mutating;
use previews::{
    ids,
    registry::{PreviewRegistry, new_token},
    spec::{DEFAULT_SESSION_TTL, PreviewSpec, SessionSpec, TokenSpec, expiry, validate_name},
    views::{self, PreviewView, SessionView},
};
use sandboxes::Sandboxes;
pub use sandboxes::{PortRequest, SandboxSpec, SandboxView};
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};
use tokens::{CreatedToken, TokenRegistry, TokenRequest, TokenView};

/// Errors that stop the gateway from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The store could not be read.
    #[error("cannot load the state from {store}: {source}")]
    Load {
        /// Which store.
        store: String,
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
        self.guard.store.seal();
        self.app.ready.store(false, Ordering::Release);
    }
}

/// A session as created: its preview and its one token.
#[derive(Clone, Debug)]
pub struct Session {
    /// The preview (of the sandbox API, private).
    pub preview: Arc<Preview>,
    pub token: PreviewToken,
}

/// Times a mutation is decided when the store says another gateway changed its record meanwhile.
const MUTATION_ATTEMPTS: u32 = 4;

/// Runs a mutation's body (an async block's, which takes the mutation lock); when the store
/// refused it because another gateway changed the record meanwhile (a fleet), waits for the
/// replica to catch up and runs it again, from the validation on: the answer is what the
/// mutation means against the state as it is now. (A macro: an async closure's future is not
/// `Send` for every lifetime, which the HTTPS edge's tasks need.)
macro_rules! retrying {
    ($app:expr, $body:block) => {{
        let mut attempt = 1;
        loop {
            let result: Result<_, ApiError> = async $body.await;
            match result {
                Err(e) if e.code == ErrorCode::StateChanged && attempt < MUTATION_ATTEMPTS => {
                    attempt += 1;
                    $app.catch_up().await;
                }
                result => break result,
            }
        }
    }};
}

/// The service layer, shared by the admin API, `/v0` and the HTTPS edge.
pub struct App {
    /// Swapped whole by a reload (`crate::lifecycle`); readers take a snapshot.
    config: ArcSwap<Config>,
    mutating: tokio::sync::Mutex<Mutating>,
    /// The store (also in `mutating`), to wait for the replica without the mutation lock.
    store: Arc<dyn Store>,
    /// This gateway's `fleet.host`; `None` on a single host.
    host: Option<String>,
    /// The fleet's live members (empty on a single host).
    peers: fleet::Peers,
    sandboxes: Sandboxes,
    previews: PreviewRegistry,
    tokens: TokenRegistry,
    ready: AtomicBool,
}

fn check_key(workspace: &str, sandbox: &str, name: &str) -> Result<PreviewKey, ApiError> {
    validate_names(workspace, sandbox)?;
    validate_name("preview name", name)?;
    Ok(PreviewKey::new(workspace, sandbox, name))
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(ErrorCode::Internal, e.to_string())
}

impl App {
    /// Starts the service layer: loads the state, reconciles the data plane with it.
    pub async fn start(config: Config, store: Arc<dyn Store>, dataplane: Dataplane) -> Result<Self, StartError> {
        let load_error = |source| StartError::Load { store: store.describe(), source };
        let loading = std::time::Instant::now();
        let host = config.fleet.enabled().then(|| config.fleet.host.clone());
        let snapshot = store.load().await.map_err(load_error)?;
        let ports = sandboxes::PortSettings {
            range: config.l4.range(),
            quarantine: config.l4.quarantine.get(),
            file: Some(config.state.dir.join(crate::paths::L4_RELEASED_FILE)),
        };
        let sandboxes = Sandboxes::load(snapshot.sandboxes, host.clone(), ports).map_err(StartError::Inconsistent)?;
        let tokens = TokenRegistry::load(snapshot.tokens).map_err(StartError::Inconsistent)?;
        let key = store.secret(ids::KEY_SECRET).await.map_err(load_error)?;
        let previews = PreviewRegistry::load(store.as_ref(), snapshot.previews, key, |id| sandboxes.contains(id))
            .await
            .map_err(StartError::Inconsistent)?;
        let loaded = loading.elapsed();
        let policies: Vec<SandboxPolicy> =
            sandboxes.all().iter().filter(|s| sandboxes.is_local(s)).map(|s| previews.policy_for(s)).collect();
        let started = std::time::Instant::now();
        dataplane.reconcile(&policies).map_err(StartError::Reconcile)?;
        dataplane.reconcile_l4(&sandboxes.exposed()).map_err(StartError::Reconcile)?;
        tracing::info!(
            sandboxes = policies.len(),
            tokens = tokens.len(),
            store = %store.describe(),
            load_micros = loaded.as_micros() as u64,
            micros = started.elapsed().as_micros() as u64,
            "state loaded and data plane reconciled"
        );
        Ok(Self {
            config: ArcSwap::from_pointee(config),
            mutating: tokio::sync::Mutex::new(Mutating { dataplane, store: store.clone(), host: host.clone() }),
            store,
            host,
            peers: fleet::Peers::load(snapshot.hosts),
            sandboxes,
            previews,
            tokens,
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

    /// This gateway's `fleet.host`; `None` on a single host.
    pub fn host(&self) -> Option<&str> {
        self.host.as_deref()
    }

    /// 503 when this fleet member has had no news from etcd for longer than
    /// `fleet.auth_max_staleness`: a token revoked meanwhile could still be accepted, so
    /// requests that need one are refused (public previews keep working). Always `Ok` on a
    /// single host.
    pub fn check_fresh(&self) -> Result<(), ApiError> {
        if self.host.is_none() {
            return Ok(());
        }
        let limit = self.config.load().fleet.auth_max_staleness.get();
        match self.store.stale_for() {
            Some(stale) if stale > limit => Err(ApiError::new(
                ErrorCode::StoreUnavailable,
                format!(
                    "this gateway has had no news from the fleet's etcd for {}s (fleet.auth_max_staleness {}s): a revoked credential cannot be told from a valid one; retry later",
                    stale.as_secs(),
                    limit.as_secs()
                ),
            )),
            _ => Ok(()),
        }
    }

    /// The fleet's live members.
    pub fn peers(&self) -> &fleet::Peers {
        &self.peers
    }

    /// Whether this gateway runs `sandbox` (always, on a single host).
    pub fn is_local(&self, sandbox: &Sandbox) -> bool {
        sandbox.owner == self.host
    }

    /// Waits for the replica to catch up after [`ErrorCode::StateChanged`] (see [`retrying`]).
    async fn catch_up(&self) {
        if let Err(e) = self.store.catch_up().await {
            tracing::warn!(error = %e, "waiting for the replica failed");
        }
    }

    // ---- sandboxes ----

    /// The sandbox whose host label is `label` (exact, lower-case).
    pub fn sandbox_by_label(&self, label: &str) -> Option<Arc<Sandbox>> {
        self.sandboxes.by_label(label)
    }

    /// The local sandbox holding public TCP port `port`.
    pub fn sandbox_by_public_port(&self, port: u16) -> Option<Arc<Sandbox>> {
        self.sandboxes.by_public_port(port)
    }

    /// Changes when a local sandbox's public TCP ports change (exposed, unexposed, another
    /// `allowFrom`, the sandbox deleted).
    pub fn public_port_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.sandboxes.exposure_changes()
    }

    /// The sandbox at `address`.
    pub fn sandbox_by_address(&self, address: std::net::Ipv4Addr) -> Option<Arc<Sandbox>> {
        self.sandboxes.by_address(address)
    }

    /// A sandbox as answered by the API.
    pub fn view(&self, sandbox: &Sandbox, applied: Option<Duration>) -> SandboxView {
        let config = self.config.load();
        let host = format!("{}.{}.{}", sandbox.label(), config.region, config.domain);
        SandboxView::of(sandbox, config.sandbox_url(&sandbox.label()), &host, applied)
    }

    /// One sandbox.
    pub fn get(&self, workspace: &str, name: &str) -> Result<Arc<Sandbox>, ApiError> {
        self.sandboxes.get(workspace, name)
    }

    /// The sandboxes of a workspace (every sandbox if `None`), sorted by (workspace, name).
    pub fn list(&self, workspace: Option<&str>) -> Result<Vec<Arc<Sandbox>>, ApiError> {
        self.sandboxes.list(workspace)
    }

    /// Creates or replaces a sandbox. Returns it and how long the kernel update took.
    pub async fn put_sandbox(
        &self,
        workspace: &str,
        name: &str,
        spec: SandboxSpec,
    ) -> Result<(Arc<Sandbox>, Duration), ApiError> {
        let sandbox = sandboxes::validate(workspace, name, spec, self.host.as_deref())?;
        let (sandbox, applied, created) = retrying!(self, {
            let m = self.mutating.lock().await;
            self.sandboxes.put(&m, &self.previews, sandbox.clone()).await
        })?;
        tracing::info!(
            sandbox = %sandbox.id(),
            address = %sandbox.address,
            ports = sandbox.ports.len(),
            applied_micros = applied.as_micros() as u64,
            created,
            "sandbox registered"
        );
        Ok((sandbox, applied))
    }

    /// Deletes a sandbox: its kernel entries first, then its record, then its previews.
    pub async fn delete_sandbox(&self, workspace: &str, name: &str) -> Result<(), ApiError> {
        validate_names(workspace, name)?;
        let id = SandboxId::new(workspace, name);
        let prev = retrying!(self, {
            let m = self.mutating.lock().await;
            let prev = self.sandboxes.delete(&m, &self.previews, &id).await?;
            self.previews.forget_of(&m, &id).await;
            Ok(prev)
        })?;
        tracing::info!(sandbox = %id, address = %prev.address, "sandbox deleted");
        Ok(())
    }

    /// What the kernel holds for a sandbox.
    pub async fn policy(&self, workspace: &str, name: &str) -> Result<PolicyView, ApiError> {
        let sandbox = self.get(workspace, name)?;
        if !self.is_local(&sandbox) {
            return Err(ApiError::new(
                ErrorCode::OwnedByAnotherHost,
                format!(
                    "sandbox {} runs on fleet host {:?}: its kernel policy is there",
                    sandbox.id(),
                    sandbox.owner.as_deref().unwrap_or("?")
                ),
            ));
        }
        let m = self.mutating.lock().await;
        m.dataplane.policy_view(sandbox.address).map_err(|e| e.api_error())
    }

    /// The kernel policy of `sandbox` with its live previews.
    pub fn policy_for(&self, sandbox: &Sandbox) -> SandboxPolicy {
        self.previews.policy_for(sandbox)
    }

    // ---- workspace tokens ----

    /// The workspace access tokens (what `crate::auth` checks).
    pub fn tokens(&self) -> &TokenRegistry {
        &self.tokens
    }

    /// The tokens of a workspace, without secrets.
    pub fn list_tokens(&self, workspace: &str) -> Result<Vec<TokenView>, ApiError> {
        self.tokens.list(workspace, ::time::OffsetDateTime::now_utc())
    }

    /// One token, without its secret.
    pub fn get_token(&self, workspace: &str, name: &str) -> Result<TokenView, ApiError> {
        self.tokens.get(workspace, name, ::time::OffsetDateTime::now_utc())
    }

    /// Creates a token; the answer holds its secret (shown this once).
    pub async fn create_token(&self, workspace: &str, request: TokenRequest) -> Result<CreatedToken, ApiError> {
        retrying!(self, {
            let m = self.mutating.lock().await;
            self.tokens.create(&m, workspace, request.clone(), ::time::OffsetDateTime::now_utc()).await
        })
    }

    /// Revokes a token: the next request that presents it is refused.
    pub async fn revoke_token(&self, workspace: &str, name: &str) -> Result<(), ApiError> {
        retrying!(self, {
            let m = self.mutating.lock().await;
            self.tokens.revoke(&m, workspace, name).await
        })
    }

    // ---- previews ----

    /// `https://{id}.{region}.preview.{domain}`, with the public port when it is not 443.
    pub fn preview_url(&self, id: &str) -> String {
        views::preview_url(&self.config(), id)
    }

    /// The `/v1` view of a preview.
    pub fn preview_view(&self, preview: &Preview) -> PreviewView {
        PreviewView::new(preview, self.preview_url(&preview.id), time::now())
    }

    /// One preview (404 once expired: it no longer exists for clients).
    pub fn get_preview(&self, workspace: &str, sandbox: &str, name: &str) -> Result<Arc<Preview>, ApiError> {
        let key = check_key(workspace, sandbox, name)?;
        self.sandboxes.get(workspace, sandbox)?;
        self.previews.get(&key)
    }

    /// The live previews of a sandbox, sorted by name.
    pub fn list_previews(&self, workspace: &str, sandbox: &str) -> Result<Vec<Arc<Preview>>, ApiError> {
        let sandbox = self.sandboxes.get(workspace, sandbox)?;
        Ok(self.previews.list(&sandbox.id()))
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
        let key = check_key(workspace, sandbox, name)?;
        let now = time::now();
        let valid = spec.validate(workspace, now)?;
        let (preview, applied, created) = retrying!(self, {
            let m = self.mutating.lock().await;
            let sandbox = self.sandboxes.get(workspace, sandbox)?;
            let prev = self.previews.get(&key).ok();
            let preview = self.previews.build(&self.config(), &key, valid.clone(), prev.as_deref(), now)?;
            let (preview, applied) = self.previews.commit(&m, &sandbox, preview).await?;
            Ok((preview, applied, prev.is_none()))
        })?;
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

    /// Deletes a preview and its tokens; its port closes unless declared or used by another.
    pub async fn delete_preview(&self, workspace: &str, sandbox: &str, name: &str) -> Result<Arc<Preview>, ApiError> {
        let key = check_key(workspace, sandbox, name)?;
        let prev = retrying!(self, {
            let m = self.mutating.lock().await;
            let sandbox = self.sandboxes.get(workspace, sandbox)?;
            let prev = self.previews.get(&key)?;
            self.previews.remove(&m, &sandbox, &key).await?;
            Ok(prev)
        })?;
        tracing::info!(preview = %key, id = %prev.id, port = prev.port, "preview deleted");
        Ok(prev)
    }

    /// Creates a token for a preview (its expiry clamped to the preview's).
    pub async fn create_preview_token(
        &self,
        workspace: &str,
        sandbox: &str,
        preview: &str,
        spec: &TokenSpec,
    ) -> Result<(Arc<Preview>, PreviewToken), ApiError> {
        let key = check_key(workspace, sandbox, preview)?;
        let now = time::now();
        let requested = expiry(spec.ttl.as_deref(), spec.expires_at.as_deref(), now)?;
        let name = match spec.name.as_deref() {
            Some(n) if !n.is_empty() => {
                validate_name("token name", n)?;
                n.to_string()
            }
            _ => ids::new_token_name().map_err(internal)?,
        };
        let (preview, token) = retrying!(self, {
            let m = self.mutating.lock().await;
            let sandbox = self.sandboxes.get(workspace, sandbox)?;
            let prev = self.previews.get(&key)?;
            let token = new_token(name.clone(), requested, prev.expires_at, now)?;
            let next = PreviewRegistry::with_token(&prev, token.clone(), now)?;
            let (preview, _) = self.previews.commit(&m, &sandbox, next).await?;
            Ok((preview, token))
        })?;
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
        let key = check_key(workspace, sandbox, preview)?;
        let revoked = retrying!(self, {
            let m = self.mutating.lock().await;
            let sandbox = self.sandboxes.get(workspace, sandbox)?;
            let prev = self.previews.get(&key)?;
            let (next, revoked) = PreviewRegistry::without_token(&prev, token)?;
            self.previews.commit(&m, &sandbox, next).await?;
            Ok(revoked)
        })?;
        tracing::info!(preview = %key, token = %revoked.name, "preview token revoked");
        Ok(revoked)
    }

    /// Creates a session: a private preview of the sandbox API plus one token, both expiring
    /// together (default 24 h), written in one store write.
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
        let key = check_key(workspace, sandbox, &name)?;
        let requested = expiry(spec.ttl.as_deref(), spec.expires_at.as_deref(), now)?;
        let expires_at = requested.unwrap_or_else(|| time::truncate_millis(time::add(now, DEFAULT_SESSION_TTL)));
        let preview_spec = PreviewSpec {
            port: Some(i64::from(API_PREVIEW_PORT)),
            public: Some(false),
            request_headers: spec.request_headers.clone(),
            response_headers: spec.response_headers.clone(),
            expires_at: Some(time::format_timestamp(expires_at)),
            ..PreviewSpec::default()
        };
        let valid = preview_spec.validate(workspace, now)?;
        let token_name = ids::new_token_name().map_err(internal)?;
        let token = new_token(token_name, Some(expires_at), Some(expires_at), now)?;
        let preview = retrying!(self, {
            let m = self.mutating.lock().await;
            let sandbox = self.sandboxes.get(workspace, sandbox)?;
            if self.previews.exists(&key, now) {
                return Err(ApiError::new(
                    ErrorCode::PreviewConflict,
                    format!("sandbox {:?} already has a preview named {name:?}", key.sandbox),
                ));
            }
            let mut preview = self.previews.build(&self.config(), &key, valid.clone(), None, now)?;
            preview.tokens = vec![token.clone()];
            let (preview, _) = self.previews.commit(&m, &sandbox, preview).await?;
            Ok(preview)
        })?;
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
    pub fn token_views(&self, tokens: &[PreviewToken]) -> Vec<views::PreviewTokenView> {
        let now = time::now();
        tokens.iter().map(|t| views::PreviewTokenView::listed(t, now)).collect()
    }

    /// The live preview whose host label is `id` (lower-case); `None` once expired, at once.
    pub fn preview_by_host_label(&self, id: &str) -> Option<Arc<Preview>> {
        self.previews.by_host_label(id)
    }

    /// Whether `secret` is a live token of `preview` (constant-time comparison of digests).
    pub fn preview_token_valid(&self, preview: &Preview, secret: &str) -> bool {
        PreviewRegistry::token_valid(preview, secret)
    }

    // ---- the reaper ----

    /// Resolves when previews change.
    pub fn previews_changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.previews.changed()
    }

    /// The earliest preview expiry.
    pub fn next_preview_expiry(&self) -> Option<Timestamp> {
        self.previews.next_expiry()
    }

    /// Deletes every expired preview (kernel, store, index). Returns how many.
    pub async fn reap_expired_previews(&self) -> usize {
        let expired = self.previews.expired(time::now());
        let mut reaped = 0;
        for key in expired {
            let m = self.mutating.lock().await;
            // Re-check under the mutex: it may have been replaced or deleted meanwhile.
            if !self.previews.is_expired(&key, time::now()) {
                continue;
            }
            let result = match self.sandboxes.get(&key.workspace, &key.sandbox).ok() {
                // In a fleet, the sandbox's host reaps (the others see the deletion).
                Some(sandbox) if !self.is_local(&sandbox) => continue,
                Some(sandbox) => self.previews.remove(&m, &sandbox, &key).await,
                None => self.previews.remove_orphan(&m, &key).await,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::sandbox::PortProtocol;
    use crate::state::MemoryStore;

    fn spec(address: &str, ports: &[i64]) -> SandboxSpec {
        SandboxSpec {
            address: address.parse().expect("addr"),
            interface: "lo".into(),
            ports: ports.iter().map(|&target| PortRequest::new(target, PortProtocol::Http)).collect(),
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
}

#[cfg(test)]
mod preview_tests {
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
            ports: vec![PortRequest::new(3000, PortProtocol::Http)],
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
