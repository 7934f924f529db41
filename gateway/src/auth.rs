//! Workspace access tokens as the HTTPS edge checks them (BRIEF §2):
//! `Authorization: Bearer …` or `X-Blaxel-Authorization: Bearer …`, plus an optional
//! `X-Blaxel-Workspace` that must match.
//!
//! STUB: the interface the HTTPS edge codes against; the token store fills it in.

use crate::{api_error::ApiError, app::App};
use http::HeaderMap;

/// Who a request was authenticated as. Never carries the secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The token's workspace.
    pub workspace: String,
    /// The token's name (safe to log).
    pub token_name: String,
}

/// Checks the request's credentials for `workspace`:
/// missing → 401 `AUTHENTICATION_REQUIRED`; unknown, revoked or expired → 401
/// `AUTHENTICATION_FAILED`; valid for another workspace, or `X-Blaxel-Workspace` naming another
/// workspace → 403 `FORBIDDEN`.
pub fn authenticate(_app: &App, _workspace: &str, _headers: &HeaderMap) -> Result<Principal, ApiError> {
    Err(ApiError::new(401, "AUTHENTICATION_REQUIRED", "workspace tokens are not implemented yet"))
}

/// Removes every credential the gateway consumes and every client-sent `X-Blaxel-*` header,
/// before a request is forwarded to a sandbox.
pub fn strip_credentials(headers: &mut HeaderMap) {
    headers.remove(http::header::AUTHORIZATION);
    let blaxel: Vec<http::HeaderName> =
        headers.keys().filter(|k| k.as_str().starts_with("x-blaxel-")).cloned().collect();
    for k in blaxel {
        headers.remove(k);
    }
}
