//! `cargo xtask fuzz [TARGET] [--runs N] [--time SECONDS] [--jobs N]`: runs the `cargo fuzz`
//! targets of `fuzz/` (every one in turn, or one), installing `cargo-fuzz` when it is missing.
//!
//! The targets need nightly (libFuzzer, `-Z sanitizer=address`); `fuzz/` is its own workspace,
//! excluded from the main one. Each run reads the curated corpus `fuzz/corpus/{target}` and
//! writes what libFuzzer finds new to `fuzz/corpus-new/{target}` (ignored by git); a crash is
//! saved under `fuzz/artifacts/{target}/` and stops the run. The checked-in corpus is replayed
//! by `cargo test` (`gateway/tests/fuzz_corpus.rs`) without nightly.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context, Result, bail};

use crate::{cargo_bin_dir, path_with_cargo_bin, root, run_cmd, setup::NIGHTLY, show, target_dir};

/// What to run.
pub struct Options {
    /// One target, or all of them.
    pub target: Option<String>,
    /// Executions per target (`-runs`).
    pub runs: u64,
    /// Time limit per target (`-max_total_time`), if any.
    pub time: Option<u64>,
    /// Parallel fuzzing processes per target (`-fork`); 1 = one process.
    pub jobs: u32,
}

pub fn run(opts: &Options) -> Result<()> {
    let fuzz_dir = root().join("fuzz");
    let targets = targets(&fuzz_dir)?;
    let selected: Vec<String> = match &opts.target {
        Some(t) if targets.contains(t) => vec![t.clone()],
        Some(t) => bail!("no fuzz target {t:?}; the targets are: {}", targets.join(", ")),
        None => targets,
    };
    ensure_cargo_fuzz()?;

    let mut summary = Vec::new();
    for target in &selected {
        let corpus = fuzz_dir.join("corpus").join(target);
        let fresh = fuzz_dir.join("corpus-new").join(target);
        fs::create_dir_all(&fresh).with_context(|| format!("cannot create {}", fresh.display()))?;
        let mut cmd = Command::new("cargo");
        cmd.current_dir(&fuzz_dir)
            .env("PATH", path_with_cargo_bin())
            // Only the parsers are fuzzed: no eBPF object needed (nor wanted, with sanitizer flags).
            .env("GATEWAY_EBPF_STUB", "1")
            .env_remove("GATEWAY_REQUIRE_EBPF")
            .env_remove("CARGO_TARGET_DIR")
            .args([&format!("+{NIGHTLY}"), "fuzz", "run", target, "--target-dir"])
            .arg(fuzz_target_dir())
            .arg(&fresh)
            .arg(&corpus)
            .arg("--")
            .arg(format!("-runs={}", opts.runs))
            .arg("-print_final_stats=1");
        if let Some(secs) = opts.time {
            cmd.arg(format!("-max_total_time={secs}"));
        }
        if opts.jobs > 1 {
            cmd.arg(format!("-fork={}", opts.jobs));
        }
        let start = Instant::now();
        run_cmd(&mut cmd).with_context(|| {
            format!("fuzz target {target} failed: the input is in fuzz/artifacts/{target}/ (see docs/DEVELOPING.md)")
        })?;
        summary.push(format!("{target}: {} runs requested, {:.0} s", opts.runs, start.elapsed().as_secs_f64()));
    }
    for line in summary {
        println!("xtask fuzz: {line}");
    }
    Ok(())
}

/// The fuzz targets: `fuzz/fuzz_targets/*.rs`.
fn targets(fuzz_dir: &Path) -> Result<Vec<String>> {
    let dir = fuzz_dir.join("fuzz_targets");
    let mut names: Vec<String> = fs::read_dir(&dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_suffix(".rs")).map(str::to_owned))
        .collect();
    names.sort();
    Ok(names)
}

/// Where the instrumented builds go: apart from the normal ones (other flags, other lock file).
fn fuzz_target_dir() -> PathBuf {
    target_dir().join("fuzz")
}

/// Installs `cargo-fuzz` (with `cargo install --locked`) unless it is on PATH or in the cargo bin
/// directory.
fn ensure_cargo_fuzz() -> Result<()> {
    let present = Command::new("cargo")
        .env("PATH", path_with_cargo_bin())
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if present {
        return Ok(());
    }
    let mut install = Command::new("cargo");
    install.env("PATH", path_with_cargo_bin()).args(["install", "cargo-fuzz", "--locked"]);
    run_cmd(&mut install).with_context(|| format!("cannot install cargo-fuzz with `{}`", show(&install)))?;
    println!("setup: installed cargo-fuzz in {}", cargo_bin_dir().display());
    Ok(())
}
