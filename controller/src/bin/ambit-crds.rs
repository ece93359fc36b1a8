//! Prints the CustomResourceDefinitions generated from the controller's model types: the
//! chart's `files/crds.yaml` (`cargo run -p ambit-controller --bin ambit-crds >
//! charts/ambit/files/crds.yaml`).

fn main() -> std::process::ExitCode {
    match ambit_controller::crds::render() {
        Ok(text) => {
            print!("{text}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ambit-crds: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
