//! A fresh PostgreSQL database per test, from the server `scripts/start-postgres.sh`
//! started (its URL in `UDN_TEST_POSTGRES`). Shared by the log-store and control-plane
//! tests so both run their PostgreSQL half the same way.
#![allow(dead_code)]

/// The URL of a new, empty database named after `test` on the `UDN_TEST_POSTGRES`
/// server. Returns `None` (after a loud message) when the variable is unset outside CI;
/// in CI (`CI=true`) a missing PostgreSQL fails the test. Blocks: call it outside async
/// code or from a blocking thread.
pub fn fresh_database(test: &str) -> Option<String> {
    let Ok(url) = std::env::var("UDN_TEST_POSTGRES") else {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!(
                "CI=true but UDN_TEST_POSTGRES is unset: run `eval \"$(bash scripts/start-postgres.sh)\"` first"
            );
        }
        eprintln!(
            "\n!!!!!!!! SKIPPING the PostgreSQL half of {test}: UDN_TEST_POSTGRES is unset.\n\
             !!!!!!!! Run `eval \"$(bash scripts/start-postgres.sh)\"` to include it.\n"
        );
        return None;
    };
    // PostgreSQL cuts names at 63 bytes: keep a readable prefix, a hash of the whole
    // test name (so long names stay distinct) and the process id.
    let clean = test.replace(|c: char| !c.is_ascii_alphanumeric(), "_");
    let hash = clean.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let db = format!(
        "udn_{}_{:08x}_{}",
        &clean[..clean.len().min(36)],
        hash as u32,
        std::process::id()
    );
    let mut admin = postgres::Client::connect(&url, postgres::NoTls)
        .unwrap_or_else(|e| panic!("UDN_TEST_POSTGRES={url} unreachable: {e}"));
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {db}"))
        .expect("drop old test database");
    admin
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .expect("create test database");
    let base = url.rsplit_once('/').map_or(url.as_str(), |(b, _)| b);
    Some(format!("{base}/{db}"))
}
