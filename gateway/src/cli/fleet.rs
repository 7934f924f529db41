//! `gateway fleet …`: the fleet's certificates (a CA of its own, one certificate per host),
//! and a member's view of the fleet (`GET /v1/fleet`).

use super::{
    AdminArgs,
    output::{call, columns, text},
};
use crate::edge::fleet::pki;
use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::Value;
use std::path::PathBuf;

/// `gateway fleet …`.
#[derive(Debug, Subcommand)]
pub enum FleetCommand {
    /// Create the fleet's CA in a directory (ca.pem, ca-key.pem); an existing one is kept.
    /// Every host trusts ca.pem (fleet.ca); keep ca-key.pem off the hosts.
    Ca(DirArg),
    /// Issue the certificate of one host with the fleet's CA: HOST.pem and HOST.key in the
    /// directory, for fleet.cert and fleet.key of that host (its DNS name is HOST, which must
    /// be the host's fleet.host).
    Cert(CertArgs),
    /// Copy a single host's state directory (state.dir of --config) into the fleet's etcd
    /// (fleet.* of --config), this host (fleet.host) running its sandboxes. Run it with the
    /// gateway stopped, before starting it as a fleet member. Idempotent: what the fleet already
    /// has is left as it is.
    Import(super::ConfigFile),
    /// A member's view of the fleet: its host, the etcd revision its replica reached and how
    /// stale it is, and every host with whether its key in etcd lives.
    Status {
        /// Admin API access (of any member).
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// The directory of the fleet's CA.
#[derive(Debug, Args)]
pub struct DirArg {
    /// Directory of the CA (created if missing).
    ///
    /// Example: --dir /etc/gateway/fleet
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
}

/// `gateway fleet cert`.
#[derive(Debug, Args)]
pub struct CertArgs {
    /// The host's fleet.host (one DNS label).
    ///
    /// Example: host-a
    pub host: String,
    /// Directory of the CA; the certificate and key are written there.
    ///
    /// Example: --dir /etc/gateway/fleet
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
}

/// Runs a `fleet` command.
pub fn run(command: FleetCommand) -> anyhow::Result<u8> {
    match command {
        FleetCommand::Import(super::ConfigFile { config }) => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(import(&config))
        }
        FleetCommand::Status { admin } => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(call(&admin, http::Method::GET, "/v1/fleet", None, "", status_table))
        }
        FleetCommand::Ca(DirArg { dir }) => {
            let (cert, created) = pki::make_ca(&dir).context("cannot create the fleet CA")?;
            match created {
                true => println!("created the fleet CA {}", cert.display()),
                false => println!("kept the existing fleet CA {}", cert.display()),
            }
            Ok(0)
        }
        FleetCommand::Cert(CertArgs { host, dir }) => {
            if !crate::model::is_dns_label(&host) {
                anyhow::bail!("{host:?} is not a valid fleet.host (one DNS label: a-z, 0-9 and '-')");
            }
            let (cert, key) =
                pki::make_host_cert(&dir, &host).with_context(|| format!("cannot issue {host}'s certificate"))?;
            println!("fleet.cert = {:?}\nfleet.key = {:?}", cert.display().to_string(), key.display().to_string());
            Ok(0)
        }
    }
}

fn status_table(v: &Value) -> String {
    let head = columns(
        &[],
        &[
            vec!["host".into(), text(&v["host"])],
            vec!["revision".into(), text(&v["revision"])],
            vec!["stale for".into(), format!("{} ms", text(&v["staleForMs"]))],
            vec!["resyncs".into(), text(&v["resyncs"])],
        ],
    );
    let rows: Vec<Vec<String>> = v["peers"]
        .as_array()
        .map(|peers| {
            peers
                .iter()
                .map(|p| {
                    let alive = if p["alive"].as_bool() == Some(true) { "alive" } else { "down" };
                    let address = if p["address"].is_null() { "-".into() } else { text(&p["address"]) };
                    vec![text(&p["host"]), address, alive.into()]
                })
                .collect()
        })
        .unwrap_or_default();
    format!("{head}\n{}", columns(&["HOST", "ADDRESS", "STATUS"], &rows))
}

async fn import(path: &std::path::Path) -> anyhow::Result<u8> {
    let config = match crate::config::load(path) {
        Ok(c) => c,
        Err(problems) => return Ok(super::print_problems(&problems)),
    };
    if !config.fleet.enabled() {
        anyhow::bail!("{}: fleet.etcd is empty: name the fleet's etcd to import into", path.display());
    }
    let file = crate::state::FileStore::open(&config.state.dir).with_context(|| {
        format!("cannot open the state directory {} (stop the gateway first)", config.state.dir.display())
    })?;
    let etcd = crate::daemon::connect_fleet(&config, false).await?;
    let secrets = [crate::service::previews::ids::KEY_SECRET];
    let report = crate::state::import::import(&file, &etcd, &config.fleet.host, &secrets)
        .await
        .context("the import stopped (what was written stays: run it again)")?;
    println!(
        "imported {} records into {}{} as fleet host {:?}; {} already there",
        report.imported,
        config.fleet.etcd.join(","),
        config.fleet.prefix,
        config.fleet.host,
        report.unchanged
    );
    for k in &report.kept {
        println!("kept the fleet's version of {k}");
    }
    for n in &report.notes {
        println!("note: {n}");
    }
    for c in &report.conflicts {
        eprintln!("conflict: {c}");
    }
    Ok(if report.conflicts.is_empty() { 0 } else { 1 })
}
