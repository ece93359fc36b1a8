//! Table tests of Istio's documented AuthorizationPolicy → ztunnel cases.

use super::*;
use crate::manifest::{parse_object, split_yaml, Parsed};
use crate::model::Object;

fn object(yaml: &str) -> Object {
    let (mut docs, _) = split_yaml("t", yaml);
    match parse_object("t", docs.remove(0)).unwrap() {
        Parsed::Object(o) => *o,
        Parsed::Ignored { .. } => panic!("ignored"),
    }
}

fn policy(yaml: &str) -> AuthorizationPolicy {
    match object(yaml) {
        Object::AuthorizationPolicy(p) => p,
        other => panic!("{other:?}"),
    }
}

fn pa(yaml: &str) -> PeerAuthentication {
    match object(yaml) {
        Object::PeerAuthentication(p) => p,
        other => panic!("{other:?}"),
    }
}

fn ap(ns: &str, spec: &str) -> String {
    format!("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: {ns}}}\nspec:\n{spec}")
}

fn exact(v: &str) -> StringMatch {
    StringMatch { match_type: Some(MatchType::Exact(v.into())) }
}

fn translate(ns: &str, spec: &str) -> Translated {
    translate_policy(&policy(&ap(ns, spec)), &MeshSettings::default())
}

fn groups(t: &Translated) -> &Vec<Group> {
    &t.authorization.as_ref().expect("sent to ztunnel").groups
}

#[test]
fn scope_follows_selector_and_root_namespace() {
    let sel = translate("shop", "  selector: {matchLabels: {app: cart}}\n  rules: [{}]");
    assert_eq!(sel.authorization.unwrap().scope, pb::Scope::WorkloadSelector as i32);
    let ns = translate("shop", "  rules: [{}]");
    assert_eq!(ns.authorization.unwrap().scope, pb::Scope::Namespace as i32);
    let global = translate("istio-system", "  rules: [{}]");
    assert_eq!(global.authorization.unwrap().scope, pb::Scope::Global as i32);
    let sel_in_root = translate("istio-system", "  selector: {matchLabels: {app: x}}\n  rules: [{}]");
    assert_eq!(sel_in_root.authorization.unwrap().scope, pb::Scope::WorkloadSelector as i32);
}

#[test]
fn allow_from_principals_and_namespaces() {
    let t = translate(
        "shop",
        "  action: ALLOW\n  rules:\n  - from:\n    - source: {principals: [cluster.local/ns/shop/sa/front, '*/sa/admin', 'cluster.local/*', '*']}\n    - source: {namespaces: [ops]}",
    );
    let a = t.authorization.as_ref().unwrap();
    assert_eq!(a.action, pb::Action::Allow as i32);
    assert_eq!((a.name.as_str(), a.namespace.as_str()), ("p", "shop"));
    let from = &groups(&t)[0].rules;
    assert_eq!(from.len(), 1, "one clause for `from`");
    assert_eq!(from[0].matches.len(), 2, "one match per `from` entry (OR)");
    assert_eq!(
        from[0].matches[0].principals,
        vec![
            exact("cluster.local/ns/shop/sa/front"),
            StringMatch { match_type: Some(MatchType::Suffix("/sa/admin".into())) },
            StringMatch { match_type: Some(MatchType::Prefix("cluster.local/".into())) },
            StringMatch { match_type: Some(MatchType::Presence(())) },
        ]
    );
    assert_eq!(from[0].matches[1].namespaces, vec![exact("ops")]);
    assert!(t.warnings.is_empty());
}

#[test]
fn to_from_and_when_are_separate_anded_clauses() {
    let t = translate(
        "shop",
        "  rules:\n  - to: [{operation: {ports: ['8080']}}, {operation: {notPorts: ['9090']}}]\n    from: [{source: {ipBlocks: [10.0.0.0/8, 192.168.1.7], notIpBlocks: ['fd00::/8']}}]\n    when:\n    - {key: destination.port, values: ['443']}\n    - {key: source.namespace, notValues: [test]}",
    );
    let clauses = &groups(&t)[0].rules;
    assert_eq!(clauses.len(), 4, "to, from, and one per when");
    assert_eq!(clauses[0].matches[0].destination_ports, vec![8080]);
    assert_eq!(clauses[0].matches[1].not_destination_ports, vec![9090]);
    let from = &clauses[1].matches[0];
    assert_eq!(
        from.source_ips,
        vec![Address { address: vec![10, 0, 0, 0], length: 8 }, Address { address: vec![192, 168, 1, 7], length: 32 }]
    );
    assert_eq!(from.not_source_ips[0].length, 8);
    assert_eq!(from.not_source_ips[0].address.len(), 16);
    assert_eq!(clauses[2].matches, vec![Match { destination_ports: vec![443], ..Default::default() }]);
    assert_eq!(clauses[3].matches, vec![Match { not_namespaces: vec![exact("test")], ..Default::default() }]);
}

#[test]
fn allow_rules_with_l7_attributes_are_dropped_fail_closed() {
    let t = translate(
        "shop",
        "  action: ALLOW\n  rules:\n  - to: [{operation: {methods: [GET]}}]\n  - from: [{source: {requestPrincipals: ['*']}}]\n  - when: [{key: 'request.headers[x-user]', values: [admin]}]\n  - from: [{source: {namespaces: [shop]}}]",
    );
    let g = groups(&t);
    assert_eq!(g.len(), 1, "only the pure-L4 rule survives");
    assert_eq!(g[0].rules[0].matches[0].namespaces, vec![exact("shop")]);
    assert_eq!(t.warnings.len(), 3, "{:?}", t.warnings);
    assert!(t.warnings[0].contains("rules[0]") && t.warnings[0].contains("allows nothing"));

    // Every rule L7: an ALLOW policy with no groups, which allows nothing.
    let t = translate("shop", "  action: ALLOW\n  rules:\n  - to: [{operation: {paths: [/admin]}}]");
    assert!(groups(&t).is_empty());
}

#[test]
fn deny_rules_lose_only_their_l7_attributes() {
    let t = translate(
        "shop",
        "  action: DENY\n  rules:\n  - to: [{operation: {ports: ['8080'], paths: [/admin]}}]\n    from: [{source: {principals: [cluster.local/ns/x/sa/y], remoteIpBlocks: [1.2.3.4]}}]",
    );
    let clauses = &groups(&t)[0].rules;
    assert_eq!(clauses[0].matches, vec![Match { destination_ports: vec![8080], ..Default::default() }]);
    assert_eq!(clauses[1].matches[0].principals, vec![exact("cluster.local/ns/x/sa/y")]);
    assert_eq!(t.warnings.len(), 1);
    assert!(t.warnings[0].contains("L7 attributes removed"));

    // A DENY entry that was only L7 becomes an empty match, which never fires (as in Istio).
    let t = translate("shop", "  action: DENY\n  rules:\n  - to: [{operation: {methods: [POST]}}]\n    when: [{key: 'request.auth.claims[iss]', values: [x]}]");
    let clauses = &groups(&t)[0].rules;
    assert_eq!(clauses[0].matches, vec![Match::default()]);
    assert_eq!(clauses[1].matches, vec![Match::default()]);
    // Its warning says so, instead of claiming an L4 part is enforced.
    assert_eq!(t.warnings.len(), 1);
    assert!(t.warnings[0].contains("denies nothing") && t.warnings[0].contains("waypoint"), "{:?}", t.warnings);

    // One alternative only L7, another with an L4 part: the L7-only one denies
    // nothing at ztunnel (narrower, not broader) and the warning says so.
    let t = translate(
        "shop",
        "  action: DENY\n  rules:\n  - to: [{operation: {ports: ['8080']}}, {operation: {methods: [GET]}}]",
    );
    let clauses = &groups(&t)[0].rules;
    assert_eq!(clauses[0].matches[1], Match::default());
    assert_eq!(t.warnings.len(), 1);
    assert!(t.warnings[0].contains("only L7 attributes denies nothing"), "{:?}", t.warnings);
    assert!(!t.warnings[0].contains("broader"), "{:?}", t.warnings);
}

#[test]
fn empty_rules_and_no_rules() {
    let allow_all = translate("shop", "  rules: [{}]");
    assert_eq!(groups(&allow_all), &vec![Group { rules: vec![] }], "an empty rule matches everything");
    let deny_all = translate("shop", "  {}");
    assert!(groups(&deny_all).is_empty(), "ALLOW without rules matches nothing: denies all");
}

#[test]
fn service_accounts_default_to_the_policy_namespace() {
    let t = translate("shop", "  rules:\n  - from: [{source: {serviceAccounts: [front, ops/admin]}}]");
    assert_eq!(
        groups(&t)[0].rules[0].matches[0].service_accounts,
        vec![
            ServiceAccountMatch { namespace: "shop".into(), service_account: "front".into() },
            ServiceAccountMatch { namespace: "ops".into(), service_account: "admin".into() },
        ]
    );
}

#[test]
fn policies_not_for_ztunnel() {
    let waypoint = translate(
        "shop",
        "  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]\n  rules: [{}]",
    );
    assert_eq!(waypoint, Translated::default(), "waypoint policies are not sent to ztunnel");
    let audit = translate("shop", "  action: AUDIT\n  rules: [{}]");
    assert!(audit.authorization.is_none());
    assert!(audit.warnings[0].contains("AUDIT"));
    let mut p = policy(&ap("shop", "  action: DENY\n  rules: [{}]"));
    p.metadata.annotations.insert(keys::DRY_RUN.into(), "true".into());
    assert!(translate_policy(&p, &MeshSettings::default()).authorization.is_none());
}

fn pa_yaml(ns: &str, name: &str, spec: &str) -> String {
    format!("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {spec}")
}

#[test]
fn peer_authentication_strict_and_precedence() {
    let mesh_strict = pa(&pa_yaml("istio-system", "default", "{mtls: {mode: STRICT}}"));
    let ns_permissive = pa(&pa_yaml("shop", "default", "{mtls: {mode: PERMISSIVE}}"));
    let wl_strict = pa(&pa_yaml("shop", "cart", "{selector: {matchLabels: {app: cart}}, mtls: {mode: STRICT}}"));
    let wl_unset = pa(&pa_yaml("shop", "cart", "{selector: {matchLabels: {app: cart}}}"));

    let strict = |chain: PeerAuthnChain<'_>| peer_authn_outcome(&chain).static_strict;
    assert!(strict(PeerAuthnChain { mesh: Some(&mesh_strict), ..Default::default() }));
    assert!(!strict(PeerAuthnChain { mesh: Some(&mesh_strict), namespace: Some(&ns_permissive), workload: None }));
    assert!(strict(PeerAuthnChain { mesh: None, namespace: Some(&ns_permissive), workload: Some(&wl_strict) }));
    assert!(
        strict(PeerAuthnChain { mesh: Some(&mesh_strict), namespace: None, workload: Some(&wl_unset) }),
        "UNSET inherits"
    );
    assert!(!strict(PeerAuthnChain::default()), "PERMISSIVE by default");

    let s = static_strict(&MeshSettings::default());
    assert_eq!((s.name.as_str(), s.namespace.as_str()), ("istio_converted_static_strict", "istio-system"));
    assert_eq!(s.action, pb::Action::Deny as i32);
    assert_eq!(s.groups[0].rules[0].matches[0].not_principals, vec![string_match("*")]);
}

#[test]
fn port_level_mtls_becomes_a_converted_policy() {
    let wl = pa(&pa_yaml(
        "shop",
        "cart",
        "{selector: {matchLabels: {app: cart}}, mtls: {mode: STRICT}, portLevelMtls: {'9090': {mode: PERMISSIVE}}}",
    ));
    let out = peer_authn_outcome(&PeerAuthnChain { workload: Some(&wl), ..Default::default() });
    assert!(!out.static_strict, "the converted policy replaces the static one");
    let c = out.converted.unwrap();
    assert_eq!(c.name, "converted_peer_authentication_cart");
    assert_eq!(c.groups[0].rules[0].matches[0].not_principals, vec![string_match("*")]);
    assert_eq!(c.groups[0].rules[1].matches[0].not_destination_ports, vec![9090]);

    let wl =
        pa(&pa_yaml("shop", "cart", "{selector: {matchLabels: {app: cart}}, portLevelMtls: {'8443': {mode: STRICT}}}"));
    let c = peer_authn_outcome(&PeerAuthnChain { workload: Some(&wl), ..Default::default() }).converted.unwrap();
    assert_eq!(c.groups[0].rules[0].matches[0].destination_ports, vec![8443]);
}

#[test]
fn service_accounts_must_be_names_or_namespace_slash_name() {
    let parse = |value: &str| {
        let (mut docs, _) = split_yaml(
            "t",
            &ap("shop", &format!("  rules:\n  - from: [{{source: {{serviceAccounts: ['{value}']}}}}]")),
        );
        parse_object("t", docs.remove(0))
    };
    // Istio's CRD admits these (case and dots are not checked): so do we.
    let long_ok = format!("shop/{}", "a".repeat(315));
    for ok in ["cart", "shop/cart", "other-ns/cart.v2", "Shop/cart", "sh.op/cart", "shop/Cart_1", long_ok.as_str()] {
        assert!(parse(ok).is_ok(), "{ok}");
    }
    let too_long = format!("shop/{}", "a".repeat(316));
    for bad in ["", "shop/", "/cart", "a/b/c", "shop/*", "*", "sh*op/cart", too_long.as_str()] {
        let err = parse(bad).expect_err(bad);
        assert_eq!(err.field, "spec.rules[0].from[0].source.serviceAccounts[0]", "{bad}: {err}");
        assert!(err.reason.contains("<namespace>/<service account>"), "{err}");
    }
}

#[test]
fn service_accounts_do_not_mix_with_principals_or_namespaces() {
    let (mut docs, _) =
        split_yaml("t", &ap("shop", "  rules:\n  - from: [{source: {serviceAccounts: [cart], namespaces: [shop]}}]"));
    let err = parse_object("t", docs.remove(0)).expect_err("mixed");
    assert_eq!(err.field, "spec.rules[0].from[0].source.serviceAccounts");
}

#[test]
fn more_than_sixteen_service_accounts_are_refused_as_istio_does() {
    let list = |n: usize| (0..n).map(|i| format!("sa{i}")).collect::<Vec<_>>().join(", ");
    let parse = |n: usize| {
        let (mut docs, _) = split_yaml(
            "t",
            &ap("shop", &format!("  rules:\n  - from: [{{source: {{notServiceAccounts: [{}]}}}}]", list(n))),
        );
        parse_object("t", docs.remove(0))
    };
    assert!(parse(16).is_ok());
    let err = parse(17).expect_err("17 items");
    assert_eq!(err.field, "spec.rules[0].from[0].source.notServiceAccounts");
    assert!(err.reason.contains("at most 16"), "{err}");
}
