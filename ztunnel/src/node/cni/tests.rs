use super::*;

fn inv(env: &[(&str, &str)], stdin: &str) -> Invocation {
    Invocation { env: env.iter().map(|(k, v)| ((*k).to_owned(), OsString::from(v))).collect(), stdin: stdin.into() }
}

fn error_of(out: &Outcome) -> Value {
    assert_eq!(out.status, 1, "{}", out.stdout);
    serde_json::from_str(&out.stdout).unwrap()
}

#[test]
fn version_lists_supported_versions() {
    let out = run(&inv(&[("CNI_COMMAND", "VERSION")], r#"{"cniVersion":"1.0.0"}"#));
    assert_eq!(out.status, 0);
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["cniVersion"], "1.0.0");
    assert!(v["supportedVersions"].as_array().unwrap().iter().any(|x| x == "0.4.0"));
}

#[test]
fn malformed_input_is_a_cni_error() {
    let env = [("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "c1"), ("CNI_IFNAME", "eth0"), ("CNI_NETNS", "/x")];
    assert_eq!(error_of(&run(&inv(&env, "{not json")))["code"], code::DECODE);
    assert_eq!(error_of(&run(&inv(&env, "[1,2]")))["code"], code::DECODE);
    assert_eq!(error_of(&run(&inv(&env, r#"{"cniVersion":"9.9.9"}"#)))["code"], code::INCOMPATIBLE_VERSION);
    let missing = run(&inv(&[("CNI_COMMAND", "ADD")], r#"{"cniVersion":"1.0.0"}"#));
    let e = error_of(&missing);
    assert_eq!(
        (e["code"].as_u64(), e["details"].as_str()),
        (Some(u64::from(code::INVALID_ENV)), Some("CNI_CONTAINERID"))
    );
    let bad_args = [("CNI_ARGS", "K8S_POD_NAME"), env[0], env[1], env[2], env[3]];
    assert_eq!(error_of(&run(&inv(&bad_args, r#"{"cniVersion":"1.0.0"}"#)))["code"], code::INVALID_ENV);
    let k8s = [("CNI_ARGS", "K8S_POD_NAME=a;K8S_POD_NAMESPACE=b"), env[0], env[1], env[2], env[3]];
    let bad_prev = r#"{"cniVersion":"1.0.0","prevResult":{"ips":[{"address":"nonsense"}]}}"#;
    let e = error_of(&run(&inv(&k8s, bad_prev)));
    assert_eq!(e["code"], code::INVALID_CONFIG);
    assert!(e["details"].as_str().unwrap().contains("prevResult.ips[0]"), "{e}");
    assert_eq!(
        error_of(&run(&inv(&[("CNI_COMMAND", "FROB")], r#"{"cniVersion":"1.0.0"}"#)))["code"],
        code::INVALID_ENV
    );
    let e = error_of(&run(&inv(&k8s, r#"{"cniVersion":"1.0.0","agent_socket":5}"#)));
    assert_eq!(e["code"], code::INVALID_CONFIG);
}

#[test]
fn non_kubernetes_sandboxes_pass_through() {
    let env = [("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "c1"), ("CNI_IFNAME", "eth0"), ("CNI_NETNS", "/x")];
    let conf = r#"{"cniVersion":"1.0.0","name":"k8s","type":"ambit-cni","prevResult":{"cniVersion":"1.0.0","ips":[{"address":"10.1.0.5/24"}],"dns":{}}}"#;
    let out = run(&inv(&env, conf));
    assert_eq!(out.status, 0, "{}", out.stdout);
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["ips"][0]["address"], "10.1.0.5/24");
}

#[test]
fn unreachable_agent_fails_add_but_not_del() {
    let dir = std::env::temp_dir().join(format!("ambit-cni-test-{}", std::process::id()));
    let conf = format!(
        r#"{{"cniVersion":"1.0.0","name":"k8s","type":"ambit-cni","agent_socket":"{}/none.sock"}}"#,
        dir.display()
    );
    let base = [
        ("CNI_CONTAINERID", "c1"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_NETNS", "/x"),
        ("CNI_ARGS", "K8S_POD_NAME=a;K8S_POD_NAMESPACE=b"),
    ];
    let mut add = base.to_vec();
    add.push(("CNI_COMMAND", "ADD"));
    assert_eq!(error_of(&run(&inv(&add, &conf)))["code"], code::TRY_AGAIN_LATER);
    let mut del = base.to_vec();
    del.push(("CNI_COMMAND", "DEL"));
    let out = run(&inv(&del, &conf));
    assert_eq!((out.status, out.stdout.as_str()), (0, ""));

    // The mesh's own namespace passes without an agent (a new ztunnel must start), the
    // previous result handed on.
    let excluded = format!(
        r#"{{"cniVersion":"1.0.0","name":"k8s","type":"ambit-cni","agent_socket":"{}/none.sock","exclude_namespaces":["kube-system","b"],"prevResult":{{"ips":[{{"address":"10.1.0.9/24"}}]}}}}"#,
        dir.display()
    );
    let out = run(&inv(&add, &excluded));
    assert_eq!(out.status, 0, "{}", out.stdout);
    let result: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(result["ips"][0]["address"], "10.1.0.9/24");
}

#[test]
fn requests_round_trip_through_json() {
    let req = CniRequest {
        command: CniCommand::Add,
        container_id: "c".into(),
        netns: "/run/netns/p".into(),
        pod_name: "p".into(),
        pod_namespace: "ns".into(),
        ips: vec!["10.0.0.1".parse().unwrap()],
    };
    let text = serde_json::to_string(&req).unwrap();
    assert!(text.contains("\"ADD\""), "{text}");
    assert_eq!(serde_json::from_str::<CniRequest>(&text).unwrap(), req);
}
