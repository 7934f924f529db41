//! The Blaxel API's JSON shapes, as its SDKs send and parse them (`blaxel` on PyPI,
//! `@blaxel/core` on npm). Requests ignore fields we do not use (the SDKs round-trip whole
//! records); answers carry every field the SDKs require (`metadata.url` of a sandbox,
//! `metadata.resourceName` of a preview).

use crate::{
    model::preview::{Preview, PreviewToken},
    model::sandbox::{PortProtocol, Sandbox},
    model::time::{self, Timestamp},
    service::App,
    service::previews::{spec::PreviewSpec, views::PreviewSettings},
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `status` of every record we answer: the resource is live.
pub const DEPLOYED: &str = "DEPLOYED";
/// `metadata.resourceType` of previews and tokens.
pub const RESOURCE_TYPE: &str = "Sandbox";

/// A sandbox.
#[derive(Debug, Serialize)]
pub struct SandboxOut {
    /// Name, workspace, URL.
    pub metadata: SandboxMetadata,
    /// Region and ports.
    pub spec: SandboxSpecOut,
    /// Always `DEPLOYED`.
    pub status: &'static str,
}

/// `metadata` of a sandbox.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxMetadata {
    pub name: String,
    /// Same as `name`.
    pub display_name: String,
    pub workspace: String,
    /// `https://sbx-{name}-{ws}.{region}.{domain}[:port]`: ALWAYS present (the SDK needs it).
    pub url: String,
}

/// `spec` of a sandbox.
#[derive(Debug, Serialize)]
pub struct SandboxSpecOut {
    /// The gateway's region.
    pub region: String,
    /// Declared ports.
    pub runtime: RuntimeOut,
}

/// `spec.runtime` of a sandbox.
#[derive(Debug, Serialize)]
pub struct RuntimeOut {
    /// Declared ports.
    pub ports: Vec<PortOut>,
}

/// One declared port.
#[derive(Debug, Serialize)]
pub struct PortOut {
    /// Port inside the sandbox.
    pub target: u16,
    /// `HTTP` or `TCP` (the SDK's enum has no HTTP2/GRPC: they are HTTP to it).
    pub protocol: &'static str,
}

impl SandboxOut {
    /// The wire form of a sandbox.
    pub fn new(app: &App, s: &Sandbox) -> Self {
        let config = app.config();
        Self {
            metadata: SandboxMetadata {
                name: s.name.clone(),
                display_name: s.name.clone(),
                workspace: s.workspace.clone(),
                url: config.sandbox_url(&s.label()),
            },
            spec: SandboxSpecOut {
                region: config.region.clone(),
                runtime: RuntimeOut {
                    ports: s
                        .ports
                        .iter()
                        .map(|p| PortOut {
                            target: p.target,
                            protocol: match p.protocol {
                                PortProtocol::Tcp => "TCP",
                                PortProtocol::Tls => "TLS",
                                PortProtocol::Http | PortProtocol::Http2 | PortProtocol::Grpc => "HTTP",
                            },
                        })
                        .collect(),
                },
            },
            status: DEPLOYED,
        }
    }
}

/// A preview as the SDK sends it.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct PreviewIn {
    /// `metadata.name`.
    pub metadata: NameIn,
    /// The settings.
    pub spec: PreviewSpecIn,
}

/// `metadata` with a name.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct NameIn {
    /// Name (may be empty for tokens: one is assigned).
    pub name: Option<String>,
}

/// `spec` of a preview as sent.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct PreviewSpecIn {
    /// Port (443 = the sandbox API).
    pub port: Option<i64>,
    pub public: Option<bool>,
    /// Readable id prefix.
    pub prefix_url: Option<String>,
    /// Added to requests.
    pub request_headers: Option<BTreeMap<String, String>>,
    /// Added to responses.
    pub response_headers: Option<BTreeMap<String, String>>,
    /// Lifetime.
    pub ttl: Option<String>,
    /// Expiry timestamp (what the SDK's sessions send).
    pub expires: Option<String>,
    /// Expiry timestamp, the admin API's name for it.
    pub expires_at: Option<String>,
}

impl PreviewSpecIn {
    /// As the service layer takes it (`expires` and `expiresAt` are the same field).
    pub fn to_spec(&self) -> PreviewSpec {
        PreviewSpec {
            port: self.port,
            public: self.public,
            prefix_url: self.prefix_url.clone(),
            request_headers: self.request_headers.clone(),
            response_headers: self.response_headers.clone(),
            ttl: self.ttl.clone().filter(|t| !t.is_empty()),
            expires_at: self.expires.clone().or_else(|| self.expires_at.clone()).filter(|t| !t.is_empty()),
        }
    }
}

/// A preview as answered.
#[derive(Debug, Serialize)]
pub struct PreviewOut {
    /// Names.
    pub metadata: PreviewMetadata,
    /// Settings and URL.
    pub spec: PreviewSpecOut,
    /// Always `DEPLOYED`.
    pub status: &'static str,
}

/// `metadata` of a preview.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PreviewMetadata {
    /// Preview name.
    pub name: String,
    /// Same as `name`.
    pub display_name: String,
    /// The sandbox (the SDK requires it).
    pub resource_name: String,
    /// `Sandbox`.
    pub resource_type: &'static str,
    pub workspace: String,
    /// Creation time.
    pub created_at: String,
}

/// `spec` of a preview as answered.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PreviewSpecOut {
    /// Port, access, headers, lifetime (as `/v1` answers them).
    #[serde(flatten)]
    pub settings: PreviewSettings,
    /// Expiry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    /// The gateway's region.
    pub region: String,
    /// `https://{id}.{region}.preview.{domain}[:port]`.
    pub url: String,
}

impl PreviewOut {
    /// The wire form of a preview.
    pub fn new(app: &App, p: &Preview) -> Self {
        Self {
            metadata: PreviewMetadata {
                name: p.name.clone(),
                display_name: p.name.clone(),
                resource_name: p.sandbox.clone(),
                resource_type: RESOURCE_TYPE,
                workspace: p.workspace.clone(),
                created_at: time::format_timestamp(p.created_at),
            },
            spec: PreviewSpecOut {
                settings: PreviewSettings::of(p),
                expires: p.expires_at.map(time::format_timestamp),
                region: app.config().region.clone(),
                url: app.preview_url(&p.id),
            },
            status: DEPLOYED,
        }
    }
}

/// A preview token as the SDK sends it.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct TokenIn {
    /// `metadata.name` (empty: assigned).
    pub metadata: NameIn,
    /// Expiry.
    pub spec: TokenSpecIn,
}

/// `spec` of a token as sent.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct TokenSpecIn {
    /// Expiry timestamp.
    pub expires_at: Option<String>,
}

/// A preview token as answered (with its secret, as the Blaxel API does: the SDK's
/// `sessions.list` and `tokens.create_if_expired` read it from lists).
#[derive(Debug, Serialize)]
pub struct TokenOut {
    /// Names.
    pub metadata: TokenMetadata,
    /// Secret and expiry.
    pub spec: TokenSpecOut,
}

/// `metadata` of a token.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenMetadata {
    /// Token name.
    pub name: String,
    /// Its preview.
    pub preview_name: String,
    /// The sandbox.
    pub resource_name: String,
    /// `Sandbox`.
    pub resource_type: &'static str,
    pub workspace: String,
}

/// `spec` of a token.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenSpecOut {
    /// The secret.
    pub token: String,
    /// Expiry.
    pub expires_at: String,
    /// Whether it has expired.
    pub expired: bool,
}

impl TokenOut {
    /// The wire form of a token of `p`.
    pub fn new(p: &Preview, t: &PreviewToken, now: Timestamp) -> Self {
        Self {
            metadata: TokenMetadata {
                name: t.name.clone(),
                preview_name: p.name.clone(),
                resource_name: p.sandbox.clone(),
                resource_type: RESOURCE_TYPE,
                workspace: p.workspace.clone(),
            },
            spec: TokenSpecOut {
                token: t.token.clone(),
                expires_at: time::format_timestamp(t.expires_at),
                expired: t.is_expired(now),
            },
        }
    }
}
