//! The manifest-directory source: every `*.yaml`, `*.yml` and `*.json` file below a directory,
//! multi-document, any layout, polled for changes (a change to any file takes effect without
//! a restart; polling also sees editors' rename-into-place and files on any filesystem).
//!
//! A changed file is re-parsed whole; objects that left it are deleted, unchanged ones cost
//! nothing downstream. A file with a YAML syntax error keeps its last good objects (nothing is
//! deleted because of a typo). An object defined in two files is rejected in the second.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::index::Event;
use crate::manifest::{parse_object, split_yaml, Parsed, Rejection};
use crate::model::ObjectKey;
use crate::source::Rejections;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Signature {
    modified: Option<SystemTime>,
    len: u64,
}

#[derive(Debug, Default)]
struct FileState {
    signature: Option<Signature>,
    keys: BTreeSet<ObjectKey>,
}

pub struct DirSource {
    root: PathBuf,
    poll: Duration,
    files: BTreeMap<PathBuf, FileState>,
    /// Which file defines each object.
    owner: HashMap<ObjectKey, PathBuf>,
    rejections: Rejections,
}

fn is_manifest(path: &Path) -> bool {
    matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json"))
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue; // editor swap files, hidden directories
        }
        match entry.file_type() {
            Ok(t) if t.is_dir() => walk(&path, out),
            Ok(_) if is_manifest(&path) => out.push(path),
            _ => {}
        }
    }
}

impl DirSource {
    pub fn new(root: PathBuf, poll: Duration, rejections: Rejections) -> Self {
        DirSource { root, poll, files: BTreeMap::new(), owner: HashMap::new(), rejections }
    }

    /// One scan: the events for everything that changed since the last one.
    pub fn scan(&mut self) -> Vec<Event> {
        let mut present = Vec::new();
        walk(&self.root, &mut present);
        let present: BTreeSet<PathBuf> = present.into_iter().collect();
        let mut events = Vec::new();
        let gone: Vec<PathBuf> = self.files.keys().filter(|p| !present.contains(*p)).cloned().collect();
        for path in gone {
            if let Some(state) = self.files.remove(&path) {
                self.forget(&path, state.keys, &mut events);
            }
            self.rejections.set(&path.display().to_string(), Vec::new());
        }
        for path in present {
            let signature =
                std::fs::metadata(&path).ok().map(|m| Signature { modified: m.modified().ok(), len: m.len() });
            let state = self.files.entry(path.clone()).or_default();
            if signature.is_some() && state.signature == signature {
                continue;
            }
            state.signature = signature;
            self.reload(&path, &mut events);
        }
        events
    }

    fn forget(&mut self, path: &Path, keys: BTreeSet<ObjectKey>, events: &mut Vec<Event>) {
        for key in keys {
            if self.owner.get(&key).is_some_and(|o| o == path) {
                self.owner.remove(&key);
                events.push(Event::Delete(key));
            }
        }
    }

    fn reload(&mut self, path: &Path, events: &mut Vec<Event>) {
        let origin = path.display().to_string();
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                self.rejections.set(
                    &origin,
                    vec![Rejection {
                        object: origin.clone(),
                        field: String::new(),
                        reason: format!("unreadable: {e}"),
                    }],
                );
                return;
            }
        };
        let (docs, syntax_error) = if path.extension().is_some_and(|e| e == "json") {
            match serde_json::from_str::<serde_json::Value>(&text) {
                Ok(v) => (vec![v], None),
                Err(e) => (
                    Vec::new(),
                    Some(Rejection {
                        object: origin.clone(),
                        field: String::new(),
                        reason: format!("invalid JSON: {e}"),
                    }),
                ),
            }
        } else {
            split_yaml(&origin, &text)
        };
        let mut rejections = Vec::new();
        let mut keys = BTreeSet::new();
        for (i, doc) in docs.into_iter().enumerate() {
            let doc_origin = format!("document {} of {origin}", i + 1);
            match parse_object(&doc_origin, doc) {
                Ok(Parsed::Object(object)) => {
                    let key = object.key();
                    match self.owner.get(&key) {
                        Some(other) if other != path => rejections.push(Rejection {
                            object: key.to_string(),
                            field: String::new(),
                            reason: format!("already defined in {}", other.display()),
                        }),
                        _ => {
                            self.owner.insert(key.clone(), path.to_owned());
                            keys.insert(key);
                            events.push(Event::Apply(object));
                        }
                    }
                }
                Ok(Parsed::Ignored { .. }) => {}
                Err(r) => rejections.push(r),
            }
        }
        let previous = std::mem::take(&mut self.files.get_mut(path).map(|s| &mut s.keys).cloned().unwrap_or_default());
        if let Some(err) = syntax_error {
            // Keep what the unreadable tail of the file defined before.
            rejections.push(err);
            keys.extend(previous.iter().filter(|k| self.owner.get(*k).is_some_and(|o| o == path)).cloned());
        } else {
            let removed: BTreeSet<ObjectKey> = previous.difference(&keys).cloned().collect();
            self.forget(path, removed, events);
        }
        if let Some(state) = self.files.get_mut(path) {
            state.keys = keys;
        }
        self.rejections.set(&origin, rejections);
    }

    /// Scans forever, sending each non-empty batch.
    pub async fn run(mut self, tx: tokio::sync::mpsc::Sender<Vec<Event>>) {
        loop {
            let events = self.scan();
            if !events.is_empty() && tx.send(events).await.is_err() {
                return;
            }
            tokio::time::sleep(self.poll).await;
        }
    }
}
