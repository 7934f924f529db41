//! What `gateway serve --dev` prints once it is ready (on stdout, the logs go to stderr): where
//! it listens, where the state and the development CA are, and commands to paste that work
//! without DNS or trust-store changes (`curl --cacert … --resolve …`).

use crate::{config::Config, edge::tls::DevPaths};
use std::{fmt::Write as _, path::Path};

/// The banner for `config` (the development configuration).
pub fn development(config: &Config, admin: &str, https: &str, bpffs: &Path) -> String {
    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf()).display().to_string();
    let state = abs(&config.state.dir);
    let ca = abs(&DevPaths::new(&config.state.dir).ca);
    let admin_path = admin.strip_prefix("unix:").map(|p| abs(Path::new(p))).unwrap_or_else(|| admin.to_string());
    let admin = if admin.starts_with("unix:") { format!("unix:{admin_path}") } else { admin.to_string() };
    let port = https.rsplit_once(':').map_or("443", |(_, p)| p);
    let suffix = format!("{}.{}", config.region, config.domain);
    let host = format!("sbx-my-sandbox-acme.{suffix}");
    // The binary by its full path: it may not be on PATH (`cargo xtask run` runs
    // target/release/gateway).
    let gateway = std::env::current_exe().map_or_else(|_| "gateway".to_string(), |p| p.display().to_string());
    let mut out = String::new();
    let _ = writeln!(out, "\ngateway is ready (development defaults: `gateway serve --dev`)\n");
    let _ = writeln!(
        out,
        "  HTTPS       https://{https}  (sandboxes: sbx-{{name}}-{{workspace}}.{suffix}, previews: {{id}}.{}.preview.{})",
        config.region, config.domain
    );
    let _ = writeln!(out, "  admin API   {admin}");
    let _ = writeln!(out, "  state       {state}");
    let _ = writeln!(out, "  CA          {ca}  (clients must trust it: curl --cacert)");
    let _ =
        writeln!(out, "  data plane  {}  (`gateway dataplane status --bpffs {}`)\n", bpffs.display(), bpffs.display());
    let _ = writeln!(out, "Try (another terminal):");
    let _ = writeln!(out, "  export GATEWAY_ADMIN={admin}");
    let _ = writeln!(
        out,
        "  {gateway} sandbox create my-sandbox -w acme --address <SANDBOX_IP> --interface <HOST_SIDE_IF> --port 3000"
    );
    let _ = writeln!(out, "  {gateway} token create acme me          # prints the token once");
    let _ = writeln!(
        out,
        "  curl --cacert {ca} --resolve {host}:{port}:127.0.0.1 -H \"Authorization: Bearer <TOKEN>\" https://{host}:{port}/port/3000/"
    );
    if let Some(path) = admin.strip_prefix("unix:") {
        let _ = writeln!(out, "  curl --unix-socket {path} http://gateway/metrics");
    }
    let _ = writeln!(out, "\nA demo sandbox with all of this done for you: cargo xtask run --demo\n");
    out
}
