//! Gateway mode behind iptables capture, in a network namespace the test creates: the
//! server is picked by the original destination port on the inbound capture listener, so
//! a server added by a live update is served without a new listener. Needs root.

use std::fs::File;
use std::process::{Command, Stdio};

use nix::sched::{setns, CloneFlags};
use proxy::config::GatewayHttpRoute;
use proxy::config::{GatewayConfig, GatewayProtocol, GatewayServer, InboundMode, PathMatch};
use tokio::io::AsyncReadExt;

use crate::*;

/// A network namespace with `lo` up, deleted on drop.
struct Netns(String);

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "`{program} {}` failed: {}; this test needs root, iproute2 and iptables",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

impl Netns {
    fn new() -> Self {
        let name = format!("weir-gwcap{}", std::process::id());
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        run("ip", &["netns", "add", &name]);
        let ns = Self(name);
        run("ip", &["-n", &ns.0, "link", "set", "lo", "up"]);
        ns
    }

    /// Redirects connections to `port` made inside the namespace to 15006, as a gateway
    /// pod's capture does for its inbound traffic.
    fn redirect(&self, port: u16) {
        let port = port.to_string();
        run(
            "ip",
            &[
                "netns",
                "exec",
                &self.0,
                "iptables",
                "-t",
                "nat",
                "-A",
                "OUTPUT",
                "-p",
                "tcp",
                "--dport",
                &port,
                "-j",
                "REDIRECT",
                "--to-ports",
                "15006",
            ],
        );
    }

    /// Runs `f` on a thread inside the namespace, with its own runtime.
    fn block_on<F: std::future::Future<Output = ()> + Send + 'static>(&self, f: F) {
        let path = format!("/run/netns/{}", self.0);
        let thread = std::thread::spawn(move || {
            let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            setns(&file, CloneFlags::CLONE_NEWNET).unwrap_or_else(|e| panic!("setns: {e}"));
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap()
                .block_on(f);
        });
        if let Err(panic) = thread.join() {
            std::panic::resume_unwind(panic);
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.0])
            .stderr(Stdio::null())
            .status();
    }
}

async fn request(addr: SocketAddr, text: &str) -> String {
    with_deadline(Duration::from_secs(10), async {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(text.as_bytes()).await.unwrap();
        s.shutdown().await.unwrap();
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got).await;
        String::from_utf8_lossy(&got).into_owned()
    })
    .await
}

#[test]
fn captured_traffic_is_routed_by_original_port_and_new_ports_arrive_live() {
    let ns = Netns::new();
    ns.redirect(8080);
    ns.redirect(31400);
    ns.block_on(async {
        let up = Upstreams::start(&["productpage", "tcp-echo-v1"]).await;
        let mut cfg = node_config(
            "istio-ingressgateway",
            "istio-ingressgateway",
            "latest",
            "istio-ingressgateway-service-account",
        );
        cfg.inbound.listen = Some("0.0.0.0:15006".parse().unwrap());
        cfg.inbound.mode = InboundMode::Disable;
        cfg.gateway = Some(GatewayConfig {
            servers: vec![GatewayServer {
                port: 8080,
                protocol: GatewayProtocol::Http,
                listen: None,
                tcp: Vec::new(),
                http: vec![GatewayHttpRoute {
                    hosts: Vec::new(),
                    matches: vec![PathMatch::Exact("/productpage".into())],
                    routes: vec![route(100, "productpage", up.endpoints(&["productpage"]))],
                }],
            }],
        });
        let p = Proxy::start(cfg.clone(), ProxyOptions::default())
            .await
            .unwrap();
        assert!(p.addrs().gateway_servers.is_empty());
        let http: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let get = "GET /productpage?u=normal HTTP/1.1\r\nhost: x\r\n\r\n";
        assert_eq!(request(http, get).await, format!("productpage\n{get}"));
        assert_eq!(
            request(http, "GET /nope HTTP/1.1\r\n\r\n").await,
            "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        );

        // A TCP server on a new port, by update only.
        let mut next = cfg;
        next.gateway.as_mut().unwrap().servers.push(GatewayServer {
            port: 31400,
            protocol: GatewayProtocol::Tcp,
            listen: None,
            tcp: vec![route(100, "tcp-echo", up.endpoints(&["tcp-echo-v1"]))],
            http: Vec::new(),
        });
        p.update(next).unwrap();
        let tcp: SocketAddr = "127.0.0.1:31400".parse().unwrap();
        assert_eq!(request(tcp, "hello").await, "tcp-echo-v1\nhello");

        let samples = eventually(&p, |s| total(s, CLOSED, &[]) == 3.0).await;
        for (service, flags) in [
            ("productpage.default.svc.cluster.local", "-"),
            ("tcp-echo.default.svc.cluster.local", "-"),
            ("BlackHoleCluster", "NC"),
        ] {
            assert_eq!(
                total(
                    &samples,
                    CLOSED,
                    &[
                        ("reporter", "source"),
                        ("source_workload", "istio-ingressgateway"),
                        ("destination_service", service),
                        ("response_flags", flags),
                    ]
                ),
                1.0,
                "{service}"
            );
        }
        p.shutdown().await;
    });
}
