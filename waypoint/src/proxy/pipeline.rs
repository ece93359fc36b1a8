//! One HTTP request through the waypoint, stage by stage, in this order on every path:
//! [`validate`] (method, Host, path normalization) → [`authn`] (RequestAuthentication) →
//! [`authz`] (AuthorizationPolicy) → [`route`] (the first route that matches) → [`filters`]
//! (header operations, redirect, rewrite, mirrors, fault) → [`retry`] (body buffering, attempts,
//! timeouts) → the upstream. Each stage either hands the request on or answers it; none is
//! skipped. This module owns the order; it does not dial (see [`super::upstream`]) nor record
//! (see [`super::telemetry`]).

use std::sync::Arc;
use std::time::Instant;

use ambit_ztunnel::metrics::{Peer, ServiceLabels};
use ambit_ztunnel::state::Workload;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::downstream::Downstream;
use super::telemetry::{Completion, Observed};
use super::{respond, Body, BoxError, Handled, Waypoint};
use crate::metrics::{Flag, RequestLabels};

mod authn;
mod authz;
mod filters;
mod retry;
mod route;
mod validate;

/// A request answered: by a backend (its workload) or by the waypoint itself (a redirect); or
/// the failure answer, its flag and the workload that was meant to answer.
type Answered = Result<(Response<Body>, Option<Arc<Workload>>), Handled>;

impl Waypoint {
    /// One request, start to finish, with its telemetry.
    pub(super) async fn request(self: &Arc<Self>, down: &Downstream, mut req: Request<Incoming>) -> Response<Body> {
        let start = Instant::now();
        let span = crate::trace::start(req.headers_mut(), self.sampling);
        let span_start = self.tracer.enabled().then(std::time::SystemTime::now);
        let method = req.method().clone();
        let path = req.uri().path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "/".into());
        let grpc = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        let protocol = if grpc {
            "grpc"
        } else if req.version() == http::Version::HTTP_2 {
            "http2"
        } else {
            "http"
        };
        let request_bytes =
            req.headers().get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse().ok()).unwrap_or(0);
        let (response, flag, endpoint) = match self.handle(down, req).await {
            Ok((response, endpoint)) => (response, Flag::None, endpoint),
            Err(failed) => failed,
        };
        let destination = match &endpoint {
            Some(w) => Peer::from_workload(w, Some(Arc::from(w.identity.to_string()))),
            None => Peer::unknown(),
        };
        let grpc_status = response.headers().get("grpc-status").and_then(|v| v.to_str().ok()?.parse().ok());
        let completion = Completion {
            metrics: self.metrics.clone(),
            labels: RequestLabels {
                source: down.source.clone(),
                destination,
                service: Some(ServiceLabels::of(&down.service)),
                protocol,
                code: response.status().as_u16(),
                grpc_status,
                flag,
            },
            start,
            request_bytes,
            method,
            path,
            source_ip: down.source_ip,
            principal: down.principal.clone(),
            endpoint: endpoint.map(|w| w.name.clone()),
            span: span_start.map(|t| (span, t, self.tracer.clone())),
        };
        // Recorded when the response body ends (gRPC's status is in its trailers).
        response.map(|inner| Observed { inner, bytes: 0, completion: Some(completion) }.boxed())
    }

    /// The stages, in order; the first that answers ends the request.
    async fn handle(self: &Arc<Self>, down: &Downstream, mut req: Request<Incoming>) -> Answered {
        let port = down.vip.port();
        validate::request(&mut req, self.normalization)?;
        let (mut req, caller) = authn::authenticate(&down.l7, &self.keysets, req).await?;
        let host = authz::host(&req);
        authz::check(down, &caller, &host, &req)?;
        let route = match route::select(&down.l7.routes, port, &req) {
            route::Selected::Route(route) => route,
            route::Selected::Default => return self.forward_default(down, req, port).await,
            route::Selected::NoMatch => {
                return Err((respond(StatusCode::NOT_FOUND, "no route matched"), Flag::NoRoute, None))
            }
        };
        let effects = match filters::apply(route, &mut req, &host) {
            Ok(effects) => effects,
            Err(redirect) => return Ok((redirect, None)),
        };
        filters::fault(route, &effects.response_ops).await?;
        let Some(backend) = route.pick_backend() else {
            return Err((respond(StatusCode::INTERNAL_SERVER_ERROR, "no backend"), Flag::NoRoute, None));
        };
        if let Some(ops) = &backend.request_headers {
            ops.apply(req.headers_mut());
        }
        self.forward(down, route, backend, effects, req).await
    }

    /// Without routes: the addressed service at the request's port.
    async fn forward_default(&self, down: &Downstream, req: Request<Incoming>, port: u16) -> Answered {
        let req = req.map(|b| b.map_err(|e| Box::new(e) as BoxError).boxed());
        let (response, endpoint) = self.dispatch(down.service.clone(), port, req, down.source_ip).await?;
        Ok((response, Some(endpoint)))
    }
}
