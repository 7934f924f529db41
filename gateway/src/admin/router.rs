//! Admin request handling: authentication, routing, bodies, JSON answers.

use super::BODY_LIMIT;
use crate::{
    errors::{ApiError, ErrorCode},
    json_api::{JsonResponse, error_response, json, no_content, parse_json, read_body},
    service::tokens::{TokenRequest, TokenView},
    service::{App, SandboxSpec, SandboxView},
    telemetry::metrics,
};
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use serde::Serialize;
use std::time::Instant;
use subtle::ConstantTimeEq;

/// What a path names.
#[derive(Clone, Debug, PartialEq, Eq)]
enum AdminRoute<'a> {
    Live,
    Ready,
    Metrics,
    ListAll,
    List(&'a str),
    Sandbox(&'a str, &'a str),
    Policy(&'a str, &'a str),
    Tokens(&'a str),
    Token(&'a str, &'a str),
    /// This fleet member and the fleet's hosts.
    Fleet,
    /// Previews, their tokens, sessions (`super::previews`).
    Preview(super::previews::PreviewRoute),
}

impl AdminRoute<'_> {
    fn parse(path: &str) -> Option<AdminRoute<'_>> {
        let rest = path.strip_prefix('/')?;
        let segments: Vec<&str> = rest.split('/').collect();
        Some(match segments.as_slice() {
            ["live"] => AdminRoute::Live,
            ["ready"] => AdminRoute::Ready,
            ["metrics"] => AdminRoute::Metrics,
            ["v1", "sandboxes"] => AdminRoute::ListAll,
            ["v1", "workspaces", ws, "sandboxes"] => AdminRoute::List(ws),
            ["v1", "workspaces", ws, "sandboxes", name] => AdminRoute::Sandbox(ws, name),
            ["v1", "workspaces", ws, "sandboxes", name, "policy"] => AdminRoute::Policy(ws, name),
            ["v1", "workspaces", ws, "tokens"] => AdminRoute::Tokens(ws),
            ["v1", "workspaces", ws, "tokens", name] => AdminRoute::Token(ws, name),
            ["v1", "fleet"] => AdminRoute::Fleet,
            _ => return super::previews::PreviewRoute::parse(&segments).map(AdminRoute::Preview),
        })
    }

    fn methods(&self) -> &'static [Method] {
        match self {
            AdminRoute::Sandbox(..) => &[Method::GET, Method::PUT, Method::DELETE],
            AdminRoute::Tokens(..) => &[Method::GET, Method::POST],
            AdminRoute::Token(..) => &[Method::GET, Method::DELETE],
            AdminRoute::Preview(r) => r.methods(),
            _ => &[Method::GET],
        }
    }

    fn needs_token(&self) -> bool {
        !matches!(self, AdminRoute::Live | AdminRoute::Ready | AdminRoute::Metrics)
    }
}

/// Handles one request; never fails (errors are answered as JSON) and logs it.
pub async fn handle(app: &App, req: Request<Incoming>, require_token: bool) -> JsonResponse {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let response = match dispatch(app, req, require_token).await {
        Ok(r) => r,
        Err(e) => error_response(&e),
    };
    tracing::info!(
        target: "gateway::admin",
        method = %method,
        path = %path,
        status = response.status().as_u16(),
        duration_us = started.elapsed().as_micros() as u64,
        "admin request"
    );
    response
}

async fn dispatch(app: &App, req: Request<Incoming>, require_token: bool) -> Result<JsonResponse, ApiError> {
    let route = AdminRoute::parse(req.uri().path());
    // Authenticate before saying anything about paths.
    if require_token && route.as_ref().is_none_or(AdminRoute::needs_token) {
        authenticate(app, &req)?;
    }
    let Some(route) = route else {
        return Err(ApiError::new(ErrorCode::RouteNotFound, format!("no admin route for {}", req.uri().path())));
    };
    if !route.methods().contains(req.method()) {
        let allowed = allow(&route);
        let e = ApiError::new(
            ErrorCode::MethodNotAllowed,
            format!("{} is not allowed on {} (allowed: {allowed})", req.method(), req.uri().path()),
        );
        let mut r = error_response(&e);
        if let Ok(v) = HeaderValue::from_str(&allowed) {
            r.headers_mut().insert(header::ALLOW, v);
        }
        return Ok(r);
    }
    match (route, req.method().clone()) {
        (AdminRoute::Live, _) => json(
            StatusCode::OK,
            &serde_json::json!({"status": "live", "pid": std::process::id(), "version": env!("CARGO_PKG_VERSION")}),
        ),
        (AdminRoute::Ready, _) if app.is_ready() => json(StatusCode::OK, &serde_json::json!({"status": "ready"})),
        (AdminRoute::Ready, _) => json(StatusCode::SERVICE_UNAVAILABLE, &serde_json::json!({"status": "starting"})),
        (AdminRoute::Metrics, _) => Ok(metrics_response()),
        (AdminRoute::ListAll, _) => list(app, None),
        (AdminRoute::Fleet, _) => match app.fleet_view() {
            Some(view) => json(StatusCode::OK, &view),
            None => Err(ApiError::new(
                ErrorCode::RouteNotFound,
                "this gateway is not a fleet member (fleet.etcd is empty): there is no fleet to describe",
            )),
        },
        (AdminRoute::List(ws), _) => list(app, Some(ws)),
        (AdminRoute::Sandbox(ws, name), Method::GET) => {
            let sandbox = app.get(ws, name)?;
            json(StatusCode::OK, &app.view(&sandbox, None))
        }
        (AdminRoute::Sandbox(ws, name), Method::PUT) => {
            let (ws, name) = (ws.to_string(), name.to_string());
            let body = read_body(req, BODY_LIMIT).await?;
            let spec: SandboxSpec = parse_json(&body)?;
            let (sandbox, applied) = app.put_sandbox(&ws, &name, spec).await?;
            json(StatusCode::OK, &app.view(&sandbox, Some(applied)))
        }
        (AdminRoute::Sandbox(ws, name), Method::DELETE) => {
            app.delete_sandbox(ws, name).await?;
            Ok(no_content())
        }
        (AdminRoute::Policy(ws, name), _) => json(StatusCode::OK, &app.policy(ws, name).await?),
        (AdminRoute::Tokens(ws), Method::GET) => {
            #[derive(Serialize)]
            struct List {
                tokens: Vec<TokenView>,
            }
            json(StatusCode::OK, &List { tokens: app.list_tokens(ws)? })
        }
        (AdminRoute::Tokens(ws), Method::POST) => {
            let ws = ws.to_string();
            let body = read_body(req, BODY_LIMIT).await?;
            let request: TokenRequest = parse_json(&body)?;
            let created = app.create_token(&ws, request).await?;
            let mut r = json(StatusCode::CREATED, &created)?;
            // The secret is in this answer, and only in this one.
            r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            if let Ok(v) = HeaderValue::from_str(&format!("/v1/workspaces/{ws}/tokens/{}", created.name)) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            Ok(r)
        }
        (AdminRoute::Token(ws, name), Method::GET) => json(StatusCode::OK, &app.get_token(ws, name)?),
        (AdminRoute::Token(ws, name), Method::DELETE) => {
            app.revoke_token(ws, name).await?;
            Ok(no_content())
        }
        (AdminRoute::Preview(r), _) => super::previews::handle(app, r, req).await,
        (AdminRoute::Sandbox(..) | AdminRoute::Tokens(..) | AdminRoute::Token(..), _) => {
            Err(ApiError::new(ErrorCode::MethodNotAllowed, "method not allowed"))
        }
    }
}

/// `GET /metrics`: the Prometheus text exposition; the eBPF counters are read at this moment.
fn metrics_response() -> JsonResponse {
    let mut r = Response::new(Full::new(Bytes::from(metrics::global().encode())));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(metrics::CONTENT_TYPE));
    r
}

fn allow(route: &AdminRoute<'_>) -> String {
    route.methods().iter().map(Method::as_str).collect::<Vec<_>>().join(", ")
}

fn list(app: &App, workspace: Option<&str>) -> Result<JsonResponse, ApiError> {
    #[derive(Serialize)]
    struct List {
        sandboxes: Vec<SandboxView>,
    }
    let sandboxes = app.list(workspace)?.iter().map(|s| app.view(s, None)).collect();
    json(StatusCode::OK, &List { sandboxes })
}

/// Checks `Authorization: Bearer <admin.token>` in constant time.
fn authenticate(app: &App, req: &Request<Incoming>) -> Result<(), ApiError> {
    let Some(value) = req.headers().get(header::AUTHORIZATION) else {
        return Err(ApiError::new(
            ErrorCode::AuthenticationRequired,
            "the admin API needs `Authorization: Bearer <admin.token>`",
        ));
    };
    let failed = || ApiError::new(ErrorCode::AuthenticationFailed, "invalid admin token");
    let value = value.as_bytes();
    let token = match value.get(..7) {
        Some(scheme) if scheme.eq_ignore_ascii_case(b"bearer ") => value[7..].trim_ascii(),
        _ => return Err(failed()),
    };
    let config = app.config();
    // Validation refuses a TCP listener without a usable secret; this is the last line.
    let Some(expected) = config.admin.tcp_secret() else { return Err(failed()) };
    if bool::from(token.ct_eq(expected.as_bytes())) { Ok(()) } else { Err(failed()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(AdminRoute::parse("/live"), Some(AdminRoute::Live));
        assert_eq!(AdminRoute::parse("/metrics"), Some(AdminRoute::Metrics));
        assert_eq!(AdminRoute::parse("/v1/workspaces/w/sandboxes"), Some(AdminRoute::List("w")));
        assert_eq!(AdminRoute::parse("/v1/workspaces/w/sandboxes/n"), Some(AdminRoute::Sandbox("w", "n")));
        assert_eq!(AdminRoute::parse("/v1/workspaces/w/sandboxes/n/policy"), Some(AdminRoute::Policy("w", "n")));
        assert_eq!(AdminRoute::parse("/v1/workspaces/w/sandboxes/"), Some(AdminRoute::Sandbox("w", "")));
        assert_eq!(AdminRoute::parse("/v1/workspaces/w/tokens"), Some(AdminRoute::Tokens("w")));
        assert_eq!(AdminRoute::parse("/v1/workspaces/w/tokens/ci"), Some(AdminRoute::Token("w", "ci")));
        assert_eq!(AdminRoute::parse("/v1/workspaces/w/tokens/ci/x"), None);
        assert_eq!(AdminRoute::parse("/v2"), None);
        assert_eq!(AdminRoute::parse("/v1/workspaces/w/sandboxes/n/x"), None);
    }
}
