//! Ambit's local sandbox, end-to-end tests and benchmarks (issue #5 builds the sandbox).
//!
//! Owns what needs a whole mesh on one host: network namespaces as nodes and pods, the real
//! daemons, sample apps. Today: the root guard, network namespaces wired as nodes and pods
//! ([`netns`]) and daemons run inside them ([`process`]), used by ztunnel's integration tests.

pub mod daemons;
pub mod load;
pub mod netns;
pub mod process;
pub mod sandbox;

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
