//! Workspace access tokens as the HTTPS edge checks them:
//! `Authorization: Bearer …` or `X-Blaxel-Authorization: Bearer …`, plus an optional
//! `X-Blaxel-Workspace` that must match.
//!
//! Order of the checks: credentials are read (malformed or conflicting → 401
//! `AUTHENTICATION_FAILED`, none → 401 `AUTHENTICATION_REQUIRED`), the secret is verified
//! against the token index (unknown, revoked or expired → 401 `AUTHENTICATION_FAILED`), then the
//! workspace is authorized (token of another workspace, or `X-Blaxel-Workspace` naming another
//! one → 403 `FORBIDDEN`). Nothing is cached: the index is the one the admin API mutates, so a
//! revocation or an expiry applies to the very next request.

use crate::{
    errors::{ApiError, ErrorCode},
    model::time::format_timestamp,
    service::App,
    service::tokens::{TokenRegistry, Verdict},
};
use http::{HeaderMap, HeaderName, header::AUTHORIZATION};
use time::OffsetDateTime;

/// `X-Blaxel-Authorization`: where the SDKs send the token.
pub const X_BLAXEL_AUTHORIZATION: HeaderName = HeaderName::from_static("x-blaxel-authorization");
/// `X-Blaxel-Workspace`: the workspace the SDK believes it talks to.
pub const X_BLAXEL_WORKSPACE: HeaderName = HeaderName::from_static("x-blaxel-workspace");

/// Who a request was authenticated as. Never carries the secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The token's workspace.
    pub workspace: String,
    /// The token's name (safe to log).
    pub token_name: String,
}

/// Checks the request's credentials for `workspace` (the workspace of the sandbox addressed):
/// missing → 401 `AUTHENTICATION_REQUIRED`; malformed, conflicting, unknown, revoked or expired
/// → 401 `AUTHENTICATION_FAILED`; valid for another workspace, or `X-Blaxel-Workspace` naming
/// another workspace → 403 `FORBIDDEN`.
pub fn authenticate(app: &App, workspace: &str, headers: &HeaderMap) -> Result<Principal, ApiError> {
    app.check_fresh()?;
    check(app.tokens(), workspace, headers, OffsetDateTime::now_utc())
}

/// [`authenticate`] against a registry at a given instant.
pub fn check(
    tokens: &TokenRegistry,
    workspace: &str,
    headers: &HeaderMap,
    now: OffsetDateTime,
) -> Result<Principal, ApiError> {
    let refuse = |e: ApiError, token: Option<&str>| {
        tracing::debug!(target: "gateway::auth", workspace, token, code = %e.code, "request refused");
        e
    };
    let secret = match bearer(headers) {
        Ok(Some(secret)) => secret,
        Ok(None) => {
            return Err(refuse(
                ApiError::new(
                    ErrorCode::AuthenticationRequired,
                    "this sandbox needs a workspace access token: `Authorization: Bearer <token>` or `X-Blaxel-Authorization: Bearer <token>`",
                ),
                None,
            ));
        }
        Err(e) => return Err(refuse(e, None)),
    };
    let token = match tokens.verify(secret, now) {
        Verdict::Valid(token) => token,
        Verdict::Expired(token) => {
            let at = token.expires_at.map(format_timestamp).unwrap_or_default();
            return Err(refuse(
                ApiError::new(ErrorCode::AuthenticationFailed, format!("the token {:?} expired at {at}", token.name)),
                Some(&token.name),
            ));
        }
        Verdict::Unknown => {
            return Err(refuse(failed("invalid token (unknown or revoked)"), None));
        }
    };
    if token.workspace != workspace {
        return Err(refuse(
            ApiError::new(ErrorCode::Forbidden, format!("this token is not valid for workspace {workspace:?}")),
            Some(&token.name),
        ));
    }
    for value in headers.get_all(X_BLAXEL_WORKSPACE) {
        let named = value.to_str().map(str::trim).unwrap_or_default();
        if !named.eq_ignore_ascii_case(workspace) {
            let shown: String = named.chars().take(63).collect();
            return Err(refuse(
                ApiError::new(
                    ErrorCode::Forbidden,
                    format!("X-Blaxel-Workspace names workspace {shown:?}, but this sandbox belongs to {workspace:?}"),
                ),
                Some(&token.name),
            ));
        }
    }
    Ok(Principal { workspace: token.workspace.clone(), token_name: token.name.clone() })
}

/// Authenticates a caller whose workspace is not given by the address (the `/v0` API on
/// `api.{domain}`): the workspace is the one `X-Blaxel-Workspace` names, else the token's own.
/// The same answers as [`authenticate`].
pub fn authenticate_caller(app: &App, headers: &HeaderMap) -> Result<Principal, ApiError> {
    let now = OffsetDateTime::now_utc();
    let named = headers
        .get(X_BLAXEL_WORKSPACE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase())
        .filter(|v| !v.is_empty());
    let workspace = match named {
        Some(ws) => ws,
        None => match bearer(headers) {
            Ok(Some(secret)) => match app.tokens().verify(secret, now) {
                Verdict::Valid(t) | Verdict::Expired(t) => t.workspace.clone(),
                Verdict::Unknown => String::new(),
            },
            // `check` reports the missing or malformed credential.
            _ => String::new(),
        },
    };
    check(app.tokens(), &workspace, headers, now)
}

fn failed(message: &str) -> ApiError {
    ApiError::new(ErrorCode::AuthenticationFailed, message)
}

/// The bearer secret of `Authorization` and `X-Blaxel-Authorization` (every value of both):
/// `None` if neither is sent; an error if one is not `Bearer <secret>` (scheme
/// case-insensitive) or if they carry different secrets.
fn bearer(headers: &HeaderMap) -> Result<Option<&[u8]>, ApiError> {
    let mut found: Option<&[u8]> = None;
    for name in [AUTHORIZATION, X_BLAXEL_AUTHORIZATION] {
        for value in headers.get_all(&name) {
            let value = value.as_bytes().trim_ascii();
            let secret = match value.iter().position(u8::is_ascii_whitespace) {
                Some(end) if value[..end].eq_ignore_ascii_case(b"bearer") => value[end..].trim_ascii(),
                _ => {
                    return Err(failed(&format!("the {name} header must be `Bearer <token>`")));
                }
            };
            if secret.is_empty() {
                return Err(failed(&format!("the {name} header holds an empty token")));
            }
            match found {
                Some(previous) if previous != secret => {
                    return Err(failed(
                        "Authorization and X-Blaxel-Authorization (or repeated headers) carry different tokens",
                    ));
                }
                _ => found = Some(secret),
            }
        }
    }
    Ok(found)
}

/// The prefix of the headers gateways of a fleet send each other (what the gateway that
/// received a request established about its client): never believed from a client, always
/// removed with the credentials.
pub const FLEET_HEADER_PREFIX: &str = "x-gw-fleet-";

/// A request another member of the fleet authenticated with workspace token `token` (its
/// workspace and name): checked again here, where the sandbox runs, so that a token revoked
/// meanwhile no longer opens it. Another workspace's token → 403; a token that no longer
/// lives → 401.
pub fn vouched(app: &App, workspace: &str, token: (&str, &str)) -> Result<Principal, ApiError> {
    app.check_fresh()?;
    let (token_ws, name) = token;
    if token_ws != workspace {
        return Err(ApiError::new(ErrorCode::Forbidden, "the token is not valid for this sandbox's workspace"));
    }
    if !app.tokens().is_live(&crate::model::sandbox::TokenId::new(token_ws, name), OffsetDateTime::now_utc()) {
        return Err(failed("the token was revoked or expired"));
    }
    Ok(Principal { workspace: workspace.to_string(), token_name: name.to_string() })
}

/// Removes every credential the gateway consumes, every client-sent `X-Blaxel-*` header and
/// every fleet header, before a request is forwarded to a sandbox or a peer.
pub fn strip_credentials(headers: &mut HeaderMap) {
    headers.remove(http::header::AUTHORIZATION);
    let blaxel: Vec<http::HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with("x-blaxel-") || k.as_str().starts_with(FLEET_HEADER_PREFIX))
        .cloned()
        .collect();
    for k in blaxel {
        headers.remove(k);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{service::tokens::TokenRequest, state::MemoryStore};
    use http::HeaderValue;

    fn now() -> OffsetDateTime {
        crate::model::time::parse_timestamp("2030-01-01T00:00:00Z").expect("time")
    }

    /// A registry with `acme/ci` (no expiry), `acme/short` (1 h) and `other/ci`; their secrets.
    async fn registry() -> (TokenRegistry, String, String, String) {
        let store = crate::service::mutation::Mutating::new(
            crate::dataplane::Dataplane::disabled(),
            std::sync::Arc::new(MemoryStore::new()),
        );
        let reg = TokenRegistry::default();
        let mut secrets = Vec::new();
        for (ws, name, ttl) in [("acme", "ci", None), ("acme", "short", Some("1h")), ("other", "ci", None)] {
            let req = TokenRequest { name: name.into(), ttl: ttl.map(str::to_string), ..TokenRequest::default() };
            let created = reg.create(&store, ws, req, now()).await.expect("create");
            secrets.push(created.token.expose().to_string());
        }
        let mut it = secrets.into_iter();
        let mut next = || it.next().expect("secret");
        (reg, next(), next(), next())
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(
                HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_str(value).expect("value"),
            );
        }
        h
    }

    fn code(r: Result<Principal, ApiError>) -> (u16, ErrorCode) {
        let e = r.expect_err("refused");
        assert!(!e.message.is_empty());
        (e.status(), e.code)
    }

    #[tokio::test]
    async fn accepted_forms() {
        let (reg, ci, short, _) = registry().await;
        let ok = |h: HeaderMap| check(&reg, "acme", &h, now()).expect("accepted");
        let bearer = format!("Bearer {ci}");
        let p = ok(headers(&[("authorization", &bearer)]));
        assert_eq!(p, Principal { workspace: "acme".into(), token_name: "ci".into() });
        ok(headers(&[("x-blaxel-authorization", &bearer)]));
        ok(headers(&[("authorization", &format!("bearer {ci}"))]));
        ok(headers(&[("authorization", &format!("BEARER   {ci} "))]));
        // Both headers with the same token; the SDK's workspace header, matching.
        ok(headers(&[("authorization", &bearer), ("x-blaxel-authorization", &bearer)]));
        ok(headers(&[("x-blaxel-authorization", &bearer), ("x-blaxel-workspace", "acme")]));
        ok(headers(&[("x-blaxel-authorization", &bearer), ("x-blaxel-workspace", "ACME")]));
        let p = ok(headers(&[("authorization", &format!("Bearer {short}"))]));
        assert_eq!(p.token_name, "short");
    }

    #[tokio::test]
    async fn refusals() {
        let (reg, ci, short, other) = registry().await;
        let at = |h: &[(&str, &str)], when: OffsetDateTime| code(check(&reg, "acme", &headers(h), when));
        let run = |h: &[(&str, &str)]| at(h, now());
        let bearer = format!("Bearer {ci}");
        let required = (401, ErrorCode::AuthenticationRequired);
        let failed = (401, ErrorCode::AuthenticationFailed);
        let forbidden = (403, ErrorCode::Forbidden);

        assert_eq!(run(&[]), required);
        assert_eq!(run(&[("x-blaxel-workspace", "acme")]), required);
        assert_eq!(run(&[("cookie", "a=b")]), required);
        // Malformed.
        assert_eq!(run(&[("authorization", &ci)]), failed, "no scheme");
        assert_eq!(run(&[("authorization", &format!("Basic {ci}"))]), failed);
        assert_eq!(run(&[("authorization", &format!("Bearer{ci}"))]), failed, "no space");
        assert_eq!(run(&[("authorization", "Bearer")]), failed);
        assert_eq!(run(&[("authorization", "Bearer   ")]), failed);
        assert_eq!(run(&[("authorization", "")]), failed);
        // Unknown, truncated, extended, other case.
        assert_eq!(run(&[("authorization", "Bearer gw_unknown")]), failed);
        assert_eq!(run(&[("authorization", &format!("Bearer {}", &ci[..ci.len() - 1]))]), failed);
        assert_eq!(run(&[("authorization", &format!("Bearer {ci}A"))]), failed);
        assert_eq!(run(&[("authorization", &format!("Bearer {}", ci.to_uppercase()))]), failed);
        // Two different tokens: in the two headers, or the same header twice.
        let second = format!("Bearer {short}");
        assert_eq!(run(&[("authorization", &bearer), ("x-blaxel-authorization", &second)]), failed);
        assert_eq!(run(&[("authorization", &bearer), ("authorization", &second)]), failed);
        assert_eq!(run(&[("authorization", &bearer), ("x-blaxel-authorization", "Bearer gw_bad")]), failed);
        assert_eq!(run(&[("x-blaxel-authorization", &bearer), ("authorization", "Basic dXNlcjpwdw==")]), failed);
        // Expired: valid just before the expiry instant, refused at it and after.
        let short_h = [("authorization", second.as_str())];
        assert!(check(&reg, "acme", &headers(&short_h), now() + time::Duration::minutes(59)).is_ok());
        assert_eq!(at(&short_h, now() + time::Duration::hours(1)), failed);
        assert_eq!(at(&short_h, now() + time::Duration::days(1)), failed);
        let e = check(&reg, "acme", &headers(&short_h), now() + time::Duration::hours(2)).expect_err("expired");
        assert!(e.message.contains("expired") && e.message.contains("short"), "{}", e.message);
        assert!(!e.message.contains(&short), "the secret is never echoed");
        // Valid, but for another workspace.
        assert_eq!(run(&[("authorization", &format!("Bearer {other}"))]), forbidden);
        assert_eq!(
            run(&[("x-blaxel-authorization", &format!("Bearer {other}")), ("x-blaxel-workspace", "acme")]),
            forbidden
        );
        // The SDK's workspace header naming another workspace (or repeated, one wrong).
        assert_eq!(run(&[("authorization", &bearer), ("x-blaxel-workspace", "other")]), forbidden);
        assert_eq!(run(&[("authorization", &bearer), ("x-blaxel-workspace", "")]), forbidden);
        assert_eq!(
            run(&[("authorization", &bearer), ("x-blaxel-workspace", "acme"), ("x-blaxel-workspace", "x")]),
            forbidden
        );
        // Authentication comes first: no token and a wrong workspace header is a 401.
        assert_eq!(run(&[("x-blaxel-workspace", "other")]), required);
        assert_eq!(run(&[("authorization", "Bearer gw_bad"), ("x-blaxel-workspace", "other")]), failed);
    }

    #[tokio::test]
    async fn revocation_applies_to_the_next_request() {
        let store = crate::service::mutation::Mutating::new(
            crate::dataplane::Dataplane::disabled(),
            std::sync::Arc::new(MemoryStore::new()),
        );
        let reg = TokenRegistry::default();
        let created = reg
            .create(&store, "acme", TokenRequest { name: "ci".into(), ..TokenRequest::default() }, now())
            .await
            .expect("create");
        let h = headers(&[("authorization", &format!("Bearer {}", created.token.expose()))]);
        assert!(check(&reg, "acme", &h, now()).is_ok());
        reg.revoke(&store, "acme", "ci").await.expect("revoke");
        assert_eq!(code(check(&reg, "acme", &h, now())), (401, ErrorCode::AuthenticationFailed));
    }

    #[test]
    fn strips_credentials_and_blaxel_headers() {
        let mut h = headers(&[
            ("authorization", "Bearer x"),
            ("authorization", "Bearer y"),
            ("x-blaxel-authorization", "Bearer x"),
            ("x-blaxel-workspace", "acme"),
            ("x-blaxel-preview-token", "t"),
            ("X-Blaxel-Anything", "1"),
            ("content-type", "text/plain"),
            ("x-blaxelnot", "kept"),
            ("cookie", "kept=1"),
        ]);
        strip_credentials(&mut h);
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, vec!["content-type", "cookie", "x-blaxelnot"]);
    }
}
