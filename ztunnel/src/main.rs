//! ztunnel: the node proxy and node agent; run by a container runtime with `CNI_COMMAND` set,
//! the CNI plugin; `ztunnel install-cni` installs that plugin on a node.

use std::process::ExitCode;

/// jemalloc, as Istio's ztunnel: with glibc's allocator an idle proxied connection cost
/// 5.8–6.7 KB of RSS per ztunnel, with jemalloc 4.2–5.4 KB (10 000 open, same run, see
/// docs/performance.md); its size classes fit the many small per-connection allocations.
/// x86_64 only (see Cargo.toml).
#[cfg(target_arch = "x86_64")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    if ambit_ztunnel::node::cni::invoked_as_plugin() {
        let status = ambit_ztunnel::node::cni::main();
        return ExitCode::from(u8::try_from(status).unwrap_or(1));
    }
    if std::env::args_os().nth(1).is_some_and(|a| a == "install-cni") {
        use clap::Parser;
        let args = ambit_ztunnel::node::install::InstallArgs::parse_from(std::env::args_os().skip(1));
        return match ambit_ztunnel::node::install::run(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ztunnel install-cni: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match ambit_ztunnel::run::main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ztunnel: {e:#}");
            ExitCode::FAILURE
        }
    }
}
