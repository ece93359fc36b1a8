//! ztunnel as a real process: readiness, metrics and configuration on the admin endpoints,
//! and a clear refusal of a bad configuration.

// Test helpers outside #[test] functions unwrap too: a panic is a failed test.
#![allow(clippy::unwrap_used)]

use ambit_shared::testing::{expect_startup_failure, free_addr, http_get, Daemon};

const BIN: &str = env!("CARGO_BIN_EXE_ztunnel");

#[test]
fn serves_readiness_metrics_and_config() {
    let (ready, metrics, admin) = (free_addr(), free_addr(), free_addr());
    let (r, m, a) = (ready.to_string(), metrics.to_string(), admin.to_string());
    let mut d = Daemon::spawn(
        BIN,
        &["--node-name", "node-7", "--readiness-addr", &r, "--metrics-addr", &m, "--admin-addr", &a],
    );
    d.wait_ok(ready, "/healthz/ready");
    let body = http_get(metrics, "/metrics").unwrap();
    assert!(body.contains("istio_build{component=\"ztunnel\""), "{body}");
    let config = http_get(admin, "/debug/config").unwrap();
    assert!(config.contains("\"node_name\": \"node-7\""), "{config}");
}

#[test]
fn refuses_a_bad_configuration_naming_the_setting() {
    let err = expect_startup_failure(BIN, &["--node-name", "n", "--trust-domain", "Not A Domain"]);
    assert!(err.contains("TRUST_DOMAIN") && err.contains("Not A Domain"), "{err}");
}
