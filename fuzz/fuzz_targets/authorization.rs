//! `istio.security.Authorization` and a workload, as xDS delivers them to ztunnel: decoding,
//! indexing and evaluating a connection never panic, and evaluation is deterministic.
#![no_main]

use ambit_shared::proto::security::Authorization;
use ambit_shared::proto::workload as pb;
use ambit_shared::Identity;
use ambit_ztunnel::rbac::{Authorize, ConnectionInfo};
use ambit_dataplane::state::{State, Workload};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let (policy, rest) = data.split_at(data.len() / 2);
    let Ok(policy) = Authorization::decode(policy) else { return };
    let Ok(workload) = pb::Workload::decode(rest) else { return };
    let Ok(workload) = Workload::try_from(workload) else { return };
    let mut state = State::default();
    let name = policy.name.clone();
    state.insert_policy(policy);
    state.insert_workload(workload.clone());
    let peer = Identity::new("cluster.local", "shop", "web").expect("identity");
    for identity in [Some(&peer), None] {
        let conn = ConnectionInfo {
            source_identity: identity,
            source_ip: "10.244.1.5".parse().expect("ip"),
            destination: "10.244.2.7:8080".parse().expect("addr"),
        };
        let first = state.authorize(&workload, &conn);
        assert_eq!(first, state.authorize(&workload, &conn), "deterministic");
    }
    let _ = state.remove_policy(&name);
});
