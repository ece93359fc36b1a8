//! The CNI plugin as a container runtime calls it: any environment and any network
//! configuration on stdin gives a CNI answer on stdout (never a panic), and a failure is a
//! JSON error with a code, so the runtime retries instead of starting a pod uncaptured.
#![no_main]

use std::collections::HashMap;
use std::ffi::OsString;

use ambit_ztunnel::node::cni::{run, Invocation};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first line picks the command and the pod's arguments; the rest is stdin.
    let (head, stdin) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let head = String::from_utf8_lossy(head);
    let mut fields = head.splitn(3, ' ');
    let command = fields.next().unwrap_or_default().to_owned();
    let args = fields.next().unwrap_or_default().to_owned();
    let netns = fields.next().unwrap_or_default().to_owned();
    let env: HashMap<String, OsString> = [
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", "fuzz".to_owned()),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", "eth0".to_owned()),
        ("CNI_ARGS", args),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), OsString::from(v)))
    .collect();
    let outcome = run(&Invocation { env, stdin: stdin.to_vec() });
    if outcome.status != 0 {
        let answer: serde_json::Value = serde_json::from_str(&outcome.stdout).expect("a failure is a CNI JSON error");
        assert!(answer["code"].is_u64(), "the error has a code: {answer}");
    }
});
