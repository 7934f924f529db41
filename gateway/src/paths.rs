//! Well-known paths and file names, in one place.

use std::path::PathBuf;

/// Configuration file read when `--config` is not given (`GATEWAY_CONFIG` overrides).
pub const DEFAULT_CONFIG: &str = "/etc/gateway/gateway.toml";
/// Default `state.dir`.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/gateway";
/// Default `dataplane.bpffs`.
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf/gateway";
/// Default admin address of the CLI clients when neither `--admin` nor a config is found.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:9901";

/// `dataplane.bpffs` of `gateway serve --dev`.
pub const DEV_BPFFS: &str = "/sys/fs/bpf/gateway-dev";
/// `state.dir` of `gateway serve --dev` when `GATEWAY_STATE_DIR` is unset.
pub const DEV_STATE_DIR: &str = "./.gateway-dev";
/// The admin socket of `gateway serve --dev`, inside its state directory.
pub const DEV_ADMIN_SOCKET: &str = "admin.sock";
/// Environment variable naming the state directory of `serve --dev`.
pub const ENV_STATE_DIR: &str = "GATEWAY_STATE_DIR";

/// Inside `state.dir`: one JSON file per sandbox, `{workspace}.{name}.json`.
pub const STATE_SANDBOXES: &str = "sandboxes";
/// Inside `state.dir`: the format marker.
pub const STATE_FORMAT_FILE: &str = "FORMAT";
/// Inside `state.dir`: the lock held by the running gateway.
pub const STATE_LOCK_FILE: &str = "lock";
/// Suffix of a file being written (never read back; removed at start).
pub const TEMP_SUFFIX: &str = ".tmp";

/// The state directory of `gateway serve --dev`: `$GATEWAY_STATE_DIR`, else `./.gateway-dev`.
pub fn dev_state_dir() -> PathBuf {
    match std::env::var_os(ENV_STATE_DIR) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(DEV_STATE_DIR),
    }
}
