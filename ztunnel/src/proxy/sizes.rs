//! What one proxied connection costs in ztunnel's memory, held down by tests (as Istio's
//! ztunnel does): every open connection is one task whose future is as large as its largest
//! state, for the connection's whole life. A change that makes a connection's future carry a
//! handshake, a request or a buffer across the copy shows here first.
//!
//! Limits are the measured sizes (debug build, as tests run) with a little room; a change that
//! needs more must say why here.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use ambit_shared::hbone::server::{Handler, InboundConnect, Responder};
use ambit_shared::hbone::{copy_tcp_tunnel, H2Stream};
use tokio::net::TcpStream;

use super::inbound::HboneHandler;
use super::{inbound, outbound, Pod, Proxy};

fn future_size<A, B, C, D, F: Future>(_: impl Fn(A, B, C, D) -> F) -> usize {
    std::mem::size_of::<F>()
}

fn future_size3<A, B, C, F: Future>(_: impl Fn(A, B, C) -> F) -> usize {
    std::mem::size_of::<F>()
}

fn future_size2<A, B, F: Future>(_: impl Fn(A, B) -> F) -> usize {
    std::mem::size_of::<F>()
}

/// The copy loop with what it borrows, as a connection's task holds them.
async fn copy_owned(mut tcp: TcpStream, mut tunnel: H2Stream) {
    let _ = copy_tcp_tunnel(&mut tcp, &mut tunnel).await;
}

/// An inbound tunnel's handler as the HBONE server's stream task runs it.
async fn inbound_tunnel(handler: HboneHandler, req: InboundConnect, responder: Responder) {
    handler.handle(req, responder).await;
}

fn report(name: &str, size: usize, limit: usize) {
    eprintln!("{name}: {size} bytes (limit {limit})");
    assert!(size <= limit, "{name}'s future grew to {size} bytes (limit {limit}): every open connection pays it");
}

#[test]
fn connection_futures_stay_small() {
    let outbound = future_size(|a: Arc<Proxy>, b: Arc<Pod>, c: TcpStream, d: SocketAddr| outbound::handle(a, b, c, d));
    let plaintext =
        future_size(|a: Arc<Proxy>, b: Arc<Pod>, c: TcpStream, d: SocketAddr| inbound::plaintext(a, b, c, d));
    let tunnel = future_size3(inbound_tunnel);
    let copy = future_size2(copy_owned);
    report("outbound connection", outbound, OUTBOUND_LIMIT);
    report("inbound plaintext connection", plaintext, PLAINTEXT_LIMIT);
    report("inbound HBONE tunnel", tunnel, TUNNEL_LIMIT);
    report("TCP ⇄ tunnel copy", copy, COPY_LIMIT);
}

// Measured (debug): outbound 1 256, plaintext 1 256, HBONE tunnel 1 688, copy 448. Before the
// dial and tunnel opening were boxed: outbound 1 456, HBONE tunnel 1 760. Authorizing open
// inbound connections again when the policies change added about 400 bytes to each inbound
// future (who the connection is between, the race between the copy and the watch, the grace
// timer once denied; the watch itself is boxed, a separate allocation): plaintext was 856,
// HBONE tunnel 1 312.
const OUTBOUND_LIMIT: usize = 1_400;
const PLAINTEXT_LIMIT: usize = 1_350;
const TUNNEL_LIMIT: usize = 1_780;
const COPY_LIMIT: usize = 512;
