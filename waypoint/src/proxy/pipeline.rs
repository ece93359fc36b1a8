//! One HTTP request through the waypoint, stage by stage, in this order on every path:
//! [`validate`] (method, Host, path normalization) → [`authn`] (RequestAuthentication) →
//! [`authz`] (AuthorizationPolicy) → [`route`] (the first route that matches) → [`filters`]
//! (header operations, redirect, rewrite, mirrors, fault) → [`retry`] (body buffering, attempts,
//! timeouts) → the upstream. Each stage either hands the request on or answers it; none is
//! skipped. This module owns the order; it does not dial (see [`super::upstream`]) nor record
//! (see [`super::telemetry`]).

use std::sync::Arc;

use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::downstream::Downstream;
use super::failure::{Failed, Failure};
use super::telemetry::{Answered, Telemetry};
use super::{Body, BoxError, Waypoint};

mod authn;
mod authz;
mod filters;
mod retry;
mod route;
mod validate;

impl Waypoint {
    /// One request, start to finish: its telemetry taken first, recorded once at the end.
    pub(super) async fn request(self: &Arc<Self>, down: &Downstream, mut req: Request<Incoming>) -> Response<Body> {
        let telemetry = Telemetry::start(&self.metrics, &self.tracer, self.sampling, down, &mut req);
        telemetry.record(self.handle(down, req).await)
    }

    /// The stages, in order; the first that answers ends the request.
    async fn handle<'d>(self: &Arc<Self>, down: &'d Downstream, mut req: Request<Incoming>) -> Answered<'d> {
        let port = down.vip.port();
        validate::request(&mut req, self.normalization)?;
        let (mut req, caller) = authn::authenticate(&down.l7, &self.keysets, req).await?;
        let host = authz::host(&req);
        authz::check(down, &caller, &host, &req)?;
        let route = match route::select(&down.l7.routes, port, &req) {
            route::Selected::Route(route) => route,
            route::Selected::Default => return self.forward_default(down, req, port).await,
            route::Selected::NoMatch => return Err(Failure::NoRoute.into()),
        };
        let effects = match filters::apply(route, &mut req, &host) {
            Ok(effects) => effects,
            Err(redirect) => return Ok((redirect, None)),
        };
        if let Err(failure) = filters::fault(route).await {
            return Err(Failed { failure, endpoint: None, response_ops: effects.response_ops });
        }
        let Some(backend) = route.pick_backend() else { return Err(Failure::NoBackend.into()) };
        if let Some(ops) = &backend.request_headers {
            ops.apply(req.headers_mut());
        }
        self.forward(down, route, backend, effects, req).await
    }

    /// Without routes: the addressed service at the request's port.
    async fn forward_default(&self, down: &Downstream, req: Request<Incoming>, port: u16) -> Answered<'static> {
        let req = req.map(|b| b.map_err(|e| Box::new(e) as BoxError).boxed());
        let (response, endpoint) = self.dispatch(down.service.clone(), port, req, down.source_ip).await?;
        Ok((response, Some(endpoint)))
    }
}
