//! Look-ups in a rendered pod spec — containers, named ports, the volume behind a mounted path,
//! a projected token's audience, selectors — and a container's environment turned into the
//! command line of the daemon that reads it. It judges nothing about the chart itself.

use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::api::core::v1::{Container, EnvVar, PodSpec, Volume};

pub fn pod_spec<'a>(name: &str, spec: Option<&'a PodSpec>) -> &'a PodSpec {
    spec.unwrap_or_else(|| panic!("{name}: no pod spec"))
}

/// The container's environment as command-line flags of the binary whose arguments `cmd`
/// describes: every variable must be one the binary reads. `valueFrom` field references get
/// the values Kubernetes would give them.
pub fn env_to_args(cmd: &clap::Command, container: &Container, pod: &PodSpec, namespace: &str) -> Vec<String> {
    let mut args = vec![cmd.get_name().to_owned()];
    for EnvVar { name, value, value_from } in container.env.as_deref().unwrap_or_default() {
        let value = match (value, value_from) {
            (Some(v), None) => v.clone(),
            (None, Some(from)) => {
                let path = from.field_ref.as_ref().map(|f| f.field_path.as_str()).unwrap_or_default();
                match path {
                    "metadata.name" => format!("{}-7d9f-abcde", container.name),
                    "metadata.namespace" => namespace.to_owned(),
                    "spec.serviceAccountName" => pod.service_account_name.clone().unwrap_or_default(),
                    "spec.nodeName" => "node-1".to_owned(),
                    "status.podIP" => "10.0.0.7".to_owned(),
                    other => panic!("{}: {name} from unsupported {other:?}", container.name),
                }
            }
            other => panic!("{}: {name} is {other:?}", container.name),
        };
        let arg = cmd.get_arguments().find(|a| a.get_env().is_some_and(|e| e == name.as_str())).unwrap_or_else(|| {
            panic!("{}: the chart sets {name}, which `{}` does not read", container.name, cmd.get_name())
        });
        args.push(format!("--{}", arg.get_long().expect("env args have long names")));
        args.push(value);
    }
    args
}

pub fn container<'a>(pod: &'a PodSpec, name: &str) -> &'a Container {
    pod.containers.iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no container {name}"))
}

pub fn port_named(c: &Container, name: &str) -> i32 {
    c.ports
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|p| p.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("{}: no port {name}", c.name))
        .container_port
}

/// The volume mounted at exactly `dir` in the container.
fn volume_at<'a>(pod: &'a PodSpec, c: &Container, dir: &Path) -> &'a Volume {
    let mount = c
        .volume_mounts
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|m| Path::new(&m.mount_path) == dir)
        .unwrap_or_else(|| panic!("{}: nothing mounted at {}", c.name, dir.display()));
    pod.volumes
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|v| v.name == mount.name)
        .unwrap_or_else(|| panic!("{}: no volume {}", c.name, mount.name))
}

/// The volume mounted at the directory holding `file`, and the file's name in it.
pub fn volume_of<'a>(pod: &'a PodSpec, c: &Container, file: &Path) -> (&'a Volume, String) {
    let volume = volume_at(pod, c, file.parent().expect("a file in a directory"));
    (volume, file.file_name().expect("file name").to_string_lossy().into_owned())
}

/// The host path mounted at exactly `dir` in the container.
pub fn host_path_at(pod: &PodSpec, c: &Container, dir: &Path) -> String {
    let volume = volume_at(pod, c, dir);
    volume.host_path.as_ref().unwrap_or_else(|| panic!("{}: {} is not a host path", c.name, dir.display())).path.clone()
}

pub fn token_audience(volume: &Volume, file: &str) -> String {
    let sources = volume.projected.as_ref().and_then(|p| p.sources.as_ref()).expect("a projected token volume");
    let token = sources.iter().find_map(|s| s.service_account_token.as_ref()).expect("a service account token");
    assert_eq!(token.path, file, "the token file is the projected path");
    token.audience.clone().expect("an audience")
}

pub fn assert_selects(what: &str, selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) {
    assert!(!selector.is_empty(), "{what}: empty selector");
    for (k, v) in selector {
        assert_eq!(labels.get(k), Some(v), "{what}: selector {k}={v} does not match the pod labels");
    }
}
