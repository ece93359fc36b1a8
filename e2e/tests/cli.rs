//! The `ambit-sandbox` command as a user runs it (root): `up` the example, `status`, `exec`,
//! `logs`, `metrics`, `apply` and `delete` a policy, then `down` — which must leave nothing.
//! Its own prefix and directory, so it never touches a sandbox someone is running.

// Test helpers outside #[test] functions unwrap too: a panic is a failed test.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_ambit-sandbox");

struct Cli {
    prefix: String,
    dir: String,
}

impl Cli {
    fn run(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(["--prefix", &self.prefix, "--dir", &self.dir])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("running ambit-sandbox: {e}"))
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "ambit-sandbox {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Cli {
    fn drop(&mut self) {
        let _ = self.run(&["down"]);
    }
}

#[test]
fn up_use_and_down_from_the_command_line() {
    ambit_e2e::require_root();
    let prefix = format!("{}-cli", ambit_e2e::netns::run_prefix());
    let dir = std::env::temp_dir().join(format!("{prefix}-dir")).display().to_string();
    let cli = Cli { prefix: prefix.clone(), dir };
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");

    let shown = cli.ok(&["up", examples.join("shop").to_str().unwrap()]);
    for want in [
        "node-1",
        "node-2",
        "controller",
        "ztunnel-node-1",
        "shop/frontend-0",
        "outside/visitor-0",
        "service shop/reviews",
    ] {
        assert!(shown.contains(want), "`up` shows {want}:\n{shown}");
    }
    assert!(cli.ok(&["status"]).contains("shop/catalog-1"));

    let page = cli.ok(&["exec", "visitor-0", "--", "ambit-sample", "get", "http://frontend.shop/"]);
    let page: serde_json::Value = serde_json::from_str(page.trim()).unwrap();
    assert_eq!(page["backends"].as_array().unwrap().len(), 2, "{page}");
    let log = cli.ok(&["logs", "ztunnel-node-1"]);
    assert!(log.contains("connection complete"), "access log through `logs`:\n{log}");
    // node-1 runs the front end, whose outbound calls are always in the mesh (node-2 may see none).
    let metrics = cli.ok(&["metrics", "node-1"]);
    assert!(metrics.lines().all(|l| l.starts_with("istio_tcp_")) && metrics.contains("mutual_tls"), "{metrics}");

    let policy = examples.join("policies/deny-visitors.yaml");
    cli.ok(&["apply", policy.to_str().unwrap()]);
    let refused = (0..50).any(|_| {
        let out = cli.run(&["exec", "visitor-0", "--", "ambit-sample", "get", "http://catalog.shop:8080/"]);
        !out.status.success() || {
            std::thread::park_timeout(std::time::Duration::from_millis(100));
            false
        }
    });
    assert!(refused, "the applied policy refuses the visitor");
    cli.ok(&["delete", policy.to_str().unwrap()]);

    let failed = cli.run(&["exec", "no-such-pod", "--", "true"]);
    assert!(!failed.status.success() && String::from_utf8_lossy(&failed.stderr).contains("no pod"));

    cli.ok(&["down"]);
    assert!(ambit_e2e::sandbox::leftovers(&prefix).is_empty(), "{:?}", ambit_e2e::sandbox::leftovers(&prefix));
}
