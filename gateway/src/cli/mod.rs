//! The command line: `serve`, `check-config`, `print-default-config`, `dataplane …`, the
//! admin API clients `sandbox …`, `token …`, `preview …`, `preview-token …` and `session …`,
//! `fetch` (a request through the public HTTPS listener, like the SDKs' `sandbox.fetch`) and
//! `tunnel` (a local listener carried to a sandbox port through a `connect-tcp` tunnel).
//!
//! Exit codes: 0 success, 1 failure (the message says why), 2 usage error (clap), 64 invalid
//! configuration (every problem printed as `FILE: KEY: REASON`, nothing bound or opened).

mod client;
mod dataplane;
mod fetch;
mod fleet;
mod output;
mod preview;
pub mod reference;
mod sandbox;
mod token;
mod tunnel;

pub use fetch::FetchArgs;
pub use token::TokenCommand;
pub use tunnel::TunnelArgs;

use crate::{config, telemetry::LogFormat};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// Exit code of an invalid configuration.
pub const EXIT_CONFIG: u8 = 64;

/// eBPF-accelerated port gateway for cloud sandboxes.
#[derive(Debug, Parser)]
#[command(name = "gateway", version, about, propagate_version = true)]
pub struct Cli {
    /// Log format (filter with env GATEWAY_LOG, e.g. `info,gateway::admin=debug`).
    ///
    /// Example: --log-format json
    #[arg(long, value_enum, global = true, default_value_t = LogFormat::Text, env = "GATEWAY_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway: load the state, program the data plane, serve HTTPS and the admin API.
    Serve(ServeArgs),
    /// Check a configuration file; exit 0, or 64 listing every problem as FILE: KEY: REASON.
    CheckConfig(ConfigFile),
    /// Print the default configuration, every key commented.
    PrintDefaultConfig,
    /// Inspect or remove the pinned kernel data plane (works without a running gateway).
    Dataplane {
        /// What to do.
        #[command(subcommand)]
        command: DataplaneCommand,
    },
    /// Register, list, inspect and delete sandboxes through the admin API.
    Sandbox {
        /// What to do.
        #[command(subcommand)]
        command: SandboxCommand,
    },
    /// Create, list and revoke workspace access tokens through the admin API.
    Token {
        /// What to do.
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Send a request to a sandbox port through the public HTTPS listener, like the SDKs'
    /// `sandbox.fetch(port, path)`; prints the body, exits 1 on HTTP >= 400.
    Fetch(FetchArgs),
    /// Listen locally and carry each connection to a sandbox port through an authenticated
    /// connect-tcp tunnel on the public HTTPS listener (like `kubectl port-forward`).
    Tunnel(TunnelArgs),
    /// Create, list, inspect and delete previews (URLs for sandbox ports) through the admin API.
    Preview {
        /// What to do.
        #[command(subcommand)]
        command: preview::PreviewCommand,
    },
    /// Create, list and revoke the tokens of private previews through the admin API.
    PreviewToken {
        /// What to do.
        #[command(subcommand)]
        command: preview::PreviewTokenCommand,
    },
    /// Create sessions (a private preview of the sandbox API plus a token) through the admin API.
    Session {
        /// What to do.
        #[command(subcommand)]
        command: preview::SessionCommand,
    },
    /// The fleet's certificates: its CA and one certificate per host.
    Fleet {
        /// What to do.
        #[command(subcommand)]
        command: fleet::FleetCommand,
    },
}

/// `gateway serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Configuration file (TOML).
    ///
    /// Example: --config /etc/gateway/gateway.toml
    #[arg(long, value_name = "FILE", required_unless_present = "dev", conflicts_with = "dev")]
    pub config: Option<PathBuf>,
    /// Built-in development defaults, no file: domain gw.test, region local, HTTPS on
    /// 127.0.0.1:8443, admin on unix:<state>/admin.sock, state in $GATEWAY_STATE_DIR or
    /// ./.gateway-dev, bpffs /sys/fs/bpf/gateway-dev.
    ///
    /// Example: GATEWAY_STATE_DIR=/tmp/gw gateway serve --dev
    #[arg(long)]
    pub dev: bool,
    /// Take the listening sockets over from the gateway running with the same state.dir
    /// (zero-downtime restart or upgrade; it drains and exits). SIGUSR2 to the running gateway
    /// starts its successor this way.
    ///
    /// Example: gateway serve --config /etc/gateway/gateway.toml --takeover
    #[arg(long)]
    pub takeover: bool,
    /// How long in-flight requests and tunnels (WebSockets) may run after a stop or a
    /// handover before they are closed.
    ///
    /// Example: --drain-timeout 30s
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    pub drain_timeout: std::time::Duration,
}

/// A required `--config FILE`.
#[derive(Debug, Args)]
pub struct ConfigFile {
    /// Configuration file (TOML).
    ///
    /// Example: --config /etc/gateway/gateway.toml
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
}

/// `gateway dataplane …`.
#[derive(Debug, Subcommand)]
pub enum DataplaneCommand {
    /// Detach every program and remove every pin: enforcement stops. For decommissioning.
    Teardown(DataplaneArgs),
    /// Summary of the pinned data plane: links, map sizes, verdict counters.
    Status(DataplaneArgs),
    /// Every kernel map entry.
    Dump(DataplaneArgs),
}

/// Where the pinned data plane is.
#[derive(Debug, Args)]
pub struct DataplaneArgs {
    /// Print JSON instead of text.
    ///
    /// Example: --json
    #[arg(long)]
    pub json: bool,
    /// Read dataplane.bpffs from this configuration file.
    ///
    /// Example: --config /etc/gateway/gateway.toml
    #[arg(long, value_name = "FILE", conflicts_with = "bpffs")]
    pub config: Option<PathBuf>,
    /// The pin directory (default /sys/fs/bpf/gateway).
    ///
    /// Example: --bpffs /sys/fs/bpf/gateway
    #[arg(long, value_name = "DIR")]
    pub bpffs: Option<PathBuf>,
}

/// How the clients reach the admin API.
#[derive(Debug, Args, Clone)]
pub struct AdminArgs {
    /// Admin API address, `IP:PORT` or `unix:PATH` (wins over --config; default: listen.admin
    /// of /etc/gateway/gateway.toml if present, else unix:/run/gateway/admin.sock).
    ///
    /// Example: --admin 127.0.0.1:9901
    #[arg(long, value_name = "ADDR", env = "GATEWAY_ADMIN")]
    pub admin: Option<String>,
    /// Read listen.admin and the admin token from this configuration file.
    ///
    /// Example: --config /etc/gateway/gateway.toml
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Admin token for a TCP admin API (default: admin.token or admin.token_file of --config).
    ///
    /// Example: --token "$(cat /etc/gateway/admin.token)"
    #[arg(long, value_name = "TOKEN", env = "GATEWAY_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Output format.
    ///
    /// Example: --output json
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// `--output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// The API's JSON, pretty-printed.
    Json,
    /// Aligned columns.
    Table,
}

/// A sandbox by workspace and name.
#[derive(Debug, Args, Clone)]
pub struct SandboxRef {
    /// Workspace.
    ///
    /// Example: --workspace acme
    #[arg(long, short = 'w', value_name = "WS")]
    pub workspace: String,
    /// Sandbox name.
    ///
    /// Example: my-sandbox
    #[arg(value_name = "NAME")]
    pub name: String,
}

/// `gateway sandbox …`.
#[derive(Debug, Subcommand)]
pub enum SandboxCommand {
    /// Register a sandbox, or replace its registration (idempotent PUT).
    Create {
        /// Which sandbox.
        #[command(flatten)]
        sandbox: SandboxRef,
        /// Its private IPv4 address.
        ///
        /// Example: --address 198.18.0.2
        #[arg(long, value_name = "IPV4")]
        address: String,
        /// Its host-side interface (tap or veth).
        ///
        /// Example: --interface veth-h
        #[arg(long, value_name = "IFNAME")]
        interface: String,
        /// A declared port, `PORT[/PROTOCOL]` (HTTP, HTTP2, GRPC, TCP, TLS; default HTTP);
        /// repeatable.
        ///
        /// Example: --port 3000 --port 50051/grpc --port 5432/tcp
        #[arg(long = "port", value_name = "PORT[/PROTO]")]
        ports: Vec<String>,
        /// A public TCP port for a declared TCP or TLS port, open to these source networks
        /// (`0.0.0.0/0`: everyone); add `/v2` after the list to send the app a PROXY protocol v2
        /// header; repeatable.
        ///
        /// Example: --expose 5432=198.51.100.0/24,203.0.113.7/32
        #[arg(long = "expose", value_name = "PORT=CIDR[,CIDR…][/v2]")]
        expose: Vec<String>,
        /// Admin API access.
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// List sandboxes (of one workspace, or all).
    List {
        /// Only this workspace.
        ///
        /// Example: --workspace acme
        #[arg(long, short = 'w', value_name = "WS")]
        workspace: Option<String>,
        /// Admin API access.
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Show one sandbox.
    Get {
        /// Which sandbox.
        #[command(flatten)]
        sandbox: SandboxRef,
        /// Admin API access.
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Delete a sandbox: its kernel entries go, its interface stays closed.
    Delete {
        /// Which sandbox.
        #[command(flatten)]
        sandbox: SandboxRef,
        /// Admin API access.
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// What the kernel enforces for a sandbox, read back from the maps.
    Policy {
        /// Which sandbox.
        #[command(flatten)]
        sandbox: SandboxRef,
        /// Admin API access.
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// Runs a parsed command line (telemetry already initialized); returns the exit code.
pub fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Serve(args) => crate::daemon::run(crate::daemon::ServeOptions {
            config: args.config,
            dev: args.dev,
            takeover: args.takeover,
            drain_timeout: args.drain_timeout,
        }),
        Command::CheckConfig(args) => match config::load(&args.config) {
            Ok(_) => {
                println!("{}: ok", args.config.display());
                Ok(0)
            }
            Err(problems) => Ok(print_problems(&problems)),
        },
        Command::PrintDefaultConfig => {
            print!("{}", config::DEFAULT_CONFIG_TOML);
            Ok(0)
        }
        Command::Dataplane { command } => dataplane::run(command),
        Command::Sandbox { command } => sandbox::run(command),
        Command::Token { command } => token::run(command),
        Command::Fetch(args) => fetch::run(args),
        Command::Tunnel(args) => tunnel::run(args),
        Command::Preview { command } => preview::run_preview(command),
        Command::PreviewToken { command } => preview::run_token(command),
        Command::Session { command } => preview::run_session(command),
        Command::Fleet { command } => fleet::run(command),
    }
}

/// Prints every configuration problem to stderr; returns [`EXIT_CONFIG`].
pub fn print_problems(problems: &config::ConfigErrors) -> u8 {
    for p in &problems.0 {
        eprintln!("{p}");
    }
    EXIT_CONFIG
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    /// Every flag and positional's help carries an example.
    #[test]
    fn every_argument_has_an_example() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if matches!(id, "help" | "version") {
                    continue;
                }
                let help = arg.get_long_help().or(arg.get_help()).map(|h| h.to_string()).unwrap_or_default();
                if !help.contains("Example:") {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "gateway", &mut missing);
        assert!(missing.is_empty(), "arguments without an Example: {missing:?}");
    }
}
