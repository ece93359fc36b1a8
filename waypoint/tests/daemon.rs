//! The waypoint as a real process: a clear refusal of a bad configuration. Serving traffic
//! against a real controller and ztunnels is `e2e/tests/waypoint.rs` (on the sandbox).

// Test helpers outside #[test] functions unwrap too: a panic is a failed test.
#![allow(clippy::unwrap_used)]

use ambit_shared::testing::expect_startup_failure;

const BIN: &str = env!("CARGO_BIN_EXE_waypoint");

#[test]
fn refuses_clashing_addresses() {
    let err =
        expect_startup_failure(BIN, &["--readiness-addr", "127.0.0.1:15999", "--metrics-addr", "127.0.0.1:15999"]);
    assert!(err.contains("--readiness-addr and --metrics-addr"), "{err}");
}

#[test]
fn refuses_a_missing_root_certificate_naming_the_flag() {
    let err = expect_startup_failure(
        BIN,
        &[
            "--root-cert",
            "/nonexistent/root-cert.pem",
            "--readiness-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
            "--hbone-addr",
            "127.0.0.1:0",
        ],
    );
    assert!(err.contains("--root-cert /nonexistent/root-cert.pem"), "{err}");
}

#[test]
fn refuses_a_bad_identity() {
    let err = expect_startup_failure(BIN, &["--gateway", "Not_A_Name"]);
    assert!(err.contains("identity"), "{err}");
}
