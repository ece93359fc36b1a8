//! In-pod capture, the proxy's side: the ZDS client ([`zds`]) through which the node agent
//! hands over each pod's network namespace, and the ports and marks the proxy's in-pod
//! listeners and the node agent's redirect rules (`node::rules`) agree on. Entering a
//! namespace is `ambit_shared::netns`; installing rules is the node agent's job, not this one.

pub mod zds;

/// Mark ztunnel sets on its own sockets (Istio's 1337), so the rules let them through.
pub const PROXY_MARK: u32 = 0x539;
/// Connection mark for ztunnel's connections.
pub const CONN_MARK: u32 = 0x111;
/// The bits of the mark the rules own.
pub const MARK_MASK: u32 = 0xfff;
/// Where a pod's outbound TCP is redirected.
pub const OUTBOUND_PORT: u16 = 15001;
/// Where inbound TCP from clients outside the mesh is redirected.
pub const INBOUND_PLAINTEXT_PORT: u16 = 15006;
/// The HBONE listener (mutual TLS), reached directly, never redirected.
pub const INBOUND_HBONE_PORT: u16 = 15008;
