//! The controller as a real process: readiness and metrics on its admin port, and a clear
//! refusal of a bad configuration.

use ambit_shared::testing::{expect_startup_failure, free_addr, http_get, Daemon};

const BIN: &str = env!("CARGO_BIN_EXE_controller");

#[test]
fn serves_readiness_and_metrics() {
    let (admin, grpc) = (free_addr(), free_addr());
    let (a, g) = (admin.to_string(), grpc.to_string());
    let mut d = Daemon::spawn(BIN, &["--admin-addr", &a, "--grpc-addr", &g]);
    d.wait_ok(admin, "/ready");
    let body = http_get(admin, "/metrics").unwrap();
    assert!(body.contains("istio_build{component=\"controller\""), "{body}");
}

#[test]
fn refuses_a_bad_configuration_naming_the_setting() {
    let err = expect_startup_failure(BIN, &["--cert-lifetime-seconds", "5"]);
    assert!(err.contains("CERT_LIFETIME_SECONDS"), "{err}");
    let err = expect_startup_failure(BIN, &["--manifests", "/nonexistent/ambit"]);
    assert!(err.contains("MANIFEST_DIR") && err.contains("/nonexistent/ambit"), "{err}");
}
