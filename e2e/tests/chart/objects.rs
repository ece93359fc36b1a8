//! The chart's rendered manifests read into their Kubernetes types: every object must survive
//! its type with no field unknown or dropped, carry the chart's labels and sit in the release
//! namespace unless cluster-scoped. It owns the typed `Rendered` set; running helm is `helm`'s,
//! and what the objects must agree with is the test's.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::Value;

use crate::helm;

/// The rendered objects, as JSON values.
pub fn render(namespace: &str, values: Option<&Path>) -> Vec<Value> {
    let text = helm::template(namespace, values).unwrap_or_else(|e| panic!("rendering failed: {e}"));
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| serde::Deserialize::deserialize(doc).unwrap_or_else(|e| panic!("rendered YAML: {e}\n{text}")))
        .filter(|v: &Value| !v.is_null())
        .collect()
}

/// Paths where two JSON values differ.
fn diff(path: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for k in x.keys().chain(y.keys()).collect::<BTreeSet<_>>() {
                match (x.get(k), y.get(k)) {
                    (Some(p), Some(q)) => diff(&format!("{path}.{k}"), p, q, out),
                    (Some(_), None) => out.push(format!("{path}.{k}: dropped by the typed object")),
                    (None, Some(_)) => out.push(format!("{path}.{k}: added by the typed object")),
                    (None, None) => {}
                }
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                diff(&format!("{path}[{i}]"), p, q, out);
            }
        }
        (Value::Number(x), Value::Number(y)) if x.as_f64() == y.as_f64() => {}
        _ if a == b => {}
        _ => out.push(format!("{path}: {a} became {b}")),
    }
}

/// The Gateway API's GatewayClass, which k8s-openapi does not carry: every field it has.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GatewayClass {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: GatewayClassSpec,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GatewayClassSpec {
    pub controller_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// Reads `v` as `T` and back; the two must be the same object.
fn round_trip<T: serde::de::DeserializeOwned + serde::Serialize>(v: &Value) -> T {
    let name = format!("{} {}", v["kind"], v["metadata"]["name"]);
    let typed: T = serde_path_to_error::deserialize(v.clone()).unwrap_or_else(|e| panic!("{name}: {e}"));
    let back = serde_json::to_value(&typed).expect("serializing");
    let mut out = Vec::new();
    diff("", v, &back, &mut out);
    assert!(out.is_empty(), "{name} does not survive its type:\n{}", out.join("\n"));
    typed
}

#[derive(Default)]
pub struct Rendered {
    pub service_accounts: BTreeMap<String, ServiceAccount>,
    pub deployments: BTreeMap<String, Deployment>,
    pub daemonsets: BTreeMap<String, DaemonSet>,
    pub services: BTreeMap<String, Service>,
    pub cluster_roles: Vec<ClusterRole>,
    pub cluster_role_bindings: Vec<ClusterRoleBinding>,
    pub roles: Vec<Role>,
    pub role_bindings: Vec<RoleBinding>,
    pub pdbs: Vec<PodDisruptionBudget>,
    pub crds: Vec<CustomResourceDefinition>,
    pub gateway_classes: Vec<GatewayClass>,
}

pub fn typed(namespace: &str, objects: &[Value]) -> Rendered {
    let mut r = Rendered::default();
    for v in objects {
        let kind = (v["apiVersion"].as_str().unwrap_or(""), v["kind"].as_str().unwrap_or(""));
        let name = v["metadata"]["name"].as_str().unwrap_or("").to_owned();
        assert_eq!(v["metadata"]["labels"]["app.kubernetes.io/part-of"], "ambit", "{kind:?} {name}: chart labels");
        let namespaced =
            !matches!(kind.1, "ClusterRole" | "ClusterRoleBinding" | "CustomResourceDefinition" | "GatewayClass");
        if namespaced {
            assert_eq!(v["metadata"]["namespace"], namespace, "{kind:?} {name}: in the release namespace");
        } else {
            assert!(v["metadata"].get("namespace").is_none(), "{kind:?} {name}: cluster-scoped");
        }
        match kind {
            ("v1", "ServiceAccount") => drop(r.service_accounts.insert(name, round_trip(v))),
            ("v1", "Service") => drop(r.services.insert(name, round_trip(v))),
            ("apps/v1", "Deployment") => drop(r.deployments.insert(name, round_trip(v))),
            ("apps/v1", "DaemonSet") => drop(r.daemonsets.insert(name, round_trip(v))),
            ("rbac.authorization.k8s.io/v1", "ClusterRole") => r.cluster_roles.push(round_trip(v)),
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => r.cluster_role_bindings.push(round_trip(v)),
            ("rbac.authorization.k8s.io/v1", "Role") => r.roles.push(round_trip(v)),
            ("rbac.authorization.k8s.io/v1", "RoleBinding") => r.role_bindings.push(round_trip(v)),
            ("policy/v1", "PodDisruptionBudget") => r.pdbs.push(round_trip(v)),
            ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => r.crds.push(round_trip(v)),
            ("gateway.networking.k8s.io/v1", "GatewayClass") => r.gateway_classes.push(round_trip(v)),
            other => panic!("the chart renders {other:?} {name}, which this test does not know"),
        }
    }
    r
}
