//! Manifests as an operator (or a file dropped in the manifest directory) writes them: YAML
//! splitting and object validation never panic; a rejection names its object.
#![no_main]

use ambit_controller::manifest::{parse_object, split_yaml};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (docs, _) = split_yaml("fuzz.yaml", text);
    for (i, doc) in docs.into_iter().enumerate() {
        let origin = format!("document {} of fuzz.yaml", i + 1);
        if let Err(rejection) = parse_object(&origin, doc) {
            assert!(!rejection.object.is_empty(), "a rejection names its object");
        }
    }
});
