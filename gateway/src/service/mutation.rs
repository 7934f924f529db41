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

    /// Makes the kernel's public TCP ports of a sandbox that runs here go from `old`'s to
    /// `new`'s (either absent: none): every port of `new` with its allowed sources first, then
    /// `old`'s other ports closed.
    pub fn apply_l4(&self, old: Option<&Sandbox>, new: Option<&Sandbox>) -> Result<(), DataplaneError> {
        let new = new.filter(|s| self.is_local(s));
        if let Some(new) = new {
            for e in &new.exposed {
                self.dataplane.expose_l4_port(e.public_port, &e.allow_from)?;
            }
        }
        for e in old.filter(|s| self.is_local(s)).map_or(&[][..], |s| &s.exposed) {
            let kept = new.is_some_and(|n| n.exposed.iter().any(|x| x.public_port == e.public_port));
            if !kept {
                self.dataplane.unexpose_l4_port(e.public_port)?;
            }
        }
        Ok(())
    }

    /// Removes every kernel entry of `sandbox` if it runs here.
    pub fn remove(&self, sandbox: &Sandbox) -> Result<(), DataplaneError> {
        if self.is_local(sandbox) { self.dataplane.remove_sandbox(sandbox.address) } else { Ok(()) }
    }
}
