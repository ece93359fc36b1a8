//! ztunnel: Ambit's per-node L4 proxy.
//!
//! Today it parses and validates its configuration, starts logging and serves readiness,
//! metrics and its configuration on the admin runtime; capture and the HBONE data path arrive
//! with issue #4 (see docs/ztunnel.md).

use std::sync::{Arc, Mutex};

use ambit_shared::telemetry::{self, Readiness};
use anyhow::Context;
use clap::Parser;

fn main() -> anyhow::Result<()> {
    let config = ambit_ztunnel::config::Config::parse();
    config.validate().context("invalid configuration")?;
    config.log.init().context("starting logging")?;
    let mut registry = telemetry::istio_registry();
    telemetry::register_build_info(&mut registry, "ztunnel");
    let readiness = Readiness::default();
    let bound = telemetry::spawn_admin(
        vec![config.readiness_addr, config.metrics_addr, config.admin_addr],
        readiness.clone(),
        Arc::new(Mutex::new(registry)),
        serde_json::to_value(&config).context("serializing the configuration")?,
        None,
    )
    .context("starting the admin endpoints")?;
    tracing::info!(node = %config.node_name, readiness = %bound[0], metrics = %bound[1], admin = %bound[2], "ztunnel started");
    readiness.set_ready();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("ztunnel-data").build()?;
    runtime.block_on(ambit_shared::lifecycle::shutdown_signal());
    tracing::info!("ztunnel stopping");
    Ok(())
}
