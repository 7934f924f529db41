//! Members of a fleet of gateways.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// A fleet member as its host key in etcd announces it (the key lives as long as the member
/// renews its lease).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FleetHost {
    /// Its `fleet.host`.
    pub host: String,
    /// Where the other gateways reach its fleet listener (`fleet.advertise`).
    pub address: SocketAddr,
}
