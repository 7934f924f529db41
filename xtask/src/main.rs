//! `cargo xtask`: toolchain bootstrap, build, test, run and bench for the gateway workspace.
//!
//! Every subcommand first runs `setup`, which is fast when everything is already present.

mod bench;
mod build;
mod demo;
mod demo_app;
mod fleet_demo;
mod fuzz;
mod install;
mod lint;
mod modules;
mod run;
mod setup;
mod soak;
mod test;

use std::{
    env,
    ffi::OsString,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", about = "Development tasks for the gateway workspace")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what building and testing need (nightly rust-src, bpf-linker, bpffs, Debian packages).
    Setup,
    /// Build `target/release/gateway` with the eBPF programs embedded.
    Build {
        /// Build `target/debug/gateway` instead.
        #[arg(long)]
        debug: bool,
    },
    /// Check formatting, clippy (-D warnings, userspace and eBPF) and the module graph.
    Lint,
    /// Print the module graph of gateway/src, lowest layer first.
    Modules,
    /// Run the lint gate, the host unit tests, then the privileged kernel/netns tests (needs root).
    Test {
        /// Arguments passed to both test harnesses (after `--`), e.g. a test-name filter.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Build (release) and run `gateway serve` (default arguments: `--dev`).
    Run {
        /// Also create a demo sandbox (network namespace, web app with a WebSocket echo, sandbox
        /// API stand-in), register it, mint a token and two previews, and print commands to
        /// paste; Ctrl-C removes everything.
        #[arg(long, conflicts_with = "fleet")]
        demo: bool,
        /// A fleet of three gateways on one machine instead: three etcd members, three hosts
        /// (network namespaces) each with a gateway and a sandbox; every sandbox is requested
        /// through every gateway, and commands to paste are printed; Ctrl-C removes everything.
        #[arg(long)]
        fleet: bool,
        /// Use this gateway binary instead of building one.
        #[arg(long, value_name = "PATH")]
        gateway_bin: Option<PathBuf>,
        /// Arguments for `gateway serve`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// The demo sandbox's processes (run by `run --demo` inside its network namespace).
    #[command(hide = true)]
    DemoApp {
        /// The web app (with a WebSocket echo on /ws).
        #[arg(long, default_value = "0.0.0.0:3000")]
        web: std::net::SocketAddr,
        /// The sandbox API stand-in.
        #[arg(long, default_value = "0.0.0.0:8080")]
        api: std::net::SocketAddr,
        /// The raw TCP line service.
        #[arg(long, default_value = "0.0.0.0:7000")]
        tcp: std::net::SocketAddr,
    },
    /// Install the release binary, a commented default configuration (random admin token) and,
    /// with --systemd, the unit (`systemctl enable --now gateway` then starts it).
    Install {
        /// Also install packaging/gateway.service to /etc/systemd/system.
        #[arg(long)]
        systemd: bool,
        /// Installation prefix of the binary and documentation.
        #[arg(long, default_value = "/usr/local")]
        prefix: PathBuf,
        /// Install under this directory instead of / (staging, packaging).
        #[arg(long, default_value = "/")]
        root: PathBuf,
        /// Install this binary instead of building one.
        #[arg(long)]
        bin: Option<PathBuf>,
    },
    /// Remove what `install` installed (binary, unit, configuration); the state directory and the
    /// kernel data plane stay unless --purge.
    Uninstall {
        /// Also tear the pinned data plane down (enforcement stops) and remove the state directory.
        #[arg(long)]
        purge: bool,
        /// Installation prefix used at install.
        #[arg(long, default_value = "/usr/local")]
        prefix: PathBuf,
        /// Installation root used at install.
        #[arg(long, default_value = "/")]
        root: PathBuf,
    },
    /// Regenerate the generated parts of the documentation (configuration and CLI references).
    Docs,
    /// Run the long adversarial tests (the ignored tests of gateway-tests: floods and slow
    /// clients, the data plane under fire, state durability, testssl) and summarise their figures.
    Soak {
        /// Arguments passed to the test harness (after `--`), e.g. a test-name filter.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Run the `cargo fuzz` targets of fuzz/ (nightly; installs cargo-fuzz when missing).
    Fuzz {
        /// One target (default: every target, one after another).
        target: Option<String>,
        /// Executions per target.
        #[arg(long, default_value_t = 1_000_000)]
        runs: u64,
        /// Stop each target after this many seconds.
        #[arg(long, value_name = "SECONDS")]
        time: Option<u64>,
        /// Fuzzing processes per target (libFuzzer `-fork`).
        #[arg(long, default_value_t = 1)]
        jobs: u32,
    },
    /// Run the benchmarks (`gateway-bench` in the gateway-tests package).
    Bench {
        /// Fewer iterations.
        #[arg(long)]
        quick: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Setup => setup::run(setup::Scope::All, true),
        Cmd::Build { debug } => build::run(debug),
        Cmd::Lint => setup::run(setup::Scope::Toolchain, false).and_then(|()| lint::run()),
        Cmd::Modules => modules::print(&root().join("gateway/src")),
        Cmd::Test { args } => test::run(&args),
        Cmd::Run { demo: true, gateway_bin, .. } => demo::run(gateway_bin),
        Cmd::Run { fleet: true, gateway_bin, .. } => fleet_demo::run(gateway_bin),
        Cmd::Run { gateway_bin, args, .. } => run::run(gateway_bin, &args),
        Cmd::DemoApp { web, api, tcp } => demo_app::run(web, api, tcp),
        Cmd::Install { systemd, prefix, root, bin } => {
            install::install(&install::Layout { root, prefix }, systemd, bin)
        }
        Cmd::Uninstall { purge, prefix, root } => install::uninstall(&install::Layout { root, prefix }, purge),
        Cmd::Docs => run_cmd(
            cargo()
                .args(["test", "-q", "-p", "gateway-tests", "--test", "docs"])
                .env("GATEWAY_UPDATE_DOCS", "1")
                .env_remove("GATEWAY_REQUIRE_EBPF"),
        ),
        Cmd::Bench { quick } => bench::run(quick),
        Cmd::Soak { args } => soak::run(&args),
        Cmd::Fuzz { target, runs, time, jobs } => fuzz::run(&fuzz::Options { target, runs, time, jobs }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root (the parent of this crate).
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap_or(Path::new("."))
}

/// Cargo's target directory: `$CARGO_TARGET_DIR` when set, else `<root>/target`.
pub fn target_dir() -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => root().join(dir),
        _ => root().join("target"),
    }
}

/// Where `cargo install` puts binaries: `$CARGO_HOME/bin`, else `~/.cargo/bin`.
pub fn cargo_bin_dir() -> PathBuf {
    match env::var_os("CARGO_HOME") {
        Some(home) if !home.is_empty() => PathBuf::from(home).join("bin"),
        _ => home_dir().join(".cargo/bin"),
    }
}

pub fn home_dir() -> PathBuf {
    env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/root"))
}

/// `$PATH` with the cargo bin directory in front (unless it is already there), so child
/// processes (cargo, gateway/build.rs, aya-build) find `bpf-linker`.
pub fn path_with_cargo_bin() -> OsString {
    let bin = cargo_bin_dir();
    let current = env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = env::split_paths(&current).collect();
    if !dirs.contains(&bin) {
        dirs.insert(0, bin);
    }
    env::join_paths(dirs).unwrap_or(current)
}

/// A `cargo` command at the workspace root with the cargo bin directory on PATH and the eBPF
/// object required (gateway/build.rs fails instead of embedding an empty stub).
pub fn cargo() -> Command {
    let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root())
        .env("PATH", path_with_cargo_bin())
        .env("GATEWAY_REQUIRE_EBPF", "1")
        .env_remove("GATEWAY_EBPF_STUB");
    cmd
}

/// The command line of `cmd` for messages, with the environment it overrides (except PATH).
pub fn show(cmd: &Command) -> String {
    let mut parts = Vec::new();
    for (key, value) in cmd.get_envs() {
        if key == "PATH" {
            continue;
        }
        if let Some(value) = value {
            parts.push(format!("{}={}", key.to_string_lossy(), value.to_string_lossy()));
        }
    }
    parts.push(cmd.get_program().to_string_lossy().into_owned());
    parts.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts.join(" ")
}

/// Runs `cmd` with inherited stdio; fails with the full command line if it does not succeed.
pub fn run_cmd(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("cannot start `{}`", show(cmd)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", show(cmd));
    }
    Ok(())
}

/// Runs `cmd` with captured output and returns its stdout; on failure the error holds the
/// command line and the tail of its output.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("cannot start `{}`", show(cmd)))?;
    if !out.status.success() {
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(20)..].join("\n");
        bail!("`{}` failed ({}):\n{tail}", show(cmd), out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
