//! Node agent ↔ ztunnel messages (ZDS) from a peer on the socket: decoding never panics and
//! what decodes re-encodes to a message that decodes to the same value.
#![no_main]

use ambit_shared::proto::zds;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = zds::WorkloadRequest::decode(data) {
        let again = zds::WorkloadRequest::decode(request.encode_to_vec().as_slice()).expect("re-decodes");
        assert_eq!(again, request);
    }
    if let Ok(response) = zds::WorkloadResponse::decode(data) {
        let again = zds::WorkloadResponse::decode(response.encode_to_vec().as_slice()).expect("re-decodes");
        assert_eq!(again, response);
    }
    if let Ok(hello) = zds::ZdsHello::decode(data) {
        let _ = hello.encode_to_vec();
    }
});
