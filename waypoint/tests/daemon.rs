//! The waypoint as a real process: readiness and metrics, and a clear refusal of a bad
//! configuration.

// Test helpers outside #[test] functions unwrap too: a panic is a failed test.
#![allow(clippy::unwrap_used)]

use ambit_shared::testing::{expect_startup_failure, free_addr, http_get, Daemon};

const BIN: &str = env!("CARGO_BIN_EXE_waypoint");

#[test]
fn serves_readiness_and_metrics() {
    let (ready, metrics) = (free_addr(), free_addr());
    let (r, m) = (ready.to_string(), metrics.to_string());
    let mut d = Daemon::spawn(BIN, &["--gateway", "waypoint", "--readiness-addr", &r, "--metrics-addr", &m]);
    d.wait_ok(ready, "/healthz/ready");
    let body = http_get(metrics, "/stats/prometheus").unwrap();
    assert!(body.contains("istio_build{component=\"waypoint\""), "{body}");
}

#[test]
fn refuses_clashing_addresses() {
    let err =
        expect_startup_failure(BIN, &["--readiness-addr", "127.0.0.1:15999", "--metrics-addr", "127.0.0.1:15999"]);
    assert!(err.contains("--readiness-addr and --metrics-addr"), "{err}");
}
