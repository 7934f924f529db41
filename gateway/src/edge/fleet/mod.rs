//! The edge of a fleet member: requests for another host's sandbox, and the fleet listener.
//!
//! A request that reaches this gateway for a sandbox another host runs is routed and
//! authenticated here exactly like a local one, its credentials removed; then, instead of
//! connecting to the sandbox, it goes to the owner's fleet listener ([`forward`]): HTTP/2 on
//! a connection kept per peer (mutual TLS, the peer's certificate must name the owner the
//! sandbox's record names), or for an upgrade (WebSocket and others) a dedicated HTTP/1.1
//! connection. Three headers carry what this gateway established ([`Vouch`]): the client's
//! address, whether it is a trusted proxy, and who it is (a workspace token's name, or a
//! preview's authorization).
//!
//! The owner's fleet listener serves those requests through the same edge, with one
//! difference: it believes the headers instead of asking for credentials, and checks again
//! that the token still lives (a revocation between the two gateways is honoured). A request
//! received there is never forwarded again. The headers are removed from every request from
//! a client on the public listener, with the credentials ([`crate::auth::strip_credentials`]).

pub mod forward;
pub mod pki;

use crate::errors::{ApiError, ErrorCode};
use http::{HeaderMap, HeaderName, HeaderValue};
use std::{net::SocketAddr, sync::Arc};

/// The client's address as the gateway that received the request saw it.
pub const CLIENT_HEADER: HeaderName = HeaderName::from_static("x-gw-fleet-client");
/// Present (`1`) when that client is one of its trusted proxies.
pub const TRUSTED_HEADER: HeaderName = HeaderName::from_static("x-gw-fleet-trusted");
/// Who the client is: `token {workspace}/{name}` or `preview`.
pub const AUTH_HEADER: HeaderName = HeaderName::from_static("x-gw-fleet-auth");

/// What the gateway that received a request established about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vouch {
    /// The client's address.
    pub client: SocketAddr,
    /// Whether the client is a trusted proxy there.
    pub trusted: bool,
    /// Who the client is.
    pub auth: VouchedAuth,
}

/// Who a forwarded request's client is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VouchedAuth {
    /// A workspace token: (workspace, name).
    Token(String, String),
    /// Allowed by a preview (public, or its token or cookie).
    Preview,
}

fn bad(message: String) -> ApiError {
    ApiError::new(ErrorCode::BadRequest, message)
}

impl Vouch {
    /// Reads the headers of a request from a peer (400 when they are missing or malformed: a
    /// peer of another version, or not a gateway).
    pub fn from_headers(h: &HeaderMap) -> Result<Self, ApiError> {
        let text = |name: &HeaderName| -> Result<&str, ApiError> {
            h.get(name)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| bad(format!("a request from a fleet peer needs a valid {name} header")))
        };
        let client = text(&CLIENT_HEADER)?.parse().map_err(|_| bad(format!("{CLIENT_HEADER} is not an address")))?;
        let auth = match text(&AUTH_HEADER)? {
            "preview" => VouchedAuth::Preview,
            other => {
                let id = other.strip_prefix("token ").and_then(|id| id.split_once('/'));
                let (ws, name) = id.ok_or_else(|| bad(format!("{AUTH_HEADER} {other:?} is not understood")))?;
                VouchedAuth::Token(ws.to_string(), name.to_string())
            }
        };
        Ok(Self { client, trusted: h.contains_key(&TRUSTED_HEADER), auth })
    }

    /// Writes the headers (after the client's own were removed).
    pub fn write(&self, h: &mut HeaderMap) {
        let value = |s: String| HeaderValue::from_str(&s).ok();
        if let Some(v) = value(self.client.to_string()) {
            h.insert(CLIENT_HEADER, v);
        }
        if self.trusted {
            h.insert(TRUSTED_HEADER, HeaderValue::from_static("1"));
        }
        let auth = match &self.auth {
            VouchedAuth::Token(ws, name) => value(format!("token {ws}/{name}")),
            VouchedAuth::Preview => Some(HeaderValue::from_static("preview")),
        };
        if let Some(v) = auth {
            h.insert(AUTH_HEADER, v);
        }
    }
}

/// Where a request for another host's sandbox goes.
#[derive(Clone, Debug)]
pub struct PeerRoute {
    /// The owner's `fleet.host` (the name its certificate must carry).
    pub host: Arc<str>,
    /// Its fleet listener.
    pub addr: SocketAddr,
    /// What this gateway established about the request.
    pub vouch: Vouch,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vouches_round_trip_and_malformed_ones_are_refused() {
        for auth in [VouchedAuth::Token("acme".into(), "ci".into()), VouchedAuth::Preview] {
            for trusted in [false, true] {
                let v = Vouch { client: "198.18.0.9:4242".parse().expect("addr"), trusted, auth: auth.clone() };
                let mut h = HeaderMap::new();
                v.write(&mut h);
                assert_eq!(Vouch::from_headers(&h).expect("read"), v);
            }
        }
        let mut h = HeaderMap::new();
        assert!(Vouch::from_headers(&h).is_err(), "nothing");
        h.insert(CLIENT_HEADER, HeaderValue::from_static("198.18.0.9:1"));
        h.insert(AUTH_HEADER, HeaderValue::from_static("token nope"));
        assert!(Vouch::from_headers(&h).is_err());
        h.insert(AUTH_HEADER, HeaderValue::from_static("admin"));
        assert!(Vouch::from_headers(&h).is_err());
    }
}
