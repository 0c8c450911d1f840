//! The integration-test binary: the real server over HTTP on both stores,
//! plus the fixtures that pin the pure rules (hash vectors, GrowthBook cases).

mod helpers;

mod assign;
mod conformance;
mod experiments;
mod flags;
mod hash_vectors;
mod robustness;
mod sticky;
