//! Directory semantics: moves, rejected edits, syntax errors, duplicates.

use super::*;
use crate::model::Kind;

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn dir(name: &str) -> (Dir, DirSource) {
    let d = std::env::temp_dir().join(format!("ambit-dir-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    let src = DirSource::new(d.clone(), Duration::from_millis(10), Rejections::default());
    (Dir(d), src)
}

/// Writes with a fresh mtime signature (length differs or time moves on).
fn write(d: &Dir, file: &str, text: &str) {
    let path = d.0.join(file);
    std::fs::write(&path, text).unwrap();
    let t = SystemTime::now() + Duration::from_secs(rand_secs());
    let f = std::fs::File::options().write(true).open(&path).unwrap();
    f.set_modified(t).unwrap();
}

fn rand_secs() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(1);
    N.fetch_add(1, Ordering::Relaxed)
}

fn policy(name: &str, action: &str) -> String {
    format!("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: shop}}\nspec: {{action: {action}, rules: [{{}}]}}\n")
}

fn summary(events: &[Event]) -> Vec<String> {
    let mut v: Vec<String> = events
        .iter()
        .map(|e| match e {
            Event::Apply(o) => format!("apply {}", o.key()),
            Event::Delete(k) => format!("delete {k}"),
            Event::Synced => "synced".into(),
        })
        .collect();
    v.sort();
    v
}

#[test]
fn moving_an_object_between_files_keeps_it() {
    let (d, mut src) = dir("move");
    write(&d, "b.yaml", &policy("deny", "DENY"));
    assert_eq!(summary(&src.scan()), ["apply AuthorizationPolicy shop/deny"]);
    // Move: a.yaml gains it (scanned first), b.yaml loses it.
    write(&d, "a.yaml", &policy("deny", "DENY"));
    write(&d, "b.yaml", "");
    let events = summary(&src.scan());
    assert!(!events.iter().any(|e| e.starts_with("delete")), "{events:?}");
    assert_eq!(events, ["apply AuthorizationPolicy shop/deny"]);
}

#[test]
fn a_released_duplicate_is_picked_up_from_the_other_file() {
    let (d, mut src) = dir("dup");
    write(&d, "a.yaml", &policy("deny", "DENY"));
    src.scan();
    write(&d, "b.yaml", &policy("deny", "DENY"));
    src.scan();
    let rejected = src.rejections.all();
    assert!(rejected.values().flatten().any(|r| r.reason.contains("already defined")), "{rejected:?}");
    // a.yaml drops it: b.yaml's copy takes over, no delete.
    write(&d, "a.yaml", "");
    let events = summary(&src.scan());
    assert_eq!(events, ["apply AuthorizationPolicy shop/deny"]);
}

#[test]
fn a_rejected_edit_keeps_the_last_valid_version() {
    // Kinds other than security policies: the last valid version stays.
    let (d, mut src) = dir("reject");
    let se = |port: &str| {
        format!("apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: ext, namespace: shop}}\nspec: {{hosts: [x.example], ports: [{{number: {port}}}]}}\n")
    };
    write(&d, "se.yaml", &se("443"));
    src.scan();
    write(&d, "se.yaml", &se("0"));
    let events = src.scan();
    assert!(events.is_empty(), "the ServiceEntry stays: {:?}", summary(&events));
    assert_eq!(src.rejections.count(), 1);
    // Fixing it applies the new version and clears the rejection.
    write(&d, "se.yaml", &se("8443"));
    assert_eq!(summary(&src.scan()), ["apply ServiceEntry shop/ext"]);
    assert_eq!(src.rejections.count(), 0);
}

#[test]
fn a_rejected_security_policy_is_replaced_by_its_fail_closed_substitute() {
    let (d, mut src) = dir("substitute");
    write(&d, "p.yaml", &policy("deny", "DENY"));
    src.scan();
    // A broken edit: the policy becomes a DENY of everything in its scope, not the old one (only
    // this replica would have it) and not nothing (that would allow what it denied).
    write(&d, "p.yaml", &policy("deny", "DENNY"));
    let events = src.scan();
    assert_eq!(summary(&events), ["apply AuthorizationPolicy shop/deny"]);
    let Some(Event::Apply(o)) = events.first() else { panic!("{events:?}") };
    let crate::model::Object::AuthorizationPolicy(p) = &**o else { panic!("{o:?}") };
    assert_eq!(p.spec.action.as_deref(), Some("DENY"));
    assert_eq!(p.spec.rules, Some(vec![crate::model::Rule::default()]));
    let rejected = src.rejections.all();
    assert!(rejected.values().flatten().any(|r| r.reason.contains("until it is fixed")), "{rejected:?}");
    write(&d, "p.yaml", &policy("deny", "ALLOW"));
    assert_eq!(summary(&src.scan()), ["apply AuthorizationPolicy shop/deny"]);
    assert_eq!(src.rejections.count(), 0);
}

#[test]
fn a_syntax_error_deletes_nothing_and_removal_deletes() {
    let (d, mut src) = dir("syntax");
    write(&d, "p.yaml", &format!("{}---\n{}", policy("one", "DENY"), policy("two", "DENY")));
    src.scan();
    write(&d, "p.yaml", &format!("{}---\nkind: [broken\n", policy("one", "DENY")));
    let events = src.scan();
    assert!(!events.iter().any(|e| matches!(e, Event::Delete(_))), "{:?}", summary(&events));
    std::fs::remove_file(d.0.join("p.yaml")).unwrap();
    let mut deleted: Vec<_> = src
        .scan()
        .into_iter()
        .filter_map(|e| match e {
            Event::Delete(k) => Some(k),
            _ => None,
        })
        .collect();
    deleted.sort();
    assert_eq!(deleted.len(), 2);
    assert!(deleted.iter().all(|k| k.kind == Kind::AuthorizationPolicy));
}
