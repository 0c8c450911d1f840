//! Pure rules of the API (docs/reference.md): no I/O, no HTTP, no database.
//!
//! Everything here is a function of plain data so that it can be unit- and
//! property-tested in isolation, and so that the engine can call it on the
//! hot path without awaiting anything.

pub mod condition;
pub mod experiment;
pub(crate) mod fields;
pub mod flag;
pub mod hash;
pub mod ids;
pub mod layout;
pub mod limits;
pub mod number;
pub mod phase;
pub mod precondition;
pub mod problem;
pub mod results;
pub mod routing;
