//! In-pod capture in real network namespaces (root): Istio's redirect rules installed by the
//! node agent's code, listeners opened inside the pod's namespace, and traffic actually
//! redirected by the kernel.

// Test helpers outside #[test] functions unwrap too: a panic is a failed test.
#![allow(clippy::unwrap_used)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::Path;
use std::time::Duration;

use ambit_e2e::netns::Netns as TestNetns;
use ambit_ztunnel::inpod::netns::Netns;
use ambit_ztunnel::inpod::rules::{InPodRules, PROXY_MARK};
use nix::sys::socket::{getsockopt, setsockopt, sockopt};

fn count(haystack: &str, needle: &str) -> usize {
    haystack.lines().filter(|l| l.trim() == needle).count()
}

fn original_dst(s: &TcpStream) -> SocketAddr {
    let addr = getsockopt(&s.as_fd(), sockopt::OriginalDst).unwrap();
    let ip = std::net::Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr));
    SocketAddr::from((ip, u16::from_be(addr.sin_port)))
}

#[test]
fn rules_redirect_pod_traffic_to_listeners_inside_the_pod() {
    let pod = TestNetns::create("pod");
    let peer = TestNetns::create("peer");
    // pod <-veth-> peer, and a dummy route out of the pod for "somewhere else".
    let (a, b) = (
        format!("{}a", &pod.name()[..8.min(pod.name().len())]),
        format!("{}b", &pod.name()[..8.min(pod.name().len())]),
    );
    ambit_e2e::netns::run(
        "ip",
        &["link", "add", &a, "netns", pod.name(), "type", "veth", "peer", "name", &b, "netns", peer.name()],
    );
    pod.exec("ip", &["addr", "add", "10.97.0.2/24", "dev", &a]);
    pod.exec("ip", &["link", "set", &a, "up"]);
    peer.exec("ip", &["addr", "add", "10.97.0.1/24", "dev", &b]);
    peer.exec("ip", &["link", "set", &b, "up"]);
    pod.exec("ip", &["route", "add", "10.99.0.0/24", "via", "10.97.0.1"]);

    let rules = InPodRules::new(Path::new(&pod.path()));
    rules.apply().unwrap();
    rules.apply().unwrap(); // idempotent
    let saved = pod.output("iptables-save", &[]);
    assert_eq!(count(&saved, "-A OUTPUT -j ISTIO_OUTPUT"), 2, "one jump per table:\n{saved}");
    assert_eq!(count(&saved, "-A PREROUTING -j ISTIO_PRERT"), 2, "{saved}");
    assert!(pod.output("ip", &["rule", "show"]).contains("fwmark 0x111/0xfff lookup 100"));

    // Listeners "inside the pod", opened from this process by entering its namespace.
    let ns = Netns::open(Path::new(&pod.path())).unwrap();
    let outbound = ns.run_in(|| TcpListener::bind("0.0.0.0:15001")).unwrap().unwrap();
    let inbound = ns.run_in(|| TcpListener::bind("0.0.0.0:15006")).unwrap().unwrap();
    let hbone = ns.run_in(|| TcpListener::bind("0.0.0.0:15008")).unwrap().unwrap();

    // Outbound: the app connects to 10.99.0.1:80; the kernel hands it to 15001 with the
    // original destination preserved.
    let client = ns
        .run_in(|| TcpStream::connect_timeout(&"10.99.0.1:80".parse().unwrap(), Duration::from_secs(2)))
        .unwrap()
        .unwrap();
    let (accepted, from) = outbound.accept().unwrap();
    assert_eq!(original_dst(&accepted), "10.99.0.1:80".parse().unwrap());
    assert_eq!(from.ip(), client.local_addr().unwrap().ip());

    // ztunnel's own sockets (mark 0x539) are not captured.
    let marked = ns
        .run_in(|| {
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            setsockopt(&s.as_fd(), sockopt::Mark, &PROXY_MARK).unwrap();
            s.connect_timeout(&"10.99.0.1:80".parse::<SocketAddr>().unwrap().into(), Duration::from_millis(500))
        })
        .unwrap();
    assert!(marked.is_err(), "a marked socket must go out uncaptured (nothing answers there)");

    // Inbound plaintext from another host → 15006; HBONE port 15008 is not redirected.
    let from_peer = peer_connect(&peer, "10.97.0.2:8080");
    let (in_conn, _) = inbound.accept().unwrap();
    assert_eq!(original_dst(&in_conn), "10.97.0.2:8080".parse().unwrap());
    drop(from_peer);
    let to_hbone = peer_connect(&peer, "10.97.0.2:15008");
    let (h, _) = hbone.accept().unwrap();
    assert_eq!(h.local_addr().unwrap(), "10.97.0.2:15008".parse().unwrap());
    drop(to_hbone);

    // Removal leaves nothing behind.
    rules.remove().unwrap();
    let saved = pod.output("iptables-save", &[]);
    assert!(!saved.contains("ISTIO"), "{saved}");
    assert!(!pod.output("ip", &["rule", "show"]).contains("0x111"));
    rules.remove().unwrap(); // removing twice is fine
}

fn peer_connect(peer: &TestNetns, addr: &str) -> TcpStream {
    let ns = Netns::open(Path::new(&peer.path())).unwrap();
    let addr: SocketAddr = addr.parse().unwrap();
    ns.run_in(|| TcpStream::connect_timeout(&addr, Duration::from_secs(2))).unwrap().unwrap()
}
