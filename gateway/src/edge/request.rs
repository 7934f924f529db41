//! One request through the edge, in phases:
//!
//! 1. request filter ([`Edge::route`]): the connection cap, the host, the certificate check,
//!    then the host kind's own routing — [`Edge::sandbox_host`] here, [`Edge::preview_host`]
//!    in `preview` — which authenticates, fills the access-log fields it learns, and ends in a
//!    [`Routed`]: an answer of the edge itself, the `/v0` API ([`Edge::api_host`]), or an
//!    [`Upstream`];
//! 2. upstream and proxy ([`Edge::forward`], the same for every host kind): the sandbox's
//!    concurrency slot (else 429), the forwarding facts, [`Proxy::prepare`]; then
//!    [`Forward::send`]: the exchange, the upstream latency metric, the upstream's response
//!    filter;
//! 3. logging: `Edge::handle` renders errors and hands the response to the access log.
//!
//! Everything up to the exchange is synchronous, and `Edge::handle` awaits the exchange
//! itself: each `async` layer between them would be copied whole into its caller per request.
//!
//! [`Proxy::prepare`]: super::proxy::Proxy::prepare

use super::{
    ConnInfo, Edge, EdgeBody,
    fleet::{PeerRoute, Vouch, VouchedAuth},
    headers, host,
    host::HostKind,
    proxy::{Exchange, Outbound},
    route,
    route::Route,
    too_many,
};
use crate::{
    auth,
    errors::{ApiError, ErrorCode},
    model::sandbox::Sandbox,
    telemetry::{
        access::RequestLog,
        metrics::{self, RouteKind},
    },
};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, Uri};
use hyper::body::Incoming;
use std::{sync::Arc, time::Instant};

/// What routing decided for a request.
pub(super) enum Routed {
    /// The edge answers itself (a preview's CORS preflight or cookie exchange).
    Answer(Response<EdgeBody>),
    /// The `/v0` API answers ([`Edge::api_host`]).
    Api(Request<Incoming>),
    /// The request goes to an app in a sandbox (the upstream boxed to keep the variants of
    /// similar size).
    Forward(Box<Upstream>, Request<Incoming>),
}

/// A request on its way to an app, ready to be sent ([`Edge::forward`]).
pub(super) struct Forward<'a> {
    exchange: Exchange<'a>,
    route: RouteKind,
    response_filter: Option<ResponseFilter>,
}

impl Forward<'_> {
    /// Sends the request; counts the upstream latency; filters the app's response headers.
    pub async fn send(self) -> Result<Response<EdgeBody>, ApiError> {
        let sent = Instant::now();
        let mut response = self.exchange.send().await?;
        metrics::global().upstream_latency(self.route, sent.elapsed());
        if let Some(filter) = self.response_filter {
            filter(response.headers_mut());
        }
        Ok(response)
    }
}

/// Changes the app's response headers.
pub(super) type ResponseFilter = Box<dyn FnOnce(&mut HeaderMap) + Send>;

/// Where a routed request goes and how it is rewritten on the way.
pub(super) struct Upstream {
    pub sandbox: Arc<Sandbox>,
    /// The port, its protocol and the request target the app sees.
    pub route: Route,
    /// Headers set on the upstream request after the client's credentials were removed (a
    /// preview's `requestHeaders`).
    pub set_headers: Vec<(HeaderName, HeaderValue)>,
    /// Applied to the app's response headers (a preview's `responseHeaders`).
    pub response_filter: Option<ResponseFilter>,
}

impl Upstream {
    /// To `route` of `sandbox`, the request otherwise unchanged.
    pub fn new(sandbox: Arc<Sandbox>, route: Route) -> Self {
        Self { sandbox, route, set_headers: Vec::new(), response_filter: None }
    }
}

/// The request target as an absolute path (`/` for an empty one), or 400.
pub(super) fn path_and_query<'a>(method: &Method, uri: &'a Uri) -> Result<&'a str, ApiError> {
    match uri.path_and_query() {
        Some(pq) if pq.as_str().starts_with('/') => Ok(pq.as_str()),
        None if method != Method::CONNECT => Ok("/"),
        _ => Err(ApiError::new(ErrorCode::BadRequest, "the request target must be an absolute path")),
    }
}

impl Edge {
    /// The request filter: what every request passes, then the routing of its host's kind.
    /// Returns the host as the client sent it with the decision.
    pub(super) fn route(
        &self,
        conn: &ConnInfo,
        req: Request<Incoming>,
        log: &mut RequestLog,
    ) -> Result<(Routed, String), ApiError> {
        if conn.reject {
            return Err(too_many(format!(
                "the gateway is serving its maximum of {} connections; retry later",
                self.max_connections
            )));
        }
        let host = host::request_host(req.uri(), req.headers())?;
        if req.version() == http::Version::HTTP_2 {
            host::check_h2_host(&host, req.headers())?;
        }
        // A fleet peer's connection is not the client's: its certificate is the fleet's.
        if conn.fleet.is_none() && !conn.cert.covers(&host.name) {
            return Err(ApiError::new(
                ErrorCode::MisdirectedRequest,
                format!(
                    "host {:?} is not served on this connection: its certificate covers {}",
                    host.name,
                    conn.cert.names().join(", ")
                ),
            ));
        }
        let routed = match host::classify(&host.name, &self.zones) {
            HostKind::Sandbox(label) => self.sandbox_host(&host.name, label, req, log)?,
            HostKind::Api => {
                log.route = RouteKind::Api;
                Routed::Api(req)
            }
            HostKind::Preview(id) => self.preview_host(&host.name, id, req, log)?,
            HostKind::Other => {
                return Err(ApiError::new(ErrorCode::RouteNotFound, format!("no route for host {:?}", host.name)));
            }
        };
        Ok((routed, host.raw))
    }

    /// `{label}.{region}.{domain}`: the sandbox by label (exact), `/port/{N}/…` or the sandbox
    /// API, the workspace token. Path errors come before authentication (they reveal nothing
    /// about the sandbox); an undeclared port only after (its error lists the declared ones).
    fn sandbox_host(
        &self,
        name: &str,
        label: &str,
        req: Request<Incoming>,
        log: &mut RequestLog,
    ) -> Result<Routed, ApiError> {
        let sandbox = self
            .app
            .sandbox_by_label(label)
            .ok_or_else(|| ApiError::new(ErrorCode::WorkloadNotFound, format!("no sandbox answers at {name:?}")))?;
        let path_and_query = path_and_query(req.method(), req.uri())?;
        log.sandbox = Some(sandbox.clone());
        let target = route::parse_target(path_and_query)?;
        log.route = match target {
            route::Target::SandboxApi => RouteKind::SandboxApi,
            route::Target::Port { port, .. } => {
                log.port = Some(port);
                RouteKind::Port
            }
        };
        let principal = match req.extensions().get::<Vouch>() {
            Some(Vouch { auth: VouchedAuth::Token(ws, name), .. }) => {
                auth::vouched(&self.app, &sandbox.workspace, (ws, name))?
            }
            Some(_) => {
                return Err(ApiError::new(ErrorCode::Forbidden, "a preview's authorization does not open the sandbox"));
            }
            None => auth::authenticate(&self.app, &sandbox.workspace, req.headers())?,
        };
        log.token = Some(principal.token_name.into());
        let route = route::resolve(target, &sandbox, path_and_query)?;
        Ok(Routed::Forward(Box::new(Upstream::new(sandbox, route)), req))
    }

    /// The one forward step of every host kind: the sandbox's slot (held until the response
    /// body or tunnel ends), the outbound request, made ready by the proxy.
    pub(super) fn forward(
        &self,
        conn: &ConnInfo,
        client_host: String,
        upstream: Upstream,
        req: Request<Incoming>,
        log: &mut RequestLog,
    ) -> Result<Forward<'_>, ApiError> {
        let Upstream { sandbox, mut route, mut set_headers, mut response_filter } = upstream;
        log.port = Some(route.port);
        if log.route != RouteKind::Port && super::tcp_tunnel::requested(&req).is_some() {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                "a connect-tcp tunnel is opened on a sandbox host's /port/{N}: previews and the sandbox API carry HTTP only",
            ));
        }
        let vouched = req.extensions().get::<Vouch>();
        let (peer, trusted) = match vouched {
            Some(v) => (Arc::new(headers::PeerText::new(v.client)), v.trusted),
            None => (conn.forwarding.clone(), conn.trusted),
        };
        let mut upstream_host = headers::upstream_host(self.host_policy, &client_host, route.port);
        let via = match self.app.is_local(&sandbox) {
            true => None,
            false => {
                let owner = sandbox.owner.as_deref().unwrap_or_default();
                if vouched.is_some() {
                    return Err(ApiError::new(
                        ErrorCode::PeerUnavailable,
                        format!(
                            "sandbox {:?} runs on fleet host {owner:?}, not here: a request from a peer is never forwarded again",
                            sandbox.name
                        ),
                    ));
                }
                let addr = self.app.peers().get(owner).ok_or_else(|| {
                    ApiError::new(
                        ErrorCode::PeerUnavailable,
                        format!(
                            "sandbox {:?} runs on fleet host {owner:?}, which is down (its host key in etcd lapsed)",
                            sandbox.name
                        ),
                    )
                })?;
                let auth = match log.route {
                    RouteKind::Preview => VouchedAuth::Preview,
                    _ => VouchedAuth::Token(
                        sandbox.workspace.clone(),
                        log.token.as_deref().unwrap_or_default().to_string(),
                    ),
                };
                // The owner routes the request again: the target and host as the client sent
                // them; the preview's headers are the owner's to apply.
                route.path_and_query = path_and_query(req.method(), req.uri())?.to_string();
                upstream_host = client_host.clone();
                set_headers = Vec::new();
                response_filter = None;
                Some(Box::new(PeerRoute {
                    host: owner.into(),
                    addr,
                    vouch: Vouch { client: conn.peer, trusted: conn.trusted, auth },
                }))
            }
        };
        let slot = self.limits.sandbox_slot(sandbox.address).ok_or_else(|| {
            too_many(format!(
                "sandbox {:?} has its maximum of {} concurrent requests in flight; retry later",
                sandbox.name,
                self.app.config().proxy.max_connections_per_sandbox
            ))
        })?;
        tracing::trace!(route = log.route.as_str(), sandbox = %sandbox.name, workspace = %sandbox.workspace, token = log.token.as_deref().unwrap_or("-"), port = route.port, "routed");
        let out = Outbound { upstream_host, peer, client_host, trusted, sandbox, route, slot, set_headers, via };
        Ok(Forward { exchange: self.proxy.prepare(req, out)?, route: log.route, response_filter })
    }
}
