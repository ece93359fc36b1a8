//! Parsing and validation: a YAML or JSON document in, a model `Object` out — or a
//! `Rejection` naming the object, the field and the reason.
//!
//! Both sources call `parse_object`, so a manifest file and the Kubernetes API are held to the
//! same rules. Validation rejects what we could not enforce faithfully; it never guesses.

use std::collections::BTreeSet;
use std::net::IpAddr;

use serde::de::DeserializeOwned;

use crate::model::*;
use ambit_shared::Cidr;

use crate::rejection::{validate_labels, Rejection};

/// A parsed document: an object we read, or one we ignore by kind.
#[derive(Debug)]
pub enum Parsed {
    Object(Box<Object>),
    /// A valid Kubernetes object of a kind we do not read (Deployment, ConfigMap…).
    Ignored {
        api_version: String,
        kind: String,
    },
}

fn reject(object: impl Into<String>, field: impl Into<String>, reason: impl Into<String>) -> Rejection {
    Rejection::new(object, field, reason)
}

/// Splits a multi-document YAML text into JSON values. A syntax error rejects the rest of the
/// file from that document on (YAML cannot resynchronise), naming the document.
pub fn split_yaml(origin: &str, text: &str) -> (Vec<serde_json::Value>, Option<Rejection>) {
    use serde::Deserialize;
    let mut out = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        match serde_json::Value::deserialize(doc) {
            Ok(serde_json::Value::Null) => continue, // empty document (`---` at the end)
            Ok(v) => out.push(v),
            Err(e) => {
                return (
                    out,
                    Some(reject(format!("document {} of {origin}", i + 1), "", format!("invalid YAML: {e}"))),
                );
            }
        }
    }
    (out, None)
}

/// A refused document: why, and for a security object what the mesh enforces in its place
/// until it is fixed ([`substitute`]).
pub type Refused = (Rejection, Option<Box<Object>>);

/// Parses like [`parse_object`]; a refused AuthorizationPolicy, PeerAuthentication or
/// RequestAuthentication also yields its fail-closed substitute, and the rejection's reason says
/// what is enforced instead. Sources apply the substitute in the object's place.
pub fn parse_object_or_substitute(origin: &str, value: serde_json::Value) -> Result<Parsed, Refused> {
    let kind = value
        .get("apiVersion")
        .and_then(|v| v.as_str())
        .zip(value.get("kind").and_then(|v| v.as_str()))
        .and_then(|(api_version, kind)| Kind::from_type(api_version, kind));
    let original = kind.filter(|k| substitute::is_security_kind(*k)).map(|_| value.clone());
    parse_object(origin, value).map_err(|mut r| {
        let replacement = original.as_ref().and_then(|v| substitute::substitute(v, &r));
        let replacement = replacement.map(|(object, says)| {
            r.reason = format!("{}; until it is fixed, Ambit enforces {says} instead", r.reason);
            Box::new(object)
        });
        (r, replacement)
    })
}

/// The only Secret type the controller reads.
pub const TLS_SECRET_TYPE: &str = "kubernetes.io/tls";

/// Parses one document into a model object and validates it.
pub fn parse_object(origin: &str, value: serde_json::Value) -> Result<Parsed, Rejection> {
    let Some(obj) = value.as_object() else {
        return Err(reject(origin, "", "a manifest must be a mapping with apiVersion, kind and metadata"));
    };
    let api_version = obj.get("apiVersion").and_then(|v| v.as_str());
    let kind = obj.get("kind").and_then(|v| v.as_str());
    let (Some(api_version), Some(kind)) = (api_version, kind) else {
        let missing = if api_version.is_none() { "apiVersion" } else { "kind" };
        return Err(reject(origin, missing, "required field is missing or not a string"));
    };
    if kind == "List" {
        return Err(reject(origin, "kind", "List objects are not supported; write the items as separate documents"));
    }
    let name = obj.get("metadata").and_then(|m| m.get("name")).and_then(|n| n.as_str()).unwrap_or("");
    let ns = obj.get("metadata").and_then(|m| m.get("namespace")).and_then(|n| n.as_str());
    let Some(k) = Kind::from_type(api_version, kind) else {
        return match known_but_unread(api_version, kind) {
            Some(true) => Ok(Parsed::Ignored { api_version: api_version.to_owned(), kind: kind.to_owned() }),
            Some(false) => Err(reject(
                format!("{kind} {}", ns.map(|n| format!("{n}/{name}")).unwrap_or(name.to_owned())),
                "kind",
                format!("unknown kind {kind:?} in {api_version}"),
            )),
            // Another project's API group: not ours to judge.
            None => Ok(Parsed::Ignored { api_version: api_version.to_owned(), kind: kind.to_owned() }),
        };
    };
    let label = match ns {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    };
    if name.is_empty() {
        return Err(reject(label, "metadata.name", "required field is missing or empty"));
    }
    let key = ObjectKey {
        kind: k,
        namespace: if k.is_namespaced() { ns.filter(|n| !n.is_empty()).unwrap_or("default") } else { "" }.into(),
        name: name.into(),
    };
    let parent_refs = match k {
        Kind::HttpRoute | Kind::GrpcRoute | Kind::TlsRoute | Kind::TcpRoute => {
            value.get("spec").and_then(|s| s.get("parentRefs")).and_then(|p| p.as_array()).cloned().map(Box::new)
        }
        _ => None,
    };
    typed_object(k, &label, value).map_err(|mut r| {
        r.key = Some(Box::new(key));
        r.parent_refs = parent_refs;
        r
    })
}

fn typed_object(k: Kind, label: &str, value: serde_json::Value) -> Result<Parsed, Rejection> {
    let label = label.to_owned();
    // Istio kinds: a field Ambit does not read is refused, never dropped.
    if let Some(field) = value.get("spec").and_then(|spec| crate::crds::unread_field(&format!("{k:?}"), spec)) {
        return Err(reject(
            &label,
            field,
            "not supported by Ambit (unknown or misspelt field); the object is refused rather than applied without it",
        ));
    }
    let mut object = match k {
        Kind::Namespace => Object::Namespace(typed(&label, value)?),
        Kind::Node => Object::Node(typed(&label, value)?),
        Kind::Pod => Object::Pod(typed(&label, value)?),
        Kind::Service => Object::Service(typed(&label, value)?),
        Kind::ServiceAccount => Object::ServiceAccount(typed(&label, value)?),
        Kind::AuthorizationPolicy => Object::AuthorizationPolicy(typed(&label, value)?),
        Kind::PeerAuthentication => Object::PeerAuthentication(typed(&label, value)?),
        Kind::ServiceEntry => Object::ServiceEntry(typed(&label, value)?),
        Kind::Gateway => Object::Gateway(typed(&label, value)?),
        Kind::HttpRoute => Object::HttpRoute(typed(&label, value)?),
        Kind::GrpcRoute => Object::GrpcRoute(typed(&label, value)?),
        Kind::DestinationRule => Object::DestinationRule(typed(&label, value)?),
        Kind::RequestAuthentication => Object::RequestAuthentication(typed(&label, value)?),
        Kind::VirtualService => Object::VirtualService(typed(&label, value)?),
        Kind::Sidecar => Object::Sidecar(typed(&label, value)?),
        Kind::Secret => {
            // Only TLS certificates are read (an ingress listener's); other Secrets are not
            // the mesh's to hold.
            if value.get("type").and_then(|t| t.as_str()) != Some(TLS_SECRET_TYPE) {
                return Ok(Parsed::Ignored { api_version: "v1".into(), kind: "Secret".into() });
            }
            Object::Secret(typed(&label, value)?)
        }
        Kind::ReferenceGrant => Object::ReferenceGrant(typed(&label, value)?),
        Kind::TlsRoute => Object::TlsRoute(typed(&label, value)?),
        Kind::TcpRoute => Object::TcpRoute(typed(&label, value)?),
        Kind::RateLimitPolicy => Object::RateLimitPolicy(typed(&label, value)?),
    };
    normalize_namespace(&mut object);
    validate(&label, &object)?;
    Ok(Parsed::Object(Box::new(object)))
}

/// For API groups we know: `Some(true)` for a real kind we do not read (Deployment, ConfigMap,
/// VirtualService…), `Some(false)` for a kind that does not exist there (a typo). `None` for
/// groups we do not know.
fn known_but_unread(api_version: &str, kind: &str) -> Option<bool> {
    let group = api_version.rsplit_once('/').map(|(g, _)| g).unwrap_or("");
    let kinds: &[&str] = match group {
        "" => &[
            "ConfigMap",
            "Endpoints",
            "Event",
            "LimitRange",
            "PersistentVolume",
            "PersistentVolumeClaim",
            "PodTemplate",
            "ReplicationController",
            "ResourceQuota",
            "Binding",
            "ComponentStatus",
        ],
        "apps" => &["Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "ControllerRevision"],
        "batch" => &["Job", "CronJob"],
        "security.istio.io" => &[],
        "networking.istio.io" => {
            &["VirtualService", "Gateway", "WorkloadEntry", "WorkloadGroup", "ProxyConfig", "EnvoyFilter"]
        }
        "gateway.networking.k8s.io" => &["GatewayClass", "UDPRoute", "BackendTLSPolicy", "ListenerSet", "XListenerSet"],
        "telemetry.istio.io" => &["Telemetry"],
        _ => return None,
    };
    Some(kinds.contains(&kind))
}

fn typed<T: DeserializeOwned>(label: &str, value: serde_json::Value) -> Result<T, Rejection> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let field = e.path().to_string();
        let field = if field == "." { String::new() } else { field };
        reject(label, field, e.into_inner().to_string())
    })
}

/// Namespaced objects without a namespace live in `default`, as `kubectl apply` puts them.
fn normalize_namespace(object: &mut Object) {
    if !object.kind().is_namespaced() {
        return;
    }
    let meta = match object {
        Object::Pod(o) => &mut o.metadata,
        Object::Service(o) => &mut o.metadata,
        Object::ServiceAccount(o) => &mut o.metadata,
        Object::AuthorizationPolicy(o) => &mut o.metadata,
        Object::PeerAuthentication(o) => &mut o.metadata,
        Object::ServiceEntry(o) => &mut o.metadata,
        Object::Gateway(o) => &mut o.metadata,
        Object::HttpRoute(o) => &mut o.metadata,
        Object::GrpcRoute(o) => &mut o.metadata,
        Object::DestinationRule(o) => &mut o.metadata,
        Object::RequestAuthentication(o) => &mut o.metadata,
        Object::VirtualService(o) => &mut o.metadata,
        Object::Sidecar(o) => &mut o.metadata,
        Object::Secret(o) => &mut o.metadata,
        Object::ReferenceGrant(o) => &mut o.metadata,
        Object::TlsRoute(o) => &mut o.metadata,
        Object::TcpRoute(o) => &mut o.metadata,
        Object::RateLimitPolicy(o) => &mut o.metadata,
        Object::Namespace(_) | Object::Node(_) => return,
    };
    if meta.namespace.as_deref().unwrap_or("").is_empty() {
        meta.namespace = Some("default".into());
    }
}

fn validate(label: &str, object: &Object) -> Result<(), Rejection> {
    let r = |field: String, reason: String| reject(label, field, reason);
    validate_labels(label, "metadata.labels", &object.meta().labels)?;
    match object {
        Object::Pod(p) => validate_pod(label, p)?,
        Object::Service(s) => validate_service(label, s)?,
        Object::AuthorizationPolicy(p) => crate::translate::authz::validate(label, p)?,
        Object::PeerAuthentication(p) => validate_peer_authentication(label, p)?,
        Object::ServiceEntry(se) => validate_service_entry(label, se)?,
        Object::Gateway(g) => {
            if g.spec.gateway_class_name.is_empty() {
                return Err(r("spec.gatewayClassName".into(), "required".into()));
            }
            crate::translate::ingress::validate_gateway(label, g)?;
        }
        Object::TlsRoute(route) => crate::translate::ingress::validate_l4_route(label, &route.spec, true)?,
        Object::TcpRoute(route) => crate::translate::ingress::validate_l4_route(label, &route.spec, false)?,
        Object::RateLimitPolicy(p) => crate::translate::waypoint::validate_rate_limit_policy(label, p)?,
        Object::HttpRoute(route) => crate::translate::waypoint::validate_http_route(label, route)?,
        Object::GrpcRoute(route) => crate::translate::waypoint::validate_grpc_route(label, route)?,
        Object::DestinationRule(dr) => crate::translate::waypoint::validate_destination_rule(label, dr)?,
        Object::RequestAuthentication(ra) => crate::translate::waypoint::validate_request_authentication(label, ra)?,
        Object::VirtualService(vs) => crate::translate::waypoint::validate_virtual_service(label, vs)?,
        Object::Sidecar(sc) => validate_sidecar(label, sc)?,
        Object::Namespace(_)
        | Object::Node(_)
        | Object::ServiceAccount(_)
        | Object::Secret(_)
        | Object::ReferenceGrant(_) => {}
    }
    Ok(())
}

fn validate_pod(label: &str, p: &Pod) -> Result<(), Rejection> {
    let r = |field: String, reason: String| reject(label, field, reason);
    for (i, ip) in p.status.pod_ips.iter().enumerate() {
        ip.ip
            .parse::<IpAddr>()
            .map_err(|_| r(format!("status.podIPs[{i}].ip"), format!("{:?} is not an IP address", ip.ip)))?;
    }
    if let Some(ip) = &p.status.pod_ip {
        ip.parse::<IpAddr>().map_err(|_| r("status.podIP".into(), format!("{ip:?} is not an IP address")))?;
    }
    Ok(())
}

fn validate_service(label: &str, s: &Service) -> Result<(), Rejection> {
    let r = |field: String, reason: String| reject(label, field, reason);
    let mut seen = BTreeSet::new();
    for (i, port) in s.spec.ports.iter().enumerate() {
        if port.port == 0 {
            return Err(r(format!("spec.ports[{i}].port"), "must be 1-65535".into()));
        }
        let proto = port.protocol.as_deref().unwrap_or("TCP");
        if !seen.insert((port.port, proto.to_owned())) {
            return Err(r(format!("spec.ports[{i}].port"), format!("duplicate port {} ({proto})", port.port)));
        }
        if let Some(IntOrString::Int(t)) = &port.target_port {
            if !(1..=65535).contains(t) {
                return Err(r(format!("spec.ports[{i}].targetPort"), format!("{t} is not a port (1-65535)")));
            }
        }
    }
    for (i, ip) in s.spec.cluster_ips.iter().enumerate() {
        if ip != "None" && ip.parse::<IpAddr>().is_err() {
            return Err(r(format!("spec.clusterIPs[{i}]"), format!("{ip:?} is not an IP address")));
        }
    }
    if let Some(ip) = &s.spec.cluster_ip {
        if ip != "None" && !ip.is_empty() && ip.parse::<IpAddr>().is_err() {
            return Err(r("spec.clusterIP".into(), format!("{ip:?} is not an IP address")));
        }
    }
    if let Some(sel) = &s.spec.selector {
        validate_labels(label, "spec.selector", sel)?;
    }
    Ok(())
}

fn validate_peer_authentication(label: &str, p: &PeerAuthentication) -> Result<(), Rejection> {
    let r = |field: String, reason: String| reject(label, field, reason);
    if let Some(sel) = &p.spec.selector {
        validate_labels(label, "spec.selector.matchLabels", &sel.match_labels)?;
    }
    let check_mode = |field: String, m: &MutualTls| match m.mode.as_deref() {
        None | Some("UNSET" | "DISABLE" | "PERMISSIVE" | "STRICT") => Ok(()),
        Some(other) => Err(r(field, format!("unknown mode {other:?} (UNSET, DISABLE, PERMISSIVE, STRICT)"))),
    };
    if let Some(m) = &p.spec.mtls {
        check_mode("spec.mtls.mode".into(), m)?;
    }
    for (port, m) in &p.spec.port_level_mtls {
        if port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(r(format!("spec.portLevelMtls.{port}"), format!("{port:?} is not a port number")));
        }
        check_mode(format!("spec.portLevelMtls.{port}.mode"), m)?;
    }
    if !p.spec.port_level_mtls.is_empty() && p.spec.selector.is_none() {
        return Err(r("spec.portLevelMtls".into(), "port-level mTLS needs a workload selector".into()));
    }
    Ok(())
}

const MAX_ENTRY_HOSTS: usize = 256;
const MAX_ENTRY_PORTS: usize = 64;
const MAX_ENTRY_ENDPOINTS: usize = 1024;

/// Whether a ServiceEntry may send traffic to `ip`: not the pod itself (loopback), not "any",
/// not the node's link-local services (cloud metadata, node-local DNS), not multicast — also
/// when written as an IPv4-mapped IPv6 address (`::ffff:169.254.169.254`).
fn routable(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            !(v4.is_loopback() || v4.is_unspecified() || v4.is_link_local() || v4.is_multicast() || v4.is_broadcast())
        }
        IpAddr::V6(v6) => !(v6.is_loopback() || v6.is_unspecified() || v6.is_multicast() || v6.is_unicast_link_local()),
    }
}

/// A DNS name ztunnel can look up: dot-separated labels of letters, digits and `-`.
fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.trim_end_matches('.')
            .split('.')
            .all(|l| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
}

fn validate_sidecar(label: &str, sc: &Sidecar) -> Result<(), Rejection> {
    match sc.spec.outbound_traffic_policy.as_ref().and_then(|o| o.mode.as_deref()) {
        None | Some("ALLOW_ANY" | "REGISTRY_ONLY") => Ok(()),
        Some(other) => Err(reject(
            label,
            "spec.outboundTrafficPolicy.mode",
            format!("unknown mode {other:?} (ALLOW_ANY, REGISTRY_ONLY)"),
        )),
    }
}

fn validate_service_entry(label: &str, se: &ServiceEntry) -> Result<(), Rejection> {
    let r = |field: String, reason: String| reject(label, field, reason);
    if se.spec.hosts.is_empty() {
        return Err(r("spec.hosts".into(), "at least one host is required".into()));
    }
    // Bounds on what one object can make every ztunnel hold (hosts × endpoints workloads'
    // entries); far above real entries.
    for (field, n, max) in [
        ("spec.hosts", se.spec.hosts.len(), MAX_ENTRY_HOSTS),
        ("spec.addresses", se.spec.addresses.len(), MAX_ENTRY_HOSTS),
        ("spec.ports", se.spec.ports.len(), MAX_ENTRY_PORTS),
        ("spec.endpoints", se.spec.endpoints.len(), MAX_ENTRY_ENDPOINTS),
    ] {
        if n > max {
            return Err(r(field.into(), format!("{n} items; at most {max} are allowed")));
        }
    }
    for (i, h) in se.spec.hosts.iter().enumerate() {
        let name = h.strip_prefix("*.").unwrap_or(h);
        if h != "*" && !is_dns_name(name) {
            return Err(r(format!("spec.hosts[{i}]"), format!("{h:?} is not a DNS name (or a *. wildcard)")));
        }
    }
    let mut seen = BTreeSet::new();
    for (i, p) in se.spec.ports.iter().enumerate() {
        if p.number == 0 || !seen.insert(p.number) {
            return Err(r(format!("spec.ports[{i}].number"), format!("port {} is zero or duplicated", p.number)));
        }
    }
    for (i, a) in se.spec.addresses.iter().enumerate() {
        let Ok(cidr) = a.parse::<Cidr>() else {
            return Err(r(format!("spec.addresses[{i}]"), format!("{a:?} is not an IP address or CIDR")));
        };
        let full = if cidr.addr().is_ipv4() { 32 } else { 128 };
        if cidr.prefix() != full {
            return Err(r(
                format!("spec.addresses[{i}]"),
                format!("{a:?}: address ranges are not supported (ztunnel matches single addresses)"),
            ));
        }
        if !routable(cidr.addr()) {
            return Err(r(
                format!("spec.addresses[{i}]"),
                format!("{a:?} is loopback, link-local, unspecified or multicast"),
            ));
        }
    }
    let resolution = se.spec.resolution.as_deref().unwrap_or("NONE");
    match resolution {
        "NONE" | "STATIC" | "DNS" | "DNS_ROUND_ROBIN" => {}
        other => {
            return Err(r(
                "spec.resolution".into(),
                format!("unknown resolution {other:?} (NONE, STATIC, DNS, DNS_ROUND_ROBIN)"),
            ))
        }
    }
    if let Some(sel) = &se.spec.workload_selector {
        validate_labels(label, "spec.workloadSelector.labels", &sel.labels)?;
        if sel.labels.is_empty() {
            return Err(r("spec.workloadSelector.labels".into(), "an empty selector would select every pod".into()));
        }
        if !se.spec.endpoints.is_empty() {
            return Err(r(
                "spec.workloadSelector".into(),
                "endpoints and workloadSelector are mutually exclusive".into(),
            ));
        }
    }
    if !se.spec.endpoints.is_empty() && !matches!(resolution, "STATIC" | "DNS" | "DNS_ROUND_ROBIN") {
        return Err(r(
            "spec.endpoints".into(),
            format!("endpoints are read with resolution STATIC or DNS (this entry says {resolution})"),
        ));
    }
    if matches!(resolution, "DNS" | "DNS_ROUND_ROBIN") && se.spec.endpoints.is_empty() {
        if let Some((i, h)) = se.spec.hosts.iter().enumerate().find(|(_, h)| h.starts_with('*')) {
            return Err(r(
                format!("spec.hosts[{i}]"),
                format!("{h:?}: a wildcard host cannot be resolved (resolution DNS)"),
            ));
        }
    }
    let names: BTreeSet<&str> = se.spec.ports.iter().filter_map(|p| p.name.as_deref()).collect();
    for (i, e) in se.spec.endpoints.iter().enumerate() {
        let is_ip = e.address.parse::<IpAddr>().is_ok();
        if resolution == "STATIC" && !is_ip {
            return Err(r(
                format!("spec.endpoints[{i}].address"),
                format!("{:?} is not an IP address (STATIC endpoints are addresses)", e.address),
            ));
        }
        if let Ok(ip) = e.address.parse::<IpAddr>() {
            if !routable(ip) {
                return Err(r(
                    format!("spec.endpoints[{i}].address"),
                    format!("{ip} is loopback, link-local, unspecified or multicast"),
                ));
            }
        }
        if !is_ip && !is_dns_name(&e.address) {
            return Err(r(
                format!("spec.endpoints[{i}].address"),
                format!("{:?} is neither an IP address nor a DNS name", e.address),
            ));
        }
        for (name, port) in &e.ports {
            if !names.contains(name.as_str()) {
                return Err(r(format!("spec.endpoints[{i}].ports.{name}"), "names no port of this entry".into()));
            }
            if !(1..=65_535).contains(port) {
                return Err(r(format!("spec.endpoints[{i}].ports.{name}"), format!("{port} is not 1-65535")));
            }
        }
        validate_labels(label, &format!("spec.endpoints[{i}].labels"), &e.labels)?;
    }
    Ok(())
}

pub mod substitute;

#[cfg(test)]
mod tests;
