//! The real `helm` binary run on `charts/ambit` as release `ambit`: `helm template` for the
//! manifests, a client-only `helm install --dry-run` for NOTES.txt, and `helm lint --strict`.
//! It owns finding helm (on `PATH`; `bash scripts/helm.sh` installs it) and keeping it off the
//! user's Helm directories; it does not read the manifests (`objects` does).

use std::path::{Path, PathBuf};
use std::process::Command;

const RELEASE: &str = "ambit";

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_owned()
}

/// `helm` with its configuration, cache and data directories under this test's target dir.
fn helm() -> Command {
    let home = Path::new(env!("CARGO_TARGET_TMPDIR")).join("helm-home");
    let mut cmd = Command::new("helm");
    cmd.env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_DATA_HOME", home.join("data"));
    cmd
}

/// Runs `cmd` on the chart with `values` over its defaults: its standard output, or everything
/// it printed when it fails. A missing helm fails the test, never skips it.
fn run(mut cmd: Command, values: Option<&Path>) -> Result<String, String> {
    cmd.arg(repo().join("charts/ambit"));
    if let Some(v) = values {
        cmd.arg("--values").arg(v);
    }
    let out = cmd.output().unwrap_or_else(|e| {
        panic!(
            "cannot run `helm` ({e}): the chart tests need Helm on PATH; install it (and kubectl) \
             with `bash scripts/helm.sh` (scripts/test.sh runs it)"
        )
    });
    let stdout = String::from_utf8(out.stdout).expect("UTF-8 output");
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)))
    }
}

/// `helm template`: the manifests as one YAML stream.
pub fn template(namespace: &str, values: Option<&Path>) -> Result<String, String> {
    let mut cmd = helm();
    cmd.args(["template", RELEASE, "--namespace", namespace]);
    run(cmd, values)
}

/// The rendered NOTES.txt, from `helm install --dry-run=client` (`helm template` leaves it out).
pub fn notes(namespace: &str, values: Option<&Path>) -> Result<String, String> {
    let mut cmd = helm();
    cmd.args(["install", RELEASE, "--namespace", namespace, "--dry-run=client", "--output", "json"]);
    let release: serde_json::Value =
        serde_json::from_str(&run(cmd, values)?).map_err(|e| format!("helm's JSON release: {e}"))?;
    release["info"]["notes"].as_str().map(str::to_owned).ok_or_else(|| format!("no info.notes in {release}"))
}

/// `helm lint --strict`: what it printed, which names any warning.
pub fn lint(values: Option<&Path>) -> Result<String, String> {
    let mut cmd = helm();
    cmd.args(["lint", "--strict"]);
    run(cmd, values)
}
