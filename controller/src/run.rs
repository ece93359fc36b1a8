//! Wiring: the source feeds the index, the index publishes to the xDS state, and one TLS
//! listener serves delta ADS and the CA. Admin endpoints run on their own thread.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use ambit_shared::certs::{Ca, Validity};
use ambit_shared::proto::ca::istio_certificate_service_server::IstioCertificateServiceServer;
use ambit_shared::telemetry::{self, AdminRoutes, Readiness};
use ambit_shared::tls::{control_plane_server_config_reloadable, MeshRoots, ReloadableCert};
use ambit_shared::xds::server::DeltaAdsServer;
use ambit_shared::{Identity, WorkloadCert};
use anyhow::Context;
use tokio::sync::{mpsc, watch};

use crate::auth::{Authenticator, ReloadingTokenFile};
use crate::ca::{load_or_create_root, load_root, CaService, CaSettings};
use crate::config::Config;
use crate::deploy::status::StatusSync;
use crate::deploy::Deploy;
use crate::index::{Event, Index};
use crate::metrics::Metrics;
use crate::source::dir::DirSource;
use crate::source::Rejections;
use crate::xds::{AdsService, XdsState};

/// Everything the admin pages read.
#[derive(Clone)]
pub struct Shared {
    pub index: Arc<RwLock<Index>>,
    pub xds: Arc<XdsState>,
    pub rejections: Rejections,
    pub metrics: Arc<Metrics>,
    /// Which identities run on which node, copied out of the index after each batch so the CA
    /// never waits for a long recompute.
    pub identities: Arc<RwLock<crate::store::NodeIdentities>>,
}

/// Handles of a running controller (tests use them).
pub struct Running {
    pub grpc_addr: SocketAddr,
    pub shared: Shared,
    pub root_pem: String,
    pub identity: Identity,
}

/// `/debug/config_dump`, `/debug/rejected`, `/debug/waypoints` and `/debug/routes`.
pub fn admin_routes(shared: Shared) -> AdminRoutes {
    Arc::new(move |path: &str| match path {
        "/debug/config_dump" => {
            let resources: serde_json::Map<String, serde_json::Value> = crate::xds::TYPES
                .iter()
                .map(|t| {
                    let entries: serde_json::Map<String, serde_json::Value> = shared
                        .xds
                        .snapshot(t)
                        .into_iter()
                        .map(|(name, (version, body))| {
                            (name, serde_json::json!({"version": version, "bytes": body.value.len()}))
                        })
                        .collect();
                    ((*t).to_owned(), entries.into())
                })
                .collect();
            let index = shared.index.read().unwrap_or_else(|p| p.into_inner());
            let warnings: serde_json::Map<String, serde_json::Value> =
                index.warnings().iter().map(|(k, w)| (k.to_string(), serde_json::json!(w))).collect();
            let body = serde_json::json!({
                "resources": resources,
                "subscribers": shared.xds.subscribers(),
                "translation_warnings": warnings,
                "objects": index.store().len(),
            });
            Some(serde_json::to_string_pretty(&body).unwrap_or_default())
        }
        "/debug/rejected" => Some(serde_json::to_string_pretty(&shared.rejections.all()).unwrap_or_default()),
        "/debug/waypoints" => {
            let index = shared.index.read().unwrap_or_else(|p| p.into_inner());
            let statuses: Vec<serde_json::Value> = crate::deploy::status::statuses(index.store(), index.mesh())
                .into_iter()
                .map(|((kind, ns, name), status)| serde_json::json!({"kind": kind, "namespace": ns, "name": name, "status": status}))
                .collect();
            Some(serde_json::to_string_pretty(&statuses).unwrap_or_default())
        }
        "/debug/routes" => {
            let index = shared.index.read().unwrap_or_else(|p| p.into_inner());
            Some(
                serde_json::to_string_pretty(&route_statuses(index.store(), index.mesh(), &shared.rejections.all()))
                    .unwrap_or_default(),
            )
        }
        _ => None,
    })
}

/// Every Gateway API route's status as it would be written in Kubernetes (`/debug/routes`, for
/// directory mode): `status.parents`, one entry per parentRef of ours — a Service (a waypoint's
/// route) or an ingress Gateway of ours — with `Accepted` and `ResolvedRefs` and their reasons;
/// a refused route's entries say why (the field named).
pub fn route_statuses(
    store: &crate::store::Store,
    mesh: &crate::translate::MeshSettings,
    rejections: &std::collections::BTreeMap<String, Vec<crate::rejection::Rejection>>,
) -> Vec<serde_json::Value> {
    use crate::deploy::status::{merge_route_parents, rfc3339_now, route_parents, RouteVerdict, CONTROLLER_NAME};
    use crate::model::{Kind, Object, ParentReference};
    let kind_name = crate::translate::ingress::route_kind_name;
    let mut gateway_entries: std::collections::BTreeMap<(Kind, String, String), Vec<serde_json::Value>> =
        crate::deploy::status::ingress_statuses(store, mesh)
            .into_iter()
            .filter(|((k, _, _), _)| *k != Kind::Gateway)
            .map(|(key, status)| (key, status["parents"].as_array().cloned().unwrap_or_default()))
            .collect();
    let now = rfc3339_now();
    let mut out = Vec::new();
    for kind in [Kind::HttpRoute, Kind::GrpcRoute, Kind::TlsRoute, Kind::TcpRoute] {
        for object in store.list(kind, None) {
            let (meta, parents): (_, &[ParentReference]) = match object {
                Object::HttpRoute(r) => (&r.metadata, &r.spec.parent_refs),
                Object::GrpcRoute(r) => (&r.metadata, &r.spec.parent_refs),
                Object::TlsRoute(r) => (&r.metadata, &r.spec.parent_refs),
                Object::TcpRoute(r) => (&r.metadata, &r.spec.parent_refs),
                _ => continue,
            };
            let refs: Vec<serde_json::Value> = parents.iter().filter_map(|p| serde_json::to_value(p).ok()).collect();
            let ns = meta.namespace.clone().unwrap_or_default();
            let mut ours = route_parents(&refs, &RouteVerdict::default());
            ours.extend(gateway_entries.remove(&(kind, ns.clone(), meta.name.clone())).unwrap_or_default());
            out.push(serde_json::json!({
                "kind": kind_name(kind),
                "namespace": ns,
                "name": meta.name,
                "status": {"parents": merge_route_parents(&[], ours, &now).unwrap_or_default()},
            }));
        }
    }
    // Refused routes: each parent of ours says why.
    for r in rejections.values().flatten() {
        let Some(key) = r
            .key
            .as_ref()
            .filter(|k| matches!(k.kind, Kind::HttpRoute | Kind::GrpcRoute | Kind::TlsRoute | Kind::TcpRoute))
        else {
            continue;
        };
        let verdict = RouteVerdict { rejection: Some(r), generation: None };
        let refs: &[serde_json::Value] = r.parent_refs.as_deref().map_or(&[], |v| v.as_slice());
        let mut ours = route_parents(refs, &verdict);
        let refused = serde_json::json!([{"type": "Accepted", "status": "False", "reason": "UnsupportedValue", "message": r.to_string()}]);
        for p in refs {
            let Ok(parent) = serde_json::from_value::<ParentReference>(p.clone()) else { continue };
            let gw_ns = parent.namespace.as_deref().unwrap_or(&key.namespace);
            let is_gateway = parent.group.as_deref().unwrap_or("gateway.networking.k8s.io")
                == "gateway.networking.k8s.io"
                && parent.kind.as_deref().unwrap_or("Gateway") == "Gateway";
            if is_gateway && store.gateway(gw_ns, &parent.name).is_some_and(crate::translate::ingress::is_ingress) {
                ours.push(
                    serde_json::json!({"parentRef": p, "controllerName": CONTROLLER_NAME, "conditions": refused}),
                );
            }
        }
        out.push(serde_json::json!({
            "kind": kind_name(key.kind),
            "namespace": key.namespace,
            "name": key.name,
            "status": {"parents": merge_route_parents(&[], ours, &now).unwrap_or_default()},
        }));
    }
    out
}

/// Applies event batches to the index and publishes the results, draining bursts into one
/// batch so a large initial load is translated once.
///
/// Nothing is served and the controller is not ready until every source part has delivered its
/// initial state (`expected_syncs` markers): a subscriber's first response compared against a
/// half-loaded index would remove policies it holds.
async fn index_loop(
    mut rx: mpsc::Receiver<Vec<Event>>,
    shared: Shared,
    readiness: Readiness,
    expected_syncs: usize,
    mut deployer: Option<Box<dyn Deploy>>,
    mut status: Option<StatusSync>,
    mut leader: watch::Receiver<bool>,
) {
    let mut syncs = 0;
    let mut leading = *leader.borrow();
    // A new leader writes everything again, even without a batch.
    let mut rewrite = false;
    // The election's sender goes away when there is none (directory mode): stop watching then.
    let mut watching = true;
    loop {
        // A batch of events, or a leadership change (which re-writes everything we own).
        let mut batch = tokio::select! {
            batch = rx.recv() => match batch {
                Some(b) => b,
                None => return,
            },
            changed = leader.changed(), if watching => {
                if changed.is_err() {
                    watching = false;
                    continue;
                }
                leading = *leader.borrow_and_update();
                if let Some(s) = status.as_mut() {
                    s.reset();
                }
                if let Some(d) = deployer.as_mut() {
                    d.reset();
                }
                rewrite = true;
                Vec::new()
            }
        };
        while let Ok(more) = rx.try_recv() {
            batch.extend(more);
        }
        syncs += batch.iter().filter(|e| matches!(e, Event::Synced)).count();
        // Waypoint objects and statuses depend on Gateways, Services, Namespaces and (ingress)
        // routes, Secrets and grants only: pod churn does not recompute them.
        let waypoint_inputs = rewrite
            || batch.iter().any(|e| {
                let kind = match e {
                    Event::Apply(o) => o.kind(),
                    Event::Delete(k) => k.kind,
                    Event::Synced => return true,
                };
                // Waypoints' objects and statuses read Gateways, Services and Namespaces;
                // an ingress Gateway's status also its routes, certificates and grants.
                crate::translate::ingress::status_reads(kind)
            });
        rewrite = false;
        let write_waypoints = leading && waypoint_inputs;
        let (changes, identities) = {
            let mut index = shared.index.write().unwrap_or_else(|p| p.into_inner());
            let changes = index.apply(batch);
            if let Some(d) = deployer.as_mut().filter(|_| write_waypoints) {
                d.sync(index.store());
            }
            if let Some(s) = status.as_mut().filter(|_| write_waypoints) {
                s.sync(index.store(), index.mesh());
            }
            (changes, index.store().node_identities())
        };
        *shared.identities.write().unwrap_or_else(|p| p.into_inner()) = identities;
        let changed = shared.xds.publish(changes);
        shared.metrics.rejected_objects.set(shared.rejections.count() as i64);
        tracing::debug!(changed, "index updated");
        if syncs >= expected_syncs && !readiness.is_ready() {
            tracing::info!("initial state loaded; serving");
            shared.xds.mark_synced();
            readiness.set_ready();
        }
    }
}

/// Issues the controller's own serving certificate (its identity, and the DNS names and
/// addresses standard clients verify it by) and renews it at half life.
fn serving_cert(
    ca: &Arc<Ca>,
    identity: &Identity,
    (names, ips): (Vec<String>, Vec<std::net::IpAddr>),
    lifetime: Duration,
) -> anyhow::Result<(Arc<ReloadableCert>, WorkloadCert)> {
    let issue = move |ca: &Ca, id: &Identity| ca.issue_server(id, &names, &ips, Validity::from_now(lifetime));
    let cert = issue(ca, identity).context("issuing the controller's certificate")?;
    let reloadable = Arc::new(ReloadableCert::new(&cert).context("loading the controller's certificate")?);
    let (renew_ca, renew_id, renew_target) = (ca.clone(), identity.clone(), reloadable.clone());
    let mut refresh_at = cert.refresh_at();
    tokio::spawn(async move {
        loop {
            let wait = refresh_at.duration_since(std::time::SystemTime::now()).unwrap_or_default();
            tokio::time::sleep(wait.max(Duration::from_secs(1))).await;
            match issue(&renew_ca, &renew_id) {
                Ok(next) => {
                    if let Err(e) = renew_target.replace(&next) {
                        tracing::error!(error = %e, "renewed certificate does not load; keeping the current one");
                    }
                    refresh_at = next.refresh_at();
                }
                Err(e) => tracing::error!(error = %e, "renewing the controller's certificate failed; retrying"),
            }
        }
    });
    Ok((reloadable, cert))
}

/// Starts everything on the current runtime; returns once serving.
pub async fn start(config: &Config, readiness: Readiness) -> anyhow::Result<Running> {
    let metrics = Arc::new(Metrics::new());
    let index = Arc::new(RwLock::new(Index::new(config.mesh())));
    let xds = XdsState::new(metrics.clone());
    let rejections = Rejections::default();
    let identities = Arc::new(RwLock::new(crate::store::NodeIdentities::default()));
    let shared = Shared {
        index: index.clone(),
        xds: xds.clone(),
        rejections: rejections.clone(),
        metrics: metrics.clone(),
        identities: identities.clone(),
    };
    let (tx, rx) = mpsc::channel(1024);

    // Directory mode (one controller) always leads.
    let (leader_tx, leader_rx) = watch::channel(true);
    // An operator-supplied root wins in either mode.
    let plugged = match (&config.ca_cert_file, &config.ca_key_file) {
        (Some(c), Some(k)) => Some(load_root(c, k)?),
        _ => None,
    };
    let Inputs { ca, auth, expected_syncs, deployer: kube_deployer, status: status_sync } = match &config.manifests {
        Some(dir) => start_directory(config, dir, plugged, &rejections, tx)?,
        None => start_kubernetes(config, plugged, &rejections, tx, leader_tx).await?,
    };
    let ca = Arc::new(ca);
    let roots = MeshRoots::new(std::slice::from_ref(ca.root_der()))?;
    let identity = config.own_identity()?;
    let (serving, _) = serving_cert(&ca, &identity, config.serving_names(), config.cert_lifetime())?;
    let tls = Arc::new(control_plane_server_config_reloadable(serving, &roots)?);

    let deployer: Option<Box<dyn Deploy>> = match (&config.waypoint_dir, &config.manifests) {
        (Some(dir), Some(_)) => Some(Box::new(
            crate::deploy::dir::DirDeployer::new(dir, config.waypoint_settings())
                .with_context(|| format!("creating --waypoint-dir {}", dir.display()))?,
        )),
        _ => kube_deployer,
    };
    tokio::spawn(index_loop(rx, shared.clone(), readiness, expected_syncs, deployer, status_sync, leader_rx));
    tokio::spawn(
        xds.clone()
            .debounce(Duration::from_millis(config.push_debounce_ms), Duration::from_millis(config.push_max_delay_ms)),
    );

    let ads = AdsService { state: xds.clone(), auth: auth.clone() };
    let ca_service = CaService {
        ca: ca.clone(),
        trust_domain: config.trust_domain.clone(),
        auth,
        identities,
        settings: CaSettings {
            default_lifetime: config.cert_lifetime(),
            max_lifetime: Duration::from_secs(config.max_cert_lifetime_seconds),
            node_proxies: config.node_proxies()?,
        },
        metrics,
    };
    let listener = tokio::net::TcpListener::bind(config.grpc_addr)
        .await
        .with_context(|| format!("binding --grpc-addr {}", config.grpc_addr))?;
    let grpc_addr = listener.local_addr()?;
    let limits = ambit_shared::admission::ConnectionLimits {
        total: config.grpc_max_connections,
        per_peer: config.grpc_max_connections_per_peer,
    };
    let incoming = ambit_shared::grpc::tls_incoming(listener, tls, limits);
    tokio::spawn(serve_grpc(incoming, ads, ca_service));
    tracing::info!(%grpc_addr, %identity, "serving xDS and CA");
    Ok(Running { grpc_addr, shared, root_pem: ca.root_pem().to_owned(), identity })
}

/// What a source mode starts: the CA root, caller authentication, how many source parts must
/// report their initial state, and in Kubernetes mode the deployer and the status writer.
struct Inputs {
    ca: Ca,
    auth: Arc<dyn Authenticator>,
    expected_syncs: usize,
    deployer: Option<Box<dyn Deploy>>,
    status: Option<StatusSync>,
}

/// Directory mode: the root from `--ca-dir`, callers by token file, the manifest directory.
fn start_directory(
    config: &Config,
    dir: &std::path::Path,
    plugged: Option<Ca>,
    rejections: &Rejections,
    tx: mpsc::Sender<Vec<Event>>,
) -> anyhow::Result<Inputs> {
    let ca = match plugged {
        Some(ca) => ca,
        None => load_or_create_root(&config.ca_dir, &config.trust_domain, ambit_shared::certs::DEFAULT_ROOT_LIFETIME)?,
    };
    let token_file = config.token_file.as_ref().context("--token-file is required with --manifests")?;
    let auth = Arc::new(ReloadingTokenFile::load(token_file)?);
    tokio::spawn(
        DirSource::new(dir.to_path_buf(), Duration::from_millis(config.manifest_poll_ms), rejections.clone()).run(tx),
    );
    Ok(Inputs { ca, auth, expected_syncs: 1, deployer: None, status: None })
}

/// Kubernetes mode: the root Secret, the watchers, the status and apply writers, leader
/// election, callers by TokenReview.
async fn start_kubernetes(
    config: &Config,
    plugged: Option<Ca>,
    rejections: &Rejections,
    tx: mpsc::Sender<Vec<Event>>,
    leader_tx: watch::Sender<bool>,
) -> anyhow::Result<Inputs> {
    let client = kube::Client::try_default().await.context("connecting to Kubernetes")?;
    let ca = match plugged {
        Some(ca) => ca,
        None => crate::source::kube::load_or_create_root_secret(&client, config).await?,
    };
    if config.leader_election {
        // Not leading until the lease says so: nothing is written before.
        leader_tx.send_replace(false);
    }
    crate::source::kube::spawn_watchers(client.clone(), tx, rejections.clone(), leader_tx.subscribe());
    let (stx, srx) = mpsc::channel(1024);
    tokio::spawn(crate::deploy::status::write_status_patches(client.clone(), srx));
    let status = Some(StatusSync::new(stx));
    let (atx, arx) = mpsc::channel(1024);
    tokio::spawn(crate::deploy::apply::apply_owned(client.clone(), arx));
    if config.leader_election {
        let identity = config.pod_name.clone().unwrap_or_else(|| format!("ambit-controller-{}", std::process::id()));
        tokio::spawn(crate::source::lease::run(client.clone(), config.namespace.clone(), identity, leader_tx));
    }
    let deployer: Option<Box<dyn Deploy>> = Some(Box::new(crate::deploy::apply::KubeDeployer::new(
        config.waypoint_settings(),
        ca.root_pem().to_owned(),
        atx,
    )));
    let auth = Arc::new(crate::auth::CachedReviews::new(crate::source::kube::TokenReviewer::new(
        client,
        config.trust_domain.clone(),
        vec![config.token_audience.clone()],
    )));
    Ok(Inputs { ca, auth, expected_syncs: crate::source::kube::WATCHED.len(), deployer, status })
}

/// Serves xDS and the CA on the accepted TLS connections until the listener fails.
async fn serve_grpc(
    incoming: tokio_stream::wrappers::ReceiverStream<std::io::Result<ambit_shared::grpc::ServerIo>>,
    ads: AdsService,
    ca_service: CaService,
) {
    // A client holds one ADS stream and makes CA calls: a few streams each. Keepalives
    // close connections whose peer vanished (a node that rebooted never sends a FIN).
    let served = tonic::transport::Server::builder()
        .max_concurrent_streams(Some(GRPC_MAX_STREAMS_PER_CONNECTION))
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(10)))
        .add_service(DeltaAdsServer::new(ads, 16 * 1024 * 1024))
        .add_service(IstioCertificateServiceServer::new(ca_service))
        .serve_with_incoming(incoming)
        .await;
    if let Err(e) = served {
        tracing::error!(error = %e, "gRPC server stopped");
    }
}

/// Concurrent gRPC streams on one control-plane connection.
const GRPC_MAX_STREAMS_PER_CONNECTION: u32 = 64;

/// Runs the controller until SIGTERM/Ctrl-C.
pub fn main(config: Config) -> anyhow::Result<()> {
    config.validate().context("invalid configuration")?;
    config.log.init().context("starting logging")?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("controller").build()?;
    runtime.block_on(async {
        let readiness = Readiness::default();
        let running = start(&config, readiness.clone()).await?;
        let mut registry = prometheus_client::registry::Registry::default();
        telemetry::register_build_info(registry.sub_registry_with_prefix("istio"), "controller");
        running.shared.metrics.register(&mut registry);
        let bound = telemetry::spawn_admin(
            vec![config.admin_addr],
            readiness,
            Arc::new(Mutex::new(registry)),
            serde_json::to_value(&config).context("serializing the configuration")?,
            Some((admin_routes(running.shared.clone()), config.admin_addr)),
        )
        .context("starting the admin endpoint")?;
        tracing::info!(admin = %bound[0], grpc = %running.grpc_addr, "controller started");
        ambit_shared::lifecycle::shutdown_signal().await;
        tracing::info!("controller stopping");
        anyhow::Ok(())
    })
}
