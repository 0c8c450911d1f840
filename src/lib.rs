//! allot: deterministic experiment assignment over HTTP.
pub mod domain;
pub mod store;
