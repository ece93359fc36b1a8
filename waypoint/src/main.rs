//! waypoint: Ambit's per-namespace L7 proxy.
//!
//! Today it parses and validates its configuration and serves readiness and metrics on the
//! admin runtime; the HTTP data path arrives with issue #7 (see docs/waypoint.md).

mod config;

use std::sync::{Arc, Mutex};

use ambit_shared::telemetry::{self, Readiness};
use anyhow::Context;
use clap::Parser;

fn main() -> anyhow::Result<()> {
    let config = config::Config::parse();
    config.validate().context("invalid configuration")?;
    config.log.init().context("starting logging")?;
    let mut registry = telemetry::istio_registry();
    telemetry::register_build_info(&mut registry, "waypoint");
    let readiness = Readiness::default();
    let bound = telemetry::spawn_admin(
        vec![config.readiness_addr, config.metrics_addr],
        readiness.clone(),
        Arc::new(Mutex::new(registry)),
        serde_json::to_value(&config).context("serializing the configuration")?,
        None,
    )
    .context("starting the admin endpoints")?;
    tracing::info!(gateway = %config.gateway, namespace = %config.namespace, readiness = %bound[0], metrics = %bound[1], "waypoint started");
    readiness.set_ready();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("waypoint-data").build()?;
    runtime.block_on(ambit_shared::lifecycle::shutdown_signal());
    tracing::info!("waypoint stopping");
    Ok(())
}
