//! Routing: the service's routes for the request's port, in the order the controller sent them
//! (Gateway API precedence); the first whose match holds takes the request. A service without
//! routes for the port is forwarded to itself; with routes and none matching, the request is
//! 404. It does not apply filters (see [`super::filters`]).

use http::Request;

use crate::l7::{host_name, RequestView, Route};

/// What routing chose.
#[derive(Debug)]
pub(super) enum Selected<'a> {
    /// The first route that applies to the port and matches.
    Route(&'a Route),
    /// No route for the port: the addressed service itself.
    Default,
    /// Routes for the port, none matching.
    NoMatch,
}

/// The route for a request to `port` for `host` (the request's Host). Only looks things up.
pub(super) fn select<'a, B>(routes: &'a [Route], port: u16, host: &str, req: &Request<B>) -> Selected<'a> {
    let view =
        RequestView { method: req.method(), path: req.uri().path(), query: req.uri().query(), headers: req.headers() };
    let name = host_name(host);
    // As a virtual host: only the routes of the most specific hostname that covers the
    // request's (an exact name's routes, when any serve it, never fall through to a
    // wildcard's). Waypoint routes carry no hostnames: all tie.
    let best = routes.iter().filter(|r| r.applies_to(port)).filter_map(|r| r.host_rank(&name)).max();
    let mut applicable =
        routes.iter().filter(|r| r.applies_to(port) && best.is_some() && r.host_rank(&name) == best).peekable();
    if applicable.peek().is_none() {
        return Selected::Default;
    }
    match applicable.find(|r| r.matches.iter().any(|m| m.matches(&view))) {
        Some(route) => Selected::Route(route),
        None => Selected::NoMatch,
    }
}

#[cfg(test)]
mod tests {
    use ambit_shared::proto::waypoint as pb;

    use super::{select, Selected};
    use crate::l7::ServiceL7;

    fn routes() -> ServiceL7 {
        let exact = |path: &str| pb::Match {
            path: path.into(),
            has_path: true,
            path_kind: pb::PathKind::PathExact as i32,
            ..Default::default()
        };
        let route = |name: &str, ports: Vec<u32>, m: pb::Match| pb::Route {
            name: name.into(),
            ports,
            matches: vec![m],
            ..Default::default()
        };
        ServiceL7::compile(&pb::ServiceConfig {
            routes: vec![route("a", vec![80], exact("/a")), route("b", vec![80], exact("/b"))],
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn the_first_matching_route_for_the_port_takes_the_request() {
        let l7 = routes();
        let get = |path: &str| http::Request::get(path).body(()).unwrap();
        assert!(matches!(select(&l7.routes, 80, "", &get("/b")), Selected::Route(r) if r.name == "b"));
        assert!(matches!(select(&l7.routes, 80, "", &get("/c")), Selected::NoMatch));
        assert!(matches!(select(&l7.routes, 8080, "", &get("/c")), Selected::Default));
    }

    /// At an ingress gateway the request's host picks a virtual host first: the routes of the
    /// most specific hostname covering it, whose matches alone decide (an exact host's
    /// unmatched path is 404, never a wildcard route's).
    #[test]
    fn the_most_specific_hostname_is_a_virtual_host() {
        let prefix = |path: &str| pb::Match {
            path: path.into(),
            has_path: true,
            path_kind: pb::PathKind::PathPrefix as i32,
            ..Default::default()
        };
        let route = |name: &str, host: &str, m: pb::Match| pb::Route {
            name: name.into(),
            hostnames: vec![host.into()],
            matches: vec![m],
            ..Default::default()
        };
        let l7 = ServiceL7::compile(&pb::ServiceConfig {
            routes: vec![
                route("shop-api", "shop.example.com", prefix("/api")),
                route("wild", "*.example.com", prefix("/")),
            ],
            ..Default::default()
        })
        .unwrap();
        let get = |path: &str| http::Request::get(path).body(()).unwrap();
        let pick = |host: &str, path: &str| match select(&l7.routes, 80, host, &get(path)) {
            Selected::Route(r) => r.name.clone(),
            other => format!("{other:?}"),
        };
        assert_eq!(pick("shop.example.com", "/api/x"), "shop-api");
        assert_eq!(pick("SHOP.example.com.:443", "/api/x"), "shop-api", "host normalized");
        assert_eq!(pick("shop.example.com", "/other"), "NoMatch", "no fall-through to the wildcard");
        assert_eq!(pick("x.example.com", "/other"), "wild");
        assert_eq!(pick("example.org", "/"), "Default", "no route serves the host");
    }
}
