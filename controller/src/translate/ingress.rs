//! Ingress gateways: a Gateway of class `ambit` (or Istio's `istio`) → one
//! `ambit.waypoint.GatewayConfig` for the gateway proxy, and the Gateway API status that goes
//! with it — per listener (Accepted, Programmed, ResolvedRefs, Conflicted, attachedRoutes) and
//! per route parent (Accepted, ResolvedRefs), each with Gateway API's reasons.
//!
//! What the proxy gets is only what passed: a listener that is refused, conflicts, or whose
//! certificate does not resolve is left out (the others are served); a route attaches only to
//! listeners whose sectionName/port, allowed kinds and namespaces, and hostnames admit it; a
//! backend that is missing or not granted (ReferenceGrant) keeps its weight but leads nowhere,
//! so its share of requests fails instead of going elsewhere. Pure: model values in, config and
//! report out.

use std::collections::BTreeSet;

use ambit_shared::proto::waypoint as pb;

use crate::model::{
    BackendObjectReference, Gateway, HttpBackendRef, HttpRouteFilter, Kind, L4RouteSpec, Listener, Object, ObjectKey,
    ObjectMeta, ParentReference, SecretObjectReference,
};
use crate::rejection::Rejection;
use crate::store::Store;
use crate::translate::waypoint::{
    gateway_policies, grpc_route_rules, http_route_rules, in_precedence_order, Candidate,
};
use crate::translate::MeshSettings;

pub use ambit_shared::api::INGRESS_CLASSES;

const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";
/// Ports the gateway proxy itself uses (readiness, metrics, HBONE, …): never a listener's.
const RESERVED_PORTS: std::ops::RangeInclusive<u16> = 15000..=15099;

/// Kinds an ingress gateway's status reads: the Gateway, its Service and namespaces, the
/// routes that may attach, certificates and grants (routes' backends are Services).
pub fn status_reads(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::Gateway
            | Kind::Service
            | Kind::Namespace
            | Kind::HttpRoute
            | Kind::GrpcRoute
            | Kind::TlsRoute
            | Kind::TcpRoute
            | Kind::Secret
            | Kind::ReferenceGrant
    )
}

/// Kinds an ingress gateway's configuration reads: its status's, and the policies that may
/// target it.
pub fn config_reads(kind: Kind) -> bool {
    status_reads(kind)
        || matches!(kind, Kind::AuthorizationPolicy | Kind::RequestAuthentication | Kind::RateLimitPolicy)
}

/// Whether `gw` is an ingress gateway (not a waypoint).
pub fn is_ingress(gw: &Gateway) -> bool {
    INGRESS_CLASSES.contains(&gw.spec.gateway_class_name.as_str())
}

/// One status condition.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: &'static str,
    pub status: bool,
    pub reason: &'static str,
    pub message: String,
}

impl Condition {
    fn yes(type_: &'static str, reason: &'static str) -> Self {
        Condition { type_, status: true, reason, message: String::new() }
    }
    fn no(type_: &'static str, reason: &'static str, message: impl Into<String>) -> Self {
        Condition { type_, status: false, reason, message: message.into() }
    }
}

/// A listener's status.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ListenerReport {
    pub name: String,
    pub supported_kinds: Vec<&'static str>,
    pub attached_routes: u32,
    pub conditions: Vec<Condition>,
}

/// One route's status for one of its parentRefs naming this gateway.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RouteParentReport {
    pub route: ObjectKey,
    pub parent: ParentReference,
    pub conditions: Vec<Condition>,
}

/// An ingress gateway, translated.
#[derive(Debug, Clone, PartialEq)]
pub struct Ingress {
    pub config: pb::GatewayConfig,
    pub listeners: Vec<ListenerReport>,
    pub routes: Vec<RouteParentReport>,
}

impl Ingress {
    /// Whether any listener is served.
    pub fn programmed(&self) -> bool {
        !self.config.listeners.is_empty()
    }
}

/// Checks the shape of a Gateway's listeners (all classes): unique names, valid hostnames.
pub fn validate_gateway(label: &str, gw: &Gateway) -> Result<(), Rejection> {
    let mut names = BTreeSet::new();
    for (i, l) in gw.spec.listeners.iter().enumerate() {
        if l.name.is_empty() {
            return Err(Rejection::new(label, format!("spec.listeners[{i}].name"), "required"));
        }
        if !names.insert(l.name.as_str()) {
            return Err(Rejection::new(
                label,
                format!("spec.listeners[{i}].name"),
                format!("duplicate name {:?}", l.name),
            ));
        }
        if l.port == 0 {
            return Err(Rejection::new(label, format!("spec.listeners[{i}].port"), "must be 1-65535"));
        }
        if let Some(h) = &l.hostname {
            check_hostname(h).map_err(|why| Rejection::new(label, format!("spec.listeners[{i}].hostname"), why))?;
        }
    }
    Ok(())
}

/// Checks a TLSRoute (`tls`) or TCPRoute: parents, hostnames, Service backends.
pub fn validate_l4_route(label: &str, spec: &L4RouteSpec, tls: bool) -> Result<(), Rejection> {
    if spec.parent_refs.is_empty() {
        return Err(Rejection::new(label, "spec.parentRefs", "at least one parent is required"));
    }
    if !tls && !spec.hostnames.is_empty() {
        return Err(Rejection::new(label, "spec.hostnames", "a TCPRoute has no hostnames"));
    }
    for (i, h) in spec.hostnames.iter().enumerate() {
        check_hostname(h).map_err(|why| Rejection::new(label, format!("spec.hostnames[{i}]"), why))?;
    }
    if spec.rules.is_empty() {
        return Err(Rejection::new(label, "spec.rules", "at least one rule is required"));
    }
    for (i, rule) in spec.rules.iter().enumerate() {
        for (j, b) in rule.backend_refs.iter().enumerate() {
            let at = format!("spec.rules[{i}].backendRefs[{j}]");
            if !matches!(b.backend.group.as_deref(), None | Some("" | "core"))
                || !matches!(b.backend.kind.as_deref(), None | Some("Service"))
            {
                return Err(Rejection::new(label, format!("{at}.kind"), "only Service backends are supported"));
            }
            if b.backend.port.is_none() {
                return Err(Rejection::new(label, format!("{at}.port"), "required for a Service backend"));
            }
            if b.weight.is_some_and(|w| w > 1_000_000) {
                return Err(Rejection::new(label, format!("{at}.weight"), "must be 0-1000000"));
            }
        }
    }
    Ok(())
}

/// A Gateway API hostname: DNS labels, optionally `*.` in front; no IP address.
fn check_hostname(h: &str) -> Result<(), String> {
    let name = h.strip_prefix("*.").unwrap_or(h);
    if name.is_empty() || name.len() > 253 || name.parse::<std::net::IpAddr>().is_ok() {
        return Err(format!("{h:?} is not a hostname"));
    }
    let ok = name.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    });
    if ok {
        Ok(())
    } else {
        Err(format!("{h:?} is not a lowercase DNS name (a leading *. is the only wildcard)"))
    }
}

/// The route kinds a listener protocol takes.
fn kinds_for(protocol: &str) -> &'static [&'static str] {
    match protocol {
        "HTTP" | "HTTPS" => &["HTTPRoute", "GRPCRoute"],
        "TLS" => &["TLSRoute"],
        "TCP" => &["TCPRoute"],
        _ => &[],
    }
}

/// A route kind's name as Gateway API spells it (empty for other kinds).
pub fn route_kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::HttpRoute => "HTTPRoute",
        Kind::GrpcRoute => "GRPCRoute",
        Kind::TlsRoute => "TLSRoute",
        Kind::TcpRoute => "TCPRoute",
        _ => "",
    }
}

/// Whether a ReferenceGrant in `to_ns` lets a `from_kind` in `from_ns` refer to the `to_kind`
/// (core group) named `to_name`.
fn granted(store: &Store, from_kind: &str, from_ns: &str, to_kind: &str, to_ns: &str, to_name: &str) -> bool {
    if from_ns == to_ns {
        return true;
    }
    store.list(Kind::ReferenceGrant, Some(to_ns)).any(|o| {
        let Object::ReferenceGrant(g) = o else { return false };
        g.spec.from.iter().any(|f| f.group == GATEWAY_GROUP && f.kind == from_kind && f.namespace == from_ns)
            && g.spec.to.iter().any(|t| {
                matches!(t.group.as_str(), "" | "core")
                    && t.kind == to_kind
                    && t.name.as_deref().is_none_or(|n| n == to_name)
            })
    })
}

/// A listener being evaluated.
struct Evaluated<'a> {
    spec: &'a Listener,
    report: ListenerReport,
    /// Accepted, refs resolved, no conflict: served.
    usable: bool,
    config: pb::GatewayListener,
    candidates: Vec<Candidate>,
    /// The routes attached so far.
    attached: Vec<ObjectKey>,
    /// Not served but accepted with a hostname, no conflict: sent as a claim on it.
    claims: bool,
}

/// Translates ingress gateway `gw`: its proxy's configuration and its status.
pub fn translate(gw: &Gateway, store: &Store, mesh: &MeshSettings) -> Ingress {
    let gw_ns = gw.metadata.namespace.as_deref().unwrap_or_default();
    let mut listeners: Vec<Evaluated> =
        gw.spec.listeners.iter().enumerate().map(|(i, l)| evaluate_listener(gw_ns, i, l, store)).collect();
    mark_conflicts(&mut listeners);
    for l in &mut listeners {
        let accepted = l.report.conditions.iter().any(|c| c.type_ == "Accepted" && c.status);
        let conflicted = l.report.conditions.iter().any(|c| c.type_ == "Conflicted" && c.status);
        l.claims = !l.usable && accepted && !conflicted && l.spec.hostname.is_some();
    }
    let routes = attach_routes(gw, &mut listeners, store, mesh);
    let attached = gateway_policies(gw, store, mesh);
    let mut config = pb::GatewayConfig {
        namespace: gw_ns.to_owned(),
        name: gw.metadata.name.clone(),
        listeners: Vec::new(),
        policies: attached.policies,
        jwt_rules: attached.jwt_rules,
        rate_limits: attached.rate_limits,
    };
    let mut reports = Vec::new();
    for mut l in listeners {
        let programmed = if l.usable {
            Condition::yes("Programmed", "Programmed")
        } else {
            Condition::no("Programmed", "Invalid", "the listener is not served")
        };
        l.report.conditions.push(programmed);
        if l.usable {
            l.config.routes = in_precedence_order(std::mem::take(&mut l.candidates));
            config.listeners.push(l.config);
        } else if l.claims {
            // Not served, but its hostname stays claimed: its hosts get nothing rather than
            // a less specific listener's certificate and routes.
            l.config.refused = true;
            l.config.certificates.clear();
            l.config.routes.clear();
            config.listeners.push(l.config);
        }
        reports.push(l.report);
    }
    Ingress { config, listeners: reports, routes }
}

fn evaluate_listener<'a>(gw_ns: &str, i: usize, l: &'a Listener, store: &Store) -> Evaluated<'a> {
    let at = format!("spec.listeners[{i}]");
    let supported = kinds_for(&l.protocol);
    let mut accepted = Condition::yes("Accepted", "Accepted");
    let mut resolved = Condition::yes("ResolvedRefs", "ResolvedRefs");
    let mut kinds: Vec<&'static str> = supported.to_vec();
    let protocol = match l.protocol.as_str() {
        "HTTP" => Some(pb::ListenerProtocol::ListenerHttp),
        "HTTPS" => Some(pb::ListenerProtocol::ListenerHttps),
        "TLS" => Some(pb::ListenerProtocol::ListenerTlsPassthrough),
        "TCP" => Some(pb::ListenerProtocol::ListenerTcp),
        _ => None,
    };
    let tls_mode = l.tls.as_ref().and_then(|t| t.mode.as_deref()).unwrap_or("Terminate");
    if protocol.is_none() {
        accepted = Condition::no(
            "Accepted",
            "UnsupportedProtocol",
            format!("{at}.protocol {:?}: HTTP, HTTPS, TLS and TCP are supported", l.protocol),
        );
    } else if RESERVED_PORTS.contains(&l.port) {
        accepted = Condition::no(
            "Accepted",
            "PortUnavailable",
            format!("{at}.port {} is reserved for the gateway proxy (15000-15099)", l.port),
        );
    } else if l.protocol == "HTTPS" && tls_mode != "Terminate" {
        accepted = Condition::no("Accepted", "UnsupportedValue", format!("{at}.tls.mode: HTTPS terminates TLS"));
    } else if l.protocol == "TLS" && tls_mode != "Passthrough" {
        accepted = Condition::no(
            "Accepted",
            "UnsupportedValue",
            format!(
                "{at}.tls.mode {tls_mode:?}: TLS listeners pass TLS through (Passthrough); terminate it with HTTPS"
            ),
        );
    } else if l.tls.as_ref().is_some_and(|t| !t.options.is_empty()) {
        accepted = Condition::no("Accepted", "UnsupportedValue", format!("{at}.tls.options: not supported"));
    } else if l.protocol == "HTTPS" && l.tls.is_none() {
        resolved =
            Condition::no("ResolvedRefs", "InvalidCertificateRef", format!("{at}.tls: HTTPS needs certificateRefs"));
    } else if l.allowed_routes.as_ref().and_then(|a| a.namespaces.as_ref()).is_some_and(|n| {
        n.selector.as_ref().is_some_and(|s| !s.match_expressions.is_empty())
            || !matches!(n.from.as_deref(), None | Some("Same" | "All" | "Selector"))
    }) {
        accepted = Condition::no(
            "Accepted",
            "UnsupportedValue",
            format!("{at}.allowedRoutes.namespaces: from Same, All or Selector with matchLabels only"),
        );
    }
    if let Some(allowed) = l.allowed_routes.as_ref().filter(|a| !a.kinds.is_empty() && resolved.status) {
        let wanted: Vec<&str> = allowed
            .kinds
            .iter()
            .filter(|k| k.group.as_deref().unwrap_or(GATEWAY_GROUP) == GATEWAY_GROUP)
            .map(|k| k.kind.as_str())
            .collect();
        kinds.retain(|k| wanted.contains(k));
        if allowed.kinds.iter().any(|k| {
            k.group.as_deref().unwrap_or(GATEWAY_GROUP) != GATEWAY_GROUP || !supported.contains(&k.kind.as_str())
        }) {
            resolved = Condition::no(
                "ResolvedRefs",
                "InvalidRouteKinds",
                format!("{at}.allowedRoutes.kinds: this listener takes {}", supported.join(", ")),
            );
        }
    }
    // Invalid kinds alone leave the listener serving the valid ones.
    let kinds_only = resolved.reason == "InvalidRouteKinds" && !kinds.is_empty();
    let mut certificates = Vec::new();
    if accepted.status && (resolved.status || kinds_only) && l.protocol == "HTTPS" {
        match listener_certificates(gw_ns, &at, l, store) {
            Ok(found) => certificates = found,
            Err(c) => resolved = c,
        }
    }
    let kinds_only = resolved.reason == "InvalidRouteKinds" && !kinds.is_empty();
    let usable = accepted.status && (resolved.status || kinds_only);
    Evaluated {
        spec: l,
        report: ListenerReport {
            name: l.name.clone(),
            supported_kinds: kinds,
            attached_routes: 0,
            conditions: vec![accepted, resolved],
        },
        usable,
        config: pb::GatewayListener {
            name: l.name.clone(),
            port: u32::from(l.port),
            protocol: protocol.unwrap_or(pb::ListenerProtocol::ListenerHttp) as i32,
            hostname: l.hostname.clone().unwrap_or_default(),
            certificates,
            routes: Vec::new(),
            refused: false,
        },
        candidates: Vec::new(),
        attached: Vec::new(),
        claims: false,
    }
}

/// The listener's certificates, each from its Secret (granted when in another namespace) and
/// checked as the proxy will serve it.
fn listener_certificates(
    gw_ns: &str,
    at: &str,
    l: &Listener,
    store: &Store,
) -> Result<Vec<pb::ServerCertificate>, Condition> {
    let refs: &[SecretObjectReference] = l.tls.as_ref().map_or(&[], |t| &t.certificate_refs);
    let bad = |reason: &'static str, m: String| Condition::no("ResolvedRefs", reason, m);
    if refs.is_empty() {
        return Err(bad("InvalidCertificateRef", format!("{at}.tls.certificateRefs: HTTPS needs a certificate")));
    }
    let mut out = Vec::new();
    for (j, r) in refs.iter().enumerate() {
        let field = format!("{at}.tls.certificateRefs[{j}]");
        if !matches!(r.group.as_deref(), None | Some("" | "core"))
            || !matches!(r.kind.as_deref(), None | Some("Secret"))
        {
            return Err(bad("InvalidCertificateRef", format!("{field}: only Secrets (core group) are supported")));
        }
        let ns = r.namespace.as_deref().unwrap_or(gw_ns);
        if !granted(store, "Gateway", gw_ns, "Secret", ns, &r.name) {
            return Err(bad(
                "RefNotPermitted",
                format!(
                    "{field}: Secret {ns}/{} is in another namespace and no ReferenceGrant there allows it",
                    r.name
                ),
            ));
        }
        let key = ObjectKey { kind: Kind::Secret, namespace: ns.into(), name: r.name.as_str().into() };
        let Some(Object::Secret(secret)) = store.get(&key) else {
            return Err(bad(
                "InvalidCertificateRef",
                format!("{field}: Secret {ns}/{} not found (or not of type kubernetes.io/tls)", r.name),
            ));
        };
        let (Some(chain), Some(private_key)) = (secret.value("tls.crt"), secret.value("tls.key")) else {
            return Err(bad(
                "InvalidCertificateRef",
                format!("{field}: Secret {ns}/{} lacks tls.crt or tls.key", r.name),
            ));
        };
        if let Err(e) = ambit_shared::tls::listener_key(&chain, &private_key) {
            return Err(bad("InvalidCertificateRef", format!("{field}: Secret {ns}/{}: {e}", r.name)));
        }
        out.push(pb::ServerCertificate {
            cert_chain: String::from_utf8_lossy(&chain).into_owned(),
            private_key: String::from_utf8_lossy(&private_key).into_owned(),
            source: format!("{ns}/{}", r.name),
        });
    }
    Ok(out)
}

/// Listeners on one port must agree on the protocol (and two may not claim the same
/// hostname); the later one of a clash conflicts and is not served.
fn mark_conflicts(listeners: &mut [Evaluated]) {
    for i in 0..listeners.len() {
        let clash = (0..i).find_map(|j| {
            let (a, b) = (listeners[j].spec, listeners[i].spec);
            if !listeners[j].usable || a.port != b.port {
                return None;
            }
            if a.protocol != b.protocol || a.protocol == "TCP" {
                Some(("ProtocolConflict", format!("port {} is also listener {}'s ({})", b.port, a.name, a.protocol)))
            } else if a.hostname == b.hostname {
                Some(("HostnameConflict", format!("listener {} has the same port and hostname", a.name)))
            } else {
                None
            }
        });
        let l = &mut listeners[i];
        match clash {
            Some((reason, message)) if l.usable => {
                l.usable = false;
                l.report.conditions.push(Condition { type_: "Conflicted", status: true, reason, message });
            }
            _ => l.report.conditions.push(Condition::no("Conflicted", "NoConflicts", "")),
        }
    }
}

/// The intersection of a listener's hostname and a route's: what the route serves there.
/// `None`: they do not intersect. An empty list: any host.
fn intersect(listener: Option<&str>, route: &[String]) -> Option<Vec<String>> {
    let Some(l) = listener else { return Some(route.to_vec()) };
    if route.is_empty() {
        return Some(vec![l.to_owned()]);
    }
    let covers = |pattern: &str, name: &str| match pattern.strip_prefix('*') {
        Some(suffix) => name.len() > suffix.len() && name.ends_with(suffix),
        None => pattern == name,
    };
    let out: Vec<String> = route
        .iter()
        .filter_map(|r| {
            if covers(l, r) || l == r {
                Some(r.clone())
            } else if covers(r, l) {
                Some(l.to_owned())
            } else {
                None
            }
        })
        .collect();
    (!out.is_empty()).then_some(out)
}

/// Whether parentRef `p` (of a route in `route_ns`) names Gateway `gw`.
fn names_gateway(p: &ParentReference, route_ns: &str, gw: &Gateway) -> bool {
    p.group.as_deref().unwrap_or(GATEWAY_GROUP) == GATEWAY_GROUP
        && p.kind.as_deref().unwrap_or("Gateway") == "Gateway"
        && p.name == gw.metadata.name
        && p.namespace.as_deref().unwrap_or(route_ns) == gw.metadata.namespace.as_deref().unwrap_or_default()
}

/// A route of any kind, as attachment sees it.
struct RouteView<'a> {
    kind: Kind,
    meta: &'a ObjectMeta,
    parents: &'a [ParentReference],
    hostnames: &'a [String],
    /// Every backend reference, for ResolvedRefs.
    backends: Vec<&'a BackendObjectReference>,
}

fn route_views(store: &Store) -> Vec<(RouteView<'_>, &Object)> {
    let mut out = Vec::new();
    for kind in [Kind::HttpRoute, Kind::GrpcRoute, Kind::TlsRoute, Kind::TcpRoute] {
        for o in store.list(kind, None) {
            let view = match o {
                Object::HttpRoute(r) => RouteView {
                    kind,
                    meta: &r.metadata,
                    parents: &r.spec.parent_refs,
                    hostnames: &r.spec.hostnames,
                    backends: r.spec.rules.iter().flat_map(|x| http_refs(&x.backend_refs, &x.filters)).collect(),
                },
                Object::GrpcRoute(r) => RouteView {
                    kind,
                    meta: &r.metadata,
                    parents: &r.spec.parent_refs,
                    hostnames: &r.spec.hostnames,
                    backends: r.spec.rules.iter().flat_map(|x| http_refs(&x.backend_refs, &x.filters)).collect(),
                },
                Object::TlsRoute(r) => l4_view(kind, &r.metadata, &r.spec),
                Object::TcpRoute(r) => l4_view(kind, &r.metadata, &r.spec),
                _ => continue,
            };
            out.push((view, o));
        }
    }
    out
}

/// Every Service an HTTP rule sends to: its backends and the targets of its mirrors (rule-level
/// and per backend) — a mirror carries the whole request, so it is checked like a backend.
fn http_refs<'a>(backends: &'a [HttpBackendRef], filters: &'a [HttpRouteFilter]) -> Vec<&'a BackendObjectReference> {
    let mirrors =
        |fs: &'a [HttpRouteFilter]| fs.iter().filter_map(|f| f.request_mirror.as_ref().map(|m| &m.backend_ref));
    backends
        .iter()
        .map(|b| &b.backend)
        .chain(mirrors(filters))
        .chain(backends.iter().flat_map(|b| mirrors(&b.filters)))
        .collect()
}

fn l4_view<'a>(kind: Kind, meta: &'a ObjectMeta, spec: &'a L4RouteSpec) -> RouteView<'a> {
    RouteView {
        kind,
        meta,
        parents: &spec.parent_refs,
        hostnames: &spec.hostnames,
        backends: spec.rules.iter().flat_map(|x| x.backend_refs.iter().map(|b| &b.backend)).collect(),
    }
}

/// Why a backend reference does not resolve, if it does not: Gateway API's reason and a
/// message naming it.
fn unresolved(store: &Store, route: &RouteView<'_>, b: &BackendObjectReference) -> Option<(&'static str, String)> {
    let route_ns = route.meta.namespace.as_deref().unwrap_or_default();
    let ns = b.namespace.as_deref().unwrap_or(route_ns);
    if !matches!(b.group.as_deref(), None | Some("" | "core")) || !matches!(b.kind.as_deref(), None | Some("Service")) {
        return Some(("InvalidKind", format!("backend {ns}/{}: only Services are supported", b.name)));
    }
    if !granted(store, route_kind_name(route.kind), route_ns, "Service", ns, &b.name) {
        return Some((
            "RefNotPermitted",
            format!("backend Service {ns}/{} is in another namespace and no ReferenceGrant there allows it", b.name),
        ));
    }
    let key = ObjectKey { kind: Kind::Service, namespace: ns.into(), name: b.name.as_str().into() };
    match store.get(&key) {
        None => Some(("BackendNotFound", format!("backend Service {ns}/{} not found", b.name))),
        Some(Object::Service(svc)) => match b.port {
            None => Some(("BackendNotFound", format!("backend Service {ns}/{}: port is required", b.name))),
            Some(port) if !svc.spec.ports.iter().any(|p| p.port == port) => {
                Some(("BackendNotFound", format!("backend Service {ns}/{} has no port {port}", b.name)))
            }
            Some(_) => None,
        },
        Some(_) => None,
    }
}

/// A backend that leads nowhere: a refused reference keeps its share of the weight, and that
/// share fails (Gateway API: 500 for HTTP, the connection refused for TCP).
fn nowhere(weight: u32) -> pb::Backend {
    pb::Backend { namespace: String::new(), hostname: String::new(), port: 1, weight, ..Default::default() }
}

/// Replaces the backends of `routes` that do not resolve (as `unresolved` says) with
/// [`nowhere`], and drops mirrors to them.
fn fence_backends(routes: &mut [pb::Route], refused: &BTreeSet<(String, String, u32)>) {
    let is_refused = |b: &pb::Backend| refused.contains(&(b.namespace.clone(), b.hostname.clone(), b.port));
    let refused_mirror = |f: &pb::Filter| matches!(&f.kind, Some(pb::filter::Kind::Mirror(m)) if m.backend.as_ref().is_none_or(is_refused));
    for r in routes {
        r.filters.retain(|f| !refused_mirror(f));
        for b in &mut r.backends {
            if is_refused(b) {
                *b = nowhere(b.weight);
            }
            b.filters.retain(|f| !refused_mirror(f));
        }
    }
}

/// Attaches every route naming `gw` to the listeners that admit it; returns each route
/// parent's status.
fn attach_routes(
    gw: &Gateway,
    listeners: &mut [Evaluated],
    store: &Store,
    mesh: &MeshSettings,
) -> Vec<RouteParentReport> {
    let gw_ns = gw.metadata.namespace.as_deref().unwrap_or_default();
    let mut reports = Vec::new();
    for (route, object) in route_views(store) {
        let route_ns = route.meta.namespace.as_deref().unwrap_or_default();
        let kind_name = route_kind_name(route.kind);
        // ResolvedRefs is the route's, the same for each parent.
        let mut refused = BTreeSet::new();
        let mut resolved = Condition::yes("ResolvedRefs", "ResolvedRefs");
        for b in &route.backends {
            if let Some((reason, message)) = unresolved(store, &route, b) {
                let ns = b.namespace.as_deref().unwrap_or(route_ns);
                refused.insert((ns.to_owned(), mesh.hostname(&b.name, ns), u32::from(b.port.unwrap_or(0))));
                if resolved.status {
                    resolved = Condition::no("ResolvedRefs", reason, message);
                }
            }
        }
        for parent in route.parents.iter().filter(|p| names_gateway(p, route_ns, gw)) {
            let mut by_section = false;
            let mut by_kind_and_namespace = false;
            let mut attached = 0;
            for l in listeners.iter_mut() {
                if parent.section_name.as_deref().is_some_and(|s| s != l.spec.name)
                    || parent.port.is_some_and(|p| p != l.spec.port)
                {
                    continue;
                }
                by_section = true;
                if !l.usable
                    || !l.report.supported_kinds.contains(&kind_name)
                    || !namespace_allowed(l.spec, gw_ns, route_ns, store)
                {
                    continue;
                }
                by_kind_and_namespace = true;
                let hosted = if matches!(route.kind, Kind::TcpRoute) {
                    Some(Vec::new())
                } else {
                    intersect(l.spec.hostname.as_deref(), route.hostnames)
                };
                let Some(hostnames) = hosted else { continue };
                attached += 1;
                // Two parentRefs reaching one listener attach the route to it once.
                let key = object.key();
                if l.attached.contains(&key) {
                    continue;
                }
                l.attached.push(key);
                l.report.attached_routes += 1;
                let mut candidates = Vec::new();
                match object {
                    Object::HttpRoute(r) => http_route_rules(r, None, mesh, &mut candidates),
                    Object::GrpcRoute(r) => grpc_route_rules(r, None, mesh, &mut candidates),
                    Object::TlsRoute(r) => l4_candidates(r.metadata.clone(), &r.spec, kind_name, mesh, &mut candidates),
                    Object::TcpRoute(r) => l4_candidates(r.metadata.clone(), &r.spec, kind_name, mesh, &mut candidates),
                    _ => {}
                }
                for mut c in candidates {
                    fence_backends(std::slice::from_mut(&mut c.route), &refused);
                    // One route per hostname, each ordered by its own: a route cannot rank
                    // its wildcard above another route's exact name by listing a long name
                    // beside it.
                    if hostnames.is_empty() {
                        l.candidates.push(c);
                        continue;
                    }
                    for h in &hostnames {
                        let mut one = c.clone();
                        one.route.hostnames = vec![h.clone()];
                        l.candidates.push(one);
                    }
                }
            }
            let accepted = if attached > 0 {
                Condition::yes("Accepted", "Accepted")
            } else if !by_section {
                Condition::no(
                    "Accepted",
                    "NoMatchingParent",
                    "no listener matches the parentRef's sectionName and port",
                )
            } else if !by_kind_and_namespace {
                Condition::no(
                    "Accepted",
                    "NotAllowedByListeners",
                    format!("no served listener allows a {kind_name} from namespace {route_ns}"),
                )
            } else {
                Condition::no(
                    "Accepted",
                    "NoMatchingListenerHostname",
                    "the route's hostnames intersect no listener's hostname",
                )
            };
            reports.push(RouteParentReport {
                route: object.key(),
                parent: parent.clone(),
                conditions: vec![accepted, resolved.clone()],
            });
        }
    }
    reports
}

/// Whether listener `l` of a Gateway in `gw_ns` takes routes from `route_ns`.
fn namespace_allowed(l: &Listener, gw_ns: &str, route_ns: &str, store: &Store) -> bool {
    let namespaces = l.allowed_routes.as_ref().and_then(|a| a.namespaces.as_ref());
    match namespaces.and_then(|n| n.from.as_deref()).unwrap_or("Same") {
        "All" => true,
        "Selector" => {
            let wanted = namespaces.and_then(|n| n.selector.as_ref()).map(|s| &s.match_labels);
            let labels = store.namespace(route_ns).map(|n| &n.metadata.labels);
            match (wanted, labels) {
                (Some(wanted), Some(labels)) => wanted.iter().all(|(k, v)| labels.get(k) == Some(v)),
                _ => false,
            }
        }
        _ => route_ns == gw_ns,
    }
}

/// A TLSRoute's or TCPRoute's rules as candidates: one route per rule, its backends by weight.
fn l4_candidates(meta: ObjectMeta, spec: &L4RouteSpec, kind: &str, mesh: &MeshSettings, out: &mut Vec<Candidate>) {
    let ns = meta.namespace.as_deref().unwrap_or_default();
    for (i, rule) in spec.rules.iter().enumerate() {
        let backends = rule
            .backend_refs
            .iter()
            .map(|b| {
                let bns = b.backend.namespace.as_deref().unwrap_or(ns);
                pb::Backend {
                    namespace: bns.to_owned(),
                    hostname: mesh.hostname(&b.backend.name, bns),
                    port: u32::from(b.backend.port.unwrap_or(0)),
                    weight: b.weight.unwrap_or(1),
                    filters: Vec::new(),
                    subset: String::new(),
                }
            })
            .collect();
        out.push(Candidate::new(
            &meta,
            pb::Route {
                name: format!("{kind}/{ns}/{}/{i}", meta.name),
                backends,
                rule_index: u32::try_from(i).unwrap_or(u32::MAX),
                ..Default::default()
            },
        ));
    }
}

#[cfg(test)]
mod tests;
