//! HBONE request heads from a peer: the CONNECT parser never panics, accepts only `ip:port`
//! authorities, and `baggage` parsing round-trips what it keeps as text.
#![no_main]

use ambit_shared::hbone::server::parse_connect;
use ambit_shared::hbone::Baggage;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (authority, baggage) = text.split_once('\n').unwrap_or((text, ""));
    for method in [http::Method::CONNECT, http::Method::GET] {
        let Ok(request) = http::Request::builder().method(method.clone()).uri(authority).body(()) else { continue };
        if let Ok(addr) = parse_connect(&request) {
            assert_eq!(method, http::Method::CONNECT);
            let written = request.uri().authority().map(|a| a.as_str().to_owned()).unwrap_or_default();
            assert_eq!(written.parse::<std::net::SocketAddr>().ok(), Some(addr), "only ip:port is accepted");
        }
    }
    let parsed = Baggage::parse(baggage);
    // What is written as text reads back the same (a value with non-ASCII bytes is not text
    // in a header, and readers drop it whole).
    if let Some(text) = parsed.to_header().ok().and_then(|h| h.to_str().ok().map(str::to_owned)) {
        assert_eq!(Baggage::parse(&text), parsed, "baggage round-trips");
    }
});
