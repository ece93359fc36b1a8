//! Command lines of the daemons as the sandbox and the root tests run them: one place that
//! knows which flags make a controller serve a manifest directory and a ztunnel join it.

use std::path::Path;

/// A controller serving `root/manifests`, with its CA in `root/ca` and the bootstrap tokens
/// of `root/tokens.yaml`, fast pushes (tests and the sandbox want changes to land quickly),
/// writing waypoint objects into `root/waypoints` for the sandbox to run.
pub fn controller_args(root: &Path, grpc_addr: &str, admin_addr: &str) -> Vec<String> {
    let p = |f: &str| root.join(f).display().to_string();
    [
        "--manifests",
        &p("manifests"),
        "--manifest-poll-ms",
        "100",
        "--token-file",
        &p("tokens.yaml"),
        "--ca-dir",
        &p("ca"),
        "--grpc-addr",
        grpc_addr,
        "--admin-addr",
        admin_addr,
        "--push-debounce-ms",
        "20",
        "--push-max-delay-ms",
        "200",
        "--waypoint-dir",
        &p("waypoints"),
        "--waypoint-image",
        "ambit/waypoint",
        "--waypoint-xds-address",
        grpc_addr,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// The `tokens.yaml` line of a node's ztunnel.
pub fn node_token_entry(token: &str, node: &str) -> String {
    format!("- token: {token}\n  identity: spiffe://cluster.local/ns/ambit-system/sa/ztunnel\n  node: {node}\n")
}

/// A ztunnel for `node` talking to `control_plane`, with its token, sockets and the agent's
/// records under `dir` (`token`, `zds.sock`, `cni.sock`, `pods/`).
pub fn ztunnel_args(node: &str, control_plane: &str, root_cert: &Path, dir: &Path, drain_seconds: u32) -> Vec<String> {
    let p = |f: &str| dir.join(f).display().to_string();
    [
        "--node-name",
        node,
        "--xds-address",
        control_plane,
        "--ca-address",
        control_plane,
        "--root-cert",
        &root_cert.display().to_string(),
        "--token-file",
        &p("token"),
        "--zds-socket",
        &p("zds.sock"),
        "--cni-socket",
        &p("cni.sock"),
        "--agent-state-dir",
        &p("pods"),
        "--drain-seconds",
        &drain_seconds.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}
