//! The configuration file (TOML).
//!
//! Every key is optional (its default is in [`DEFAULT_CONFIG_TOML`], which `gateway
//! print-default-config` prints), unknown keys are refused, and [`load`] reports EVERY problem
//! of a file at once, each as (file, key, reason), before anything is bound or opened.

use crate::dataplane::{DataplaneSettings, HostPort, XdpModeSetting};
pub use crate::model::{is_dns_label, is_interface_name};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

/// The whole configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Base domain of sandbox and preview URLs.
    pub domain: String,
    /// Region label: sandbox hosts are `sbx-{name}-{ws}.{region}.{domain}`.
    pub region: String,
    /// `[listen]`.
    pub listen: ListenConfig,
    /// `[admin]`.
    pub admin: AdminConfig,
    /// `[state]`.
    pub state: StateConfig,
    /// `[dataplane]`.
    pub dataplane: DataplaneConfig,
    /// `[tls]`: certificates of the public HTTPS listener.
    pub tls: TlsConfig,
    /// `[proxy]`: timeouts and limits of the HTTPS edge.
    pub proxy: ProxyConfig,
    /// `[fleet]`: gateways sharing their state through etcd.
    pub fleet: FleetConfig,
    /// `[l4]`: public TCP ports of sandboxes.
    pub l4: L4Config,
}

/// `[l4]`: public TCP ports (`expose` on a sandbox's TCP or TLS port), steered to one listening
/// socket by the kernel. Off while `port_range` is empty.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct L4Config {
    /// `"LOW-HIGH"`: where public ports are assigned from; empty: no public TCP ports.
    pub port_range: String,
    /// The IPv4 address clients connect to; `0.0.0.0`: every address of the host.
    pub address: String,
    /// A released public port is not given to another sandbox port for this long.
    pub quarantine: HumanDuration,
    /// Concurrent public TCP connections in total; beyond, new ones are closed at once.
    pub max_connections: usize,
    /// Concurrent public TCP connections per sandbox.
    pub max_connections_per_sandbox: usize,
    /// A connection with no byte either way for this long is closed.
    pub idle_timeout: HumanDuration,
    /// How bytes are moved: `splice` (bulk in the kernel, through a pipe; small reads copied)
    /// or `copy` (userspace).
    pub engine: L4Engine,
}

/// `l4.engine`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum L4Engine {
    /// Each direction starts copying; one that brings [`SPLICE_AFTER`](crate::l4::engine::SPLICE_AFTER)
    /// bytes or more in one read switches to `splice(2)` through a pooled pipe (its bytes no
    /// longer enter userspace).
    #[default]
    Splice,
    /// `read`/`write` through a userspace buffer (the baseline).
    Copy,
}

impl L4Engine {
    /// Its name in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            L4Engine::Splice => "splice",
            L4Engine::Copy => "copy",
        }
    }
}

impl Default for L4Config {
    fn default() -> Self {
        Self {
            port_range: String::new(),
            address: "0.0.0.0".into(),
            quarantine: HumanDuration::secs(600),
            max_connections: 10_000,
            max_connections_per_sandbox: 256,
            idle_timeout: HumanDuration::secs(3600),
            engine: L4Engine::Splice,
        }
    }
}

impl L4Config {
    /// The port range, `None` when public TCP ports are off (or the range is invalid, which
    /// [`Config::validate`] refuses).
    pub fn range(&self) -> Option<std::ops::RangeInclusive<u16>> {
        parse_port_range(&self.port_range).ok().flatten()
    }

    /// `address` as an IPv4 address (0.0.0.0 when invalid, which [`Config::validate`] refuses).
    pub fn ipv4(&self) -> Ipv4Addr {
        self.address.parse().unwrap_or(Ipv4Addr::UNSPECIFIED)
    }
}

/// `"LOW-HIGH"` (inclusive, 1..=65535, LOW ≤ HIGH); `""` → `None`.
pub fn parse_port_range(s: &str) -> Result<Option<std::ops::RangeInclusive<u16>>, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    let bad = || format!("{s:?} is not a port range: \"LOW-HIGH\", e.g. \"20000-29999\"");
    let (lo, hi) = s.split_once('-').ok_or_else(bad)?;
    let (lo, hi): (u16, u16) = (lo.trim().parse().map_err(|_| bad())?, hi.trim().parse().map_err(|_| bad())?);
    if lo == 0 || lo > hi {
        return Err(bad());
    }
    Ok(Some(lo..=hi))
}

/// `[fleet]`: gateways of many hosts sharing their state through etcd. With no `etcd`
/// endpoint, the gateway is a single host on its file store (the default).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FleetConfig {
    /// etcd endpoints (`http://` or `https://`, host and port); empty: no fleet.
    pub etcd: Vec<String>,
    /// This host's id in the fleet: one DNS label, unique in the fleet.
    pub host: String,
    /// The internal listener for the other gateways (mutual TLS).
    pub listen: String,
    /// How the other gateways reach `listen`; empty: `listen`.
    pub advertise: String,
    /// The fleet CA: peers' certificates must chain to it.
    pub ca: PathBuf,
    /// This host's certificate (its SAN DNS name is `host`) and key.
    pub cert: PathBuf,
    /// The key of `cert`.
    pub key: PathBuf,
    /// Key prefix in etcd: one fleet per prefix.
    pub prefix: String,
    /// With no news from etcd for this long, requests that need a token answer 503.
    pub auth_max_staleness: HumanDuration,
    /// CA of etcd's own TLS (`https://` endpoints); empty: the system's roots.
    pub etcd_ca: PathBuf,
    /// Client certificate and key for etcd (both or neither).
    pub etcd_cert: PathBuf,
    /// The key of `etcd_cert`.
    pub etcd_key: PathBuf,
    /// etcd user (etcd authentication); its password is in `etcd_password_file`.
    pub etcd_user: String,
    /// File holding the etcd user's password (one line).
    pub etcd_password_file: PathBuf,
}

impl Default for FleetConfig {
    fn default() -> Self {
        Self {
            etcd: Vec::new(),
            host: String::new(),
            listen: String::new(),
            advertise: String::new(),
            ca: PathBuf::new(),
            cert: PathBuf::new(),
            key: PathBuf::new(),
            prefix: "/gateway/v1/".into(),
            auth_max_staleness: HumanDuration::secs(120),
            etcd_ca: PathBuf::new(),
            etcd_cert: PathBuf::new(),
            etcd_key: PathBuf::new(),
            etcd_user: String::new(),
            etcd_password_file: PathBuf::new(),
        }
    }
}

impl FleetConfig {
    /// Whether this gateway is part of a fleet.
    pub fn enabled(&self) -> bool {
        !self.etcd.is_empty()
    }
}

/// `[tls]`: the certificates of the public HTTPS listener. With no certificate at all, a
/// development CA and a wildcard certificate are generated once under `state.dir/tls/`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM file: the default certificate and its chain (leaf first). Empty = none.
    pub cert: PathBuf,
    /// PEM file: the private key of `cert` (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// More certificates, chosen by SNI (first match in order; `cert` is tried first).
    pub certificates: Vec<CertificateFiles>,
}

/// One certificate of `[[tls.certificates]]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct CertificateFiles {
    /// PEM full chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// What Host the gateway sends to an app in a sandbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum HostHeaderPolicy {
    /// The Host (or `:authority`) the client sent, unchanged.
    #[default]
    Preserve,
    /// `localhost:{port}`, for dev servers that check the Host (Vite `allowedHosts`, webpack).
    Localhost,
}

/// `[proxy]`: timeouts and limits of the HTTPS edge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// How long a client may take to complete its TLS handshake, and then each request head.
    pub header_read_timeout: HumanDuration,
    /// A client connection (WebSocket and other tunnels included) with no byte read or written
    /// for this long is closed.
    pub idle_timeout: HumanDuration,
    /// How long connecting to an app in a sandbox may take.
    pub connect_timeout: HumanDuration,
    /// How long an app may take to send its response head (504 after).
    pub response_timeout: HumanDuration,
    /// Largest request head a client may send (bytes; 431 above).
    pub max_header_bytes: usize,
    /// Concurrent client connections in total (429 above).
    pub max_connections: usize,
    /// Connections the kernel queues for the HTTPS listener before the gateway accepts them
    /// (`listen(2)` backlog, capped by `net.core.somaxconn`); beyond, new SYNs are dropped.
    pub listen_backlog: u32,
    /// Concurrent proxied requests and tunnels per sandbox (429 above).
    pub max_connections_per_sandbox: usize,
    /// Threads serving client connections, each connection served whole by one of them.
    /// 0 = one per CPU the gateway may run on.
    pub workers: usize,
    /// When an app refuses the connection, retry with backoff for up to this long before
    /// answering 502 (for dev servers still starting). 0 = answer at once.
    pub wait_for_port: HumanDuration,
    /// `preserve` or `localhost`: the Host sent to apps (HTTP and WebSocket alike).
    pub host_header: HostHeaderPolicy,
    /// Peers (IP or CIDR) whose `X-Forwarded-*` and `Forwarded` headers are kept and appended
    /// to; everyone else's are replaced.
    pub trusted_proxies: Vec<String>,
}

impl ProxyConfig {
    /// `workers`, with 0 resolved to the CPUs this process may run on.
    pub fn worker_count(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
            n => n,
        }
    }
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            header_read_timeout: HumanDuration::secs(10),
            idle_timeout: HumanDuration::secs(15 * 60),
            connect_timeout: HumanDuration::secs(5),
            response_timeout: HumanDuration::secs(60),
            max_header_bytes: 64 * 1024,
            max_connections: 10_000,
            listen_backlog: 4096,
            max_connections_per_sandbox: 256,
            workers: 0,
            wait_for_port: HumanDuration::secs(0),
            host_header: HostHeaderPolicy::Preserve,
            trusted_proxies: Vec::new(),
        }
    }
}

/// A duration in humantime's syntax, as the admin API's `ttl` and the CLI's durations:
/// `"500ms"`, `"10s"`, `"15m"`, `"1h"`, `"0s"`, also `"1h 30m"`, `"1.5s"`, `"2 minutes"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    /// `n` seconds.
    pub const fn secs(n: u64) -> Self {
        Self(Duration::from_secs(n))
    }
    /// The duration.
    pub const fn get(self) -> Duration {
        self.0
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&humantime::format_duration(self.0), f)
    }
}

impl std::str::FromStr for HumanDuration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        humantime::parse_duration(s).map(Self).map_err(|e| {
            format!(
                "{s:?} is not a duration ({e}): write a number and a unit, e.g. \"500ms\", \"10s\", \"15m\", \"1h\""
            )
        })
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An address or a CIDR block of `proxy.trusted_proxies`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpNet(ipnet::IpNet);

impl IpNet {
    /// Parses `"10.0.0.1"`, `"10.0.0.0/8"`, `"::1"` or `"fd00::/8"` (an address alone is a /32 or /128).
    pub fn parse(s: &str) -> Result<Self, String> {
        s.parse::<ipnet::IpNet>()
            .or_else(|_| s.parse::<IpAddr>().map(ipnet::IpNet::from))
            .map(Self)
            .map_err(|_| format!("{s:?} is not an IP address or CIDR block (e.g. \"10.0.0.0/8\")"))
    }

    /// Whether `ip` is inside (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        self.0.contains(&ip)
    }
}

/// `[listen]`: where the gateway listens.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenConfig {
    /// Admin API: `IP:PORT` or `unix:PATH`.
    pub admin: String,
    /// Public HTTPS listener `IP:PORT`.
    pub https: String,
}

/// `[admin]`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Bearer token required on a TCP admin listener; empty = none.
    pub token: String,
    /// File holding the token instead of `token` (a systemd credential, a secret manager's
    /// file); empty = none. Read by [`parse`], so again at every reload.
    pub token_file: PathBuf,
    /// Accept a TCP admin listener on a non-loopback address (the admin API has no TLS).
    pub allow_plaintext_remote: bool,
    /// What reading `token_file` gave (the token, or why it could not be read).
    #[serde(skip)]
    file_token: Option<Result<String, String>>,
}

impl fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminConfig")
            .field("token", &"<redacted>")
            .field("token_file", &self.token_file)
            .field("allow_plaintext_remote", &self.allow_plaintext_remote)
            .finish()
    }
}

/// Shortest admin token accepted on a TCP listener, in bytes (`openssl rand -hex 32` gives 64).
pub const MIN_ADMIN_TOKEN_BYTES: usize = 32;
/// Most `proxy.workers`: far above any CPU count a gateway runs on, low enough that a typo
/// cannot start a thread per connection.
pub const MAX_WORKERS: usize = 1024;
/// Tokens that earlier defaults and examples published: refused whatever their length.
const WELL_KNOWN_ADMIN_TOKENS: &[&str] = &["change-me"];
/// Largest `admin.token_file` read: a token is one short line, anything longer is a wrong path.
const MAX_TOKEN_FILE_BYTES: u64 = 4096;

impl AdminConfig {
    /// The admin secret: `token`, or what `token_file` holds ("" when it could not be read, so
    /// that nothing matches it).
    pub fn secret(&self) -> &str {
        match &self.file_token {
            Some(Ok(token)) => token,
            Some(Err(_)) => "",
            None if !self.token_file.as_os_str().is_empty() => "",
            None => &self.token,
        }
    }

    /// The secret if a TCP admin listener may accept it: set, not a published example and long
    /// enough. [`Config::validate`] refuses a TCP listener without one; the admin API checks
    /// again, so that no configuration, however it was built, accepts an empty or well-known
    /// credential.
    pub fn tcp_secret(&self) -> Option<&str> {
        let secret = self.secret();
        (secret.len() >= MIN_ADMIN_TOKEN_BYTES && !WELL_KNOWN_ADMIN_TOKENS.contains(&secret)).then_some(secret)
    }

    /// The key that holds the secret, to name in problems.
    fn secret_key(&self) -> &'static str {
        if self.token_file.as_os_str().is_empty() { "admin.token" } else { "admin.token_file" }
    }

    /// Reads `token_file` (when set) into the configuration.
    fn read_token_file(&mut self) {
        if !self.token_file.as_os_str().is_empty() {
            self.file_token = Some(read_secret_file(&self.token_file));
        }
    }
}

/// The one-line secret in `path`, without its trailing line break.
fn read_secret_file(path: &Path) -> Result<String, String> {
    use std::io::Read;
    let cannot = |e: std::io::Error| format!("cannot read {}: {e}", path.display());
    let mut bytes = Vec::new();
    std::fs::File::open(path).and_then(|f| f.take(MAX_TOKEN_FILE_BYTES + 1).read_to_end(&mut bytes)).map_err(cannot)?;
    if bytes.len() as u64 > MAX_TOKEN_FILE_BYTES {
        return Err(format!("{} is longer than {MAX_TOKEN_FILE_BYTES} bytes: not a token file", path.display()));
    }
    let text = String::from_utf8(bytes).map_err(|_| format!("{} is not text", path.display()))?;
    let token = text.trim_end_matches(['\n', '\r']);
    if token.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(token.to_string())
}

/// `[state]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// Directory of the durable state (created 0700 if missing).
    pub dir: PathBuf,
}

/// `[dataplane]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataplaneConfig {
    /// false: no kernel enforcement (development, HTTP-layer tests).
    pub enabled: bool,
    /// `SO_MARK` of the gateway's sockets towards sandboxes.
    pub mark: u32,
    /// Pin directory on a bpffs.
    pub bpffs: PathBuf,
    /// Interface of the XDP edge guard; empty = off.
    pub public_interface: String,
    /// `skb` or `native`.
    pub xdp_mode: XdpModeSetting,
    /// Host TCP ports the edge guard never blocks (failsafe), besides the public listeners.
    pub extra_public_ports: Vec<u16>,
    /// Host ports sandboxes may open connections to (`"udp/53"`), besides the HTTPS listener.
    pub host_allow: Vec<String>,
    /// New TCP connections per second one source address may open through the edge guard
    /// (every public port, HTTPS included); 0 = no limit.
    pub syn_rate: u32,
    /// How many new connections a source may open at once before `syn_rate` applies.
    pub syn_burst: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            domain: "gw.test".into(),
            region: "local".into(),
            listen: ListenConfig::default(),
            admin: AdminConfig::default(),
            state: StateConfig::default(),
            dataplane: DataplaneConfig::default(),
            tls: TlsConfig::default(),
            proxy: ProxyConfig::default(),
            fleet: FleetConfig::default(),
            l4: L4Config::default(),
        }
    }
}

impl Default for ListenConfig {
    fn default() -> Self {
        Self { admin: format!("unix:{}", crate::paths::DEFAULT_ADMIN_SOCKET), https: "0.0.0.0:443".into() }
    }
}

impl Default for StateConfig {
    fn default() -> Self {
        Self { dir: PathBuf::from(crate::paths::DEFAULT_STATE_DIR) }
    }
}

impl Default for DataplaneConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            mark: gateway_common::DEFAULT_MARK,
            bpffs: PathBuf::from(crate::paths::DEFAULT_BPFFS),
            public_interface: String::new(),
            xdp_mode: XdpModeSetting::Skb,
            extra_public_ports: vec![22],
            host_allow: Vec::new(),
            syn_rate: 200,
            syn_burst: 400,
        }
    }
}

/// What `gateway print-default-config` prints: every key with its default and what it means.
/// A unit test checks that it parses to `Config::default()`.
pub const DEFAULT_CONFIG_TOML: &str = r#"# gateway configuration. Every key is optional; the values below are the defaults.
# Check a file with `gateway check-config --config FILE`.

# Base domain of sandbox and preview URLs: https://sbx-{name}-{workspace}.{region}.{domain}
domain = "gw.test"
# Region label (one DNS label, no dot).
region = "local"

[listen]
# Admin API: "unix:PATH" (socket file mode 0600 in a directory created 0700: only the gateway's
# user, root, can use it, with no token) or "IP:PORT" (TCP: every request needs
# `Authorization: Bearer <admin.token>`; a non-loopback address also needs
# admin.allow_plaintext_remote, as the admin API has no TLS).
admin = "unix:/run/gateway/admin.sock"
# Public HTTPS listener. Its port is opened in the edge guard, and appears in URLs when not 443.
https = "0.0.0.0:443"

[admin]
# Bearer token of a TCP listen.admin (unused on a unix socket): at least 32 bytes, e.g. from
# `openssl rand -hex 32`. "change-me" and shorter tokens are refused. A reload applies a new one.
token = ""
# Or read the token from this file (one line; a trailing line break is ignored), read again at
# every reload: e.g. "/etc/gateway/admin.token" (mode 0600), or the systemd credential
# "/run/credentials/gateway.service/admin.token" (packaging/gateway.service shows both; systemd
# copies a credential at start only). Set token or token_file, not both.
token_file = ""
# Accept a TCP listen.admin on a non-loopback address (e.g. "0.0.0.0:9901"). The admin API
# speaks plain HTTP: the token and every request cross the network readable by anyone on the
# path. Prefer loopback behind an SSH tunnel or a TLS-terminating proxy.
allow_plaintext_remote = false

[state]
# Durable state (registered sandboxes). Created with mode 0700 if missing.
dir = "/var/lib/gateway"

[dataplane]
# false runs without kernel enforcement (development and HTTP-layer tests only).
enabled = true
# SO_MARK set on every socket the gateway opens towards a sandbox (non-zero).
mark = 0x6777
# bpffs directory where maps and program links are pinned (survive restarts).
bpffs = "/sys/fs/bpf/gateway"
# Public interface guarded by the XDP edge guard; empty = off.
public_interface = ""
# XDP attach mode of the edge guard: "skb" (generic, any interface) or "native" (driver).
xdp_mode = "skb"
# Host TCP ports the edge guard never blocks (failsafe, e.g. SSH), besides listen.https.
extra_public_ports = [22]
# Host ports sandboxes may open connections to, on any address of the host: "udp/PORT" or
# "tcp/PORT", e.g. ["udp/53", "tcp/53"] for a resolver on the host. Every other new connection
# from a sandbox to the host is dropped in the kernel; listen.https's port is always allowed
# (public URLs resolve to the host), the admin API never is.
host_allow = []
# New TCP connections per second one source IPv4 address may open on the public interface
# (every public port, HTTPS and public TCP ports alike), enforced by the edge guard before
# anything reaches the gateway; beyond, SYNs are dropped and counted (drop_edge_rate). 0 = no
# limit. syn_burst: how many a source may open at once before the rate applies.
syn_rate = 200
syn_burst = 400

[tls]
# Default certificate of the HTTPS listener: PEM full chain (leaf first) and its private key.
# Empty (and no [[tls.certificates]]): a development CA and a certificate for
# *.{region}.{domain}, *.{region}.preview.{domain}, *.preview.{domain} and api.{domain} are
# generated once under {state.dir}/tls/ and reused; clients must trust {state.dir}/tls/ca.pem.
cert = ""
key = ""
# More certificates, chosen by the client's SNI (first one whose names cover it; the default
# certificate otherwise). A request whose Host is not covered by the certificate of its
# connection is answered 421. A reload (SIGHUP) loads the certificates again.
certificates = []
# [[tls.certificates]]
# cert = "/etc/gateway/tls/other.pem"
# key = "/etc/gateway/tls/other.key"

[proxy]
# Durations are a number and a unit (humantime): "500ms", "10s", "15m", "1h", "1h 30m". Changes need a restart.
# Time a client has for its TLS handshake, then for each request head (slowloris cut-off).
header_read_timeout = "10s"
# A client connection (WebSocket and other tunnels included) idle this long is closed.
idle_timeout = "15m"
# Time to connect to an app in a sandbox (then 502 saying it timed out).
connect_timeout = "5s"
# Time an app has to send its response head (then 504).
response_timeout = "60s"
# Largest request head, in bytes (431 above). At least 8192.
max_header_bytes = 65536
# Concurrent client connections in total; above, requests are answered 429 with Retry-After.
max_connections = 10000
# Connections the kernel queues before the gateway accepts them (listen backlog, 16 to 65535,
# capped by net.core.somaxconn). Bursts beyond it see their SYNs dropped and retried.
listen_backlog = 4096
# Concurrent proxied requests and tunnels per sandbox; above, 429 with Retry-After.
max_connections_per_sandbox = 256
# Threads serving client connections (each connection stays on one); 0 = one per CPU.
workers = 0
# Hold a request whose port refuses connections, retrying with backoff up to this long, before
# answering 502 (for dev servers still starting). "0s" = answer at once.
wait_for_port = "0s"
# Host sent to apps: "preserve" (what the client sent) or "localhost" (localhost:{port}).
host_header = "preserve"
# Peers (IP or CIDR) whose X-Forwarded-For/-Proto/-Host and Forwarded headers are kept and
# appended to. Everyone else's are replaced by the gateway's.
trusted_proxies = []

[fleet]
# Gateways of many hosts sharing sandboxes, tokens and previews through etcd (v3 API): any
# gateway serves any sandbox, forwarding to the host that runs it. No endpoint: this gateway is
# one host on its own state directory. Production: etcd >= 3.5 with mutual TLS, one prefix per
# region, etcd RBAC limiting each gateway to its prefix. See docs/FLEET.md; changes need a restart.
# etcd endpoints, e.g. ["https://10.0.0.1:2379", "https://10.0.0.2:2379"] (one scheme for all).
etcd = []
# This host's id: one DNS label, unique in the fleet (required with etcd).
host = ""
# Internal listener for the other gateways, mutual TLS (required with etcd), e.g. "10.0.1.5:9443".
listen = ""
# How the other gateways reach that listener; empty = listen (required if listen's IP is 0.0.0.0).
advertise = ""
# Fleet CA (peers' certificates must chain to it), this host's certificate (its SAN DNS name is
# host) and key, PEM (required with etcd).
ca = ""
cert = ""
key = ""
# Key prefix in etcd: one fleet per prefix; starts and ends with "/".
prefix = "/gateway/v1/"
# With no news from etcd for this long, requests that need a token answer 503 (public previews
# keep working); meanwhile every gateway serves from its replica.
auth_max_staleness = "120s"
# etcd's own TLS (https endpoints): its CA (empty: the system's roots), and a client
# certificate and key (both or neither).
etcd_ca = ""
etcd_cert = ""
etcd_key = ""
# etcd authentication: a user and the file holding its password (one line); both or neither.
etcd_user = ""
etcd_password_file = ""

[l4]
# Public TCP ports: a sandbox port declared "TCP" or "TLS" with "expose": {"allowFrom": [...]}
# gets a port of this range on `address`, stable for (workspace, sandbox, port). One socket
# receives the whole range (steered by the kernel's sk_lookup); the edge guard drops SYNs from
# sources outside a port's allowFrom. "LOW-HIGH", e.g. "20000-29999"; empty = off. Changes
# need a restart.
port_range = ""
# The IPv4 address clients connect to; "0.0.0.0" = every address of this host.
address = "0.0.0.0"
# A released public port is not given to another sandbox port for this long, so that a new
# owner does not receive an old client's connections.
quarantine = "10m"
# Concurrent public TCP connections, in total and per sandbox; beyond, a new connection is
# closed at once (and counted).
max_connections = 10000
max_connections_per_sandbox = 256
# A connection with no byte either way for this long is closed.
idle_timeout = "1h"
# How bytes move: "splice" (small reads copied, a direction that brings 16 KiB or more at once
# switches to splice(2) in the kernel) or "copy" (always through userspace).
engine = "splice"
"#;

/// One problem of a configuration file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The file (or `<dev>` for built-in development defaults).
    pub file: String,
    /// The key, dotted (`dataplane.mark`), or a position for syntax errors.
    pub key: String,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.file, self.key, self.reason)
    }
}

/// Every problem of a configuration, in file order where possible.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", render(.0))]
pub struct ConfigErrors(pub Vec<Problem>);

fn render(problems: &[Problem]) -> String {
    problems.iter().map(Problem::to_string).collect::<Vec<_>>().join("\n")
}

/// Where the admin API listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdminListen {
    /// TCP (Bearer token required).
    Tcp(SocketAddr),
    /// Unix socket (file permissions).
    Unix(PathBuf),
}

impl fmt::Display for AdminListen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdminListen::Tcp(a) => write!(f, "{a}"),
            AdminListen::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// Parses `IP:PORT` or `unix:PATH`.
pub fn parse_admin_listen(s: &str) -> Result<AdminListen, String> {
    if let Some(path) = s.strip_prefix("unix:") {
        if path.is_empty() {
            return Err("\"unix:\" needs a socket path, e.g. \"unix:/run/gateway/admin.sock\"".into());
        }
        if path.contains('\0') {
            return Err("socket path contains a NUL byte".into());
        }
        return Ok(AdminListen::Unix(PathBuf::from(path)));
    }
    parse_socket_addr(s).map(AdminListen::Tcp)
}

/// Whether two listeners would bind the same socket: one port, and one address or a wildcard.
fn clashes(a: &SocketAddr, b: &SocketAddr) -> bool {
    a.port() == b.port() && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// The scheme of an etcd endpoint `http(s)://HOST:PORT` (a trailing `/` allowed).
fn parse_endpoint(endpoint: &str) -> Result<&'static str, String> {
    let (scheme, rest) = if let Some(r) = endpoint.strip_prefix("http://") {
        ("http", r)
    } else if let Some(r) = endpoint.strip_prefix("https://") {
        ("https", r)
    } else {
        return Err(format!("{endpoint:?} must start with http:// or https://"));
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    let uri: http::uri::Authority =
        authority.parse().map_err(|_| format!("{endpoint:?} is not a valid endpoint: http(s)://HOST:PORT"))?;
    if authority.contains('@') || authority.contains('/') {
        return Err(format!("{endpoint:?} must be http(s)://HOST:PORT, with no user or path"));
    }
    match uri.port_u16() {
        Some(p) if p != 0 => Ok(scheme),
        _ => Err(format!("{endpoint:?} needs a port (etcd's client port is usually 2379)")),
    }
}

/// Parses `IP:PORT` with a non-zero port.
pub fn parse_socket_addr(s: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = s.parse().map_err(|_| {
        format!("{s:?} is not an address of the form IP:PORT (e.g. \"127.0.0.1:9901\" or \"[::1]:9901\")")
    })?;
    if addr.port() == 0 {
        return Err(format!("{s:?}: port 0 is not allowed"));
    }
    Ok(addr)
}

/// Whether `s` is a lower-case DNS name (labels as [`is_dns_label`], ≤ 253 bytes, no trailing dot).
pub fn is_dns_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

impl Config {
    /// The development configuration of `gateway serve --dev`: domain `gw.test`, region
    /// `local`, HTTPS on 127.0.0.1:8443, admin on `unix:<state>/admin.sock`, state in
    /// `state_dir`, bpffs `/sys/fs/bpf/gateway-dev`.
    pub fn dev(state_dir: PathBuf) -> Self {
        let socket = state_dir.join(crate::paths::DEV_ADMIN_SOCKET);
        Self {
            listen: ListenConfig { admin: format!("unix:{}", socket.display()), https: "127.0.0.1:8443".into() },
            state: StateConfig { dir: state_dir },
            dataplane: DataplaneConfig { bpffs: PathBuf::from(crate::paths::DEV_BPFFS), ..DataplaneConfig::default() },
            ..Config::default()
        }
    }

    /// Every semantic problem (types and unknown keys are checked by [`parse`]).
    pub fn validate(&self, file: &str) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut bad = |key: &str, reason: String| {
            problems.push(Problem { file: file.to_string(), key: key.to_string(), reason });
        };
        if !is_dns_name(&self.domain) {
            bad(
                "domain",
                format!(
                    "{:?} is not a valid DNS name (lower-case labels of a-z, 0-9 and '-', 1 to 63 characters each, no leading or trailing '-', no trailing dot)",
                    self.domain
                ),
            );
        }
        if self.region.contains('.') {
            bad("region", format!("{:?} must be a single DNS label: no dot", self.region));
        } else if !is_dns_label(&self.region) {
            bad(
                "region",
                format!(
                    "{:?} is not a valid DNS label (1 to 63 of a-z, 0-9 and '-', no leading or trailing '-')",
                    self.region
                ),
            );
        }
        let admin = parse_admin_listen(&self.listen.admin);
        if let Err(e) = &admin {
            bad("listen.admin", e.clone());
        }
        let https = parse_socket_addr(&self.listen.https);
        if let Err(e) = &https {
            bad("listen.https", e.clone());
        }
        if let (Ok(AdminListen::Tcp(a)), Ok(h)) = (&admin, &https)
            && clashes(a, h)
        {
            bad("listen.admin", format!("{a} clashes with listen.https {h}"));
        }
        self.validate_admin(&admin, &mut bad);
        if self.state.dir.as_os_str().is_empty() {
            bad("state.dir", "must not be empty".into());
        }
        if self.dataplane.mark == 0 {
            bad("dataplane.mark", "must not be 0 (0 is the mark of every unmarked socket)".into());
        }
        if self.dataplane.bpffs.as_os_str().is_empty() {
            bad("dataplane.bpffs", "must not be empty".into());
        } else if !self.dataplane.bpffs.is_absolute() {
            bad("dataplane.bpffs", format!("{} must be an absolute path", self.dataplane.bpffs.display()));
        }
        if !self.dataplane.public_interface.is_empty() && !is_interface_name(&self.dataplane.public_interface) {
            bad(
                "dataplane.public_interface",
                format!(
                    "{:?} is not a valid interface name (1 to 15 printable characters, no '/' or ':')",
                    self.dataplane.public_interface
                ),
            );
        }
        for (i, port) in self.dataplane.extra_public_ports.iter().enumerate() {
            if *port == 0 {
                bad(&format!("dataplane.extra_public_ports[{i}]"), "port 0 is not a valid port (1..65535)".into());
            }
        }
        if self.dataplane.syn_rate > 0 && self.dataplane.syn_burst == 0 {
            bad("dataplane.syn_burst", "must be at least 1 when syn_rate is set".into());
        }
        for (i, entry) in self.dataplane.host_allow.iter().enumerate() {
            if let Err(e) = entry.parse::<HostPort>() {
                bad(&format!("dataplane.host_allow[{i}]"), e);
            }
        }
        self.validate_tls(&mut bad);
        self.validate_proxy(&mut bad);
        self.validate_fleet(https.as_ref().ok(), &mut bad);
        self.validate_l4(https.as_ref().ok(), &mut bad);
        problems
    }

    fn validate_l4(&self, https: Option<&SocketAddr>, bad: &mut impl FnMut(&str, String)) {
        let l = &self.l4;
        let range = match parse_port_range(&l.port_range) {
            Ok(r) => r,
            Err(e) => {
                bad("l4.port_range", e);
                None
            }
        };
        if let Some(range) = &range {
            let mut inside = gateway_common::RESERVED_PORTS.iter().filter(|p| range.contains(p)).peekable();
            if inside.peek().is_some() {
                let list: Vec<String> = inside.map(|p| p.to_string()).collect();
                bad("l4.port_range", format!("{} holds reserved port(s) {}", l.port_range, list.join(", ")));
            }
            if let Some(h) = https.filter(|h| range.contains(&h.port())) {
                bad("l4.port_range", format!("{} holds the port of listen.https {h}", l.port_range));
            }
            if !self.dataplane.enabled {
                bad(
                    "l4.port_range",
                    "public TCP ports need the kernel data plane (dataplane.enabled = true): one socket receives the whole range through sk_lookup".into(),
                );
            }
        }
        if l.address.parse::<Ipv4Addr>().is_err() {
            bad("l4.address", format!("{:?} is not an IPv4 address (0.0.0.0: every address of the host)", l.address));
        }
        for (key, d) in [("l4.idle_timeout", l.idle_timeout)] {
            if d.get().is_zero() {
                bad(key, "must be more than 0".into());
            }
        }
        if l.max_connections == 0 {
            bad("l4.max_connections", "must be at least 1".into());
        }
        if l.max_connections_per_sandbox == 0 {
            bad("l4.max_connections_per_sandbox", "must be at least 1".into());
        }
    }

    fn validate_fleet(&self, https: Option<&SocketAddr>, bad: &mut impl FnMut(&str, String)) {
        let f = &self.fleet;
        if !f.enabled() {
            return;
        }
        let mut schemes = std::collections::BTreeSet::new();
        for (i, endpoint) in f.etcd.iter().enumerate() {
            match parse_endpoint(endpoint) {
                Ok(scheme) => {
                    schemes.insert(scheme);
                }
                Err(e) => bad(&format!("fleet.etcd[{i}]"), e),
            }
        }
        if schemes.len() > 1 {
            bad("fleet.etcd", "mixes http:// and https:// endpoints: use one scheme for all".into());
        }
        if f.host.is_empty() {
            bad("fleet.host", "is required with fleet.etcd: this host's id, one DNS label unique in the fleet".into());
        } else if !is_dns_label(&f.host) {
            bad(
                "fleet.host",
                format!(
                    "{:?} is not a valid DNS label (1 to 63 of a-z, 0-9 and '-', no leading or trailing '-')",
                    f.host
                ),
            );
        }
        let listen = if f.listen.is_empty() {
            bad("fleet.listen", "is required with fleet.etcd: the internal listener, e.g. \"10.0.1.5:9443\"".into());
            None
        } else {
            match parse_socket_addr(&f.listen) {
                Ok(a) => Some(a),
                Err(e) => {
                    bad("fleet.listen", e);
                    None
                }
            }
        };
        if let (Some(l), Some(h)) = (listen, https)
            && clashes(&l, h)
        {
            bad("fleet.listen", format!("{l} clashes with listen.https {h}"));
        }
        if f.advertise.is_empty() {
            if listen.is_some_and(|l| l.ip().is_unspecified()) {
                bad("fleet.advertise", format!("is required when fleet.listen ({}) is a wildcard address", f.listen));
            }
        } else {
            match parse_socket_addr(&f.advertise) {
                Ok(a) if a.ip().is_unspecified() || a.port() == 0 => {
                    bad("fleet.advertise", format!("{a} cannot be reached: give the address and port peers connect to"))
                }
                Ok(_) => {}
                Err(e) => bad("fleet.advertise", e),
            }
        }
        for (key, path) in [("fleet.ca", &f.ca), ("fleet.cert", &f.cert), ("fleet.key", &f.key)] {
            if path.as_os_str().is_empty() {
                bad(key, "is required with fleet.etcd (the fleet's mutual TLS)".into());
            }
        }
        if f.prefix.len() < 2 || !f.prefix.starts_with('/') || !f.prefix.ends_with('/') {
            bad(
                "fleet.prefix",
                format!("{:?} must start and end with '/' and name something, e.g. \"/gateway/v1/\"", f.prefix),
            );
        } else if f.prefix.chars().any(|c| c.is_whitespace() || c.is_control()) {
            bad("fleet.prefix", format!("{:?} must not contain spaces or control characters", f.prefix));
        }
        if f.auth_max_staleness.get() < Duration::from_secs(1) {
            bad("fleet.auth_max_staleness", format!("{} is too short: at least 1s", f.auth_max_staleness));
        }
        if f.etcd_cert.as_os_str().is_empty() != f.etcd_key.as_os_str().is_empty() {
            bad("fleet.etcd_cert", "and fleet.etcd_key go together: set both or neither".into());
        }
        if f.etcd_user.is_empty() != f.etcd_password_file.as_os_str().is_empty() {
            bad("fleet.etcd_user", "and fleet.etcd_password_file go together: set both or neither".into());
        }
        let tls_files = !f.etcd_ca.as_os_str().is_empty() || !f.etcd_cert.as_os_str().is_empty();
        if tls_files && schemes.contains("http") {
            bad("fleet.etcd_ca", "etcd TLS files are set but the endpoints are http://: use https://".into());
        }
    }

    /// The admin credential: no well-known or empty secret on TCP, and no plain-text admin API
    /// off loopback unless asked for.
    fn validate_admin(&self, listen: &Result<AdminListen, String>, bad: &mut impl FnMut(&str, String)) {
        let a = &self.admin;
        if let Ok(AdminListen::Tcp(addr)) = listen
            && !addr.ip().to_canonical().is_loopback()
            && !a.allow_plaintext_remote
        {
            bad(
                "listen.admin",
                format!(
                    "{addr} is not a loopback address and the admin API has no TLS: its token and every request would cross the network in clear text. Listen on 127.0.0.1, [::1] or a unix socket (remote access through an SSH tunnel or a TLS-terminating proxy), or set admin.allow_plaintext_remote = true"
                ),
            );
        }
        let has_file = !a.token_file.as_os_str().is_empty();
        if has_file && !a.token.is_empty() {
            bad("admin.token_file", "is set together with admin.token: set one of them".into());
            return;
        }
        if let Some(Err(e)) = &a.file_token {
            bad("admin.token_file", e.clone());
            return;
        }
        let (key, secret) = (a.secret_key(), a.secret());
        if !secret.bytes().all(|b| b.is_ascii_graphic()) {
            bad(key, "must be printable ASCII without spaces (it is sent in an HTTP header)".into());
            return;
        }
        let Ok(AdminListen::Tcp(addr)) = listen else { return };
        if secret.is_empty() {
            bad(
                key,
                format!(
                    "is required with a TCP listen.admin ({addr}): set admin.token or admin.token_file to a random secret of at least {MIN_ADMIN_TOKEN_BYTES} bytes (`openssl rand -hex 32`), or listen on a unix socket (\"unix:{}\")",
                    crate::paths::DEFAULT_ADMIN_SOCKET
                ),
            );
        } else if WELL_KNOWN_ADMIN_TOKENS.contains(&secret) {
            bad(
                key,
                format!(
                    "{secret:?} is a published example and is never accepted: use a random secret of at least {MIN_ADMIN_TOKEN_BYTES} bytes (`openssl rand -hex 32`)"
                ),
            );
        } else if secret.len() < MIN_ADMIN_TOKEN_BYTES {
            bad(
                key,
                format!(
                    "is {} bytes long: a TCP listen.admin needs at least {MIN_ADMIN_TOKEN_BYTES} (`openssl rand -hex 32`)",
                    secret.len()
                ),
            );
        }
    }

    fn validate_tls(&self, bad: &mut impl FnMut(&str, String)) {
        let pair = |key: &str, cert: &Path, key_path: &Path, bad: &mut dyn FnMut(&str, String)| match (
            cert.as_os_str().is_empty(),
            key_path.as_os_str().is_empty(),
        ) {
            (true, false) => bad(&format!("{key}cert"), "is empty but the key is set: set both or neither".into()),
            (false, true) => bad(&format!("{key}key"), "is empty but the cert is set: set both or neither".into()),
            _ => {}
        };
        pair("tls.", &self.tls.cert, &self.tls.key, bad);
        for (i, c) in self.tls.certificates.iter().enumerate() {
            let prefix = format!("tls.certificates[{i}].");
            if c.cert.as_os_str().is_empty() || c.key.as_os_str().is_empty() {
                bad(&prefix[..prefix.len() - 1], "needs both cert and key".into());
            }
        }
    }

    fn validate_proxy(&self, bad: &mut impl FnMut(&str, String)) {
        let p = &self.proxy;
        for (key, d) in [
            ("proxy.header_read_timeout", p.header_read_timeout),
            ("proxy.idle_timeout", p.idle_timeout),
            ("proxy.connect_timeout", p.connect_timeout),
            ("proxy.response_timeout", p.response_timeout),
        ] {
            if d.get().is_zero() {
                bad(key, "must be more than 0".into());
            }
        }
        if p.wait_for_port.get() > Duration::from_secs(300) {
            bad("proxy.wait_for_port", format!("{} is too long: at most 5m", p.wait_for_port));
        }
        if !(8192..=1024 * 1024).contains(&p.max_header_bytes) {
            bad("proxy.max_header_bytes", format!("{} is out of range: 8192 to 1048576", p.max_header_bytes));
        }
        if p.max_connections == 0 {
            bad("proxy.max_connections", "must be at least 1".into());
        }
        if !(16..=65_535).contains(&p.listen_backlog) {
            bad("proxy.listen_backlog", format!("{} is out of range: 16 to 65535", p.listen_backlog));
        }
        if p.workers > MAX_WORKERS {
            bad("proxy.workers", format!("{} is out of range: 0 (one per CPU) to {MAX_WORKERS}", p.workers));
        }
        if p.max_connections_per_sandbox == 0 {
            bad("proxy.max_connections_per_sandbox", "must be at least 1".into());
        }
        for (i, t) in p.trusted_proxies.iter().enumerate() {
            if let Err(e) = IpNet::parse(t) {
                bad(&format!("proxy.trusted_proxies[{i}]"), e);
            }
        }
    }

    /// `proxy.trusted_proxies`, parsed (invalid entries, refused by [`Config::validate`], skipped).
    pub fn trusted_proxies(&self) -> Vec<IpNet> {
        self.proxy.trusted_proxies.iter().filter_map(|t| IpNet::parse(t).ok()).collect()
    }

    /// The admin listener (call after [`Config::validate`] returned no problem).
    pub fn admin_listen(&self) -> Result<AdminListen, String> {
        parse_admin_listen(&self.listen.admin)
    }

    /// The public HTTPS listener.
    pub fn https_addr(&self) -> Result<SocketAddr, String> {
        parse_socket_addr(&self.listen.https)
    }

    /// `https://sbx-{name}-{ws}.{region}.{domain}`, plus `:{port}` when the HTTPS listener is
    /// not on 443.
    pub fn sandbox_url(&self, label: &str) -> String {
        let port = self.https_addr().map(|a| a.port()).unwrap_or(443);
        if port == 443 {
            format!("https://{label}.{}.{}", self.region, self.domain)
        } else {
            format!("https://{label}.{}.{}:{port}", self.region, self.domain)
        }
    }

    /// What the data plane needs: the admin listener (if TCP) is protected from sandboxes; the
    /// HTTPS listener's port and `extra_public_ports` pass the edge guard.
    pub fn dataplane_settings(&self) -> DataplaneSettings {
        let mut protected = Vec::new();
        if let Ok(AdminListen::Tcp(a)) = self.admin_listen() {
            protected.push(a);
        }
        let mut public_ports = Vec::new();
        if let Ok(h) = self.https_addr() {
            public_ports.push(h.port());
        }
        public_ports.extend(self.dataplane.extra_public_ports.iter().copied().filter(|p| *p != 0));
        public_ports.sort_unstable();
        public_ports.dedup();
        let mut host_allow: Vec<HostPort> = self.dataplane.host_allow.iter().filter_map(|p| p.parse().ok()).collect();
        if let Ok(h) = self.https_addr() {
            host_allow.push(HostPort::tcp(h.port()));
        }
        host_allow.sort_unstable();
        host_allow.dedup();
        DataplaneSettings {
            enabled: self.dataplane.enabled,
            mark: self.dataplane.mark,
            bpffs: self.dataplane.bpffs.clone(),
            public_interface: (!self.dataplane.public_interface.is_empty())
                .then(|| self.dataplane.public_interface.clone()),
            xdp_mode: self.dataplane.xdp_mode,
            protected,
            public_ports,
            host_allow,
        }
    }
}

/// The keys that a reload (SIGHUP) cannot apply and that differ between `old` and `new`: the
/// listeners (sockets are bound once), the names in URLs (`domain`, `region`), the state
/// directory (locked by the running process), the data plane and `[proxy]` (the edge's
/// connection builders, caps and upstream clients are set up once). Every other key
/// (`[admin]`: the token, or `admin.token_file` read again; `[tls]`: new certificates for new
/// handshakes) is reloadable.
pub fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    let mut check = |key: &'static str, differs: bool| {
        if differs {
            changed.push(key);
        }
    };
    check("domain", old.domain != new.domain);
    check("region", old.region != new.region);
    check("listen.admin", old.listen.admin != new.listen.admin);
    check("listen.https", old.listen.https != new.listen.https);
    check("state.dir", old.state.dir != new.state.dir);
    check("[dataplane]", old.dataplane != new.dataplane);
    check("[proxy]", old.proxy != new.proxy);
    check("[fleet]", old.fleet != new.fleet);
    check("[l4]", old.l4 != new.l4);
    changed
}

/// Reads, parses and validates a configuration file.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![Problem {
            file: file.clone(),
            key: "-".into(),
            reason: format!("cannot read the file: {e}"),
        }])
    })?;
    parse(&file, &text)
}

/// Parses and validates configuration text; `file` names it in problems. The one file it reads
/// is `admin.token_file`.
pub fn parse(file: &str, text: &str) -> Result<Config, ConfigErrors> {
    let mut problems = Vec::new();
    let table: toml::Table = match text.parse() {
        Ok(t) => t,
        Err(e) => {
            let key = match e.span() {
                Some(span) => position(text, span.start),
                None => "-".into(),
            };
            let reason = format!("TOML syntax error: {}", e.message().replace('\n', ", "));
            return Err(ConfigErrors(vec![Problem { file: file.into(), key, reason }]));
        }
    };
    // Each key is checked on its own (a one-key table deserialized into its struct, every field
    // having a default), so that every bad or unknown key is reported, not just the first.
    let mut clean = toml::Table::new();
    for (key, value) in table {
        let section = match key.as_str() {
            "listen" => Some(check_section::<ListenConfig>(file, &key, &value, &mut problems)),
            "admin" => Some(check_section::<AdminConfig>(file, &key, &value, &mut problems)),
            "state" => Some(check_section::<StateConfig>(file, &key, &value, &mut problems)),
            "dataplane" => Some(check_section::<DataplaneConfig>(file, &key, &value, &mut problems)),
            "tls" => Some(check_section::<TlsConfig>(file, &key, &value, &mut problems)),
            "proxy" => Some(check_section::<ProxyConfig>(file, &key, &value, &mut problems)),
            "l4" => Some(check_section::<L4Config>(file, &key, &value, &mut problems)),
            _ => None,
        };
        match section {
            Some(Some(t)) => {
                clean.insert(key, toml::Value::Table(t));
            }
            Some(None) => {}
            None => {
                if check_key::<Config>(file, "", &key, &value, &mut problems) {
                    clean.insert(key, value);
                }
            }
        }
    }
    let mut config: Config = match toml::Value::Table(clean).try_into() {
        Ok(c) => c,
        Err(e) => {
            problems.push(Problem { file: file.into(), key: "-".into(), reason: e.message().trim().to_string() });
            return Err(ConfigErrors(problems));
        }
    };
    config.admin.read_token_file();
    problems.extend(config.validate(file));
    if problems.is_empty() { Ok(config) } else { Err(ConfigErrors(problems)) }
}

/// Checks every key of a section; returns the section without its bad keys, or `None` when the
/// value is not a table.
fn check_section<T: DeserializeOwned>(
    file: &str,
    name: &str,
    value: &toml::Value,
    problems: &mut Vec<Problem>,
) -> Option<toml::Table> {
    let Some(table) = value.as_table() else {
        problems.push(Problem {
            file: file.into(),
            key: name.into(),
            reason: format!("must be a table ([{name}]), found a {}", value.type_str()),
        });
        return None;
    };
    let mut clean = toml::Table::new();
    for (key, value) in table {
        if check_key::<T>(file, name, key, value, problems) {
            clean.insert(key.clone(), value.clone());
        }
    }
    Some(clean)
}

/// Whether `key = value` alone deserializes into `T`; records a problem if not.
fn check_key<T: DeserializeOwned>(
    file: &str,
    section: &str,
    key: &str,
    value: &toml::Value,
    problems: &mut Vec<Problem>,
) -> bool {
    let mut one = toml::Table::new();
    one.insert(key.to_string(), value.clone());
    match toml::Value::Table(one).try_into::<T>() {
        Ok(_) => true,
        Err(e) => {
            let message = e.message().trim().to_string();
            let reason = match message.strip_prefix(&format!("unknown field `{key}`, ")) {
                Some(rest) => format!(
                    "unknown key (known keys: {})",
                    rest.trim_start_matches("expected one of ").trim_start_matches("expected ")
                ),
                None if message.starts_with("unknown field") => "unknown key".to_string(),
                None => message,
            };
            let key = if section.is_empty() { key.to_string() } else { format!("{section}.{key}") };
            problems.push(Problem { file: file.into(), key, reason });
            false
        }
    }
}

/// `line L, column C` of a byte offset.
fn position(text: &str, offset: usize) -> String {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map(|l| l.chars().count()).unwrap_or(0) + 1;
    format!("line {line}, column {column}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<Problem> {
        parse("f.toml", text).err().map(|e| e.0).unwrap_or_default()
    }

    #[test]
    fn default_text_is_the_default() {
        assert_eq!(parse("default", DEFAULT_CONFIG_TOML), Ok(Config::default()));
    }

    /// Every key of the configuration (as serde writes the defaults) is in the commented default
    /// text, in its section: a new key cannot go undocumented.
    #[test]
    fn every_key_is_in_the_commented_defaults() {
        let value = toml::Value::try_from(Config::default()).expect("serialize the defaults");
        let mut missing = Vec::new();
        let mut section = String::new();
        let lines: Vec<(String, String)> = DEFAULT_CONFIG_TOML
            .lines()
            .filter_map(|l| {
                let l = l.trim();
                if l.starts_with('[') {
                    section = l.trim_matches(|c| c == '[' || c == ']').to_string();
                    None
                } else if l.starts_with('#') || l.is_empty() {
                    None
                } else {
                    l.split_once('=').map(|(k, _)| (section.clone(), k.trim().to_string()))
                }
            })
            .collect();
        fn walk(prefix: &str, v: &toml::Value, out: &mut Vec<(String, String)>) {
            if let toml::Value::Table(t) = v {
                for (k, v) in t {
                    match v {
                        toml::Value::Table(_) => {
                            walk(&if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") }, v, out)
                        }
                        _ => out.push((prefix.to_string(), k.clone())),
                    }
                }
            }
        }
        let mut keys = Vec::new();
        walk("", &value, &mut keys);
        for key in keys {
            if !lines.contains(&key) {
                missing.push(format!("[{}] {}", key.0, key.1));
            }
        }
        assert!(missing.is_empty(), "keys missing from DEFAULT_CONFIG_TOML: {missing:?}");
    }

    #[test]
    fn empty_file_is_the_default() {
        assert_eq!(parse("empty", ""), Ok(Config::default()));
    }

    #[test]
    fn contract_keys() {
        let text = r#"
domain = "gw.test"
region = "local"
[listen]
admin = "unix:/run/gateway/admin.sock"
[admin]
token = ""
[state]
dir = "/tmp/x"
[dataplane]
enabled = false
mark = 0x1234
bpffs = "/sys/fs/bpf/x"
public_interface = "eth0"
xdp_mode = "native"
host_allow = ["udp/53", "tcp/53", "udp/53"]
"#;
        let c = parse("f", text).expect("valid");
        assert_eq!(c.admin_listen(), Ok(AdminListen::Unix("/run/gateway/admin.sock".into())));
        assert_eq!(c.dataplane.mark, 0x1234);
        assert_eq!(c.dataplane.xdp_mode, XdpModeSetting::Native);
        let s = c.dataplane_settings();
        assert!(s.protected.is_empty());
        assert_eq!(s.public_ports, vec![22, 443]);
        assert_eq!(s.public_interface.as_deref(), Some("eth0"));
        assert_eq!(s.host_allow, vec![HostPort::tcp(53), HostPort::tcp(443), HostPort::udp(53)], "plus listen.https");
    }

    #[test]
    fn every_problem_is_reported() {
        let text = r#"
domain = "Not_A_Domain"
region = "eu.west"
bogus = 1
[listen]
admin = "nowhere"
https = "0.0.0.0:0"
[admin]
token = ""
[dataplane]
mark = 0
xdp_mode = "turbo"
extra = true
bpffs = "relative"
host_allow = ["udp/53", "sctp/9", "tcp/0", "udp", "tcp/65536"]
"#;
        let keys: Vec<String> = problems(text).into_iter().map(|p| p.key).collect();
        assert!(!keys.iter().any(|x| x == "dataplane.host_allow[0]"), "udp/53 is valid: {keys:?}");
        for k in [
            "domain",
            "region",
            "bogus",
            "listen.admin",
            "listen.https",
            "dataplane.mark",
            "dataplane.xdp_mode",
            "dataplane.extra",
            "dataplane.bpffs",
            "dataplane.host_allow[1]",
            "dataplane.host_allow[2]",
            "dataplane.host_allow[3]",
            "dataplane.host_allow[4]",
        ] {
            assert!(keys.iter().any(|x| x == k), "{k} missing from {keys:?}");
        }
    }

    #[test]
    fn edge_keys() {
        let text = r#"
[tls]
cert = "/etc/gw/a.pem"
key = "/etc/gw/a.key"
[[tls.certificates]]
cert = "/etc/gw/b.pem"
key = "/etc/gw/b.key"
[proxy]
header_read_timeout = "500ms"
idle_timeout = "1h"
wait_for_port = "3s"
host_header = "localhost"
trusted_proxies = ["10.0.0.0/8", "::1"]
"#;
        let c = parse("f", text).expect("valid");
        assert_eq!(c.tls.certificates.len(), 1);
        assert_eq!(c.proxy.header_read_timeout.get(), Duration::from_millis(500));
        assert_eq!(c.proxy.idle_timeout.get(), Duration::from_secs(3600));
        assert_eq!(c.proxy.host_header, HostHeaderPolicy::Localhost);
        let t = c.trusted_proxies();
        assert!(t[0].contains("10.1.2.3".parse().expect("ip")));
        assert!(!t[0].contains("11.1.2.3".parse().expect("ip")));
        assert!(t[1].contains("::1".parse().expect("ip")));
        assert!(t[0].contains("::ffff:10.0.0.1".parse().expect("ip")));
    }

    #[test]
    fn edge_problems() {
        let text = r#"
[tls]
cert = "/a.pem"
bogus = 1
[[tls.certificates]]
cert = "/b.pem"
[proxy]
header_read_timeout = "0s"
idle_timeout = "15 fortnights"
max_header_bytes = 100
max_connections = 0
listen_backlog = 70000
host_header = "origin"
trusted_proxies = ["10.0.0.0/33", "x"]
"#;
        let keys: Vec<String> = problems(text).into_iter().map(|p| p.key).collect();
        for k in [
            "tls.key",
            "tls.bogus",
            "tls.certificates[0]",
            "proxy.header_read_timeout",
            "proxy.idle_timeout",
            "proxy.max_header_bytes",
            "proxy.max_connections",
            "proxy.listen_backlog",
            "proxy.host_header",
            "proxy.trusted_proxies[0]",
            "proxy.trusted_proxies[1]",
        ] {
            assert!(keys.iter().any(|x| x == k), "{k} missing from {keys:?}");
        }
    }

    #[test]
    fn durations() {
        for (s, ms, shown) in [
            ("0s", 0, "0s"),
            ("250ms", 250, "250ms"),
            ("10s", 10_000, "10s"),
            ("15m", 900_000, "15m"),
            ("2h", 7_200_000, "2h"),
            ("90m", 5_400_000, "1h 30m"),
            ("1.5s", 1_500, "1s 500ms"),
            ("10 s", 10_000, "10s"),
            ("2 minutes", 120_000, "2m"),
        ] {
            let d: HumanDuration = s.parse().expect(s);
            assert_eq!(d.get(), Duration::from_millis(ms), "{s}");
            assert_eq!(d.to_string(), shown, "{s}");
            assert_eq!(d.to_string().parse::<HumanDuration>(), Ok(d));
        }
        for s in ["", "10", "s", "-1s", "1 parsec", "1s2"] {
            let e = s.parse::<HumanDuration>().expect_err(s);
            assert!(e.contains("is not a duration"), "{e}");
        }
    }

    /// A token that TCP accepts (32 bytes).
    const GOOD: &str = "0123456789abcdef0123456789abcdef";

    fn tcp(admin: &str, admin_section: &str) -> String {
        format!("[listen]\nadmin = \"{admin}\"\n[admin]\n{admin_section}\n")
    }

    /// The one problem of `text`, as (key, reason).
    fn one_problem(text: &str) -> (String, String) {
        let p = problems(text);
        assert_eq!(p.len(), 1, "{text}: {p:?}");
        (p[0].key.clone(), p[0].reason.clone())
    }

    #[test]
    fn the_default_admin_is_a_unix_socket_without_token() {
        let c = Config::default();
        assert_eq!(c.admin_listen(), Ok(AdminListen::Unix(crate::paths::DEFAULT_ADMIN_SOCKET.into())));
        assert_eq!(c.admin.secret(), "");
        assert_eq!(c.admin.tcp_secret(), None, "no TCP listener may accept the default");
        assert!(c.validate("default").is_empty());
        assert!(c.dataplane_settings().protected.is_empty());
    }

    #[test]
    fn tcp_admin_refuses_missing_well_known_and_short_tokens() {
        for (section, says) in [
            ("", "is required with a TCP listen.admin"),
            ("token = \"\"", "is required with a TCP listen.admin"),
            ("token = \"change-me\"", "\"change-me\" is a published example and is never accepted"),
            (&format!("token = \"{}\"", &GOOD[1..]), "is 31 bytes long: a TCP listen.admin needs at least 32"),
            ("token = \"with space 0123456789abcdef0123456789\"", "must be printable ASCII"),
        ] {
            let (key, reason) = one_problem(&tcp("127.0.0.1:9901", section));
            assert_eq!(key, "admin.token", "{section}");
            assert!(reason.contains(says), "{section}: {reason}");
        }
        let mut c = Config::default();
        c.listen.admin = "127.0.0.1:9901".into();
        c.admin.token = "change-me".into();
        assert_eq!(c.admin.tcp_secret(), None);
        c.admin.token = GOOD.into();
        assert_eq!(c.admin.tcp_secret(), Some(GOOD));
    }

    #[test]
    fn tcp_admin_accepts_a_long_token_on_loopback() {
        for admin in ["127.0.0.1:9901", "127.1.2.3:9901", "[::1]:9901", "[::ffff:127.0.0.1]:9901"] {
            let c = parse("f", &tcp(admin, &format!("token = \"{GOOD}\""))).expect(admin);
            assert_eq!(c.admin.tcp_secret(), Some(GOOD));
        }
        // On a unix socket the token is unused, so none is needed.
        assert!(problems(&tcp("unix:/run/x.sock", "")).is_empty());
    }

    #[test]
    fn remote_tcp_admin_needs_the_explicit_opt_in() {
        for admin in ["0.0.0.0:9901", "[::]:9901", "192.0.2.1:9901"] {
            let (key, reason) = one_problem(&tcp(admin, &format!("token = \"{GOOD}\"")));
            assert_eq!(key, "listen.admin");
            assert!(
                reason.contains("not a loopback address") && reason.contains("admin.allow_plaintext_remote = true")
            );
            let text = tcp(admin, &format!("token = \"{GOOD}\"\nallow_plaintext_remote = true"));
            assert!(problems(&text).is_empty(), "{admin}");
        }
        // The issue's configuration: both problems at once.
        let keys: Vec<_> = problems(&tcp("0.0.0.0:19999", "")).into_iter().map(|p| p.key).collect();
        assert_eq!(keys, ["listen.admin", "admin.token"]);
        // The opt-in does not lift the token rules.
        let (key, _) = one_problem(&tcp("0.0.0.0:19999", "allow_plaintext_remote = true\ntoken = \"change-me\""));
        assert_eq!(key, "admin.token");
    }

    /// A file with `content` in a fresh directory.
    fn secret_file(name: &str, content: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("gw-config-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("admin.token");
        std::fs::write(&path, content).expect("write");
        path
    }

    fn remove_secret_files(paths: &[&Path]) {
        for p in paths {
            let _ = std::fs::remove_dir_all(p.parent().expect("its directory"));
        }
    }

    #[test]
    fn token_file_is_read_and_its_line_break_trimmed() {
        let path = secret_file("ok", &format!("{GOOD}\n"));
        let text = tcp("127.0.0.1:9901", &format!("token_file = \"{}\"", path.display()));
        let c = parse("f", &text).expect("valid");
        assert_eq!(c.admin.secret(), GOOD);
        assert_eq!(c.admin.tcp_secret(), Some(GOOD));
        assert!(!format!("{c:?}").contains(GOOD), "Debug redacts the file's token");
        // Read again by every parse (a reload): a rotated file is a reloadable change.
        std::fs::write(&path, format!("{}\r\n", GOOD.to_uppercase())).expect("rotate");
        let rotated = parse("f", &text).expect("valid");
        assert_eq!(rotated.admin.secret(), GOOD.to_uppercase());
        assert_ne!(rotated, c);
        assert!(restart_only_changes(&c, &rotated).is_empty());
        remove_secret_files(&[&path]);
    }

    #[test]
    fn token_file_problems_name_it() {
        let missing = secret_file("missing", "").with_file_name("absent");
        let empty = secret_file("empty", "\n");
        let short = secret_file("short", "short\n");
        let example = secret_file("example", "change-me\n");
        let long = secret_file("long", &"a".repeat(5000));
        for (path, says) in [
            (&missing, "cannot read"),
            (&empty, "is empty"),
            (&short, "is 5 bytes long"),
            (&example, "is a published example"),
            (&long, "longer than 4096 bytes"),
        ] {
            let text = tcp("127.0.0.1:9901", &format!("token_file = \"{}\"", path.display()));
            let (key, reason) = one_problem(&text);
            assert_eq!(key, "admin.token_file", "{}", path.display());
            assert!(reason.contains(says), "{}: {reason}", path.display());
        }
        // Unreadable even on a unix socket: the file was asked for.
        let (key, _) = one_problem(&tcp("unix:/run/x.sock", &format!("token_file = \"{}\"", missing.display())));
        assert_eq!(key, "admin.token_file");
        // Both ways at once.
        let good = secret_file("both", GOOD);
        let text = tcp("127.0.0.1:9901", &format!("token = \"{GOOD}\"\ntoken_file = \"{}\"", good.display()));
        let (key, reason) = one_problem(&text);
        assert_eq!(key, "admin.token_file");
        assert!(reason.contains("set one of them"), "{reason}");
        // A token_file that was never read (a configuration built in code) authorizes nothing.
        let mut c = Config::default();
        c.admin.token_file = good.clone();
        assert_eq!((c.admin.secret(), c.admin.tcp_secret()), ("", None));
        remove_secret_files(&[&missing, &empty, &short, &example, &long, &good]);
    }

    #[test]
    fn syntax_error_has_position() {
        let p = problems("domain = \"x\"\n[listen\n");
        assert_eq!(p.len(), 1);
        assert!(p[0].key.starts_with("line 2"), "{:?}", p[0]);
    }

    #[test]
    fn reloadable_and_restart_only_keys() {
        let old = Config::default();
        let mut new = old.clone();
        new.admin.token = "another".into();
        new.admin.allow_plaintext_remote = true;
        assert!(restart_only_changes(&old, &new).is_empty(), "[admin] is reloadable");
        new.listen.https = "127.0.0.1:8443".into();
        new.dataplane.mark = 7;
        assert_eq!(restart_only_changes(&old, &new), vec!["listen.https", "[dataplane]"]);
    }

    #[test]
    fn url_port() {
        let mut c = Config::default();
        assert_eq!(c.sandbox_url("sbx-a-b"), "https://sbx-a-b.local.gw.test");
        c.listen.https = "127.0.0.1:8443".into();
        assert_eq!(c.sandbox_url("sbx-a-b"), "https://sbx-a-b.local.gw.test:8443");
    }

    #[test]
    fn dns() {
        assert!(is_dns_name("gw.test"));
        assert!(is_dns_name("localhost"));
        assert!(!is_dns_name("gw.test."));
        assert!(!is_dns_name("-a.test"));
        assert!(!is_dns_name("GW.test"));
        assert!(!is_dns_label(&"a".repeat(64)));
    }

    fn fleet(extra: &str) -> Result<Config, ConfigErrors> {
        parse(
            "f.toml",
            &format!(
                "[fleet]\netcd = [\"http://127.0.0.1:2379\"]\nhost = \"host-a\"\nlisten = \"10.0.1.5:9443\"\nca = \"/f/ca.pem\"\ncert = \"/f/host.pem\"\nkey = \"/f/host.key\"\n{extra}"
            ),
        )
    }

    fn fleet_problems(extra: &str) -> Vec<String> {
        match fleet(extra) {
            Ok(_) => Vec::new(),
            Err(ConfigErrors(p)) => p.into_iter().map(|p| format!("{}: {}", p.key, p.reason)).collect(),
        }
    }

    #[test]
    fn fleet_section_is_checked_only_with_endpoints() {
        let c = fleet("").expect("a minimal fleet");
        assert!(c.fleet.enabled());
        assert_eq!(c.fleet.prefix, "/gateway/v1/");
        assert_eq!(c.fleet.auth_max_staleness.get(), Duration::from_secs(120));
        // No endpoint: no fleet, nothing else required.
        let single = parse("f.toml", "[fleet]\nhost = \"\"\n").expect("no fleet");
        assert!(!single.fleet.enabled());
        let bare = parse("f.toml", "[fleet]\netcd = [\"http://127.0.0.1:2379\"]\n").expect_err("incomplete");
        let keys: Vec<&str> = bare.0.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["fleet.host", "fleet.listen", "fleet.ca", "fleet.cert", "fleet.key"]);
    }

    #[test]
    fn fleet_problems_name_their_key() {
        let cases: [(&str, &str); 12] = [
            ("etcd = [\"127.0.0.1:2379\"]", "fleet.etcd[0]: \"127.0.0.1:2379\" must start with http:// or https://"),
            ("etcd = [\"http://127.0.0.1\"]", "fleet.etcd[0]: \"http://127.0.0.1\" needs a port"),
            ("etcd = [\"http://a:2379/v3\"]", "fleet.etcd[0]: \"http://a:2379/v3\" is not a valid endpoint"),
            ("etcd = [\"http://a:2379\", \"https://b:2379\"]", "fleet.etcd: mixes http:// and https://"),
            ("host = \"Host_A\"", "fleet.host: \"Host_A\" is not a valid DNS label"),
            ("listen = \"0.0.0.0:9443\"", "fleet.advertise: is required when fleet.listen"),
            (
                "listen = \"0.0.0.0:443\"\nadvertise = \"10.0.1.5:443\"",
                "fleet.listen: 0.0.0.0:443 clashes with listen.https",
            ),
            ("advertise = \"0.0.0.0:9443\"", "fleet.advertise: 0.0.0.0:9443 cannot be reached"),
            ("prefix = \"gateway\"", "fleet.prefix: \"gateway\" must start and end with '/'"),
            ("auth_max_staleness = \"0s\"", "fleet.auth_max_staleness: 0s is too short"),
            ("etcd_cert = \"/e/c.pem\"", "fleet.etcd_cert: and fleet.etcd_key go together"),
            ("etcd_user = \"gw\"", "fleet.etcd_user: and fleet.etcd_password_file go together"),
        ];
        for (extra, want) in cases {
            // A key set twice is a TOML error: the case's keys replace the minimal section's.
            let base = "etcd = [\"http://127.0.0.1:2379\"]\nhost = \"host-a\"\nlisten = \"10.0.1.5:9443\"\nca = \"/f/ca.pem\"\ncert = \"/f/host.pem\"\nkey = \"/f/host.key\"";
            let first = |l: &str| l.split(' ').next().unwrap_or_default().to_string();
            let replaced: Vec<String> = extra.lines().map(first).collect();
            let kept: Vec<&str> = base.lines().filter(|l| !replaced.contains(&first(l))).collect();
            let text = format!("[fleet]\n{}\n{extra}\n", kept.join("\n"));
            let problems = match parse("f.toml", &text) {
                Ok(_) => Vec::new(),
                Err(ConfigErrors(p)) => p.into_iter().map(|p| format!("{}: {}", p.key, p.reason)).collect(),
            };
            assert!(problems.iter().any(|p| p.starts_with(want)), "{extra}: {problems:?}");
        }
        assert!(fleet_problems("etcd_ca = \"/e/ca.pem\"").iter().any(|p| p.contains("use https://")));
        assert!(fleet_problems("advertise = \"10.0.1.5:9443\"").is_empty());
    }
}
