//! `cargo xtask lint`: the gate `cargo xtask test` runs first, so CI enforces it.
//!
//! - `cargo fmt --check` over the workspace and the fuzz crate (rustfmt.toml at the root);
//! - `cargo clippy --all-targets -D warnings` over the userspace crates (stable) and over the
//!   eBPF crate (nightly, bpf target: the only way it compiles);
//! - the module graph of `gateway/src` has no cycle ([`crate::modules`]).

use std::process::Command;

use anyhow::Result;

use crate::{
    cargo, modules, path_with_cargo_bin, root, run_cmd,
    setup::{self, NIGHTLY},
};

pub fn run() -> Result<()> {
    setup::ensure_lint_components()?;
    run_cmd(cargo().args(["fmt", "--all", "--check"]))?;
    run_cmd(cargo().current_dir(root().join("fuzz")).args(["fmt", "--all", "--check"]))?;
    // Same environment as the build (crate::cargo), so the build script's output is shared
    // with the test build instead of rerun.
    run_cmd(cargo().args([
        "clippy",
        "--workspace",
        "--exclude",
        "gateway-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    let mut ebpf = Command::new("rustup");
    ebpf.current_dir(root().join("gateway-ebpf")).env("PATH", path_with_cargo_bin());
    run_cmd(ebpf.args([
        "run",
        NIGHTLY,
        "cargo",
        "clippy",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
        "--",
        "-D",
        "warnings",
    ]))?;
    modules::check(&root().join("gateway/src"))?;
    println!("xtask lint: formatted, clippy clean, module graph without cycles");
    Ok(())
}
