//! `istio.workload.Address` resources as xDS delivers them to ztunnel and the waypoint:
//! decoding and conversion into the mesh state never panic, and a converted workload or
//! service can be indexed and looked up.
#![no_main]

use ambit_shared::proto::workload as pb;
use ambit_dataplane::state::{Service, State, Workload};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(address) = pb::Address::decode(data) else { return };
    let mut state = State::default();
    match address.r#type {
        Some(pb::address::Type::Workload(w)) => {
            if let Ok(w) = Workload::try_from(w) {
                let uid = w.uid.clone();
                state.insert_workload(w);
                assert!(state.workload(&uid).is_some(), "an inserted workload is found");
                assert!(state.remove_workload(&uid));
            }
        }
        Some(pb::address::Type::Service(s)) => {
            if let Ok(s) = Service::try_from(s) {
                state.insert_service(s);
            }
        }
        None => {}
    }
});
