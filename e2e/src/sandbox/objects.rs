//! The recorded API server store: the controller's manifest directory, where objects are
//! written one file each (`<kind>_<ns>_<name>.yaml`), and the reading of manifest files into
//! objects with their origin.
//!
//! Owns storage and parsing only; what applying an object of a kind does is `apply`'s.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use super::handle::{setup, Sandbox, SandboxError};

pub(super) fn identity_of(origin: &str, obj: &Value) -> Result<(String, String, String), SandboxError> {
    let field = |f: &str| SandboxError::Manifest {
        origin: origin.to_owned(),
        message: format!("{f} is missing or not a string"),
    };
    let kind = obj.get("kind").and_then(Value::as_str).ok_or_else(|| field("kind"))?.to_owned();
    let name = obj.pointer("/metadata/name").and_then(Value::as_str).ok_or_else(|| field("metadata.name"))?.to_owned();
    let ns = match kind.as_str() {
        "Namespace" => String::new(),
        _ => obj.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("default").to_owned(),
    };
    Ok((kind, ns, name))
}

pub(super) fn typed<T: serde::de::DeserializeOwned>(origin: &str, kind: &str, obj: &Value) -> Result<T, SandboxError> {
    serde_path_to_error::deserialize(obj).map_err(|e| SandboxError::Manifest {
        origin: format!("{origin}: {kind} {}", obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("?")),
        message: format!("{}: {}", e.path(), e.inner()),
    })
}

/// Every object of a file, or of every YAML file in a directory (sorted), with its origin.
pub fn read_objects(path: &Path) -> Result<Vec<(String, Value)>, SandboxError> {
    let mut files = Vec::new();
    if path.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| SandboxError::Setup(format!("{}: {e}", path.display())))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
            .collect();
        entries.sort();
        files.extend(entries);
    } else {
        files.push(path.to_owned());
    }
    let mut out = Vec::new();
    for file in files {
        let text =
            std::fs::read_to_string(&file).map_err(|e| SandboxError::Setup(format!("{}: {e}", file.display())))?;
        for (i, doc) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let origin = format!("{} (document {})", file.display(), i + 1);
            let value = Value::deserialize(doc)
                .map_err(|e| SandboxError::Manifest { origin: origin.clone(), message: e.to_string() })?;
            if !value.is_null() {
                out.push((origin, value));
            }
        }
    }
    // Namespaces and service accounts first, services before the pods that use their names.
    let rank = |v: &Value| match v.get("kind").and_then(Value::as_str) {
        Some("Namespace") => 0,
        Some("ServiceAccount") => 1,
        Some("Service") => 2,
        Some("Deployment" | "Pod") => 4,
        _ => 3,
    };
    out.sort_by_key(|(_, v)| rank(v));
    Ok(out)
}

impl Sandbox {
    pub(super) fn manifests(&self) -> PathBuf {
        self.opts.root.join("manifests")
    }

    pub(super) fn object_file(&self, kind: &str, ns: &str, name: &str) -> PathBuf {
        self.manifests().join(format!("{}_{}_{}.yaml", kind.to_lowercase(), if ns.is_empty() { "-" } else { ns }, name))
    }

    pub(super) fn write_object(&self, kind: &str, ns: &str, name: &str, obj: &Value) -> Result<(), SandboxError> {
        let path = self.object_file(kind, ns, name);
        let tmp = self.manifests().join(format!(".{}.tmp", path.file_name().and_then(|f| f.to_str()).unwrap_or("x")));
        std::fs::write(&tmp, serde_yaml::to_string(obj).map_err(setup)?).map_err(setup)?;
        std::fs::rename(&tmp, &path).map_err(setup)
    }
}
