//! Generates the protobuf and gRPC code from `proto/` with protox (a pure-Rust protobuf
//! compiler), so building needs no system `protoc`.

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
    tonic_prost_build::configure().build_client(true).build_server(true).compile_fds(fds)?;
    Ok(())
}
