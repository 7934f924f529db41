//! `gateway fetch {workspace}/{name} {port} [path]`: what the SDKs' `sandbox.fetch(port, path)`
//! does, from the command line.
//!
//! The request goes through the PUBLIC HTTPS listener to
//! `https://sbx-{name}-{ws}.{region}.{domain}[:port]/port/{port}{path}`, with the token as
//! `X-Blaxel-Authorization: Bearer …` and `X-Blaxel-Workspace`, like the SDK. It connects to the
//! address of `listen.https` (or `--gateway`) while using the sandbox host for SNI and
//! `Host`/`:authority`, so no DNS record is needed; `--resolve` uses DNS instead. The server is
//! verified against `state.dir/tls/ca.pem` (the development CA) or `--cacert`. ALPN offers h2
//! and http/1.1. The body is streamed to stdout as it arrives (SSE works); `-i` prints the status
//! line and headers first. Exit code 1 when the answer is HTTP ≥ 400 (its code and message on
//! stderr when it is the gateway's JSON error) or when the request could not be made.

pub(super) mod plan;
pub(super) mod transport;

use crate::{config, paths};
use anyhow::Context;
use clap::Args;
use std::path::{Path, PathBuf};

/// `gateway fetch`.
#[derive(Debug, Args)]
pub struct FetchArgs {
    /// The sandbox, `{workspace}/{name}`.
    ///
    /// Example: acme/my-sandbox
    #[arg(value_name = "WORKSPACE/NAME")]
    pub sandbox: String,
    /// The sandbox port (one declared when the sandbox was registered).
    ///
    /// Example: 3000
    #[arg(value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub port: u16,
    /// Path and query inside the app (a missing leading '/' is added).
    ///
    /// Example: /api/items?limit=10
    #[arg(value_name = "PATH", default_value = "/")]
    pub path: String,
    /// HTTP method (default GET, or POST with --json).
    ///
    /// Example: -X DELETE
    #[arg(short = 'X', long = "request", value_name = "METHOD")]
    pub method: Option<String>,
    /// JSON request body (`@FILE` reads a file, `@-` stdin); sets Content-Type and Accept.
    ///
    /// Example: --json '{"title": "hello"}'
    #[arg(long, value_name = "BODY")]
    pub json: Option<String>,
    /// An extra request header; repeatable.
    ///
    /// Example: --header 'Accept: text/event-stream'
    #[arg(short = 'H', long = "header", value_name = "NAME:VALUE")]
    pub headers: Vec<String>,
    /// Workspace access token (from `gateway token create`).
    ///
    /// Example: --token gw_3q2…  (or GATEWAY_TOKEN=gw_3q2…)
    #[arg(long, value_name = "TOKEN", env = "GATEWAY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The gateway's HTTPS address to connect to (default: listen.https of the configuration;
    /// 0.0.0.0 and :: mean this host). Its port appears in the sandbox URL when not 443.
    ///
    /// Example: --gateway https://127.0.0.1:8443
    #[arg(long, value_name = "URL", conflicts_with = "resolve")]
    pub gateway: Option<String>,
    /// Read listen.https, domain, region and state.dir from this configuration file
    /// (default: /etc/gateway/gateway.toml if present, else the built-in defaults).
    ///
    /// Example: --config /etc/gateway/gateway.toml
    #[arg(long, value_name = "FILE", conflicts_with = "dev")]
    pub config: Option<PathBuf>,
    /// Use the settings of `gateway serve --dev` (domain gw.test, region local, 127.0.0.1:8443,
    /// state in $GATEWAY_STATE_DIR or ./.gateway-dev).
    ///
    /// Example: --dev
    #[arg(long)]
    pub dev: bool,
    /// CA certificate(s) to trust, PEM (default: state.dir/tls/ca.pem, the development CA; for a
    /// publicly trusted certificate, /etc/ssl/certs/ca-certificates.crt).
    ///
    /// Example: --cacert ./.gateway-dev/tls/ca.pem
    #[arg(long, value_name = "FILE")]
    pub cacert: Option<PathBuf>,
    /// Connect to the address DNS gives for the sandbox host instead of listen.https.
    ///
    /// Example: --resolve
    #[arg(long)]
    pub resolve: bool,
    /// Print the status line and the response headers before the body.
    ///
    /// Example: -i
    #[arg(short = 'i', long = "include")]
    pub include: bool,
}

pub(super) fn run(args: FetchArgs) -> anyhow::Result<u8> {
    let config = load_config(args.dev, args.config.as_deref())?;
    let ca = args.cacert.clone().unwrap_or_else(|| paths::tls_ca(&config.state.dir));
    let body = match &args.json {
        Some(text) => Some(read_body(text)?),
        None => None,
    };
    let plan = plan::Plan::new(&args, &config, body, ca)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let outcome = runtime.block_on(async {
        let mut stdout = tokio::io::stdout();
        transport::send(&plan, &mut stdout).await
    })?;
    if let Some(summary) = outcome.error_summary() {
        eprintln!("error: {summary}");
        return Ok(1);
    }
    Ok(0)
}

/// `--config`, `--dev`, the default file if present, or the built-in defaults.
pub(super) fn load_config(dev: bool, file: Option<&Path>) -> anyhow::Result<config::Config> {
    if dev {
        return Ok(config::Config::dev(paths::dev_state_dir()));
    }
    let path = match file {
        Some(path) => path.to_path_buf(),
        None if Path::new(paths::DEFAULT_CONFIG).exists() => PathBuf::from(paths::DEFAULT_CONFIG),
        None => return Ok(config::Config::default()),
    };
    // A `ConfigErrors` error makes main exit 64 with every problem listed.
    Ok(config::load(&path)?)
}

/// `--json`: the text itself, `@FILE`, or `@-` (stdin); it must be JSON.
fn read_body(arg: &str) -> anyhow::Result<Vec<u8>> {
    let bytes = match arg.strip_prefix('@') {
        Some("-") => {
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf).context("--json @-: reading stdin")?;
            buf
        }
        Some(file) => std::fs::read(file).with_context(|| format!("--json @{file}: cannot read the file"))?,
        None => arg.as_bytes().to_vec(),
    };
    serde_json::from_slice::<serde_json::Value>(&bytes).context("--json: the body is not valid JSON")?;
    Ok(bytes)
}
