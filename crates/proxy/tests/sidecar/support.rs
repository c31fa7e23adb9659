//! Test harness: a mesh CA writing Istio-layout certificates, sidecar configurations on
//! loopback, small apps, and a Prometheus text scraper.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use proxy::config::{
    Endpoint, EndpointTls, InboundMode, InboundPort, OutboundPort, OutboundService, ProxyConfig,
    ServiceRef, TlsConfig,
};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A mesh root that issues SPIFFE workload certificates.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    pub dir: tempfile::TempDir,
}

impl TestCa {
    pub fn new(org: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::OrganizationName, org);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Self {
            issuer,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn root_pem(&self) -> String {
        self.issuer.pem()
    }

    /// Writes `cert-chain.pem`, `key.pem`, `root-cert.pem` for `spiffe_id` into `dir`.
    pub fn write_workload(&self, dir: &Path, spiffe_id: &str) {
        self.write_workload_with_root(dir, spiffe_id, &self.root_pem());
    }

    pub fn write_workload_with_root(&self, dir: &Path, spiffe_id: &str, root_pem: &str) {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = vec![SanType::URI(spiffe_id.try_into().unwrap())];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        std::fs::create_dir_all(dir).unwrap();
        // Write to temporary names and rename, as a certificate agent does.
        for (name, content) in [
            ("cert-chain.pem", cert.pem()),
            ("key.pem", key.serialize_pem()),
            ("root-cert.pem", root_pem.to_owned()),
        ] {
            let tmp = dir.join(format!(".{name}.tmp"));
            std::fs::write(&tmp, content).unwrap();
            std::fs::rename(&tmp, dir.join(name)).unwrap();
        }
    }

    /// A fresh certificate directory for a workload.
    pub fn workload_dir(&self, name: &str, spiffe_id: &str) -> PathBuf {
        let dir = self.dir.path().join(name);
        self.write_workload(&dir, spiffe_id);
        dir
    }
}

pub fn spiffe(ns: &str, sa: &str) -> String {
    format!("spiffe://cluster.local/ns/{ns}/sa/{sa}")
}

pub fn loopback0() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// A sidecar for `workload` in `default` with app/version labels, endpoints on port 0.
pub fn node_config(workload: &str, app: &str, version: &str, sa: &str) -> ProxyConfig {
    let mut c = ProxyConfig::minimal("default", workload);
    c.node.pod_name = Some(format!("{workload}-pod"));
    c.node.service_account = sa.to_owned();
    c.node.labels = BTreeMap::from([
        ("app".to_owned(), app.to_owned()),
        ("version".to_owned(), version.to_owned()),
    ]);
    c.reporting.interval = Duration::from_millis(200);
    c.limits.drain_timeout = Duration::from_secs(2);
    c
}

pub fn with_tls(mut c: ProxyConfig, dir: &Path) -> ProxyConfig {
    c.tls = Some(TlsConfig {
        cert_dir: dir.to_owned(),
        poll_interval: Duration::from_millis(100),
    });
    c
}

/// Adds an explicit inbound listener for `port` forwarding to `app`, for `service`.
pub fn with_inbound(
    mut c: ProxyConfig,
    mode: InboundMode,
    port: u16,
    app: SocketAddr,
    service: &str,
) -> ProxyConfig {
    c.inbound.mode = mode;
    c.inbound.ports.push(InboundPort {
        port,
        target: Some(app),
        listen: Some(loopback0()),
        service: Some(ServiceRef {
            name: service.to_owned(),
            namespace: "default".to_owned(),
            hostname: None,
        }),
    });
    c
}

pub fn mtls_endpoint(address: SocketAddr, identity: &str) -> Endpoint {
    Endpoint {
        address,
        tls: EndpointTls::IstioMutual,
        identity: Some(identity.to_owned()),
    }
}

pub fn plain_endpoint(address: SocketAddr) -> Endpoint {
    Endpoint {
        address,
        tls: EndpointTls::Disable,
        identity: None,
    }
}

/// Adds a service with an explicit outbound listener for `port`.
pub fn with_service(
    mut c: ProxyConfig,
    name: &str,
    port: u16,
    endpoints: Vec<Endpoint>,
) -> ProxyConfig {
    c.outbound.services.push(Arc::new(OutboundService {
        name: name.to_owned(),
        namespace: "default".to_owned(),
        hostname: None,
        addresses: Vec::new(),
        load_balancer: Default::default(),
        ports: vec![OutboundPort {
            port,
            listen: Some(loopback0()),
            endpoints,
            routes: Vec::new(),
            max_connections: None,
            connect_timeout: None,
        }],
    }));
    c
}

/// An app that reads its request to the end, then answers with the SHA-256 of the
/// request followed by `response_len` pattern bytes.
pub async fn hash_app(response_len: usize) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind(loopback0()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut hasher = Sha256::new();
                let mut buf = vec![0; 64 * 1024];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) => break,
                        Ok(n) => hasher.update(&buf[..n]),
                        Err(_) => return,
                    }
                }
                let digest = hasher.finalize();
                if s.write_all(&digest).await.is_err() {
                    return;
                }
                let _ = s.write_all(&pattern(response_len)).await;
                let _ = s.shutdown().await;
            });
        }
    });
    (addr, task)
}

/// An app that echoes every byte back until the client closes.
pub async fn echo_app() -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind(loopback0()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = s.into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    (addr, task)
}

/// An app that greets first (like MySQL), then echoes.
pub async fn greeting_app(greeting: &'static [u8]) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind(loopback0()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = s.into_split();
                if w.write_all(greeting).await.is_err() {
                    return;
                }
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    (addr, task)
}

pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 131 % 251) as u8).collect()
}

/// Sends `request` through `addr`, half-closes, reads the whole answer of the hash app
/// and checks it byte for byte.
pub async fn hash_round_trip(addr: SocketAddr, request: &[u8], response_len: usize) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let (mut r, mut w) = s.split();
    let write = async {
        w.write_all(request).await.unwrap();
        w.shutdown().await.unwrap();
    };
    let read = async {
        let mut out = Vec::new();
        r.read_to_end(&mut out).await.unwrap();
        out
    };
    let (_, out) =
        with_deadline(Duration::from_secs(30), async { tokio::join!(write, read) }).await;
    assert_eq!(
        out.len(),
        32 + response_len,
        "whole response after half-close"
    );
    assert_eq!(
        &out[..32],
        Sha256::digest(request).as_slice(),
        "request intact"
    );
    assert!(out[32..] == pattern(response_len)[..], "response intact");
}

pub async fn with_deadline<F: Future>(d: Duration, f: F) -> F::Output {
    tokio::time::timeout(d, f)
        .await
        .expect("operation timed out")
}

/// One sample of a scraped exposition.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// GETs `path` from `addr` over HTTP/1.1; returns status and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http_request(addr, "GET", path).await
}

pub async fn http_request(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    with_deadline(Duration::from_secs(10), async {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.unwrap();
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
            dechunk(body)
        } else {
            body.to_owned()
        };
        (status, body)
    })
    .await
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Parses Prometheus text format samples (no escapes beyond `\"` and `\\`).
pub fn parse_exposition(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (name, rest) = match line.find('{') {
            Some(i) => (&line[..i], &line[i..]),
            None => {
                let (n, v) = line.split_once(' ').unwrap();
                out.push(Sample {
                    name: n.to_owned(),
                    labels: BTreeMap::new(),
                    value: v.trim().parse().unwrap(),
                });
                continue;
            }
        };
        let end = rest.rfind('}').unwrap();
        let labels = parse_labels(&rest[1..end]);
        let value = rest[end + 1..]
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        out.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    out
}

fn parse_labels(mut s: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    while let Some((key, rest)) = s.split_once("=\"") {
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let mut end = rest.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, e)) = chars.next() {
                        value.push(e);
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        labels.insert(key.trim_start_matches(',').trim().to_owned(), value);
        s = &rest[end..];
    }
    labels
}

/// Scrapes `/stats/prometheus`.
pub async fn scrape(stats: SocketAddr) -> Vec<Sample> {
    let (status, body) = http_get(stats, "/stats/prometheus").await;
    assert_eq!(status, 200);
    parse_exposition(&body)
}

/// The value of the single `name` sample whose labels include all of `matching`
/// (0 when absent); panics if several match.
pub fn value(samples: &[Sample], name: &str, matching: &[(&str, &str)]) -> f64 {
    let found: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            matching
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    assert!(
        found.len() <= 1,
        "several {name} series match {matching:?}: {found:#?}"
    );
    found.first().map(|s| s.value).unwrap_or(0.0)
}

/// All `name` samples.
pub fn series<'a>(samples: &'a [Sample], name: &str) -> Vec<&'a Sample> {
    samples.iter().filter(|s| s.name == name).collect()
}
