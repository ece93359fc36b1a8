//! The mesh model: the Kubernetes objects the controller reads, trimmed to the fields it uses,
//! as plain serde types with Kubernetes' and Istio's field names.
//!
//! Both sources (manifest directory, Kubernetes API) produce these values through
//! `manifest::parse_object`; translation reads only these. Nothing here knows about kube-rs,
//! tonic or files.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::Deserialize;

pub type Labels = BTreeMap<String, String>;

/// The kinds the controller understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum Kind {
    Namespace,
    Node,
    Pod,
    Service,
    ServiceAccount,
    AuthorizationPolicy,
    PeerAuthentication,
    ServiceEntry,
    Gateway,
    HttpRoute,
    GrpcRoute,
    DestinationRule,
    RequestAuthentication,
    VirtualService,
    Sidecar,
    /// Only `kubernetes.io/tls` Secrets: an ingress listener's certificate.
    Secret,
    ReferenceGrant,
    TlsRoute,
    TcpRoute,
    /// Ambit's own: `policy.ambit.dev` RateLimitPolicy.
    RateLimitPolicy,
}

impl Kind {
    /// The kind for an `apiVersion` group and `kind`, or `None` if we do not read it.
    pub fn from_type(api_version: &str, kind: &str) -> Option<Kind> {
        let group = api_version.rsplit_once('/').map(|(g, _)| g).unwrap_or("");
        Some(match (group, kind) {
            ("", "Namespace") => Kind::Namespace,
            ("", "Node") => Kind::Node,
            ("", "Pod") => Kind::Pod,
            ("", "Service") => Kind::Service,
            ("", "ServiceAccount") => Kind::ServiceAccount,
            ("security.istio.io", "AuthorizationPolicy") => Kind::AuthorizationPolicy,
            ("security.istio.io", "PeerAuthentication") => Kind::PeerAuthentication,
            ("security.istio.io", "RequestAuthentication") => Kind::RequestAuthentication,
            ("networking.istio.io", "ServiceEntry") => Kind::ServiceEntry,
            ("networking.istio.io", "DestinationRule") => Kind::DestinationRule,
            ("networking.istio.io", "VirtualService") => Kind::VirtualService,
            ("networking.istio.io", "Sidecar") => Kind::Sidecar,
            ("gateway.networking.k8s.io", "Gateway") => Kind::Gateway,
            ("gateway.networking.k8s.io", "HTTPRoute") => Kind::HttpRoute,
            ("gateway.networking.k8s.io", "GRPCRoute") => Kind::GrpcRoute,
            ("gateway.networking.k8s.io", "TLSRoute") => Kind::TlsRoute,
            ("gateway.networking.k8s.io", "TCPRoute") => Kind::TcpRoute,
            ("gateway.networking.k8s.io", "ReferenceGrant") => Kind::ReferenceGrant,
            ("", "Secret") => Kind::Secret,
            (RATE_LIMIT_GROUP, "RateLimitPolicy") => Kind::RateLimitPolicy,
            _ => return None,
        })
    }

    /// Cluster-scoped kinds have no namespace.
    pub fn is_namespaced(self) -> bool {
        !matches!(self, Kind::Namespace | Kind::Node)
    }
}

/// Identifies one object: kind, namespace (empty for cluster-scoped kinds) and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct ObjectKey {
    pub kind: Kind,
    pub namespace: Arc<str>,
    pub name: Arc<str>,
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{:?} {}", self.kind, self.name)
        } else {
            write!(f, "{:?} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub uid: Option<String>,
    #[serde(default)]
    pub generate_name: Option<String>,
    #[serde(default)]
    pub labels: Labels,
    #[serde(default)]
    pub annotations: Labels,
    #[serde(default)]
    pub creation_timestamp: Option<String>,
    #[serde(default)]
    pub deletion_timestamp: Option<String>,
    #[serde(default)]
    pub owner_references: Vec<OwnerReference>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OwnerReference {
    pub kind: String,
    pub name: String,
    #[serde(default)]
    pub controller: Option<bool>,
}

/// Any object we read.
#[derive(Debug, Clone, PartialEq)]
pub enum Object {
    Namespace(Namespace),
    Node(Node),
    Pod(Pod),
    Service(Service),
    ServiceAccount(ServiceAccount),
    AuthorizationPolicy(AuthorizationPolicy),
    PeerAuthentication(PeerAuthentication),
    ServiceEntry(ServiceEntry),
    Gateway(Gateway),
    HttpRoute(HttpRoute),
    GrpcRoute(GrpcRoute),
    DestinationRule(DestinationRule),
    RequestAuthentication(RequestAuthentication),
    VirtualService(VirtualService),
    Sidecar(Sidecar),
    Secret(Secret),
    ReferenceGrant(ReferenceGrant),
    TlsRoute(TlsRoute),
    TcpRoute(TcpRoute),
    RateLimitPolicy(RateLimitPolicy),
}

impl Object {
    pub fn meta(&self) -> &ObjectMeta {
        match self {
            Object::Namespace(o) => &o.metadata,
            Object::Node(o) => &o.metadata,
            Object::Pod(o) => &o.metadata,
            Object::Service(o) => &o.metadata,
            Object::ServiceAccount(o) => &o.metadata,
            Object::AuthorizationPolicy(o) => &o.metadata,
            Object::PeerAuthentication(o) => &o.metadata,
            Object::ServiceEntry(o) => &o.metadata,
            Object::Gateway(o) => &o.metadata,
            Object::HttpRoute(o) => &o.metadata,
            Object::GrpcRoute(o) => &o.metadata,
            Object::DestinationRule(o) => &o.metadata,
            Object::RequestAuthentication(o) => &o.metadata,
            Object::VirtualService(o) => &o.metadata,
            Object::Sidecar(o) => &o.metadata,
            Object::Secret(o) => &o.metadata,
            Object::ReferenceGrant(o) => &o.metadata,
            Object::TlsRoute(o) => &o.metadata,
            Object::TcpRoute(o) => &o.metadata,
            Object::RateLimitPolicy(o) => &o.metadata,
        }
    }

    pub fn kind(&self) -> Kind {
        match self {
            Object::Namespace(_) => Kind::Namespace,
            Object::Node(_) => Kind::Node,
            Object::Pod(_) => Kind::Pod,
            Object::Service(_) => Kind::Service,
            Object::ServiceAccount(_) => Kind::ServiceAccount,
            Object::AuthorizationPolicy(_) => Kind::AuthorizationPolicy,
            Object::PeerAuthentication(_) => Kind::PeerAuthentication,
            Object::ServiceEntry(_) => Kind::ServiceEntry,
            Object::Gateway(_) => Kind::Gateway,
            Object::HttpRoute(_) => Kind::HttpRoute,
            Object::GrpcRoute(_) => Kind::GrpcRoute,
            Object::DestinationRule(_) => Kind::DestinationRule,
            Object::RequestAuthentication(_) => Kind::RequestAuthentication,
            Object::VirtualService(_) => Kind::VirtualService,
            Object::Sidecar(_) => Kind::Sidecar,
            Object::Secret(_) => Kind::Secret,
            Object::ReferenceGrant(_) => Kind::ReferenceGrant,
            Object::TlsRoute(_) => Kind::TlsRoute,
            Object::TcpRoute(_) => Kind::TcpRoute,
            Object::RateLimitPolicy(_) => Kind::RateLimitPolicy,
        }
    }

    pub fn key(&self) -> ObjectKey {
        let m = self.meta();
        ObjectKey {
            kind: self.kind(),
            namespace: m.namespace.as_deref().unwrap_or_default().into(),
            name: m.name.as_str().into(),
        }
    }
}

// --- core/v1 -------------------------------------------------------------------------------

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Namespace {
    pub metadata: ObjectMeta,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Node {
    pub metadata: ObjectMeta,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct ServiceAccount {
    pub metadata: ObjectMeta,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Pod {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: PodSpec,
    #[serde(default)]
    pub status: PodStatus,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    #[serde(default)]
    pub node_name: Option<String>,
    #[serde(default)]
    pub service_account_name: Option<String>,
    #[serde(default)]
    pub host_network: bool,
    #[serde(default)]
    pub containers: Vec<Container>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub ports: Vec<ContainerPort>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ContainerPort {
    #[serde(default)]
    pub name: Option<String>,
    pub container_port: u16,
    #[serde(default)]
    pub protocol: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    #[serde(default)]
    pub phase: Option<String>,
    #[serde(default, rename = "podIP")]
    pub pod_ip: Option<String>,
    #[serde(default, rename = "podIPs")]
    pub pod_ips: Vec<PodIp>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct PodIp {
    pub ip: String,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Service {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: ServiceSpec,
    #[serde(default)]
    pub status: ServiceStatus,
}

impl Service {
    /// Its cluster IPs (`clusterIPs`, else `clusterIP`), as written.
    pub fn cluster_ips(&self) -> impl Iterator<Item = &str> {
        let one = self.spec.cluster_ips.is_empty().then_some(self.spec.cluster_ip.as_deref()).flatten();
        self.spec.cluster_ips.iter().map(String::as_str).chain(one)
    }
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStatus {
    #[serde(default)]
    pub load_balancer: Option<LoadBalancerStatus>,
}

impl ServiceStatus {
    pub fn load_balancer_ingress(&self) -> &[LoadBalancerIngress] {
        self.load_balancer.as_ref().map_or(&[], |l| &l.ingress)
    }
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct LoadBalancerStatus {
    #[serde(default)]
    pub ingress: Vec<LoadBalancerIngress>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct LoadBalancerIngress {
    #[serde(default)]
    pub ip: Option<String>,
    #[serde(default)]
    pub hostname: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    #[serde(default, rename = "type")]
    pub type_: Option<String>,
    #[serde(default, rename = "clusterIP")]
    pub cluster_ip: Option<String>,
    #[serde(default, rename = "clusterIPs")]
    pub cluster_ips: Vec<String>,
    #[serde(default)]
    pub ports: Vec<ServicePort>,
    /// `None` (absent) and empty both mean "selects nothing" for endpoints.
    #[serde(default)]
    pub selector: Option<Labels>,
    #[serde(default)]
    pub internal_traffic_policy: Option<String>,
    #[serde(default)]
    pub traffic_distribution: Option<String>,
    #[serde(default)]
    pub publish_not_ready_addresses: bool,
    #[serde(default)]
    pub ip_families: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    #[serde(default)]
    pub name: Option<String>,
    pub port: u16,
    #[serde(default)]
    pub target_port: Option<IntOrString>,
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(default)]
    pub app_protocol: Option<String>,
}

/// Kubernetes' `IntOrString`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum IntOrString {
    Int(i64),
    String(String),
}

// --- security.istio.io/v1 ------------------------------------------------------------------

#[derive(Debug, Clone, Default, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSelector {
    #[serde(default)]
    pub match_labels: Labels,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyTargetReference {
    #[serde(default)]
    pub group: String,
    pub kind: String,
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct AuthorizationPolicy {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: AuthorizationPolicySpec,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationPolicySpec {
    #[serde(default)]
    pub selector: Option<WorkloadSelector>,
    #[serde(default)]
    pub target_ref: Option<PolicyTargetReference>,
    #[serde(default)]
    pub target_refs: Vec<PolicyTargetReference>,
    #[serde(default)]
    pub rules: Option<Vec<Rule>>,
    /// ALLOW (default), DENY, AUDIT or CUSTOM.
    #[serde(default)]
    pub action: Option<String>,
    #[serde(default)]
    pub provider: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    #[serde(default)]
    pub from: Vec<RuleFrom>,
    #[serde(default)]
    pub to: Vec<RuleTo>,
    #[serde(default)]
    pub when: Vec<WhenCondition>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct RuleFrom {
    #[serde(default)]
    pub source: Source,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct RuleTo {
    #[serde(default)]
    pub operation: Operation,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Source {
    #[serde(default)]
    pub principals: Vec<String>,
    #[serde(default)]
    pub not_principals: Vec<String>,
    #[serde(default)]
    pub request_principals: Vec<String>,
    #[serde(default)]
    pub not_request_principals: Vec<String>,
    #[serde(default)]
    pub namespaces: Vec<String>,
    #[serde(default)]
    pub not_namespaces: Vec<String>,
    /// Istio's CRD limits, so the API server refuses what Istio's would, at apply time.
    #[serde(default)]
    #[schemars(length(max = 16), inner(length(max = 320)))]
    pub service_accounts: Vec<String>,
    #[serde(default)]
    #[schemars(length(max = 16), inner(length(max = 320)))]
    pub not_service_accounts: Vec<String>,
    #[serde(default)]
    pub ip_blocks: Vec<String>,
    #[serde(default)]
    pub not_ip_blocks: Vec<String>,
    #[serde(default)]
    pub remote_ip_blocks: Vec<String>,
    #[serde(default)]
    pub not_remote_ip_blocks: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Operation {
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub not_hosts: Vec<String>,
    #[serde(default)]
    pub ports: Vec<String>,
    #[serde(default)]
    pub not_ports: Vec<String>,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub not_methods: Vec<String>,
    #[serde(default)]
    pub paths: Vec<String>,
    #[serde(default)]
    pub not_paths: Vec<String>,
}

/// A `when` condition of an authorization rule.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WhenCondition {
    pub key: String,
    #[serde(default)]
    pub values: Vec<String>,
    #[serde(default)]
    pub not_values: Vec<String>,
}

/// Ambit's API group for its own policy kinds.
pub const RATE_LIMIT_GROUP: &str = "policy.ambit.dev";

/// Local rate limits at waypoints and ingress gateways (Ambit's own kind; Istio has none).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct RateLimitPolicy {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: RateLimitPolicySpec,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitPolicySpec {
    /// What it applies at: a Service (at its waypoint), or a Gateway (a waypoint: every service
    /// it serves; an ingress gateway: every request it takes), as Istio's policies target.
    #[serde(default)]
    pub target_refs: Vec<PolicyTargetReference>,
    /// Each rule is its own limit; a request takes a token from every rule it matches.
    #[serde(default)]
    pub rules: Vec<RateLimitRule>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitRule {
    /// Names the rule in metrics and logs (default: its index).
    #[serde(default)]
    pub name: Option<String>,
    /// Requests the rule counts (any may match; none: every request), as AuthorizationPolicy
    /// `to.operation`.
    #[serde(default, rename = "match")]
    pub matches: Vec<Operation>,
    /// Tokens added every `per`.
    pub requests: u32,
    /// A duration (`1s`, `1m`).
    pub per: String,
    /// The most requests at once (default `requests`).
    #[serde(default)]
    pub burst: Option<u32>,
    /// What a bucket is kept per: `Shared` (default), `SourcePrincipal`, `RemoteAddress`,
    /// `Header`.
    #[serde(default)]
    pub key: Option<String>,
    /// With `key: Header`: the header whose value keys the buckets.
    #[serde(default)]
    pub header: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct RequestAuthentication {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: RequestAuthenticationSpec,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RequestAuthenticationSpec {
    #[serde(default)]
    pub selector: Option<WorkloadSelector>,
    #[serde(default)]
    pub target_ref: Option<PolicyTargetReference>,
    #[serde(default)]
    pub target_refs: Vec<PolicyTargetReference>,
    #[serde(default)]
    pub jwt_rules: Vec<JwtRuleSpec>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JwtRuleSpec {
    pub issuer: String,
    #[serde(default)]
    pub audiences: Vec<String>,
    #[serde(default)]
    pub jwks_uri: Option<String>,
    #[serde(default)]
    pub jwks: Option<String>,
    #[serde(default)]
    pub from_headers: Vec<JwtHeader>,
    #[serde(default)]
    pub from_params: Vec<String>,
    #[serde(default)]
    pub output_claim_to_headers: Vec<ClaimToHeaderSpec>,
    #[serde(default)]
    pub forward_original_token: bool,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct JwtHeader {
    pub name: String,
    #[serde(default)]
    pub prefix: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct ClaimToHeaderSpec {
    pub header: String,
    pub claim: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct PeerAuthentication {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: PeerAuthenticationSpec,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PeerAuthenticationSpec {
    #[serde(default)]
    pub selector: Option<WorkloadSelector>,
    #[serde(default)]
    pub mtls: Option<MutualTls>,
    #[serde(default)]
    pub port_level_mtls: BTreeMap<String, MutualTls>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct MutualTls {
    /// UNSET (default), DISABLE, PERMISSIVE or STRICT.
    #[serde(default)]
    pub mode: Option<String>,
}

// --- networking.istio.io/v1 ----------------------------------------------------------------

/// Istio's `Sidecar`: in ambient mode Ambit reads only its `outboundTrafficPolicy` (for the
/// workloads it selects, or its namespace, or — in the root namespace — the mesh). Every
/// other field is refused by name (`crds::unread_field`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Sidecar {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: SidecarSpec,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SidecarSpec {
    #[serde(default)]
    pub workload_selector: Option<NetworkingWorkloadSelector>,
    #[serde(default)]
    pub outbound_traffic_policy: Option<OutboundTrafficPolicy>,
}

/// The networking API's workload selector (`labels`; the security API's says `matchLabels`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct NetworkingWorkloadSelector {
    #[serde(default)]
    pub labels: Labels,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutboundTrafficPolicy {
    /// `ALLOW_ANY` (Istio's default) or `REGISTRY_ONLY`.
    #[serde(default)]
    pub mode: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct ServiceEntry {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: ServiceEntrySpec,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceEntrySpec {
    #[serde(default)]
    #[schemars(length(max = 256))]
    pub hosts: Vec<String>,
    #[serde(default)]
    #[schemars(length(max = 256))]
    pub addresses: Vec<String>,
    #[serde(default)]
    #[schemars(length(max = 64))]
    pub ports: Vec<ServiceEntryPort>,
    #[serde(default)]
    pub location: Option<String>,
    #[serde(default)]
    pub resolution: Option<String>,
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
    /// With `resolution: STATIC`: the addresses behind the hosts (Istio's WorkloadEntry shape).
    #[serde(default)]
    #[schemars(length(max = 1024))]
    pub endpoints: Vec<WorkloadEntrySpec>,
    /// Pods of the entry's namespace serving its hosts (as a Service's selector).
    #[serde(default)]
    pub workload_selector: Option<NetworkingWorkloadSelector>,
}

/// One endpoint of a ServiceEntry (Istio's `WorkloadEntry` spec).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadEntrySpec {
    #[serde(default)]
    pub address: String,
    /// Port name (of the ServiceEntry's ports) → the endpoint's port.
    #[serde(default)]
    pub ports: BTreeMap<String, u32>,
    #[serde(default)]
    pub labels: Labels,
    #[serde(default)]
    pub network: Option<String>,
    /// Relative load-balancing weight (default 1).
    #[serde(default)]
    pub weight: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceEntryPort {
    pub number: u16,
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub target_port: Option<u16>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct VirtualService {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: VirtualServiceSpec,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct VirtualServiceSpec {
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub http: Vec<VsHttpRoute>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VsHttpRoute {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default, rename = "match")]
    pub matches: Vec<VsMatch>,
    #[serde(default)]
    pub route: Vec<VsDestinationWeight>,
    #[serde(default)]
    pub redirect: Option<VsRedirect>,
    #[serde(default)]
    pub rewrite: Option<VsRewrite>,
    #[serde(default)]
    pub timeout: Option<String>,
    #[serde(default)]
    pub retries: Option<VsRetries>,
    #[serde(default)]
    pub fault: Option<VsFault>,
    #[serde(default)]
    pub mirror: Option<VsDestination>,
    #[serde(default)]
    pub mirror_percentage: Option<VsPercent>,
    #[serde(default)]
    pub headers: Option<VsHeaders>,
}

/// exact / prefix / regex, one of them.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct VsStringMatch {
    #[serde(default)]
    pub exact: Option<String>,
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub regex: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VsMatch {
    #[serde(default)]
    pub uri: Option<VsStringMatch>,
    #[serde(default)]
    pub method: Option<VsStringMatch>,
    #[serde(default)]
    pub headers: BTreeMap<String, VsStringMatch>,
    #[serde(default)]
    pub query_params: BTreeMap<String, VsStringMatch>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct VsDestination {
    pub host: String,
    #[serde(default)]
    pub subset: Option<String>,
    #[serde(default)]
    pub port: Option<VsPort>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct VsPort {
    pub number: u16,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct VsDestinationWeight {
    pub destination: VsDestination,
    #[serde(default)]
    pub weight: Option<u32>,
    #[serde(default)]
    pub headers: Option<VsHeaders>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct VsHeaders {
    #[serde(default)]
    pub request: Option<VsHeaderOps>,
    #[serde(default)]
    pub response: Option<VsHeaderOps>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct VsHeaderOps {
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VsRedirect {
    #[serde(default)]
    pub uri: Option<String>,
    #[serde(default)]
    pub authority: Option<String>,
    #[serde(default)]
    pub scheme: Option<String>,
    #[serde(default)]
    pub redirect_code: Option<u16>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct VsRewrite {
    #[serde(default)]
    pub uri: Option<String>,
    #[serde(default)]
    pub authority: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VsRetries {
    #[serde(default)]
    pub attempts: Option<u32>,
    #[serde(default)]
    pub per_try_timeout: Option<String>,
    #[serde(default)]
    pub retry_on: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct VsFault {
    #[serde(default)]
    pub delay: Option<VsDelay>,
    #[serde(default)]
    pub abort: Option<VsAbort>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VsDelay {
    #[serde(default)]
    pub fixed_delay: Option<String>,
    #[serde(default)]
    pub percentage: Option<VsPercent>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VsAbort {
    #[serde(default)]
    pub http_status: Option<u16>,
    #[serde(default)]
    pub percentage: Option<VsPercent>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct VsPercent {
    #[serde(default)]
    pub value: f64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct DestinationRule {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: DestinationRuleSpec,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DestinationRuleSpec {
    #[serde(default)]
    pub host: String,
    #[serde(default)]
    pub traffic_policy: Option<TrafficPolicy>,
    /// Named groups of the host's endpoints, by labels; VirtualService destinations name them.
    #[serde(default)]
    pub subsets: Vec<DrSubset>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DrSubset {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub traffic_policy: Option<TrafficPolicy>,
}

/// A `portLevelSettings` entry: the traffic policy for one port of the host.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PortTrafficPolicy {
    #[serde(default)]
    pub port: Option<VsPort>,
    #[serde(default)]
    pub connection_pool: Option<ConnectionPool>,
    #[serde(default)]
    pub outlier_detection: Option<OutlierDetectionSpec>,
    #[serde(default)]
    pub load_balancer: Option<LoadBalancerSpec>,
    #[serde(default)]
    pub tls: Option<ClientTlsSettings>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrafficPolicy {
    #[serde(default)]
    pub connection_pool: Option<ConnectionPool>,
    #[serde(default)]
    pub outlier_detection: Option<OutlierDetectionSpec>,
    #[serde(default)]
    pub load_balancer: Option<LoadBalancerSpec>,
    /// TLS to the service's endpoints: `ISTIO_MUTUAL` (mesh traffic, as always), `DISABLE`, or
    /// `SIMPLE` (originated by the waypoint to endpoints outside the mesh).
    #[serde(default)]
    pub tls: Option<ClientTlsSettings>,
    #[serde(default)]
    pub port_level_settings: Vec<PortTrafficPolicy>,
}

/// Istio's `ClientTLSSettings`, the parts Ambit reads (others are refused by name).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClientTlsSettings {
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default)]
    pub sni: Option<String>,
    #[serde(default)]
    pub insecure_skip_verify: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct ConnectionPool {
    #[serde(default)]
    pub tcp: Option<TcpPool>,
    #[serde(default)]
    pub http: Option<HttpPool>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TcpPool {
    #[serde(default)]
    pub max_connections: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpPool {
    #[serde(default, rename = "http1MaxPendingRequests")]
    pub http1_max_pending_requests: Option<u32>,
    #[serde(default, rename = "http2MaxRequests")]
    pub http2_max_requests: Option<u32>,
    #[serde(default)]
    pub max_requests_per_connection: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutlierDetectionSpec {
    #[serde(default, rename = "consecutive5xxErrors")]
    pub consecutive_5xx_errors: Option<u32>,
    #[serde(default)]
    pub consecutive_gateway_errors: Option<u32>,
    #[serde(default)]
    pub interval: Option<String>,
    #[serde(default)]
    pub base_ejection_time: Option<String>,
    #[serde(default)]
    pub max_ejection_percent: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancerSpec {
    /// LEAST_REQUEST (default), ROUND_ROBIN, RANDOM, PASSTHROUGH (refused for waypoints).
    #[serde(default)]
    pub simple: Option<String>,
    #[serde(default)]
    pub consistent_hash: Option<ConsistentHash>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConsistentHash {
    #[serde(default)]
    pub http_header_name: Option<String>,
    #[serde(default)]
    pub http_cookie: Option<HttpCookie>,
    #[serde(default)]
    pub use_source_ip: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct HttpCookie {
    pub name: String,
}

// --- core/v1 Secret (kubernetes.io/tls) -----------------------------------------------------

#[derive(Clone, Deserialize, PartialEq)]
pub struct Secret {
    pub metadata: ObjectMeta,
    #[serde(default, rename = "type")]
    pub type_: Option<String>,
    /// Base64 values by key (`tls.crt`, `tls.key`); never logged or shown.
    #[serde(default)]
    pub data: BTreeMap<String, String>,
    /// Plain values (as written in a manifest; the API server moves them into `data`).
    #[serde(default, rename = "stringData")]
    pub string_data: BTreeMap<String, String>,
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secret")
            .field("metadata", &self.metadata)
            .field("type", &self.type_)
            .field("keys", &self.data.keys().chain(self.string_data.keys()).collect::<Vec<_>>())
            .finish()
    }
}

impl Secret {
    /// A value: `stringData`'s as written, else `data`'s base64-decoded.
    pub fn value(&self, key: &str) -> Option<Vec<u8>> {
        use base64::Engine;
        if let Some(v) = self.string_data.get(key) {
            return Some(v.as_bytes().to_vec());
        }
        let v = self.data.get(key)?;
        base64::engine::general_purpose::STANDARD.decode(v.trim()).ok()
    }
}

// --- gateway.networking.k8s.io/v1 ----------------------------------------------------------

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Gateway {
    pub metadata: ObjectMeta,
    pub spec: GatewaySpec,
    #[serde(default)]
    pub status: GatewayStatus,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    pub gateway_class_name: String,
    #[serde(default)]
    pub listeners: Vec<Listener>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Listener {
    #[serde(default)]
    pub name: String,
    pub port: u16,
    pub protocol: String,
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub tls: Option<ListenerTls>,
    #[serde(default)]
    pub allowed_routes: Option<AllowedRoutes>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ListenerTls {
    /// `Terminate` (default) or `Passthrough`.
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default)]
    pub certificate_refs: Vec<SecretObjectReference>,
    /// Read to refuse it by name: we do not support any option.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, serde::Serialize)]
pub struct SecretObjectReference {
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct AllowedRoutes {
    #[serde(default)]
    pub namespaces: Option<RouteNamespaces>,
    #[serde(default)]
    pub kinds: Vec<RouteGroupKind>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct RouteNamespaces {
    /// `Same` (default), `All` or `Selector`.
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub selector: Option<NamespaceSelector>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceSelector {
    #[serde(default)]
    pub match_labels: Labels,
    /// Not supported: a listener using it is refused (by name), never read as "all".
    #[serde(default)]
    pub match_expressions: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, serde::Serialize)]
pub struct RouteGroupKind {
    #[serde(default)]
    pub group: Option<String>,
    pub kind: String,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct GatewayStatus {
    #[serde(default)]
    pub addresses: Vec<GatewayStatusAddress>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct GatewayStatusAddress {
    #[serde(default, rename = "type")]
    pub type_: Option<String>,
    pub value: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct ReferenceGrant {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: ReferenceGrantSpec,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct ReferenceGrantSpec {
    #[serde(default)]
    pub from: Vec<ReferenceGrantFrom>,
    #[serde(default)]
    pub to: Vec<ReferenceGrantTo>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct ReferenceGrantFrom {
    #[serde(default)]
    pub group: String,
    pub kind: String,
    pub namespace: String,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct ReferenceGrantTo {
    #[serde(default)]
    pub group: String,
    pub kind: String,
    #[serde(default)]
    pub name: Option<String>,
}

/// TLSRoute (v1alpha2 and later): TLS passed through by SNI.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct TlsRoute {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: L4RouteSpec,
}

/// TCPRoute (v1alpha2).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct TcpRoute {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: L4RouteSpec,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct L4RouteSpec {
    #[serde(default)]
    pub parent_refs: Vec<ParentReference>,
    /// TLSRoute only.
    #[serde(default)]
    pub hostnames: Vec<String>,
    #[serde(default)]
    pub rules: Vec<L4RouteRule>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct L4RouteRule {
    #[serde(default)]
    pub backend_refs: Vec<L4BackendRef>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct L4BackendRef {
    #[serde(flatten)]
    pub backend: BackendObjectReference,
    #[serde(default)]
    pub weight: Option<u32>,
}

/// A route's parent: for waypoints (GAMMA), a Service (`group: ""`, `kind: Service`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ParentReference {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct HttpRoute {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: HttpRouteSpec,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteSpec {
    #[serde(default)]
    pub parent_refs: Vec<ParentReference>,
    #[serde(default)]
    pub hostnames: Vec<String>,
    #[serde(default)]
    pub rules: Vec<HttpRouteRule>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteRule {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub matches: Vec<HttpRouteMatch>,
    #[serde(default)]
    pub filters: Vec<HttpRouteFilter>,
    #[serde(default)]
    pub backend_refs: Vec<HttpBackendRef>,
    #[serde(default)]
    pub timeouts: Option<HttpRouteTimeouts>,
    #[serde(default)]
    pub retry: Option<HttpRouteRetry>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteMatch {
    #[serde(default)]
    pub path: Option<HttpPathMatch>,
    #[serde(default)]
    pub headers: Vec<HttpValueMatch>,
    #[serde(default)]
    pub query_params: Vec<HttpValueMatch>,
    #[serde(default)]
    pub method: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct HttpPathMatch {
    /// Exact, PathPrefix (default) or RegularExpression.
    #[serde(default, rename = "type")]
    pub type_: Option<String>,
    #[serde(default)]
    pub value: Option<String>,
}

/// A header or query parameter match: Exact (default) or RegularExpression.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct HttpValueMatch {
    #[serde(default, rename = "type")]
    pub type_: Option<String>,
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteFilter {
    #[serde(rename = "type")]
    pub type_: String,
    #[serde(default)]
    pub request_header_modifier: Option<HeaderModifierSpec>,
    #[serde(default)]
    pub response_header_modifier: Option<HeaderModifierSpec>,
    #[serde(default)]
    pub request_redirect: Option<RequestRedirectSpec>,
    #[serde(default)]
    pub url_rewrite: Option<UrlRewriteSpec>,
    #[serde(default)]
    pub request_mirror: Option<RequestMirrorSpec>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct HeaderModifierSpec {
    #[serde(default)]
    pub set: Vec<HttpHeader>,
    #[serde(default)]
    pub add: Vec<HttpHeader>,
    #[serde(default)]
    pub remove: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct HttpHeader {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RequestRedirectSpec {
    #[serde(default)]
    pub scheme: Option<String>,
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub path: Option<PathModifier>,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub status_code: Option<u16>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct UrlRewriteSpec {
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub path: Option<PathModifier>,
}

/// ReplaceFullPath or ReplacePrefixMatch.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PathModifier {
    #[serde(rename = "type")]
    pub type_: String,
    #[serde(default)]
    pub replace_full_path: Option<String>,
    #[serde(default)]
    pub replace_prefix_match: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RequestMirrorSpec {
    pub backend_ref: BackendObjectReference,
    #[serde(default)]
    pub percent: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BackendObjectReference {
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HttpBackendRef {
    #[serde(flatten)]
    pub backend: BackendObjectReference,
    /// Default 1.
    #[serde(default)]
    pub weight: Option<u32>,
    #[serde(default)]
    pub filters: Vec<HttpRouteFilter>,
}

/// Gateway API durations (`10s`, `500ms`, `1m30s`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteTimeouts {
    #[serde(default)]
    pub request: Option<String>,
    #[serde(default)]
    pub backend_request: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct HttpRouteRetry {
    #[serde(default)]
    pub codes: Vec<u16>,
    #[serde(default)]
    pub attempts: Option<u32>,
    #[serde(default)]
    pub backoff: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct GrpcRoute {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: GrpcRouteSpec,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GrpcRouteSpec {
    #[serde(default)]
    pub parent_refs: Vec<ParentReference>,
    #[serde(default)]
    pub hostnames: Vec<String>,
    #[serde(default)]
    pub rules: Vec<GrpcRouteRule>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GrpcRouteRule {
    #[serde(default)]
    pub matches: Vec<GrpcRouteMatch>,
    #[serde(default)]
    pub filters: Vec<HttpRouteFilter>,
    #[serde(default)]
    pub backend_refs: Vec<HttpBackendRef>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct GrpcRouteMatch {
    #[serde(default)]
    pub method: Option<GrpcMethodMatch>,
    #[serde(default)]
    pub headers: Vec<HttpValueMatch>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct GrpcMethodMatch {
    /// Exact (default) or RegularExpression.
    #[serde(default, rename = "type")]
    pub type_: Option<String>,
    #[serde(default)]
    pub service: Option<String>,
    #[serde(default)]
    pub method: Option<String>,
}

// Istio's label and annotation keys and the waypoint GatewayClasses, spelled once for the
// controller and the sandbox.
pub use ambit_shared::api::{keys, WAYPOINT_CLASSES};
