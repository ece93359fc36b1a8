//! Ambit's control plane.
//!
//! Layers, bottom first; a module only uses modules on its own level or below (the model and
//! translation know nothing of kube-rs or tonic):
//! - [`model`], [`rejection`], [`metrics`]: the objects we read, why an input is refused (with
//!   the field checks every layer shares), the controller's metrics;
//! - [`store`], [`translate`]: the current objects and their translation to ztunnel and
//!   waypoint resources, each kind's validation beside its translation;
//! - [`manifest`]: a document in, a validated model object out (both sources use it);
//! - [`index`]: incremental recomputation of the resources after each batch;
//! - [`deploy`]: what the controller writes — waypoint objects, the root ConfigMap, statuses
//!   — to a directory or to Kubernetes; [`config`]: flags and the settings built from them;
//! - [`auth`], [`ca`], [`xds`]: caller authentication and the gRPC services (certificates,
//!   delta ADS);
//! - [`source`]: manifest directory and Kubernetes inputs; [`crds`]: the CRDs we read;
//! - [`run`]: wiring it together.

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
pub mod xds;
