//! Request path normalization, as Istio's meshConfig `pathNormalization` defines it.
//!
//! Authorization, route matching and the upstream must all see one spelling of a path, or a
//! client can write `/public/../admin` past a DENY on `/admin`. This module owns turning the
//! client's path into that spelling; it does not decide anything about the path. The query
//! string is never touched.
//!
//! - `NONE`: the path is used as written.
//! - `BASE` (the default, as in Istio): RFC 3986 normalization — percent-encoded unreserved characters are
//!   decoded, remaining escapes upper-cased, `\` becomes `/`, and `.` / `..` segments removed.
//! - `MERGE_SLASHES`: `BASE`, then runs of `/` collapsed into one.
//! - `DECODE_AND_MERGE_SLASHES`: `%2F` and `%5C` decoded to `/` first, then `MERGE_SLASHES`.
//!
//! A path that cannot be read unambiguously — a malformed escape, an encoded NUL, a path that is
//! not absolute — is an error, so the caller refuses the request instead of guessing.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use serde::Serialize;

/// How far request paths are normalized (meshConfig `pathNormalization.normalization`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Normalization {
    /// The path is used as the client wrote it.
    None,
    /// RFC 3986 normalization plus `\` to `/` (Istio's default, and ours).
    #[default]
    Base,
    /// `Base`, then consecutive slashes merged (what Istio's security best practices advise
    /// when backends read `//admin` as `/admin`).
    MergeSlashes,
    /// Encoded slashes and backslashes decoded, then `MergeSlashes`.
    DecodeAndMergeSlashes,
}

impl Normalization {
    /// Every mode, as written in configuration.
    pub const NAMES: [&'static str; 4] = ["NONE", "BASE", "MERGE_SLASHES", "DECODE_AND_MERGE_SLASHES"];

    fn name(self) -> &'static str {
        match self {
            Normalization::None => "NONE",
            Normalization::Base => "BASE",
            Normalization::MergeSlashes => "MERGE_SLASHES",
            Normalization::DecodeAndMergeSlashes => "DECODE_AND_MERGE_SLASHES",
        }
    }

    fn merges_slashes(self) -> bool {
        matches!(self, Normalization::MergeSlashes | Normalization::DecodeAndMergeSlashes)
    }
}

impl fmt::Display for Normalization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A mode name that is none of [`Normalization::NAMES`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown path normalization {0:?} (expected one of NONE, BASE, MERGE_SLASHES, DECODE_AND_MERGE_SLASHES)")]
pub struct UnknownNormalization(pub String);

impl FromStr for Normalization {
    type Err = UnknownNormalization;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let upper = s.trim().to_ascii_uppercase();
        [Normalization::None, Normalization::Base, Normalization::MergeSlashes, Normalization::DecodeAndMergeSlashes]
            .into_iter()
            .find(|mode| mode.name() == upper)
            .ok_or_else(|| UnknownNormalization(s.to_string()))
    }
}

/// Why a path cannot be normalized; the request carrying it is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path does not start with '/'")]
    NotAbsolute,
    #[error("malformed percent-encoding at byte {0}")]
    BadEscape(usize),
    #[error("path contains a NUL byte")]
    Nul,
    #[error("path is not valid UTF-8 after decoding")]
    NotUtf8,
}

/// `path_and_query` in the spelling `mode` asks for; borrowed when nothing changed.
/// The asterisk-form `*` (for `OPTIONS *`) is returned as it is.
pub fn normalize(path_and_query: &str, mode: Normalization) -> Result<Cow<'_, str>, PathError> {
    if mode == Normalization::None {
        return Ok(Cow::Borrowed(path_and_query));
    }
    let (path, query) = match path_and_query.find('?') {
        Some(at) => path_and_query.split_at(at),
        None => (path_and_query, ""),
    };
    if path == "*" {
        return Ok(Cow::Borrowed(path_and_query));
    }
    let decoded = decode(path, mode == Normalization::DecodeAndMergeSlashes)?;
    if !decoded.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    let mut normalized = remove_dot_segments(&decoded);
    if mode.merges_slashes() {
        normalized = merge_slashes(&normalized);
    }
    if normalized == path {
        return Ok(Cow::Borrowed(path_and_query));
    }
    normalized.push_str(query);
    Ok(Cow::Owned(normalized))
}

/// Percent-escapes of unreserved characters decoded, the rest upper-cased; `\` becomes `/`.
/// With `slashes`, `%2F` and `%5C` are decoded to `/` as well.
fn decode(path: &str, slashes: bool) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            0 => return Err(PathError::Nul),
            b'\\' => out.push(b'/'),
            b'%' => {
                let (hi, lo) = match (bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex))
                {
                    (Some(hi), Some(lo)) => (hi, lo),
                    _ => return Err(PathError::BadEscape(i)),
                };
                let value = hi << 4 | lo;
                if value == 0 {
                    return Err(PathError::Nul);
                }
                if is_unreserved(value) {
                    out.push(value);
                } else if slashes && (value == b'/' || value == b'\\') {
                    out.push(b'/');
                } else {
                    out.extend_from_slice(&[b'%', HEX_UPPER[usize::from(hi)], HEX_UPPER[usize::from(lo)]]);
                }
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| PathError::NotUtf8)
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

/// RFC 3986 section 2.3.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// RFC 3986 section 5.2.4 for an absolute path: `.` segments dropped, `..` removes the segment
/// before it (never above the root); a path ending in `.` or `..` keeps its trailing slash.
fn remove_dot_segments(path: &str) -> String {
    let segments: Vec<&str> = path[1..].split('/').collect();
    let last = segments.len() - 1;
    let mut kept: Vec<&str> = Vec::with_capacity(segments.len());
    for (i, segment) in segments.into_iter().enumerate() {
        match segment {
            "." => {}
            ".." => {
                kept.pop();
            }
            other => kept.push(other),
        }
        if i == last && (segment == "." || segment == "..") {
            kept.push("");
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in kept {
        out.push('/');
        out.push_str(segment);
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

fn merge_slashes(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if c == '/' && out.ends_with('/') {
            continue;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(path: &str, mode: Normalization) -> Result<String, PathError> {
        normalize(path, mode).map(Cow::into_owned)
    }

    #[test]
    fn base_normalization_follows_rfc_3986() {
        let cases = [
            ("/", "/"),
            ("/admin", "/admin"),
            ("/public/../admin", "/admin"),
            ("/./admin", "/admin"),
            ("/%61dmin", "/admin"),
            ("/%2e%2e/admin", "/admin"),
            ("/public/%2E%2E/admin", "/admin"),
            ("/a/b/../../../admin", "/admin"),
            ("/..", "/"),
            ("/a/..", "/"),
            ("/a/.", "/a/"),
            ("/a/b/..", "/a/"),
            ("/a/./b/./", "/a/b/"),
            ("//admin", "//admin"),
            ("/a//../b", "/a/b"),
            ("\\admin", "/admin"),
            ("/public\\..\\admin", "/admin"),
            ("/some%2fdata/%61%62%63", "/some%2Fdata/abc"),
            ("/x%7ey", "/x~y"),
            ("/caf%c3%a9", "/caf%C3%A9"),
            ("/admin?x=/../y&%61", "/admin?x=/../y&%61"),
            ("/public/..?q=1", "/?q=1"),
            ("*", "*"),
        ];
        for (input, want) in cases {
            assert_eq!(norm(input, Normalization::Base).as_deref(), Ok(want), "input {input}");
        }
    }

    #[test]
    fn merge_slashes_collapses_runs_after_dot_segments() {
        let cases = [
            ("//admin", "/admin"),
            ("/a///b//", "/a/b/"),
            ("/a//../b", "/a/b"),
            ("/some%2fdata", "/some%2Fdata"),
            ("/x?a//b", "/x?a//b"),
        ];
        for (input, want) in cases {
            assert_eq!(norm(input, Normalization::MergeSlashes).as_deref(), Ok(want), "input {input}");
        }
    }

    #[test]
    fn decode_and_merge_slashes_decodes_encoded_separators() {
        let cases = [
            ("/some%2fdata/%61%62%63", "/some/data/abc"),
            ("/public%2F..%2Fadmin", "/admin"),
            ("/public%5c..%5cadmin", "/admin"),
            ("/%2F%2Fadmin", "/admin"),
        ];
        for (input, want) in cases {
            assert_eq!(norm(input, Normalization::DecodeAndMergeSlashes).as_deref(), Ok(want), "input {input}");
        }
    }

    #[test]
    fn none_leaves_the_path_as_written() {
        assert_eq!(norm("/public/../%61dmin", Normalization::None).as_deref(), Ok("/public/../%61dmin"));
    }

    #[test]
    fn unchanged_paths_are_borrowed() {
        assert!(matches!(normalize("/a/b?c=..", Normalization::Base), Ok(Cow::Borrowed(_))));
        assert!(matches!(normalize("/a/b/", Normalization::MergeSlashes), Ok(Cow::Borrowed(_))));
    }

    #[test]
    fn unreadable_paths_are_errors() {
        for mode in [Normalization::Base, Normalization::MergeSlashes, Normalization::DecodeAndMergeSlashes] {
            assert_eq!(norm("/a%00b", mode), Err(PathError::Nul));
            assert_eq!(norm("/a\0b", mode), Err(PathError::Nul));
            assert_eq!(norm("/a%zzb", mode), Err(PathError::BadEscape(2)));
            assert_eq!(norm("/a%4", mode), Err(PathError::BadEscape(2)));
            assert_eq!(norm("/a%", mode), Err(PathError::BadEscape(2)));
            assert_eq!(norm("admin", mode), Err(PathError::NotAbsolute));
        }
    }

    #[test]
    fn normalization_is_idempotent() {
        let inputs = ["/public/../admin", "/%2e/x//y/..", "/a%2f%2e%2e/b", "//x/./y/../../z"];
        for mode in [Normalization::Base, Normalization::MergeSlashes, Normalization::DecodeAndMergeSlashes] {
            for input in inputs {
                let once = norm(input, mode).expect("normalizes");
                assert_eq!(norm(&once, mode).as_deref(), Ok(once.as_str()), "{mode} {input}");
            }
        }
    }

    #[test]
    fn modes_parse_case_insensitively() {
        assert_eq!("merge_slashes".parse(), Ok(Normalization::MergeSlashes));
        assert_eq!("DECODE_AND_MERGE_SLASHES".parse(), Ok(Normalization::DecodeAndMergeSlashes));
        assert_eq!("None".parse(), Ok(Normalization::None));
        assert_eq!(" base ".parse(), Ok(Normalization::Base));
        assert!("DEFAULT".parse::<Normalization>().is_err());
        for name in Normalization::NAMES {
            assert_eq!(name.parse::<Normalization>().map(|m| m.to_string()).as_deref(), Ok(name));
        }
    }
}
