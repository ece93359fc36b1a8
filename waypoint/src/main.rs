//! waypoint: Ambit's per-namespace L7 proxy (see docs/waypoint.md).

fn main() -> anyhow::Result<()> {
    ambit_waypoint::run::main()
}
