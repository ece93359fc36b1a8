use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::*;
use crate::testing::{identity, TestCa};

/// Runs one handshake over loopback; returns (client result, server result).
async fn handshake(
    server_cert: &WorkloadCert,
    server_roots: &MeshRoots,
    client_cert: &WorkloadCert,
    client_roots: &MeshRoots,
    expected: Vec<Identity>,
) -> (Result<Identity, HandshakeFailure>, Result<Identity, HandshakeFailure>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(server_config(server_cert, server_roots).unwrap()));
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        match acceptor.accept(tcp).await {
            Ok(mut tls) => {
                let id = peer_identity_of(tls.get_ref().1).expect("verified peer has an identity");
                let mut b = [0u8; 4];
                tls.read_exact(&mut b).await.unwrap();
                tls.write_all(&b).await.unwrap();
                tls.flush().await.unwrap();
                Ok(id)
            }
            Err(e) => Err(HandshakeFailure::from_io(&e)),
        }
    });
    let connector = TlsConnector::from(Arc::new(client_config(client_cert, client_roots, expected).unwrap()));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let client = match connector.connect(ServerName::IpAddress(addr.ip().into()), tcp).await {
        Ok(mut tls) => {
            let (_, conn) = tls.get_ref();
            assert_eq!(conn.alpn_protocol(), Some(ALPN_H2));
            assert_eq!(conn.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
            let id = peer_identity_of(conn).unwrap();
            // TLS 1.3 client auth failures surface on first read.
            tls.write_all(b"ping").await.unwrap();
            let mut b = [0u8; 4];
            match tls.read_exact(&mut b).await {
                Ok(_) => Ok(id),
                Err(e) => Err(HandshakeFailure::from_io(&e)),
            }
        }
        Err(e) => Err(HandshakeFailure::from_io(&e)),
    };
    (client, server.await.unwrap())
}

#[tokio::test]
async fn matching_identities_handshake_both_ways() {
    let ca = TestCa::new();
    let server = ca.cert("shop", "cart");
    let client = ca.cert("shop", "front");
    let (c, s) = handshake(&server, &ca.roots, &client, &ca.roots, vec![identity("shop", "cart")]).await;
    assert_eq!(c.unwrap(), identity("shop", "cart"));
    assert_eq!(s.unwrap(), identity("shop", "front"));
}

#[tokio::test]
async fn wrong_san_is_refused_with_the_identities_named() {
    let ca = TestCa::new();
    let server = ca.cert("shop", "imposter");
    let client = ca.cert("shop", "front");
    let (c, _) = handshake(&server, &ca.roots, &client, &ca.roots, vec![identity("shop", "cart")]).await;
    let err = c.unwrap_err();
    match &err {
        HandshakeFailure::Identity(PeerIdentityError::Mismatch { expected, got }) => {
            assert_eq!(expected, &vec![identity("shop", "cart")]);
            assert_eq!(got, &identity("shop", "imposter"));
        }
        other => panic!("expected identity mismatch, got {other:?}"),
    }
    assert!(err.to_string().contains("sa/imposter"), "{err}");
}

#[tokio::test]
async fn expired_certificates_are_refused_on_either_side() {
    let ca = TestCa::new();
    let (c, _) = handshake(
        &ca.expired_cert("shop", "cart"),
        &ca.roots,
        &ca.cert("shop", "front"),
        &ca.roots,
        vec![identity("shop", "cart")],
    )
    .await;
    assert_eq!(c.unwrap_err(), HandshakeFailure::Expired);

    let (c, s) = handshake(
        &ca.cert("shop", "cart"),
        &ca.roots,
        &ca.expired_cert("shop", "front"),
        &ca.roots,
        vec![identity("shop", "cart")],
    )
    .await;
    assert_eq!(s.unwrap_err(), HandshakeFailure::Expired);
    assert!(matches!(c.unwrap_err(), HandshakeFailure::RefusedByPeer(_)));
}

#[tokio::test]
async fn foreign_roots_are_refused_on_either_side() {
    let ours = TestCa::new();
    let theirs = TestCa::new();
    // Server from another mesh.
    let (c, _) = handshake(
        &theirs.cert("shop", "cart"),
        &theirs.roots,
        &ours.cert("shop", "front"),
        &ours.roots,
        vec![identity("shop", "cart")],
    )
    .await;
    assert_eq!(c.unwrap_err(), HandshakeFailure::UntrustedIssuer);
    // Client from another mesh (which trusts our root, so only the server can refuse).
    let (_, s) = handshake(
        &ours.cert("shop", "cart"),
        &ours.roots,
        &theirs.cert("shop", "front"),
        &ours.roots,
        vec![identity("shop", "cart")],
    )
    .await;
    assert_eq!(s.unwrap_err(), HandshakeFailure::UntrustedIssuer);
}

#[test]
fn only_tls13_aes_gcm_suites_are_offered() {
    let suites: Vec<_> = provider().cipher_suites.iter().map(|s| s.suite()).collect();
    assert_eq!(
        suites,
        vec![rustls::CipherSuite::TLS13_AES_128_GCM_SHA256, rustls::CipherSuite::TLS13_AES_256_GCM_SHA384]
    );
}
