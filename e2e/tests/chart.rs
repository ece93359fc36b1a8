//! The Helm chart (`charts/ambit`), rendered by the real `helm` (`helm template`; `bash
//! scripts/helm.sh` installs it; no API server runs here) with the default values and with
//! `charts/ambit/ci/production-values.yaml`, and passing `helm lint --strict` with both. Every
//! rendered object must read into its Kubernetes type with no field unknown or dropped, and agree
//! with what the binaries actually do: each environment variable is one the daemon reads and the
//! whole set passes its validation; ports, probes, selectors, service accounts, mounted token and
//! root, host paths and RBAC (against the controller's own list of API accesses) all line up; the
//! CRDs are the ones generated from the model types. It lives in `e2e` because it spans the
//! controller, ztunnel and the waypoint.

// A test target's root resolves modules beside itself: its helpers live in `chart/`.
#[path = "chart/helm.rs"]
mod helm;
#[path = "chart/objects.rs"]
mod objects;
#[path = "chart/pods.rs"]
mod pods;

use std::collections::BTreeSet;
use std::path::Path;

use ambit_controller::source::access::{self, Scope};
use clap::CommandFactory;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::PodSpec;
use k8s_openapi::api::rbac::v1::PolicyRule;

use helm::repo;
use objects::{render, typed, Rendered};
use pods::{assert_selects, container, env_to_args, host_path_at, pod_spec, port_named, token_audience, volume_of};

/// RBAC rules as (scope, group, resource, verb) grants.
fn grants(scope: Scope, rules: &[PolicyRule]) -> BTreeSet<(Scope, String, String, String)> {
    let mut out = BTreeSet::new();
    for rule in rules {
        assert!(rule.resource_names.is_none() && rule.non_resource_urls.is_none(), "plain rules only");
        for group in rule.api_groups.as_deref().unwrap_or_default() {
            for resource in rule.resources.as_deref().unwrap_or_default() {
                for verb in &rule.verbs {
                    assert_ne!(verb, "*", "no wildcard verbs");
                    out.insert((scope, group.clone(), resource.clone(), verb.clone()));
                }
            }
        }
    }
    out
}

/// Everything a render must agree with; `values` names the file for messages.
fn check(namespace: &str, values: Option<&Path>) -> Rendered {
    let r = typed(namespace, &render(namespace, values));
    let controller = check_controller(namespace, &r);
    check_rbac(namespace, &r, &controller.sa);
    let zconfig = check_ztunnel(namespace, &r, &controller);
    check_waypoints(&controller, &zconfig);
    check_gateway_classes(&r);
    r
}

/// What the controller's part of a render settles, for the parts that must agree with it.
struct Controller<'a> {
    /// The controller's pod (its image pull secrets are the waypoints' too).
    pod: &'a PodSpec,
    /// The controller's service account.
    sa: String,
    /// Its configuration, read from the chart's environment and validated.
    config: ambit_controller::config::Config,
    /// Where the daemons reach its xDS and CA: the controller Service's name and xDS port.
    controller_address: String,
}

/// The controller: its Deployment, environment, ports, probes, Service and budget.
fn check_controller<'a>(namespace: &str, r: &'a Rendered) -> Controller<'a> {
    let deployment = r.deployments.get("ambit-controller").expect("the controller Deployment");
    let spec = deployment.spec.as_ref().expect("spec");
    let template_labels = spec.template.metadata.as_ref().and_then(|m| m.labels.clone()).unwrap_or_default();
    assert_selects(
        "controller Deployment",
        spec.selector.match_labels.as_ref().expect("matchLabels"),
        &template_labels,
    );
    assert_eq!(template_labels.get("istio.io/dataplane-mode").map(String::as_str), Some("none"), "never captured");
    let pod = pod_spec("controller", spec.template.spec.as_ref());
    let sa = pod.service_account_name.clone().expect("controller service account");
    assert!(r.service_accounts.contains_key(&sa), "controller service account {sa} rendered");
    let c = container(pod, "controller");
    let args = env_to_args(&ambit_controller::config::Config::command(), c, pod, namespace);
    let config = <ambit_controller::config::Config as clap::Parser>::try_parse_from(&args)
        .unwrap_or_else(|e| panic!("the controller refuses the chart's environment {args:?}: {e}"));
    config.validate().unwrap_or_else(|e| panic!("the controller refuses the chart's configuration: {e}"));
    assert!(config.manifests.is_none(), "Kubernetes mode");
    assert_eq!(config.namespace, namespace);
    assert_eq!(config.service_account, sa);
    assert_eq!(port_named(c, "grpc-xds"), i32::from(config.grpc_addr.port()));
    assert_eq!(port_named(c, "http-monitoring"), i32::from(config.admin_addr.port()));
    for (what, probe) in [("readiness", &c.readiness_probe), ("liveness", &c.liveness_probe)] {
        let get = probe.as_ref().and_then(|p| p.http_get.as_ref()).unwrap_or_else(|| panic!("controller {what} probe"));
        assert!(
            matches!(&get.port, k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(p) if p == "http-monitoring")
        );
        assert!(["/ready", "/healthz/live"].contains(&get.path.as_deref().unwrap_or("")), "{what} probe path");
    }
    let sec = c.security_context.as_ref().expect("controller securityContext");
    assert_eq!(sec.allow_privilege_escalation, Some(false));
    assert_eq!(sec.read_only_root_filesystem, Some(true));
    assert_eq!(pod.security_context.as_ref().and_then(|s| s.run_as_non_root), Some(true));
    if let (Some(cert), Some(key)) = (&config.ca_cert_file, &config.ca_key_file) {
        for file in [cert, key] {
            let (volume, _) = volume_of(pod, c, file);
            assert!(volume.secret.is_some(), "the plugged-in root comes from a Secret");
        }
    }

    let service = r.services.get("ambit-controller").expect("the controller Service");
    let sspec = service.spec.as_ref().expect("service spec");
    assert_selects("controller Service", sspec.selector.as_ref().expect("selector"), &template_labels);
    let mut grpc_port = None;
    for p in sspec.ports.as_deref().unwrap_or_default() {
        let target = match &p.target_port {
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(name)) => port_named(c, name),
            other => panic!("controller Service port {:?} targets {other:?}", p.name),
        };
        if target == i32::from(config.grpc_addr.port()) {
            grpc_port = Some(p.port);
        }
    }
    let controller_address = format!("ambit-controller.{namespace}.svc:{}", grpc_port.expect("a Service port for xDS"));
    assert_eq!(config.waypoint_xds_address, controller_address, "waypoints reach the controller's Service");
    for pdb in &r.pdbs {
        let sel = pdb.spec.as_ref().and_then(|s| s.selector.as_ref()).and_then(|s| s.match_labels.clone());
        assert_selects("controller PodDisruptionBudget", &sel.expect("selector"), &template_labels);
    }
    assert_eq!(r.pdbs.len(), usize::from(spec.replicas.unwrap_or(1) > 1), "a budget when there are replicas to keep");
    Controller { pod, sa, config, controller_address }
}

/// RBAC: exactly what the controller uses.
fn check_rbac(namespace: &str, r: &Rendered, sa: &str) {
    let mut granted = BTreeSet::new();
    for role in &r.cluster_roles {
        let name = role.metadata.name.clone().expect("name");
        let bound =
            r.cluster_role_bindings.iter().any(|b| {
                b.role_ref.name == name
                    && b.subjects.as_deref().unwrap_or_default().iter().any(|s| {
                        s.kind == "ServiceAccount" && s.name == sa && s.namespace.as_deref() == Some(namespace)
                    })
            });
        assert!(bound, "ClusterRole {name} bound to the controller");
        granted.extend(grants(Scope::Cluster, role.rules.as_deref().unwrap_or_default()));
    }
    for role in &r.roles {
        let name = role.metadata.name.clone().expect("name");
        let bound = r.role_bindings.iter().any(|b| {
            b.role_ref.name == name
                && b.role_ref.kind == "Role"
                && b.subjects.as_deref().unwrap_or_default().iter().any(|s| s.name == sa)
        });
        assert!(bound, "Role {name} bound to the controller");
        granted.extend(grants(Scope::OwnNamespace, role.rules.as_deref().unwrap_or_default()));
    }
    let mut needed = BTreeSet::new();
    for a in access::required() {
        for verb in &a.verbs {
            needed.insert((a.scope, a.group.clone(), a.resource.clone(), (*verb).to_owned()));
        }
    }
    let missing: Vec<_> = needed.difference(&granted).collect();
    let extra: Vec<_> = granted.difference(&needed).collect();
    assert!(missing.is_empty(), "the controller needs rights the chart does not grant: {missing:?}");
    assert!(extra.is_empty(), "the chart grants rights the controller never uses: {extra:?}");
}

/// ztunnel: its DaemonSet, environment, mounts and capabilities; returns its configuration.
fn check_ztunnel(namespace: &str, r: &Rendered, controller: &Controller) -> ambit_ztunnel::config::Config {
    let Controller { config, .. } = controller;
    let controller_address = controller.controller_address.as_str();
    let ds = r.daemonsets.get("ztunnel").expect("the ztunnel DaemonSet");
    let dspec = ds.spec.as_ref().expect("spec");
    let zlabels = dspec.template.metadata.as_ref().and_then(|m| m.labels.clone()).unwrap_or_default();
    assert_selects("ztunnel DaemonSet", dspec.selector.match_labels.as_ref().expect("matchLabels"), &zlabels);
    let rolling = dspec.update_strategy.as_ref().and_then(|s| s.rolling_update.as_ref()).expect("rolling update");
    assert_eq!(
        rolling.max_unavailable,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(0)),
        "no node without a ztunnel"
    );
    assert_eq!(rolling.max_surge, Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1)));
    let zpod = pod_spec("ztunnel", dspec.template.spec.as_ref());
    let zsa = zpod.service_account_name.clone().expect("ztunnel service account");
    assert!(r.service_accounts.contains_key(&zsa));
    assert!(zpod.host_network != Some(true), "ztunnel runs in its own network namespace");
    let z = container(zpod, "ztunnel");
    let zargs = env_to_args(&ambit_ztunnel::config::Config::command(), z, zpod, namespace);
    let zconfig = <ambit_ztunnel::config::Config as clap::Parser>::try_parse_from(&zargs)
        .unwrap_or_else(|e| panic!("ztunnel refuses the chart's environment {zargs:?}: {e}"));
    zconfig.validate().unwrap_or_else(|e| panic!("ztunnel refuses the chart's configuration: {e}"));
    assert_eq!(zconfig.xds_address, controller_address);
    assert_eq!(zconfig.ca_address, controller_address);
    assert_eq!(zconfig.control_plane_account, format!("{}/{}", config.namespace, config.service_account));
    assert_eq!(zconfig.trust_domain, config.trust_domain);
    assert_eq!(zconfig.cluster_id, config.cluster_id);
    assert_eq!(zconfig.cluster_domain, config.domain_suffix, "ztunnel's DNS proxy knows the cluster domain");
    assert!(
        config.node_proxy_accounts.contains(&format!("{namespace}/{zsa}")),
        "the CA lets ztunnel's account ask for its pods' certificates"
    );
    assert_eq!(zconfig.drain_seconds, zpod.termination_grace_period_seconds.expect("grace period") as u64);
    assert_eq!(
        zconfig.cert_lifetime_seconds, config.cert_lifetime_seconds,
        "ztunnel asks for what the CA is set to give"
    );
    let threads = z.env.as_deref().unwrap_or_default().iter().find(|e| e.name == "ZTUNNEL_WORKER_THREADS");
    let threads = threads.and_then(|e| e.value.as_deref()).expect("the chart sets ZTUNNEL_WORKER_THREADS");
    assert_eq!(zconfig.worker_threads.to_string(), threads, "the chart's workerThreads reach ztunnel");
    let dns = z.env.as_deref().unwrap_or_default().iter().find(|e| e.name == "DNS_PROXY");
    assert_eq!(
        dns.and_then(|e| e.value.as_deref()),
        Some(zconfig.dns_proxy.to_string().as_str()),
        "the chart's dnsCapture reaches ztunnel"
    );
    assert!(
        zconfig.cni_exclude_namespaces.iter().any(|n| n == namespace),
        "the mesh's own pods start without an agent (a ztunnel replacing a dead one)"
    );
    assert_eq!(zpod.automount_service_account_token, Some(false), "ztunnel has no API rights to use");
    assert_eq!(port_named(z, "ztunnel-stats"), i32::from(zconfig.metrics_addr.port()));
    assert_eq!(port_named(z, "status-port"), i32::from(zconfig.readiness_addr.port()));
    let (token, file) = volume_of(zpod, z, &zconfig.token_file);
    assert_eq!(token_audience(token, &file), config.token_audience, "ztunnel's token is for the CA's audience");
    let (root, file) = volume_of(zpod, z, &zconfig.root_cert);
    let cm = root.config_map.as_ref().expect("the root from a ConfigMap");
    assert_eq!(
        cm.name,
        ambit_controller::deploy::root_configmap::ROOT_CONFIGMAP,
        "the ConfigMap the controller publishes"
    );
    assert_eq!(file, ambit_controller::deploy::root_configmap::ROOT_CONFIGMAP_KEY);
    for dir in [zconfig.cni_socket.parent(), zconfig.agent_state_dir.parent(), zconfig.zds_socket.parent()] {
        let dir = dir.expect("a directory");
        let host = host_path_at(zpod, z, dir);
        assert_eq!(Path::new(&host), dir, "the CNI plugin on the host reaches the same path");
    }
    assert!(zconfig.cni_bin_dir.is_some() && zconfig.cni_conf_dir.is_some(), "ztunnel installs the CNI plugin");
    assert!(
        z.volume_mounts
            .as_deref()
            .unwrap_or_default()
            .iter()
            .any(|m| m.mount_propagation.as_deref() == Some("HostToContainer")),
        "pod network namespaces mounted with host-to-container propagation"
    );
    let zs = z.security_context.as_ref().expect("ztunnel securityContext");
    assert_eq!(zs.privileged, Some(false));
    let caps = zs.capabilities.as_ref().expect("capabilities");
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_owned()][..]));
    let mut added = caps.add.clone().unwrap_or_default();
    added.sort();
    assert_eq!(added, ["NET_ADMIN", "NET_RAW", "SYS_ADMIN"], "in-pod capture's capabilities, no more");
    assert_eq!(
        Path::new(&host_path_at(zpod, z, &zconfig.netns_dir)),
        zconfig.netns_dir,
        "running pods are looked for where the runtime pins their namespaces"
    );
    let ready = z.readiness_probe.as_ref().and_then(|p| p.http_get.as_ref()).expect("ztunnel readiness probe");
    assert_eq!(ready.path.as_deref(), Some("/healthz/ready"));
    zconfig
}

/// Waypoints the controller will deploy: their environment fits the waypoint.
fn check_waypoints(controller: &Controller, zconfig: &ambit_ztunnel::config::Config) {
    let Controller { pod, config, .. } = controller;
    let controller_address = controller.controller_address.as_str();
    let gw: ambit_controller::model::Gateway = serde_yaml::from_str(
        "metadata: {name: waypoint, namespace: shop, uid: u-1}\nspec: {gatewayClassName: ambit-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}",
    )
    .expect("a Gateway");
    let (_, wdeploy, _) = ambit_controller::deploy::waypoint_objects::objects(&gw, &config.waypoint_settings());
    let wpod = pod_spec("waypoint", wdeploy.spec.as_ref().and_then(|s| s.template.spec.as_ref()));
    let pull = |p: &PodSpec| -> Vec<String> {
        p.image_pull_secrets.as_deref().unwrap_or_default().iter().map(|s| s.name.clone()).collect()
    };
    assert_eq!(pull(wpod), pull(pod), "waypoints pull from the registry the chart's images come from");
    let w = container(wpod, "waypoint");
    let wargs = env_to_args(&ambit_waypoint::config::Config::command(), w, wpod, "shop");
    let wconfig = <ambit_waypoint::config::Config as clap::Parser>::try_parse_from(&wargs)
        .unwrap_or_else(|e| panic!("the waypoint refuses its environment {wargs:?}: {e}"));
    wconfig.validate().unwrap_or_else(|e| panic!("the waypoint refuses its configuration: {e}"));
    assert_eq!(wconfig.xds_address, controller_address);
    assert_eq!(wconfig.control_plane_account, zconfig.control_plane_account);
    let (token, file) = volume_of(wpod, w, &wconfig.token_file);
    assert_eq!(token_audience(token, &file), config.token_audience);
    let (root, _) = volume_of(wpod, w, &wconfig.root_cert);
    assert_eq!(
        root.config_map.as_ref().map(|c| c.name.as_str()),
        Some(ambit_controller::deploy::root_configmap::ROOT_CONFIGMAP)
    );
}

/// The chart creates a waypoint class and an ingress class, both the controller's (or none).
fn check_gateway_classes(r: &Rendered) {
    if r.gateway_classes.is_empty() {
        return;
    }
    let names: Vec<String> = r.gateway_classes.iter().map(|c| c.metadata.name.clone().expect("name")).collect();
    assert!(names.iter().any(|n| ambit_controller::model::WAYPOINT_CLASSES.contains(&n.as_str())), "{names:?}");
    assert!(names.iter().any(|n| ambit_shared::api::INGRESS_CLASSES.contains(&n.as_str())), "{names:?}");
    for name in &names {
        assert!(
            ambit_controller::model::WAYPOINT_CLASSES.contains(&name.as_str())
                || ambit_shared::api::INGRESS_CLASSES.contains(&name.as_str()),
            "{name} is a class the controller serves"
        );
    }
}

fn ztunnel_host_paths(r: &Rendered) -> (String, String) {
    let ds = &r.daemonsets["ztunnel"];
    let pod = ds.spec.as_ref().and_then(|s| s.template.spec.as_ref()).expect("pod");
    let z = container(pod, "ztunnel");
    let args = env_to_args(&ambit_ztunnel::config::Config::command(), z, pod, "x");
    let config = <ambit_ztunnel::config::Config as clap::Parser>::try_parse_from(&args).expect("config");
    (
        host_path_at(pod, z, config.cni_bin_dir.as_deref().expect("bin")),
        host_path_at(pod, z, config.cni_conf_dir.as_deref().expect("conf")),
    )
}

#[test]
fn default_values_render_a_consistent_install() {
    let r = check("ambit-system", None);
    let version = env!("CARGO_PKG_VERSION");
    let zpod = r.daemonsets["ztunnel"].spec.as_ref().and_then(|s| s.template.spec.as_ref()).expect("pod");
    let dns = zpod.containers[0].env.as_deref().unwrap_or_default().iter().find(|e| e.name == "DNS_PROXY");
    assert_eq!(dns.and_then(|e| e.value.as_deref()), Some("true"), "the DNS proxy is on by default, as in Istio");
    let image = |d: &Deployment| {
        d.spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .map(|p| p.containers[0].image.clone().unwrap_or_default())
    };
    assert_eq!(image(&r.deployments["ambit-controller"]), Some(format!("ambit/controller:{version}")));
    let ds_image = r.daemonsets["ztunnel"]
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .map(|p| p.containers[0].image.clone());
    assert_eq!(
        ds_image,
        Some(Some(format!("ambit/ztunnel:{version}"))),
        "the chart's appVersion is the crates' version"
    );
    assert_eq!(r.deployments["ambit-controller"].spec.as_ref().and_then(|s| s.replicas), Some(2));
    assert_eq!(ztunnel_host_paths(&r), ("/opt/cni/bin".to_owned(), "/etc/cni/net.d".to_owned()));
    assert_eq!(r.gateway_classes.len(), 2);
    assert_eq!(r.gateway_classes[0].metadata.name.as_deref(), Some("ambit-waypoint"));
    assert_eq!(r.gateway_classes[1].metadata.name.as_deref(), Some("ambit"));

    // The CRDs are the generated ones, and the chart's copy has not drifted.
    let generated = ambit_controller::crds::render().expect("generating the CRDs");
    let file =
        std::fs::read_to_string(repo().join("charts/ambit/files/crds.yaml")).expect("charts/ambit/files/crds.yaml");
    assert!(
        file == generated,
        "charts/ambit/files/crds.yaml drifted from the model types: regenerate it with \
         `cargo run -p ambit-controller --bin ambit-crds > charts/ambit/files/crds.yaml`"
    );
    assert_eq!(r.crds, ambit_controller::crds::custom_resource_definitions().expect("CRDs"));
    let names: BTreeSet<_> = r.crds.iter().map(|c| c.spec.names.kind.clone()).collect();
    let expected: BTreeSet<_> = [
        "AuthorizationPolicy",
        "PeerAuthentication",
        "RequestAuthentication",
        "DestinationRule",
        "VirtualService",
        "ServiceEntry",
        "Sidecar",
        "RateLimitPolicy",
    ]
    .map(String::from)
    .into();
    assert_eq!(names, expected);
    // The controller watches each kind the chart defines, at a served version.
    for crd in &r.crds {
        let watched = ambit_controller::source::kube::WATCHED.iter().any(|(g, v, k, _)| {
            *g == crd.spec.group
                && *k == crd.spec.names.kind
                && crd.spec.versions.iter().any(|x| x.name == *v && x.served)
        });
        assert!(watched, "{} is watched at a served version", crd.spec.names.kind);
    }

    let notes = helm::notes("ambit-system", None).expect("NOTES.txt renders");
    assert!(notes.contains("istio.io/dataplane-mode=ambient"), "NOTES tell the next step:\n{notes}");
    assert!(notes.contains("gatewayClassName: ambit-waypoint"));
}

#[test]
fn production_values_render_a_consistent_install() {
    let values = repo().join("charts/ambit/ci/production-values.yaml");
    let r = check("mesh", Some(&values));
    let pod = r.deployments["ambit-controller"].spec.as_ref().and_then(|s| s.template.spec.as_ref()).expect("pod");
    assert_eq!(pod.containers[0].image.as_deref(), Some("registry.example.com/mesh/controller:0.1.0-rc1"));
    assert_eq!(pod.image_pull_secrets.as_ref().map(|s| s[0].name.clone()), Some("regcred".to_owned()));
    assert!(r.crds.is_empty(), "crds.install=false");
    assert!(r.gateway_classes.is_empty(), "gatewayClass.create=false");
    assert!(r.pdbs.is_empty(), "one replica, no budget");
    assert_eq!(
        ztunnel_host_paths(&r),
        ("/var/lib/rancher/k3s/data/cni".to_owned(), "/var/lib/rancher/k3s/agent/etc/cni/net.d".to_owned())
    );
    let zpod = r.daemonsets["ztunnel"].spec.as_ref().and_then(|s| s.template.spec.as_ref()).expect("pod");
    let selector = zpod.node_selector.clone().unwrap_or_default();
    assert_eq!(selector.get("mesh").map(String::as_str), Some("enabled"), "values merged over the defaults");
    assert_eq!(selector.get("kubernetes.io/os").map(String::as_str), Some("linux"));
    let z = &zpod.containers[0];
    let selinux = z.security_context.as_ref().and_then(|s| s.se_linux_options.as_ref()).and_then(|o| o.type_.clone());
    assert_eq!(selinux.as_deref(), Some("spc_t"));
    let threads = z.env.as_deref().unwrap_or_default().iter().find(|e| e.name == "ZTUNNEL_WORKER_THREADS");
    assert_eq!(threads.and_then(|e| e.value.as_deref()), Some("4"), "ztunnel.workerThreads (not the default 2)");
    let dns = z.env.as_deref().unwrap_or_default().iter().find(|e| e.name == "DNS_PROXY");
    assert_eq!(dns.and_then(|e| e.value.as_deref()), Some("false"), "ztunnel.dnsCapture: false");
    let env = |name: &str| {
        pod.containers[0]
            .env
            .as_deref()
            .unwrap_or_default()
            .iter()
            .find(|e| e.name == name)
            .and_then(|e| e.value.clone())
    };
    assert_eq!(env("CERT_LIFETIME_SECONDS").as_deref(), Some("2592000"), "large numbers stay integers");
    assert_eq!(env("PATH_NORMALIZATION").as_deref(), Some("DECODE_AND_MERGE_SLASHES"), "meshConfig.pathNormalization");
    assert_eq!(env("OUTBOUND_TRAFFIC_POLICY").as_deref(), Some("REGISTRY_ONLY"), "meshConfig.outboundTrafficPolicy");
    assert_eq!(env("AUTO_ALLOCATE_RANGES").as_deref(), Some("198.18.0.0/20"), "serviceEntryAddressRanges");
}

#[test]
fn a_missing_required_value_is_refused_with_its_name() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("chart-values");
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("no-trust-domain.yaml");
    std::fs::write(&file, "trustDomain: \"\"\n").expect("write");
    let err = helm::template("ambit-system", Some(&file)).expect_err("an empty trust domain renders nothing");
    assert!(err.contains("trustDomain is required"), "{err}");
}

#[test]
fn helm_lint_strict_passes_with_both_sets_of_values() {
    let production = repo().join("charts/ambit/ci/production-values.yaml");
    for values in [None, Some(production.as_path())] {
        let out = helm::lint(values).unwrap_or_else(|e| panic!("helm lint --strict fails with {values:?}:\n{e}"));
        assert!(out.contains("0 chart(s) failed"), "{out}");
    }
}
