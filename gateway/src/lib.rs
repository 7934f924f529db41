//! The gateway's control plane.
//!
//! A policy change travels admin → state → dataplane → kernel map; a request travels
//! edge → route → auth → proxy → connector (marked socket) → sandbox. See docs/ARCHITECTURE.md.

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
pub mod lifecycle;
pub mod model;
pub mod paths;
pub mod service;
pub mod state;
pub mod telemetry;
