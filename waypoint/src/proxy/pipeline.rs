//! One HTTP request through the waypoint, stage by stage, in this order on every path:
//! [`validate`] (method, Host, path normalization) → [`authn`] (RequestAuthentication) →
//! [`authz`] (AuthorizationPolicy) → [`ratelimit`] (RateLimitPolicy) → [`plan`]: the pure decision — [`route`] (the first route
//! that matches), [`filters`] (header operations, redirect, rewrite, mirrors, the fault drawn),
//! the backend by weight — carried out by [`Waypoint::follow`]: the fault, then [`retry`] (body
//! buffering, attempts, timeouts) → the upstream. Each stage either hands the request on or answers it; none is
//! skipped. This module owns the order; it does not dial (see [`super::upstream`]) nor record
//! (see [`super::telemetry`]).

use std::sync::Arc;

use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::body::{Body, BoxError};
use super::downstream::Downstream;
use super::failure::{Failed, Failure};
use super::telemetry::{Answered, Telemetry};
use super::Waypoint;
use crate::l7::ServiceL7;
use plan::{Decision, Plan};

mod authn;
mod authz;
mod filters;
mod plan;
mod ratelimit;
mod retry;
mod route;
mod validate;

impl Waypoint {
    /// One request, start to finish: its telemetry taken first, recorded once at the end.
    pub(super) async fn request(self: &Arc<Self>, down: &Downstream, mut req: Request<Incoming>) -> Response<Body> {
        let telemetry = Telemetry::start(&self.metrics, &self.tracer, self.sampling, down, &mut req);
        // The configuration in force for this request — the service's as it is now (a policy
        // changed since the stream opened applies to its next request), at an ingress gateway
        // its listener's.
        let current = if down.ingress.is_some() { down.l7_for(&authz::host(&req)) } else { self.current_l7(down) };
        let l7 = match current {
            Ok(l7) => l7,
            Err(failure) => return telemetry.record(Err(failure.into())),
        };
        telemetry.record(self.handle(down, &l7, req).await)
    }

    /// The service's L7 configuration now (the stream's own when it started is only a
    /// fallback for nothing: a service whose configuration was withdrawn is answered 503).
    fn current_l7(&self, down: &Downstream) -> Result<Arc<ServiceL7>, super::failure::Failure> {
        let map = self.l7.read().unwrap_or_else(|p| p.into_inner());
        match map.get(&*down.service.key) {
            Some(crate::l7::L7Entry::Ready(l7)) => Ok(l7.clone()),
            _ => Err(super::failure::Failure::NoHealthyUpstream),
        }
    }

    /// The stages, in order; the first that answers ends the request.
    async fn handle<'d>(
        self: &Arc<Self>,
        down: &'d Downstream,
        l7: &'d ServiceL7,
        mut req: Request<Incoming>,
    ) -> Answered<'d> {
        let port = down.vip.port();
        validate::request(&mut req, self.normalization)?;
        let (mut req, caller) = authn::authenticate(l7, &self.keysets, req).await?;
        let host = authz::host(&req);
        authz::check(down, l7, &caller, &host, &req)?;
        ratelimit::check(&self.buckets, l7, &authz::subject(down, &caller, &host, &req))?;
        match plan::decide(l7, port, &mut req, &host)? {
            Decision::Route(plan) => self.follow(down, plan, req).await,
            Decision::Default => self.forward_default(down, req, port).await,
            Decision::Redirect(redirect) => Ok((redirect, None)),
        }
    }

    /// Carries out a routed request's plan: the fault, then the backend.
    async fn follow<'d>(self: &Arc<Self>, down: &Downstream, plan: Plan<'d>, req: Request<Incoming>) -> Answered<'d> {
        if let Some(delay) = plan.fault.delay {
            tokio::time::sleep(delay).await;
        }
        if let Some(failure) = plan.fault.abort {
            return Err(Failed { failure, endpoint: None, response_ops: plan.effects.response_ops });
        }
        let Some(backend) = plan.backend else { return Err(Failure::NoBackend.into()) };
        self.forward(down, plan.route, backend, plan.effects, plan.buffered, req).await
    }

    /// Without routes: the addressed service (or workload) at the request's port.
    async fn forward_default(&self, down: &Downstream, req: Request<Incoming>, port: u16) -> Answered<'static> {
        let req = req.map(|b| b.map_err(|e| Box::new(e) as BoxError).boxed());
        if let Some(w) = &down.workload {
            let response = self.upstream.to_workload(w, port, req).await?;
            return Ok((response, Some(w.clone())));
        }
        let (response, endpoint) =
            self.upstream.dispatch(down.service.clone(), None, port, req, down.source_ip).await?;
        Ok((response, Some(endpoint)))
    }
}
