//! Durable state: the [`Store`] trait, the file store under `state.dir`, and the etcd store
//! of a fleet.
//!
//! Every acknowledged mutation is durable before the API answers: the service layer
//! (`crate::service`) awaits the store write before it replies.

pub mod etcd_store;
pub mod file_store;
pub mod import;
pub mod port_quarantine;
pub mod replica_file;
pub mod store;

pub use etcd_store::{Change, EtcdSettings, EtcdStore, EtcdTls, Feed, FeedItem};
pub use file_store::FileStore;
pub use store::{MemoryStore, ReplicaStatus, StateSnapshot, Store, StoreError, StoreFuture};
