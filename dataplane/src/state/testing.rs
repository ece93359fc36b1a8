//! Workload and service builders for tests, here and in other crates (feature `testing`).

use std::collections::HashMap;
use std::net::IpAddr;

use ambit_shared::proto::workload::{self as pb, NetworkAddress, Port, PortList};

use super::{Service, Workload};

pub fn wl(uid: &str, ns: &str, sa: &str, ip: &str, svc: Option<&str>, healthy: bool) -> Workload {
    let ip: IpAddr = ip.parse().expect("a test workload address");
    let bytes = match ip {
        IpAddr::V4(v) => v.octets().to_vec(),
        IpAddr::V6(v) => v.octets().to_vec(),
    };
    let mut services = HashMap::new();
    if let Some(s) = svc {
        services.insert(
            s.to_owned(),
            PortList { ports: vec![Port { service_port: 80, target_port: 8080, app_protocol: 0 }] },
        );
    }
    Workload::try_from(pb::Workload {
        uid: uid.into(),
        name: uid.into(),
        namespace: ns.into(),
        service_account: sa.into(),
        addresses: vec![bytes],
        tunnel_protocol: pb::TunnelProtocol::Hbone as i32,
        services,
        status: if healthy { pb::WorkloadStatus::Healthy } else { pb::WorkloadStatus::Unhealthy } as i32,
        ..Default::default()
    })
    .expect("a valid test workload")
}

pub fn svc(ns: &str, host: &str, vip: [u8; 4]) -> Service {
    Service::try_from(pb::Service {
        name: host.split('.').next().unwrap_or(host).into(),
        namespace: ns.into(),
        hostname: host.into(),
        addresses: vec![NetworkAddress { network: String::new(), address: vip.to_vec() }],
        ports: vec![Port { service_port: 80, target_port: 8080, app_protocol: 0 }],
        ..Default::default()
    })
    .expect("a valid test service")
}
