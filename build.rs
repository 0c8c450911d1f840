//! Build script: tells the tests whether PostgreSQL is configured.
//!
//! With `TEST_DATABASE_URL` set when the crate is built, the `allot_test_pg`
//! cfg is on and the PostgreSQL variants of the integration tests are
//! ordinary tests. Without it they are compiled `#[ignore]`d, so that libtest
//! counts them as ignored (and says why) instead of passing tests that did
//! nothing. libtest has no way to skip a test at run time, hence a cfg; the
//! price is that changing the variable rebuilds this crate.

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=TEST_DATABASE_URL");
    println!("cargo::rustc-check-cfg=cfg(allot_test_pg)");
    if std::env::var_os("TEST_DATABASE_URL").is_some_and(|url| !url.is_empty()) {
        println!("cargo::rustc-cfg=allot_test_pg");
    }
}
