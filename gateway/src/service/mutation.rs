//! What only a mutation may touch: the kernel data plane and the durable store. [`Mutating`] is
//! reached only through the guard of the service's one mutation mutex ([`crate::service::App`]),
//! and every mutation of every service takes it as a parameter, so the order (validate →
//! kernel → store → index → answer) holds for all of them and two never interleave.
//!
//! In a fleet, only the host that runs a sandbox (its `owner`) programs its kernel policy: the
//! kernel calls here do nothing for another host's sandbox, whose owner applies the change when
//! its replica sees it.

use crate::{
    dataplane::{Dataplane, DataplaneError, SandboxPolicy},
    model::sandbox::Sandbox,
    state::Store,
};
use std::{sync::Arc, time::Duration};

/// The kernel and the store, owned by the mutation mutex.
pub struct Mutating {
    /// The kernel data plane.
    pub dataplane: Dataplane,
    /// The durable store.
    pub store: Arc<dyn Store>,
    /// This gateway's `fleet.host`; `None` on a single host.
    pub host: Option<String>,
}

impl Mutating {
    /// Wraps the data plane and the store of a single host (at start-up, and in tests of one
    /// service).
    pub fn new(dataplane: Dataplane, store: Arc<dyn Store>) -> Self {
        Self { dataplane, store, host: None }
    }

    /// Whether this gateway runs `sandbox` (always, on a single host).
    pub fn is_local(&self, sandbox: &Sandbox) -> bool {
        sandbox.owner == self.host
    }

    /// Programs `sandbox`'s policy if it runs here.
    pub fn apply(&self, sandbox: &Sandbox, policy: &SandboxPolicy) -> Result<Duration, DataplaneError> {
        if self.is_local(sandbox) { self.dataplane.apply_sandbox(policy) } else { Ok(Duration::ZERO) }
    }

    /// Removes every kernel entry of `sandbox` if it runs here.
    pub fn remove(&self, sandbox: &Sandbox) -> Result<(), DataplaneError> {
        if self.is_local(sandbox) { self.dataplane.remove_sandbox(sandbox.address) } else { Ok(()) }
    }
}
