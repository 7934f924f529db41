//! Well-known paths and file names, in one place.

use std::path::{Path, PathBuf};

/// Configuration file read when `--config` is not given (`GATEWAY_CONFIG` overrides).
pub const DEFAULT_CONFIG: &str = "/etc/gateway/gateway.toml";
/// Default `state.dir`.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/gateway";
/// Default `dataplane.bpffs`.
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf/gateway";
/// Default `listen.admin` (as `unix:PATH`), and where the CLI clients look when neither
/// `--admin` nor a configuration is found. systemd creates its directory (`RuntimeDirectory=`);
/// otherwise the gateway does, mode 0700.
pub const DEFAULT_ADMIN_SOCKET: &str = "/run/gateway/admin.sock";

/// `dataplane.bpffs` of `gateway serve --dev`.
pub const DEV_BPFFS: &str = "/sys/fs/bpf/gateway-dev";
/// `state.dir` of `gateway serve --dev` when `GATEWAY_STATE_DIR` is unset.
pub const DEV_STATE_DIR: &str = "./.gateway-dev";
/// The admin socket of `gateway serve --dev`, inside its state directory.
pub const DEV_ADMIN_SOCKET: &str = "admin.sock";
/// How problems of the `serve --dev` configuration name their "file".
pub const DEV_CONFIG_NAME: &str = "<dev>";
/// Environment variable naming the state directory of `serve --dev`.
pub const ENV_STATE_DIR: &str = "GATEWAY_STATE_DIR";

/// Inside `state.dir`: one JSON file per sandbox, `{workspace}.{name}.json`.
pub const STATE_SANDBOXES: &str = "sandboxes";
/// Inside `state.dir`: one JSON file per access token, `{workspace}.{name}.json`.
pub const STATE_TOKENS: &str = "tokens";
/// Inside `state.dir`: generated TLS material (the development CA and certificates).
pub const STATE_TLS: &str = "tls";
/// Inside `state.dir/tls`: the development CA certificate that clients trust.
pub const TLS_CA_FILE: &str = "ca.pem";
/// The system's CA bundle (Debian's), trusted for etcd's TLS when `fleet.etcd_ca` is empty.
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Inside `state.dir`: a fleet member's saved replica of the fleet's state.
pub const FLEET_REPLICA_FILE: &str = "fleet-replica.json";
/// Inside `state.dir`: the public TCP ports released recently (held back from new owners).
pub const L4_RELEASED_FILE: &str = "l4-released.json";
/// Inside `state.dir`: the format marker.
pub const STATE_FORMAT_FILE: &str = "FORMAT";
/// Inside `state.dir`: the lock held by the running gateway.
pub const STATE_LOCK_FILE: &str = "lock";
/// Inside `state.dir`: the unix socket a successor connects to for a zero-downtime restart
/// (`crate::handoff`).
pub const HANDOFF_SOCKET: &str = "handoff.sock";
/// Suffix of a file being written (never read back; removed at start).
pub const TEMP_SUFFIX: &str = ".tmp";

/// The development CA of a state directory: `{state.dir}/tls/ca.pem`.
pub fn tls_ca(state_dir: &Path) -> PathBuf {
    state_dir.join(STATE_TLS).join(TLS_CA_FILE)
}

/// The state directory of `gateway serve --dev`: `$GATEWAY_STATE_DIR`, else `./.gateway-dev`.
pub fn dev_state_dir() -> PathBuf {
    match std::env::var_os(ENV_STATE_DIR) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(DEV_STATE_DIR),
    }
}
