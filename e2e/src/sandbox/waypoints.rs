//! Waypoints: running what the controller deploys for waypoint Gateways, as the Kubernetes API
//! server and its controllers would — the objects of each file in the controller's
//! `waypoints/` directory are applied, and those of files that are gone deleted.
//!
//! Owns the waypoint files and which objects came from them; applying the objects is
//! `apply`'s.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

// The `gatewayClassName`s whose Gateways the controller deploys (waypoints and ingress
// gateways), as it spells them.
use ambit_shared::api::{INGRESS_CLASSES, WAYPOINT_CLASSES};

use super::handle::{say, setup, Sandbox, SandboxError};
use super::objects::{identity_of, read_objects};

impl Sandbox {
    /// Runs what the controller deploys for waypoint Gateways (the role of the Kubernetes API
    /// server and its controllers): waits until the controller's `waypoints/` directory has one
    /// file per waypoint Gateway in the manifests, applies new files' objects and deletes the
    /// objects of files that are gone.
    pub(super) fn sync_waypoints(&mut self) -> Result<(), SandboxError> {
        let mut expected = BTreeSet::new();
        for entry in std::fs::read_dir(self.manifests()).map_err(setup)?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with("gateway_") {
                continue;
            }
            for (_, obj) in read_objects(&entry.path())? {
                let class = obj["spec"]["gatewayClassName"].as_str().unwrap_or_default();
                if WAYPOINT_CLASSES.contains(&class) || INGRESS_CLASSES.contains(&class) {
                    let (_, ns, gw) = identity_of(&name, &obj)?;
                    expected.insert(format!("{ns}.{gw}.yaml"));
                }
            }
        }
        let dir = self.opts.root.join("waypoints");
        let deadline = Instant::now() + Duration::from_secs(30);
        let present = loop {
            let present: BTreeSet<String> = std::fs::read_dir(&dir)
                .map(|rd| {
                    rd.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .filter(|n| n.ends_with(".yaml"))
                        .collect()
                })
                .unwrap_or_default();
            if present == expected {
                break present;
            }
            if Instant::now() > deadline {
                return Err(SandboxError::Setup(format!(
                    "the controller did not deploy the waypoints {expected:?} within 30 s (has {present:?})"
                )));
            }
            std::thread::park_timeout(Duration::from_millis(50));
        };
        for gone in self.state.waypoints.keys().filter(|f| !present.contains(*f)).cloned().collect::<Vec<_>>() {
            say(&self.opts, &format!("waypoint {gone} removed"));
            for (kind, ns, name) in self.state.waypoints.remove(&gone).unwrap_or_default() {
                self.delete_object(&kind, &ns, &name)?;
            }
        }
        // What each file said when it was applied: a file that changed (an ingress Gateway's
        // new listener ports) is applied again, as a Deployment's rollout would.
        let applied = self.opts.root.join("waypoints.applied");
        std::fs::create_dir_all(&applied).map_err(setup)?;
        for file in present {
            let text = std::fs::read(dir.join(&file)).map_err(setup)?;
            if self.state.waypoints.contains_key(&file) {
                if std::fs::read(applied.join(&file)).ok().as_deref() == Some(&text[..]) {
                    continue;
                }
                say(&self.opts, &format!("waypoint {file} changed"));
                for (kind, ns, name) in self.state.waypoints.remove(&file).unwrap_or_default() {
                    self.delete_object(&kind, &ns, &name)?;
                }
            }
            std::fs::write(applied.join(&file), &text).map_err(setup)?;
            say(&self.opts, &format!("waypoint {file} deployed"));
            let mut made = Vec::new();
            for (origin, obj) in read_objects(&dir.join(&file))? {
                made.push(identity_of(&origin, &obj)?);
                self.apply_object(&origin, obj)?;
            }
            self.state.waypoints.insert(file, made);
        }
        Ok(())
    }
}
