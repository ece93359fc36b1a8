//! An ingress gateway's configuration as the proxy holds it: the controller's
//! `ambit.waypoint.GatewayConfig` compiled once per update into a plan per port — the routes
//! (as a [`ServiceL7`], so the same pipeline serves them), the policies targeting the Gateway,
//! and for HTTPS the listeners' certificates chosen by SNI. It only compiles and chooses; the
//! connections are the proxy's (see [`crate::proxy::ingress`]).
//!
//! Fail closed: a listener that does not compile is left out (its hosts get nothing; the update
//! is NACKed naming it, and the other listeners serve — one tenant's bad route cannot freeze
//! the gateway); a TLS client whose SNI no listener claims gets no certificate; a request no
//! route takes is answered 404, never forwarded.

use std::collections::BTreeMap;
use std::sync::Arc;

use ambit_dataplane::state::Service;
use ambit_shared::proto::waypoint as pb;
use ambit_shared::tls::{listener_key, ListenerKeyError};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::l7::{HostPattern, ServiceL7};

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("listener {listener}: {problem}")]
    Listener { listener: String, problem: String },
    #[error("port {port}: listeners {first} and {second} mix protocols {a:?} and {b:?}")]
    MixedProtocols { port: u16, first: String, second: String, a: pb::ListenerProtocol, b: pb::ListenerProtocol },
}

/// One listener, compiled.
#[derive(Debug)]
pub struct Listener {
    pub name: String,
    /// `None`: any host.
    pub hostname: Option<HostPattern>,
    pub protocol: pb::ListenerProtocol,
    /// Its routes and the Gateway's policies, served by the request pipeline (HTTP) or read
    /// for the backend (TLS passthrough, TCP).
    pub l7: Arc<ServiceL7>,
    /// HTTPS: the certificate served.
    pub key: Option<Arc<CertifiedKey>>,
}

/// What a port serves.
#[derive(Debug)]
pub enum PortPlan {
    /// Plain HTTP: per request, the routes of the listener the Host chooses (listeners sharing
    /// a port never share routes).
    Http(Arc<SniListeners>),
    /// TLS terminated by the listener the SNI chooses, then HTTP with that listener's routes
    /// only.
    Https(Arc<SniListeners>),
    /// TLS passed through to the backend the SNI chooses.
    Passthrough(Arc<SniListeners>),
    /// Bytes to the listener's backend.
    Tcp(Arc<Listener>),
}

/// Listeners sharing a TLS port, chosen by the ClientHello's SNI name.
#[derive(Debug)]
pub struct SniListeners {
    pub listeners: Vec<Arc<Listener>>,
    /// HTTPS: the TLS server configuration, serving the listeners' certificates by SNI and
    /// offering HTTP/2 and HTTP/1.1.
    pub server_config: Option<Arc<rustls::ServerConfig>>,
}

impl SniListeners {
    fn plain(listeners: Vec<Arc<Listener>>) -> Arc<Self> {
        Arc::new(SniListeners { listeners, server_config: None })
    }

    fn tls(listeners: Vec<Arc<Listener>>) -> Arc<Self> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = match rustls::ServerConfig::builder_with_provider(provider).with_safe_default_protocol_versions()
        {
            Ok(b) => b,
            // aws-lc-rs supports the default versions; never taken.
            Err(_) => rustls::ServerConfig::builder(),
        };
        let mut config = builder.with_no_client_auth().with_cert_resolver(Arc::new(SniResolver(listeners.clone())));
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(SniListeners { listeners, server_config: Some(Arc::new(config)) })
    }

    /// The listener for `sni` (or a request's Host): the most specific hostname that covers it
    /// (exact, then the longest wildcard), else one without a hostname. No name: only one
    /// without a hostname.
    pub fn choose(&self, sni: Option<&str>) -> Option<&Arc<Listener>> {
        choose(&self.listeners, sni)
    }
}

/// See [`SniListeners::choose`].
fn choose<'a>(listeners: &'a [Arc<Listener>], sni: Option<&str>) -> Option<&'a Arc<Listener>> {
    let sni = sni.map(|s| s.trim_end_matches('.').to_ascii_lowercase());
    let mut best: Option<(&Arc<Listener>, (bool, usize))> = None;
    for l in listeners {
        let rank = match (&l.hostname, &sni) {
            (None, _) => (false, 0),
            (Some(h), Some(name)) if h.matches(name) => {
                let (exact, len) = h.specificity();
                (exact, len + 1)
            }
            (Some(_), _) => continue,
        };
        if best.as_ref().is_none_or(|(_, r)| rank > *r) {
            best = Some((l, rank));
        }
    }
    best.map(|(l, _)| l)
}

/// Chooses the certificate by SNI among an HTTPS port's listeners.
#[derive(Debug)]
struct SniResolver(Vec<Arc<Listener>>);

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        choose(&self.0, hello.server_name())?.key.clone()
    }
}

/// A gateway's whole configuration, compiled.
#[derive(Debug)]
pub struct GatewayL7 {
    pub namespace: String,
    pub name: String,
    pub ports: BTreeMap<u16, PortPlan>,
    /// Stands for the gateway in logs and metrics (a request's addressed service).
    pub service: Arc<Service>,
}

impl GatewayL7 {
    /// Compiles what can be served; a listener that cannot (its routes or certificate do not
    /// compile, or the controller refused it) only claims its hostname — its hosts get
    /// nothing: no certificate, 404 — and is returned with why, while the others serve. One
    /// that clashes with an earlier listener's protocol on its port is left out.
    pub fn compile(c: &pb::GatewayConfig) -> (Self, Vec<GatewayError>) {
        let service = Arc::new(Service {
            key: format!("{}/{}", c.namespace, c.name).into(),
            name: c.name.as_str().into(),
            namespace: c.namespace.as_str().into(),
            hostname: c.name.as_str().into(),
            vips: Vec::new(),
            ports: Vec::new(),
            waypoint: None,
            subject_alt_names: Vec::new(),
            allow_unhealthy: false,
            passthrough: false,
            ingress_use_waypoint: false,
            routing: None,
        });
        // The routes, the Gateway's policies and JWT rules, as the pipeline reads them.
        let l7 = |port: u16, name: &str, routes: Vec<pb::Route>| -> Result<ServiceL7, String> {
            let config = pb::ServiceConfig {
                namespace: c.namespace.clone(),
                hostname: c.name.clone(),
                ports: vec![pb::Port { port: u32::from(port), protocol: pb::Protocol::Http as i32, name: name.into() }],
                routes,
                policies: c.policies.clone(),
                jwt_rules: c.jwt_rules.clone(),
                rate_limits: c.rate_limits.clone(),
                ..Default::default()
            };
            let mut l7 = ServiceL7::compile(&config).map_err(|e| e.to_string())?;
            l7.routed_only = true;
            if l7.routes.iter().flat_map(|r| &r.backends).any(|b| b.port == 0) {
                return Err("a backend without a port".into());
            }
            Ok(l7)
        };
        let mut dropped = Vec::new();
        let mut by_port: BTreeMap<u16, Vec<Arc<Listener>>> = BTreeMap::new();
        for l in &c.listeners {
            let (compiled, why) = compile_listener(l, &l7);
            dropped.extend(why);
            if let Some((port, listener)) = compiled {
                {
                    let on_port = by_port.entry(port).or_default();
                    match on_port.first() {
                        Some(other) if other.protocol != listener.protocol => {
                            dropped.push(GatewayError::MixedProtocols {
                                port,
                                first: other.name.clone(),
                                second: listener.name.clone(),
                                a: other.protocol,
                                b: listener.protocol,
                            });
                        }
                        Some(other) if listener.protocol == pb::ListenerProtocol::ListenerTcp => {
                            dropped.push(GatewayError::Listener {
                                listener: listener.name.clone(),
                                problem: format!("port {port} is already TCP listener {}'s", other.name),
                            });
                        }
                        _ => on_port.push(Arc::new(listener)),
                    }
                }
            }
        }
        let mut ports = BTreeMap::new();
        for (port, listeners) in by_port {
            let plan = match listeners[0].protocol {
                pb::ListenerProtocol::ListenerHttp => PortPlan::Http(SniListeners::plain(listeners)),
                pb::ListenerProtocol::ListenerHttps => PortPlan::Https(SniListeners::tls(listeners)),
                pb::ListenerProtocol::ListenerTlsPassthrough => PortPlan::Passthrough(SniListeners::plain(listeners)),
                pb::ListenerProtocol::ListenerTcp => PortPlan::Tcp(listeners[0].clone()),
            };
            ports.insert(port, plan);
        }
        (GatewayL7 { namespace: c.namespace.clone(), name: c.name.clone(), ports, service }, dropped)
    }
}

/// One listener: served, or — when it cannot be (routes or certificate do not compile) — a
/// claim on its hostname, with why.
fn compile_listener(
    l: &pb::GatewayListener,
    l7: &impl Fn(u16, &str, Vec<pb::Route>) -> Result<ServiceL7, String>,
) -> (Option<(u16, Listener)>, Option<GatewayError>) {
    let bad = |problem: String| GatewayError::Listener { listener: l.name.clone(), problem };
    let Some(port) = u16::try_from(l.port).ok().filter(|p| *p != 0) else {
        return (None, Some(bad(format!("port {}", l.port))));
    };
    let Ok(protocol) = pb::ListenerProtocol::try_from(l.protocol) else {
        return (None, Some(bad("unknown protocol".into())));
    };
    let hostname = (!l.hostname.is_empty()).then(|| HostPattern::parse(&l.hostname));
    let claimed = |why: Option<GatewayError>| match claim(l, port, protocol, hostname.clone(), l7) {
        Ok(c) => (Some((port, c)), why),
        Err(e) => (None, why.or(Some(e))),
    };
    if l.refused {
        return claimed(None);
    }
    let key = match protocol {
        pb::ListenerProtocol::ListenerHttps => {
            let Some(first) = l.certificates.first() else {
                return claimed(Some(bad("HTTPS without a certificate".into())));
            };
            match certified_key(first) {
                Ok(k) => Some(Arc::new(k)),
                Err(e) => return claimed(Some(bad(format!("certificate {}: {e}", first.source)))),
            }
        }
        _ => None,
    };
    match l7(port, &l.name, l.routes.clone()) {
        Ok(compiled) => {
            (Some((port, Listener { name: l.name.clone(), hostname, protocol, l7: Arc::new(compiled), key })), None)
        }
        // Its hosts get nothing, not a less specific listener's routes and certificate.
        Err(problem) => claimed(Some(bad(problem))),
    }
}

/// A listener that is not served but claims its hostname: no certificate (a TLS handshake for
/// its names fails), no routes (404), so its hosts never fall to a less specific listener.
fn claim(
    l: &pb::GatewayListener,
    port: u16,
    protocol: pb::ListenerProtocol,
    hostname: Option<HostPattern>,
    l7: &impl Fn(u16, &str, Vec<pb::Route>) -> Result<ServiceL7, String>,
) -> Result<Listener, GatewayError> {
    let empty = l7(port, &l.name, Vec::new())
        .map_err(|problem| GatewayError::Listener { listener: l.name.clone(), problem })?;
    Ok(Listener { name: l.name.clone(), hostname, protocol, l7: Arc::new(empty), key: None })
}

/// A listener's certificate as rustls serves it, checked (see [`listener_key`]).
pub fn certified_key(c: &pb::ServerCertificate) -> Result<CertifiedKey, ListenerKeyError> {
    listener_key(c.cert_chain.as_bytes(), c.private_key.as_bytes())
}

#[cfg(test)]
mod tests;
