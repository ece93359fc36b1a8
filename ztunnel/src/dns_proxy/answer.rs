//! What to do with one DNS message from a pod: a pure function of the message and the mesh
//! state. Names in the registry (Kubernetes services, ServiceEntry hosts) are answered here
//! for `A` and `AAAA`; everything else — other names, other types, other opcodes (UPDATE,
//! NOTIFY), other classes — goes to the upstream resolver as the pod wrote it, so nothing an
//! application relied on before capture is refused. A message that does not parse gets FORMERR.

use std::net::IpAddr;
use std::sync::Arc;

use ambit_dataplane::state::{Service, State};
use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{DNSClass, RData, Record, RecordType};

/// Time to live of the answers given here (Istio's ztunnel uses the same): long enough to
/// spare the proxy, short enough that a changed address is picked up soon.
pub const ANSWER_TTL: u32 = 30;

/// The EDNS payload size advertised and honoured (the DNS flag day 2020 value: fits any path
/// MTU without fragmentation).
pub const EDNS_PAYLOAD: u16 = 1232;

/// The size of a DNS header; anything shorter is not a message.
const HEADER_LEN: usize = 12;

/// What becomes of one message.
#[derive(Debug)]
pub enum Decision {
    /// Answered from the registry.
    Answer(Box<Message>),
    /// Not ours to answer: sent upstream unchanged (the parsed query keys the cache).
    Forward(Box<Message>),
    /// A reply already encoded (FORMERR for a message that does not parse).
    Reply(Vec<u8>),
    /// Nothing to answer: too short for a header, or a response rather than a query.
    Drop,
}

/// Who is asking.
#[derive(Debug, Clone)]
pub struct Client {
    /// The pod's namespace: a name declared in several namespaces resolves to its own first.
    pub namespace: Arc<str>,
    /// The pod's network: only addresses reachable there are given.
    pub network: Arc<str>,
    /// The pod's workload: answers carry only the address families it has (an IPv4-only pod
    /// is never handed an IPv6 virtual address it cannot reach).
    pub workload_uid: Arc<str>,
    /// The cluster's DNS domain (`cluster.local`): names under it are Kubernetes names,
    /// answered only by exact hostnames of their own namespace.
    pub cluster_domain: Arc<str>,
}

/// Decides for a message from `client`: [`parse`], then [`decide_query`].
pub fn decide(packet: &[u8], state: &State, client: &Client) -> Decision {
    match parse(packet) {
        Ok(query) => decide_query(query, state, client),
        Err(done) => done,
    }
}

/// The checks that need no mesh state (done before the state is locked): a standard query to
/// decide on, or what becomes of anything else.
pub fn parse(packet: &[u8]) -> Result<Message, Decision> {
    if packet.len() < HEADER_LEN {
        return Err(Decision::Drop);
    }
    // QR set: a response. Answering it could loop two resolvers into each other.
    if packet[2] & 0x80 != 0 {
        return Err(Decision::Drop);
    }
    let query = Message::from_vec(packet).map_err(|_| Decision::Reply(format_error(packet)))?;
    if query.op_code() != OpCode::Query {
        return Err(Decision::Forward(Box::new(query)));
    }
    // A standard query asks exactly one question (RFC 9619).
    if query.queries().len() != 1 {
        return Err(Decision::Reply(format_error(packet)));
    }
    Ok(query)
}

/// Answers a standard query (one question) from the registry, or forwards it.
pub fn decide_query(query: Message, state: &State, client: &Client) -> Decision {
    let Some(q) = query.queries().first() else { return Decision::Forward(Box::new(query)) };
    let wanted = q.query_type();
    if q.query_class() != DNSClass::IN || !matches!(wanted, RecordType::A | RecordType::AAAA) {
        return Decision::Forward(Box::new(query));
    }
    let name = q.name().to_lowercase().to_ascii();
    let name = name.strip_suffix('.').unwrap_or(&name);
    let Some(addresses) = registry_addresses(state, name, client) else {
        return Decision::Forward(Box::new(query));
    };
    let own = state.workload(&client.workload_uid).map(|w| w.addresses.as_slice()).unwrap_or_default();
    let family_ok = |ip: &IpAddr| own.is_empty() || own.iter().any(|o| o.is_ipv4() == ip.is_ipv4());
    let records: Vec<Record> = addresses
        .into_iter()
        .filter(family_ok)
        .filter_map(|ip| match (ip, wanted) {
            (IpAddr::V4(v4), RecordType::A) => Some(RData::A(A(v4))),
            (IpAddr::V6(v6), RecordType::AAAA) => Some(RData::AAAA(AAAA(v6))),
            _ => None,
        })
        .map(|data| Record::from_rdata(q.name().clone(), ANSWER_TTL, data))
        .collect();
    // A name with addresses of the other family only: it exists, with no data of this type
    // (NOERROR, empty), never NXDOMAIN, which would deny the name for every type.
    Decision::Answer(Box::new(response_to(&query, ResponseCode::NoError, records)))
}

/// The addresses the registry gives `name`, or `None` when it is not ours to answer: the
/// virtual addresses of the service the name stands for, else — a headless service, an entry
/// without addresses — its endpoints' addresses. A name whose service has neither (a DNS entry
/// with no allocated address) is left to the upstream resolver.
fn registry_addresses(state: &State, name: &str, client: &Client) -> Option<Vec<IpAddr>> {
    let service = service_for(state, name, client)?;
    let vips: Vec<IpAddr> =
        service.vips.iter().filter(|(n, _)| n.is_empty() || **n == *client.network).map(|(_, ip)| *ip).collect();
    if !vips.is_empty() {
        return Some(vips);
    }
    let mut endpoints: Vec<IpAddr> = state
        .endpoint_workloads(service)
        .filter(|w| w.healthy || service.allow_unhealthy)
        .filter(|w| w.network.is_empty() || *w.network == *client.network)
        .flat_map(|w| w.addresses.iter().copied())
        .collect();
    endpoints.sort();
    endpoints.dedup();
    (!endpoints.is_empty()).then_some(endpoints)
}

/// The service `name` stands for, under rules no namespace can use to answer for another:
/// - a name under the cluster domain is matched exactly, never by a wildcard (so `*.svc.…`
///   or `*.cluster.local` cannot catch search-path expansions), a name `….<ns>.svc.<domain>`
///   only by a service of namespace `<ns>`, any other name there only by the client's own
///   namespace;
/// - a wildcard covers names below a suffix of at least two labels (`*.example.com`, never
///   `*.com`), the closest wildcard first;
/// - several namespaces claiming a name: the client's own namespace's, else — when they are
///   not all one namespace — none (the name is left to the real DNS rather than given to
///   whichever namespace sorts first).
fn service_for<'s>(state: &'s State, name: &str, client: &Client) -> Option<&'s Service> {
    let domain = &*client.cluster_domain;
    let in_cluster = name == domain || name.strip_suffix(domain).is_some_and(|rest| rest.ends_with('.'));
    let mut candidates = state.services_with_host(name);
    if candidates.is_empty() && !in_cluster {
        let mut rest = name;
        while let Some((_, parent)) = rest.split_once('.') {
            if !parent.contains('.') {
                break;
            }
            let wild = state.services_with_host(&format!("*.{parent}"));
            if !wild.is_empty() {
                candidates = wild;
                break;
            }
            rest = parent;
        }
    }
    if in_cluster {
        // `….<ns>.svc.<domain>`: only namespace `<ns>` may answer it; another name in the
        // cluster domain only the client's own namespace.
        let owner = name.strip_suffix(&format!(".svc.{domain}")).and_then(|rest| rest.rsplit('.').next());
        let owner = owner.unwrap_or(&client.namespace);
        candidates.retain(|s| *s.namespace == *owner);
    }
    if let Some(own) = candidates.iter().find(|s| *s.namespace == *client.namespace) {
        return Some(own);
    }
    let first = candidates.first()?;
    candidates.iter().all(|s| s.namespace == first.namespace).then_some(&***first)
}

/// A response to `query` with `answers`: its id, opcode, question and recursion flags,
/// authoritative, recursion available, EDNS when the query had it.
pub fn response_to(query: &Message, code: ResponseCode, answers: Vec<Record>) -> Message {
    let mut m = Message::new();
    m.set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_op_code(query.op_code())
        .set_authoritative(code == ResponseCode::NoError)
        .set_recursion_desired(query.recursion_desired())
        .set_recursion_available(true)
        .set_checking_disabled(query.checking_disabled())
        .set_response_code(code);
    m.add_queries(query.queries().iter().cloned());
    m.insert_answers(answers);
    if query.extensions().is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD);
        m.set_edns(edns);
    }
    m
}

/// FORMERR for a message that did not parse: the header's id and opcode, no sections.
pub fn format_error(packet: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; HEADER_LEN];
    out[0] = packet.first().copied().unwrap_or(0);
    out[1] = packet.get(1).copied().unwrap_or(0);
    let opcode = packet.get(2).map_or(0, |b| b & 0x78);
    out[2] = 0x80 | opcode;
    out[3] = ResponseCode::FormErr.low();
    out
}

/// The largest UDP reply `query` accepts: 512 bytes without EDNS, its advertised size (at
/// most ours) with it.
pub fn udp_limit(query: &Message) -> usize {
    match query.extensions() {
        Some(edns) => usize::from(edns.max_payload().clamp(512, EDNS_PAYLOAD)),
        None => 512,
    }
}

/// Encodes a response for UDP: when it does not fit `limit`, the records are dropped and TC is
/// set, so the client asks again over TCP.
pub fn encode_for_udp(mut response: Message, limit: usize) -> Option<Vec<u8>> {
    let bytes = response.to_vec().ok()?;
    if bytes.len() <= limit {
        return Some(bytes);
    }
    response.take_answers();
    response.take_name_servers();
    response.take_additionals();
    response.set_truncated(true);
    response.to_vec().ok()
}

#[cfg(test)]
#[path = "answer_tests.rs"]
mod tests;
