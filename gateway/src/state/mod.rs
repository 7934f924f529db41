//! Durable state: the [`Store`] trait, and the file store under `state.dir`.
//!
//! Every acknowledged mutation is durable before the API answers: the service layer
//! (`crate::service`) awaits the store write before it replies.

pub mod file_store;
pub mod store;

pub use file_store::FileStore;
pub use store::{MemoryStore, StateSnapshot, Store, StoreError, StoreFuture};
