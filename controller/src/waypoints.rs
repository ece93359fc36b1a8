//! Waypoint deployment: every Gateway of a waypoint class becomes a ServiceAccount, a
//! Deployment running the waypoint and a Service in front of it (15008 HBONE, 15021, 15020),
//! named after the Gateway and labelled `gateway.networking.k8s.io/gateway-name`, as istiod
//! deploys its waypoints.
//!
//! In directory mode the objects are written, one file per Gateway, into `--waypoint-dir`,
//! where whoever plays the cluster (the sandbox) runs them; files of Gateways that are gone
//! are removed. The same objects are what Kubernetes mode applies.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction,
    LocalObjectReference, ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ProjectedVolumeSource, SeccompProfile, SecurityContext, Service, ServiceAccount, ServiceAccountTokenProjection,
    ServicePort, ServiceSpec, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::model::{keys, Gateway, Kind, Object, WAYPOINT_CLASSES};
use crate::source::apply::ROOT_CONFIGMAP;
use crate::store::Store;

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
    pub path_normalization: crate::config::PathNormalization,
}

/// Gateway annotations that tune its waypoint's tracing.
pub const OTLP_ENDPOINT_ANNOTATION: &str = "ambit.dev/otlp-endpoint";
pub const TRACE_SAMPLING_ANNOTATION: &str = "ambit.dev/trace-sampling";

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
    let env = |name: &str, value: &str| EnvVar { name: name.into(), value: Some(value.into()), ..Default::default() };
    let field = |name: &str, path: &str| EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector { field_path: path.into(), ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    };
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
    let container = Container {
        name: "waypoint".into(),
        image: Some(settings.image.clone()),
        env: Some({
            let mut vars = vec![
                field("POD_NAME", "metadata.name"),
                field("POD_NAMESPACE", "metadata.namespace"),
                field("POD_IP", "status.podIP"),
                field("NODE_NAME", "spec.nodeName"),
                env("GATEWAY_NAME", &name),
                env("SERVICE_ACCOUNT", &name),
                env("TRUST_DOMAIN", &settings.trust_domain),
                env("XDS_ADDRESS", &settings.xds_address),
                env("CONTROL_PLANE_ACCOUNT", &settings.control_plane_account),
                env("PATH_NORMALIZATION", settings.path_normalization.name()),
            ];
            let annotations = &gw.metadata.annotations;
            let otlp = annotations.get(OTLP_ENDPOINT_ANNOTATION).or(settings.otlp_endpoint.as_ref());
            if let Some(endpoint) = otlp {
                vars.push(env("OTLP_ENDPOINT", endpoint));
            }
            if let Some(sampling) = annotations.get(TRACE_SAMPLING_ANNOTATION) {
                vars.push(env("TRACE_SAMPLING", sampling));
            }
            vars
        }),
        ports: Some(vec![port("mesh", 15008), port("status-port", 15021), port("metrics", 15020)]),
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
    };
    let volumes = vec![
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
    ];
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
                spec: Some(PodSpec {
                    service_account_name: Some(name.clone()),
                    containers: vec![container],
                    volumes: Some(volumes),
                    // The waypoint needs no Kubernetes API access.
                    automount_service_account_token: Some(false),
                    image_pull_secrets: (!settings.image_pull_secrets.is_empty()).then(|| {
                        settings
                            .image_pull_secrets
                            .iter()
                            .map(|name| LocalObjectReference { name: name.clone() })
                            .collect()
                    }),
                    security_context: Some(PodSecurityContext {
                        run_as_user: Some(1337),
                        run_as_group: Some(1337),
                        seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), ..Default::default() }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    };
    let service_port = |name: &str, port: i32, app_protocol: Option<&str>| ServicePort {
        name: Some(name.into()),
        port,
        target_port: Some(IntOrString::Int(port)),
        protocol: Some("TCP".into()),
        app_protocol: app_protocol.map(Into::into),
        ..Default::default()
    };
    let service = Service {
        metadata: meta(&labels),
        spec: Some(ServiceSpec {
            selector: Some([(keys::GATEWAY_NAME.to_owned(), name.clone())].into()),
            ports: Some(vec![
                service_port("mesh", 15008, Some("all")),
                service_port("status-port", 15021, None),
                service_port("metrics", 15020, None),
            ]),
            ..Default::default()
        }),
        ..Default::default()
    };
    (ServiceAccount { metadata: meta(&labels), ..Default::default() }, deployment, service)
}

/// The waypoint Gateways in the store.
pub fn waypoint_gateways(store: &Store) -> impl Iterator<Item = &Gateway> {
    store.list(Kind::Gateway, None).filter_map(|o| match o {
        Object::Gateway(g) if WAYPOINT_CLASSES.contains(&g.spec.gateway_class_name.as_str()) => Some(g),
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

/// The status the controller reports, without timestamps (the writer adds them), keyed by
/// (kind, namespace, name): each waypoint Gateway's `Accepted` and `Programmed` conditions and
/// its address; for each Service asking for a waypoint, Istio's `istio.io/WaypointBound`.
pub fn statuses(
    store: &Store,
    mesh: &crate::translate::MeshSettings,
) -> BTreeMap<(Kind, String, String), serde_json::Value> {
    let mut out = BTreeMap::new();
    let condition = |type_: &str, ok: bool, reason: &str, message: String| serde_json::json!({"type": type_, "status": if ok { "True" } else { "False" }, "reason": reason, "message": message});
    for gw in waypoint_gateways(store) {
        let ns = gw.metadata.namespace.clone().unwrap_or_default();
        let name = gw.metadata.name.clone();
        let service = store.services(Some(&ns)).find(|s| s.metadata.name == name);
        let ip = service.and_then(|s| s.spec.cluster_ip.clone()).filter(|ip| ip.parse::<std::net::IpAddr>().is_ok());
        let address = match &ip {
            Some(ip) => serde_json::json!({"type": "IPAddress", "value": ip}),
            None => serde_json::json!({"type": "Hostname", "value": mesh.hostname(&name, &ns)}),
        };
        let programmed = service.is_some();
        out.insert(
            (Kind::Gateway, ns.clone(), name.clone()),
            serde_json::json!({
                "addresses": [address],
                "conditions": [
                    condition("Accepted", true, "Accepted", "accepted by ambit-controller as a waypoint".into()),
                    if programmed {
                        condition("Programmed", true, "Programmed", format!("waypoint Service {ns}/{name} deployed"))
                    } else {
                        condition("Programmed", false, "Pending", format!("waiting for the waypoint Service {ns}/{name}"))
                    },
                ],
            }),
        );
    }
    for svc in store.services(None) {
        if svc.metadata.labels.contains_key(keys::GATEWAY_NAME) {
            continue;
        }
        let ns = svc.metadata.namespace.clone().unwrap_or_default();
        let Some((wp_ns, wp)) = crate::translate::workload::requested_waypoint(&svc.metadata.labels, &ns, store) else {
            continue;
        };
        let bound = crate::translate::workload::waypoint_gateway(&svc.metadata.labels, &ns, false, store).is_some();
        let cond = if bound {
            condition("istio.io/WaypointBound", true, "WaypointAccepted", format!("bound to waypoint {wp_ns}/{wp}"))
        } else {
            condition(
                "istio.io/WaypointBound",
                false,
                "WaypointNotFound",
                format!("waypoint {wp_ns}/{wp} does not exist or does not serve services"),
            )
        };
        out.insert((Kind::Service, ns, svc.metadata.name.clone()), serde_json::json!({"conditions": [cond]}));
    }
    out
}

/// Keeps what the controller deploys in step with the store, after every index batch.
pub trait Deploy: Send {
    fn sync(&mut self, store: &Store);
    /// Forget what was written (a new leader writes everything again).
    fn reset(&mut self) {}
}

impl Deploy for DirDeployer {
    fn sync(&mut self, store: &Store) {
        DirDeployer::sync(self, store);
    }
}

/// Directory mode: keeps `<dir>/<namespace>.<gateway>.yaml` equal to the waypoints' objects.
#[derive(Debug)]
pub struct DirDeployer {
    dir: PathBuf,
    settings: WaypointSettings,
    written: BTreeMap<PathBuf, String>,
}

impl DirDeployer {
    pub fn new(dir: &Path, settings: WaypointSettings) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(DirDeployer { dir: dir.to_owned(), settings, written: BTreeMap::new() })
    }

    /// Writes what changed and removes what is gone (also files left by an earlier run).
    pub fn sync(&mut self, store: &Store) {
        let mut desired = BTreeMap::new();
        for gw in waypoint_gateways(store) {
            let ns = gw.metadata.namespace.as_deref().unwrap_or_default();
            let path = self.dir.join(format!("{ns}.{}.yaml", gw.metadata.name));
            match manifest(gw, &self.settings) {
                Ok(text) => {
                    desired.insert(path, text);
                }
                Err(e) => tracing::error!(gateway = %gw.metadata.name, error = %e, "rendering waypoint objects"),
            }
        }
        for (path, text) in &desired {
            if self.written.get(path) == Some(text) {
                continue;
            }
            let tmp = path.with_extension("tmp");
            match std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, path)) {
                Ok(()) => {
                    tracing::info!(path = %path.display(), "waypoint objects written");
                    self.written.insert(path.clone(), text.clone());
                }
                Err(e) => tracing::error!(path = %path.display(), error = %e, "writing waypoint objects"),
            }
        }
        let present: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map(|rd| rd.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "yaml")).collect())
            .unwrap_or_default();
        for path in present {
            if !desired.contains_key(&path) {
                match std::fs::remove_file(&path) {
                    Ok(()) => tracing::info!(path = %path.display(), "waypoint objects removed"),
                    Err(e) => tracing::error!(path = %path.display(), error = %e, "removing waypoint objects"),
                }
                self.written.remove(&path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{parse_object, Parsed};

    fn gateway(yaml: &str) -> Gateway {
        let v: serde_json::Value = serde_yaml::from_str(yaml).unwrap();
        match parse_object("t", v).unwrap() {
            Parsed::Object(o) => match *o {
                Object::Gateway(g) => g,
                other => panic!("{other:?}"),
            },
            Parsed::Ignored { .. } => panic!("ignored"),
        }
    }

    fn settings() -> WaypointSettings {
        WaypointSettings {
            image: "ambit/waypoint:0.1.0".into(),
            xds_address: "10.0.0.1:15012".into(),
            trust_domain: "cluster.local".into(),
            otlp_endpoint: None,
            control_plane_account: "ambit-system/ambit-controller".into(),
            token_audience: "istio-ca".into(),
            image_pull_secrets: vec![],
            path_normalization: crate::config::PathNormalization::MergeSlashes,
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

    #[test]
    fn status_of_gateways_and_bound_services() {
        let mut store = Store::default();
        let add = |store: &mut Store, yaml: &str| {
            let v: serde_json::Value = serde_yaml::from_str(yaml).unwrap();
            if let Parsed::Object(o) = parse_object("t", v).unwrap() {
                store.upsert(*o);
            }
        };
        add(
            &mut store,
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {istio.io/use-waypoint: waypoint}}",
        );
        add(&mut store, "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: waypoint, namespace: shop}\nspec: {gatewayClassName: ambit-waypoint}");
        add(
            &mut store,
            "apiVersion: v1\nkind: Service\nmetadata: {name: reviews, namespace: shop}\nspec: {ports: [{port: 80}]}",
        );
        add(&mut store, "apiVersion: v1\nkind: Service\nmetadata: {name: other, namespace: shop, labels: {istio.io/use-waypoint: missing}}\nspec: {ports: [{port: 80}]}");
        let mesh = crate::translate::MeshSettings::default();
        let s = statuses(&store, &mesh);
        let gw = &s[&(Kind::Gateway, "shop".into(), "waypoint".into())];
        assert_eq!(gw["conditions"][1]["status"], "False", "no Service yet: not programmed");
        assert_eq!(gw["addresses"][0]["value"], "waypoint.shop.svc.cluster.local");
        assert_eq!(s[&(Kind::Service, "shop".into(), "reviews".into())]["conditions"][0]["status"], "True");
        assert_eq!(s[&(Kind::Service, "shop".into(), "other".into())]["conditions"][0]["reason"], "WaypointNotFound");
        add(&mut store, "apiVersion: v1\nkind: Service\nmetadata: {name: waypoint, namespace: shop, labels: {gateway.networking.k8s.io/gateway-name: waypoint}}\nspec: {clusterIP: 10.96.0.9, ports: [{port: 15008}]}");
        let s = statuses(&store, &mesh);
        let gw = &s[&(Kind::Gateway, "shop".into(), "waypoint".into())];
        assert_eq!(gw["conditions"][1]["status"], "True");
        assert_eq!(gw["addresses"][0], serde_json::json!({"type": "IPAddress", "value": "10.96.0.9"}));
        assert!(
            !s.contains_key(&(Kind::Service, "shop".into(), "waypoint".into())),
            "the waypoint's own Service is not bound"
        );
    }

    #[test]
    fn directory_mode_writes_and_removes_files() {
        let dir = std::env::temp_dir().join(format!("ambit-waypoints-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut deployer = DirDeployer::new(&dir, settings()).unwrap();
        let mut store = Store::default();
        let gw = gateway("apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: wp, namespace: a}\nspec: {gatewayClassName: ambit-waypoint}");
        store.upsert(Object::Gateway(gw.clone()));
        let other = gateway("apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: ingress, namespace: a}\nspec: {gatewayClassName: istio}");
        store.upsert(Object::Gateway(other));
        deployer.sync(&store);
        let text = std::fs::read_to_string(dir.join("a.wp.yaml")).unwrap();
        assert!(
            text.contains("kind: Deployment")
                && text.contains("kind: Service\n")
                && text.contains("kind: ServiceAccount")
        );
        assert!(!dir.join("a.ingress.yaml").exists(), "only waypoint classes are deployed");
        store.remove(&Object::Gateway(gw).key());
        deployer.sync(&store);
        assert!(!dir.join("a.wp.yaml").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
