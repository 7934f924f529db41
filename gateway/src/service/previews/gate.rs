//! What the HTTPS edge does for a request to a preview host, before and after proxying:
//!
//! - **Preflight**: an `OPTIONS` request with `Access-Control-Request-Method` to a preview whose
//!   `responseHeaders` define CORS (`Access-Control-Allow-Origin`) is answered here, 204 with
//!   those headers, without a token (browsers never send credentials on a preflight). Otherwise
//!   OPTIONS is forwarded like any request.
//! - **Credentials**: the preview token may come in `X-Blaxel-Preview-Token`, in the query
//!   parameter `bl_preview_token`, or in the cookie `bl_preview_token` set by the exchange
//!   below. All three are removed before forwarding (the rest of the query and the other
//!   cookies are kept byte for byte). A public preview needs none; a private one answers 401
//!   `AUTHENTICATION_REQUIRED` without any, `AUTHENTICATION_FAILED` when none is a live token.
//! - **Cookie exchange**: a GET/HEAD carrying a valid token in the query whose `Accept`
//!   explicitly lists `text/html` (browsers do, `*/*` does not) is answered 302 to the same URL
//!   without the token, with `Set-Cookie: bl_preview_token=…; Path=/; Max-Age=…; HttpOnly;
//!   Secure; SameSite=None; Partitioned` (no `Domain`: the cookie belongs to that preview host
//!   only). The cookie then authenticates every request, WebSocket upgrades included.
//! - **Headers**: `requestHeaders` are set on the upstream request (they replace the client's
//!   headers of the same name); `responseHeaders` are added to the response unless the app set
//!   the same header (so `Access-Control-Allow-Origin` never appears twice).

use super::registry::PreviewRegistry;
use crate::errors::{ApiError, ErrorCode, accept_ranges};
use crate::model::preview::Preview;
use crate::model::time;
use bytes::Bytes;
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Uri,
    header::{ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_REQUEST_METHOD, CACHE_CONTROL, COOKIE, LOCATION, SET_COOKIE},
};
use http_body_util::Full;

/// Header carrying a preview token.
pub const TOKEN_HEADER: HeaderName = HeaderName::from_static("x-blaxel-preview-token");
/// Query parameter (and cookie name) carrying a preview token.
pub const TOKEN_PARAM: &str = "bl_preview_token";

/// What the request presented, after its credentials were removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Presented {
    /// From `X-Blaxel-Preview-Token`.
    pub header: Vec<String>,
    /// From the query.
    pub query: Vec<String>,
    /// From the cookie.
    pub cookie: Vec<String>,
}

impl Presented {
    fn is_empty(&self) -> bool {
        self.header.is_empty() && self.query.is_empty() && self.cookie.is_empty()
    }
}

/// The edge's decision.
#[derive(Debug)]
pub enum Decision {
    /// Forward the request (its credentials already removed).
    Forward,
    /// Answer this instead (cookie exchange redirect, preflight).
    Answer(Response<Full<Bytes>>),
}

/// Answers a CORS preflight from `responseHeaders`, if they define CORS and this is one.
pub fn preflight(preview: &Preview, method: &Method, headers: &HeaderMap) -> Option<Response<Full<Bytes>>> {
    if method != Method::OPTIONS
        || !headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD)
        || !preview.response_headers.contains_key(ACCESS_CONTROL_ALLOW_ORIGIN.as_str())
    {
        return None;
    }
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::NO_CONTENT;
    merge_response_headers(r.headers_mut(), preview);
    Some(r)
}

/// Removes every preview credential from the request, returning what it carried.
pub fn take_credentials(uri: &mut Uri, headers: &mut HeaderMap) -> Presented {
    let mut presented = Presented::default();
    for v in headers.get_all(&TOKEN_HEADER) {
        if let Ok(s) = v.to_str() {
            presented.header.push(s.trim().to_string());
        }
    }
    headers.remove(&TOKEN_HEADER);
    if let Some(pq) = uri.path_and_query()
        && let Some(query) = pq.query()
    {
        let (kept, taken, removed) = split_query(query);
        presented.query = taken;
        if removed {
            let rebuilt = if kept.is_empty() { pq.path().to_string() } else { format!("{}?{kept}", pq.path()) };
            let mut parts = uri.clone().into_parts();
            if let Ok(pq) = rebuilt.parse() {
                parts.path_and_query = Some(pq);
                if let Ok(u) = Uri::from_parts(parts) {
                    *uri = u;
                }
            }
        }
    }
    // Cookie values are read as bytes: a value with obs-text (not `to_str`) must lose its token
    // too, and keeps its other cookies byte for byte.
    if headers.contains_key(COOKIE) {
        let mut kept: Vec<&[u8]> = Vec::new();
        for value in headers.get_all(COOKIE) {
            for pair in value.as_bytes().split(|b| *b == b';').map(<[u8]>::trim_ascii).filter(|p| !p.is_empty()) {
                match pair.iter().position(|b| *b == b'=') {
                    Some(eq) if pair[..eq].trim_ascii() == TOKEN_PARAM.as_bytes() => {
                        presented.cookie.push(String::from_utf8_lossy(pair[eq + 1..].trim_ascii()).into_owned());
                    }
                    _ => kept.push(pair),
                }
            }
        }
        let rebuilt = if kept.is_empty() { None } else { HeaderValue::from_bytes(&kept.join(&b"; "[..])).ok() };
        headers.remove(COOKIE);
        if let Some(v) = rebuilt {
            headers.insert(COOKIE, v);
        }
    }
    presented
}

/// Splits a query into (the query without `bl_preview_token`, the token values, whether any
/// parameter was removed). The kept part is the original text minus those parameters, nothing
/// re-encoded; a token parameter whose value does not decode is removed too.
fn split_query(query: &str) -> (String, Vec<String>, bool) {
    let mut kept = Vec::new();
    let mut taken = Vec::new();
    let mut removed = false;
    for part in query.split('&') {
        let (name, value) = part.split_once('=').unwrap_or((part, ""));
        if percent_decode(name).as_deref() == Some(TOKEN_PARAM) {
            removed = true;
            taken.extend(percent_decode(value));
        } else {
            kept.push(part);
        }
    }
    (kept.join("&"), taken, removed)
}

/// `application/x-www-form-urlencoded` decoding of one component (`+` is a space), strict: a `%`
/// not followed by two hex digits, or a result that is not UTF-8, is no value at all
/// (`percent_decode_str` alone would pass a stray `%` through).
fn percent_decode(s: &str) -> Option<String> {
    let escapes_valid =
        s.split('%').skip(1).all(|rest| rest.as_bytes().get(..2).is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)));
    if !escapes_valid {
        return None;
    }
    let spaced = s.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced).decode_utf8().ok().map(std::borrow::Cow::into_owned)
}

/// Whether `Accept` explicitly lists `text/html` (with a non-zero q).
pub fn accepts_html_explicitly(headers: &HeaderMap) -> bool {
    accept_ranges(headers).any(|(media, q)| media == "text/html" && q > 0.0)
}

/// Decides a request to `preview`: credentials are taken off the request first, whatever the
/// outcome. `uri` must be the request's URI (origin form for HTTP/1.1, absolute for HTTP/2).
pub fn authorize(
    preview: &Preview,
    method: &Method,
    uri: &mut Uri,
    headers: &mut HeaderMap,
) -> Result<Decision, ApiError> {
    let presented = take_credentials(uri, headers);
    if preview.public {
        return Ok(Decision::Forward);
    }
    if presented.is_empty() {
        return Err(ApiError::new(
            ErrorCode::AuthenticationRequired,
            format!(
                "this preview is private: send a preview token in the X-Blaxel-Preview-Token header or the {TOKEN_PARAM} query parameter"
            ),
        ));
    }
    let valid = |list: &[String]| list.iter().find(|t| PreviewRegistry::token_valid(preview, t)).cloned();
    let from_query = valid(&presented.query);
    if from_query.is_none() && valid(&presented.header).is_none() && valid(&presented.cookie).is_none() {
        return Err(ApiError::new(
            ErrorCode::AuthenticationFailed,
            "invalid preview token (unknown, expired or revoked)",
        ));
    }
    if let Some(token) = from_query
        && (method == Method::GET || method == Method::HEAD)
        && accepts_html_explicitly(headers)
    {
        return Ok(Decision::Answer(exchange(preview, &token, uri)));
    }
    Ok(Decision::Forward)
}

/// The 302 that trades a query token for a cookie scoped to this preview host.
fn exchange(preview: &Preview, token: &str, uri: &Uri) -> Response<Full<Bytes>> {
    let now = time::now();
    let token_end = preview.tokens.iter().find(|t| t.token == token).map(|t| t.expires_at);
    let max_age = token_end.map_or(0, |end| time::until(end, now).as_secs());
    let location = uri.path_and_query().map_or("/", |pq| pq.as_str()).to_string();
    let cookie =
        format!("{TOKEN_PARAM}={token}; Path=/; Max-Age={max_age}; HttpOnly; Secure; SameSite=None; Partitioned");
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::FOUND;
    if let Ok(v) = HeaderValue::from_str(&location) {
        r.headers_mut().insert(LOCATION, v);
    }
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(SET_COOKIE, v);
    }
    r.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r.headers_mut().insert(http::header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    r
}

/// Sets the preview's `requestHeaders` (replacing the client's of the same name).
pub fn apply_request_headers(headers: &mut HeaderMap, preview: &Preview) {
    for (name, value) in &preview.request_headers {
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value)) {
            headers.insert(n, v);
        }
    }
}

/// Adds the preview's `responseHeaders` the app did not set itself.
pub fn merge_response_headers(headers: &mut HeaderMap, preview: &Preview) {
    for (name, value) in &preview.response_headers {
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value))
            && !headers.contains_key(&n)
        {
            headers.insert(n, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn preview(public: bool) -> Preview {
        let now = time::now();
        Preview {
            workspace: "ws".into(),
            sandbox: "app".into(),
            name: "web".into(),
            id: "abc".into(),
            port: 3000,
            public,
            prefix_url: None,
            request_headers: [("authorization".to_string(), "Bearer app".to_string())].into(),
            response_headers: [("access-control-allow-origin".to_string(), "*".to_string())].into(),
            ttl: None,
            expires_at: None,
            created_at: now,
            tokens: vec![],
        }
    }

    #[test]
    fn credentials_are_taken_and_the_rest_is_kept() {
        let mut uri: Uri = "/a/b?x=1&bl_preview_token=tok%2B1&y=%20z&bl%5Fpreview%5Ftoken=two".parse().expect("uri");
        let mut h = HeaderMap::new();
        h.insert(TOKEN_HEADER, HeaderValue::from_static("hdr"));
        h.append(COOKIE, HeaderValue::from_static("a=1; bl_preview_token=ck"));
        h.append(COOKIE, HeaderValue::from_static("b=2"));
        let p = take_credentials(&mut uri, &mut h);
        assert_eq!(p.header, vec!["hdr"]);
        assert_eq!(p.query, vec!["tok+1", "two"]);
        assert_eq!(p.cookie, vec!["ck"]);
        assert_eq!(uri.to_string(), "/a/b?x=1&y=%20z");
        assert!(!h.contains_key(&TOKEN_HEADER));
        assert_eq!(h.get(COOKIE).and_then(|v| v.to_str().ok()), Some("a=1; b=2"));

        let mut uri: Uri = "https://h.example/p?bl_preview_token=t".parse().expect("uri");
        let mut h = HeaderMap::new();
        h.insert(COOKIE, HeaderValue::from_static("bl_preview_token=x"));
        let p = take_credentials(&mut uri, &mut h);
        assert_eq!(uri.to_string(), "https://h.example/p");
        assert_eq!((p.query.len(), p.cookie.len()), (1, 1));
        assert!(!h.contains_key(COOKIE));
    }

    /// Found by `cargo xtask fuzz credentials` (inputs in fuzz/corpus/credentials/regression-*).
    #[test]
    fn no_token_survives_odd_encodings() {
        // A Cookie value with obs-text kept its token cookie (forwarded to the app).
        let mut uri: Uri = "/".parse().expect("uri");
        let mut h = HeaderMap::new();
        h.insert(COOKIE, HeaderValue::from_bytes(b"bl_preview_token=secret; x=\xe9").expect("obs-text"));
        let p = take_credentials(&mut uri, &mut h);
        assert_eq!(p.cookie, vec!["secret"]);
        assert_eq!(h.get(COOKIE).map(HeaderValue::as_bytes), Some(&b"x=\xe9"[..]));
        // A token parameter whose value does not decode stayed in the query.
        let mut uri: Uri = "/p?bl_preview_token=%zz&k=v".parse().expect("uri");
        let p = take_credentials(&mut uri, &mut HeaderMap::new());
        assert!(p.query.is_empty());
        assert_eq!(uri.to_string(), "/p?k=v");
        // `%+1` was decoded as byte 1 (a sign taken as a hex digit).
        let mut uri: Uri = "/p?bl_preview_token=%+1".parse().expect("uri");
        assert!(take_credentials(&mut uri, &mut HeaderMap::new()).query.is_empty());
        assert_eq!(uri.to_string(), "/p");
    }

    #[test]
    fn form_components_decode_strictly() {
        assert_eq!(percent_decode("a+b%2B%41%c3%A9").as_deref(), Some("a b+A\u{e9}"));
        assert_eq!(percent_decode("").as_deref(), Some(""));
        for bad in ["%", "%4", "%zz", "%+1", "a%4g", "%%41", "%41%", "%ff"] {
            assert_eq!(percent_decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn html_must_be_listed_explicitly() {
        let accept = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(http::header::ACCEPT, HeaderValue::from_static(v));
            accepts_html_explicitly(&h)
        };
        assert!(accept("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"));
        assert!(accept("TEXT/HTML"));
        assert!(!accept("*/*"));
        assert!(!accept("text/*"));
        assert!(!accept("application/json"));
        assert!(!accept("text/html;q=0"));
        assert!(!accepts_html_explicitly(&HeaderMap::new()));
    }

    #[test]
    fn headers_win_or_merge() {
        let p = preview(true);
        let mut req = HeaderMap::new();
        req.insert("authorization", HeaderValue::from_static("Bearer client"));
        apply_request_headers(&mut req, &p);
        assert_eq!(req.get_all("authorization").iter().count(), 1);
        assert_eq!(req.get("authorization").and_then(|v| v.to_str().ok()), Some("Bearer app"));
        let mut resp = HeaderMap::new();
        resp.insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("https://app.example"));
        merge_response_headers(&mut resp, &p);
        assert_eq!(resp.get_all(ACCESS_CONTROL_ALLOW_ORIGIN).iter().count(), 1);
        assert_eq!(resp.get(ACCESS_CONTROL_ALLOW_ORIGIN).and_then(|v| v.to_str().ok()), Some("https://app.example"));
        let mut resp = HeaderMap::new();
        merge_response_headers(&mut resp, &p);
        assert_eq!(resp.get(ACCESS_CONTROL_ALLOW_ORIGIN).and_then(|v| v.to_str().ok()), Some("*"));
    }

    #[test]
    fn preflights_are_answered_only_with_cors() {
        let mut h = HeaderMap::new();
        h.insert(ACCESS_CONTROL_REQUEST_METHOD, HeaderValue::from_static("POST"));
        let r = preflight(&preview(false), &Method::OPTIONS, &h).expect("answered");
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        assert_eq!(r.headers().get(ACCESS_CONTROL_ALLOW_ORIGIN).and_then(|v| v.to_str().ok()), Some("*"));
        assert!(preflight(&preview(false), &Method::OPTIONS, &HeaderMap::new()).is_none(), "plain OPTIONS");
        assert!(preflight(&preview(false), &Method::GET, &h).is_none());
        let mut no_cors = preview(false);
        no_cors.response_headers.clear();
        assert!(preflight(&no_cors, &Method::OPTIONS, &h).is_none(), "forwarded");
    }
}
