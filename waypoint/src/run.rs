//! Wiring: configuration, the control plane (xDS + CA), the HBONE listener with the HTTP
//! pipeline (or, in ingress mode, the Gateway's listeners), admin endpoints; drain on SIGTERM.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ambit_dataplane::cert_manager::{CaClient, CertManager, ServerTls};
use ambit_dataplane::state::Updater;
use ambit_shared::api::gateway_resource;
use ambit_shared::hbone::client::{Client as HboneClient, PoolSettings};
use ambit_shared::hbone::server::Server;
use ambit_shared::proto::type_url::{ADDRESS, GATEWAY, WAYPOINT_SERVICE};
use ambit_shared::telemetry::{self, Readiness};
use ambit_shared::tls::{control_plane_client_config, read_roots_file};
use ambit_shared::xds;
use anyhow::Context;
use clap::Parser;

use crate::config::{Config, Mode};
use crate::metrics::Metrics;
use crate::proxy::{Dialer, Inbound, Me, Options, Waypoint};
use crate::xds::WaypointUpdater;

pub fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    config.validate().context("invalid configuration")?;
    config.log.init().context("starting logging")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.worker_threads)
        .enable_all()
        .thread_name("waypoint-data")
        .build()?;
    runtime.block_on(run(config))
}

async fn run(config: Config) -> anyhow::Result<()> {
    let mut registry = telemetry::istio_registry();
    telemetry::register_build_info(&mut registry, "waypoint");
    let metrics = Metrics::register(&mut registry);
    let readiness = Readiness::default();
    let bound = telemetry::spawn_admin(
        vec![config.readiness_addr, config.metrics_addr],
        readiness.clone(),
        Arc::new(Mutex::new(registry)),
        serde_json::to_value(&config).context("serializing the configuration")?,
        None,
    )
    .context("starting the admin endpoints")?;

    let roots = read_roots_file(&config.root_cert)
        .with_context(|| format!("reading the mesh root certificate --root-cert {}", config.root_cert.display()))?;
    // Read at every use (Kubernetes rotates it); read once now to fail early.
    let token = ambit_shared::grpc::Token::File(config.token_file.clone());
    token.read().context("--token-file")?;
    let control_plane = ambit_shared::grpc::resolve(&config.xds_address).await.context("--xds-address")?;
    let tls = Arc::new(control_plane_client_config(&roots, vec![config.control_plane_identity()?])?);
    let identity = config.identity()?;

    let workloads = Updater::default();
    let l7 = Arc::default();
    let node = xds::istio_node("waypoint", &config.pod_ip, &config.pod_name, &config.namespace, &config.node_name);
    let ingress = config.mode == Mode::Ingress;
    let mut types = vec![ADDRESS, WAYPOINT_SERVICE];
    let mut xds_config = if ingress {
        // Its own configuration only, by name (the controller sends it to no one else).
        types.push(GATEWAY);
        let mut c = xds::Config::new(control_plane, tls.clone(), node, types);
        c.names.insert(GATEWAY, vec![gateway_resource(&config.namespace, &config.gateway)]);
        c
    } else {
        xds::Config::new(control_plane, tls.clone(), node, types)
    };
    xds_config.token = Some(token.clone());
    let (client, mut synced) = xds::Client::new(xds_config);
    let (gateway_tx, gateway_rx) = tokio::sync::watch::channel(None);
    let gateway_slot = ingress.then(|| Arc::new(gateway_tx));
    tokio::spawn(client.run(WaypointUpdater {
        workloads: workloads.clone(),
        l7: Arc::clone(&l7),
        gateway: gateway_slot.clone(),
    }));

    let certs = CertManager::new(CaClient { address: control_plane, tls, token, lifetime: config.cert_lifetime() });
    // The first certificate before the listener opens; renewals follow through ServerTls.
    certs.fetch(&identity).await.context("fetching the waypoint's certificate")?;

    let dialer = Dialer {
        upstream_tls: crate::proxy::UpstreamTls::new(),
        certs: certs.clone(),
        identity: identity.clone(),
        // As many connections per upstream as threads to encrypt on: more buy no parallelism.
        hbone: HboneClient::new(
            roots.clone(),
            PoolSettings {
                connections_per_key: config.worker_threads,
                read_ahead: config.hbone_limits.read_ahead as usize,
                ..PoolSettings::default()
            },
        ),
    };
    let tracer = if config.otlp_endpoint.is_empty() {
        crate::trace::Exporter::disabled()
    } else {
        crate::trace::Exporter::spawn(&config.otlp_endpoint, &format!("{}.{}", config.gateway, config.namespace))
    };
    let options = Options {
        me: Me {
            namespace: config.namespace.clone(),
            gateway: config.gateway.clone(),
            pod_ip: config.pod_ip.parse().ok(),
        },
        network: Arc::from(config.network.as_str()),
        state: workloads.state.clone(),
        normalization: config.normalization()?,
        sampling: config.trace_sampling,
        resolver: Arc::new(ambit_dataplane::resolve::Resolver::new(&config.dns_nameservers)),
        ingress: config.mode == Mode::Ingress,
        changes: workloads.changes.subscribe(),
    };
    let waypoint = Waypoint::new(dialer, l7, metrics, tracer, options);

    // Fail closed: no listener before the first complete configuration, so nothing is
    // accepted that the waypoint could not yet check; readiness follows.
    tracing::info!("waiting for the control plane's state before listening");
    synced.wait_for(|s| *s).await.context("the xDS client stopped before the first configuration")?;
    if ingress {
        return serve_ingress(config, waypoint, gateway_rx, readiness, identity, bound).await;
    }
    let listener = tokio::net::TcpListener::bind(config.hbone_addr)
        .await
        .with_context(|| format!("binding --hbone-addr {}", config.hbone_addr))?;
    tracing::info!(gateway = %config.gateway, %identity, hbone = %config.hbone_addr, readiness = %bound[0], metrics = %bound[1], "waypoint started");

    // The certificate is renewed by the manager; the listener's configuration follows it.
    let resolver = Arc::new(ServerTls::new(identity.clone(), certs.clone(), roots));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let budget = ambit_shared::hbone::server::Budget::new(config.hbone_limits);
    let server = Server::with_budget(Arc::new(Inbound(waypoint)), resolver, budget);
    let server = tokio::spawn(server.serve_until(listener, async move {
        let _ = stop_rx.await;
    }));
    readiness.set_ready();
    tracing::info!("ready: control plane state received, listening");

    ambit_shared::lifecycle::shutdown_signal().await;
    tracing::info!("waypoint stopping: closing the listener and draining");
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(config.drain_seconds), server).await;
    tracing::info!("waypoint stopped");
    Ok(())
}

/// Ingress mode: the Gateway's listeners, opened and closed as its configuration changes,
/// instead of the HBONE listener.
async fn serve_ingress(
    config: Config,
    waypoint: Arc<crate::proxy::Waypoint>,
    gateway: tokio::sync::watch::Receiver<Option<Arc<crate::gateway::GatewayL7>>>,
    readiness: Readiness,
    identity: ambit_shared::Identity,
    bound: Vec<std::net::SocketAddr>,
) -> anyhow::Result<()> {
    tracing::info!(gateway = %config.gateway, %identity, readiness = %bound[0], metrics = %bound[1], "ingress gateway started");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let limits = crate::proxy::ingress::Limits {
        max_connections: config.ingress_max_connections,
        max_per_source: config.ingress_max_connections_per_source,
    };
    let mut first = gateway.clone();
    let listeners =
        tokio::spawn(crate::proxy::ingress::serve(waypoint, gateway, config.ingress_bind_ip, limits, stop_rx));
    // Ready once the Gateway's configuration is in hand (a gateway the controller has nothing
    // for takes no traffic from a load balancer).
    tokio::select! {
        got = first.wait_for(Option::is_some) => {
            got.context("the xDS client stopped before the gateway's configuration")?;
            readiness.set_ready();
            tracing::info!("ready: the Gateway's configuration received, listeners follow it");
        }
        () = ambit_shared::lifecycle::shutdown_signal() => {
            tracing::info!("stopped before the Gateway's configuration arrived");
            return Ok(());
        }
    }
    ambit_shared::lifecycle::shutdown_signal().await;
    tracing::info!("ingress gateway stopping: closing the listeners and draining");
    let _ = stop_tx.send(true);
    // Open connections get the grace period: every connection's permit back, or the time up.
    if let Ok(budget) = listeners.await {
        let all = u32::try_from(config.ingress_max_connections).unwrap_or(u32::MAX);
        let _ = tokio::time::timeout(Duration::from_secs(config.drain_seconds), budget.acquire_many(all)).await;
    }
    tracing::info!("ingress gateway stopped");
    Ok(())
}
