//! The manifest-directory source: every `*.yaml`, `*.yml` and `*.json` file below a directory,
//! multi-document, any layout, polled for changes (a change to any file takes effect without
//! a restart; polling also sees editors' rename-into-place and files on any filesystem).
//!
//! Each scan re-parses the changed files whole, then settles ownership across all of them:
//! objects that left every file are deleted, unchanged ones cost nothing downstream, an object
//! that moved between files stays. A rejected edit keeps the object's last valid version (as
//! a rejected `kubectl apply` would), and a file with a YAML syntax error keeps the objects it
//! had (nothing is deleted because of a typo). An object defined in two files is rejected in
//! the second, which is read again when the first lets go of it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::index::Event;
use crate::manifest::{parse_object_or_substitute, split_yaml, Parsed};
use crate::model::{Object, ObjectKey};
use crate::rejection::Rejection;
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

/// One changed file, parsed.
struct ParsedFile {
    path: PathBuf,
    objects: Vec<Object>,
    rejections: Vec<Rejection>,
    /// Keys to keep owning though they were not parsed now (syntax error, rejected edit).
    keep: BTreeSet<ObjectKey>,
}

pub struct DirSource {
    root: PathBuf,
    poll: Duration,
    files: BTreeMap<PathBuf, FileState>,
    /// Which file defines each object.
    owner: HashMap<ObjectKey, PathBuf>,
    /// Files whose copy of an object was rejected as a duplicate.
    duplicates: HashMap<ObjectKey, BTreeSet<PathBuf>>,
    rejections: Rejections,
}

fn is_manifest(path: &Path) -> bool {
    matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json"))
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with('.') {
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
        DirSource { root, poll, files: BTreeMap::new(), owner: HashMap::new(), duplicates: HashMap::new(), rejections }
    }

    /// One scan: the events for everything that changed since the last one.
    pub fn scan(&mut self) -> Vec<Event> {
        let mut present = Vec::new();
        walk(&self.root, &mut present);
        let present: BTreeSet<PathBuf> = present.into_iter().collect();
        let mut released = BTreeSet::new();
        let gone: Vec<PathBuf> = self.files.keys().filter(|p| !present.contains(*p)).cloned().collect();
        for path in gone {
            if let Some(state) = self.files.remove(&path) {
                released.extend(self.release(&path, state.keys));
            }
            self.rejections.set(&path.display().to_string(), Vec::new());
        }
        let mut changed: Vec<PathBuf> = Vec::new();
        for path in &present {
            let signature =
                std::fs::metadata(path).ok().map(|m| Signature { modified: m.modified().ok(), len: m.len() });
            let state = self.files.entry(path.clone()).or_default();
            if signature.is_none() || state.signature != signature {
                state.signature = signature;
                changed.push(path.clone());
            }
        }
        let mut events = Vec::new();
        // Two passes at most: the second re-reads files whose duplicates were just released.
        for _ in 0..2 {
            if changed.is_empty() {
                break;
            }
            let parsed: Vec<ParsedFile> = changed.drain(..).map(|p| self.parse(&p)).collect();
            for file in &parsed {
                let previous = self.files.get(&file.path).map(|s| s.keys.clone()).unwrap_or_default();
                let now: BTreeSet<ObjectKey> =
                    file.objects.iter().map(Object::key).chain(file.keep.iter().cloned()).collect();
                let left: BTreeSet<ObjectKey> = previous.difference(&now).cloned().collect();
                released.extend(self.release(&file.path, left));
            }
            for file in parsed {
                self.claim(file, &mut events, &mut released);
            }
            for key in &released {
                if !self.owner.contains_key(key) {
                    if let Some(waiting) = self.duplicates.remove(key) {
                        changed.extend(waiting.into_iter().filter(|p| present.contains(p)));
                    }
                }
            }
        }
        for key in released {
            if !self.owner.contains_key(&key) {
                events.push(Event::Delete(key));
            }
        }
        events
    }

    /// Gives up `keys` owned by `path`; returns the ones it owned.
    fn release(&mut self, path: &Path, keys: BTreeSet<ObjectKey>) -> Vec<ObjectKey> {
        keys.into_iter()
            .filter(|k| {
                if self.owner.get(k).is_some_and(|o| o == path) {
                    self.owner.remove(k);
                    true
                } else {
                    false
                }
            })
            .collect()
    }

    fn claim(&mut self, file: ParsedFile, events: &mut Vec<Event>, released: &mut BTreeSet<ObjectKey>) {
        let ParsedFile { path, objects, mut rejections, keep } = file;
        let mut keys: BTreeSet<ObjectKey> =
            keep.into_iter().filter(|k| self.owner.get(k).is_some_and(|o| *o == path)).collect();
        for object in objects {
            let key = object.key();
            match self.owner.get(&key) {
                Some(other) if *other != path => {
                    rejections.push(Rejection::new(
                        key.to_string(),
                        "",
                        format!("already defined in {}", other.display()),
                    ));
                    self.duplicates.entry(key).or_default().insert(path.clone());
                }
                _ => {
                    self.owner.insert(key.clone(), path.clone());
                    released.remove(&key);
                    if let Some(waiting) = self.duplicates.get_mut(&key) {
                        waiting.remove(&path);
                    }
                    keys.insert(key);
                    events.push(Event::Apply(Box::new(object)));
                }
            }
        }
        if let Some(state) = self.files.get_mut(&path) {
            state.keys = keys;
        }
        self.rejections.set(&path.display().to_string(), rejections);
    }

    fn parse(&self, path: &Path) -> ParsedFile {
        let origin = path.display().to_string();
        let previous = self.files.get(path).map(|s| s.keys.clone()).unwrap_or_default();
        let mut file =
            ParsedFile { path: path.to_owned(), objects: Vec::new(), rejections: Vec::new(), keep: BTreeSet::new() };
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                file.rejections.push(Rejection::new(origin, "", format!("unreadable: {e}")));
                file.keep = previous;
                return file;
            }
        };
        let (docs, syntax_error) = if path.extension().is_some_and(|e| e == "json") {
            match serde_json::from_str::<serde_json::Value>(&text) {
                Ok(v) => (vec![v], None),
                Err(e) => (Vec::new(), Some(Rejection::new(origin.clone(), "", format!("invalid JSON: {e}")))),
            }
        } else {
            split_yaml(&origin, &text)
        };
        for (i, doc) in docs.into_iter().enumerate() {
            match parse_object_or_substitute(&format!("document {} of {origin}", i + 1), doc) {
                Ok(Parsed::Object(object)) => file.objects.push(*object),
                Ok(Parsed::Ignored { .. }) => {}
                Err((r, Some(substitute))) => {
                    // A refused security object: its fail-closed substitute takes its place.
                    file.objects.push(*substitute);
                    file.rejections.push(r);
                }
                Err((r, None)) => {
                    // A rejected edit keeps the last valid version of that object.
                    if let Some(key) = r.key.as_deref().filter(|k| previous.contains(*k)) {
                        file.keep.insert(key.clone());
                    }
                    file.rejections.push(r);
                }
            }
        }
        if let Some(err) = syntax_error {
            // The unreadable tail of the file may hold anything it held before.
            file.rejections.push(err);
            file.keep.extend(previous);
        }
        file
    }

    /// Scans forever, sending each non-empty batch.
    pub async fn run(mut self, tx: tokio::sync::mpsc::Sender<Vec<Event>>) {
        // The first scan is the complete initial state, even when empty.
        let mut first = self.scan();
        first.push(Event::Synced);
        if tx.send(first).await.is_err() {
            return;
        }
        loop {
            tokio::time::sleep(self.poll).await;
            let events = self.scan();
            if !events.is_empty() && tx.send(events).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests;
