//! DNS for the guest: every query to port 53 (UDP or TCP, any address) is
//! answered by the host. The policy decides each query (name, type,
//! class) before anything is forwarded - to the resolvers it accepted, to
//! the guest's own destination (a raw accept), from a host table, or
//! answered NXDOMAIN/REFUSED locally - and accepted answers become the
//! guest's trusted hostname metadata.

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::classify::DstClass;
use crate::egress::{Counters, HostEgress};
use crate::metadata::{canonical_name, DnsMetadata};
use crate::policy::{evaluate, Conn, DnsQuery, Grant, Proto, DNS_DECISION_TTL};
use crate::Ctx;

/// Where answers come from.
#[derive(Clone, Debug)]
pub(crate) enum DnsUpstream {
    /// Forward to these resolvers, in order.
    Resolvers(Vec<SocketAddr>),
    /// Forward to the address the guest sent the query to (a raw accept):
    /// dialed as a guest destination, so the special-use checks apply.
    Destination(SocketAddr),
    /// Answer from this table (canonical name -> addresses).
    Synthesized(Arc<HashMap<String, Vec<IpAddr>>>),
}

/// What the host does with one query.
#[derive(Clone, Debug)]
enum Decision {
    Answer(DnsUpstream),
    Reply(ResponseCode),
}

/// Entries of the per-query decision cache.
const MAX_DECISIONS: usize = 4096;

/// Per-query decisions, reused for [`DNS_DECISION_TTL`] per (destination,
/// name, type, class): the policy is not called for every retry.
#[derive(Default)]
pub(crate) struct Decisions {
    map: Mutex<HashMap<(SocketAddr, DnsQuery), (Instant, Decision)>>,
}

impl Decisions {
    fn get(&self, key: &(SocketAddr, DnsQuery)) -> Option<Decision> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let (at, d) = map.get(key)?;
        (at.elapsed() < DNS_DECISION_TTL).then(|| d.clone())
    }

    fn put(&self, key: (SocketAddr, DnsQuery), d: Decision) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_DECISIONS {
            map.retain(|_, (at, _)| at.elapsed() < DNS_DECISION_TTL);
            if map.len() >= MAX_DECISIONS {
                map.clear();
            }
        }
        map.insert(key, (Instant::now(), d));
    }
}

/// Answers one guest query sent from `src` to `dst` (port 53): the policy
/// decides it first. `None` drops it (not even a DNS header).
pub(crate) async fn serve_query(
    ctx: &Ctx,
    src: SocketAddr,
    dst: SocketAddr,
    raw: &[u8],
    tcp: bool,
) -> Option<Vec<u8>> {
    let (q, question) = match parse(raw) {
        Ok(ok) => ok,
        Err(reply) => return reply,
    };
    let key = (dst, question.clone());
    let decision = match ctx.dns_decisions.get(&key) {
        Some(d) => d,
        None => {
            let conn = Conn {
                src,
                dst,
                proto: if tcp { Proto::Tcp } else { Proto::Udp },
                names: ctx.metadata.names(dst.ip()),
                dns: Some(question.clone()),
            };
            let d = match evaluate(&ctx.policy, conn, ctx.egress.limits().policy_deadline).await {
                Ok(Grant::Dns(up)) => Decision::Answer(up),
                Ok(Grant::Raw) => Decision::Answer(DnsUpstream::Destination(dst)),
                Ok(Grant::DnsReply(code)) => Decision::Reply(code),
                Ok(Grant::Deny | Grant::Http(_)) => Decision::Reply(ResponseCode::Refused),
                Err(why) => {
                    log::info!(
                        "denied DNS {} {} from {src} to {dst}: {why:?}",
                        question.type_name(),
                        question.name()
                    );
                    Decision::Reply(ResponseCode::Refused)
                }
            };
            ctx.dns_decisions.put(key, d.clone());
            d
        }
    };
    match decision {
        Decision::Answer(up) => {
            Counters::bump(&ctx.egress.counters.dns_answered);
            answer_parsed(raw, &q, &up, &ctx.egress, &ctx.metadata, tcp).await
        }
        Decision::Reply(code) => {
            Counters::bump(&ctx.egress.counters.dns_denied);
            reply_error(&q, code)
        }
    }
}

/// Parses a guest query: the message and its one question, or the reply
/// to send at once (FORMERR, NOTIMP) or `None` (drop).
fn parse(raw: &[u8]) -> Result<(Message, DnsQuery), Option<Vec<u8>>> {
    let q = match Message::from_vec(raw) {
        Ok(q) => q,
        Err(_) => {
            // Answer FORMERR if at least the header's id is there.
            let (Some(a), Some(b)) = (raw.first(), raw.get(1)) else {
                return Err(None);
            };
            let id = u16::from_be_bytes([*a, *b]);
            return Err(Message::error_msg(id, OpCode::Query, ResponseCode::FormErr)
                .to_vec()
                .ok());
        }
    };
    if q.message_type() != MessageType::Query
        || q.op_code() != OpCode::Query
        || q.queries().len() != 1
    {
        return Err(reply_error(&q, ResponseCode::NotImp));
    }
    let query = &q.queries()[0];
    let question = DnsQuery {
        name: canonical_name(&query.name().to_ascii()),
        qtype: query.query_type().into(),
        qclass: query.query_class().into(),
    };
    Ok((q, question))
}

/// Largest UDP answer sent to the guest (fits one 1500-byte frame);
/// longer answers are truncated (TC) so the guest retries over TCP.
const MAX_UDP_ANSWER: usize = 1472;
/// Time for one upstream try.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(3);
/// TTL of synthesized answers.
const SYNTH_TTL: u32 = 60;

/// Answers one guest query from `up` without asking the policy; `None`
/// drops it (not a parseable query).
#[cfg_attr(not(any(test, feature = "fuzzing")), allow(dead_code))]
pub(crate) async fn answer(
    query: &[u8],
    up: &DnsUpstream,
    egress: &HostEgress,
    meta: &DnsMetadata,
    tcp: bool,
) -> Option<Vec<u8>> {
    match parse(query) {
        Ok((q, _)) => answer_parsed(query, &q, up, egress, meta, tcp).await,
        Err(reply) => reply,
    }
}

async fn answer_parsed(
    query: &[u8],
    q: &Message,
    up: &DnsUpstream,
    egress: &HostEgress,
    meta: &DnsMetadata,
    tcp: bool,
) -> Option<Vec<u8>> {
    let resp = match up {
        DnsUpstream::Synthesized(table) => synthesize(q, table),
        DnsUpstream::Resolvers(rs) => forward(query, q, rs, egress, tcp, true).await,
        DnsUpstream::Destination(d) => forward(query, q, &[*d], egress, tcp, false).await,
    };
    let Some((bytes, msg)) = resp else {
        return reply_error(q, ResponseCode::ServFail);
    };
    record(q, &msg, meta);
    if !tcp && bytes.len() > MAX_UDP_ANSWER {
        let mut t = Message::new();
        t.set_id(q.id())
            .set_message_type(MessageType::Response)
            .set_op_code(OpCode::Query)
            .set_recursion_desired(q.recursion_desired())
            .set_recursion_available(true)
            .set_truncated(true)
            .add_queries(q.queries().to_vec());
        return t.to_vec().ok();
    }
    Some(bytes)
}

fn reply_error(q: &Message, code: ResponseCode) -> Option<Vec<u8>> {
    let mut m = Message::error_msg(q.id(), q.op_code(), code);
    m.add_queries(q.queries().to_vec());
    m.to_vec().ok()
}

fn synthesize(q: &Message, table: &HashMap<String, Vec<IpAddr>>) -> Option<(Vec<u8>, Message)> {
    let query = &q.queries()[0];
    let name = canonical_name(&query.name().to_ascii());
    let mut m = Message::new();
    m.set_id(q.id())
        .set_message_type(MessageType::Response)
        .set_op_code(OpCode::Query)
        .set_authoritative(true)
        .set_recursion_desired(q.recursion_desired())
        .set_recursion_available(true)
        .add_queries(q.queries().to_vec());
    match table.get(&name) {
        None => {
            m.set_response_code(ResponseCode::NXDomain);
        }
        Some(ips) => {
            for ip in ips {
                let rdata = match (ip, query.query_type()) {
                    (IpAddr::V4(v4), RecordType::A) => RData::A((*v4).into()),
                    (IpAddr::V6(v6), RecordType::AAAA) => RData::AAAA((*v6).into()),
                    _ => continue,
                };
                m.add_answer(Record::from_rdata(query.name().clone(), SYNTH_TTL, rdata));
            }
        }
    }
    let bytes = m.to_vec().ok()?;
    Some((bytes, m))
}

async fn forward(
    raw: &[u8],
    q: &Message,
    resolvers: &[SocketAddr],
    egress: &HostEgress,
    tcp: bool,
    named_by_policy: bool,
) -> Option<(Vec<u8>, Message)> {
    for r in resolvers {
        let got = tokio::time::timeout(
            UPSTREAM_TIMEOUT,
            exchange(raw, *r, egress, tcp, named_by_policy),
        )
        .await;
        let bytes = match got {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                log::info!("DNS upstream {r}: {e}");
                continue;
            }
            Err(_) => {
                log::info!("DNS upstream {r}: timed out");
                continue;
            }
        };
        let Ok(m) = Message::from_vec(&bytes) else {
            log::info!("DNS upstream {r}: malformed answer");
            continue;
        };
        // An answer must be ours: same id, a response, the same question.
        if m.id() != q.id()
            || m.message_type() != MessageType::Response
            || m.queries() != q.queries()
        {
            log::info!("DNS upstream {r}: answer does not match the query");
            continue;
        }
        return Some((bytes, m));
    }
    None
}

async fn exchange(
    raw: &[u8],
    resolver: SocketAddr,
    egress: &HostEgress,
    tcp: bool,
    named_by_policy: bool,
) -> io::Result<Vec<u8>> {
    if tcp {
        let s = if named_by_policy {
            egress.dial_tcp_resolver(resolver).await
        } else {
            egress.dial_tcp(resolver).await
        };
        let mut s = s.map_err(io::Error::other)?;
        let len = u16::try_from(raw.len()).map_err(|_| io::Error::other("query too long"))?;
        let mut msg = len.to_be_bytes().to_vec();
        msg.extend_from_slice(raw);
        s.write_all(&msg).await?;
        let n = s.read_u16().await?;
        let mut buf = vec![0u8; usize::from(n)];
        s.read_exact(&mut buf).await?;
        Ok(buf)
    } else {
        let s = if named_by_policy {
            egress.dial_udp_resolver(resolver).await
        } else {
            egress.dial_udp(resolver).await
        };
        let s = s.map_err(io::Error::other)?;
        s.send(raw).await?;
        let mut buf = vec![0u8; 65535];
        let n = s.recv(&mut buf).await?;
        buf.truncate(n);
        Ok(buf)
    }
}

/// Records the addresses of an accepted answer under the queried name and
/// every name on its CNAME chain; addresses in the additional section count
/// when their owner is on the chain. Loopback, link-local, multicast,
/// broadcast and reserved addresses are never attributed (DNS rebinding
/// must not lend a trusted name to the host's own services).
pub(crate) fn record(q: &Message, resp: &Message, meta: &DnsMetadata) {
    if resp.response_code() != ResponseCode::NoError {
        return;
    }
    let Some(query) = q.queries().first() else {
        return;
    };
    let qname = canonical_name(&query.name().to_ascii());
    let mut chain: BTreeSet<String> = BTreeSet::from([qname.clone()]);
    // Follow CNAMEs (bounded: a loop adds nothing new).
    for _ in 0..16 {
        let before = chain.len();
        for r in resp.answers() {
            if let RData::CNAME(target) = r.data() {
                if chain.contains(&name_of(r.name())) {
                    chain.insert(name_of(&target.0));
                }
            }
        }
        if chain.len() == before {
            break;
        }
    }
    for r in resp.answers().iter().chain(resp.additionals()) {
        let ip = match r.data() {
            RData::A(a) => IpAddr::V4(a.0),
            RData::AAAA(a) => IpAddr::V6(a.0),
            _ => continue,
        };
        let owner = name_of(r.name());
        if !chain.contains(&owner) || !attributable(ip) {
            continue;
        }
        let ttl = Duration::from_secs(u64::from(r.ttl()));
        meta.record(ip, &qname, ttl);
        if owner != qname {
            meta.record(ip, &owner, ttl);
        }
    }
}

fn name_of(n: &Name) -> String {
    canonical_name(&n.to_ascii())
}

/// Special-use addresses (the host itself or its link) never carry a
/// trusted name: DNS rebinding must not lend one to the host's services.
fn attributable(ip: IpAddr) -> bool {
    !DstClass::of(ip).is_special_use()
}

/// Serves DNS over one guest TCP connection (2-byte length prefixes),
/// each query decided by the policy.
pub(crate) async fn serve_tcp<S>(
    mut s: S,
    ctx: &Ctx,
    src: SocketAddr,
    dst: SocketAddr,
) -> io::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        let n = match tokio::time::timeout(Duration::from_secs(30), s.read_u16()).await {
            Ok(Ok(n)) => n,
            _ => return Ok(()),
        };
        let mut q = vec![0u8; usize::from(n)];
        tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut q))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "slow DNS query"))??;
        let Some(a) = serve_query(ctx, src, dst, &q, true).await else {
            return Ok(());
        };
        let len = u16::try_from(a.len()).map_err(|_| io::Error::other("answer too long"))?;
        s.write_all(&len.to_be_bytes()).await?;
        s.write_all(&a).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::rdata::CNAME;
    use std::str::FromStr;

    fn query(name: &str) -> Message {
        let mut m = Message::new();
        m.set_id(7).set_recursion_desired(true);
        m.add_query(Query::query(Name::from_str(name).unwrap(), RecordType::A));
        m
    }

    fn a(name: &str, ip: &str) -> Record {
        Record::from_rdata(
            Name::from_str(name).unwrap(),
            0,
            RData::A(ip.parse::<std::net::Ipv4Addr>().unwrap().into()),
        )
    }

    #[test]
    fn cname_chain_and_additional_section_are_attributed() {
        let q = query("Registry.npmjs.org.");
        let mut r = q.clone();
        r.set_message_type(MessageType::Response);
        r.add_answer(Record::from_rdata(
            Name::from_str("registry.npmjs.org.").unwrap(),
            0,
            RData::CNAME(CNAME(Name::from_str("cdn.example.net.").unwrap())),
        ));
        r.add_answer(a("cdn.example.net.", "203.0.113.10"));
        r.add_additional(a("cdn.example.net.", "203.0.113.11"));
        // Not on the chain: must not be attributed.
        r.add_additional(a("evil.example.", "203.0.113.12"));
        // Loopback on the chain: never attributed.
        r.add_answer(a("cdn.example.net.", "127.0.0.1"));
        let m = DnsMetadata::default();
        record(&q, &r, &m);
        let names = |ip: &str| m.names(ip.parse().unwrap()).into_iter().collect::<Vec<_>>();
        assert_eq!(
            names("203.0.113.10"),
            ["cdn.example.net", "registry.npmjs.org"]
        );
        assert_eq!(
            names("203.0.113.11"),
            ["cdn.example.net", "registry.npmjs.org"]
        );
        assert!(names("203.0.113.12").is_empty());
        assert!(names("127.0.0.1").is_empty());
    }

    #[tokio::test]
    async fn synthesized_answers_and_nxdomain() {
        let table = Arc::new(HashMap::from([(
            "api.test".to_string(),
            vec!["203.0.113.5".parse().unwrap()],
        )]));
        let up = DnsUpstream::Synthesized(table);
        let egress = HostEgress::new(Arc::new(crate::RoutedConnector::new()), Default::default());
        let m = DnsMetadata::default();
        let a = answer(
            &query("API.test.").to_vec().unwrap(),
            &up,
            &egress,
            &m,
            false,
        )
        .await
        .unwrap();
        let a = Message::from_vec(&a).unwrap();
        assert_eq!(a.id(), 7);
        assert_eq!(a.answers().len(), 1);
        assert_eq!(m.names("203.0.113.5".parse().unwrap()).len(), 1);
        let nx = answer(
            &query("other.test.").to_vec().unwrap(),
            &up,
            &egress,
            &m,
            false,
        )
        .await
        .unwrap();
        assert_eq!(
            Message::from_vec(&nx).unwrap().response_code(),
            ResponseCode::NXDomain
        );
        // Garbage gets FORMERR (or nothing), never a panic.
        let bad = answer(&[0x12, 0x34, 0xff], &up, &egress, &m, false)
            .await
            .unwrap();
        let bad = Message::from_vec(&bad).unwrap();
        assert_eq!(
            (bad.id(), bad.response_code()),
            (0x1234, ResponseCode::FormErr)
        );
        assert!(answer(&[1], &up, &egress, &m, false).await.is_none());
    }
}
