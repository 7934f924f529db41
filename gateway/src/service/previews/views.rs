//! What the admin API (`/v1`) answers for previews, tokens and sessions.

use crate::config::Config;
use crate::model::preview::{Preview, PreviewToken};
use crate::model::time::{Timestamp, format_timestamp};
use serde::Serialize;
use std::collections::BTreeMap;

/// `https://{id}.{region}.preview.{domain}`, with the public port when it is not 443.
pub fn preview_url(config: &Config, id: &str) -> String {
    let port = config.https_addr().map(|a| a.port()).unwrap_or(443);
    let host = format!("{id}.{}.preview.{}", config.region, config.domain);
    if port == 443 { format!("https://{host}") } else { format!("https://{host}:{port}") }
}

/// What a preview was asked for, as both APIs answer it (flattened into their objects).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PreviewSettings {
    /// Target port (443 = the sandbox API).
    pub port: u16,
    /// No token needed.
    pub public: bool,
    /// Readable id prefix.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix_url: Option<String>,
    /// Added to upstream requests.
    pub request_headers: BTreeMap<String, String>,
    /// Added to responses.
    pub response_headers: BTreeMap<String, String>,
    /// Lifetime as given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
}

impl PreviewSettings {
    /// The settings of `p`.
    pub fn of(p: &Preview) -> Self {
        Self {
            port: p.port,
            public: p.public,
            prefix_url: p.prefix_url.clone(),
            request_headers: p.request_headers.clone(),
            response_headers: p.response_headers.clone(),
            ttl: p.ttl.clone(),
        }
    }
}

/// A preview as answered by `/v1`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PreviewView {
    pub workspace: String,
    pub sandbox: String,
    /// Preview name.
    pub name: String,
    /// Host label.
    pub id: String,
    /// `https://{id}.{region}.preview.{domain}[:port]`.
    pub url: String,
    /// Port, access, headers, lifetime.
    #[serde(flatten)]
    pub settings: PreviewSettings,
    /// Expiry (RFC 3339 UTC), absent = never.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// Whether it has expired (it answers 404 until the reaper deletes it).
    pub expired: bool,
    /// Creation time.
    pub created_at: String,
    /// How many tokens it holds (listed by `…/tokens`).
    pub tokens: usize,
    /// How long the kernel update took (answers to a PUT only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_applied_micros: Option<u64>,
}

impl PreviewView {
    /// The view of `p` at `now` with its URL.
    pub fn new(p: &Preview, url: String, now: Timestamp) -> Self {
        Self {
            workspace: p.workspace.clone(),
            sandbox: p.sandbox.clone(),
            name: p.name.clone(),
            id: p.id.clone(),
            url,
            settings: PreviewSettings::of(p),
            expires_at: p.expires_at.map(format_timestamp),
            expired: p.is_expired(now),
            created_at: format_timestamp(p.created_at),
            tokens: p.tokens.len(),
            policy_applied_micros: None,
        }
    }
}

/// A preview token as answered by `/v1` (the secret only when created).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PreviewTokenView {
    pub name: String,
    /// The secret: in the answer to its creation only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Expiry.
    pub expires_at: String,
    /// Whether it has expired.
    pub expired: bool,
    /// Creation time.
    pub created_at: String,
}

impl PreviewTokenView {
    /// Without the secret.
    pub fn listed(t: &PreviewToken, now: Timestamp) -> Self {
        Self {
            name: t.name.clone(),
            token: None,
            expires_at: format_timestamp(t.expires_at),
            expired: t.is_expired(now),
            created_at: format_timestamp(t.created_at),
        }
    }
    /// With the secret (the answer to a creation).
    pub fn created(t: &PreviewToken, now: Timestamp) -> Self {
        Self { token: Some(t.token.clone()), ..Self::listed(t, now) }
    }
}

/// A session as answered by `POST …/sessions`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionView {
    /// The preview's name (`session-…`).
    pub name: String,
    /// The preview's URL (the sandbox API and `/port/N/…`).
    pub url: String,
    /// The token to send as `X-Blaxel-Preview-Token`.
    pub token: String,
    /// When both expire.
    pub expires_at: String,
    pub preview: PreviewView,
}
