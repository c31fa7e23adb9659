//! Gateway mode on explicit loopback listeners: HTTP servers route by the first request's
//! path (404 otherwise), TCP servers split by weight, both counted as the gateway's
//! outbound (`reporter="source"`) connections; mTLS and metadata exchange to a sidecar.

use proxy::config::{
    GatewayConfig, GatewayHttpRoute, GatewayProtocol, GatewayServer, InboundMode, PathMatch,
};
use tokio::io::AsyncReadExt;

use crate::*;

const GATEWAY: &str = "istio-ingressgateway";

fn gateway_node() -> ProxyConfig {
    let mut cfg = node_config(
        GATEWAY,
        GATEWAY,
        "latest",
        "istio-ingressgateway-service-account",
    );
    cfg.node.namespace = "istio-system".into();
    cfg
}

fn server(port: u16, protocol: GatewayProtocol) -> GatewayServer {
    GatewayServer {
        port,
        protocol,
        listen: Some(loopback0()),
        tcp: Vec::new(),
        http: Vec::new(),
    }
}

/// bookinfo-gateway.yaml's route to `productpage`.
fn bookinfo_route(endpoints: Vec<Endpoint>) -> GatewayHttpRoute {
    GatewayHttpRoute {
        hosts: Vec::new(),
        matches: vec![
            PathMatch::Exact("/productpage".into()),
            PathMatch::Prefix("/static".into()),
            PathMatch::Exact("/login".into()),
            PathMatch::Exact("/logout".into()),
            PathMatch::Prefix("/api/v1/products".into()),
        ],
        routes: vec![route(100, "productpage", endpoints)],
    }
}

async fn start_gateway(gateway: GatewayConfig) -> ProxyHandle {
    let mut cfg = gateway_node();
    cfg.gateway = Some(gateway);
    Proxy::start(cfg, ProxyOptions::default()).await.unwrap()
}

/// Sends `request` and reads the answer until the proxy or upstream closes (10 s).
async fn exchange(addr: SocketAddr, request: &[u8], half_close: bool) -> Vec<u8> {
    with_deadline(Duration::from_secs(10), async {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request).await.unwrap();
        if half_close {
            s.shutdown().await.unwrap();
        }
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got).await;
        got
    })
    .await
}

const NOT_FOUND: &[u8] =
    b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_routes_by_path_and_answers_404_otherwise() {
    let up = Upstreams::start(&["productpage"]).await;
    let mut http = server(8080, GatewayProtocol::Http);
    http.http = vec![bookinfo_route(up.endpoints(&["productpage"]))];
    let p = start_gateway(GatewayConfig {
        servers: vec![http],
    })
    .await;
    let addr = p.addrs().gateway_servers[&8080];

    // The upstream names itself, then echoes: the request arrives whole, head and body.
    let mut routed = 0;
    let mut request_bytes = 0;
    for path in [
        "/productpage",
        "/productpage?u=normal",
        "/static/img/izzy.png",
        "/login",
        "/login?next=/productpage",
        "/logout",
        "/api/v1/products/0/ratings",
    ] {
        let request =
            format!("POST {path} HTTP/1.1\r\nhost: bookinfo\r\ncontent-length: 4\r\n\r\nbody");
        let got = exchange(addr, request.as_bytes(), true).await;
        assert_eq!(
            String::from_utf8_lossy(&got),
            format!("productpage\n{request}"),
            "{path}"
        );
        routed += 1;
        request_bytes += request.len();
    }
    for path in ["/nope", "/productpage/x", "/", "/Productpage", "/api/v1"] {
        let request = format!("GET {path} HTTP/1.1\r\nhost: bookinfo\r\n\r\n");
        let got = exchange(addr, request.as_bytes(), false).await;
        assert_eq!(got, NOT_FOUND, "{path}");
    }
    // An oversized head is refused with 400.
    let mut huge = b"GET /productpage HTTP/1.1\r\nx-big: ".to_vec();
    huge.resize(9000, b'a');
    let got = exchange(addr, &huge, false).await;
    assert!(got.starts_with(b"HTTP/1.1 400 Bad Request\r\n"), "{got:?}");

    let refused = 6.0;
    let samples = eventually(&p, |s| total(s, CLOSED, &[]) == routed as f64 + refused).await;
    let base = [
        ("reporter", "source"),
        ("source_workload", GATEWAY),
        ("source_workload_namespace", "istio-system"),
    ];
    let to_productpage: Vec<(&str, &str)> = base
        .iter()
        .copied()
        .chain([
            (
                "destination_service",
                "productpage.default.svc.cluster.local",
            ),
            ("response_flags", "-"),
        ])
        .collect();
    assert_eq!(total(&samples, OPENED, &to_productpage), routed as f64);
    assert_eq!(total(&samples, CLOSED, &to_productpage), routed as f64);
    let nc: Vec<(&str, &str)> = base
        .iter()
        .copied()
        .chain([
            ("destination_service", "BlackHoleCluster"),
            ("response_flags", "NC"),
        ])
        .collect();
    assert_eq!(total(&samples, CLOSED, &nc), refused);
    // Every byte of each request (head replayed, then body) went upstream; every byte of
    // the echo came back after the upstream's name.
    let to = [("destination_service_name", "productpage")];
    assert_eq!(
        total(&samples, "istio_tcp_received_bytes_total", &to),
        request_bytes as f64
    );
    assert_eq!(
        total(&samples, "istio_tcp_sent_bytes_total", &to),
        (request_bytes + routed * "productpage\n".len()) as f64
    );
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_splits_80_20_and_routes_change_live() {
    let up = Upstreams::start(&["v1", "v2"]).await;
    let mut v1 = route(100, "tcp-echo", up.endpoints(&["v1"]));
    v1.subset = Some("v1".into());
    let mut tcp = server(31400, GatewayProtocol::Tcp);
    tcp.tcp = vec![v1.clone()];
    let mut cfg = gateway_node();
    cfg.gateway = Some(GatewayConfig {
        servers: vec![tcp.clone()],
    });
    let p = Proxy::start(cfg.clone(), ProxyOptions::default())
        .await
        .unwrap();
    let addr = p.addrs().gateway_servers[&31400];
    assert_eq!(
        tally(addr, 20).await,
        BTreeMap::from([("v1".to_owned(), 20)])
    );

    // tcp-echo-20-v2.yaml: 80/20, swapped in without a restart.
    let mut v2 = route(20, "tcp-echo", up.endpoints(&["v2"]));
    v2.subset = Some("v2".into());
    v1.weight = 80;
    let mut shifted = cfg.clone();
    let servers = &mut shifted.gateway.as_mut().unwrap().servers;
    servers[0].tcp = vec![v1, v2];
    let summary = p.update(shifted).unwrap();
    assert_eq!(summary.changed, ["gateway"]);
    const N: usize = 400;
    let got = tally(addr, N).await;
    let n1 = got.get("v1").copied().unwrap_or(0);
    assert_eq!(n1 + got.get("v2").copied().unwrap_or(0), N, "{got:?}");
    // Binomial(400, 0.8): mean 320, sd sqrt(400 * 0.8 * 0.2) = 8; 4 sd = 32.
    assert!((288..=352).contains(&n1), "v1 got {n1} of {N}");

    let samples = eventually(&p, |s| total(s, CLOSED, &[]) == (N + 20) as f64).await;
    assert_eq!(
        total(
            &samples,
            OPENED,
            &[
                ("reporter", "source"),
                ("source_workload", GATEWAY),
                ("destination_service", "tcp-echo.default.svc.cluster.local"),
                ("response_flags", "-"),
            ]
        ),
        (N + 20) as f64
    );

    // A server without routes refuses with NC; moving its listener needs a restart.
    let mut empty = cfg.clone();
    empty.gateway.as_mut().unwrap().servers[0].tcp.clear();
    p.update(empty).unwrap();
    assert!(open(addr).await.is_none());
    eventually(&p, |s| total(s, CLOSED, &[("response_flags", "NC")]) == 1.0).await;
    let mut moved = cfg;
    moved.gateway.as_mut().unwrap().servers[0].listen = Some("127.0.0.1:1".parse().unwrap());
    let e = p.update(moved).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("field `gateway.servers[0].listen` changed from"),
        "{e}"
    );
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_reaches_a_sidecar_with_mtls_and_metadata_exchange() {
    let ca = TestCa::new("cluster.local");
    let (app, _app_task) = echo_app().await;
    let pp_sa = "bookinfo-productpage";
    let server_cfg = with_inbound(
        with_tls(
            node_config("productpage-v1", "productpage", "v1", pp_sa),
            &ca.workload_dir("productpage", &spiffe("default", pp_sa)),
        ),
        InboundMode::Strict,
        9080,
        app,
        "productpage",
    );
    let sidecar = Proxy::start(server_cfg, ProxyOptions::default())
        .await
        .unwrap();
    let inbound = sidecar.addrs().inbound_ports[&9080];

    let gw_sa = "istio-ingressgateway-service-account";
    let mut cfg = with_tls(
        gateway_node(),
        &ca.workload_dir("gateway", &spiffe("istio-system", gw_sa)),
    );
    let mut http = server(8080, GatewayProtocol::Http);
    http.http = vec![bookinfo_route(vec![mtls_endpoint(
        inbound,
        &spiffe("default", pp_sa),
    )])];
    cfg.gateway = Some(GatewayConfig {
        servers: vec![http],
    });
    let gw = Proxy::start(cfg, ProxyOptions::default()).await.unwrap();
    let addr = gw.addrs().gateway_servers[&8080];
    let request = b"GET /productpage HTTP/1.1\r\nhost: bookinfo\r\n\r\n";
    assert_eq!(exchange(addr, request, true).await, request);

    let samples = eventually(&gw, |s| total(s, CLOSED, &[]) == 1.0).await;
    assert_eq!(
        total(
            &samples,
            CLOSED,
            &[
                ("reporter", "source"),
                ("source_workload", GATEWAY),
                ("source_principal", &spiffe("istio-system", gw_sa)),
                ("destination_workload", "productpage-v1"),
                ("destination_principal", &spiffe("default", pp_sa)),
                ("destination_service_name", "productpage"),
            ]
        ),
        1.0
    );
    let samples = eventually(&sidecar, |s| total(s, CLOSED, &[]) == 1.0).await;
    assert_eq!(
        total(
            &samples,
            CLOSED,
            &[
                ("reporter", "destination"),
                ("source_workload", GATEWAY),
                ("source_workload_namespace", "istio-system"),
                ("connection_security_policy", "mutual_tls"),
            ]
        ),
        1.0
    );
    gw.shutdown().await;
    sidecar.shutdown().await;
}
