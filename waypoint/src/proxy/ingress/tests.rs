use std::sync::Arc;

use tokio::io::AsyncWriteExt;

use super::client_hello;

/// The first flight of a real rustls client for `sni`.
async fn hello_bytes(sni: &str) -> Vec<u8> {
    let mut roots = rustls::RootCertStore::empty();
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec![sni.to_owned()]).expect("params").self_signed(&key).expect("cert");
    roots.add(cert.der().clone()).expect("root");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(sni.to_owned()).expect("name");
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
    let mut out = Vec::new();
    conn.write_tls(&mut out).expect("hello");
    out
}

#[tokio::test]
async fn reads_the_sni_and_keeps_every_byte() {
    let hello = hello_bytes("db.example.com").await;
    let (mut client, mut server) = tokio::io::duplex(64 * 1024);
    // Written in small pieces: the parser must wait for the whole record.
    let sent = hello.clone();
    let writer = tokio::spawn(async move {
        for chunk in sent.chunks(7) {
            client.write_all(chunk).await.expect("write");
        }
        client
    });
    let (read, sni) = client_hello(&mut server).await.expect("a ClientHello");
    assert_eq!(sni.as_deref(), Some("db.example.com"));
    assert_eq!(&read[..], &hello[..], "passed on untouched");
    drop(writer.await);
}

#[tokio::test]
async fn refuses_what_is_not_tls() {
    let (mut client, mut server) = tokio::io::duplex(1024);
    client.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await.expect("write");
    assert!(client_hello(&mut server).await.is_err());
    let (client, mut server) = tokio::io::duplex(1024);
    drop(client);
    assert!(matches!(client_hello(&mut server).await, Err(super::HelloError::Closed)));
}
