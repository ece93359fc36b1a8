//! What the sandbox records: its pods, services, deployments, daemons and address counters,
//! persisted as `state.json` so every CLI command sees the same sandbox.
//!
//! Owns the record types only; who fills them in is the roles' business (pods, services,
//! processes, waypoints), and reading and writing `state.json` is the handle's.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A pod as the sandbox runs it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodState {
    pub namespace: String,
    pub name: String,
    pub node: String,
    pub ip: Ipv4Addr,
    pub netns: String,
    pub labels: BTreeMap<String, String>,
    pub service_account: String,
    /// The Deployment that owns it.
    pub owner: Option<String>,
    pub pid: Option<u32>,
    /// TCP ports the container declares (readiness waits for the first).
    pub ports: Vec<u16>,
    pub ready: bool,
}

/// A service's VIP and where it sends traffic.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceState {
    pub namespace: String,
    pub name: String,
    pub vip: Ipv4Addr,
    pub selector: BTreeMap<String, String>,
    /// (port, target port)
    pub ports: Vec<(u16, u16)>,
}

/// Everything `down` needs, persisted as `state.json` so every CLI command sees it.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct SandboxState {
    pub prefix: String,
    pub nodes: Vec<String>,
    pub pods: BTreeMap<String, PodState>,
    pub services: BTreeMap<String, ServiceState>,
    pub deployments: BTreeMap<String, Value>,
    /// Daemons: name → pid.
    pub daemons: BTreeMap<String, u32>,
    pub next_vip: u32,
    /// Per node, the next pod address.
    pub next_pod_ip: BTreeMap<String, u8>,
    /// Waypoint objects the controller asked for and the sandbox runs: file → (kind, ns, name).
    #[serde(default)]
    pub waypoints: BTreeMap<String, Vec<(String, String, String)>>,
}
