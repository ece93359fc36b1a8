//! The decision for an authorized request, ztunnel's decide/do split: one function that only
//! looks things up — the route, its filters applied to the request in memory, the fault and
//! the backend drawn by their percentages and weights — and returns a plain [`Plan`] that
//! [`crate::proxy::Waypoint`] carries out. No I/O here: no waiting, no sending.

use http::{Request, Response};

use super::filters::{self, Effects, Fault};
use super::route::{self, Selected};
use crate::l7::{BackendRef, Route, ServiceL7};
use crate::proxy::body::Body;
use crate::proxy::failure::Failure;

/// What is done with a routed request.
pub(super) struct Plan<'a> {
    /// The route that took the request (its timeouts and retry policy apply).
    pub(super) route: &'a Route,
    /// The route's fault as drawn for this request: a delay, an abort.
    pub(super) fault: Fault,
    /// The backend drawn by weight (its request header operations already applied); `None`
    /// when every weight is 0, which is answered 500.
    pub(super) backend: Option<&'a BackendRef>,
    /// What the filters left: response header operations, mirrors.
    pub(super) effects: Effects<'a>,
    /// Whether the body is read whole first: a retry or a mirror needs it again.
    pub(super) buffered: bool,
}

/// What the decision is.
pub(super) enum Decision<'a> {
    /// Along a route, as planned.
    Route(Plan<'a>),
    /// No route for the port: to the addressed service itself.
    Default,
    /// A redirect filter answered.
    Redirect(Response<Body>),
}

/// Decides what is done with a request to `port` that passed authorization.
pub(super) fn decide<'a, B>(
    l7: &'a ServiceL7,
    port: u16,
    req: &mut Request<B>,
    host: &str,
) -> Result<Decision<'a>, Failure> {
    let route = match route::select(&l7.routes, port, host, req) {
        Selected::Route(route) => route,
        Selected::Default if l7.routed_only => return Err(Failure::NoRoute),
        Selected::Default => return Ok(Decision::Default),
        Selected::NoMatch => return Err(Failure::NoRoute),
    };
    let effects = match filters::apply(route, req, host) {
        Ok(effects) => effects,
        Err(redirect) => return Ok(Decision::Redirect(redirect)),
    };
    let fault = filters::fault(route);
    let backend = route.pick_backend();
    if let Some(ops) = backend.and_then(|b| b.request_headers.as_ref()) {
        ops.apply(req.headers_mut());
    }
    let buffered = route.retry.is_some() || !effects.mirrors.is_empty();
    Ok(Decision::Route(Plan { route, fault, backend, effects, buffered }))
}

#[cfg(test)]
mod tests {
    use ambit_shared::proto::waypoint as pb;

    use super::{decide, Decision};
    use crate::l7::ServiceL7;
    use crate::proxy::failure::Failure;

    fn l7(routes: Vec<pb::Route>) -> ServiceL7 {
        ServiceL7::compile(&pb::ServiceConfig { routes, ..Default::default() }).unwrap()
    }

    fn backend(weight: u32) -> pb::Backend {
        pb::Backend { namespace: "shop".into(), hostname: "reviews".into(), weight, ..Default::default() }
    }

    #[test]
    fn a_plan_names_the_route_backend_and_buffering() {
        let get = || http::Request::get("/").body(()).unwrap();
        let mirror = pb::Filter {
            kind: Some(pb::filter::Kind::Mirror(pb::Mirror {
                backend: Some(backend(1)),
                all: true,
                ..Default::default()
            })),
        };
        let routed = l7(vec![pb::Route {
            name: "r".into(),
            backends: vec![backend(1)],
            filters: vec![mirror],
            ..Default::default()
        }]);
        let Ok(Decision::Route(plan)) = decide(&routed, 80, &mut get(), "") else { panic!("routed") };
        assert_eq!(plan.route.name, "r");
        assert_eq!(plan.backend.map(|b| b.service_key.as_str()), Some("shop/reviews"));
        assert!(plan.buffered, "a mirror needs the body again");
        assert_eq!(plan.effects.mirrors.len(), 1);

        let weightless = l7(vec![pb::Route { backends: vec![backend(0)], ..Default::default() }]);
        let Ok(Decision::Route(plan)) = decide(&weightless, 80, &mut get(), "") else { panic!("routed") };
        assert!(plan.backend.is_none() && !plan.buffered);

        assert!(matches!(decide(&l7(Vec::new()), 80, &mut get(), ""), Ok(Decision::Default)));
        let elsewhere = l7(vec![pb::Route { ports: vec![8080], ..Default::default() }]);
        assert!(matches!(decide(&elsewhere, 80, &mut get(), ""), Ok(Decision::Default)));
        let exact = pb::Match {
            has_path: true,
            path: "/x".into(),
            path_kind: pb::PathKind::PathExact as i32,
            ..Default::default()
        };
        let unmatched = l7(vec![pb::Route { matches: vec![exact], ..Default::default() }]);
        assert!(matches!(decide(&unmatched, 80, &mut get(), ""), Err(Failure::NoRoute)));
    }
}
