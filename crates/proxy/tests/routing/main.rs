//! Routing and live updates over loopback: weighted routes, subsets, load balancers,
//! pool limits, unresolved routes, configuration swaps, telemetry overrides and gateway
//! mode. Every
//! upstream answers with its name first, so each connection says where it went.

#[path = "../sidecar/support.rs"]
#[allow(dead_code)]
mod support;

mod balancing;
mod gateway;
mod gateway_capture;
mod updates;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use proxy::config::{Endpoint, LoadBalancer, ProxyConfig, Route, ServiceRef};
use proxy::{Proxy, ProxyHandle, ProxyOptions};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use support::*;

/// An upstream that writes `name\n` on accept, then echoes until the client closes.
pub async fn named_upstream(name: &'static str) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind(loopback0()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = s.into_split();
                if w.write_all(format!("{name}\n").as_bytes()).await.is_err() {
                    return;
                }
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    (addr, task)
}

/// Several named upstreams; aborted on drop.
pub struct Upstreams {
    pub addrs: BTreeMap<&'static str, SocketAddr>,
    tasks: Vec<JoinHandle<()>>,
}

impl Upstreams {
    pub async fn start(names: &[&'static str]) -> Self {
        let mut addrs = BTreeMap::new();
        let mut tasks = Vec::new();
        for n in names {
            let (a, t) = named_upstream(n).await;
            addrs.insert(*n, a);
            tasks.push(t);
        }
        Self { addrs, tasks }
    }

    pub fn endpoints(&self, names: &[&str]) -> Vec<Endpoint> {
        names
            .iter()
            .map(|n| plain_endpoint(self.addrs[n]))
            .collect()
    }
}

impl Drop for Upstreams {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// A connection through the proxy that has read the upstream's name.
pub struct Held {
    pub name: String,
    pub stream: BufReader<TcpStream>,
}

/// Connects through `addr` and reads the upstream's name; `None` when the proxy
/// closes without one (a refused connection).
pub async fn open(addr: SocketAddr) -> Option<Held> {
    with_deadline(Duration::from_secs(10), async {
        let s = TcpStream::connect(addr).await.unwrap();
        let mut stream = BufReader::new(s);
        let mut name = String::new();
        match stream.read_line(&mut name).await {
            Ok(n) if n > 0 && name.ends_with('\n') => {
                name.pop();
                Some(Held { name, stream })
            }
            _ => None,
        }
    })
    .await
}

/// The upstream name of one short connection.
pub async fn who(addr: SocketAddr) -> String {
    match open(addr).await {
        Some(h) => h.name,
        None => panic!("connection through {addr} was refused"),
    }
}

/// How many of `n` sequential connections reached each upstream.
pub async fn tally(addr: SocketAddr, n: usize) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for _ in 0..n {
        *out.entry(who(addr).await).or_default() += 1;
    }
    out
}

pub fn svc(name: &str) -> ServiceRef {
    ServiceRef {
        name: name.to_owned(),
        namespace: "default".to_owned(),
        hostname: None,
    }
}

pub fn route(weight: u32, destination: &str, endpoints: Vec<Endpoint>) -> Route {
    Route {
        weight,
        destination: svc(destination),
        subset: None,
        load_balancer: None,
        endpoints,
        unresolved: None,
    }
}

/// A sidecar calling `reviews:9080` on an explicit listener through `routes`
/// (`endpoints` is the port's own list, used when `routes` is empty).
pub fn routed(routes: Vec<Route>, endpoints: Vec<Endpoint>, lb: LoadBalancer) -> ProxyConfig {
    let cfg = node_config(
        "productpage-v1",
        "productpage",
        "v1",
        "bookinfo-productpage",
    );
    let mut cfg = with_service(cfg, "reviews", 9080, endpoints);
    Arc::make_mut(&mut cfg.outbound.services[0]).load_balancer = lb;
    Arc::make_mut(&mut cfg.outbound.services[0]).ports[0].routes = routes;
    cfg
}

pub async fn start(cfg: ProxyConfig) -> (ProxyHandle, SocketAddr) {
    let p = Proxy::start(cfg, ProxyOptions::default()).await.unwrap();
    let addr = p
        .addrs()
        .outbound_service("reviews", "default", 9080)
        .unwrap();
    (p, addr)
}

/// Polls the proxy's metrics until `check` accepts them (10 s deadline).
pub async fn eventually<F: Fn(&[Sample]) -> bool>(p: &ProxyHandle, check: F) -> Vec<Sample> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let samples = parse_exposition(&p.metrics_text());
        if check(&samples) {
            return samples;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "metrics never matched:\n{}",
            p.metrics_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sum of `name` over series whose labels include all of `matching`.
pub fn total(samples: &[Sample], name: &str, matching: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            matching
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

pub const OPENED: &str = "istio_tcp_connections_opened_total";
pub const CLOSED: &str = "istio_tcp_connections_closed_total";
