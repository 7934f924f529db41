//! Target `credentials`: workspace tokens (`Authorization` / `X-Blaxel-Authorization: Bearer`,
//! `X-Blaxel-Workspace`; `auth.rs`) and preview tokens (`X-Blaxel-Preview-Token`, query
//! parameter and cookie `bl_preview_token`; `previews/gate.rs`).
//!
//! The input is tagged lines (see [`super::util::tagged_lines`]): `a` Authorization,
//! `x` X-Blaxel-Authorization, `w` X-Blaxel-Workspace, `p` X-Blaxel-Preview-Token, `c` Cookie,
//! `h` Accept, `o` another header, `u` the request URI.
//!
//! Properties: the authentication verdict is the documented one (checked against an independent
//! reference: missing → 401 `AUTHENTICATION_REQUIRED`, malformed, conflicting, unknown or
//! expired → 401 `AUTHENTICATION_FAILED`, other workspace → 403), and no error message echoes a
//! secret; after the credentials are taken off a preview request, no preview token is left in a
//! header, the query or a cookie, while the rest of the query, the other cookies and the other
//! headers are kept byte for byte.

use super::util::{fixed_now, form_decode, tagged_lines};
use crate::{
    auth::{X_BLAXEL_AUTHORIZATION, X_BLAXEL_WORKSPACE, check as auth_check, strip_credentials},
    model::sandbox::AccessToken,
    service::previews::gate::{TOKEN_HEADER, TOKEN_PARAM, accepts_html_explicitly, take_credentials},
    service::tokens::{TokenRegistry, secret::digest},
};
use http::{
    HeaderMap, HeaderName, HeaderValue, Uri,
    header::{ACCEPT, AUTHORIZATION, COOKIE},
};
use std::sync::OnceLock;

/// A live token of workspace `acme` (the seeds use these secrets).
pub const VALID: &str = "gw_fuzzValidSecretOfAcme0000000000000000000000";
/// An expired token of `acme`.
pub const EXPIRED: &str = "gw_fuzzExpiredSecretOfAcme00000000000000000000";
/// A live token of workspace `other`.
pub const OTHER: &str = "gw_fuzzValidSecretOfOther000000000000000000000";
const WORKSPACE: &str = "acme";

fn registry() -> &'static TokenRegistry {
    static REGISTRY: OnceLock<TokenRegistry> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let now = fixed_now();
        let token = |workspace: &str, name: &str, secret: &str, expires_at| AccessToken {
            workspace: workspace.into(),
            name: name.into(),
            secret_sha256: digest(secret.as_bytes()),
            created_at: now - time::Duration::days(1),
            expires_at,
        };
        TokenRegistry::load(vec![
            token(WORKSPACE, "ci", VALID, None),
            token(WORKSPACE, "old", EXPIRED, Some(now - time::Duration::hours(1))),
            token("other", "ci", OTHER, None),
        ])
        .unwrap_or_else(|e| panic!("fuzz registry: {e}"))
    })
}

/// Runs the checks on one input.
pub fn check(data: &[u8]) {
    let mut headers = HeaderMap::new();
    let mut uri = Uri::from_static("/");
    for (tag, value) in tagged_lines(data) {
        let name = match tag {
            b'a' => AUTHORIZATION,
            b'x' => X_BLAXEL_AUTHORIZATION,
            b'w' => X_BLAXEL_WORKSPACE,
            b'p' => TOKEN_HEADER,
            b'c' => COOKIE,
            b'h' => ACCEPT,
            b'o' => HeaderName::from_static("x-other"),
            b'u' => {
                if let Ok(u) = Uri::try_from(value) {
                    uri = u;
                }
                continue;
            }
            _ => continue,
        };
        if let Ok(v) = HeaderValue::from_bytes(value) {
            headers.append(name, v);
        }
    }
    check_workspace_auth(&headers);
    check_preview_credentials(uri, headers.clone());
    if accepts_html_explicitly(&headers) {
        assert!(
            headers
                .get_all(ACCEPT)
                .iter()
                .any(|v| v.to_str().is_ok_and(|s| s.to_ascii_lowercase().contains("text/html"))),
            "text/html accepted without being listed"
        );
    }
    let mut stripped = headers.clone();
    strip_credentials(&mut stripped);
    assert!(!stripped.contains_key(AUTHORIZATION));
    assert!(stripped.keys().all(|k| !k.as_str().starts_with("x-blaxel-")), "{stripped:?}");
    assert_eq!(stripped.get_all(COOKIE).iter().count(), headers.get_all(COOKIE).iter().count());
}

/// The documented verdict, computed independently: `(status, code)`.
fn reference_auth(headers: &HeaderMap) -> Result<(), (u16, &'static str)> {
    let mut secret: Option<&[u8]> = None;
    let values = headers.get_all(AUTHORIZATION).iter().chain(headers.get_all(X_BLAXEL_AUTHORIZATION).iter());
    for value in values {
        let v = value.as_bytes().trim_ascii();
        let Some(space) = v.iter().position(u8::is_ascii_whitespace) else {
            return Err((401, "AUTHENTICATION_FAILED"));
        };
        let (scheme, rest) = v.split_at(space);
        let s = rest.trim_ascii();
        if !scheme.eq_ignore_ascii_case(b"bearer") || s.is_empty() || secret.is_some_and(|prev| prev != s) {
            return Err((401, "AUTHENTICATION_FAILED"));
        }
        secret = Some(s);
    }
    match secret {
        None => Err((401, "AUTHENTICATION_REQUIRED")),
        Some(s) if s == OTHER.as_bytes() => Err((403, "FORBIDDEN")),
        Some(s) if s != VALID.as_bytes() => Err((401, "AUTHENTICATION_FAILED")),
        Some(_) => {
            let named_ok = |v: &HeaderValue| v.to_str().is_ok_and(|s| s.trim().eq_ignore_ascii_case(WORKSPACE));
            if headers.get_all(X_BLAXEL_WORKSPACE).iter().all(named_ok) { Ok(()) } else { Err((403, "FORBIDDEN")) }
        }
    }
}

fn check_workspace_auth(headers: &HeaderMap) {
    let got = auth_check(registry(), WORKSPACE, headers, fixed_now());
    let expected = reference_auth(headers);
    match &got {
        Ok(principal) => {
            assert_eq!(expected, Ok(()), "accepted: {headers:?}");
            assert_eq!((principal.workspace.as_str(), principal.token_name.as_str()), (WORKSPACE, "ci"));
        }
        Err(e) => {
            assert_eq!(expected, Err((e.status(), e.code.as_str())), "{headers:?}: {e:?}");
            // A refusal names the offending X-Blaxel-Workspace value (the client's own text, not a
            // credential): a secret is only looked for when it was not also sent there.
            let in_workspace_header = |secret: &str| {
                headers
                    .get_all(X_BLAXEL_WORKSPACE)
                    .iter()
                    .any(|v| v.as_bytes().windows(secret.len()).any(|w| w == secret.as_bytes()))
            };
            for secret in [VALID, EXPIRED, OTHER] {
                assert!(
                    !e.message.contains(secret) || in_workspace_header(secret),
                    "the error echoes a secret: {}",
                    e.message
                );
            }
        }
    }
}

/// `(kept parts, token values)` of a query, per the documentation, independently.
fn reference_query(query: &str) -> (Vec<&str>, Vec<String>) {
    let mut kept = Vec::new();
    let mut taken = Vec::new();
    for part in query.split('&') {
        let (name, value) = part.split_once('=').unwrap_or((part, ""));
        if form_decode(name).as_deref() == Some(TOKEN_PARAM) {
            taken.extend(form_decode(value));
        } else {
            kept.push(part);
        }
    }
    (kept, taken)
}

/// `(kept pairs, token values)` of the Cookie headers.
fn reference_cookies(headers: &HeaderMap) -> (Vec<Vec<u8>>, Vec<String>) {
    let mut kept = Vec::new();
    let mut taken = Vec::new();
    for value in headers.get_all(COOKIE) {
        for pair in value.as_bytes().split(|b| *b == b';').map(<[u8]>::trim_ascii).filter(|p| !p.is_empty()) {
            let eq = pair.iter().position(|b| *b == b'=');
            match eq {
                Some(i) if pair[..i].trim_ascii() == TOKEN_PARAM.as_bytes() => {
                    taken.push(String::from_utf8_lossy(pair[i + 1..].trim_ascii()).into_owned());
                }
                _ => kept.push(pair.to_vec()),
            }
        }
    }
    (kept, taken)
}

fn cookie_pairs(headers: &HeaderMap) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for value in headers.get_all(COOKIE) {
        out.extend(
            value
                .as_bytes()
                .split(|b| *b == b';')
                .map(<[u8]>::trim_ascii)
                .filter(|p| !p.is_empty())
                .map(<[u8]>::to_vec),
        );
    }
    out
}

fn check_preview_credentials(original_uri: Uri, original: HeaderMap) {
    let mut uri = original_uri.clone();
    let mut headers = original.clone();
    let presented = take_credentials(&mut uri, &mut headers);

    // Header: taken, trimmed, gone.
    let header_tokens: Vec<String> =
        original.get_all(&TOKEN_HEADER).iter().filter_map(|v| v.to_str().ok()).map(|s| s.trim().to_string()).collect();
    assert_eq!(presented.header, header_tokens);
    assert!(!headers.contains_key(&TOKEN_HEADER));

    // Query: the token parameters are gone, the rest is kept byte for byte.
    assert_eq!(uri.scheme(), original_uri.scheme());
    assert_eq!(uri.authority(), original_uri.authority());
    assert_eq!(uri.path(), original_uri.path());
    match original_uri.query() {
        Some(query) => {
            let (kept, taken) = reference_query(query);
            assert_eq!(presented.query, taken, "query {query:?}");
            if kept.len() == query.split('&').count() {
                assert_eq!(uri, original_uri, "nothing to take from {query:?}");
            } else {
                let kept = kept.join("&");
                let expected = if kept.is_empty() { None } else { Some(kept.as_str()) };
                assert_eq!(uri.query(), expected, "query {query:?} → {uri}");
            }
        }
        None => assert!(presented.query.is_empty() && uri == original_uri),
    }
    if let Some(query) = uri.query() {
        let (_, left) = reference_query(query);
        assert!(left.is_empty(), "a token is left in the query {query:?}");
    }

    // Cookies: the token cookie is gone, the other pairs are kept, in order.
    let (kept, taken) = reference_cookies(&original);
    assert_eq!(presented.cookie, taken, "cookies {:?}", original.get_all(COOKIE).iter().collect::<Vec<_>>());
    assert_eq!(cookie_pairs(&headers), kept, "cookies left");

    // Nothing else is touched.
    for (name, value) in &original {
        if name != COOKIE && name != TOKEN_HEADER {
            assert!(headers.get_all(name).iter().any(|v| v == value), "{name} changed");
        }
    }
    let others = |h: &HeaderMap| {
        let mut names: Vec<String> =
            h.keys().filter(|k| **k != COOKIE && **k != TOKEN_HEADER).map(|k| k.as_str().to_string()).collect();
        names.sort_unstable();
        names
    };
    assert_eq!(others(&headers), others(&original), "headers added or removed");
}
