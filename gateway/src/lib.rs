//! The gateway's control plane.
//!
//! Layers import only downwards: `errors`, `model` → `dataplane`, `state` → `service` → `admin`,
//! `compat`, `edge` → `daemon`, `cli`. A policy change travels admin → service (validate, then
//! under the mutation guard: kernel map → durable store → in-memory index); a request travels
//! edge (host, route, auth) → one forward step → proxy → marked socket → sandbox; a public
//! TCP connection travels l4 (port, allowFrom, caps) → marked socket → splice. See
//! docs/ARCHITECTURE.md.

pub mod admin;
pub mod auth;
pub mod cli;
pub mod compat;
pub mod config;
pub mod connector;
pub mod daemon;
pub mod dataplane;
pub mod edge;
pub mod errors;
#[doc(hidden)]
pub mod fuzzing;
pub mod handoff;
pub mod json_api;
pub mod l4;
pub mod lifecycle;
pub mod model;
pub mod paths;
pub mod service;
pub mod state;
pub mod telemetry;
