//! What applying or deleting one object does, by kind — the API server and its workload
//! controllers: a Deployment scales its pods and updates their labels, a Pod is created or
//! relabelled, a Service gets its VIP and ports, anything else is stored for the controller.
//!
//! Owns the dispatch by kind; the pods themselves are `pods`', the store is `objects`'.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use serde_json::Value;

use super::handle::{Sandbox, SandboxError};
use super::objects::{identity_of, typed};
use super::record::ServiceState;

/// The object being applied, for errors that name it.
struct Target<'a> {
    /// The file and document it came from.
    origin: &'a str,
    kind: &'a str,
    ns: &'a str,
    name: &'a str,
}

impl Target<'_> {
    /// An error about `field` of this object.
    fn at(&self, field: &str, msg: String) -> SandboxError {
        SandboxError::Manifest {
            origin: format!("{}: {} {}/{}", self.origin, self.kind, self.ns, self.name),
            message: format!("{field}: {msg}"),
        }
    }
}

impl Sandbox {
    /// Applies one object: what the API server and its controllers do for its kind.
    pub(super) fn apply_object(&mut self, origin: &str, obj: Value) -> Result<(), SandboxError> {
        let (kind, ns, name) = identity_of(origin, &obj)?;
        let of = Target { origin, kind: &kind, ns: &ns, name: &name };
        match kind.as_str() {
            "Deployment" => self.apply_deployment(&of, &obj),
            "Pod" => self.apply_pod(&of, &obj),
            "Service" => self.apply_service(&of, obj),
            _ => self.write_object(&kind, &ns, &name, &obj),
        }
    }

    /// A Deployment: its replicas scale, template label changes reach its pods' objects.
    fn apply_deployment(&mut self, of: &Target<'_>, obj: &Value) -> Result<(), SandboxError> {
        let (ns, name) = (of.ns, of.name);
        let d: Deployment = typed(of.origin, of.kind, obj)?;
        let spec = d.spec.ok_or_else(|| of.at("spec", "missing".into()))?;
        let replicas =
            usize::try_from(spec.replicas.unwrap_or(1)).map_err(|_| of.at("spec.replicas", "negative".into()))?;
        let template_spec = spec.template.spec.ok_or_else(|| of.at("spec.template.spec", "missing".into()))?;
        let labels: BTreeMap<String, String> = spec.template.metadata.and_then(|m| m.labels).unwrap_or_default();
        let key = format!("{ns}/{name}");
        self.state.deployments.insert(key.clone(), obj.clone());
        let mut mine: Vec<String> =
            self.state.pods.iter().filter(|(_, p)| p.owner.as_deref() == Some(&key)).map(|(k, _)| k.clone()).collect();
        mine.sort();
        // Template changes (labels) reach existing pods' objects; replicas scale.
        while mine.len() > replicas {
            if let Some(k) = mine.pop() {
                self.delete_pod(&k)?;
            }
        }
        for k in &mine {
            if let Some(p) = self.state.pods.get_mut(k) {
                p.labels = labels.clone();
            }
            self.write_pod(k)?;
        }
        let mut index = 0;
        while mine.len() < replicas {
            let pod_name = format!("{name}-{index}");
            index += 1;
            if self.state.pods.contains_key(&format!("{ns}/{pod_name}")) {
                continue;
            }
            self.create_pod(ns, &pod_name, labels.clone(), &template_spec, Some(key.clone()))?;
            mine.push(format!("{ns}/{pod_name}"));
        }
        Ok(())
    }

    /// A Pod: created, or its labels updated.
    fn apply_pod(&mut self, of: &Target<'_>, obj: &Value) -> Result<(), SandboxError> {
        let (ns, name) = (of.ns, of.name);
        let p: Pod = typed(of.origin, of.kind, obj)?;
        let spec = p.spec.ok_or_else(|| of.at("spec", "missing".into()))?;
        let labels = p.metadata.labels.unwrap_or_default();
        let key = format!("{ns}/{name}");
        if let Some(existing) = self.state.pods.get_mut(&key) {
            existing.labels = labels;
            self.write_pod(&key)?;
        } else {
            self.create_pod(ns, name, labels, &spec, None)?;
        }
        Ok(())
    }

    /// A Service: its VIP (kept, the manifest's `clusterIP`, or the next free one) and ports,
    /// stored with the VIP for the controller.
    fn apply_service(&mut self, of: &Target<'_>, obj: Value) -> Result<(), SandboxError> {
        let (ns, name) = (of.ns, of.name);
        let s: Service = typed(of.origin, of.kind, &obj)?;
        let spec = s.spec.unwrap_or_default();
        let key = format!("{ns}/{name}");
        let vip = match (self.state.services.get(&key), spec.cluster_ip.as_deref()) {
            (_, Some(ip)) if ip != "None" && !ip.is_empty() => {
                ip.parse::<Ipv4Addr>().map_err(|e| of.at("spec.clusterIP", e.to_string()))?
            }
            (Some(existing), _) => existing.vip,
            _ => {
                let n = self.state.next_vip;
                self.state.next_vip += 1;
                Ipv4Addr::new(10, 96, (n >> 8) as u8, (n & 0xff) as u8)
            }
        };
        let mut ports = Vec::new();
        for (i, p) in spec.ports.unwrap_or_default().iter().enumerate() {
            let port =
                u16::try_from(p.port).map_err(|_| of.at(&format!("spec.ports[{i}].port"), "out of range".into()))?;
            let target = match &p.target_port {
                Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(t)) => u16::try_from(*t)
                    .map_err(|_| of.at(&format!("spec.ports[{i}].targetPort"), "out of range".into()))?,
                Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(s)) => {
                    return Err(of.at(
                        &format!("spec.ports[{i}].targetPort"),
                        format!("named port {s:?} is not supported by the sandbox"),
                    ))
                }
                None => port,
            };
            ports.push((port, target));
        }
        self.state.services.insert(
            key,
            ServiceState {
                namespace: ns.to_owned(),
                name: name.to_owned(),
                vip,
                selector: spec.selector.unwrap_or_default(),
                ports,
            },
        );
        let mut obj = obj;
        obj["spec"]["clusterIP"] = Value::String(vip.to_string());
        self.write_object(of.kind, ns, name, &obj)
    }

    /// Deletes one object: a Deployment takes its pods with it, a Pod is removed like a kubelet
    /// would, a Service loses its VIP.
    pub(super) fn delete_object(&mut self, kind: &str, ns: &str, name: &str) -> Result<(), SandboxError> {
        match kind {
            "Deployment" => {
                self.state.deployments.remove(&format!("{ns}/{name}"));
                let owner = format!("{ns}/{name}");
                let pods: Vec<String> = self
                    .state
                    .pods
                    .iter()
                    .filter(|(_, p)| p.owner.as_deref() == Some(owner.as_str()))
                    .map(|(k, _)| k.clone())
                    .collect();
                for key in pods {
                    self.delete_pod(&key)?;
                }
            }
            "Pod" => self.delete_pod(&format!("{ns}/{name}"))?,
            "Service" => {
                self.state.services.remove(&format!("{ns}/{name}"));
                let _ = std::fs::remove_file(self.object_file(kind, ns, name));
            }
            _ => {
                let _ = std::fs::remove_file(self.object_file(kind, ns, name));
            }
        }
        Ok(())
    }
}
