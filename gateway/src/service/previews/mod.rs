//! Preview URLs, preview tokens and sessions.
//!
//! A preview maps `https://{id}.{region}.preview.{domain}` to one (sandbox, port); port 443
//! means the sandbox API. Creating one on an undeclared port opens that port in the kernel;
//! deleting (or reaping) the last one using it closes it again unless it is declared.
//!
//! - [`model`]: the durable records (a preview holds its tokens, so none outlives it);
//! - [`spec`]: request bodies and their validation; [`time`]: timestamps and lifetimes;
//! - [`ids`]: stable derived ids, token secrets; [`index`]: the in-memory lookups;
//! - [`service`]: the mutations on [`crate::service::App`] and the edge's lookups;
//! - [`gate`]: what the HTTPS edge does for a preview request (tokens, cookie, CORS, headers);
//! - [`reaper`]: deletes expired previews; [`views`]: what `/v1` answers.

pub mod gate;
pub mod ids;
pub mod index;
pub mod registry;
pub mod spec;
pub mod views;
