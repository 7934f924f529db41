//! `cargo xtask run`: build (release) and exec `gateway serve`.

use std::{os::unix::process::CommandExt, path::PathBuf, process::Command};

use anyhow::{Result, bail};

use crate::{build, setup, show};

pub fn run(gateway_bin: Option<PathBuf>, args: &[String]) -> Result<()> {
    setup::run(setup::Scope::All, false)?;
    let bin = match gateway_bin {
        Some(b) => b,
        None => build::gateway(true)?,
    };
    let mut cmd = Command::new(&bin);
    cmd.arg("serve");
    if args.is_empty() {
        cmd.arg("--dev");
    } else {
        cmd.args(args);
    }
    eprintln!("running {}", show(&cmd));
    // exec only returns on failure; signals (Ctrl-C) then go straight to the gateway.
    let err = cmd.exec();
    bail!("cannot exec `{}`: {err}", show(&cmd))
}
