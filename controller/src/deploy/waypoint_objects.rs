//! The objects of one waypoint or ingress gateway: every Gateway of a waypoint class becomes a
//! ServiceAccount, a Deployment running the waypoint and a Service in front of it (15008
//! HBONE, 15021, 15020), named after the Gateway and labelled
//! `gateway.networking.k8s.io/gateway-name`, as istiod deploys its waypoints; a Gateway of an
//! ingress class gets the same proxy in ingress mode, with a LoadBalancer Service of its
//! listeners' ports. Also their YAML form and the settings that shape them.
//!
//! Pure functions of the Gateway and the settings: writing them (a directory, the Kubernetes
//! API) is `dir` and `apply`'s business.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction,
    LocalObjectReference, ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ProjectedVolumeSource, SeccompProfile, SecurityContext, Service, ServiceAccount, ServiceAccountTokenProjection,
    ServicePort, ServiceSpec, Sysctl, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::deploy::root_configmap::ROOT_CONFIGMAP;
use crate::model::{keys, Gateway, Kind, Object, WAYPOINT_CLASSES};
use crate::store::Store;
use crate::translate::ingress::is_ingress;

/// What the controller puts into waypoint Deployments.
#[derive(Debug, Clone)]
pub struct WaypointSettings {
    pub image: String,
    /// The control plane as waypoints reach it (xDS and CA).
    pub xds_address: String,
    pub trust_domain: String,
    /// OTLP collector for every waypoint's spans (a Gateway's annotation overrides it).
    pub otlp_endpoint: Option<String>,
    /// The controller's `<namespace>/<service account>`: the identity waypoints expect of it.
    pub control_plane_account: String,
    /// Audience of the service-account token waypoints present to the CA.
    pub token_audience: String,
    /// Image pull secrets of waypoint pods.
    pub image_pull_secrets: Vec<String>,
    /// How waypoints normalize request paths.
    pub path_normalization: PathNormalization,
}

/// Gateway annotations that tune its waypoint's tracing.
pub const OTLP_ENDPOINT_ANNOTATION: &str = "ambit.dev/otlp-endpoint";
pub const TRACE_SAMPLING_ANNOTATION: &str = "ambit.dev/trace-sampling";

/// Request path normalization at waypoints (meshConfig `pathNormalization.normalization`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[value(rename_all = "SCREAMING_SNAKE_CASE")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PathNormalization {
    None,
    Base,
    MergeSlashes,
    DecodeAndMergeSlashes,
}

impl PathNormalization {
    /// The name waypoints read from `PATH_NORMALIZATION`.
    pub fn name(self) -> &'static str {
        match self {
            PathNormalization::None => "NONE",
            PathNormalization::Base => "BASE",
            PathNormalization::MergeSlashes => "MERGE_SLASHES",
            PathNormalization::DecodeAndMergeSlashes => "DECODE_AND_MERGE_SLASHES",
        }
    }
}

/// The objects deployed for one waypoint Gateway.
pub fn objects(gw: &Gateway, settings: &WaypointSettings) -> (ServiceAccount, Deployment, Service) {
    let ns = gw.metadata.namespace.clone().unwrap_or_default();
    let name = gw.metadata.name.clone();
    let labels: BTreeMap<String, String> = [
        (keys::GATEWAY_NAME.to_owned(), name.clone()),
        ("gateway.istio.io/managed".to_owned(), "istio.io-mesh-controller".to_owned()),
    ]
    .into();
    let owner = gw.metadata.uid.clone().map(|uid| {
        vec![OwnerReference {
            api_version: "gateway.networking.k8s.io/v1".into(),
            kind: "Gateway".into(),
            name: name.clone(),
            uid,
            ..Default::default()
        }]
    });
    let meta = |labels: &BTreeMap<String, String>| ObjectMeta {
        name: Some(name.clone()),
        namespace: Some(ns.clone()),
        labels: Some(labels.clone()),
        owner_references: owner.clone(),
        ..Default::default()
    };
    // The waypoint pods themselves are never captured.
    let mut pod_labels = labels.clone();
    pod_labels.insert(keys::DATAPLANE_MODE.to_owned(), "none".to_owned());
    let deployment = Deployment {
        metadata: meta(&labels),
        spec: Some(DeploymentSpec {
            replicas: Some(1),
            selector: LabelSelector {
                match_labels: Some([(keys::GATEWAY_NAME.to_owned(), name.clone())].into()),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(pod_labels), ..Default::default() }),
                spec: Some(pod_spec(gw, settings)),
            },
            ..Default::default()
        }),
        ..Default::default()
    };
    let service = Service { metadata: meta(&labels), spec: Some(service_spec(gw)), ..Default::default() };
    (ServiceAccount { metadata: meta(&labels), ..Default::default() }, deployment, service)
}

/// The waypoint pod: one container, the projected token and the mesh root, no API access.
fn pod_spec(gw: &Gateway, settings: &WaypointSettings) -> PodSpec {
    PodSpec {
        service_account_name: Some(gw.metadata.name.clone()),
        containers: vec![container(gw, settings)],
        volumes: Some(volumes(settings)),
        // The waypoint needs no Kubernetes API access.
        automount_service_account_token: Some(false),
        image_pull_secrets: (!settings.image_pull_secrets.is_empty()).then(|| {
            settings.image_pull_secrets.iter().map(|name| LocalObjectReference { name: name.clone() }).collect()
        }),
        security_context: Some(PodSecurityContext {
            run_as_user: Some(1337),
            run_as_group: Some(1337),
            seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), ..Default::default() }),
            // An ingress gateway listens on the ports its Gateway names (80, 443, …) without
            // any capability, as Istio's gateways do.
            sysctls: is_ingress(gw)
                .then(|| vec![Sysctl { name: "net.ipv4.ip_unprivileged_port_start".into(), value: "0".into() }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn container(gw: &Gateway, settings: &WaypointSettings) -> Container {
    let probe = |path: &str| Probe {
        http_get: Some(HTTPGetAction { path: Some(path.into()), port: IntOrString::Int(15021), ..Default::default() }),
        ..Default::default()
    };
    let port = |name: &str, port: i32| ContainerPort {
        name: Some(name.into()),
        container_port: port,
        protocol: Some("TCP".into()),
        ..Default::default()
    };
    Container {
        name: "waypoint".into(),
        image: Some(settings.image.clone()),
        env: Some(env_vars(gw, settings)),
        // Readiness first (the sandbox waits on the first port).
        ports: Some(if is_ingress(gw) {
            let mut ports = vec![port("status-port", 15021), port("metrics", 15020)];
            for (name, p) in listener_ports(gw) {
                ports.push(port(&name, i32::from(p)));
            }
            ports
        } else {
            vec![port("mesh", 15008), port("status-port", 15021), port("metrics", 15020)]
        }),
        readiness_probe: Some(probe("/healthz/ready")),
        liveness_probe: Some(probe("/healthz/live")),
        // The token and root the waypoint's defaults (TOKEN_FILE, ROOT_CERT) point at.
        volume_mounts: Some(vec![
            VolumeMount {
                name: "istio-token".into(),
                mount_path: "/var/run/secrets/tokens".into(),
                read_only: Some(true),
                ..Default::default()
            },
            VolumeMount {
                name: "istio-ca-root-cert".into(),
                mount_path: "/var/run/secrets/istio".into(),
                read_only: Some(true),
                ..Default::default()
            },
        ]),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The waypoint's environment: its pod, its Gateway, the mesh and tracing.
fn env_vars(gw: &Gateway, settings: &WaypointSettings) -> Vec<EnvVar> {
    let name = &gw.metadata.name;
    let env = |name: &str, value: &str| EnvVar { name: name.into(), value: Some(value.into()), ..Default::default() };
    let field = |name: &str, path: &str| EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector { field_path: path.into(), ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut vars = vec![
        field("POD_NAME", "metadata.name"),
        field("POD_NAMESPACE", "metadata.namespace"),
        field("POD_IP", "status.podIP"),
        field("NODE_NAME", "spec.nodeName"),
        env("GATEWAY_NAME", name),
        env("SERVICE_ACCOUNT", name),
        env("TRUST_DOMAIN", &settings.trust_domain),
        env("XDS_ADDRESS", &settings.xds_address),
        env("CONTROL_PLANE_ACCOUNT", &settings.control_plane_account),
        env("PATH_NORMALIZATION", settings.path_normalization.name()),
    ];
    if is_ingress(gw) {
        vars.push(env("PROXY_MODE", "ingress"));
    }
    let annotations = &gw.metadata.annotations;
    let otlp = annotations.get(OTLP_ENDPOINT_ANNOTATION).or(settings.otlp_endpoint.as_ref());
    if let Some(endpoint) = otlp {
        vars.push(env("OTLP_ENDPOINT", endpoint));
    }
    if let Some(sampling) = annotations.get(TRACE_SAMPLING_ANNOTATION) {
        vars.push(env("TRACE_SAMPLING", sampling));
    }
    vars
}

fn volumes(settings: &WaypointSettings) -> Vec<Volume> {
    vec![
        Volume {
            name: "istio-token".into(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(vec![VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        audience: Some(settings.token_audience.clone()),
                        expiration_seconds: Some(43_200),
                        path: "istio-token".into(),
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: "istio-ca-root-cert".into(),
            config_map: Some(ConfigMapVolumeSource { name: ROOT_CONFIGMAP.into(), ..Default::default() }),
            ..Default::default()
        },
    ]
}

/// An ingress Gateway's listener ports, each once, named `<protocol>-<port>` (always a valid,
/// unique port name); ports the proxy keeps for itself (15000-15099) are never published, as
/// the translation refuses such listeners.
fn listener_ports(gw: &Gateway) -> Vec<(String, u16)> {
    let mut out: Vec<(String, u16)> = Vec::new();
    for l in gw.spec.listeners.iter().filter(|l| !(15000..=15099).contains(&l.port)) {
        if !out.iter().any(|(_, p)| *p == l.port) {
            let protocol: String =
                l.protocol.to_ascii_lowercase().chars().filter(char::is_ascii_alphanumeric).take(8).collect();
            let protocol = if protocol.is_empty() { "port".to_owned() } else { protocol };
            out.push((format!("{protocol}-{}", l.port), l.port));
        }
    }
    out
}

fn service_spec(gw: &Gateway) -> ServiceSpec {
    let name = gw.metadata.name.as_str();
    let service_port = |name: &str, port: i32, app_protocol: Option<&str>| ServicePort {
        name: Some(name.into()),
        port,
        target_port: Some(IntOrString::Int(port)),
        protocol: Some("TCP".into()),
        app_protocol: app_protocol.map(Into::into),
        ..Default::default()
    };
    if is_ingress(gw) {
        let mut ports = vec![service_port("status-port", 15021, None)];
        ports.extend(listener_ports(gw).into_iter().map(|(n, p)| service_port(&n, i32::from(p), None)));
        return ServiceSpec {
            selector: Some([(keys::GATEWAY_NAME.to_owned(), name.to_owned())].into()),
            type_: Some("LoadBalancer".into()),
            // The client's own address reaches the gateway (policies on source IPs, the
            // per-client connection cap, x-forwarded-for), not a node's.
            external_traffic_policy: Some("Local".into()),
            ports: Some(ports),
            ..Default::default()
        };
    }
    ServiceSpec {
        selector: Some([(keys::GATEWAY_NAME.to_owned(), name.to_owned())].into()),
        ports: Some(vec![
            service_port("mesh", 15008, Some("all")),
            service_port("status-port", 15021, None),
            service_port("metrics", 15020, None),
        ]),
        ..Default::default()
    }
}

/// The waypoint Gateways in the store.
pub fn waypoint_gateways(store: &Store) -> impl Iterator<Item = &Gateway> {
    store.list(Kind::Gateway, None).filter_map(|o| match o {
        Object::Gateway(g) if WAYPOINT_CLASSES.contains(&g.spec.gateway_class_name.as_str()) => Some(g),
        _ => None,
    })
}

/// The Gateways the controller deploys a proxy for: waypoints and ingress gateways.
pub fn deployed_gateways(store: &Store) -> impl Iterator<Item = &Gateway> {
    store.list(Kind::Gateway, None).filter_map(|o| match o {
        Object::Gateway(g) if WAYPOINT_CLASSES.contains(&g.spec.gateway_class_name.as_str()) || is_ingress(g) => {
            Some(g)
        }
        _ => None,
    })
}

/// One multi-document YAML text of a Gateway's objects.
pub fn manifest(gw: &Gateway, settings: &WaypointSettings) -> Result<String, serde_yaml::Error> {
    let (sa, deployment, service) = objects(gw, settings);
    let docs = [
        serde_yaml::to_string(&typed("v1", "ServiceAccount", &sa)?)?,
        serde_yaml::to_string(&typed("apps/v1", "Deployment", &deployment)?)?,
        serde_yaml::to_string(&typed("v1", "Service", &service)?)?,
    ];
    Ok(docs.join("---\n"))
}

/// A k8s-openapi object as JSON with its `apiVersion` and `kind` (which its serialization
/// leaves out).
pub fn with_type_meta<T: serde::Serialize>(
    api_version: &str,
    kind: &str,
    o: &T,
) -> Result<serde_json::Value, serde_json::Error> {
    let mut v = serde_json::to_value(o)?;
    if let Some(map) = v.as_object_mut() {
        map.insert("apiVersion".into(), api_version.into());
        map.insert("kind".into(), kind.into());
    }
    Ok(v)
}

fn typed<T: serde::Serialize>(api_version: &str, kind: &str, o: &T) -> Result<serde_json::Value, serde_yaml::Error> {
    with_type_meta(api_version, kind, o).map_err(<serde_yaml::Error as serde::ser::Error>::custom)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::manifest::{parse_object, Parsed};

    pub(crate) fn gateway(yaml: &str) -> Gateway {
        let v: serde_json::Value = serde_yaml::from_str(yaml).unwrap();
        match parse_object("t", v).unwrap() {
            Parsed::Object(o) => match *o {
                Object::Gateway(g) => g,
                other => panic!("{other:?}"),
            },
            Parsed::Ignored { .. } => panic!("ignored"),
        }
    }

    pub(crate) fn settings() -> WaypointSettings {
        WaypointSettings {
            image: "ambit/waypoint:0.1.0".into(),
            xds_address: "10.0.0.1:15012".into(),
            trust_domain: "cluster.local".into(),
            otlp_endpoint: None,
            control_plane_account: "ambit-system/ambit-controller".into(),
            token_audience: "istio-ca".into(),
            image_pull_secrets: vec![],
            path_normalization: PathNormalization::MergeSlashes,
        }
    }

    #[test]
    fn a_gateway_becomes_account_deployment_and_service() {
        let gw = gateway("apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: waypoint, namespace: shop, uid: u-1}\nspec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}");
        let (sa, d, s) = objects(&gw, &settings());
        assert_eq!(sa.metadata.name.as_deref(), Some("waypoint"));
        let spec = d.spec.unwrap();
        let pod = spec.template.spec.unwrap();
        assert_eq!(pod.service_account_name.as_deref(), Some("waypoint"));
        let labels = spec.template.metadata.unwrap().labels.unwrap();
        assert_eq!(labels[keys::DATAPLANE_MODE], "none", "waypoints are not captured");
        assert_eq!(labels[keys::GATEWAY_NAME], "waypoint");
        let selector = s.spec.as_ref().unwrap().selector.clone().unwrap();
        assert!(selector.iter().all(|(k, v)| labels.get(k) == Some(v)), "the Service selects the pods");
        let ports: Vec<i32> = s.spec.unwrap().ports.unwrap().iter().map(|p| p.port).collect();
        assert_eq!(ports, [15008, 15021, 15020]);
        assert_eq!(d.metadata.owner_references.unwrap()[0].uid, "u-1", "garbage-collected with the Gateway");
        let env = pod.containers[0].env.clone().unwrap();
        assert!(env.iter().any(|e| e.name == "XDS_ADDRESS" && e.value.as_deref() == Some("10.0.0.1:15012")));
        assert!(!env.iter().any(|e| e.name == "OTLP_ENDPOINT"), "no tracing unless configured");
        assert!(
            env.iter().any(|e| e.name == "PATH_NORMALIZATION" && e.value.as_deref() == Some("MERGE_SLASHES")),
            "the mesh's path normalization reaches the waypoint"
        );
        let traced = gateway("apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: w, namespace: shop, annotations: {ambit.dev/otlp-endpoint: 'http://c:4318', ambit.dev/trace-sampling: '100'}}\nspec: {gatewayClassName: ambit-waypoint}");
        let (_, d, _) = objects(&traced, &settings());
        let env = d.spec.unwrap().template.spec.unwrap().containers[0].env.clone().unwrap();
        assert!(env.iter().any(|e| e.name == "OTLP_ENDPOINT" && e.value.as_deref() == Some("http://c:4318")));
        assert!(env.iter().any(|e| e.name == "TRACE_SAMPLING" && e.value.as_deref() == Some("100")));
    }
}
