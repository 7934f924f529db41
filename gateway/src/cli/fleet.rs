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
