//! Generates the protobuf and gRPC code from `proto/` with protox (a pure-Rust protobuf
//! compiler), so building needs no system `protoc`. `google.protobuf.Any` maps to
//! `proto::Any`; the other well-known types stay `prost_types`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    const FILES: &[&str] = &[
        "proto/workload.proto",
        "proto/authorization.proto",
        "proto/citadel.proto",
        "proto/zds.proto",
        "proto/waypoint.proto",
        "proto/envoy/service/discovery/v3/discovery.proto",
    ];
    for f in FILES {
        println!("cargo:rerun-if-changed={f}");
    }
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(FILES, ["proto"])?;
    // `google.protobuf.Any` is our own message (`proto::Any`, the payload in `bytes::Bytes`), so
    // a resource body published once is shared by every response that carries it.
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .extern_path(".google.protobuf.Any", "crate::proto::Any")
        .compile_fds(fds)?;
    Ok(())
}
