//! The real Python SDK (`blaxel` from PyPI, pinned) in a virtualenv the tests create under the
//! cargo target directory, once: `target/sdk-venv/blaxel-<version>/`. Creating it needs
//! `python3` (with `venv`) and PyPI; a failure says so and fails the test (never skipped).

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

/// The pinned SDK version.
pub const BLAXEL_VERSION: &str = "0.4.24";

/// The Python interpreter used to create the virtualenv: `$GATEWAY_TEST_PYTHON`, else Debian's
/// `/usr/bin/python3` (installed by `cargo xtask setup` with `python3-venv`), else `python3`.
fn base_python() -> String {
    if let Ok(p) = std::env::var("GATEWAY_TEST_PYTHON") {
        return p;
    }
    if Path::new("/usr/bin/python3").is_file() { "/usr/bin/python3".into() } else { "python3".into() }
}

/// The cargo target directory.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
    }
}

/// The driver scripts shipped with the tests (`tests/sdk/`).
pub fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("sdk").join(name)
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The virtualenv's python with `blaxel==BLAXEL_VERSION` installed (created on first use; a
/// marker file records a complete installation, so an interrupted one is redone).
pub fn blaxel_python() -> PathBuf {
    let venv = target_dir().join("sdk-venv").join(format!("blaxel-{BLAXEL_VERSION}"));
    let python = venv.join("bin/python");
    let marker = venv.join(".installed");
    if marker.is_file() && python.is_file() {
        return python;
    }
    let _ = fs::remove_dir_all(&venv);
    fs::create_dir_all(venv.parent().expect("parent")).expect("create the venv parent");
    run(Command::new(base_python()).args(["-m", "venv"]).arg(&venv), "creating the SDK virtualenv (python3 -m venv)");
    run(
        Command::new(&python).args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            &format!("blaxel=={BLAXEL_VERSION}"),
        ]),
        "installing the Blaxel SDK from PyPI",
    );
    fs::write(&marker, BLAXEL_VERSION).expect("write the venv marker");
    python
}
