//! The L7 configuration of one service, compiled from `ambit.waypoint.ServiceConfig` once per
//! update (regexes, CIDRs, header names) so each request costs comparisons only.
//!
//! - routes: the first whose port and match hold takes the request (the controller sends them
//!   in Gateway API precedence);
//! - authorization: Istio's order — CUSTOM is not supported, then DENY (any match denies),
//!   then ALLOW (with ALLOW policies present, one must match); AUDIT only logs. A connection
//!   forwarded as TCP is checked with Istio's L4 semantics ([`Layer::Tcp`]).
//! - [`normalize`]: the request path every check, route and upstream sees.
//!
//! The rooms: [`route`] (matches, filters, backends) and [`authz`] (policies and the verdict);
//! this module owns the compiled service ([`ServiceL7`]), the map of every service's entry
//! ([`L7Map`]) and the compile errors.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use ambit_shared::proto::waypoint as pb;
use http::{HeaderName, HeaderValue};
use regex::Regex;

mod authz;
pub mod normalize;
pub mod ratelimit;
mod route;

pub use authz::{authorize, Denial, Layer, OperationMatch, Policy, Subject};
pub use route::{
    host_name, BackendRef, Filter, HeaderOps, HostPattern, Matcher, PathMatch, RequestView, Route, RouteMatch,
};

#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("{field}: invalid regular expression: {source}")]
    Regex { field: String, source: regex::Error },
    #[error("{field}: {value:?} is not a valid {what}")]
    Invalid { field: String, value: String, what: &'static str },
    #[error(transparent)]
    Jwt(#[from] crate::jwt::JwtConfigError),
}

fn regex(field: impl Into<String>, re: &str) -> Result<Regex, CompileError> {
    // Gateway API and Envoy regexes match the whole value.
    Regex::new(&format!("^(?:{re})$")).map_err(|source| CompileError::Regex { field: field.into(), source })
}

fn header_name(field: &str, name: &str) -> Result<HeaderName, CompileError> {
    HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()).map_err(|_| CompileError::Invalid {
        field: field.into(),
        value: name.into(),
        what: "header name",
    })
}

fn header_value(field: &str, value: &str) -> Result<HeaderValue, CompileError> {
    HeaderValue::from_str(value).map_err(|_| CompileError::Invalid {
        field: field.into(),
        value: value.into(),
        what: "header value",
    })
}

/// A service's L7 configuration as the waypoint holds it.
#[derive(Debug, Clone)]
pub enum L7Entry {
    /// Compiled and in force.
    Ready(Arc<ServiceL7>),
    /// Refused (NACKed) with no earlier version to keep: the service is answered 503, never
    /// forwarded without its policies.
    Rejected(Arc<str>),
}

/// The L7 configuration of every service, by service key (`ns/hostname`).
pub type L7Map = Arc<RwLock<HashMap<String, L7Entry>>>;

/// One service's compiled configuration.
#[derive(Debug)]
pub struct ServiceL7 {
    pub hostname: String,
    pub ports: Vec<(u16, pb::Protocol)>,
    pub routes: Vec<Route>,
    pub policies: Vec<Policy>,
    /// Its DestinationRule's traffic policy.
    pub backend: Option<pb::BackendPolicy>,
    /// RequestAuthentication rules.
    pub jwt: Vec<crate::jwt::Rule>,
    /// DestinationRule subsets, by name.
    pub subsets: HashMap<String, Subset>,
    /// RateLimitPolicy rules, each its own limit.
    pub rate_limits: Vec<ratelimit::Limit>,
    /// At an ingress gateway: a request no route takes is answered 404 — there is no
    /// addressed service to fall back to.
    pub routed_only: bool,
}

impl ServiceL7 {
    pub fn compile(c: &pb::ServiceConfig) -> Result<Self, CompileError> {
        Ok(ServiceL7 {
            hostname: c.hostname.clone(),
            ports: c.ports.iter().filter_map(|p| Some((u16::try_from(p.port).ok()?, p.protocol()))).collect(),
            routes: c
                .routes
                .iter()
                .enumerate()
                .map(|(i, r)| Route::compile(&format!("routes[{i}] ({})", r.name), r))
                .collect::<Result<_, _>>()?,
            policies: c.policies.iter().map(Policy::compile).collect::<Result<_, _>>()?,
            backend: c.backend.clone(),
            jwt: c.jwt_rules.iter().map(crate::jwt::Rule::compile).collect::<Result<_, _>>()?,
            subsets: c
                .subsets
                .iter()
                .map(|s| {
                    let members = s.workload_uids.iter().map(|u| Arc::from(u.as_str())).collect();
                    (s.name.clone(), Subset { members, backend: s.backend.clone() })
                })
                .collect(),
            rate_limits: c.rate_limits.iter().map(ratelimit::Limit::compile).collect::<Result<_, _>>()?,
            routed_only: false,
        })
    }

    pub fn protocol(&self, port: u16) -> pb::Protocol {
        self.ports.iter().find(|(p, _)| *p == port).map_or(pb::Protocol::Unspecified, |(_, proto)| *proto)
    }
}

/// A DestinationRule subset: the service's endpoints it holds (by workload uid) and its
/// traffic policy (the rule's with the subset's over it).
#[derive(Debug)]
pub struct Subset {
    pub members: std::collections::HashSet<Arc<str>>,
    pub backend: Option<pb::BackendPolicy>,
}

/// The policy for requests to service port `port`: its `portLevelSettings` entry, whole, when
/// it has one.
pub fn port_policy(policy: &pb::BackendPolicy, port: u16) -> &pb::BackendPolicy {
    policy.port_level.iter().find(|p| p.port == u32::from(port)).and_then(|p| p.policy.as_ref()).unwrap_or(policy)
}

#[cfg(test)]
mod tests;
