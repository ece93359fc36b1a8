//! ztunnel's DNS proxy decision on arbitrary bytes from a pod: never a panic; a reply, when
//! there is one, is a response carrying the message's id.
#![no_main]

use ambit_dataplane::state::State;
use ambit_ztunnel::dns_proxy::answer::{decide, encode_for_udp, Client, Decision};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let state = State::default();
    let client = Client { namespace: "shop".into(), network: "".into(), workload_uid: "w".into(), cluster_domain: "cluster.local".into() };
    match decide(data, &state, &client) {
        Decision::Reply(reply) => {
            assert_eq!(reply[..2], data[..2], "the id is kept");
            assert_eq!(reply[2] & 0x80, 0x80, "a response");
        }
        Decision::Answer(m) => {
            let _ = encode_for_udp(*m, 512);
        }
        Decision::Forward(_) | Decision::Drop => {}
    }
});
