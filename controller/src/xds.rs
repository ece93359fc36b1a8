//! The delta ADS server: the published resources with per-resource versions, a change log,
//! debounced push notifications, and one task per subscriber stream that sends each
//! subscriber only what it does not hold.
//!
//! On connect a subscriber gets everything whose version differs from its
//! `initial_resource_versions` and removals for what it holds that no longer exists; after
//! that, on each (debounced) publish, only the resources that changed. ACKs and NACKs are
//! tracked per subscriber and type; a NACK is logged and counted and never blocks others.
//!
//! `state` holds the resources (each encoded once) and the subscriber registry, `session` one
//! subscriber's stream; this module authenticates a caller and starts its session. The gRPC
//! framing, which streams responses from the shared encoded resources, is `ambit_shared`'s
//! `xds::server`. Translating objects into resources is `index`'s business.

use std::sync::Arc;

use ambit_shared::grpc::PeerInfo;
use ambit_shared::proto::discovery::DeltaDiscoveryRequest;
use ambit_shared::xds::server::{DeltaAds, EncodedResponse};
use tokio::sync::mpsc;
use tonic::{Request, Status, Streaming};

use crate::auth::Authenticator;

mod session;
mod state;

pub use state::{SubscriberStatus, TypeStatus, XdsState, TYPES};

/// Starts the sessions (served by `ambit_shared::xds::server::DeltaAdsServer`).
pub struct AdsService {
    pub state: Arc<XdsState>,
    pub auth: Arc<dyn Authenticator>,
}

impl DeltaAds for AdsService {
    async fn start(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<mpsc::Receiver<EncodedResponse>, Status> {
        let peer = request.extensions().get::<PeerInfo>().map(|p| p.addr).or_else(|| request.remote_addr());
        let caller = crate::auth::authenticate(&*self.auth, request.metadata()).await?;
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let state = self.state.clone();
        let id = state.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        tokio::spawn(session::run(state, id, caller, peer, inbound, tx));
        Ok(rx)
    }
}
