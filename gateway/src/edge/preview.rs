//! Preview hosts (`{id}.{region}.preview.{domain}`, `{id}.preview.{domain}`) and the public API
//! host (`api.{domain}`) on the HTTPS edge: their routing, which hands those requests to
//! [`crate::service::previews::gate`] and [`crate::compat`] and ends in a [`Routed`] like a sandbox host's
//! (a preview is then forwarded by the same step as a sandbox host, in `request`).
//!
//! A preview request: the live preview by host label (an unknown or expired one answers 404
//! `ROUTE_NOT_FOUND` at once) → CORS preflight from `responseHeaders` → preview token (header,
//! query or cookie; removed) or the cookie exchange → route: the preview's port with the path
//! unchanged, or, for a preview on 443 (a session), `/port/{N}/…` exactly as on the sandbox host
//! and every other path to the sandbox API → proxy with `requestHeaders` set after the
//! client's credentials were removed → `responseHeaders` added where the app set none.

use super::{
    Edge, EdgeBody,
    fleet::{Vouch, VouchedAuth},
    request::{Routed, Upstream, path_and_query},
    route::{self, Route},
};
use crate::{
    errors::{ApiError, ErrorCode},
    model::sandbox::PortProtocol,
    service::previews::gate::{self, Decision},
    telemetry::{access::RequestLog, metrics::RouteKind},
};
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

/// A complete answer as an edge body.
fn boxed(r: Response<Full<Bytes>>) -> Response<EdgeBody> {
    r.map(|b| b.map_err(|never| match never {}).boxed())
}

impl Edge {
    /// `api.{domain}`: the Blaxel-compatible `/v0` API, answered by the gateway itself.
    pub(super) async fn api_host(&self, req: Request<Incoming>) -> Response<EdgeBody> {
        boxed(crate::compat::handle(&self.app, req).await)
    }

    /// A request to the preview host `{id}.…` (`name`, normalised).
    pub(super) fn preview_host(
        &self,
        name: &str,
        id: &str,
        req: Request<Incoming>,
        log: &mut RequestLog,
    ) -> Result<Routed, ApiError> {
        log.route = RouteKind::Preview;
        let not_found = || ApiError::new(ErrorCode::RouteNotFound, format!("no preview answers at {name:?}"));
        let preview = self.app.preview_by_host_label(id).ok_or_else(not_found)?;
        let sandbox = self.app.get(&preview.workspace, &preview.sandbox).map_err(|_| not_found())?;
        log.sandbox = Some(sandbox.clone());
        // From a fleet peer, which answered the preflight and checked the preview's token.
        let vouched = match req.extensions().get::<Vouch>() {
            Some(Vouch { auth: VouchedAuth::Preview, .. }) => true,
            Some(_) => return Err(ApiError::new(ErrorCode::Forbidden, "a workspace token does not open a preview")),
            None => false,
        };
        if !vouched && let Some(answer) = gate::preflight(&preview, req.method(), req.headers()) {
            return Ok(Routed::Answer(boxed(answer)));
        }
        if !preview.public {
            self.app.check_fresh()?;
        }
        let (mut parts, body) = req.into_parts();
        if !vouched
            && let Decision::Answer(answer) =
                gate::authorize(&preview, &parts.method, &mut parts.uri, &mut parts.headers)?
        {
            return Ok(Routed::Answer(boxed(answer)));
        }
        let path_and_query = path_and_query(&parts.method, &parts.uri)?.to_string();
        let route = if preview.is_sandbox_api() {
            route::resolve(route::parse_target(&path_and_query)?, &sandbox, &path_and_query)?
        } else {
            let protocol =
                sandbox.ports.iter().find(|p| p.target == preview.port).map_or(PortProtocol::Http, |p| p.protocol);
            Route { port: preview.port, protocol, path_and_query }
        };
        let set_headers = preview
            .request_headers
            .iter()
            .filter_map(|(n, v)| Some((HeaderName::from_bytes(n.as_bytes()).ok()?, HeaderValue::from_str(v).ok()?)))
            .collect();
        Ok(Routed::Forward(
            Box::new(Upstream {
                set_headers,
                response_filter: Some(Box::new(move |h| gate::merge_response_headers(h, &preview))),
                ..Upstream::new(sandbox, route)
            }),
            Request::from_parts(parts, body),
        ))
    }
}
