//! Request paths as a client may write them: normalization never panics, is idempotent, and
//! what it returns has no dot segments (and no empty ones when slashes are merged), so the
//! spelling authorization sees is the spelling routing and the upstream see.
#![no_main]

use ambit_waypoint::l7::normalize::{normalize, Normalization};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else { return };
    for mode in [Normalization::Base, Normalization::MergeSlashes, Normalization::DecodeAndMergeSlashes] {
        let Ok(once) = normalize(input, mode) else { continue };
        let once = once.into_owned();
        let twice = normalize(&once, mode).expect("a normalized path normalizes again");
        assert_eq!(twice, once, "normalization is idempotent ({mode})");
        let path = once.split('?').next().unwrap_or_default();
        if path == "*" {
            continue;
        }
        assert!(path.starts_with('/'), "absolute: {once:?}");
        let segments: Vec<&str> = path[1..].split('/').collect();
        assert!(!segments.iter().any(|s| *s == "." || *s == ".."), "dot segment left in {once:?} ({mode})");
        assert!(!path.contains('\\'), "backslash left in {once:?}");
        if mode != Normalization::Base {
            assert!(!path.contains("//"), "slashes not merged in {once:?} ({mode})");
        }
        if mode == Normalization::DecodeAndMergeSlashes {
            let upper = path.to_ascii_uppercase();
            assert!(!upper.contains("%2F") && !upper.contains("%5C"), "encoded slash left in {once:?}");
        }
    }
});
