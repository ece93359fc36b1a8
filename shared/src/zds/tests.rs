//! Both ends of ZDS over a real SOCK_SEQPACKET socket, with a real file descriptor passed.

use std::os::fd::AsFd;

use super::*;

fn socket_path(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("ambit-zds-{name}-{}.sock", std::process::id()))
}

fn info(name: &str) -> WorkloadInfo {
    WorkloadInfo {
        name: name.into(),
        namespace: "shop".into(),
        service_account: "cart".into(),
        windows_namespace: None,
    }
}

#[tokio::test]
async fn snapshot_add_keep_del_with_the_netns_fd() {
    let path = socket_path("flow");
    let listener = Listener::bind(&path).unwrap();
    let proxy = tokio::spawn({
        let path = path.clone();
        async move {
            let conn = ProxyConn::connect(&path).await.unwrap();
            let mut seen = Vec::new();
            loop {
                let event = match conn.next().await {
                    Ok(e) => e,
                    Err(ZdsError::Closed) => return seen,
                    Err(e) => panic!("{e}"),
                };
                let refuse = matches!(&event, ZdsEvent::Add { uid, .. } if uid == "bad");
                if let ZdsEvent::Add { netns, .. } = &event {
                    // The fd is a live network namespace handle.
                    let target = std::fs::read_link(format!("/proc/self/fd/{}", netns.as_raw_fd())).unwrap();
                    assert!(target.to_string_lossy().starts_with("net:["), "{target:?}");
                }
                seen.push(format!("{event:?}").split_whitespace().next().unwrap_or("").to_owned());
                conn.ack(refuse.then(|| "cannot open listeners".to_owned())).await.unwrap();
            }
        }
    });
    let agent = listener.accept().await.unwrap();
    let netns = std::fs::File::open("/proc/self/ns/net").unwrap();
    agent.add("pod-1", info("cart-1"), netns.as_fd()).await.unwrap();
    agent.keep("pod-0").await.unwrap();
    agent.snapshot_sent().await.unwrap();
    let err = agent.add("bad", info("bad"), netns.as_fd()).await.unwrap_err();
    assert!(
        matches!(&err, ZdsError::Refused { uid, error } if uid == "bad" && error == "cannot open listeners"),
        "{err}"
    );
    agent.del("pod-1").await.unwrap();
    drop(agent);
    let seen = proxy.await.unwrap();
    assert_eq!(seen, ["Add", "Keep", "SnapshotSent", "Add", "Del"]);
    let _ = std::fs::remove_file(&path);
}

#[tokio::test]
async fn an_add_without_fd_or_garbage_is_an_error_for_that_connection_only() {
    let path = socket_path("bad");
    let listener = Listener::bind(&path).unwrap();
    let client = tokio::spawn({
        let path = path.clone();
        async move {
            let conn = ProxyConn::connect(&path).await.unwrap();
            let first = conn.next().await.unwrap_err();
            let second = conn.next().await.unwrap_err();
            (first.to_string(), second.to_string())
        }
    });
    let agent = listener.accept().await.unwrap();
    // An add with no fd attached.
    let add = WorkloadRequest {
        payload: Some(workload_request::Payload::Add(AddWorkload { uid: "x".into(), workload_info: None })),
    };
    agent.conn.send(&add, None).await.unwrap();
    // Bytes that are not a protobuf message.
    let raw = agent.conn.fd.get_ref().as_raw_fd();
    send_raw(raw, &[0xff, 0xff, 0xff, 0xff], None).unwrap();
    let (first, second) = client.await.unwrap();
    assert!(first.contains("no network namespace fd"), "{first}");
    assert!(second.contains("does not decode"), "{second}");
    // The listener still accepts others.
    let again = tokio::spawn({
        let path = path.clone();
        async move { ProxyConn::connect(&path).await.map(|_| ()) }
    });
    listener.accept().await.unwrap();
    again.await.unwrap().unwrap();
    let _ = std::fs::remove_file(&path);
}

#[tokio::test]
async fn a_wrong_version_is_refused() {
    let path = socket_path("version");
    let listener = Listener::bind(&path).unwrap();
    let p = path.clone();
    tokio::spawn(async move {
        let conn = Conn::connect(&p).await.unwrap();
        conn.send(&ZdsHello { version: 7 }, None).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    });
    let err = listener.accept().await.err().unwrap();
    assert!(matches!(err, ZdsError::Version(7)), "{err}");
    let _ = std::fs::remove_file(&path);
}
