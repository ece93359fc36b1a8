//! Ambit's control plane.
//!
//! Layers, in dependency order (the model and translation know nothing of kube-rs or tonic):
//! - [`model`], [`manifest`]: the objects we read and their parsing/validation;
//! - [`store`], [`translate`], [`index`]: the current objects, their translation to ztunnel
//!   resources, and incremental recomputation;
//! - [`xds`], [`ca`], [`auth`]: the gRPC services (delta ADS, certificates) and caller
//!   authentication;
//! - [`source`]: manifest directory and Kubernetes inputs;
//! - [`waypoints`]: the Deployment/Service/ServiceAccount each waypoint Gateway gets;
//! - [`run`]: wiring it together; [`config`], [`metrics`].

pub mod auth;
pub mod ca;
pub mod config;
pub mod crds;
pub mod deploy;
pub mod index;
pub mod manifest;
pub mod metrics;
pub mod model;
pub mod rejection;
pub mod run;
pub mod source;
pub mod store;
pub mod translate;

/// The old path of `deploy::waypoint_objects::objects`, kept while `tests/chart.rs` still
/// imports it from here.
#[doc(hidden)]
pub mod waypoints {
    pub use crate::deploy::waypoint_objects::objects;
}
pub mod xds;
