//! Queries the registry does not answer go to the upstream resolver — the node's
//! (`/etc/resolv.conf`, as Istio's ztunnel does) or `--dns-nameservers` — from ztunnel's own
//! network namespace, over the transport the pod used (UDP, or TCP after a truncated answer).
//! The message is sent as the pod wrote it, under a fresh random id from a fresh socket
//! connected to that server; a reply must carry that id and the same question. Answers to
//! recursive queries are cached for their records' TTLs (capped), keyed by name, type, class,
//! the recursion and DNSSEC bits and whether the query had EDNS; only small answers are kept,
//! and a cached answer is re-encoded for each asker (its id, its question's spelling, its
//! EDNS, its UDP size).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// How long one upstream server gets to answer before the next is tried.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest an answer is kept, whatever its TTL.
const MAX_CACHE_TTL: u32 = 300;
/// How long "no such name" is kept when the answer carries no SOA to say.
const DEFAULT_NEGATIVE_TTL: u32 = 5;
/// Entries kept at most (a pod asking for random names cannot grow it without bound).
const CACHE_ENTRIES: usize = 2048;
/// The largest answer kept (bytes on the wire): with `CACHE_ENTRIES`, a bound on the cache's
/// memory a pod fetching huge records cannot push up.
const MAX_CACHED_ANSWER: usize = 2048;
/// A TCP DNS message's maximum size (its length prefix is 16 bits).
const MAX_MESSAGE: usize = 65_535;

/// Why a query could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("no upstream resolver configured")]
    NoUpstream,
    #[error("upstream {server}: {source}")]
    Io { server: SocketAddr, source: std::io::Error },
    #[error("upstream {0}: no answer in time")]
    Timeout(SocketAddr),
    #[error("upstream {0}: reply does not match the query")]
    Mismatch(SocketAddr),
}

/// The transport a query arrived on (and is forwarded over).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CacheKey {
    name: String,
    kind: RecordType,
    class: u16,
    dnssec_ok: bool,
    checking_disabled: bool,
    recursion_desired: bool,
    edns: bool,
}

struct Cached {
    response: Message,
    stored: Instant,
    ttl: u32,
}

pub struct Forwarder {
    upstreams: Vec<SocketAddr>,
    cache: Mutex<HashMap<CacheKey, Cached>>,
}

impl Forwarder {
    /// Forwards to `upstreams` when given, else to the node's resolvers.
    pub fn new(upstreams: &[SocketAddr]) -> Self {
        let mut servers: Vec<SocketAddr> = if upstreams.is_empty() {
            match hickory_resolver::system_conf::read_system_conf() {
                Ok((config, _)) => config.name_servers().iter().map(|ns| ns.socket_addr).collect(),
                Err(e) => {
                    tracing::warn!(error = %e, "no system resolver configuration; the DNS proxy cannot forward");
                    Vec::new()
                }
            }
        } else {
            upstreams.to_vec()
        };
        let mut seen = Vec::new();
        servers.retain(|s| {
            let new = !seen.contains(s);
            seen.push(*s);
            new
        });
        Forwarder { upstreams: servers, cache: Mutex::default() }
    }

    pub fn upstreams(&self) -> &[SocketAddr] {
        &self.upstreams
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<CacheKey, Cached>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The reply to `query` (raw bytes `packet`, as the pod sent them), with the pod's id.
    pub async fn forward(&self, query: &Message, packet: &[u8], transport: Transport) -> Result<Vec<u8>, ForwardError> {
        let key = cache_key(query);
        if let Some(hit) = key.as_ref().and_then(|k| self.cached(k, query, transport)) {
            return Ok(hit);
        }
        if self.upstreams.is_empty() {
            return Err(ForwardError::NoUpstream);
        }
        let mut last = ForwardError::NoUpstream;
        for server in &self.upstreams {
            match exchange(*server, query, packet, transport).await {
                Ok((mut reply, parsed)) => {
                    if let (Some(key), Some(parsed)) = (key, parsed) {
                        if reply.len() <= MAX_CACHED_ANSWER {
                            self.store(key, parsed);
                        }
                    }
                    reply[..2].copy_from_slice(&query.id().to_be_bytes());
                    return Ok(reply);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "DNS upstream failed; trying the next");
                    last = e;
                }
            }
        }
        Err(last)
    }

    fn cached(&self, key: &CacheKey, query: &Message, transport: Transport) -> Option<Vec<u8>> {
        let mut cache = self.cache();
        let entry = cache.get(key)?;
        let age = u32::try_from(entry.stored.elapsed().as_secs()).unwrap_or(u32::MAX);
        if age >= entry.ttl {
            cache.remove(key);
            return None;
        }
        let mut response = entry.response.clone();
        drop(cache);
        response.set_id(query.id());
        *response.queries_mut() = query.queries().to_vec();
        for record in response.answers_mut() {
            let ttl = record.ttl().saturating_sub(age);
            record.set_ttl(ttl);
        }
        for record in response.name_servers_mut() {
            let ttl = record.ttl().saturating_sub(age);
            record.set_ttl(ttl);
        }
        // The asker's EDNS, not the first asker's (its options, cookies, subnet).
        *response.extensions_mut() = query.extensions().as_ref().map(|_| {
            let mut edns = hickory_proto::op::Edns::new();
            edns.set_max_payload(super::answer::EDNS_PAYLOAD);
            edns.set_dnssec_ok(key.dnssec_ok);
            edns
        });
        match transport {
            Transport::Udp => super::answer::encode_for_udp(response, super::answer::udp_limit(query)),
            Transport::Tcp => response.to_vec().ok(),
        }
    }

    fn store(&self, key: CacheKey, response: Message) {
        let Some(ttl) = cache_ttl(&response) else { return };
        let mut cache = self.cache();
        if cache.len() >= CACHE_ENTRIES {
            cache.retain(|_, c| c.stored.elapsed().as_secs() < u64::from(c.ttl));
            if cache.len() >= CACHE_ENTRIES {
                return;
            }
        }
        cache.insert(key, Cached { response, stored: Instant::now(), ttl });
    }
}

fn cache_key(query: &Message) -> Option<CacheKey> {
    // Only recursive standard queries: a non-recursive one gets a referral, not an answer
    // another pod could use.
    if query.op_code() != hickory_proto::op::OpCode::Query || !query.recursion_desired() {
        return None;
    }
    let [q] = query.queries() else { return None };
    Some(CacheKey {
        name: q.name().to_lowercase().to_ascii(),
        kind: q.query_type(),
        class: u16::from(q.query_class()),
        dnssec_ok: query.extensions().as_ref().is_some_and(|e| e.flags().dnssec_ok),
        checking_disabled: query.checking_disabled(),
        recursion_desired: query.recursion_desired(),
        edns: query.extensions().is_some(),
    })
}

/// How long a reply may be served from the cache: the smallest TTL of its answers, or for
/// "no such name / no data" the SOA's negative TTL; never when truncated or a failure.
fn cache_ttl(response: &Message) -> Option<u32> {
    if response.truncated() {
        return None;
    }
    let ttl = match response.response_code() {
        ResponseCode::NoError if !response.answers().is_empty() => response.answers().iter().map(|r| r.ttl()).min(),
        ResponseCode::NoError | ResponseCode::NXDomain => Some(
            response
                .name_servers()
                .iter()
                .find_map(|r| match r.data() {
                    RData::SOA(soa) => Some(soa.minimum().min(r.ttl())),
                    _ => None,
                })
                .unwrap_or(DEFAULT_NEGATIVE_TTL),
        ),
        _ => None,
    }?;
    (ttl > 0).then_some(ttl.min(MAX_CACHE_TTL))
}

/// One exchange with one server: the raw reply and, when it parses, the message (for the
/// cache). The reply must answer our id and the same question.
async fn exchange(
    server: SocketAddr,
    query: &Message,
    packet: &[u8],
    transport: Transport,
) -> Result<(Vec<u8>, Option<Message>), ForwardError> {
    let io = |source| ForwardError::Io { server, source };
    let id: u16 = rand::random();
    let mut out = packet.to_vec();
    out[..2].copy_from_slice(&id.to_be_bytes());
    let reply = tokio::time::timeout(ATTEMPT_TIMEOUT, async {
        match transport {
            Transport::Udp => {
                let local: SocketAddr = if server.is_ipv4() {
                    ([0, 0, 0, 0], 0).into()
                } else {
                    (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
                };
                let socket = UdpSocket::bind(local).await?;
                socket.connect(server).await?;
                socket.send(&out).await?;
                let mut buf = vec![0u8; MAX_MESSAGE];
                loop {
                    let n = socket.recv(&mut buf).await?;
                    // Another id: a stray or forged datagram; keep waiting for ours.
                    if n >= 2 && buf[..2] == id.to_be_bytes() {
                        buf.truncate(n);
                        return Ok::<_, std::io::Error>(buf);
                    }
                }
            }
            Transport::Tcp => {
                let mut stream = TcpStream::connect(server).await?;
                let len = u16::try_from(out.len()).map_err(|_| std::io::Error::other("query too long"))?;
                let mut framed = len.to_be_bytes().to_vec();
                framed.extend_from_slice(&out);
                stream.write_all(&framed).await?;
                let n = usize::from(stream.read_u16().await?);
                let mut buf = vec![0u8; n];
                stream.read_exact(&mut buf).await?;
                Ok(buf)
            }
        }
    })
    .await
    .map_err(|_| ForwardError::Timeout(server))?
    .map_err(io)?;
    if reply.len() < 12 || reply[..2] != id.to_be_bytes() {
        return Err(ForwardError::Mismatch(server));
    }
    let parsed = Message::from_vec(&reply).ok();
    if let Some(p) = &parsed {
        let same = p.queries().len() == query.queries().len()
            && p.queries().iter().zip(query.queries()).all(|(a, b)| {
                a.name().to_lowercase() == b.name().to_lowercase()
                    && a.query_type() == b.query_type()
                    && a.query_class() == b.query_class()
            });
        if !same {
            return Err(ForwardError::Mismatch(server));
        }
    }
    Ok((reply, parsed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{MessageType, Query};
    use hickory_proto::rr::rdata::{A, SOA};
    use hickory_proto::rr::{Name, Record};

    fn query(name: &str, kind: RecordType) -> Message {
        let mut m = Message::new();
        m.set_id(7).set_recursion_desired(true);
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), kind));
        m
    }

    #[test]
    fn cache_ttl_follows_the_records() {
        let mut r = query("a.example.", RecordType::A);
        r.set_message_type(MessageType::Response);
        r.add_answer(Record::from_rdata(Name::from_ascii("a.example.").unwrap(), 60, RData::A(A::new(1, 2, 3, 4))));
        r.add_answer(Record::from_rdata(Name::from_ascii("a.example.").unwrap(), 20, RData::A(A::new(1, 2, 3, 5))));
        assert_eq!(cache_ttl(&r), Some(20), "the smallest TTL");
        r.answers_mut()[1].set_ttl(0);
        assert_eq!(cache_ttl(&r), None, "TTL 0 is never cached");
        let mut nx = query("nope.example.", RecordType::A);
        nx.set_response_code(ResponseCode::NXDomain);
        assert_eq!(cache_ttl(&nx), Some(DEFAULT_NEGATIVE_TTL));
        let soa = SOA::new(
            Name::from_ascii("example.").unwrap(),
            Name::from_ascii("h.example.").unwrap(),
            1,
            3600,
            600,
            86_400,
            45,
        );
        nx.add_name_server(Record::from_rdata(Name::from_ascii("example.").unwrap(), 3600, RData::SOA(soa)));
        assert_eq!(cache_ttl(&nx), Some(45), "the SOA minimum");
        let mut fail = query("x.example.", RecordType::A);
        fail.set_response_code(ResponseCode::ServFail);
        assert_eq!(cache_ttl(&fail), None, "failures are asked again");
        let mut big = query("a.example.", RecordType::A);
        big.add_answer(Record::from_rdata(
            Name::from_ascii("a.example.").unwrap(),
            86_400,
            RData::A(A::new(1, 2, 3, 4)),
        ));
        assert_eq!(cache_ttl(&big), Some(MAX_CACHE_TTL));
        big.set_truncated(true);
        assert_eq!(cache_ttl(&big), None);
    }

    #[test]
    fn cache_keys_ignore_case_and_id() {
        let a = cache_key(&query("API.Example.com.", RecordType::A)).unwrap();
        let b = cache_key(&query("api.example.com.", RecordType::A)).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, cache_key(&query("api.example.com.", RecordType::AAAA)).unwrap());
        let mut plain = query("api.example.com.", RecordType::A);
        plain.set_recursion_desired(false);
        assert!(cache_key(&plain).is_none(), "non-recursive queries are never cached");
        let mut edns = query("api.example.com.", RecordType::A);
        edns.set_edns(hickory_proto::op::Edns::new());
        assert_ne!(a, cache_key(&edns).unwrap(), "with and without EDNS apart");
    }

    #[tokio::test]
    async fn cached_answers_are_re_encoded_for_each_asker() {
        let f = Forwarder::new(&["192.0.2.53:53".parse().unwrap()]);
        let mut first = query("big.example.", RecordType::A);
        first.set_edns(hickory_proto::op::Edns::new());
        let mut answer = first.clone();
        answer.set_message_type(MessageType::Response);
        for i in 0..40u8 {
            answer.add_answer(Record::from_rdata(
                Name::from_ascii("big.example.").unwrap(),
                60,
                RData::A(A::new(10, 0, 0, i)),
            ));
        }
        f.store(cache_key(&first).unwrap(), answer);
        let mut asker = query("BIG.example.", RecordType::A);
        asker.set_id(99);
        let mut edns = hickory_proto::op::Edns::new();
        edns.set_max_payload(1232);
        asker.set_edns(edns);
        let udp = Message::from_vec(&f.cached(&cache_key(&asker).unwrap(), &asker, Transport::Udp).unwrap()).unwrap();
        assert_eq!(udp.id(), 99);
        assert_eq!(udp.queries()[0].name().to_ascii(), "BIG.example.", "the asker's spelling");
        assert_eq!(udp.answers().len(), 40, "fits the EDNS size");
        let mut narrow = asker.clone();
        if let Some(e) = narrow.extensions_mut().as_mut() {
            e.set_max_payload(512);
        }
        let cut = Message::from_vec(&f.cached(&cache_key(&narrow).unwrap(), &narrow, Transport::Udp).unwrap()).unwrap();
        assert!(cut.truncated() && cut.answers().is_empty(), "over the asker's size: TC, ask over TCP");
        let mut small = asker.clone();
        *small.extensions_mut() = None;
        assert!(
            cache_key(&small).and_then(|k| f.cached(&k, &small, Transport::Udp)).is_none(),
            "another key without EDNS"
        );
    }
}
