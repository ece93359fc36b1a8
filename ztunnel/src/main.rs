//! ztunnel: the node proxy and node agent; run by a container runtime with `CNI_COMMAND` set,
//! the CNI plugin.

use std::process::ExitCode;

fn main() -> ExitCode {
    if ambit_ztunnel::cni::invoked_as_plugin() {
        let status = ambit_ztunnel::cni::main();
        return ExitCode::from(u8::try_from(status).unwrap_or(1));
    }
    match ambit_ztunnel::run::main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ztunnel: {e:#}");
            ExitCode::FAILURE
        }
    }
}
