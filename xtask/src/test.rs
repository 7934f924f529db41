//! `cargo xtask test`: the lint gate, host unit tests, then the privileged kernel/netns tests.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::{build, cargo, lint, output, run_cmd, setup};

/// The package holding the privileged tests (run as root, one at a time).
const PRIVILEGED_PACKAGE: &str = "gateway-tests";

pub fn run(args: &[String]) -> Result<()> {
    let start = Instant::now();
    setup::run(setup::Scope::All, false)?;
    lint::run()?;
    let gateway_bin = build::gateway(false)?;

    // Host tests: every default workspace member except the privileged package.
    let mut host = cargo();
    host.arg("test");
    for package in host_packages()? {
        host.args(["-p", &package]);
    }
    host.arg("--").args(args);
    let host_result = run_cmd(&mut host);

    // Privileged tests: real eBPF objects, namespaces, interfaces; need root.
    let privileged_result = if setup::is_root() {
        let mut privileged = cargo();
        privileged
            .args(["test", "-p", PRIVILEGED_PACKAGE, "--", "--test-threads=1"])
            .args(args)
            .env("GATEWAY_BIN", &gateway_bin)
            // tests/tests/demo.rs runs `xtask run --demo` with this very binary
            .env("XTASK_BIN", std::env::current_exe().context("cannot find the xtask binary")?);
        run_cmd(&mut privileged)
    } else {
        Err(anyhow::anyhow!("the privileged tests need root: run `sudo -E cargo xtask test`"))
    };

    let verdict = |r: &Result<()>| if r.is_ok() { "passed" } else { "FAILED" };
    println!(
        "xtask test: host tests {}, privileged tests {} ({:.1} s)",
        verdict(&host_result),
        verdict(&privileged_result),
        start.elapsed().as_secs_f64()
    );
    match (host_result, privileged_result) {
        (Ok(()), Ok(())) => Ok(()),
        (Err(e), _) | (_, Err(e)) => bail!("{e:#}"),
    }
}

/// Names of the workspace's default members (from `cargo metadata`), minus the privileged package.
fn host_packages() -> Result<Vec<String>> {
    let json = output(cargo().args(["metadata", "--format-version", "1", "--no-deps"]))?;
    let meta: Value = serde_json::from_str(&json).context("cannot parse `cargo metadata`")?;
    let defaults: Vec<&str> = meta["workspace_default_members"]
        .as_array()
        .context("`cargo metadata` has no workspace_default_members")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let packages = meta["packages"].as_array().context("`cargo metadata` has no packages")?;
    let names: Vec<String> = packages
        .iter()
        .filter(|p| p["id"].as_str().is_some_and(|id| defaults.contains(&id)))
        .filter_map(|p| p["name"].as_str())
        .filter(|name| *name != PRIVILEGED_PACKAGE)
        .map(str::to_owned)
        .collect();
    if names.is_empty() {
        bail!("no host test packages found in `cargo metadata`");
    }
    Ok(names)
}
