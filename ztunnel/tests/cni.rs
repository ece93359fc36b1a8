//! The CNI plugin as a container runtime runs it: the ztunnel binary with `CNI_*` in the
//! environment and the network configuration on stdin. Malformed input of every kind gets a
//! CNI error object on stdout and exit status 1 — never a panic. (ADD/CHECK/DEL against a live
//! node agent run in e2e/tests/ztunnel_l4_mesh.rs.)

// Test helpers outside #[test] functions unwrap too: a panic is a failed test.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_ztunnel");

fn plugin(env: &[(&str, &str)], stdin: &[u8]) -> (i32, serde_json::Value, String) {
    let mut child = Command::new(BIN)
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "the plugin panicked: {stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = if stdout.trim().is_empty() { serde_json::Value::Null } else { serde_json::from_str(&stdout).unwrap() };
    (out.status.code().unwrap_or(-1), json, stderr)
}

const ADD: [(&str, &str); 4] =
    [("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "abc"), ("CNI_NETNS", "/run/netns/x"), ("CNI_IFNAME", "eth0")];

#[test]
fn version_answers_with_supported_versions() {
    let (code, json, _) = plugin(&[("CNI_COMMAND", "VERSION")], br#"{"cniVersion":"1.0.0"}"#);
    assert_eq!(code, 0);
    assert!(json["supportedVersions"].as_array().unwrap().iter().any(|v| v == "1.0.0"), "{json}");
}

#[test]
fn malformed_input_gets_cni_errors() {
    type Case<'a> = (Vec<(&'a str, &'a str)>, &'a [u8], u64);
    let cases: Vec<Case<'_>> = vec![
        (ADD.to_vec(), b"", 6),
        (ADD.to_vec(), b"{\"cniVersion\": ", 6),
        (ADD.to_vec(), &[0xff, 0xfe, 0x00], 6),
        (ADD.to_vec(), b"\"a string\"", 6),
        (ADD.to_vec(), br#"{"cniVersion":"0.1.0"}"#, 1),
        (ADD.to_vec(), br#"{"name":"x"}"#, 1),
        (vec![("CNI_COMMAND", "ADD")], br#"{"cniVersion":"1.0.0"}"#, 4),
        (vec![("CNI_COMMAND", "BOGUS")], br#"{"cniVersion":"1.0.0"}"#, 4),
        (
            [&ADD[..], &[("CNI_ARGS", "K8S_POD_NAME=a;K8S_POD_NAMESPACE=b")]].concat(),
            br#"{"cniVersion":"1.0.0","prevResult":{"ips":"nope"}}"#,
            7,
        ),
        (
            [&ADD[..], &[("CNI_ARGS", "K8S_POD_NAME=a;K8S_POD_NAMESPACE=b")]].concat(),
            br#"{"cniVersion":"1.0.0","agent_socket":"/nonexistent/agent.sock"}"#,
            11,
        ),
    ];
    for (env, stdin, want) in cases {
        let (code, json, stderr) = plugin(&env, stdin);
        assert_eq!(code, 1, "{env:?} {:?}: {json} {stderr}", String::from_utf8_lossy(stdin));
        assert_eq!(json["code"].as_u64(), Some(want), "{env:?} {:?}: {json}", String::from_utf8_lossy(stdin));
        assert!(json["msg"].as_str().is_some_and(|m| !m.is_empty()), "{json}");
    }
}

#[test]
fn del_without_an_agent_succeeds_and_non_pods_pass_through() {
    let del = [
        ("CNI_COMMAND", "DEL"),
        ("CNI_CONTAINERID", "abc"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_ARGS", "K8S_POD_NAME=a;K8S_POD_NAMESPACE=b"),
    ];
    let (code, json, _) = plugin(&del, br#"{"cniVersion":"1.0.0","agent_socket":"/nonexistent/agent.sock"}"#);
    assert_eq!((code, json), (0, serde_json::Value::Null));
    let (code, json, _) = plugin(
        &ADD,
        br#"{"cniVersion":"1.0.0","name":"n","type":"ambit-cni","prevResult":{"cniVersion":"1.0.0","ips":[{"address":"10.0.0.9/24"}]}}"#,
    );
    assert_eq!(code, 0);
    assert_eq!(json["ips"][0]["address"], "10.0.0.9/24");
}

#[test]
fn install_cni_places_chains_and_removes_the_plugin() {
    let root = std::env::temp_dir().join(format!("ambit-install-cni-{}", std::process::id()));
    let (bin, conf) = (root.join("bin"), root.join("net.d"));
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(&conf).unwrap();
    std::fs::write(
        conf.join("10-kindnet.conflist"),
        r#"{"cniVersion": "0.3.1", "name": "kindnet", "plugins": [{"type": "ptp"}]}"#,
    )
    .unwrap();
    let run = |extra: &[&str]| {
        let out = Command::new(BIN)
            .args(["install-cni", "--bin-dir", bin.to_str().unwrap(), "--conf-dir", conf.to_str().unwrap()])
            .args(["--agent-socket", "/var/run/ambit/cni.sock"])
            .args(extra)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    run(&[]);
    let placed = bin.join("ambit-cni");
    assert!(placed.exists(), "the plugin binary is placed");
    let conflist: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(conf.join("10-kindnet.conflist")).unwrap()).unwrap();
    assert_eq!(conflist["plugins"][1]["type"], "ambit-cni");
    // The placed binary is the plugin: a runtime's VERSION call answers.
    let out = Command::new(&placed).env("CNI_COMMAND", "VERSION").stdin(Stdio::null()).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("supportedVersions"));
    run(&["--uninstall"]);
    assert!(!placed.exists());
    let conflist: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(conf.join("10-kindnet.conflist")).unwrap()).unwrap();
    assert_eq!(conflist["plugins"].as_array().unwrap().len(), 1, "the node's configuration as it was");
    let _ = std::fs::remove_dir_all(&root);
}
