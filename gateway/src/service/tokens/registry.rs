//! The in-memory index of access tokens, and its mutations.
//!
//! Lookups by secret are O(1) and their timing does not depend on how much of a presented
//! secret's digest matches a stored one: the hash map is keyed by the first 8 bytes of the
//! SHA-256 digest (one integer comparison), and the full 32-byte digests of the (almost always
//! single) candidates are then compared with `subtle`'s constant-time equality. A map keyed by the
//! whole digest would compare it with `memcmp` and leak the length of the matching prefix.
//!
//! Mutations must run under the service layer's mutation lock (`App` holds it): that serializes
//! them, and the index is updated only after the store write is durable, so a revocation takes
//! effect on the very next request and a refused request changes nothing.

use super::{
    CreatedToken, TokenRequest, TokenView,
    secret::{Secret, Sha256Digest},
};
use crate::model::FastMap;
use crate::{
    errors::{ApiError, ErrorCode},
    model::is_dns_label,
    model::sandbox::{AccessToken, TokenId},
    model::time::{add, format_timestamp, parse_timestamp, parse_ttl, truncate_millis},
    service::mutation::Mutating,
};
use std::{
    collections::BTreeMap,
    sync::{Arc, RwLock},
};
use subtle::ConstantTimeEq;
use time::OffsetDateTime;

/// What a presented secret is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A live token.
    Valid(Arc<AccessToken>),
    /// A token whose expiry has passed.
    Expired(Arc<AccessToken>),
    /// No such token (never issued, or revoked).
    Unknown,
}

#[derive(Default)]
struct Index {
    by_id: BTreeMap<TokenId, Arc<AccessToken>>,
    /// Keyed by [`bucket`] of the digest; each bucket is compared in constant time.
    by_digest: FastMap<u64, Vec<Arc<AccessToken>>>,
}

/// The lookup key of a digest: its first 8 bytes.
fn bucket(digest: &Sha256Digest) -> u64 {
    let mut head = [0u8; 8];
    head.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(head)
}

impl Index {
    fn insert(&mut self, token: Arc<AccessToken>) {
        self.remove(&token.id());
        self.by_digest.entry(bucket(&token.secret_sha256)).or_default().push(token.clone());
        self.by_id.insert(token.id(), token);
    }

    fn remove(&mut self, id: &TokenId) -> Option<Arc<AccessToken>> {
        let old = self.by_id.remove(id)?;
        let key = bucket(&old.secret_sha256);
        if let Some(list) = self.by_digest.get_mut(&key) {
            list.retain(|t| t.id() != *id);
            if list.is_empty() {
                self.by_digest.remove(&key);
            }
        }
        Some(old)
    }

    fn find(&self, digest: &Sha256Digest) -> Option<Arc<AccessToken>> {
        let candidates = self.by_digest.get(&bucket(digest))?;
        let mut found = None;
        // Every candidate is compared in full: no early exit on a partial match.
        for token in candidates {
            if bool::from(token.secret_sha256.ct_eq(digest)) {
                found = Some(token.clone());
            }
        }
        found
    }
}

/// Every access token, indexed by (workspace, name) and by digest.
#[derive(Default)]
pub struct TokenRegistry {
    index: RwLock<Index>,
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::BadRequest, message)
}

fn not_found(id: &TokenId) -> ApiError {
    ApiError::new(ErrorCode::TokenNotFound, format!("no token named {:?} in workspace {:?}", id.name, id.workspace))
}

/// Checks a workspace and a token name (DNS label rules, like sandbox names).
pub fn validate_token_names(workspace: &str, name: Option<&str>) -> Result<(), ApiError> {
    for (what, value) in [("workspace", Some(workspace)), ("token name", name)] {
        if let Some(value) = value
            && !is_dns_label(value)
        {
            return Err(bad_request(format!(
                "invalid {what} {value:?}: use 1 to 63 characters among lower-case a-z, 0-9 and '-', not starting or ending with '-'"
            )));
        }
    }
    Ok(())
}

/// The expiry a creation asks for: `expiresAt` (in the future) or `ttl` (positive), not both.
pub fn requested_expiry(request: &TokenRequest, now: OffsetDateTime) -> Result<Option<OffsetDateTime>, ApiError> {
    match (&request.expires_at, &request.ttl) {
        (Some(_), Some(_)) => Err(bad_request("give expiresAt or ttl, not both")),
        (None, None) => Ok(None),
        (Some(text), None) => {
            // Whole milliseconds: what answers show is what is stored and enforced.
            let at = parse_timestamp(text)
                .map(truncate_millis)
                .map_err(|e| bad_request(format!("invalid expiresAt: {e}")))?;
            if at <= now {
                return Err(bad_request(format!(
                    "expiresAt {} is in the past (now is {})",
                    format_timestamp(at),
                    format_timestamp(now)
                )));
            }
            Ok(Some(at))
        }
        (None, Some(text)) => {
            let ttl = parse_ttl(text).map_err(|e| bad_request(format!("invalid ttl: {e}")))?;
            Ok(Some(ceil_to_second(add(now, ttl))))
        }
    }
}

/// The next whole second (or `t` itself when whole): a `ttl` is never shortened by rounding.
fn ceil_to_second(t: OffsetDateTime) -> OffsetDateTime {
    match t.replace_nanosecond(0) {
        Ok(whole) if whole != t => whole.checked_add(time::Duration::SECOND).unwrap_or(t),
        _ => t,
    }
}

impl TokenRegistry {
    /// The registry of the stored tokens. Fails if two records hold the same secret digest.
    pub fn load(tokens: Vec<AccessToken>) -> Result<Self, String> {
        let mut index = Index::default();
        for token in tokens {
            if let Some(other) = index.find(&token.secret_sha256) {
                return Err(format!("tokens {} and {} have the same secret", other.id(), token.id()));
            }
            index.insert(Arc::new(token));
        }
        Ok(Self { index: RwLock::new(index) })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(|p| p.into_inner())
    }

    /// How many tokens exist.
    pub fn len(&self) -> usize {
        self.read().by_id.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// What the presented secret is at `now`.
    pub fn verify(&self, presented: &[u8], now: OffsetDateTime) -> Verdict {
        let digest = super::secret::digest(presented);
        match self.read().find(&digest) {
            Some(token) if token.is_expired(now) => Verdict::Expired(token),
            Some(token) => Verdict::Valid(token),
            None => Verdict::Unknown,
        }
    }

    /// Every token, by (workspace, name).
    pub fn all(&self) -> Vec<AccessToken> {
        self.read().by_id.values().map(|t| AccessToken::clone(t)).collect()
    }

    /// Whether token `id` exists and has not expired at `now`.
    pub fn is_live(&self, id: &TokenId, now: OffsetDateTime) -> bool {
        self.read().by_id.get(id).is_some_and(|t| !t.is_expired(now))
    }

    /// The tokens of a workspace, by name, without secrets.
    pub fn list(&self, workspace: &str, now: OffsetDateTime) -> Result<Vec<TokenView>, ApiError> {
        validate_token_names(workspace, None)?;
        let index = self.read();
        Ok(index
            .by_id
            .range(TokenId::new(workspace, "")..)
            .take_while(|(id, _)| id.workspace == workspace)
            .map(|(_, t)| TokenView::of(t, now))
            .collect())
    }

    /// One token, without its secret.
    pub fn get(&self, workspace: &str, name: &str, now: OffsetDateTime) -> Result<TokenView, ApiError> {
        validate_token_names(workspace, Some(name))?;
        let id = TokenId::new(workspace, name);
        self.read().by_id.get(&id).map(|t| TokenView::of(t, now)).ok_or_else(|| not_found(&id))
    }

    /// Creates a token: validates, generates the secret, writes the record (durable), then
    /// indexes it.
    pub async fn create(
        &self,
        m: &Mutating,
        workspace: &str,
        request: TokenRequest,
        now: OffsetDateTime,
    ) -> Result<CreatedToken, ApiError> {
        validate_token_names(workspace, Some(&request.name))?;
        let expires_at = requested_expiry(&request, now)?;
        let id = TokenId::new(workspace, &request.name);
        if self.read().by_id.contains_key(&id) {
            return Err(ApiError::new(
                ErrorCode::TokenConflict,
                format!(
                    "a token named {:?} already exists in workspace {workspace:?}: revoke it first, or choose another name",
                    request.name
                ),
            ));
        }
        let secret = Secret::generate().map_err(|e| {
            tracing::error!(error = %e, "the OS random number generator failed");
            ApiError::new(ErrorCode::Internal, format!("cannot generate a secret: {e}"))
        })?;
        let token = AccessToken {
            workspace: workspace.to_string(),
            name: request.name,
            secret_sha256: secret.digest(),
            // Whole seconds read better; a `ttl`-derived expiry is rounded up likewise.
            created_at: now.replace_nanosecond(0).unwrap_or(now),
            expires_at,
        };
        if let Err(e) = m.store.put_token(token.clone()).await {
            tracing::error!(token = %id, error = %e, "state write failed; token not created");
            return Err(e.write_failed());
        }
        let token = Arc::new(token);
        self.write().insert(token.clone());
        tracing::info!(
            workspace = %token.workspace,
            token = %token.name,
            expires_at = token.expires_at.map(format_timestamp),
            "access token created"
        );
        Ok(CreatedToken {
            name: token.name.clone(),
            workspace: token.workspace.clone(),
            token: secret,
            created_at: token.created_at,
            expires_at: token.expires_at,
        })
    }

    /// The replica's change: `token` as etcd holds it now.
    pub fn follow(&self, token: AccessToken) {
        self.write().insert(Arc::new(token));
    }

    /// The replica's change: token `id` was revoked.
    pub fn follow_gone(&self, id: &TokenId) {
        self.write().remove(id);
    }

    /// Revokes a token: deletes its record (durable), then un-indexes it, so the next request
    /// with it fails.
    pub async fn revoke(&self, m: &Mutating, workspace: &str, name: &str) -> Result<(), ApiError> {
        validate_token_names(workspace, Some(name))?;
        let id = TokenId::new(workspace, name);
        if !self.read().by_id.contains_key(&id) {
            return Err(not_found(&id));
        }
        if let Err(e) = m.store.delete_token(id.clone()).await {
            tracing::error!(token = %id, error = %e, "state write failed; token not revoked");
            return Err(e.write_failed());
        }
        self.write().remove(&id);
        tracing::info!(workspace = %workspace, token = %name, "access token revoked");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        dataplane::Dataplane,
        state::{MemoryStore, Store},
    };

    fn now() -> OffsetDateTime {
        parse_timestamp("2030-01-01T00:00:00Z").expect("time")
    }

    fn request(name: &str) -> TokenRequest {
        TokenRequest { name: name.into(), ..TokenRequest::default() }
    }

    #[tokio::test]
    async fn create_verify_revoke() {
        let store = Arc::new(MemoryStore::new());
        let m = Mutating::new(Dataplane::disabled(), store.clone());
        let reg = TokenRegistry::default();
        let created = reg.create(&m, "acme", request("ci"), now()).await.expect("create");
        let secret = created.token.expose().to_string();
        assert!(secret.starts_with("gw_"));
        let Verdict::Valid(t) = reg.verify(secret.as_bytes(), now()) else { panic!("valid") };
        assert_eq!((t.workspace.as_str(), t.name.as_str()), ("acme", "ci"));
        assert_eq!(reg.verify(b"gw_nope", now()), Verdict::Unknown);
        assert_eq!(reg.verify(&secret.as_bytes()[..secret.len() - 1], now()), Verdict::Unknown);
        assert_eq!(reg.verify(format!("{secret}x").as_bytes(), now()), Verdict::Unknown);
        // Stored: the digest, never the secret.
        let stored = store.load().await.expect("load").tokens;
        assert_eq!(stored.len(), 1);
        assert_eq!(stored[0].secret_sha256, super::super::secret::digest(secret.as_bytes()));
        assert!(!serde_json::to_string(&stored[0]).expect("json").contains(&secret));

        let e = reg.create(&m, "acme", request("ci"), now()).await.expect_err("dup");
        assert_eq!((e.status(), e.code), (409, ErrorCode::TokenConflict));
        // The same name in another workspace is another token.
        reg.create(&m, "other", request("ci"), now()).await.expect("other ws");

        reg.revoke(&m, "acme", "ci").await.expect("revoke");
        assert_eq!(reg.verify(secret.as_bytes(), now()), Verdict::Unknown);
        let e = reg.revoke(&m, "acme", "ci").await.expect_err("gone");
        assert_eq!((e.status(), e.code), (404, ErrorCode::TokenNotFound));
        assert_eq!(store.load().await.expect("load").tokens.len(), 1);
    }

    #[tokio::test]
    async fn expiry() {
        let store = Arc::new(MemoryStore::new());
        let m = Mutating::new(Dataplane::disabled(), store.clone());
        let reg = TokenRegistry::default();
        let req = TokenRequest { ttl: Some("1h".into()), ..request("short") };
        let created = reg.create(&m, "acme", req, now()).await.expect("create");
        assert_eq!(created.expires_at, Some(now() + time::Duration::hours(1)));
        let secret = created.token.expose().as_bytes().to_vec();
        assert!(matches!(reg.verify(&secret, now() + time::Duration::minutes(59)), Verdict::Valid(_)));
        assert!(matches!(reg.verify(&secret, now() + time::Duration::hours(1)), Verdict::Expired(_)));
        let list = reg.list("acme", now() + time::Duration::hours(2)).expect("list");
        assert!(list[0].expired);
        assert!(!reg.list("acme", now()).expect("list")[0].expired);
        // An expired token keeps its name until revoked.
        let e = reg.create(&m, "acme", request("short"), now() + time::Duration::hours(2)).await.expect_err("dup");
        assert_eq!(e.code, ErrorCode::TokenConflict);
    }

    #[test]
    fn expiry_requests() {
        let at = |expires_at: Option<&str>, ttl: Option<&str>| {
            let req = TokenRequest {
                name: "x".into(),
                expires_at: expires_at.map(str::to_string),
                ttl: ttl.map(str::to_string),
            };
            requested_expiry(&req, now())
        };
        assert_eq!(at(None, None).expect("none"), None);
        assert_eq!(
            at(Some("2030-01-02T00:00:00"), None).expect("no offset"),
            Some(parse_timestamp("2030-01-02T00:00:00Z").expect("t"))
        );
        assert_eq!(at(None, Some("7d")).expect("7d"), Some(now() + time::Duration::days(7)));
        // A ttl from a fractional instant is rounded up to the next whole second.
        let late = now() + time::Duration::milliseconds(999);
        let req = TokenRequest { name: "x".into(), ttl: Some("1s".into()), ..TokenRequest::default() };
        assert_eq!(requested_expiry(&req, late).expect("1s"), Some(now() + time::Duration::seconds(2)));
        for (e, t, needle) in [
            (Some("2029-12-31T23:59:59Z"), None, "in the past"),
            (Some("2030-01-01T00:00:00Z"), None, "in the past"),
            (Some("next week"), None, "RFC 3339"),
            (Some("2030-01-01T00:00:00.0001Z"), None, "in the past"),
            (Some("2030-01-02T00:00:00Z"), Some("1h"), "not both"),
            (None, Some("0s"), "out of range"),
            (None, Some("soon"), "ttl"),
            (None, Some("100000000000000d"), "ttl"),
        ] {
            let err = at(e, t).expect_err(needle);
            assert_eq!(err.code, ErrorCode::BadRequest);
            assert!(err.message.contains(needle), "{needle}: {}", err.message);
        }
    }

    #[tokio::test]
    async fn refused_creations_change_nothing() {
        let store = Arc::new(MemoryStore::new());
        let m = Mutating::new(Dataplane::disabled(), store.clone());
        let reg = TokenRegistry::default();
        reg.create(&m, "acme", request("ci"), now()).await.expect("create");
        for (ws, name) in [("acme", "Upper"), ("acme", "-x"), ("acme", "a.b"), ("Acme", "ok"), ("acme", "")] {
            let e = reg.create(&m, ws, request(name), now()).await.expect_err(name);
            assert_eq!(e.code, ErrorCode::BadRequest, "{ws}/{name}");
        }
        store.set_fail_writes(true);
        let e = reg.create(&m, "acme", request("new"), now()).await.expect_err("store");
        assert_eq!((e.status(), e.code), (500, ErrorCode::StateWriteFailed));
        let e = reg.revoke(&m, "acme", "ci").await.expect_err("store");
        assert_eq!(e.status(), 500);
        store.set_fail_writes(false);
        let names: Vec<String> = reg.list("acme", now()).expect("list").into_iter().map(|t| t.name).collect();
        assert_eq!(names, vec!["ci"]);
        assert_eq!(store.load().await.expect("load").tokens.len(), 1);
    }

    #[test]
    fn buckets_are_compared_in_full() {
        // Two digests sharing the 8-byte bucket key: each finds only itself.
        let token = |name: &str, last: u8| {
            let mut digest = [7u8; 32];
            digest[31] = last;
            AccessToken {
                workspace: "acme".into(),
                name: name.into(),
                secret_sha256: digest,
                created_at: now(),
                expires_at: None,
            }
        };
        let reg = TokenRegistry::load(vec![token("a", 1), token("b", 2)]).expect("load");
        let index = reg.read();
        let mut probe = [7u8; 32];
        probe[31] = 2;
        assert_eq!(index.find(&probe).map(|t| t.name.clone()), Some("b".into()));
        probe[31] = 3;
        assert!(index.find(&probe).is_none());
        drop(index);
        assert!(TokenRegistry::load(vec![token("a", 1), token("c", 1)]).is_err(), "same digest twice");
    }
}
