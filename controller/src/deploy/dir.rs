//! Directory mode: the waypoints' objects written, one file per Gateway, into
//! `--waypoint-dir`, where whoever plays the cluster (the sandbox) runs them; files of Gateways
//! that are gone are removed. What the objects are is `waypoint_objects`' business.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::deploy::waypoint_objects::{deployed_gateways, manifest, WaypointSettings};
use crate::deploy::Deploy;
use crate::store::Store;

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
        for gw in deployed_gateways(store) {
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
    use crate::deploy::waypoint_objects::tests::{gateway, settings};
    use crate::model::Object;

    #[test]
    fn directory_mode_writes_and_removes_files() {
        let dir = std::env::temp_dir().join(format!("ambit-waypoints-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut deployer = DirDeployer::new(&dir, settings()).unwrap();
        let mut store = Store::default();
        let gw = gateway("apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: wp, namespace: a}\nspec: {gatewayClassName: ambit-waypoint}");
        store.upsert(Object::Gateway(gw.clone()));
        let ingress = gateway("apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: ingress, namespace: a}\nspec: {gatewayClassName: istio, listeners: [{name: web, port: 80, protocol: HTTP}]}");
        store.upsert(Object::Gateway(ingress));
        let foreign = gateway("apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: edge, namespace: a}\nspec: {gatewayClassName: some-other-vendor}");
        store.upsert(Object::Gateway(foreign));
        deployer.sync(&store);
        let text = std::fs::read_to_string(dir.join("a.wp.yaml")).unwrap();
        assert!(
            text.contains("kind: Deployment")
                && text.contains("kind: Service\n")
                && text.contains("kind: ServiceAccount")
        );
        let ingress = std::fs::read_to_string(dir.join("a.ingress.yaml")).unwrap();
        assert!(ingress.contains("PROXY_MODE") && ingress.contains("type: LoadBalancer"), "{ingress}");
        assert!(!dir.join("a.edge.yaml").exists(), "only our classes are deployed");
        store.remove(&Object::Gateway(gw).key());
        deployer.sync(&store);
        assert!(!dir.join("a.wp.yaml").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
