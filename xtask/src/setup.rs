//! `cargo xtask setup`: makes the machine able to build and test the gateway.
//!
//! Each step checks first and only fixes what is missing, printing one line per fix, so a
//! second run is silent and fast. What cannot be fixed here (no nightly toolchain, not root)
//! is a one-line error that says how to get it.

use std::{
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::{cargo_bin_dir, home_dir, output, show};

/// The toolchain that builds `gateway-ebpf` (`-Z build-std=core --target bpfel-unknown-none`).
pub const NIGHTLY: &str = "nightly";
/// The bpf-linker release we build (no prebuilt binary exists for it).
const BPF_LINKER_VERSION: &str = "0.13";
/// Used only when the nightly sysroot holds no `libLLVM.so.*-rust-*-nightly`.
const FALLBACK_LLVM_NAME: &str = "libLLVM.so.22.1-rust-1.97.0-nightly";
/// Debian packages the privileged tests call (`ip`, `bpftool`, `iptables`, `nft`, `curl`, `ps`,
/// `systemd-analyze`, `setpriv`, `wrk` for the zero-downtime restart test, `python3 -m venv`
/// for the real Python SDK test, `openssl s_client` for the TLS hardening test, etcd and
/// `etcdctl` for the fleet tests, PostgreSQL for the TCP tunnel test).
const DEBIAN_PACKAGES: &[&str] = &[
    "iproute2",
    "bpftool",
    "iptables",
    "nftables",
    "curl",
    "procps",
    "systemd",
    "util-linux",
    "python3",
    "python3-venv",
    "wrk",
    // hardening_tls: `openssl s_client -tls1 / -tls1_1` (testssl.sh comes with `xtask soak`)
    "openssl",
    // the fleet tests' etcd cluster (`tests/src/etcd.rs`): the server and `etcdctl`
    "etcd-server",
    "etcd-client",
    // tcp_tunnel: `gateway tunnel` carries `psql` to a PostgreSQL 15 server in a sandbox
    "postgresql-15",
    "postgresql-client-15",
];
/// Debian packages building the gateway needs: `protoc`, for the etcd client's generated code
/// (`gateway::state::etcd_store`).
const BUILD_PACKAGES: &[&str] = &["protobuf-compiler"];
/// Debian packages only `cargo xtask bench` needs (load generators and the peers it compares
/// against): installed by the bench, never by setup.
pub const BENCH_PACKAGES: &[&str] = &["wrk", "nghttp2-client", "nginx", "haproxy", "openssl", "netsniff-ng", "iperf3"];
const BPFFS: &str = "/sys/fs/bpf";

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// What building needs: nightly rust-src, bpf-linker and `protoc`.
    Toolchain,
    /// Also what running and testing need: bpffs and the Debian packages.
    All,
}

/// Runs every step of `scope`. With `announce`, ends with a line saying all is present.
pub fn run(scope: Scope, announce: bool) -> Result<()> {
    let sysroot = nightly_sysroot()?;
    ensure_rust_src(&sysroot)?;
    let llvm = ensure_llvm_links(&sysroot)?;
    ensure_bpf_linker(&llvm)?;
    ensure_packages(BUILD_PACKAGES)?;
    if scope == Scope::All {
        ensure_bpffs()?;
        ensure_packages(DEBIAN_PACKAGES)?;
    }
    if announce {
        println!("setup: ready");
    }
    Ok(())
}

fn fixed(what: &str) {
    println!("setup: {what}");
}

pub fn is_root() -> bool {
    // The effective uid is the second field of the `Uid:` line.
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(str::to_owned))
        .is_some_and(|l| l.split_whitespace().nth(2) == Some("0"))
}

fn nightly_sysroot() -> Result<PathBuf> {
    let out = Command::new("rustc").args([&format!("+{NIGHTLY}"), "--print", "sysroot"]).output();
    match out {
        Ok(out) if out.status.success() => Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())),
        _ => bail!(
            "the {NIGHTLY} Rust toolchain is missing (it builds the eBPF programs): \
             install it with `rustup toolchain install {NIGHTLY} --component rust-src`"
        ),
    }
}

fn ensure_rust_src(sysroot: &Path) -> Result<()> {
    if sysroot.join("lib/rustlib/src/rust/library/core/Cargo.toml").is_file() {
        return Ok(());
    }
    output(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", NIGHTLY]))
        .context("cannot install rust-src (needed for -Z build-std=core)")?;
    fixed(&format!("installed rust-src for the {NIGHTLY} toolchain"));
    Ok(())
}

/// rustfmt and clippy for `cargo xtask lint`: on the default toolchain, and clippy on nightly
/// (the eBPF crate is linted there). Called by the lint alone, so other commands do not pay
/// for the `rustup` queries.
pub fn ensure_lint_components() -> Result<()> {
    for (toolchain, components) in [(None, &["rustfmt", "clippy"][..]), (Some(NIGHTLY), &["clippy"][..])] {
        let mut list = Command::new("rustup");
        list.args(["component", "list", "--installed"]);
        if let Some(t) = toolchain {
            list.args(["--toolchain", t]);
        }
        let installed = output(&mut list)?;
        for component in components {
            if installed.lines().any(|l| l.starts_with(&format!("{component}-")) || l == *component) {
                continue;
            }
            let mut add = Command::new("rustup");
            add.args(["component", "add", component]);
            if let Some(t) = toolchain {
                add.args(["--toolchain", t]);
            }
            output(&mut add).with_context(|| format!("cannot install {component} (needed by `cargo xtask lint`)"))?;
            fixed(&format!("installed {component} for the {} toolchain", toolchain.unwrap_or("default")));
        }
    }
    Ok(())
}

/// The nightly toolchain's libLLVM, and the persistent prefix bpf-linker is built against.
struct Llvm {
    /// `$HOME/.cache/gateway-toolchain/llvm`; `lib/` holds symlinks to the nightly libLLVM,
    /// and bpf-linker's RUNPATH points there, so it keeps working across `cargo clean`.
    prefix: PathBuf,
    /// The LLVM major version (22), which selects bpf-linker's `llvm-NN` feature.
    major: String,
}

fn llvm_file_name(sysroot_lib: &Path) -> String {
    let found = fs::read_dir(sysroot_lib).ok().and_then(|dir| {
        dir.filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("libLLVM.so.") && n.contains("-rust-") && n.ends_with("-nightly"))
            .max()
    });
    found.unwrap_or_else(|| FALLBACK_LLVM_NAME.to_owned())
}

fn ensure_llvm_links(sysroot: &Path) -> Result<Llvm> {
    let sysroot_lib = sysroot.join("lib");
    let name = llvm_file_name(&sysroot_lib);
    let target = sysroot_lib.join(&name);
    if !target.is_file() {
        bail!(
            "{} is missing: reinstall the toolchain with `rustup toolchain install {NIGHTLY} --force`",
            target.display()
        );
    }
    // "libLLVM.so.22.1-rust-..." → "22"
    let major = name
        .trim_start_matches("libLLVM.so.")
        .split(['.', '-'])
        .next()
        .filter(|m| !m.is_empty() && m.chars().all(|c| c.is_ascii_digit()))
        .with_context(|| format!("cannot read the LLVM version from {name}"))?
        .to_owned();

    let prefix = home_dir().join(".cache/gateway-toolchain/llvm");
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib).with_context(|| format!("cannot create {}", lib.display()))?;
    for link_name in ["libLLVM.so", name.as_str()] {
        let link = lib.join(link_name);
        if fs::read_link(&link).is_ok_and(|t| t == target) {
            continue;
        }
        if link.symlink_metadata().is_ok() {
            fs::remove_file(&link).with_context(|| format!("cannot replace {}", link.display()))?;
        }
        symlink(&target, &link).with_context(|| format!("cannot link {} -> {}", link.display(), target.display()))?;
        fixed(&format!("linked {} -> {}", link.display(), target.display()));
    }
    Ok(Llvm { prefix, major })
}

/// `Some(version line)` when bpf-linker runs (which also proves its libLLVM resolves).
fn bpf_linker_version(bin: &Path) -> Option<String> {
    let out = Command::new(bin).arg("--version").output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn ensure_bpf_linker(llvm: &Llvm) -> Result<()> {
    let bin = cargo_bin_dir().join("bpf-linker");
    let wanted = format!("bpf-linker {BPF_LINKER_VERSION}.");
    let found = bpf_linker_version(&bin);
    if found.as_deref().is_some_and(|v| v.starts_with(&wanted)) {
        return Ok(());
    }
    println!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against the {NIGHTLY} libLLVM {} (about 90 s; was: {})",
        llvm.major,
        found.as_deref().unwrap_or("missing or not runnable")
    );
    let mut install = Command::new("cargo");
    install
        .env("LLVM_PREFIX", &llvm.prefix)
        .env_remove("CARGO_TARGET_DIR") // build in a temporary directory, removed afterwards
        .args(["install", "bpf-linker", "--force", "--version"])
        .arg(format!("~{BPF_LINKER_VERSION}"))
        .args(["--no-default-features", "--features"])
        .arg(format!("llvm-{}", llvm.major));
    output(&mut install).context("cannot build bpf-linker")?;
    match bpf_linker_version(&bin) {
        Some(v) if v.starts_with(&wanted) => {
            fixed(&format!("installed {v} at {}", bin.display()));
            Ok(())
        }
        other => bail!(
            "bpf-linker was installed by `{}` but `{} --version` gives {:?}; check `ldd {}`",
            show(&install),
            bin.display(),
            other,
            bin.display()
        ),
    }
}

fn ensure_bpffs() -> Result<()> {
    let mounts = fs::read_to_string("/proc/mounts").context("cannot read /proc/mounts")?;
    let mounted = mounts.lines().any(|l| {
        let fields: Vec<&str> = l.split_whitespace().collect();
        fields.get(1) == Some(&BPFFS) && fields.get(2) == Some(&"bpf")
    });
    if mounted {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "bpffs is not mounted at {BPFFS} and mounting needs root: run as root, or `sudo mount -t bpf bpf {BPFFS}`"
        );
    }
    fs::create_dir_all(BPFFS).with_context(|| format!("cannot create {BPFFS}"))?;
    output(Command::new("mount").args(["-t", "bpf", "bpf", BPFFS])).context("cannot mount bpffs")?;
    fixed(&format!("mounted bpffs at {BPFFS}"));
    Ok(())
}

/// Installs whichever of `packages` dpkg does not have (root; apt-get).
pub fn ensure_packages(packages: &[&str]) -> Result<()> {
    let installed = |pkg: &str| {
        Command::new("dpkg").args(["-s", pkg]).output().is_ok_and(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).contains("Status: install ok installed")
        })
    };
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.join(" ");
    if Command::new("apt-get").arg("--version").output().is_err() {
        bail!("missing packages ({list}) and no apt-get: install their equivalents with your package manager");
    }
    if !is_root() {
        bail!("missing Debian packages: {list}; run as root, or `sudo apt-get install -y {list}`");
    }
    println!("setup: installing Debian packages: {list}");
    // One line per fix: the line above is it (apt-get output is shown only on failure).
    output(Command::new("apt-get").arg("update").env("DEBIAN_FRONTEND", "noninteractive"))?;
    output(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    Ok(())
}
