//! Waypoint (L7) translation: for each service bound to a waypoint, one
//! `ambit.waypoint.ServiceConfig` with its ports' protocols, its routes (HTTPRoute and
//! GRPCRoute with the service as parent, in Gateway API precedence, else its VirtualServices),
//! its backend policy (DestinationRule), its JWT rules (RequestAuthentication) and the
//! authorization policies targeting the service or its waypoint.
//!
//! Each kind's validation (a rejected object names the field) sits beside its translation, in
//! `routes`, `virtual_service`, `destination_rule`, `jwt` and `policy`; `manifest` calls the
//! validators for both sources. This module only assembles a service's configuration.

use ambit_shared::proto::waypoint as pb;

use ambit_shared::api::INGRESS_CLASSES;

use crate::model::{Gateway, Kind, Object, PolicyTargetReference, Service, ServiceEntry, WAYPOINT_CLASSES};
use crate::store::Store;
use crate::translate::MeshSettings;

mod destination_rule;
mod fields;
mod jwt;
mod policy;
mod rate_limit;
mod routes;
mod virtual_service;

pub use destination_rule::validate_destination_rule;
pub use fields::parse_duration;
pub use jwt::validate_request_authentication;
pub use policy::policy;
pub use rate_limit::validate_rate_limit_policy;
pub(crate) use routes::{grpc_route_rules, http_route_rules, in_precedence_order, Candidate};
pub use routes::{validate_grpc_route, validate_http_route};
pub use virtual_service::validate_virtual_service;

use destination_rule::backend_policy;
use jwt::jwt_rules;
use virtual_service::virtual_service_routes;

/// The port's protocol: `appProtocol`, else Istio's port-name convention, else sniffed.
fn port_protocol(app_protocol: Option<&str>, name: Option<&str>) -> pb::Protocol {
    let of = |p: &str| match p.to_ascii_lowercase().as_str() {
        "http" => Some(pb::Protocol::Http),
        "http2" | "kubernetes.io/h2c" | "h2c" => Some(pb::Protocol::Http2),
        "grpc" | "grpc-web" => Some(pb::Protocol::Grpc),
        "tcp" | "mongo" | "mysql" | "redis" | "tls" | "https" | "kubernetes.io/ws" | "kubernetes.io/wss" => {
            Some(pb::Protocol::Tcp)
        }
        _ => None,
    };
    app_protocol
        .and_then(of)
        .or_else(|| name.and_then(|n| of(n.split('-').next().unwrap_or(n))))
        .unwrap_or(pb::Protocol::Unspecified)
}

fn targets(refs: &[&PolicyTargetReference], kind: &str, group: &[&str], name: &str) -> bool {
    refs.iter().any(|r| r.kind == kind && group.contains(&r.group.as_str()) && r.name == name)
}

/// The L7 configuration of `svc`, served by waypoint `gw`.
pub fn service_config(svc: &Service, gw: &Gateway, store: &Store, mesh: &MeshSettings) -> pb::ServiceConfig {
    let ns = svc.metadata.namespace.as_deref().unwrap_or_default();
    let gw_ns = gw.metadata.namespace.as_deref().unwrap_or_default();
    let routes = routes::routes(svc, store, mesh);
    let attached = attached_policies(ns, Target::Service(&svc.metadata.name), gw, store, mesh);
    let (backend, subsets) = backend_policy(svc, gw_ns, store, mesh);
    pb::ServiceConfig {
        namespace: ns.to_owned(),
        hostname: mesh.hostname(&svc.metadata.name, ns),
        waypoint: format!("{gw_ns}/{}", gw.metadata.name),
        ports: svc
            .spec
            .ports
            .iter()
            .map(|p| pb::Port {
                port: u32::from(p.port),
                protocol: port_protocol(p.app_protocol.as_deref(), p.name.as_deref()) as i32,
                name: p.name.clone().unwrap_or_default(),
            })
            .collect(),
        // Gateway API routes when any names the service, else its VirtualServices.
        routes: if routes.is_empty() { virtual_service_routes(svc, store, mesh) } else { routes },
        policies: attached.policies,
        backend,
        jwt_rules: attached.jwt_rules,
        subsets,
        rate_limits: attached.rate_limits,
    }
}

/// What a waypoint's configuration is for: a Service or a ServiceEntry, by name.
#[derive(Clone, Copy)]
enum Target<'a> {
    Service(&'a str),
    ServiceEntry(&'a str),
    /// An ingress gateway's (or a waypoint's, for the workloads it serves) own configuration:
    /// only policies targeting its Gateway (or, from the root namespace, its GatewayClass).
    Gateway,
}

/// The configuration of a waypoint for traffic addressed to the workloads it serves
/// (`istio.io/waypoint-for: workload|all`), published under the waypoint's own Service: the
/// policies targeting its Gateway (or class), no routes — such requests go to the workload
/// they were addressed to.
pub fn waypoint_self_config(own: &Service, gw: &Gateway, store: &Store, mesh: &MeshSettings) -> pb::ServiceConfig {
    let ns = gw.metadata.namespace.as_deref().unwrap_or_default();
    let attached = attached_policies(ns, Target::Gateway, gw, store, mesh);
    pb::ServiceConfig {
        namespace: ns.to_owned(),
        hostname: mesh.hostname(&own.metadata.name, ns),
        waypoint: format!("{ns}/{}", gw.metadata.name),
        policies: attached.policies,
        jwt_rules: attached.jwt_rules,
        rate_limits: attached.rate_limits,
        ..Default::default()
    }
}

/// The policies, JWT rules and rate limits that apply at ingress gateway `gw` (targeting the
/// Gateway, or its class from the root namespace).
pub fn gateway_policies(gw: &Gateway, store: &Store, mesh: &MeshSettings) -> Attached {
    let ns = gw.metadata.namespace.as_deref().unwrap_or_default();
    attached_policies(ns, Target::Gateway, gw, store, mesh)
}

/// What applies at a waypoint or gateway for one destination, beside its routes.
#[derive(Debug, Default)]
pub struct Attached {
    pub policies: Vec<pb::Policy>,
    pub jwt_rules: Vec<pb::JwtRule>,
    pub rate_limits: Vec<pb::RateLimit>,
}

/// The AuthorizationPolicies, RequestAuthentications and RateLimitPolicies that apply at `gw`
/// to a destination of namespace `ns`: those targeting it (a Service, or a ServiceEntry, in
/// its namespace), the waypoint's Gateway (in the Gateway's namespace), or — from the root
/// namespace — the waypoint's GatewayClass (every waypoint of the class, as in Istio).
fn attached_policies(ns: &str, target: Target<'_>, gw: &Gateway, store: &Store, mesh: &MeshSettings) -> Attached {
    let gw_ns = gw.metadata.namespace.as_deref().unwrap_or_default();
    let root = mesh.root_namespace.as_str();
    let class = gw.spec.gateway_class_name.as_str();
    let attached = |namespace: &str, refs: &[PolicyTargetReference], one: &Option<PolicyTargetReference>| {
        let refs: Vec<&PolicyTargetReference> = refs.iter().chain(one.iter()).collect();
        let own = match target {
            Target::Service(name) => targets(&refs, "Service", &["", "core"], name),
            Target::ServiceEntry(name) => targets(&refs, "ServiceEntry", &["networking.istio.io"], name),
            Target::Gateway => false,
        };
        (namespace == ns && own)
            || (namespace == gw_ns && targets(&refs, "Gateway", &["gateway.networking.k8s.io"], &gw.metadata.name))
            || (namespace == root
                && refs.iter().any(|r| {
                    r.kind == "GatewayClass"
                        && r.group == "gateway.networking.k8s.io"
                        // Our classes and Istio's are aliases of each other.
                        && (r.name == class
                            || (WAYPOINT_CLASSES.contains(&r.name.as_str()) && WAYPOINT_CLASSES.contains(&class))
                            || (INGRESS_CLASSES.contains(&r.name.as_str()) && INGRESS_CLASSES.contains(&class)))
                }))
    };
    let mut policies = Vec::new();
    let mut jwt = Vec::new();
    let mut rate_limits = Vec::new();
    let mut seen_ra = Vec::new();
    let mut namespaces = vec![ns];
    for other in [gw_ns, root] {
        if !namespaces.contains(&other) {
            namespaces.push(other);
        }
    }
    for namespace in namespaces {
        for o in store.list(Kind::RequestAuthentication, Some(namespace)) {
            let Object::RequestAuthentication(ra) = o else { continue };
            let hit = attached(namespace, &ra.spec.target_refs, &ra.spec.target_ref);
            if hit && !seen_ra.contains(&(namespace, ra.metadata.name.as_str())) {
                seen_ra.push((namespace, ra.metadata.name.as_str()));
                jwt.extend(jwt_rules(ra));
            }
        }
        for p in store.authorization_policies(Some(namespace)) {
            let hit = attached(namespace, &p.spec.target_refs, &p.spec.target_ref);
            if hit && !policies.iter().any(|q: &pb::Policy| q.name == p.metadata.name && q.namespace == namespace) {
                policies.push(policy(p));
            }
        }
        for o in store.list(Kind::RateLimitPolicy, Some(namespace)) {
            let Object::RateLimitPolicy(p) = o else { continue };
            let prefix = format!("{namespace}/{}/", p.metadata.name);
            if attached(namespace, &p.spec.target_refs, &None)
                && !rate_limits.iter().any(|l: &pb::RateLimit| l.name.starts_with(&prefix))
            {
                rate_limits.extend(rate_limit::rate_limits(p));
            }
        }
    }
    Attached { policies, jwt_rules: jwt, rate_limits }
}

/// The waypoint's configuration for one host of a ServiceEntry bound to it (egress through a
/// waypoint): the entry's ports, the policies attached to it (targeting the entry, or the
/// waypoint's Gateway or GatewayClass), and no routes — requests go
/// to the entry's own endpoints (a DNS entry's host is resolved by the waypoint).
pub fn service_entry_config(
    se: &ServiceEntry,
    host: &str,
    gw: &Gateway,
    store: &Store,
    mesh: &MeshSettings,
) -> pb::ServiceConfig {
    let ns = se.metadata.namespace.as_deref().unwrap_or_default();
    let gw_ns = gw.metadata.namespace.as_deref().unwrap_or_default();
    let attached = attached_policies(ns, Target::ServiceEntry(&se.metadata.name), gw, store, mesh);
    pb::ServiceConfig {
        namespace: ns.to_owned(),
        hostname: host.to_owned(),
        waypoint: format!("{gw_ns}/{}", gw.metadata.name),
        ports: se
            .spec
            .ports
            .iter()
            .map(|p| pb::Port {
                port: u32::from(p.number),
                protocol: port_protocol(p.protocol.as_deref(), p.name.as_deref()) as i32,
                name: p.name.clone().unwrap_or_default(),
            })
            .collect(),
        routes: Vec::new(),
        policies: attached.policies,
        rate_limits: attached.rate_limits,
        backend: destination_rule::entry_backend_policy(
            [ns, gw_ns, &mesh.root_namespace],
            host,
            &se.spec.ports.iter().map(|p| p.number).collect::<Vec<_>>(),
            store,
        ),
        jwt_rules: attached.jwt_rules,
        subsets: Vec::new(),
    }
}

#[cfg(test)]
mod tests;
