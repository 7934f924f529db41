//! What only a mutation may touch: the kernel data plane and the durable store. [`Mutating`] is
//! reached only through the guard of the service's one mutation mutex ([`crate::service::App`]),
//! and every mutation of every service takes it as a parameter, so the order (validate →
//! kernel → store → index → answer) holds for all of them and two never interleave.

use crate::{dataplane::Dataplane, state::Store};
use std::sync::Arc;

/// The kernel and the store, owned by the mutation mutex.
pub struct Mutating {
    /// The kernel data plane.
    pub dataplane: Dataplane,
    /// The durable store.
    pub store: Arc<dyn Store>,
}

impl Mutating {
    /// Wraps the data plane and the store (at start-up, and in tests of one service).
    pub fn new(dataplane: Dataplane, store: Arc<dyn Store>) -> Self {
        Self { dataplane, store }
    }
}
