//! The ztunnel daemon: wires configuration, the control plane (xDS + CA), the node agent, the
//! proxy and the admin endpoints together, and drains on SIGTERM.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ambit_shared::proto::type_url::{ADDRESS, AUTHORIZATION};
use ambit_shared::telemetry::{self, AdminRoutes, Readiness};
use ambit_shared::tls::{control_plane_client_config, read_roots_file};
use ambit_shared::xds;
use anyhow::Context;
use clap::Parser;
use tokio::sync::watch;

use crate::config::Config;
use crate::identity::{CaClient, CertManager};
use crate::metrics::Metrics;
use crate::proxy::{self, Proxy};
use crate::state::Updater;

/// Runs the daemon until SIGTERM / SIGINT, then drains.
pub fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    config.validate().context("invalid configuration")?;
    config.log.init().context("starting logging")?;
    crate::inpod::netns::record_host().context("recording the host network namespace")?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("ztunnel-data").build()?;
    runtime.block_on(run(Arc::new(config)))
}

async fn run(config: Arc<Config>) -> anyhow::Result<()> {
    let roots = read_roots_file(&config.root_cert).with_context(|| {
        format!("reading the mesh root certificate --root-cert / ROOT_CERT {}", config.root_cert.display())
    })?;
    let token = std::fs::read_to_string(&config.token_file)
        .with_context(|| format!("reading --token-file / TOKEN_FILE {}", config.token_file.display()))?
        .trim()
        .to_owned();
    let control_plane = Arc::new(control_plane_client_config(&roots, vec![config.control_plane_identity()?])?);

    let mut registry = telemetry::istio_registry();
    telemetry::register_build_info(&mut registry, "ztunnel");
    let metrics = Metrics::register(&mut registry);

    let updater = Updater::default();
    let node = xds::istio_node("ztunnel", "", &format!("ztunnel-{}", config.node_name), "", &config.node_name);
    let mut xds_config =
        xds::Config::new(config.xds_address, control_plane.clone(), node, vec![ADDRESS, AUTHORIZATION]);
    xds_config.token = Some(token.clone());
    let (client, synced) = xds::Client::new(xds_config);
    tokio::spawn(client.run(updater.clone()));

    let certs = CertManager::new(CaClient {
        address: config.ca_address,
        tls: control_plane,
        token,
        lifetime: config.cert_lifetime(),
    });
    let proxy = Proxy::new(config.clone(), updater.state.clone(), certs.clone(), roots, metrics);

    if config.node_agent {
        crate::agent::start(config.clone(), updater.state.clone(), updater.changes.subscribe(), synced.clone())
            .context("starting the node agent")?;
    }
    let (snapshot_tx, snapshot) = watch::channel(false);
    tokio::spawn(proxy::run_zds(proxy.clone(), config.zds_socket.clone(), snapshot_tx));

    let readiness = Readiness::default();
    let routes: AdminRoutes = {
        let (proxy, state) = (proxy.clone(), updater.state.clone());
        Arc::new(move |path: &str| match path {
            "/config_dump" => {
                let state = state.read().unwrap_or_else(|p| p.into_inner());
                let dump = crate::admin::config_dump(&state, &proxy);
                Some(serde_json::to_string_pretty(&dump).unwrap_or_default())
            }
            _ => None,
        })
    };
    let bound = telemetry::spawn_admin(
        vec![config.readiness_addr, config.metrics_addr, config.admin_addr],
        readiness.clone(),
        Arc::new(Mutex::new(registry)),
        serde_json::to_value(&*config).context("serializing the configuration")?,
        Some((routes, config.admin_addr)),
    )
    .context("starting the admin endpoints")?;
    tracing::info!(node = %config.node_name, readiness = %bound[0], metrics = %bound[1], admin = %bound[2], "ztunnel started");

    // Ready once the control plane's state and the node agent's snapshot are both in.
    let (mut synced_rx, mut snapshot_rx, ready) = (synced.clone(), snapshot.clone(), readiness.clone());
    tokio::spawn(async move {
        if synced_rx.wait_for(|s| *s).await.is_ok() && snapshot_rx.wait_for(|s| *s).await.is_ok() {
            ready.set_ready();
            tracing::info!("ready: control plane state and pod snapshot received");
        }
    });

    ambit_shared::lifecycle::shutdown_signal().await;
    tracing::info!("ztunnel stopping: closing listeners and draining");
    proxy.drain(Duration::from_secs(config.drain_seconds)).await;
    tracing::info!("ztunnel stopped");
    Ok(())
}
