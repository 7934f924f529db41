//! `cargo xtask build`: the gateway binary with the eBPF programs embedded.

use std::path::PathBuf;

use anyhow::{Result, bail};

use crate::{cargo, run_cmd, setup, target_dir};

pub fn run(debug: bool) -> Result<()> {
    let bin = gateway(!debug)?;
    println!("built {}", bin.display());
    Ok(())
}

/// Runs the toolchain setup, builds `gateway` (release or debug) and returns the binary's
/// absolute path. `GATEWAY_REQUIRE_EBPF=1` (set by [`cargo`]) makes gateway/build.rs fail
/// instead of embedding an empty stub, so a successful build always holds the eBPF object.
pub fn gateway(release: bool) -> Result<PathBuf> {
    setup::run(setup::Scope::Toolchain, false)?;
    let mut cmd = cargo();
    cmd.args(["build", "-p", "gateway"]);
    if release {
        cmd.arg("--release");
    }
    run_cmd(&mut cmd)?;
    let bin = target_dir().join(if release { "release" } else { "debug" }).join("gateway");
    if !bin.is_file() {
        bail!("the build succeeded but {} does not exist", bin.display());
    }
    Ok(bin)
}
