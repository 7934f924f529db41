//! `cargo xtask soak [-- ARGS]`: the long adversarial tests. Installs the Debian packages only
//! they need, builds the gateway and the tests in release (the soak tests measure what a
//! production build withstands, and the attacking clients, sharing the machine's cores, should
//! cost as little as possible), runs every ignored test of the privileged
//! package (`soak_*` resource exhaustion, data plane under fire, state durability; `testssl`),
//! one at a time with their output, and prints a summary: the verdict, the time, and the
//! `figure:` lines the tests printed.

use std::{
    io::{BufRead, BufReader},
    process::Stdio,
    sync::mpsc,
    thread,
    time::Instant,
};

use anyhow::{Context, Result, bail};

use crate::{build, cargo, setup, show};

/// Debian packages of the soak tests (beyond those `setup` installs for `test`).
pub const SOAK_PACKAGES: &[&str] = &["slowhttptest", "wrk", "testssl.sh", "python3-venv"];

pub fn run(args: &[String]) -> Result<()> {
    let start = Instant::now();
    setup::run(setup::Scope::All, false)?;
    if !setup::is_root() {
        bail!("the soak tests need root: run `sudo -E cargo xtask soak`");
    }
    setup::ensure_packages(SOAK_PACKAGES)?;
    let gateway_bin = build::gateway(true)?;

    let mut cmd = cargo();
    // --no-fail-fast: one failing test file must not hide the figures of the others.
    cmd.args([
        "test",
        "--release",
        "--no-fail-fast",
        "-p",
        "gateway-tests",
        "--",
        "--ignored",
        "--test-threads=1",
        "--nocapture",
    ])
    .args(args)
    .env("GATEWAY_BIN", &gateway_bin)
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("cannot start `{}`", show(&cmd)))?;
    // Stream both outputs as they come, keeping the figures and the results for the summary.
    let (tx, rx) = mpsc::channel::<(bool, String)>();
    let mut readers = Vec::new();
    if let Some(out) = child.stdout.take() {
        let tx = tx.clone();
        readers.push(thread::spawn(move || {
            BufReader::new(out).lines().map_while(Result::ok).for_each(|l| drop(tx.send((false, l))))
        }));
    }
    if let Some(err) = child.stderr.take() {
        let tx = tx.clone();
        readers.push(thread::spawn(move || {
            BufReader::new(err).lines().map_while(Result::ok).for_each(|l| drop(tx.send((true, l))))
        }));
    }
    drop(tx);
    let mut figures = Vec::new();
    let mut results = Vec::new();
    for (is_err, line) in rx {
        if is_err {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
        if let Some(f) = line.trim().strip_prefix("figure: ") {
            figures.push(f.to_string());
        } else if line.starts_with("test ") && (line.ends_with(" ok") || line.ends_with(" FAILED")) {
            results.push(line.clone());
        }
    }
    for r in readers {
        let _ = r.join();
    }
    let status = child.wait().context("wait for cargo test")?;

    println!("\n== xtask soak summary ==");
    for r in &results {
        println!("{r}");
    }
    if !figures.is_empty() {
        println!("-- figures --");
        for f in &figures {
            println!("{f}");
        }
    }
    let ran = results.len();
    let failed = results.iter().filter(|r| r.ends_with("FAILED")).count();
    println!(
        "xtask soak: {} ({} tests, {failed} failed, {:.1} s)",
        if status.success() { "passed" } else { "FAILED" },
        ran,
        start.elapsed().as_secs_f64()
    );
    if !status.success() {
        bail!("`{}` failed ({status})", show(&cmd));
    }
    Ok(())
}
