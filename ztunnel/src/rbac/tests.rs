//! Istio's documented L4 authorization semantics, as a table.

use ambit_shared::proto::security::Scope;

use super::*;

fn sm(t: MatchType) -> StringMatch {
    StringMatch { match_type: Some(t) }
}
fn exact(v: &str) -> StringMatch {
    sm(MatchType::Exact(v.into()))
}
fn cidr(a: &str, len: u32) -> Address {
    let ip: IpAddr = a.parse().unwrap();
    let address = match ip {
        IpAddr::V4(v) => v.octets().to_vec(),
        IpAddr::V6(v) => v.octets().to_vec(),
    };
    Address { address, length: len }
}

fn policy(name: &str, action: Action, groups: Vec<Group>) -> Authorization {
    Authorization {
        name: name.into(),
        namespace: "shop".into(),
        scope: Scope::Namespace as i32,
        action: action as i32,
        groups,
        dry_run: false,
    }
}

/// One group with one clause holding one match.
fn one(m: Match) -> Vec<Group> {
    vec![Group { rules: vec![Rules { matches: vec![m] }] }]
}

fn id(s: &str) -> Identity {
    s.parse().unwrap()
}

struct Case {
    name: &'static str,
    policies: Vec<Authorization>,
    identity: Option<&'static str>,
    source: &'static str,
    destination: &'static str,
    allowed: bool,
}

#[test]
fn istio_semantics() {
    let front = "spiffe://cluster.local/ns/shop/sa/front";
    let admin = "spiffe://cluster.local/ns/ops/sa/admin";
    let allow_front = || {
        policy(
            "allow-front",
            Action::Allow,
            one(Match { principals: vec![exact("cluster.local/ns/shop/sa/front")], ..Default::default() }),
        )
    };
    let cases = vec![
        Case {
            name: "no policies: allowed",
            policies: vec![],
            identity: Some(front),
            source: "10.0.0.1",
            destination: "10.0.0.2:80",
            allowed: true,
        },
        Case {
            name: "ALLOW matching principal",
            policies: vec![allow_front()],
            identity: Some(front),
            source: "10.0.0.1",
            destination: "10.0.0.2:80",
            allowed: true,
        },
        Case {
            name: "ALLOW not matching: denied",
            policies: vec![allow_front()],
            identity: Some(admin),
            source: "10.0.0.1",
            destination: "10.0.0.2:80",
            allowed: false,
        },
        Case {
            name: "ALLOW principal, plaintext client: denied",
            policies: vec![allow_front()],
            identity: None,
            source: "10.0.0.1",
            destination: "10.0.0.2:80",
            allowed: false,
        },
        Case {
            name: "principal prefix",
            policies: vec![policy(
                "p",
                Action::Allow,
                one(Match {
                    principals: vec![sm(MatchType::Prefix("cluster.local/ns/ops/".into()))],
                    ..Default::default()
                }),
            )],
            identity: Some(admin),
            source: "10.0.0.1",
            destination: "10.0.0.2:80",
            allowed: true,
        },
        Case {
            name: "principal suffix",
            policies: vec![policy(
                "p",
                Action::Allow,
                one(Match { principals: vec![sm(MatchType::Suffix("/sa/front".into()))], ..Default::default() }),
            )],
            identity: Some(front),
            source: "10.0.0.1",
            destination: "10.0.0.2:80",
            allowed: true,
        },
        Case {
            name: "presence denies plaintext only (STRICT)",
            policies: vec![policy(
                "strict",
                Action::Deny,
                one(Match { not_principals: vec![sm(MatchType::Presence(()))], ..Default::default() }),
            )],
            identity: None,
            source: "10.0.0.1",
            destination: "10.0.0.2:80",
            allowed: false,
        },
        Case {
            name: "STRICT lets mTLS through",
            policies: vec![policy(
                "strict",
                Action::Deny,
                one(Match { not_principals: vec![sm(MatchType::Presence(()))], ..Default::default() }),
            )],
            identity: Some(front),
            source: "10.0.0.1",
            destination: "10.0.0.2:80",
            allowed: true,
        },
        Case {
            name: "namespaces",
            policies: vec![policy(
                "p",
                Action::Allow,
                one(Match { namespaces: vec![exact("ops")], ..Default::default() }),
            )],
            identity: Some(admin),
            source: "10.0.0.1",
            destination: "10.0.0.2:80",
            allowed: true,
        },
        Case {
            name: "notNamespaces",
            policies: vec![policy(
                "p",
                Action::Allow,
                one(Match { not_namespaces: vec![exact("ops")], ..Default::default() }),
            )],
            identity: Some(admin),
            source: "10.0.0.1",
            destination: "10.0.0.2:80",
            allowed: false,
        },
        Case {
            name: "service accounts",
            policies: vec![policy(
                "p",
                Action::Allow,
                one(Match {
                    service_accounts: vec![ServiceAccountMatch {
                        namespace: "shop".into(),
                        service_account: "front".into(),
                    }],
                    ..Default::default()
                }),
            )],
            identity: Some(front),
            source: "10.0.0.1",
            destination: "10.0.0.2:80",
            allowed: true,
        },
        Case {
            name: "ipBlocks contain the source",
            policies: vec![policy(
                "p",
                Action::Allow,
                one(Match { source_ips: vec![cidr("10.0.0.0", 8)], ..Default::default() }),
            )],
            identity: None,
            source: "10.9.8.7",
            destination: "10.0.0.2:80",
            allowed: true,
        },
        Case {
            name: "ipBlocks miss the source",
            policies: vec![policy(
                "p",
                Action::Allow,
                one(Match { source_ips: vec![cidr("10.0.0.0", 24)], ..Default::default() }),
            )],
            identity: None,
            source: "10.0.1.7",
            destination: "10.0.0.2:80",
            allowed: false,
        },
        Case {
            name: "notIpBlocks",
            policies: vec![policy(
                "p",
                Action::Deny,
                one(Match { not_source_ips: vec![cidr("10.0.0.0", 8)], ..Default::default() }),
            )],
            identity: None,
            source: "192.168.1.1",
            destination: "10.0.0.2:80",
            allowed: false,
        },
        Case {
            name: "IPv6 block",
            policies: vec![policy(
                "p",
                Action::Allow,
                one(Match { source_ips: vec![cidr("fd00::", 16)], ..Default::default() }),
            )],
            identity: None,
            source: "fd00::7",
            destination: "[fd00::2]:80",
            allowed: true,
        },
        Case {
            name: "a DENY block written in IPv4-mapped form denies the IPv4 client",
            policies: vec![policy(
                "p",
                Action::Deny,
                one(Match { source_ips: vec![cidr("::ffff:10.0.0.0", 104)], ..Default::default() }),
            )],
            identity: None,
            source: "10.9.8.7",
            destination: "10.0.0.2:80",
            allowed: false,
        },
        Case {
            name: "an IPv4 DENY block denies the client seen as IPv4-mapped IPv6",
            policies: vec![policy(
                "p",
                Action::Deny,
                one(Match { source_ips: vec![cidr("10.0.0.0", 8)], ..Default::default() }),
            )],
            identity: None,
            source: "::ffff:10.9.8.7",
            destination: "10.0.0.2:80",
            allowed: false,
        },
        Case {
            name: "ports",
            policies: vec![policy(
                "p",
                Action::Deny,
                one(Match { destination_ports: vec![9090], ..Default::default() }),
            )],
            identity: Some(front),
            source: "10.0.0.1",
            destination: "10.0.0.2:9090",
            allowed: false,
        },
        Case {
            name: "notPorts",
            policies: vec![policy(
                "p",
                Action::Deny,
                one(Match { not_destination_ports: vec![80], ..Default::default() }),
            )],
            identity: Some(front),
            source: "10.0.0.1",
            destination: "10.0.0.2:80",
            allowed: true,
        },
        Case {
            name: "DENY wins over a matching ALLOW",
            policies: vec![
                allow_front(),
                policy(
                    "deny-front",
                    Action::Deny,
                    one(Match { principals: vec![exact("cluster.local/ns/shop/sa/front")], ..Default::default() }),
                ),
            ],
            identity: Some(front),
            source: "10.0.0.1",
            destination: "10.0.0.2:80",
            allowed: false,
        },
        Case {
            name: "clauses are AND'd: port matches, principal does not",
            policies: vec![policy(
                "p",
                Action::Allow,
                vec![Group {
                    rules: vec![
                        Rules { matches: vec![Match { destination_ports: vec![80], ..Default::default() }] },
                        Rules {
                            matches: vec![Match {
                                principals: vec![exact("cluster.local/ns/shop/sa/front")],
                                ..Default::default()
                            }],
                        },
                    ],
                }],
            )],
            identity: Some(admin),
            source: "10.0.0.1",
            destination: "10.0.0.2:80",
            allowed: false,
        },
        Case {
            name: "matches in a clause are OR'd",
            policies: vec![policy(
                "p",
                Action::Allow,
                vec![Group {
                    rules: vec![Rules {
                        matches: vec![
                            Match { namespaces: vec![exact("nope")], ..Default::default() },
                            Match { namespaces: vec![exact("ops")], ..Default::default() },
                        ],
                    }],
                }],
            )],
            identity: Some(admin),
            source: "10.0.0.1",
            destination: "10.0.0.2:80",
            allowed: true,
        },
        Case {
            name: "empty group (rules: [{}]) allows all",
            policies: vec![policy("p", Action::Allow, vec![Group { rules: vec![] }])],
            identity: None,
            source: "10.0.0.1",
            destination: "10.0.0.2:80",
            allowed: true,
        },
        Case {
            name: "a clause without matches holds",
            policies: vec![policy("p", Action::Allow, vec![Group { rules: vec![Rules { matches: vec![] }] }])],
            identity: None,
            source: "10.0.0.1",
            destination: "10.0.0.2:80",
            allowed: true,
        },
        Case {
            name: "ALLOW without groups allows nothing (all rules were L7)",
            policies: vec![policy("p", Action::Allow, vec![])],
            identity: Some(front),
            source: "10.0.0.1",
            destination: "10.0.0.2:80",
            allowed: false,
        },
        Case {
            name: "DENY without groups denies nothing",
            policies: vec![policy("p", Action::Deny, vec![])],
            identity: Some(front),
            source: "10.0.0.1",
            destination: "10.0.0.2:80",
            allowed: true,
        },
        Case {
            name: "an empty match (stripped L7 DENY entry) never fires",
            policies: vec![policy("p", Action::Deny, one(Match::default()))],
            identity: Some(front),
            source: "10.0.0.1",
            destination: "10.0.0.2:80",
            allowed: true,
        },
    ];
    for c in cases {
        let identity = c.identity.map(id);
        let conn = ConnectionInfo {
            source_identity: identity.as_ref(),
            source_ip: c.source.parse().unwrap(),
            destination: c.destination.parse().unwrap(),
        };
        let result = authorize(c.policies.iter().map(Ok), &conn);
        assert_eq!(result.is_ok(), c.allowed, "{}: {result:?}", c.name);
    }
}

#[test]
fn unknown_policies_fail_closed_and_denials_say_why() {
    let conn = ConnectionInfo {
        source_identity: None,
        source_ip: "10.0.0.1".parse().unwrap(),
        destination: "10.0.0.2:80".parse().unwrap(),
    };
    assert_eq!(authorize([Err("shop/missing")], &conn), Err(Denial::UnknownPolicy("shop/missing".into())));
    let deny = policy("d", Action::Deny, vec![Group { rules: vec![] }]);
    assert_eq!(authorize([Ok(&deny)], &conn), Err(Denial::DeniedBy("shop/d".into())));
    let mut dry = deny.clone();
    dry.dry_run = true;
    assert_eq!(authorize([Ok(&dry)], &conn), Ok(()), "dry-run policies are not enforced");
}

#[test]
fn authorization_uses_global_namespace_and_named_policies() {
    use ambit_dataplane::state::testing::wl;
    let mut s = State::default();
    let dst = wl("w1", "shop", "cart", "10.1.0.5", None, true);
    let deny_all = |name: &str, ns: &str, scope: Scope| Authorization {
        name: name.into(),
        namespace: ns.into(),
        scope: scope as i32,
        action: Action::Deny as i32,
        groups: vec![Group { rules: vec![] }],
        dry_run: false,
    };
    let conn = ConnectionInfo {
        source_identity: None,
        source_ip: "10.2.0.1".parse().unwrap(),
        destination: "10.1.0.5:8080".parse().unwrap(),
    };
    assert!(s.authorize(&dst, &conn).is_ok());
    s.insert_policy(deny_all("ns-wide", "other", Scope::Namespace));
    assert!(s.authorize(&dst, &conn).is_ok(), "another namespace's policy does not apply");
    s.insert_policy(deny_all("mesh", "istio-system", Scope::Global));
    assert_eq!(s.authorize(&dst, &conn), Err(Denial::DeniedBy("istio-system/mesh".into())));
    assert!(s.remove_policy("istio-system/mesh"));
    s.insert_policy(deny_all("selected", "shop", Scope::WorkloadSelector));
    assert!(s.authorize(&dst, &conn).is_ok(), "selector policies apply only where named");
    let mut named = dst.clone();
    named.policies = vec!["shop/selected".into()];
    assert_eq!(s.authorize(&named, &conn), Err(Denial::DeniedBy("shop/selected".into())));
    named.policies = vec!["shop/not-yet-arrived".into()];
    assert_eq!(s.authorize(&named, &conn), Err(Denial::UnknownPolicy("shop/not-yet-arrived".into())));
}
