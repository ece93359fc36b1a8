//! The ztunnel daemon: wires configuration, the control plane (xDS + CA), the node agent, the
//! proxy and the admin endpoints together, and drains on SIGTERM.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ambit_shared::grpc;
use ambit_shared::proto::type_url::{ADDRESS, AUTHORIZATION};
use ambit_shared::telemetry::{self, AdminRoutes, Readiness};
use ambit_shared::tls::{control_plane_client_config, read_roots_file};
use ambit_shared::xds;
use anyhow::Context;
use clap::Parser;
use tokio::sync::watch;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::proxy::Proxy;
use ambit_dataplane::cert_manager::{CaClient, CertManager};
use ambit_dataplane::state::Updater;

/// Runs the daemon until SIGTERM / SIGINT, then drains.
pub fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    config.validate().context("invalid configuration")?;
    config.log.init().context("starting logging")?;
    ambit_shared::netns::record_host().context("recording the host network namespace")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.worker_threads)
        .enable_all()
        .thread_name("ztunnel-data")
        .build()?;
    runtime.block_on(run(Arc::new(config)))
}

async fn run(config: Arc<Config>) -> anyhow::Result<()> {
    let roots = read_roots_file(&config.root_cert).with_context(|| {
        format!("reading the mesh root certificate --root-cert / ROOT_CERT {}", config.root_cert.display())
    })?;
    // Read at every use (Kubernetes rotates it); read once now to fail early.
    let token = grpc::Token::File(config.token_file.clone());
    token.read().context("--token-file / TOKEN_FILE")?;
    let control_plane = Arc::new(control_plane_client_config(&roots, vec![config.control_plane_identity()?])?);
    let xds_address = grpc::resolve(&config.xds_address).await.context("--xds-address / XDS_ADDRESS")?;
    let ca_address = grpc::resolve(&config.ca_address).await.context("--ca-address / CA_ADDRESS")?;

    let mut registry = telemetry::istio_registry();
    telemetry::register_build_info(&mut registry, "ztunnel");
    let metrics = Metrics::register(&mut registry);

    let updater = Updater::default();
    let node = xds::istio_node("ztunnel", "", &format!("ztunnel-{}", config.node_name), "", &config.node_name);
    let mut xds_config = xds::Config::new(xds_address, control_plane.clone(), node, vec![ADDRESS, AUTHORIZATION]);
    xds_config.token = Some(token.clone());
    let (client, synced) = xds::Client::new(xds_config);
    tokio::spawn(client.run(updater.clone()));

    let certs =
        CertManager::new(CaClient { address: ca_address, tls: control_plane, token, lifetime: config.cert_lifetime() });
    let dns = config.dns_proxy.then(|| {
        let metrics = crate::dns_proxy::DnsMetrics::register(&mut registry);
        crate::dns_proxy::DnsProxy::new(updater.state.clone(), &config.dns_nameservers, metrics)
    });
    let proxy = Proxy::new(
        config.clone(),
        updater.state.clone(),
        certs.clone(),
        roots,
        metrics,
        dns,
        updater.changes.subscribe(),
    );

    if config.node_agent {
        crate::node::agent::start(config.clone(), updater.state.clone(), updater.changes.subscribe(), synced.clone())
            .context("starting the node agent")?;
    }
    let cni = install_cni(&config)?;
    let (snapshot_tx, snapshot) = watch::channel(false);
    tokio::spawn(crate::inpod::zds::run_zds(proxy.clone(), config.zds_socket.clone(), synced.clone(), snapshot_tx));

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
    if let Some((install, keeper)) = cni {
        keeper.abort();
        match tokio::task::spawn_blocking(move || install.release()).await {
            Ok(Ok(true)) => tracing::info!("CNI plugin removed from the node (no successor took the agent socket)"),
            Ok(Ok(false)) => tracing::info!("CNI plugin left to the successor that took the agent socket"),
            Ok(Err(e)) => tracing::warn!(error = %e, "removing the CNI plugin"),
            Err(e) => tracing::warn!(error = %e, "removing the CNI plugin"),
        }
    }
    proxy.drain(Duration::from_secs(config.drain_seconds)).await;
    tracing::info!("ztunnel stopped");
    Ok(())
}

/// With --cni-bin-dir/--cni-conf-dir: the plugin installed for this node agent and a task
/// keeping it chained (the network plugin may rewrite its configuration).
fn install_cni(
    config: &Config,
) -> anyhow::Result<Option<(Arc<crate::node::install::AgentInstall>, tokio::task::JoinHandle<()>)>> {
    let (Some(bin_dir), Some(conf_dir)) = (&config.cni_bin_dir, &config.cni_conf_dir) else { return Ok(None) };
    anyhow::ensure!(config.node_agent, "--cni-bin-dir needs the node agent (--node-agent=true)");
    let me = std::env::current_exe().context("locating this executable")?;
    let host_socket = config.cni_host_socket.clone().unwrap_or_else(|| config.cni_socket.display().to_string());
    let (install, chained) = crate::node::install::AgentInstall::new(
        &me,
        bin_dir.clone(),
        conf_dir.clone(),
        host_socket,
        config.cni_exclude_namespaces.clone(),
        config.cni_socket.clone(),
    )
    .context("installing the CNI plugin")?;
    match chained {
        Some(path) => tracing::info!(config = %path.display(), "CNI plugin chained"),
        None => tracing::info!(dir = %conf_dir.display(), "CNI plugin in place; waiting for the network configuration"),
    }
    let install = Arc::new(install);
    let keeper = {
        let install = install.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            loop {
                tick.tick().await;
                let install = install.clone();
                match tokio::task::spawn_blocking(move || install.keep()).await {
                    Ok(Ok(Some(path))) => tracing::info!(config = %path.display(), "CNI plugin chained again"),
                    Ok(Ok(None)) => {}
                    Ok(Err(e)) => tracing::warn!(error = %e, "keeping the CNI plugin chained"),
                    Err(e) => tracing::warn!(error = %e, "keeping the CNI plugin chained"),
                }
            }
        })
    };
    Ok(Some((install, keeper)))
}
