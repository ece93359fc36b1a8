use super::*;

fn parse(yaml: &str) -> Result<Parsed, Rejection> {
    let (mut docs, err) = split_yaml("t.yaml", yaml);
    assert!(err.is_none(), "{err:?}");
    parse_object("document 1 of t.yaml", docs.remove(0))
}

fn rejected(yaml: &str) -> Rejection {
    parse(yaml).expect_err("should be rejected")
}

#[test]
fn parses_the_kinds_we_read() {
    let p = parse(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web-1, namespace: shop, labels: {app: web}}\nspec: {nodeName: n1}\nstatus: {podIP: 10.1.0.5}",
    )
    .unwrap();
    let Parsed::Object(o) = p else { panic!("ignored") };
    assert_eq!(o.key().to_string(), "Pod shop/web-1");
    let p = parse(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny}\nspec: {action: DENY}",
    )
    .unwrap();
    let Parsed::Object(o) = p else { panic!("ignored") };
    assert_eq!(o.key().namespace.as_ref(), "default", "namespaced objects default to `default`");
}

#[test]
fn kinds_we_do_not_read_are_ignored_but_typos_are_rejected() {
    assert!(matches!(
        parse("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}").unwrap(),
        Parsed::Ignored { .. }
    ));
    assert!(matches!(
        parse("apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}").unwrap(),
        Parsed::Ignored { .. }
    ));
    let r =
        rejected("apiVersion: security.istio.io/v1\nkind: AuthorisationPolicy\nmetadata: {name: p, namespace: shop}");
    assert_eq!(r.field, "kind");
    assert!(r.reason.contains("unknown kind \"AuthorisationPolicy\""), "{r}");
    assert!(r.object.contains("shop/p"), "{r}");
}

#[test]
fn invalid_yaml_names_the_document() {
    let (docs, err) =
        split_yaml("bad.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\nkind: [unclosed\n");
    assert_eq!(docs.len(), 1, "the good document before the error is kept");
    let err = err.unwrap();
    assert!(err.object.contains("document 2 of bad.yaml"), "{err}");
    assert!(err.reason.contains("invalid YAML"), "{err}");
}

#[test]
fn wrong_types_name_the_field() {
    let r = rejected(
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec:\n  ports:\n  - port: http\n",
    );
    assert_eq!(r.object, "Service shop/web");
    assert_eq!(r.field, "spec.ports[0].port");
    let r = rejected("apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: [a, b]}");
    assert_eq!(r.field, "metadata.labels");
}

#[test]
fn missing_required_fields_are_named() {
    assert_eq!(rejected("kind: Pod\nmetadata: {name: x}").field, "apiVersion");
    assert_eq!(rejected("apiVersion: v1\nmetadata: {name: x}").field, "kind");
    assert_eq!(rejected("apiVersion: v1\nkind: Pod\nmetadata: {namespace: a}").field, "metadata.name");
    let r = rejected("apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: wp, namespace: a}\nspec: {listeners: []}");
    assert_eq!(r.field, "spec");
    assert!(r.reason.contains("gatewayClassName"), "{r}");
    assert!(rejected("- just\n- a list").reason.contains("mapping"));
}

#[test]
fn semantic_errors_name_the_field() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: 80}, {port: 80}]}",
            "spec.ports[1].port",
            "duplicate port 80",
        ),
        (
            "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {selector: {app: 'not valid!'}}",
            "spec.selector.app",
            "not a valid label value",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nstatus: {podIP: 10.0.0.300}",
            "status.podIP",
            "not an IP address",
        ),
        (
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\nspec: {action: DENY, rules: [{from: [{source: {ipBlocks: ['::ffff:10.0.0.0/8']}}]}]}",
            "spec.rules[0].from[0].source.ipBlocks[0]",
            "is not an IP address or CIDR",
        ),
        (
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\nspec: {action: REJECT}",
            "spec.action",
            "unknown action",
        ),
        (
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\nspec:\n  rules:\n  - from:\n    - source: {principals: [cluster.local/ns/a]}",
            "spec.rules[0].from[0].source.principals[0]",
            "malformed principal",
        ),
        (
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\nspec:\n  rules:\n  - to:\n    - operation: {ports: [http]}",
            "spec.rules[0].to[0].operation.ports[0]",
            "not a port",
        ),
        (
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\nspec:\n  action: DENY\n  rules:\n  - when:\n    - {key: 'request.headers[x-a]', values: [b]}\n    - {key: connection.sni, values: [evil.example]}",
            "spec.rules[0].when[1].key",
            "not a condition key Ambit evaluates",
        ),
        (
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\nspec:\n  rules:\n  - when:\n    - {key: 'request.headers[a][b]', values: [b]}",
            "spec.rules[0].when[0].key",
            "not a condition key",
        ),
        (
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\nspec:\n  rules:\n  - when:\n    - {key: remote.ip, values: [10.0.0.0/33]}",
            "spec.rules[0].when[0].values[0]",
            "not valid for key remote.ip",
        ),
        (
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\nspec: {selector: {matchLabels: {'': x}}}",
            "spec.selector.matchLabels.",
            "not a valid label key",
        ),
        (
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p}\nspec: {mtls: {mode: MAYBE}}",
            "spec.mtls.mode",
            "unknown mode",
        ),
    ];
    for (yaml, field, reason) in cases {
        let r = rejected(yaml);
        assert_eq!(r.field, *field, "{r}");
        assert!(r.reason.contains(reason), "{r}");
    }
}

#[test]
fn istio_fields_ambit_does_not_read_are_refused_naming_them() {
    // A misspelt `rules` would leave a DENY policy denying nothing: refused instead.
    let r = rejected(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: shop}\nspec:\n  action: DENY\n  rule: [{from: [{source: {namespaces: [evil]}}]}]",
    );
    assert_eq!(r.field, "spec.rule", "{r}");
    assert!(r.reason.contains("not supported by Ambit"), "{r}");
    // At any depth, with the index of the entry.
    let r = rejected(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: shop}\nspec:\n  rules:\n  - from: [{source: {namespaces: [a]}}]\n  - to: [{operation: {paths: [/x], method: [GET]}}]",
    );
    assert_eq!(r.field, "spec.rules[1].to[0].operation.method", "{r}");
    // Istio fields Ambit does not implement: loud, not ignored.
    for (yaml, field) in [
        ("kind: VirtualService\nspec: {hosts: [r], http: [{route: [{destination: {host: r}}]}], corsPolicy: {}}", "spec.corsPolicy"),
        ("kind: VirtualService\nspec: {hosts: [r], http: [{match: [{sourceLabels: {app: a}}], route: [{destination: {host: r}}]}]}", "spec.http[0].match[0].sourceLabels"),
        ("kind: ServiceEntry\nspec: {hosts: [x.example], endpoints: [{address: 1.2.3.4}]}", "spec.endpoints"),
        ("kind: ServiceEntry\nspec: {hosts: [x.example], exportTo: ['.']}", "spec.exportTo"),
        ("kind: DestinationRule\nspec: {host: r, subsets: [{name: v1, labels: {version: v1}, trafficPolicy: {proxyProtocol: {}}}]}", "spec.subsets[0].trafficPolicy.proxyProtocol"),
        ("kind: DestinationRule\nspec: {host: r, trafficPolicy: {portLevelSettings: [{port: {number: 80}, tunnel: {}}]}}", "spec.trafficPolicy.portLevelSettings[0].tunnel"),
        ("kind: DestinationRule\nspec: {host: r, trafficPolicy: {tls: {mode: SIMPLE, credentialName: c}}}", "spec.trafficPolicy.tls.credentialName"),
    ] {
        let r = rejected(&format!("apiVersion: networking.istio.io/v1\n{yaml}\nmetadata: {{name: o, namespace: shop}}"));
        assert_eq!(r.field, field, "{yaml}: {r}");
    }
    // The defaults written out are fine, and free-form values (`provider`) are not checked.
    for yaml in [
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: o, namespace: shop}\nspec: {hosts: [x.example], exportTo: ['*']}",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: o, namespace: shop}\nspec: {hosts: [r], gateways: [mesh], exportTo: ['*'], http: [{route: [{destination: {host: r}}]}]}",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: shop}\nspec: {action: CUSTOM, provider: {name: ext, anything: [1]}, rules: [{}]}",
        // Bookinfo's shape: subsets that only name label sets, ISTIO_MUTUAL, exportTo [].
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: o, namespace: shop}\nspec: {host: r, exportTo: [], trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}, subsets: [{name: v1, labels: {version: v1}}]}",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: o, namespace: shop}\nspec: {hosts: [r], gateways: [], http: [{match: [{name: api, uri: {prefix: /api}}], route: [{destination: {host: r}}]}]}",
    ] {
        parse(yaml).unwrap_or_else(|r| panic!("{yaml}: {r}"));
    }
}

#[test]
fn sidecars_carry_only_their_outbound_traffic_policy() {
    let sidecar = |spec: &str| {
        format!("apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: default, namespace: shop}}\nspec: {spec}")
    };
    parse(&sidecar("{workloadSelector: {labels: {app: a}}, outboundTrafficPolicy: {mode: REGISTRY_ONLY}}")).unwrap();
    let r = rejected(&sidecar("{outboundTrafficPolicy: {mode: REGISTRY_ONLYY}}"));
    assert_eq!(r.field, "spec.outboundTrafficPolicy.mode", "{r}");
    // Sidecar-mode fields mean nothing to ztunnel: refused by name, not ignored.
    let r = rejected(&sidecar("{egress: [{hosts: ['./*']}], outboundTrafficPolicy: {mode: REGISTRY_ONLY}}"));
    assert_eq!(r.field, "spec.egress", "{r}");
    let r = rejected(&sidecar("{outboundTrafficPolicy: {mode: REGISTRY_ONLY, egressProxy: {host: e}}}"));
    assert_eq!(r.field, "spec.outboundTrafficPolicy.egressProxy", "{r}");
}

#[test]
fn a_refused_security_object_is_replaced_by_a_fail_closed_substitute() {
    let refused = |yaml: &str| {
        let (mut docs, _) = split_yaml("t", yaml);
        match parse_object_or_substitute("t", docs.remove(0)) {
            Err((r, substitute)) => (r, substitute.map(|b| *b)),
            Ok(_) => panic!("accepted: {yaml}"),
        }
    };
    let ap = |spec: &str| {
        format!("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: shop}}\nspec: {spec}")
    };
    // ALLOW with a misspelt field: an ALLOW that allows nothing, same selector.
    let (r, s) = refused(&ap("{selector: {matchLabels: {app: cart}}, rules: [{from: [{source: {principal: [x]}}]}]}"));
    assert!(r.reason.contains("until it is fixed") && r.reason.contains("allows nothing"), "{r}");
    let Some(Object::AuthorizationPolicy(p)) = s else { panic!("no substitute") };
    assert_eq!((p.spec.action.as_deref(), p.spec.rules.as_deref()), (Some("ALLOW"), Some(&[][..])));
    assert_eq!(p.spec.selector.unwrap().match_labels["app"], "cart");
    assert_eq!((p.metadata.name.as_str(), p.metadata.namespace.as_deref()), ("p", Some("shop")));
    // DENY (or CUSTOM, or an action that cannot be read): a DENY of everything in scope.
    for action in ["DENY", "CUSTOM", "DENNY"] {
        let (_, s) =
            refused(&ap(&format!("{{action: {action}, rules: [{{to: [{{operation: {{method: [GET]}}}}]}}]}}")));
        let Some(Object::AuthorizationPolicy(p)) = s else { panic!("no substitute for {action}") };
        assert_eq!((p.spec.action.as_deref(), p.spec.rules), (Some("DENY"), Some(vec![Rule::default()])), "{action}");
    }
    // The scope itself refused: the whole namespace instead (broader refusal, never broader
    // permission); targets kept when they are not the problem.
    let (_, s) = refused(&ap("{selector: {matchLabels: {'bad key!': x}}, action: DENY, rules: [{}]}"));
    let Some(Object::AuthorizationPolicy(p)) = s else { panic!("no substitute") };
    assert!(p.spec.selector.is_none(), "{p:?}");
    let (_, s) = refused(&ap(
        "{targetRefs: [{kind: Service, group: '', name: cart}], rules: [{to: [{operation: {pathz: [/]}}]}]}",
    ));
    let Some(Object::AuthorizationPolicy(p)) = s else { panic!("no substitute") };
    assert_eq!(p.spec.target_refs[0].name, "cart");
    // AUDIT and dry-run policies enforce nothing: nothing replaces them.
    assert!(refused(&ap("{action: AUDIT, rules: [{bogus: 1}]}")).1.is_none());
    // PeerAuthentication: STRICT; RequestAuthentication: a rule no token satisfies.
    let (_, s) = refused("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: shop}\nspec: {mtls: {mode: STRICTT}}");
    let Some(Object::PeerAuthentication(p)) = s else { panic!("no substitute") };
    assert_eq!(p.spec.mtls.and_then(|m| m.mode).as_deref(), Some("STRICT"));
    let (_, s) = refused("apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: jwt, namespace: shop}\nspec: {targetRefs: [{kind: Service, group: '', name: cart}, {kind: ServiceEntry, group: networking.istio.io, name: x}], jwtRules: [{issuer: x, jwks: '{}', fromHeaders: [{name: x-token}], outputClaimToHeaders: [{header: x-user, claim: sub}], fromCookies: [c]}]}");
    let Some(Object::RequestAuthentication(ra)) = s else { panic!("no substitute") };
    // The written rule keeps where tokens are looked for and which headers it owns (so clients'
    // copies are still stripped), with no keys to verify anything; then the catch-all.
    let written = &ra.spec.jwt_rules[0];
    assert_eq!((written.issuer.as_str(), written.jwks.as_deref()), ("x", Some(r#"{"keys":[]}"#)));
    assert_eq!(written.from_headers[0].name, "x-token");
    assert_eq!(written.output_claim_to_headers[0].header, "x-user");
    assert_eq!(ra.spec.jwt_rules[1].issuer, substitute::REFUSED_ISSUER);
    let targets: Vec<&str> = ra.spec.target_refs.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(targets, ["cart", "x"], "targets as written");
    // Substitutes carry no creation time: an older, weaker policy of their level cannot win.
    let (_, s) = refused("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: db, namespace: shop, creationTimestamp: '2026-01-01T00:00:00Z'}\nspec: {selector: {matchLabels: {app: db}}, mtls: {mode: STRICT}, bogus: 1}");
    let Some(Object::PeerAuthentication(p)) = s else { panic!("no substitute") };
    assert_eq!(p.metadata.creation_timestamp, None);
    // A Sidecar: REGISTRY_ONLY unless it reads as ALLOW_ANY.
    let sidecar = |spec: &str| {
        let (_, s) = refused(&format!("apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: default, namespace: shop}}\nspec: {spec}"));
        match s {
            Some(Object::Sidecar(sc)) => sc.spec.outbound_traffic_policy.and_then(|o| o.mode),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(
        sidecar("{egress: [{hosts: ['./*']}], outboundTrafficPolicy: {mode: REGISTRY_ONLY}}").as_deref(),
        Some("REGISTRY_ONLY")
    );
    assert_eq!(sidecar("{outboundTrafficPolicy: {mode: REGISTRY_ONLYY}}").as_deref(), Some("REGISTRY_ONLY"));
    assert_eq!(sidecar("{egress: [], outboundTrafficPolicy: {mode: ALLOW_ANY}}").as_deref(), Some("ALLOW_ANY"));
    // Other kinds keep their last accepted version instead: no substitute.
    let (_, s) = refused("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: v, namespace: shop}\nspec: {hosts: [r], corsPolicy: {}}");
    assert!(s.is_none());
    // A DestinationRule asking for TLS: verified TLS to its host stands in (never plaintext);
    // one that only tuned pools gets nothing.
    let dr = |tp: &str| {
        format!("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: d, namespace: egress}}\nspec: {{host: api.example.com, trafficPolicy: {tp}}}")
    };
    let (_, s) = refused(&dr("{tls: {mode: SIMPLE, credentialName: ca, insecureSkipVerify: true}}"));
    let Some(Object::DestinationRule(d)) = s else { panic!("no substitute") };
    let tls = d.spec.traffic_policy.and_then(|t| t.tls).expect("tls");
    assert_eq!((tls.mode.as_deref(), tls.insecure_skip_verify), (Some("SIMPLE"), None), "verified");
    assert_eq!(d.spec.host, "api.example.com");
    assert!(refused(&dr("{loadBalancer: {simple: PASSTHROUGH}}")).1.is_none());
    // A refused rate limit: its targets get one request a day, not no limit.
    let (_, s) = refused("apiVersion: policy.ambit.dev/v1alpha1\nkind: RateLimitPolicy\nmetadata: {name: l, namespace: shop}\nspec: {targetRefs: [{kind: Service, name: api}], rules: [{requests: 0, per: 1s}]}");
    let Some(Object::RateLimitPolicy(l)) = s else { panic!("no substitute for the rate limit") };
    assert_eq!(l.spec.target_refs[0].name, "api");
    assert_eq!((l.spec.rules[0].requests, l.spec.rules[0].per.as_str()), (1, "24h"));
    assert!(
        refused("apiVersion: policy.ambit.dev/v1alpha1\nkind: RateLimitPolicy\nmetadata: {name: l, namespace: shop}\nspec: {targetRefs: [{kind: Pod, name: x}], rules: []}").1.is_none(),
        "nothing it could target"
    );
    // TLS asked for by a port's settings, or a subset's, stands in just the same.
    for spec in [
        "{host: api.example.com, trafficPolicy: {portLevelSettings: [{port: {number: 443}, tls: {mode: SIMPLE}, tunnel: {}}]}}",
        "{host: api.example.com, subsets: [{name: a, trafficPolicy: {tls: {mode: SIMPLE}, loadBalancer: {simple: PASSTHROUGH}}}]}",
    ] {
        let (_, s) = refused(&format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: d, namespace: egress}}\nspec: {spec}"
        ));
        let Some(Object::DestinationRule(d)) = s else { panic!("no substitute for {spec}") };
        let tls = d.spec.traffic_policy.and_then(|t| t.tls).expect("tls");
        assert_eq!(tls.mode.as_deref(), Some("SIMPLE"), "{spec}");
    }
}

#[test]
fn service_entry_resolution_and_endpoints_are_checked() {
    let se = |spec: &str| {
        format!("apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: e, namespace: shop}}\nspec: {spec}")
    };
    parse(&se("{hosts: [x.example], ports: [{number: 80, name: http}], resolution: STATIC, endpoints: [{address: 192.0.2.1, ports: {http: 8080}}]}")).unwrap();
    for (spec, field) in [
        ("{hosts: [x.example], resolution: STATIK}", "spec.resolution"),
        ("{hosts: [x.example], endpoints: [{address: 192.0.2.1}]}", "spec.endpoints"),
        ("{hosts: [x.example], resolution: STATIC, endpoints: [{address: db.example}]}", "spec.endpoints[0].address"),
        ("{hosts: [x.example], ports: [{number: 80, name: http}], resolution: STATIC, endpoints: [{address: 192.0.2.1, ports: {web: 80}}]}", "spec.endpoints[0].ports.web"),
    ] {
        assert_eq!(rejected(&se(spec)).field, field, "{spec}");
    }
}

#[test]
fn service_entries_cannot_name_unsafe_or_unbounded_things() {
    let se = |spec: &str| {
        format!("apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: e, namespace: shop}}\nspec: {spec}")
    };
    let many = (0..300).map(|i| format!("h{i}.example")).collect::<Vec<_>>().join(", ");
    for (spec, field) in [
        ("{hosts: ['/Pod/shop/x']}", "spec.hosts[0]"),
        ("{hosts: [x.example], addresses: [10.0.0.0/8]}", "spec.addresses[0]"),
        ("{hosts: [x.example], addresses: [169.254.169.254]}", "spec.addresses[0]"),
        ("{hosts: [x.example], resolution: STATIC, endpoints: [{address: 127.0.0.1}]}", "spec.endpoints[0].address"),
        (&format!("{{hosts: [{many}]}}"), "spec.hosts"),
    ] {
        assert_eq!(rejected(&se(spec)).field, field, "{spec}");
    }
    parse(&se("{hosts: ['*.example.com', api.example.com], addresses: [203.0.113.9/32]}")).unwrap();
}
