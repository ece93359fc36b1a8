//! controller: Ambit's control plane.
//!
//! Today it parses and validates its configuration and serves readiness and metrics on the
//! admin runtime; sources, translation, xDS and the CA arrive with issue #3
//! (see docs/controller.md).

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
    telemetry::register_build_info(&mut registry, "controller");
    let readiness = Readiness::default();
    let bound = telemetry::spawn_admin(
        vec![config.admin_addr],
        readiness.clone(),
        Arc::new(Mutex::new(registry)),
        serde_json::to_value(&config).context("serializing the configuration")?,
    )
    .context("starting the admin endpoints")?;
    tracing::info!(admin = %bound[0], cert_lifetime = ?config.cert_lifetime(), "controller started");
    readiness.set_ready();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("controller").build()?;
    runtime.block_on(ambit_shared::lifecycle::shutdown_signal());
    tracing::info!("controller stopping");
    Ok(())
}
