//! allot: deterministic experiment assignment over HTTP.
//!
//! What the server promises its clients is `docs/reference.md`; comments
//! cite its sections as `§N` (`§4.2` is the layout rule).
//!
//! Layers import downward only:
//!
//! * [`domain`]: the pure rules of the API (ids, hash, layout,
//!   conditions, flags, experiments); no I/O.
//! * [`store`]: one trait, a PostgreSQL and an SQLite implementation.
//! * [`engine`]: composes them: the in-memory snapshot, writes, assignment.
//! * [`http`]: thin axum handlers, one error type, probes.
//!
//! The path of an assignment: `http::routes::assign` parses the body →
//! `engine::assign` reads the current snapshot (no lock, no I/O), asks
//! `domain::experiment` for the decision (flag gate, bucket, layout) and, for
//! a sticky experiment only, reads or claims the stored assignment.
//!
//! [`app::Application`] wires settings, store, engine and router together.

pub mod app;
pub mod config;
pub mod domain;
pub mod engine;
pub mod http;
pub mod store;
pub mod telemetry;
