//! `cargo xtask install [--systemd]` and `cargo xtask uninstall [--purge]`.
//!
//! | what | where (under `--root`, default `/`) |
//! | --- | --- |
//! | the release binary (eBPF object embedded) | `{prefix}/bin/gateway` (default prefix `/usr/local`) |
//! | the commented default configuration (admin API on the unix socket `/run/gateway/admin.sock`, no token) | `/etc/gateway/gateway.toml` (0600; never overwritten) |
//! | with `--systemd`: the unit, its paths rewritten to the prefix | `/etc/systemd/system/gateway.service` |
//! | with `--systemd`: the README the unit's `Documentation=` names | `{prefix}/share/doc/gateway/README.md` |
//!
//! The binary is replaced atomically (written beside it, then renamed), so a running gateway is
//! unaffected and a zero-downtime restart (SIGUSR2) starts the new one.
//!
//! `uninstall` stops and disables the unit (when systemd runs), removes the binary, the unit,
//! the README and the configuration, and leaves the state directory and the kernel data plane
//! (enforcement keeps running); `--purge` also tears the pinned data plane down and removes the
//! state directory.

use std::{
    fs,
    io::Write,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::{build, output, root};

/// Where the unit file says the binary is; rewritten to the real prefix at install.
const UNIT_BINARY: &str = "/usr/local/bin/gateway";
/// Where the unit file says the README is.
const UNIT_README: &str = "/usr/local/share/doc/gateway/README.md";
/// Configuration file (the unit and `gateway` default to it).
const CONFIG_FILE: &str = "etc/gateway/gateway.toml";
/// The unit.
const UNIT_FILE: &str = "etc/systemd/system/gateway.service";
/// Defaults of the configuration keys `uninstall --purge` reads.
const DEFAULT_STATE_DIR: &str = "/var/lib/gateway";
const DEFAULT_BPFFS: &str = "/sys/fs/bpf/gateway";

/// Where things go.
#[derive(Clone, Debug)]
pub struct Layout {
    /// Everything is installed under this directory (`/`, or a staging directory).
    pub root: PathBuf,
    /// The prefix as seen on the target system (`/usr/local`).
    pub prefix: PathBuf,
}

impl Layout {
    fn under(&self, path: &Path) -> PathBuf {
        self.root.join(path.strip_prefix("/").unwrap_or(path))
    }
    /// The binary as seen on the target system.
    pub fn binary(&self) -> PathBuf {
        self.prefix.join("bin/gateway")
    }
    fn readme(&self) -> PathBuf {
        self.prefix.join("share/doc/gateway/README.md")
    }
    fn config(&self) -> PathBuf {
        self.root.join(CONFIG_FILE)
    }
    fn unit(&self) -> PathBuf {
        self.root.join(UNIT_FILE)
    }
    fn is_live_system(&self) -> bool {
        self.root == Path::new("/")
    }
}

/// `cargo xtask install`.
pub fn install(layout: &Layout, systemd: bool, binary: Option<PathBuf>) -> Result<()> {
    let bin = match binary {
        Some(b) => b,
        None => build::gateway(true)?,
    };
    for line in install_files(layout, &bin, systemd)? {
        println!("install: {line}");
    }
    if systemd && layout.is_live_system() && systemd_running() {
        output(Command::new("systemctl").arg("daemon-reload"))?;
        println!("install: systemctl daemon-reload done");
    }
    println!(
        "install: next: review {} (the admin API is the unix socket /run/gateway/admin.sock, for root only), then {}",
        layout.config().display(),
        if systemd { "`systemctl enable --now gateway`" } else { "run `gateway serve`" }
    );
    Ok(())
}

/// Copies the files; returns one line per thing done.
pub fn install_files(layout: &Layout, bin: &Path, systemd: bool) -> Result<Vec<String>> {
    let mut done = Vec::new();
    let target = layout.under(&layout.binary());
    install_atomically(bin, &target, 0o755)?;
    done.push(format!("binary {}", target.display()));

    let config = layout.config();
    if config.exists() {
        done.push(format!("kept the existing configuration {}", config.display()));
    } else {
        // The defaults hold no secret: the admin API is a unix socket (file permissions), and a
        // TCP listener needs a token the operator sets (`admin.token_file` keeps it out of here).
        let text = default_config(&target)?;
        write_new(&config, text.as_bytes(), 0o600)?;
        done.push(format!("configuration {} (commented defaults)", config.display()));
    }

    if systemd {
        let unit = fs::read_to_string(root().join("packaging/gateway.service"))
            .context("cannot read packaging/gateway.service")?;
        let unit = render_unit(&unit, layout);
        let path = layout.unit();
        write_replace(&path, unit.as_bytes(), 0o644)?;
        done.push(format!("unit {}", path.display()));
        let readme = layout.under(&layout.readme());
        let text = fs::read(root().join("README.md")).context("cannot read README.md")?;
        write_replace(&readme, &text, 0o644)?;
        done.push(format!("documentation {}", readme.display()));
    }
    Ok(done)
}

/// The unit with its paths pointing at the installed files.
pub fn render_unit(unit: &str, layout: &Layout) -> String {
    unit.replace(UNIT_BINARY, &layout.binary().display().to_string())
        .replace(UNIT_README, &layout.readme().display().to_string())
}

/// `cargo xtask uninstall`.
pub fn uninstall(layout: &Layout, purge: bool) -> Result<()> {
    if layout.is_live_system() && systemd_running() && layout.unit().exists() {
        // Stopping leaves the kernel enforcing (programs stay pinned).
        let _ = Command::new("systemctl").args(["disable", "--now", "gateway"]).status();
        println!("uninstall: systemctl disable --now gateway");
    }
    for line in uninstall_files(layout, purge)? {
        println!("uninstall: {line}");
    }
    if layout.is_live_system() && systemd_running() {
        let _ = Command::new("systemctl").arg("daemon-reload").status();
    }
    Ok(())
}

/// Removes the files; returns one line per thing done.
pub fn uninstall_files(layout: &Layout, purge: bool) -> Result<Vec<String>> {
    let mut done = Vec::new();
    let bin = layout.under(&layout.binary());
    let config = layout.config();
    let (state_dir, bpffs) = configured_paths(&config);
    if purge && bin.exists() && layout.is_live_system() {
        // Before the binary goes: it is what knows how to remove its pins.
        let status = Command::new(&bin).args(["dataplane", "teardown", "--bpffs"]).arg(&bpffs).status();
        match status {
            Ok(s) if s.success() => done.push(format!("data plane under {} torn down (enforcement stopped)", bpffs)),
            _ => done.push(format!("no data plane removed under {bpffs}")),
        }
    }
    for path in [bin, layout.unit(), layout.under(&layout.readme()), config.clone()] {
        if remove_file(&path)? {
            done.push(format!("removed {}", path.display()));
        }
    }
    for dir in [config.parent(), layout.under(&layout.readme()).parent()].into_iter().flatten() {
        let _ = fs::remove_dir(dir); // only when empty
    }
    let state = layout.under(Path::new(&state_dir));
    if purge {
        if state.exists() {
            fs::remove_dir_all(&state).with_context(|| format!("cannot remove {}", state.display()))?;
            done.push(format!("removed the state directory {}", state.display()));
        }
    } else if state.exists() {
        done.push(format!("kept the state directory {} (--purge removes it)", state.display()));
    }
    Ok(done)
}

/// `state.dir` and `dataplane.bpffs` of the installed configuration (defaults if unreadable).
fn configured_paths(config: &Path) -> (String, String) {
    let table: Option<toml::Table> = fs::read_to_string(config).ok().and_then(|t| t.parse().ok());
    let get = |section: &str, key: &str, default: &str| {
        table
            .as_ref()
            .and_then(|t| t.get(section))
            .and_then(|s| s.get(key))
            .and_then(|v| v.as_str())
            .unwrap_or(default)
            .to_string()
    };
    (get("state", "dir", DEFAULT_STATE_DIR), get("dataplane", "bpffs", DEFAULT_BPFFS))
}

fn systemd_running() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

/// What `gateway print-default-config` prints.
fn default_config(bin: &Path) -> Result<String> {
    output(Command::new(bin).arg("print-default-config"))
}

fn create_parent(path: &Path) -> Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    }
    Ok(())
}

/// Copies `from` beside `to`, then renames it over `to`.
fn install_atomically(from: &Path, to: &Path, mode: u32) -> Result<()> {
    create_parent(to)?;
    let tmp = to.with_file_name(".gateway.new");
    fs::copy(from, &tmp).with_context(|| format!("cannot copy {} to {}", from.display(), tmp.display()))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))?;
    fs::rename(&tmp, to).with_context(|| format!("cannot move {} into place", to.display()))?;
    Ok(())
}

/// Writes a file that must not exist yet.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    create_parent(path)?;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(bytes).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Writes (or replaces) a file.
fn write_replace(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    create_parent(path)?;
    fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn remove_file(path: &Path) -> Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => bail!("cannot remove {}: {e}", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn staging() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xtask-install-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("staging dir");
        dir
    }

    #[test]
    fn install_then_uninstall_in_a_staging_root() {
        let root = staging();
        // A stand-in binary that prints a default configuration like the real one.
        let fake = root.join("fake-gateway");
        fs::write(&fake, "#!/bin/sh\nprintf '# comment\\n[admin]\\ntoken = \"\"\\n'\n").expect("fake");
        fs::set_permissions(&fake, fs::Permissions::from_mode(0o755)).expect("chmod");
        let layout = Layout { root: root.join("sys"), prefix: PathBuf::from("/opt/gw") };

        let done = install_files(&layout, &fake, true).expect("install");
        assert_eq!(done.len(), 4, "{done:?}");
        let bin = root.join("sys/opt/gw/bin/gateway");
        assert!(bin.is_file());
        let config = fs::read_to_string(root.join("sys/etc/gateway/gateway.toml")).expect("config");
        assert!(config.starts_with("# comment"), "{config}");
        assert!(config.contains("token = \"\""), "the defaults as printed: {config}");
        let mode = fs::metadata(root.join("sys/etc/gateway/gateway.toml")).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let unit = fs::read_to_string(root.join("sys/etc/systemd/system/gateway.service")).expect("unit");
        assert!(unit.contains("ExecStart=/opt/gw/bin/gateway serve --config /etc/gateway/gateway.toml"), "{unit}");
        assert!(!unit.contains("/usr/local/"), "{unit}");
        assert!(root.join("sys/opt/gw/share/doc/gateway/README.md").is_file());

        // A second install keeps the (edited) configuration.
        fs::write(root.join("sys/etc/gateway/gateway.toml"), "domain = \"edited.test\"\n").expect("edit");
        let done = install_files(&layout, &fake, false).expect("reinstall");
        assert!(done.iter().any(|l| l.starts_with("kept the existing configuration")), "{done:?}");

        fs::create_dir_all(root.join("sys/var/lib/gateway")).expect("state");
        let done = uninstall_files(&layout, false).expect("uninstall");
        assert!(!bin.exists() && !root.join("sys/etc/systemd/system/gateway.service").exists());
        assert!(!root.join("sys/etc/gateway/gateway.toml").exists());
        assert!(root.join("sys/var/lib/gateway").is_dir(), "state is left: {done:?}");
        let done = uninstall_files(&layout, true).expect("purge");
        assert!(!root.join("sys/var/lib/gateway").exists(), "{done:?}");
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn the_packaged_unit_names_the_paths_install_rewrites() {
        let unit = fs::read_to_string(root().join("packaging/gateway.service")).expect("unit");
        assert!(unit.contains(&format!("ExecStart={UNIT_BINARY} serve")), "ExecStart uses {UNIT_BINARY}");
        assert!(unit.contains(&format!("ExecStartPre={UNIT_BINARY} check-config")));
        assert!(unit.contains(UNIT_README));
    }
}
