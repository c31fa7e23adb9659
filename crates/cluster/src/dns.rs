//! The cluster's DNS server: authoritative for `cluster.local.` and nothing else.
//!
//! Pods resolve service names the Kubernetes way: their `/etc/resolv.conf` ([`resolv_conf`])
//! points at this server and carries the `<ns>.svc.cluster.local` search list, so `ratings`,
//! `ratings.default` and `ratings.default.svc.cluster.local` all find the same A record.
//! Names outside the zone are REFUSED: pods have no egress, so there is nothing to forward to.
//! Answers follow RFC 1034/2308 as hickory's catalog implements them: an existing name asked for
//! another type (glibc asks A and AAAA in parallel) is NOERROR with no answer, an unknown name
//! is NXDOMAIN, and both carry the zone's SOA so resolvers cache the negative answer for [`TTL`].

use std::{
    collections::BTreeMap,
    io,
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket},
    sync::Arc,
    time::Duration,
};

use hickory_server::{
    proto::rr::{
        rdata::{A, NS, SOA},
        LowerName, Name, RData, Record, RecordSet, RrKey,
    },
    store::in_memory::InMemoryZoneHandler,
    zone_handler::{AxfrPolicy, Catalog, ZoneHandler, ZoneType},
    Server,
};
use tokio::sync::Mutex;
use tracing::{debug, info, warn};

/// The zone this server is authoritative for.
pub const ZONE: &str = "cluster.local";
/// TTL of every record and of negative answers, in seconds (CoreDNS' `kubernetes` plugin
/// default): short, so a changed Service address is picked up quickly.
pub const TTL: u32 = 5;
/// The zone's name server (also the SOA MNAME), as CoreDNS names it.
const NS_NAME: &str = "ns.dns.cluster.local";
/// The SOA RNAME (mailbox of the zone's admin), as CoreDNS names it.
const HOSTMASTER: &str = "hostmaster.cluster.local";
/// A TCP client that sends no query for this long is disconnected, so idle connections
/// cannot pile up.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Responses queued per TCP connection before the connection stops reading.
const TCP_RESPONSE_QUEUE: usize = 32;
/// At most this many addresses per name: a DNS message over TCP is at most 64 KiB, and no
/// Service on a single host has anywhere near this many ready pods.
pub const MAX_ADDRS_PER_NAME: usize = 1024;
/// Longest name in presentation form without the final dot (RFC 1035 §2.3.4: 255 octets on
/// the wire).
const MAX_NAME_LEN: usize = 253;
/// Longest label (RFC 1035 §2.3.4).
const MAX_LABEL_LEN: usize = 63;

/// Errors of the cluster DNS server.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// [`Dns::start`] was called outside a tokio runtime.
    #[error(
        "cluster DNS: Dns::start was called outside a tokio runtime; call it from a task of \
         the runtime that should serve DNS"
    )]
    NoRuntime,
    /// A socket handed to [`Dns::start`] cannot be used.
    #[error(
        "cluster DNS: cannot serve on the {proto} socket {addr}: {source}; pass a socket \
         bound inside the cluster's network namespace (e.g. 10.96.0.10:53)"
    )]
    Socket {
        /// `UDP` or `TCP`.
        proto: &'static str,
        /// The socket's local address, or `?` when even that is unknown.
        addr: String,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// A name handed to [`Dns::replace`] cannot be served.
    #[error("cluster DNS: cannot serve the name {name:?}: {problem}")]
    BadName {
        /// The name as given.
        name: String,
        /// What is wrong with it and how to fix it.
        problem: String,
    },
}

/// A running DNS server for `cluster.local.`; see the module docs for what it answers.
///
/// Dropping it stops the server too (its tasks are aborted); [`Dns::shutdown`] stops it and
/// waits until the sockets are closed.
pub struct Dns {
    zone: Arc<InMemoryZoneHandler>,
    /// Current SOA serial; the lock also serialises [`Dns::replace`] so zones are installed
    /// in serial order.
    serial: Mutex<u32>,
    /// Address of `ns.dns.cluster.local`, when the UDP socket has a concrete IPv4 address.
    nameserver: Option<Ipv4Addr>,
    server: Server<Catalog>,
}

impl std::fmt::Debug for Dns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dns")
            .field("zone", &ZONE)
            .field("nameserver", &self.nameserver)
            .finish_non_exhaustive()
    }
}

impl Dns {
    /// Serves `cluster.local.` on already-bound sockets (the caller binds them inside the
    /// cluster's network namespace). The zone starts empty (only its SOA and NS) until the
    /// first [`Dns::replace`]. Must be called inside a tokio runtime with I/O enabled.
    pub fn start(udp: UdpSocket, tcp: TcpListener) -> Result<Dns, DnsError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(DnsError::NoRuntime);
        }
        let udp_addr = udp.local_addr().map_err(|e| socket_error("UDP", None, e))?;
        let tcp_addr = tcp.local_addr().map_err(|e| socket_error("TCP", None, e))?;
        // tokio requires non-blocking sockets; a blocking one would stall a worker thread.
        udp.set_nonblocking(true)
            .map_err(|e| socket_error("UDP", Some(udp_addr), e))?;
        tcp.set_nonblocking(true)
            .map_err(|e| socket_error("TCP", Some(tcp_addr), e))?;
        let udp = tokio::net::UdpSocket::from_std(udp)
            .map_err(|e| socket_error("UDP", Some(udp_addr), e))?;
        let tcp = tokio::net::TcpListener::from_std(tcp)
            .map_err(|e| socket_error("TCP", Some(tcp_addr), e))?;

        let nameserver = match udp_addr.ip() {
            IpAddr::V4(ip) if !ip.is_unspecified() => Some(ip),
            _ => None,
        };
        let origin = fqdn(ZONE)?;
        let serial = 1;
        let mut zone =
            InMemoryZoneHandler::empty(origin.clone(), ZoneType::Primary, AxfrPolicy::Deny);
        *zone.records_get_mut() = zone_records(&[], serial, nameserver)?;
        let zone = Arc::new(zone);

        let mut catalog = Catalog::new();
        let handler: Arc<dyn ZoneHandler> = zone.clone();
        catalog.upsert(LowerName::new(&origin), vec![handler]);
        let mut server = Server::new(catalog);
        server.register_socket(udp);
        server.register_listener(tcp, TCP_IDLE_TIMEOUT, TCP_RESPONSE_QUEUE);
        info!(udp = %udp_addr, tcp = %tcp_addr, zone = ZONE, "cluster DNS serving");

        Ok(Dns {
            zone,
            serial: Mutex::new(serial),
            nameserver,
            server,
        })
    }

    /// From now on serves exactly these names (FQDNs under `cluster.local`, with or without
    /// the final dot, any case) with these IPv4 addresses, plus the zone's own SOA, NS and
    /// `ns.dns.cluster.local`. A name with no address is not served (NXDOMAIN, like a headless
    /// Service without ready pods). Atomic: a query sees the old zone or the new one, never a
    /// mix; bumps the SOA serial. On error nothing changes.
    pub async fn replace(&self, names: &BTreeMap<String, Vec<Ipv4Addr>>) -> Result<(), DnsError> {
        let parsed = names
            .iter()
            .map(|(name, addrs)| {
                let parsed = service_name(name)?;
                if addrs.len() > MAX_ADDRS_PER_NAME {
                    return Err(DnsError::BadName {
                        name: name.clone(),
                        problem: format!(
                            "it has {} addresses, at most {MAX_ADDRS_PER_NAME} fit in one \
                             answer; serve fewer addresses under this name",
                            addrs.len()
                        ),
                    });
                }
                Ok((parsed, addrs.as_slice()))
            })
            .collect::<Result<Vec<_>, _>>()?;

        let mut serial = self.serial.lock().await;
        let next = serial.wrapping_add(1);
        let records = zone_records(&parsed, next, self.nameserver)?;
        // One write guard over the whole map: a query holds the read guard for its lookup,
        // so it sees either the old map or the new one.
        *self.zone.records_mut().await = records;
        *serial = next;
        debug!(
            serial = next,
            names = parsed.len(),
            "cluster DNS zone replaced"
        );
        Ok(())
    }

    /// Stops serving and waits until both sockets are closed; open TCP connections are cut.
    pub async fn shutdown(mut self) {
        if let Err(error) = self.server.shutdown_gracefully().await {
            warn!(%error, "cluster DNS stopped with an error");
        }
        info!("cluster DNS stopped");
    }
}

/// The `/etc/resolv.conf` of a pod in `namespace`, in the form Kubernetes gives a pod with
/// `dnsPolicy: ClusterFirst`. `namespace` must be a valid namespace name (an RFC 1123 label).
pub fn resolv_conf(namespace: &str, nameserver: Ipv4Addr) -> String {
    format!(
        "search {namespace}.svc.{ZONE} svc.{ZONE} {ZONE}\nnameserver {nameserver}\noptions ndots:5\n"
    )
}

/// The `/etc/hosts` of a pod, as the kubelet writes it: localhost lines, then the pod's own
/// address and name. `pod_name` must be a valid pod name (an RFC 1123 subdomain).
pub fn hosts_file(pod_ip: Ipv4Addr, pod_name: &str) -> String {
    format!(
        "# Kubernetes-managed hosts file.\n\
         127.0.0.1\tlocalhost\n\
         ::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\n\
         fe00::0\tip6-mcastprefix\n\
         fe00::1\tip6-allnodes\n\
         fe00::2\tip6-allrouters\n\
         {pod_ip}\t{pod_name}\n"
    )
}

fn socket_error(proto: &'static str, addr: Option<SocketAddr>, source: io::Error) -> DnsError {
    DnsError::Socket {
        proto,
        addr: addr.map_or_else(|| "?".to_owned(), |a| a.to_string()),
        source,
    }
}

/// Parses a trusted, well-formed name (a constant or an already validated name).
fn fqdn(name: &str) -> Result<Name, DnsError> {
    Name::from_ascii(format!("{name}.")).map_err(|e| DnsError::BadName {
        name: name.to_owned(),
        problem: format!("{e}; use a name such as ratings.default.svc.{ZONE}"),
    })
}

/// Validates a name to serve: ASCII letters, digits and inner hyphens, labels of 1 to 63
/// characters, at most 253 characters, strictly below `cluster.local`. Returns it lowercased.
fn service_name(given: &str) -> Result<Name, DnsError> {
    let bad = |problem: String| DnsError::BadName {
        name: given.to_owned(),
        problem,
    };
    let name = given.strip_suffix('.').unwrap_or(given);
    if !name.is_ascii() {
        return Err(bad(
            "it is not ASCII; write internationalised labels in their xn-- (punycode) form"
                .to_owned(),
        ));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(bad(format!(
            "it is {} characters long, the limit is {MAX_NAME_LEN}; use shorter names",
            name.len()
        )));
    }
    let name = name.to_ascii_lowercase();
    for label in name.split('.') {
        if label.is_empty() {
            return Err(bad(
                "it has an empty label (a leading dot or two dots in a row); remove the \
                 extra dot"
                    .to_owned(),
            ));
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(bad(format!(
                "its label {label:?} is {} characters long, the limit is {MAX_LABEL_LEN}; \
                 shorten it",
                label.len()
            )));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            || label.starts_with('-')
            || label.ends_with('-')
        {
            return Err(bad(format!(
                "its label {label:?} is not an RFC 1123 label; use only letters, digits and \
                 '-', starting and ending with a letter or digit"
            )));
        }
    }
    if !name.ends_with(&format!(".{ZONE}")) {
        return Err(bad(format!(
            "it is not under {ZONE}; use a fully qualified name such as \
             ratings.default.svc.{ZONE}"
        )));
    }
    Name::from_ascii(format!("{name}.")).map_err(|e| bad(format!("{e}; fix the name")))
}

/// The whole zone: SOA and NS at the apex, `ns.dns.cluster.local` when its address is known,
/// and one A record set per name.
fn zone_records(
    names: &[(Name, &[Ipv4Addr])],
    serial: u32,
    nameserver: Option<Ipv4Addr>,
) -> Result<BTreeMap<RrKey, Arc<RecordSet>>, DnsError> {
    let origin = fqdn(ZONE)?;
    let ns_name = fqdn(NS_NAME)?;
    // Refresh/retry/expire are CoreDNS' values; they only matter to secondaries, of which
    // there are none. The minimum (negative-caching TTL, RFC 2308) is the record TTL.
    let soa = SOA::new(
        ns_name.clone(),
        fqdn(HOSTMASTER)?,
        serial,
        7200,
        1800,
        86400,
        TTL,
    );

    let mut sets: BTreeMap<RrKey, RecordSet> = BTreeMap::new();
    let mut put = |name: &Name, rdata: RData| {
        let record_type = rdata.record_type();
        sets.entry(RrKey::new(LowerName::new(name), record_type))
            .or_insert_with(|| RecordSet::new(name.clone(), record_type, serial))
            // The set was made for exactly this name and type, so the insert cannot fail
            // its name/type check; a duplicate address is simply not added twice.
            .insert(Record::from_rdata(name.clone(), TTL, rdata), serial);
    };
    put(&origin, RData::SOA(soa));
    put(&origin, RData::NS(NS(ns_name.clone())));
    if let Some(ip) = nameserver {
        put(&ns_name, RData::A(A(ip)));
    }
    for (name, addrs) in names {
        for addr in *addrs {
            put(name, RData::A(A(*addr)));
        }
    }
    Ok(sets.into_iter().map(|(k, v)| (k, Arc::new(v))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_server::proto::{
        op::{Message, Query, ResponseCode},
        rr::RecordType,
    };
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        time::timeout,
    };

    const WAIT: Duration = Duration::from_secs(3);

    struct Fixture {
        dns: Dns,
        udp: SocketAddr,
        tcp: SocketAddr,
    }

    fn start() -> Fixture {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let (udp_addr, tcp_addr) = (udp.local_addr().unwrap(), tcp.local_addr().unwrap());
        let dns = Dns::start(udp, tcp).unwrap();
        Fixture {
            dns,
            udp: udp_addr,
            tcp: tcp_addr,
        }
    }

    fn names(entries: &[(&str, &[[u8; 4]])]) -> BTreeMap<String, Vec<Ipv4Addr>> {
        entries
            .iter()
            .map(|(n, ips)| (n.to_string(), ips.iter().map(|&ip| ip.into()).collect()))
            .collect()
    }

    fn query(name: &str, record_type: RecordType) -> Message {
        let mut message = Message::query();
        message.metadata.recursion_desired = true;
        message.add_query(Query::query(Name::from_ascii(name).unwrap(), record_type));
        message
    }

    async fn ask_udp(server: SocketAddr, name: &str, record_type: RecordType) -> Message {
        let q = query(name, record_type);
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        socket.send_to(&q.to_vec().unwrap(), server).await.unwrap();
        let mut buf = vec![0; 65535];
        let (n, from) = timeout(WAIT, socket.recv_from(&mut buf))
            .await
            .expect("UDP answer in time")
            .unwrap();
        assert_eq!(from, server);
        let response = Message::from_vec(&buf[..n]).unwrap();
        assert_eq!(response.metadata.id, q.metadata.id);
        response
    }

    async fn ask_tcp(server: SocketAddr, name: &str, record_type: RecordType) -> Message {
        let q = query(name, record_type);
        let mut stream = timeout(WAIT, tokio::net::TcpStream::connect(server))
            .await
            .expect("TCP connect in time")
            .unwrap();
        let bytes = q.to_vec().unwrap();
        let mut framed = u16::try_from(bytes.len()).unwrap().to_be_bytes().to_vec();
        framed.extend_from_slice(&bytes);
        stream.write_all(&framed).await.unwrap();
        let mut len = [0; 2];
        timeout(WAIT, stream.read_exact(&mut len))
            .await
            .expect("TCP length in time")
            .unwrap();
        let mut buf = vec![0; usize::from(u16::from_be_bytes(len))];
        timeout(WAIT, stream.read_exact(&mut buf))
            .await
            .expect("TCP answer in time")
            .unwrap();
        let response = Message::from_vec(&buf).unwrap();
        assert_eq!(response.metadata.id, q.metadata.id);
        response
    }

    /// Answer section as (name, ttl, address); panics on a non-A record.
    fn a_answers(m: &Message) -> Vec<(String, u32, Ipv4Addr)> {
        m.answers
            .iter()
            .map(|r| match &r.data {
                RData::A(A(ip)) => (r.name.to_ascii(), r.ttl, *ip),
                other => panic!("unexpected answer {other:?}"),
            })
            .collect()
    }

    /// The SOA serial and TTL of a response's authority section, which must hold exactly one SOA.
    fn authority_soa(m: &Message) -> (u32, u32) {
        assert_eq!(m.authorities.len(), 1, "{:?}", m.authorities);
        let r = &m.authorities[0];
        assert_eq!(r.name.to_ascii(), "cluster.local.");
        match &r.data {
            RData::SOA(soa) => {
                assert_eq!(soa.minimum, TTL);
                (soa.serial, r.ttl)
            }
            other => panic!("unexpected authority {other:?}"),
        }
    }

    fn bookinfo() -> BTreeMap<String, Vec<Ipv4Addr>> {
        names(&[
            ("ratings.default.svc.cluster.local", &[[10, 96, 0, 5]]),
            (
                "Reviews.Default.svc.cluster.local.",
                &[[10, 244, 0, 8], [10, 244, 0, 7], [10, 244, 0, 8]],
            ),
            ("empty.default.svc.cluster.local", &[]),
        ])
    }

    #[tokio::test]
    async fn udp_answers_follow_kubernetes_dns() {
        let f = start();
        f.dns.replace(&bookinfo()).await.unwrap();

        let m = ask_udp(f.udp, "ratings.default.svc.cluster.local.", RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.metadata.authoritative);
        assert_eq!(
            a_answers(&m),
            [(
                "ratings.default.svc.cluster.local.".to_owned(),
                5,
                Ipv4Addr::new(10, 96, 0, 5)
            )]
        );
        assert!(m.authorities.is_empty());

        // Names are case-insensitive; duplicate addresses are served once.
        let m = ask_udp(f.udp, "REVIEWS.default.svc.cluster.local.", RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        let mut got: Vec<Ipv4Addr> = a_answers(&m).into_iter().map(|(_, _, ip)| ip).collect();
        got.sort();
        assert_eq!(
            got,
            [Ipv4Addr::new(10, 244, 0, 7), Ipv4Addr::new(10, 244, 0, 8)]
        );

        // AAAA for an existing name: NOERROR, no answer, SOA for negative caching.
        let m = ask_udp(
            f.udp,
            "ratings.default.svc.cluster.local.",
            RecordType::AAAA,
        )
        .await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.answers.is_empty());
        assert_eq!(authority_soa(&m), (2, 5));

        // An empty non-terminal (a namespace) exists too: NODATA, not NXDOMAIN.
        let m = ask_udp(f.udp, "default.svc.cluster.local.", RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.answers.is_empty());

        // Unknown name in the zone, and a name given no address: NXDOMAIN with the SOA.
        for name in [
            "nope.default.svc.cluster.local.",
            "empty.default.svc.cluster.local.",
            // The first search-list try of a short name from another namespace.
            "ratings.other.svc.cluster.local.",
        ] {
            let m = ask_udp(f.udp, name, RecordType::A).await;
            assert_eq!(m.metadata.response_code, ResponseCode::NXDomain, "{name}");
            assert!(m.answers.is_empty(), "{name}");
            assert_eq!(authority_soa(&m), (2, 5), "{name}");
        }

        // Outside the zone: REFUSED, nothing else.
        for name in ["example.com.", "local.", "."] {
            let m = ask_udp(f.udp, name, RecordType::A).await;
            assert_eq!(m.metadata.response_code, ResponseCode::Refused, "{name}");
            assert!(m.answers.is_empty() && m.authorities.is_empty(), "{name}");
        }

        // The apex: SOA answer, NS in authority, and the name server has an address.
        let m = ask_udp(f.udp, "cluster.local.", RecordType::SOA).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        match &m.answers[..] {
            [r] => match &r.data {
                RData::SOA(soa) => {
                    assert_eq!(soa.serial, 2);
                    assert_eq!(soa.mname.to_ascii(), "ns.dns.cluster.local.");
                    assert_eq!(soa.rname.to_ascii(), "hostmaster.cluster.local.");
                }
                other => panic!("unexpected {other:?}"),
            },
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(m.authorities.len(), 1);
        let m = ask_udp(f.udp, "ns.dns.cluster.local.", RecordType::A).await;
        assert_eq!(
            a_answers(&m),
            [("ns.dns.cluster.local.".to_owned(), 5, Ipv4Addr::LOCALHOST)]
        );

        f.dns.shutdown().await;
    }

    #[tokio::test]
    async fn tcp_answers_and_replace_swaps_the_zone() {
        let f = start();
        // Before the first replace the zone is empty but valid.
        let m = ask_tcp(f.tcp, "ratings.default.svc.cluster.local.", RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(authority_soa(&m), (1, 5));

        f.dns.replace(&bookinfo()).await.unwrap();
        let m = ask_tcp(f.tcp, "ratings.default.svc.cluster.local.", RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert_eq!(
            a_answers(&m),
            [(
                "ratings.default.svc.cluster.local.".to_owned(),
                5,
                Ipv4Addr::new(10, 96, 0, 5)
            )]
        );
        let m = ask_tcp(
            f.tcp,
            "ratings.default.svc.cluster.local.",
            RecordType::AAAA,
        )
        .await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.answers.is_empty());
        let m = ask_tcp(f.tcp, "example.com.", RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::Refused);
        // Zone transfers are refused.
        let m = ask_tcp(f.tcp, "cluster.local.", RecordType::AXFR).await;
        assert_eq!(m.metadata.response_code, ResponseCode::Refused);
        assert!(m.answers.is_empty());

        // New address, one name gone, one name new: exactly the new set is served.
        f.dns
            .replace(&names(&[
                ("ratings.default.svc.cluster.local", &[[10, 96, 0, 6]]),
                ("details.default.svc.cluster.local", &[[10, 96, 0, 7]]),
            ]))
            .await
            .unwrap();
        let m = ask_tcp(f.tcp, "ratings.default.svc.cluster.local.", RecordType::A).await;
        assert_eq!(
            a_answers(&m),
            [(
                "ratings.default.svc.cluster.local.".to_owned(),
                5,
                Ipv4Addr::new(10, 96, 0, 6)
            )]
        );
        let m = ask_udp(f.udp, "details.default.svc.cluster.local.", RecordType::A).await;
        assert_eq!(
            a_answers(&m),
            [(
                "details.default.svc.cluster.local.".to_owned(),
                5,
                Ipv4Addr::new(10, 96, 0, 7)
            )]
        );
        let m = ask_udp(f.udp, "reviews.default.svc.cluster.local.", RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(authority_soa(&m), (3, 5));

        // Replacing with nothing leaves only the apex.
        f.dns.replace(&BTreeMap::new()).await.unwrap();
        let m = ask_tcp(f.tcp, "ratings.default.svc.cluster.local.", RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(authority_soa(&m), (4, 5));

        f.dns.shutdown().await;
    }

    #[tokio::test]
    async fn large_answers_truncate_over_udp_and_fit_over_tcp() {
        let f = start();
        let addrs: Vec<Ipv4Addr> = (1..=40).map(|i| Ipv4Addr::new(10, 244, 1, i)).collect();
        let mut zone = BTreeMap::new();
        zone.insert("big.default.svc.cluster.local".to_owned(), addrs.clone());
        f.dns.replace(&zone).await.unwrap();

        // Without EDNS a UDP answer is at most 512 bytes: truncated, the client retries on TCP.
        let m = ask_udp(f.udp, "big.default.svc.cluster.local.", RecordType::A).await;
        assert!(m.metadata.truncation);
        assert!(m.answers.len() < 40);
        let m = ask_tcp(f.tcp, "big.default.svc.cluster.local.", RecordType::A).await;
        assert!(!m.metadata.truncation);
        let mut got: Vec<Ipv4Addr> = a_answers(&m).into_iter().map(|(_, _, ip)| ip).collect();
        got.sort();
        assert_eq!(got, addrs);

        f.dns.shutdown().await;
    }

    #[tokio::test]
    async fn bad_names_are_rejected_and_change_nothing() {
        let f = start();
        f.dns.replace(&bookinfo()).await.unwrap();
        let long_label = format!("{}.default.svc.cluster.local", "a".repeat(64));
        let long_name = format!("{}.svc.cluster.local", ["abcdefghij"; 22].join("."));
        let cases: [(&str, &str); 10] = [
            ("ratings.default.svc.example.com", "not under cluster.local"),
            ("cluster.local", "not under cluster.local"),
            ("xcluster.local", "not under cluster.local"),
            ("rätings.default.svc.cluster.local", "not ASCII"),
            (&long_label, "limit is 63"),
            (&long_name, "limit is 253"),
            ("ratings..svc.cluster.local", "empty label"),
            ("", "empty label"),
            (
                "rat ings.default.svc.cluster.local",
                "not an RFC 1123 label",
            ),
            (
                "-ratings.default.svc.cluster.local",
                "not an RFC 1123 label",
            ),
        ];
        for (name, problem) in cases {
            let mut zone = names(&[("details.default.svc.cluster.local", &[[10, 96, 0, 9]])]);
            zone.insert(name.to_owned(), vec![Ipv4Addr::new(10, 96, 0, 1)]);
            let err = f.dns.replace(&zone).await.unwrap_err().to_string();
            assert!(err.contains(&format!("{name:?}")), "{err}");
            assert!(err.contains(problem), "{name}: {err}");
        }
        let too_many = vec![Ipv4Addr::new(10, 244, 0, 1); MAX_ADDRS_PER_NAME + 1];
        let mut zone = BTreeMap::new();
        zone.insert("big.default.svc.cluster.local".to_owned(), too_many);
        let err = f.dns.replace(&zone).await.unwrap_err().to_string();
        assert_eq!(
            err,
            "cluster DNS: cannot serve the name \"big.default.svc.cluster.local\": it has 1025 \
             addresses, at most 1024 fit in one answer; serve fewer addresses under this name"
        );

        // The zone and its serial are as the last good replace left them.
        let m = ask_udp(f.udp, "details.default.svc.cluster.local.", RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(authority_soa(&m), (2, 5));
        let m = ask_udp(f.udp, "ratings.default.svc.cluster.local.", RecordType::A).await;
        assert_eq!(a_answers(&m).len(), 1);

        f.dns.shutdown().await;
    }

    #[test]
    fn name_error_names_the_name_and_the_fix() {
        let err = service_name("ratings.default").unwrap_err().to_string();
        assert_eq!(
            err,
            "cluster DNS: cannot serve the name \"ratings.default\": it is not under \
             cluster.local; use a fully qualified name such as \
             ratings.default.svc.cluster.local"
        );
        assert_eq!(
            service_name("Ratings.Default.SVC.cluster.local.")
                .unwrap()
                .to_ascii(),
            "ratings.default.svc.cluster.local."
        );
    }

    #[tokio::test]
    async fn shutdown_closes_the_sockets() {
        let f = start();
        let m = ask_udp(f.udp, "cluster.local.", RecordType::SOA).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        timeout(WAIT, f.dns.shutdown())
            .await
            .expect("shutdown in time");
        let refused = timeout(WAIT, tokio::net::TcpStream::connect(f.tcp))
            .await
            .expect("connect attempt in time");
        assert_eq!(
            refused.unwrap_err().kind(),
            io::ErrorKind::ConnectionRefused
        );
        // The UDP port is free again.
        UdpSocket::bind(f.udp).unwrap();
    }

    #[test]
    fn start_outside_a_runtime_is_an_error() {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let err = Dns::start(udp, tcp).unwrap_err();
        assert!(matches!(err, DnsError::NoRuntime), "{err}");
    }

    #[test]
    fn dns_can_be_shared_between_tasks() {
        fn shareable<T: Send + Sync + 'static>() {}
        shareable::<Dns>();
    }

    #[test]
    fn resolv_conf_is_kubernetes_cluster_first() {
        assert_eq!(
            resolv_conf("default", Ipv4Addr::new(10, 96, 0, 10)),
            "search default.svc.cluster.local svc.cluster.local cluster.local\n\
             nameserver 10.96.0.10\n\
             options ndots:5\n"
        );
    }

    #[test]
    fn hosts_file_is_the_kubelet_one() {
        assert_eq!(
            hosts_file(Ipv4Addr::new(10, 244, 0, 7), "ratings-v1-6c9d7f8b5-x2k4q"),
            "# Kubernetes-managed hosts file.\n\
             127.0.0.1\tlocalhost\n\
             ::1\tlocalhost ip6-localhost ip6-loopback\n\
             fe00::0\tip6-localnet\n\
             fe00::0\tip6-mcastprefix\n\
             fe00::1\tip6-allnodes\n\
             fe00::2\tip6-allrouters\n\
             10.244.0.7\tratings-v1-6c9d7f8b5-x2k4q\n"
        );
    }
}
