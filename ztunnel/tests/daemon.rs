//! ztunnel as a real process: a clear refusal of a bad configuration, naming the setting.
//! (The binary against a real control plane — readiness, metrics, `/config_dump` — spans
//! the controller too, so it runs in e2e/tests/ztunnel_daemon.rs.)

use ambit_shared::testing::expect_startup_failure;

const BIN: &str = env!("CARGO_BIN_EXE_ztunnel");

#[test]
fn refuses_a_bad_configuration_naming_the_setting() {
    let err = expect_startup_failure(BIN, &["--node-name", "n", "--trust-domain", "Not A Domain"]);
    assert!(err.contains("TRUST_DOMAIN") && err.contains("Not A Domain"), "{err}");
    let err = expect_startup_failure(BIN, &["--node-name", "n", "--root-cert", "/nonexistent/root.pem"]);
    assert!(err.contains("ROOT_CERT") && err.contains("/nonexistent/root.pem"), "{err}");
}
