//! Delta ADS client: one gRPC stream to the control plane carrying several resource types
//! (`istio.workload.Address`, `istio.security.Authorization`, later the waypoint's own type).
//!
//! Per type it subscribes (wildcard), hands each response's adds and removals to a
//! [`Handler`], ACKs what was accepted and NACKs with the handler's reasons what was not,
//! remembers the version of every accepted resource, and on reconnect (with exponential
//! backoff) sends those versions as `initial_resource_versions`, so the server sends only what
//! changed. It does not interpret resources; the handler does.
//!
//! [`server`] is the other end's wire side: resources encoded once and streamed to every
//! subscriber from shared bytes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::grpc;
use crate::proto::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use crate::proto::discovery::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use crate::proto::envoy::config::core::v3::Node;
use crate::proto::google::rpc::Status;

pub mod server;

/// gRPC status code INVALID_ARGUMENT, put in a NACK's `error_detail`.
const INVALID_ARGUMENT: i32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum XdsError {
    #[error("resource {name:?} has type {got}, expected {want}")]
    WrongType { name: String, got: String, want: &'static str },
    #[error("resource {name:?} does not decode: {source}")]
    Decode { name: String, source: prost::DecodeError },
    #[error("control plane stream: {0}")]
    Grpc(#[from] tonic::Status),
    #[error(transparent)]
    Token(#[from] grpc::TokenError),
    #[error("response for unsubscribed type {0}")]
    UnknownType(String),
}

/// One resource as received.
#[derive(Debug, Clone)]
pub struct Resource {
    pub name: String,
    pub version: String,
    pub body: crate::proto::Any,
}

impl Resource {
    /// Decodes the body as `T`, checking the type URL.
    pub fn decode<T: Message + Default>(&self, type_url: &'static str) -> Result<T, XdsError> {
        if self.body.type_url != type_url {
            return Err(XdsError::WrongType {
                name: self.name.clone(),
                got: self.body.type_url.clone(),
                want: type_url,
            });
        }
        T::decode(self.body.value.as_ref()).map_err(|source| XdsError::Decode { name: self.name.clone(), source })
    }
}

/// What one response changed, for one type.
#[derive(Debug)]
pub struct Update<'a> {
    pub type_url: &'a str,
    pub added: Vec<Resource>,
    pub removed: Vec<String>,
}

/// A resource the handler refused, and why. Refused resources are NACKed and not remembered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub name: String,
    pub reason: String,
}

/// Receives every change. Must apply the resources it accepts and return the rest.
pub trait Handler: Send + 'static {
    fn handle(&mut self, update: Update<'_>) -> Vec<Rejection>;
}

/// Where and how to reach the control plane.
#[derive(Clone)]
pub struct Config {
    pub address: SocketAddr,
    pub tls: Arc<rustls::ClientConfig>,
    /// Sent as `authorization: Bearer <token>`.
    pub token: Option<grpc::Token>,
    pub node: Node,
    /// Type URLs to subscribe to (wildcard, unless `names` lists the names wanted).
    pub types: Vec<&'static str>,
    /// Per type, the only resource names subscribed to; a type not here is wildcard.
    pub names: HashMap<&'static str, Vec<String>>,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Config {
    pub fn new(address: SocketAddr, tls: Arc<rustls::ClientConfig>, node: Node, types: Vec<&'static str>) -> Self {
        Config {
            address,
            tls,
            token: None,
            node,
            types,
            names: HashMap::new(),
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(15),
        }
    }
}

/// The client. `run` keeps the stream up forever; `synced` turns true once every subscribed
/// type has received its first response (the daemon's readiness waits for it).
pub struct Client {
    config: Config,
    /// Accepted versions per type and resource name: what we tell the server on reconnect.
    versions: HashMap<&'static str, HashMap<String, String>>,
    synced_tx: watch::Sender<bool>,
}

impl Client {
    pub fn new(config: Config) -> (Self, watch::Receiver<bool>) {
        let (synced_tx, synced_rx) = watch::channel(false);
        let versions = config.types.iter().map(|t| (*t, HashMap::new())).collect();
        (Client { config, versions, synced_tx }, synced_rx)
    }

    /// Versions currently held for `type_url` (for tests and the admin dump).
    pub fn versions(&self, type_url: &str) -> Option<&HashMap<String, String>> {
        self.versions.get(type_url)
    }

    /// Runs forever: connect, stream, and on any failure reconnect after a backoff that doubles
    /// up to the maximum and resets once a stream has delivered a response.
    pub async fn run(mut self, mut handler: impl Handler) {
        let mut backoff = self.config.initial_backoff;
        loop {
            match self.stream_once(&mut handler).await {
                Ok(received) => {
                    tracing::info!(addr = %self.config.address, "xDS stream closed by the control plane");
                    if received {
                        backoff = self.config.initial_backoff;
                    }
                }
                Err((e, received)) => {
                    tracing::warn!(addr = %self.config.address, error = %e, retry_in = ?backoff, "xDS stream failed");
                    if received {
                        backoff = self.config.initial_backoff;
                    }
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(self.config.max_backoff);
        }
    }

    fn initial_requests(&self) -> Vec<DeltaDiscoveryRequest> {
        self.config
            .types
            .iter()
            .enumerate()
            .map(|(i, t)| DeltaDiscoveryRequest {
                // The node goes on the first request of a stream only.
                node: (i == 0).then(|| self.config.node.clone()),
                type_url: (*t).to_owned(),
                resource_names_subscribe: self.config.names.get(t).cloned().unwrap_or_default(),
                initial_resource_versions: self.versions.get(t).cloned().unwrap_or_default(),
                ..Default::default()
            })
            .collect()
    }

    /// One stream's life. Returns whether any response arrived (to reset the backoff).
    async fn stream_once(&mut self, handler: &mut impl Handler) -> Result<bool, (XdsError, bool)> {
        let (tx, rx) = mpsc::channel(self.config.types.len() + 8);
        for req in self.initial_requests() {
            // The channel has room for all initial requests.
            let _ = tx.try_send(req);
        }
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        if let Some(token) = &self.config.token {
            // Read at every (re)connection: a rotated token is picked up.
            let value = token.header().map_err(|e| (XdsError::Token(e), false))?;
            request.metadata_mut().insert("authorization", value);
        }
        let channel = grpc::channel(self.config.address, self.config.tls.clone());
        let mut client = AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(64 * 1024 * 1024);
        let mut responses =
            client.delta_aggregated_resources(request).await.map_err(|e| (e.into(), false))?.into_inner();
        let mut received = false;
        let mut synced_types = std::collections::HashSet::new();
        loop {
            let response = match responses.message().await {
                Ok(Some(r)) => r,
                Ok(None) => return Ok(received),
                Err(e) => return Err((e.into(), received)),
            };
            received = true;
            let ack = self.apply(response, handler);
            if self.versions.contains_key(ack.type_url.as_str()) {
                synced_types.insert(ack.type_url.clone());
            }
            if synced_types.len() >= self.config.types.len() {
                self.synced_tx.send_replace(true);
            }
            if tx.send(ack).await.is_err() {
                return Ok(received);
            }
        }
    }

    /// Applies one response through the handler and builds the ACK or NACK for it.
    fn apply(&mut self, response: DeltaDiscoveryResponse, handler: &mut impl Handler) -> DeltaDiscoveryRequest {
        let DeltaDiscoveryResponse { resources, type_url, removed_resources, nonce, .. } = response;
        let Some((&known_type, versions)) = self.versions.iter_mut().find(|(t, _)| **t == type_url) else {
            let reason = XdsError::UnknownType(type_url.clone()).to_string();
            return nack(type_url, nonce, reason);
        };
        let mut added = Vec::with_capacity(resources.len());
        let mut rejections = Vec::new();
        for r in resources {
            match r.resource {
                Some(body) => added.push(Resource { name: r.name, version: r.version, body }),
                None => rejections.push(Rejection { name: r.name, reason: "resource has no body".into() }),
            }
        }
        let accepted: Vec<(String, String)> = added.iter().map(|r| (r.name.clone(), r.version.clone())).collect();
        for name in &removed_resources {
            versions.remove(name);
        }
        rejections.extend(handler.handle(Update { type_url: known_type, added, removed: removed_resources }));
        for (name, version) in accepted {
            if !rejections.iter().any(|r| r.name == name) {
                versions.insert(name, version);
            }
        }
        if rejections.is_empty() {
            DeltaDiscoveryRequest { type_url, response_nonce: nonce, ..Default::default() }
        } else {
            let reason = rejections.iter().map(|r| format!("{}: {}", r.name, r.reason)).collect::<Vec<_>>().join("; ");
            tracing::warn!(type_url = %type_url, %reason, "rejecting xDS resources");
            nack(type_url, nonce, reason)
        }
    }
}

fn nack(type_url: String, nonce: String, message: String) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url,
        response_nonce: nonce,
        error_detail: Some(Status { code: INVALID_ARGUMENT, message, details: Vec::new() }),
        ..Default::default()
    }
}

/// A node description in Istio's form: id `<type>~<ip>~<pod>.<ns>~<ns>.svc.cluster.local`
/// and metadata `NAME`, `NAMESPACE`, `NODE_NAME`, `INSTANCE_IPS`.
pub fn istio_node(kind: &str, ip: &str, pod: &str, namespace: &str, node_name: &str) -> Node {
    use prost_types::value::Kind;
    let s = |v: &str| prost_types::Value { kind: Some(Kind::StringValue(v.to_owned())) };
    let fields = [("NAME", s(pod)), ("NAMESPACE", s(namespace)), ("NODE_NAME", s(node_name)), ("INSTANCE_IPS", s(ip))]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    Node {
        id: format!("{kind}~{ip}~{pod}.{namespace}~{namespace}.svc.cluster.local"),
        metadata: Some(prost_types::Struct { fields }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests;
