//! Workspace access tokens: what the HTTPS edge accepts as `Bearer` credentials.
//!
//! - [`secret`]: generation (`gw_…`, 256 bits from the OS RNG) and SHA-256 digests;
//! - [`registry`]: the in-memory index (by name, and by digest for O(1) checks), creation with
//!   validation, revocation, and [`registry::TokenRegistry::verify`].
//!
//! Timestamps and lifetimes are read and written by [`crate::model::time`], as for previews:
//! RFC 3339 with `Z`, an offset or none (UTC), answered in UTC to the millisecond.
//!
//! The admin API (`/v1/workspaces/{ws}/tokens`) manages them; `crate::auth` checks them.
//! Only SHA-256 digests are stored (`state.dir/tokens/{ws}.{name}.json`); a secret is shown
//! once, in the 201 answer that created it. Token names are logged, secrets never.

pub mod registry;
pub mod secret;

pub use registry::{TokenRegistry, Verdict};

use crate::{model::sandbox::AccessToken, model::time::serde_ts};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// Body of `POST /v1/workspaces/{ws}/tokens`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenRequest {
    /// Name within the workspace (DNS label rules).
    pub name: String,
    /// RFC 3339 expiry (`Z`, an offset, or none for UTC); absent: valid until revoked.
    #[serde(default)]
    pub expires_at: Option<String>,
    /// Lifetime instead of `expiresAt`: `"1h"`, `"24h"`, `"7d"`, `"1h 30m"`.
    #[serde(default)]
    pub ttl: Option<String>,
}

/// A token as listed: everything but the secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenView {
    pub name: String,
    pub workspace: String,
    /// Creation time (UTC).
    #[serde(with = "serde_ts")]
    pub created_at: OffsetDateTime,
    /// Expiry (UTC), `null` when none.
    #[serde(with = "serde_ts::option")]
    pub expires_at: Option<OffsetDateTime>,
    /// Whether it has expired (it then authenticates nothing; revoke it to reuse the name).
    pub expired: bool,
}

impl TokenView {
    /// The view of `token` at `now`.
    pub fn of(token: &AccessToken, now: OffsetDateTime) -> Self {
        Self {
            name: token.name.clone(),
            workspace: token.workspace.clone(),
            created_at: token.created_at,
            expires_at: token.expires_at,
            expired: token.is_expired(now),
        }
    }
}

/// The answer to a creation: the only time the secret is shown.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CreatedToken {
    pub name: String,
    pub workspace: String,
    /// The secret, `gw_…` (redacted in `Debug`).
    pub token: secret::Secret,
    /// Creation time (UTC).
    #[serde(with = "serde_ts")]
    pub created_at: OffsetDateTime,
    /// Expiry (UTC), `null` when none.
    #[serde(with = "serde_ts::option")]
    pub expires_at: Option<OffsetDateTime>,
}
