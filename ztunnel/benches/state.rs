//! Per-connection costs of ztunnel's state: original-destination look-ups among 100 000
//! workloads and 10 000 services, and authorization with 10 000 policies in the state (100 per
//! namespace applying to the destination, and the worst case of all 10 000 applying).
//!
//! `cargo bench -p ambit-ztunnel --bench state`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use ambit_dataplane::state::{Destination, Service, State, Workload};
use ambit_shared::proto::security::{self as sec, Action, Authorization, Group, Match, Rules, Scope, StringMatch};
use ambit_shared::proto::workload as pb;
use ambit_shared::Identity;
use ambit_ztunnel::rbac::{Authorize, ConnectionInfo};
use criterion::{criterion_group, criterion_main, Criterion};

fn ip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x0a00_0000 + i)
}

fn workload(i: u32) -> Workload {
    let ns = format!("ns-{}", i % 100);
    let svc = format!("{ns}/svc-{}.{ns}.svc.cluster.local", i % 10_000 / 100);
    Workload::try_from(pb::Workload {
        uid: format!("Kubernetes//Pod/{ns}/pod-{i}"),
        name: format!("pod-{i}"),
        namespace: ns,
        service_account: format!("sa-{}", i % 50),
        addresses: vec![ip(i).octets().to_vec()],
        tunnel_protocol: pb::TunnelProtocol::Hbone as i32,
        services: [(
            svc,
            pb::PortList { ports: vec![pb::Port { service_port: 80, target_port: 8080, app_protocol: 0 }] },
        )]
        .into(),
        authorization_policies: (0..10).map(|p| format!("ns-{}/sel-{p}", i % 100)).collect(),
        ..Default::default()
    })
    .unwrap()
}

fn policy(ns: &str, name: &str, scope: Scope, action: Action, principal: &str) -> Authorization {
    Authorization {
        name: name.into(),
        namespace: ns.into(),
        scope: scope as i32,
        action: action as i32,
        groups: vec![Group {
            rules: vec![
                Rules { matches: vec![Match { destination_ports: vec![8080, 9090], ..Default::default() }] },
                Rules {
                    matches: vec![Match {
                        principals: vec![StringMatch {
                            match_type: Some(sec::string_match::MatchType::Exact(principal.into())),
                        }],
                        ..Default::default()
                    }],
                },
            ],
        }],
        dry_run: false,
    }
}

fn build(all_in_one_namespace: bool) -> State {
    let mut s = State::default();
    for i in 0..100_000 {
        s.insert_workload(workload(i));
    }
    for i in 0..10_000u32 {
        let ns = format!("ns-{}", i % 100);
        s.insert_service(
            Service::try_from(pb::Service {
                name: format!("svc-{i}"),
                namespace: ns.clone(),
                hostname: format!("svc-{i}.{ns}.svc.cluster.local"),
                addresses: vec![pb::NetworkAddress {
                    network: String::new(),
                    address: Ipv4Addr::from(0x6460_0000 + i).octets().to_vec(),
                }],
                ports: vec![pb::Port { service_port: 80, target_port: 8080, app_protocol: 0 }],
                ..Default::default()
            })
            .unwrap(),
        );
    }
    // 100 namespaces × (10 selector policies that every workload names + 90 namespace-wide),
    // or all 10 000 in one namespace.
    for i in 0..10_000u32 {
        let ns = if all_in_one_namespace { "ns-7".to_owned() } else { format!("ns-{}", i / 100) };
        let (name, scope) = if i % 100 < 10 {
            (format!("sel-{}", i % 10), Scope::WorkloadSelector)
        } else {
            (format!("p-{i}"), Scope::Namespace)
        };
        let name = if all_in_one_namespace && scope == Scope::WorkloadSelector { format!("{name}-{i}") } else { name };
        let action = if i % 2 == 0 { Action::Allow } else { Action::Deny };
        s.insert_policy(policy(&ns, &name, scope, action, &format!("cluster.local/ns/other/sa/sa-{i}")));
    }
    s
}

fn lookups(c: &mut Criterion) {
    let state = build(false);
    let mut g = c.benchmark_group("lookup_100k_workloads");
    let mut i = 0u32;
    g.bench_function("workload_by_ip", |b| {
        b.iter(|| {
            i = (i + 7919) % 100_000;
            let d = state.destination("", SocketAddr::new(IpAddr::V4(ip(i)), 8080));
            assert!(matches!(d, Destination::Workload(_)));
        })
    });
    g.bench_function("service_vip_then_endpoints", |b| {
        b.iter(|| {
            i = (i + 7919) % 10_000;
            let Destination::Service { service, port } =
                state.destination("", SocketAddr::new(IpAddr::V4(Ipv4Addr::from(0x6460_0000 + i)), 80))
            else {
                panic!("not a service")
            };
            state.endpoints(&service, port).len()
        })
    });
    g.finish();
}

fn authorization(c: &mut Criterion) {
    let mut g = c.benchmark_group("authorize_10k_policies");
    let src: Identity = "spiffe://cluster.local/ns/shop/sa/front".parse().unwrap();
    for (label, all) in [("100_apply", false), ("10000_apply", true)] {
        let state = build(all);
        let mut dst = workload(7);
        if all {
            // Name every selector policy of ns-7 so all 10 000 apply.
            let names: HashMap<String, ()> =
                (0..10_000u32).filter(|i| i % 100 < 10).map(|i| (format!("ns-7/sel-{}-{i}", i % 10), ())).collect();
            dst.policies = names.into_keys().map(Into::into).collect();
        }
        let conn = ConnectionInfo {
            source_identity: Some(&src),
            source_ip: "10.200.0.1".parse().unwrap(),
            destination: "10.0.0.7:8080".parse().unwrap(),
        };
        // Every applicable policy is evaluated (none matches this source): the worst case.
        assert_eq!(state.authorize(&dst, &conn), Err(ambit_ztunnel::rbac::Denial::NotAllowed));
        g.bench_function(label, |b| b.iter(|| state.authorize(&dst, &conn)));
    }
    g.finish();
}

criterion_group!(benches, lookups, authorization);
criterion_main!(benches);
