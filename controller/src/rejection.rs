//! Why an input is refused, and the field checks every layer shares: label syntax (IP blocks
//! are `ambit_shared::Cidr`, the type the proxies match with).
//!
//! The bottom of the controller: parsing (`manifest`) and the per-kind validation beside each
//! translation (`translate::*`) both build `Rejection`s from here, so neither needs the other's
//! helpers. It knows the model's keys and labels, nothing above them.

use std::fmt;

use crate::model::{Labels, ObjectKey};

/// Why an input was refused, with enough context to find it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Rejection {
    /// `Kind ns/name` when known, otherwise what is known (`document 3 of x.yaml`).
    pub object: String,
    /// Dotted path of the offending field (`spec.rules[0].from[1].source.principals[0]`), or
    /// empty when the whole document is at fault.
    pub field: String,
    pub reason: String,
    /// The object, when the document got far enough to name it.
    #[serde(skip)]
    pub key: Option<Box<ObjectKey>>,
    /// A refused Gateway API route's `spec.parentRefs` as written: its status is per parent
    /// even when it is refused.
    #[serde(skip)]
    pub parent_refs: Option<Box<Vec<serde_json::Value>>>,
}

impl Rejection {
    pub fn new(object: impl Into<String>, field: impl Into<String>, reason: impl Into<String>) -> Self {
        Rejection { object: object.into(), field: field.into(), reason: reason.into(), key: None, parent_refs: None }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}: {}", self.object, self.reason)
        } else {
            write!(f, "{}: field {}: {}", self.object, self.field, self.reason)
        }
    }
}

/// Label keys: optional DNS-subdomain prefix, then a name of ≤63 characters; values ≤63,
/// alphanumerics with `-_.` inside.
pub fn validate_labels(label: &str, field: &str, labels: &Labels) -> Result<(), Rejection> {
    fn name_ok(s: &str) -> bool {
        s.len() <= 63
            && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && s.chars().next().is_none_or(|c| c.is_ascii_alphanumeric())
            && s.chars().last().is_none_or(|c| c.is_ascii_alphanumeric())
    }
    for (k, v) in labels {
        let name = k.rsplit_once('/').map_or(k.as_str(), |(_, n)| n);
        if name.is_empty() || !name_ok(name) || k.len() > 316 {
            return Err(Rejection::new(label, format!("{field}.{k}"), format!("{k:?} is not a valid label key")));
        }
        if !name_ok(v) {
            return Err(Rejection::new(label, format!("{field}.{k}"), format!("{v:?} is not a valid label value")));
        }
    }
    Ok(())
}
