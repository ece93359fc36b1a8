//! An ingress gateway's configuration as the control plane (or anyone who could forge it)
//! sends it: decoding and compiling never panic (a listener that cannot be served is left out
//! or kept as a claim), and choosing a listener by any name never panics.
#![no_main]

use ambit_shared::proto::waypoint as pb;
use ambit_waypoint::gateway::{GatewayL7, PortPlan};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(config) = pb::GatewayConfig::decode(data) else { return };
    let (compiled, _left_out) = GatewayL7::compile(&config);
    for plan in compiled.ports.values() {
        let listeners = match plan {
            PortPlan::Http(l) | PortPlan::Https(l) | PortPlan::Passthrough(l) => l,
            PortPlan::Tcp(_) => continue,
        };
        for name in [None, Some(""), Some("a.example.com"), Some("*.example.com"), Some("EXAMPLE.com."), Some("[::1]")] {
            if let Some(l) = listeners.choose(name) {
                let host = name.unwrap_or("");
                let _ = l.l7.routes.iter().map(|r| r.host_rank(host)).max();
            }
        }
    }
});
