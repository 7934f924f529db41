//! TODO
pub mod model;
