//! Generated protobuf and gRPC code, one module per protobuf package, from our own `.proto`
//! files in `shared/proto/` (wire-compatible with Istio's and Envoy's; see its README).
//!
//! Owns no logic. Helpers that give meaning to these messages live with their users (`xds`,
//! the controller's translation, ztunnel's state).
//!
//! One type is written by hand: [`Any`], which every generated message uses in place of
//! `prost_types::Any` so that a resource body is held in `bytes::Bytes` and shared, not copied.

#![allow(clippy::all, missing_docs, unreachable_pub)]

pub mod istio {
    pub mod workload {
        include!(concat!(env!("OUT_DIR"), "/istio.workload.rs"));
        pub mod zds {
            include!(concat!(env!("OUT_DIR"), "/istio.workload.zds.rs"));
        }
    }
    pub mod security {
        include!(concat!(env!("OUT_DIR"), "/istio.security.rs"));
    }
    pub mod v1 {
        pub mod auth {
            include!(concat!(env!("OUT_DIR"), "/istio.v1.auth.rs"));
        }
    }
}

/// Ambit's own resource types.
pub mod ambit {
    pub mod waypoint {
        include!(concat!(env!("OUT_DIR"), "/ambit.waypoint.rs"));
    }
}

pub mod envoy {
    pub mod config {
        pub mod core {
            pub mod v3 {
                include!(concat!(env!("OUT_DIR"), "/envoy.config.core.v3.rs"));
            }
        }
    }
    pub mod service {
        pub mod discovery {
            pub mod v3 {
                include!(concat!(env!("OUT_DIR"), "/envoy.service.discovery.v3.rs"));
            }
        }
    }
}

/// `google.protobuf.Any` with the payload in [`bytes::Bytes`]: cloning a resource body is a
/// reference count, so one encoded body serves every subscriber. Same field numbers and wire
/// form as `prost_types::Any` (a test encodes both and compares the bytes).
#[derive(Clone, PartialEq, Eq, Hash, ::prost::Message)]
pub struct Any {
    /// `type.googleapis.com/<package>.<Message>`.
    #[prost(string, tag = "1")]
    pub type_url: ::prost::alloc::string::String,
    /// The encoded message.
    #[prost(bytes = "bytes", tag = "2")]
    pub value: ::bytes::Bytes,
}

pub mod google {
    pub mod rpc {
        include!(concat!(env!("OUT_DIR"), "/google.rpc.rs"));
    }
}

/// Type URLs of the resources the mesh exchanges over delta ADS.
pub mod type_url {
    pub const ADDRESS: &str = "type.googleapis.com/istio.workload.Address";
    pub const AUTHORIZATION: &str = "type.googleapis.com/istio.security.Authorization";
    /// Ambit's L7 configuration of one service bound to a waypoint.
    pub const WAYPOINT_SERVICE: &str = "type.googleapis.com/ambit.waypoint.ServiceConfig";
    /// Ambit's configuration of one ingress gateway (listeners, certificates, routes); sent
    /// only to the gateway's own identity.
    pub const GATEWAY: &str = "type.googleapis.com/ambit.waypoint.GatewayConfig";
}

pub use ambit::waypoint;
pub use envoy::service::discovery::v3 as discovery;
pub use istio::security;
pub use istio::v1::auth as ca;
pub use istio::workload;

/// Ambit's [`workload::Extension`] (by name, no config) on a workload whose outbound traffic is
/// limited to the mesh's registry (Istio's `outboundTrafficPolicy.mode: REGISTRY_ONLY`):
/// ztunnel refuses its connections to destinations that are neither mesh workloads nor
/// services. Its presence is the setting, so nothing in it can be misread; ztunnels that do not
/// know it (Istio's) ignore it.
pub const REGISTRY_ONLY_EXTENSION: &str = "ambit.dev/registry-only";
pub use istio::workload::zds;

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    /// Field numbers are the contract with Istio: spot-check them on the wire.
    #[test]
    fn field_numbers_match_istio() {
        let w = workload::Workload { uid: "u".into(), ..Default::default() };
        // uid is field 20 in istio.workload.Workload: tag (20 << 3 | 2) = 162 = varint a2 01.
        assert_eq!(&w.encode_to_vec()[..3], &[0xa2, 0x01, 0x01]);
        let req = ca::IstioCertificateRequest { validity_duration: 1, ..Default::default() };
        assert_eq!(req.encode_to_vec(), vec![3 << 3, 1]);
        let del = zds::DelWorkload { uid: "x".into() };
        assert_eq!(del.encode_to_vec(), vec![(2 << 3) | 2, 1, b'x']);
        let r = discovery::Resource { name: "n".into(), ..Default::default() };
        assert_eq!(r.encode_to_vec(), vec![(3 << 3) | 2, 1, b'n']);
    }

    /// Istio's ztunnel decodes `google.protobuf.Any`: ours must be the same bytes on the wire,
    /// both ways, including the empty and the large payload.
    #[test]
    fn any_is_wire_identical_to_prost_types() {
        let large: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
        for (type_url, value) in
            [("", Vec::new()), (type_url::ADDRESS, vec![1, 2, 3]), (type_url::AUTHORIZATION, large)]
        {
            let ours = Any { type_url: type_url.into(), value: value.clone().into() };
            let theirs = prost_types::Any { type_url: type_url.into(), value };
            assert_eq!(ours.encode_to_vec(), theirs.encode_to_vec());
            assert_eq!(Any::decode(theirs.encode_to_vec().as_slice()).ok(), Some(ours.clone()));
            assert_eq!(prost_types::Any::decode(ours.encode_to_vec().as_slice()).ok(), Some(theirs));
        }
        // Inside a resource too (the generated `Resource` uses ours).
        let body = Any { type_url: type_url::ADDRESS.into(), value: vec![9; 300].into() };
        let r = discovery::Resource {
            name: "n".into(),
            version: "v".into(),
            resource: Some(body.clone()),
            ..Default::default()
        };
        // prost writes fields in tag order: version (1), resource (2), name (3).
        let theirs = prost_types::Any { type_url: body.type_url.clone(), value: body.value.to_vec() }.encode_to_vec();
        let mut want = vec![(1 << 3) | 2, 1, b'v', (2 << 3) | 2];
        prost::encoding::encode_varint(theirs.len() as u64, &mut want);
        want.extend_from_slice(&theirs);
        want.extend_from_slice(&[(3 << 3) | 2, 1, b'n']);
        assert_eq!(r.encode_to_vec(), want);
    }
}
