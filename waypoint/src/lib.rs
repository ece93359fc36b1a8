//! Ambit's waypoint: the L7 proxy a namespace (or service) gets on request.
//!
//! - [`config`]: flags and environment;
//! - [`l7`]: a bound service's routes and authorization policies, compiled;
//! - [`gateway`]: an ingress gateway's listeners, certificates and routes, compiled;
//! - [`jwt`]: RequestAuthentication (JWT validation, key sets);
//! - [`balance`]: endpoint choice, outlier ejection and pool limits (DestinationRule);
//! - [`xds`]: the control plane's workloads, services and L7 configuration, kept current;
//! - [`proxy`]: HBONE in (or, at an ingress gateway, its listeners), the HTTP pipeline (or
//!   TCP), pooled HBONE out;
//! - [`metrics`]: Istio's request metrics and the access log;
//! - [`fetch`]: the waypoint's own HTTP(S) calls (key sets, span export);
//! - [`trace`]: W3C / B3 trace context and OTLP span export;
//! - [`run`]: wiring and drain.

pub mod balance;
pub mod config;
pub mod fetch;
pub mod gateway;
pub mod jwt;
pub mod l7;
pub mod metrics;
pub mod proxy;
pub mod run;
#[cfg(test)]
mod testing;
pub mod trace;
pub mod xds;
