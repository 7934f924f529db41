//! `cargo xtask bench`: the `gateway-bench` binary of the gateway-tests package.

use anyhow::Result;

use crate::{build, cargo, run_cmd, setup};

pub fn run(quick: bool) -> Result<()> {
    setup::run(setup::Scope::All, false)?;
    let gateway_bin = build::gateway(true)?;
    let mut cmd = cargo();
    cmd.args(["run", "--release", "-p", "gateway-tests", "--bin", "gateway-bench", "--"])
        .env("GATEWAY_BIN", &gateway_bin);
    if quick {
        cmd.arg("--quick");
    }
    run_cmd(&mut cmd)
}
