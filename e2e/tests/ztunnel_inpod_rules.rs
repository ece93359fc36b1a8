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
use ambit_shared::netns::Netns;
use ambit_ztunnel::inpod::PROXY_MARK;
use ambit_ztunnel::node::rules::InPodRules;
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
    // Dual stack: the same for IPv6 (nodad: usable at once).
    pod.exec("ip", &["-6", "addr", "add", "fd00:97::2/64", "dev", &a, "nodad"]);
    peer.exec("ip", &["-6", "addr", "add", "fd00:97::1/64", "dev", &b, "nodad"]);
    pod.exec("ip", &["-6", "route", "add", "fd00:99::/64", "via", "fd00:97::1"]);

    let rules = InPodRules::new(Path::new(&pod.path()), true);
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

    // DNS (with the DNS proxy on): UDP to any server's port 53 → 15053 on loopback, and the
    // reply comes back from the server's address; TCP to port 53 → 15053, not 15001.
    let dns_udp = ns.run_in(|| std::net::UdpSocket::bind("127.0.0.1:15053")).unwrap().unwrap();
    let dns_tcp = ns.run_in(|| TcpListener::bind("127.0.0.1:15053")).unwrap().unwrap();
    dns_udp.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let asker = ns.run_in(|| std::net::UdpSocket::bind("0.0.0.0:0")).unwrap().unwrap();
    asker.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    asker.connect("10.99.0.1:53").unwrap();
    asker.send(b"question").unwrap();
    let mut buf = [0u8; 64];
    let (n, from) = dns_udp.recv_from(&mut buf).expect("the query lands on 15053");
    assert_eq!(&buf[..n], b"question");
    dns_udp.send_to(b"answer", from).unwrap();
    let n = asker.recv(&mut buf).expect("the reply reaches the asker, as from 10.99.0.1:53");
    assert_eq!(&buf[..n], b"answer");
    let _tcp53 = ns
        .run_in(|| TcpStream::connect_timeout(&"10.99.0.1:53".parse().unwrap(), Duration::from_secs(2)))
        .unwrap()
        .unwrap();
    let (d, _) = dns_tcp.accept().unwrap();
    assert_eq!(original_dst(&d), "10.99.0.1:53".parse().unwrap(), "TCP DNS lands on 15053");
    let saved_dns = pod.output("iptables-save", &[]);
    assert_eq!(saved_dns.lines().filter(|l| l.ends_with("--to-ports 15053")).count(), 2, "{saved_dns}");

    // Inbound plaintext from another host → 15006; HBONE port 15008 is not redirected.
    let from_peer = peer_connect(&peer, "10.97.0.2:8080");
    let (in_conn, _) = inbound.accept().unwrap();
    assert_eq!(original_dst(&in_conn), "10.97.0.2:8080".parse().unwrap());
    drop(from_peer);
    let to_hbone = peer_connect(&peer, "10.97.0.2:15008");
    let (h, _) = hbone.accept().unwrap();
    assert_eq!(h.local_addr().unwrap(), "10.97.0.2:15008".parse().unwrap());
    drop(to_hbone);

    // IPv6 is captured the same way: the rules are in ip6tables too.
    let saved6 = pod.output("ip6tables-save", &[]);
    assert_eq!(count(&saved6, "-A OUTPUT -j ISTIO_OUTPUT"), 2, "{saved6}");
    assert!(pod.output("ip", &["-6", "rule", "show"]).contains("fwmark 0x111/0xfff lookup 100"));
    let outbound6 = ns.run_in(|| bind6(15001)).unwrap();
    let inbound6 = ns.run_in(|| bind6(15006)).unwrap();
    let _client6 = ns
        .run_in(|| TcpStream::connect_timeout(&"[fd00:99::1]:80".parse().unwrap(), Duration::from_secs(2)))
        .unwrap()
        .unwrap();
    let (accepted6, _) = outbound6.accept().unwrap();
    assert_eq!(original_dst6(&accepted6), "[fd00:99::1]:80".parse().unwrap());
    let from_peer6 = peer_connect(&peer, "[fd00:97::2]:8080");
    let (in6, _) = inbound6.accept().unwrap();
    assert_eq!(original_dst6(&in6), "[fd00:97::2]:8080".parse().unwrap());
    drop(from_peer6);

    // Removal leaves nothing behind, in either family.
    rules.remove().unwrap();
    let saved = pod.output("iptables-save", &[]);
    assert!(!saved.contains("ISTIO"), "{saved}");
    assert!(!pod.output("ip", &["rule", "show"]).contains("0x111"));
    assert!(!pod.output("ip6tables-save", &[]).contains("ISTIO"));
    assert!(!pod.output("ip", &["-6", "rule", "show"]).contains("0x111"));
    rules.remove().unwrap(); // removing twice is fine
}

/// An IPv6-only listener on `[::]:port`.
fn bind6(port: u16) -> TcpListener {
    let s = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None).unwrap();
    s.set_only_v6(true).unwrap();
    s.set_reuse_address(true).unwrap();
    s.bind(&SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)).into()).unwrap();
    s.listen(16).unwrap();
    s.into()
}

fn original_dst6(s: &TcpStream) -> SocketAddr {
    socket2::SockRef::from(s).original_dst_v6().unwrap().as_socket().unwrap()
}

fn peer_connect(peer: &TestNetns, addr: &str) -> TcpStream {
    let ns = Netns::open(Path::new(&peer.path())).unwrap();
    let addr: SocketAddr = addr.parse().unwrap();
    ns.run_in(|| TcpStream::connect_timeout(&addr, Duration::from_secs(2))).unwrap().unwrap()
}
