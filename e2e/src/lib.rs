//! Ambit's local sandbox, end-to-end tests and benchmarks (issue #5 builds the sandbox).
//!
//! Owns what needs a whole mesh on one host: network namespaces as nodes and pods, the real
//! daemons, sample apps: the root guard, network namespaces ([`netns`]), packet captures ([`capture`]), the sandbox
//! ([`sandbox`]), daemon command lines ([`daemons`]), load generators ([`load`]), the
//! well-known benchmark clients ([`bench_tools`]) and the helpers the root tests share.

pub mod bench_tools;
pub mod capture;
pub mod daemons;
pub mod load;
pub mod netns;
pub mod sandbox;

/// Polls `f` every 100 ms until it gives a value; panics naming `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: std::time::Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::park_timeout(std::time::Duration::from_millis(100));
    }
}

/// Writes `body` to `dir/name` (creating `dir`) and returns the path.
pub fn write_file(dir: &std::path::Path, name: &str, body: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    if let Err(e) = std::fs::create_dir_all(dir).and_then(|()| std::fs::write(&path, body)) {
        panic!("writing {}: {e}", path.display());
    }
    path
}

/// Sums the series of metric `name` whose labels contain every `labels` entry.
pub fn metric_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

/// Fails the calling test loudly unless it runs as root: sandbox tests create network
/// namespaces and redirect rules, and a test that cannot run must never pass.
pub fn require_root() {
    assert!(
        nix_like_euid_is_root(),
        "this test needs root (it creates network namespaces); run the README's test command as root"
    );
}

fn nix_like_euid_is_root() -> bool {
    // /proc/self/status "Uid:" line: real, effective, saved, filesystem.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(2) == Some("0")))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    #[test]
    fn root_detection_matches_the_process() {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let euid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
        let euid = euid_line.split_whitespace().nth(2).unwrap();
        assert_eq!(super::nix_like_euid_is_root(), euid == "0");
    }
}
