//! controller: Ambit's control plane (see the library's `run` module and docs/controller.md).

use clap::Parser;

fn main() -> anyhow::Result<()> {
    ambit_controller::run::main(ambit_controller::config::Config::parse())
}
