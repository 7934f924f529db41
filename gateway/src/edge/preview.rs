//! Preview hosts (`{id}.{region}.preview.{domain}`, `{id}.preview.{domain}`) and the public API
//! host (`api.{domain}`) on the HTTPS edge: the hooks that hand those requests to
//! [`crate::service::previews::gate`] and [`crate::compat`] and then to the same proxy as sandbox hosts.
//!
//! A preview request: the live preview by host label (an unknown or expired one answers 404
//! `ROUTE_NOT_FOUND` at once) → CORS preflight from `responseHeaders` → preview token (header,
//! query or cookie; removed) or the cookie exchange → route: the preview's port with the path
//! unchanged, or, for a preview on 443 (a session), `/port/{N}/…` exactly as on the sandbox host
//! and every other path to the sandbox API → proxy with `requestHeaders` set after the
//! client's credentials were removed → `responseHeaders` added where the app set none.

use super::{
    ConnInfo, Edge, EdgeBody, headers,
    host::RequestHost,
    proxy::Outbound,
    route::{self, Route},
    too_many,
};
use crate::{
    errors::{ApiError, ErrorCode},
    model::sandbox::PortProtocol,
    service::previews::gate::{self, Decision},
    telemetry::{
        access::RequestLog,
        metrics::{self, RouteKind},
    },
};
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

/// A complete answer as an edge body.
fn boxed(r: Response<Full<Bytes>>) -> Response<EdgeBody> {
    r.map(|b| b.map_err(|never| match never {}).boxed())
}

impl Edge {
    /// `api.{domain}`: the Blaxel-compatible `/v0` API.
    pub(super) async fn public_api(
        &self,
        req: Request<Incoming>,
        log: &mut RequestLog,
    ) -> Result<Response<EdgeBody>, ApiError> {
        log.route = RouteKind::Api;
        Ok(boxed(crate::compat::handle(&self.app, req).await))
    }

    /// A request to a preview host.
    pub(super) async fn preview(
        &self,
        conn: &ConnInfo,
        host: RequestHost,
        id: &str,
        req: Request<Incoming>,
        log: &mut RequestLog,
    ) -> Result<Response<EdgeBody>, ApiError> {
        log.route = RouteKind::Preview;
        let not_found = || ApiError::new(ErrorCode::RouteNotFound, format!("no preview answers at {:?}", host.name));
        let preview = self.app.preview_by_host_label(id).ok_or_else(not_found)?;
        let sandbox = self.app.get(&preview.workspace, &preview.sandbox).map_err(|_| not_found())?;
        log.workspace = Some(preview.workspace.clone());
        log.sandbox = Some(preview.sandbox.clone());
        if let Some(answer) = gate::preflight(&preview, req.method(), req.headers()) {
            return Ok(boxed(answer));
        }
        let (mut parts, body) = req.into_parts();
        if let Decision::Answer(answer) =
            gate::authorize(&self.app, &preview, &parts.method, &mut parts.uri, &mut parts.headers)?
        {
            return Ok(boxed(answer));
        }
        let path_and_query = match parts.uri.path_and_query() {
            Some(pq) if pq.as_str().starts_with('/') => pq.as_str().to_string(),
            None if parts.method != Method::CONNECT => "/".to_string(),
            _ => return Err(ApiError::new(ErrorCode::BadRequest, "the request target must be an absolute path")),
        };
        let route = if preview.is_sandbox_api() {
            route::resolve(route::parse_target(&path_and_query)?, &sandbox, &path_and_query)?
        } else {
            let protocol =
                sandbox.ports.iter().find(|p| p.target == preview.port).map_or(PortProtocol::Http, |p| p.protocol);
            Route { port: preview.port, protocol, path_and_query }
        };
        log.port = Some(route.port);
        let slot = self.limits.sandbox_slot(sandbox.address).ok_or_else(|| {
            too_many(format!(
                "sandbox {:?} has its maximum of {} concurrent requests in flight; retry later",
                sandbox.name,
                self.app.config().proxy.max_connections_per_sandbox
            ))
        })?;
        tracing::trace!(preview = %preview.key(), port = route.port, "routed");
        let set_headers = preview
            .request_headers
            .iter()
            .filter_map(|(n, v)| Some((HeaderName::from_bytes(n.as_bytes()).ok()?, HeaderValue::from_str(v).ok()?)))
            .collect();
        let out = Outbound {
            upstream_host: headers::upstream_host(self.host_policy, &host.raw, route.port),
            peer: conn.peer,
            client_host: host.raw,
            trusted: headers::is_trusted(conn.peer.ip(), &self.trusted),
            sandbox,
            route,
            slot,
            set_headers,
        };
        let sent = std::time::Instant::now();
        let mut response = self.proxy.forward(Request::from_parts(parts, body), out).await?;
        metrics::global().upstream_latency(RouteKind::Preview, sent.elapsed());
        gate::merge_response_headers(response.headers_mut(), &preview);
        Ok(response)
    }
}
