//! The integration-test binary: the real server over HTTP on both stores,
//! plus the fixtures that pin the pure rules (hash vectors, GrowthBook cases).

// A panic is how a test fails; the unwrap and expect lints guard the service,
// not tests. Helpers are `pub` for the test modules of this one binary.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod helpers;
mod invariants;

mod assign;
mod auth;
mod backfill;
mod binary;
mod catch_up;
mod cli;
mod conformance;
mod experiments;
mod exposures;
mod flags;
mod generated_documents;
mod hardening;
mod hash_vectors;
mod lifecycle;
mod long_poll;
mod observability;
mod openapi;
mod operations;
mod pool;
mod readme;
mod replica_races;
mod replicas;
mod robustness;
mod routing;
mod sticky;
mod store_contract;
