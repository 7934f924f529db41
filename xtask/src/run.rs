//! `cargo xtask run`: build (release) and exec `gateway serve`.

use std::{os::unix::process::CommandExt, process::Command};

use anyhow::{Result, bail};

use crate::{build, setup, show};

pub fn run(demo: bool, args: &[String]) -> Result<()> {
    if demo {
        bail!("`cargo xtask run --demo` is not yet implemented");
    }
    setup::run(setup::Scope::All, false)?;
    let bin = build::gateway(true)?;
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
