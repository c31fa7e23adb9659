//! The ingress gateway's configuration from Istio's own samples: `bookinfo-gateway.yaml`
//! (HTTP by path) and the `tcp-echo` shifting (TCP by port, 100 → 80/20), for a pod
//! labelled `istio: ingressgateway`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use config::{Kind, ResourceSet};
use control::mesh::{Mesh, Pod};
use proxy::config::{
    Endpoint, EndpointTls, GatewayConfig, GatewayHttpRoute, GatewayProtocol, GatewayServer,
    LoadBalancer, PathMatch, Route, ServiceRef,
};
use xds::{NodeInfo, ViewSource};

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/fixtures/istio")
        .join(rel)
}

fn set_of(files: &[&str]) -> ResourceSet {
    let mut set = ResourceSet::new();
    for f in files {
        for d in config::parse_path(&fixture(f)).unwrap() {
            set.upsert(d);
        }
    }
    set
}

fn add_yaml(set: &mut ResourceSet, yaml: &str) {
    for d in config::parse_str(yaml, "test.yaml").unwrap() {
        set.upsert(d);
    }
}

/// One pod per Deployment, `<deployment>-0`, IPs 10.1.0.1, .2, ... in Deployment order,
/// each with a sidecar.
fn pods_of(set: &ResourceSet) -> Vec<Pod> {
    set.iter_kind(Kind::Deployment)
        .enumerate()
        .map(|(i, d)| {
            let name = d.resource.name();
            let ip = IpAddr::V4(Ipv4Addr::new(10, 1, 0, u8::try_from(i + 1).unwrap()));
            Pod::of_deployment(d, &format!("{name}-0"), Some(ip), true).unwrap()
        })
        .collect()
}

fn pod_ip(pods: &[Pod], workload: &str) -> IpAddr {
    pods.iter()
        .find(|p| p.workload == workload)
        .and_then(|p| p.ip)
        .unwrap()
}

const GATEWAY_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 1, 9, 1));

fn ingress_pod() -> Pod {
    Pod {
        name: "istio-ingressgateway-0".into(),
        namespace: "istio-system".into(),
        ip: Some(GATEWAY_IP),
        labels: BTreeMap::from([
            ("istio".to_owned(), "ingressgateway".to_owned()),
            ("app".to_owned(), "istio-ingressgateway".to_owned()),
        ]),
        service_account: "istio-ingressgateway-service-account".into(),
        sidecar: true,
        workload: "istio-ingressgateway".into(),
    }
}

fn svc_ref(name: &str) -> ServiceRef {
    ServiceRef {
        name: name.into(),
        namespace: "default".into(),
        hostname: None,
    }
}

fn gateway_of(mesh: &Mesh, pod: &Pod) -> Option<GatewayConfig> {
    mesh.view_of(pod).workload.gateway.clone()
}

#[test]
fn bookinfo_gateway_routes_five_paths_to_productpage() {
    let set = set_of(&[
        "samples/bookinfo/platform/kube/bookinfo.yaml",
        "samples/bookinfo/networking/bookinfo-gateway.yaml",
    ]);
    let pods = pods_of(&set);
    let mesh = Mesh::default();
    mesh.set_resources(&set);
    mesh.upsert_pods(pods.clone());
    mesh.upsert_pod(ingress_pod());

    let expect = GatewayConfig {
        servers: vec![GatewayServer {
            port: 8080,
            protocol: GatewayProtocol::Http,
            listen: None,
            tcp: vec![],
            http: vec![GatewayHttpRoute {
                hosts: vec![],
                matches: vec![
                    PathMatch::Exact("/productpage".into()),
                    PathMatch::Prefix("/static".into()),
                    PathMatch::Exact("/login".into()),
                    PathMatch::Exact("/logout".into()),
                    PathMatch::Prefix("/api/v1/products".into()),
                ],
                routes: vec![Route {
                    weight: 100,
                    destination: svc_ref("productpage"),
                    subset: None,
                    load_balancer: Some(LoadBalancer::RoundRobin),
                    endpoints: vec![Endpoint {
                        address: SocketAddr::new(pod_ip(&pods, "productpage-v1"), 9080),
                        tls: EndpointTls::IstioMutual,
                        identity: Some(
                            "spiffe://cluster.local/ns/default/sa/bookinfo-productpage".into(),
                        ),
                    }],
                    unresolved: None,
                }],
            }],
        }],
    };
    assert_eq!(gateway_of(&mesh, &ingress_pod()), Some(expect));
    // Sidecars are not gateways.
    let productpage = pods
        .iter()
        .find(|p| p.workload == "productpage-v1")
        .unwrap();
    assert_eq!(gateway_of(&mesh, productpage), None);
    // The VirtualService is honoured, so nothing says it is ignored.
    let diags: Vec<String> = mesh.diagnostics().iter().map(|d| d.to_string()).collect();
    assert!(
        !diags.iter().any(|d| d.contains("\"bookinfo\"")),
        "{diags:#?}"
    );
}

#[test]
fn a_gateway_is_reached_in_plaintext_and_its_selector_spans_namespaces() {
    let mut set = set_of(&[
        "samples/bookinfo/platform/kube/bookinfo.yaml",
        "samples/bookinfo/networking/bookinfo-gateway.yaml",
    ]);
    add_yaml(
        &mut set,
        "apiVersion: v1\nkind: Service\nmetadata: {name: istio-ingressgateway, namespace: istio-system}\nspec:\n  selector: {istio: ingressgateway}\n  ports:\n  - {name: http2, port: 80, targetPort: 8080}\n",
    );
    let mesh = Mesh::default();
    mesh.set_resources(&set);
    mesh.upsert_pod(ingress_pod());
    let svc = mesh
        .service("istio-ingressgateway.istio-system.svc.cluster.local")
        .unwrap();
    assert_eq!(
        svc.ports[0].endpoints,
        vec![Endpoint {
            address: SocketAddr::new(GATEWAY_IP, 8080),
            tls: EndpointTls::Disable,
            identity: None,
        }]
    );
    // Without the Gateway the pod is an ordinary sidecar endpoint again.
    mesh.remove_resource(Kind::Gateway, "default", "bookinfo-gateway");
    let svc = mesh
        .service("istio-ingressgateway.istio-system.svc.cluster.local")
        .unwrap();
    assert_eq!(svc.ports[0].endpoints[0].tls, EndpointTls::IstioMutual);
    assert_eq!(gateway_of(&mesh, &ingress_pod()), None);
}

#[test]
fn unsupported_matches_are_reported_and_never_select() {
    let mut set = set_of(&["samples/bookinfo/platform/kube/bookinfo.yaml"]);
    add_yaml(
        &mut set,
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: ["*"]
  - port: {number: 8443, name: https, protocol: HTTPS}
    hosts: ["*"]
    tls: {mode: SIMPLE, credentialName: cert}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs}
spec:
  hosts: ["*"]
  gateways: [default/gw]
  http:
  - match:
    - uri: {regex: "/re.*"}
    route:
    - destination: {host: ratings}
  - match:
    - headers: {end-user: {exact: jason}}
    - uri: {prefix: /reviews}
    route:
    - destination: {host: reviews}
  - route:
    - destination: {host: details, port: {number: 9080}}
"#,
    );
    let mesh = Mesh::default();
    mesh.set_resources(&set);
    mesh.upsert_pods(pods_of(&set));
    let gw = gateway_of(&mesh, &ingress_pod()).unwrap();
    assert_eq!(gw.servers.len(), 1, "HTTPS is not served: {gw:?}");
    let routes: Vec<(Vec<PathMatch>, String)> = gw.servers[0]
        .http
        .iter()
        .map(|h| (h.matches.clone(), h.routes[0].destination.name.clone()))
        .collect();
    assert_eq!(
        routes,
        vec![
            (vec![PathMatch::Prefix("/reviews".into())], "reviews".into()),
            (vec![], "details".into()),
        ]
    );
    let diags: Vec<String> = mesh.diagnostics().iter().map(|d| d.to_string()).collect();
    for expected in [
        "spec.servers[1].port.protocol: protocol HTTPS is not served by weir's gateways (HTTP and TCP are); port 8443 is not configured",
        "spec.servers[1].tls: TLS settings of gateway servers are not supported",
        "spec.http[0].match[0].uri.regex: regex URI matches are not supported by weir's gateways",
        "spec.http[1].match[0].headers: weir's gateways match on the request path only",
    ] {
        assert!(diags.iter().any(|d| d.contains(expected)), "{expected}\n{diags:#?}");
    }
    // A gateway-only VirtualService says nothing about L4 sidecars.
    assert!(!diags.iter().any(|d| d.contains("L4 proxy")), "{diags:#?}");
}

fn tcp_summary(gw: &GatewayConfig) -> Vec<(u16, u32, Option<String>, Vec<SocketAddr>)> {
    gw.servers
        .iter()
        .flat_map(|s| {
            s.tcp.iter().map(move |r| {
                (
                    s.port,
                    r.weight,
                    r.subset.clone(),
                    r.endpoints.iter().map(|e| e.address).collect(),
                )
            })
        })
        .collect()
}

#[test]
fn tcp_echo_shifts_from_v1_to_80_20_on_a_connected_gateway() {
    let mut set = set_of(&[
        "samples/tcp-echo/tcp-echo-services.yaml",
        "samples/tcp-echo/tcp-echo-all-v1.yaml",
    ]);
    let pods = pods_of(&set);
    let mesh = Mesh::default();
    mesh.set_resources(&set);
    mesh.upsert_pods(pods.clone());
    let gw_pod = ingress_pod();
    mesh.upsert_pod(gw_pod.clone());
    let node = NodeInfo {
        pod_name: gw_pod.name.clone(),
        namespace: gw_pod.namespace.clone(),
        workload_name: gw_pod.workload.clone(),
        service_account: gw_pod.service_account.clone(),
        ip: gw_pod.ip,
        labels: gw_pod.labels.clone(),
        container_ports: Default::default(),
    };
    let mut rx = mesh.subscribe(&node).unwrap();
    let v1 = SocketAddr::new(pod_ip(&pods, "tcp-echo-v1"), 9000);
    let v2 = SocketAddr::new(pod_ip(&pods, "tcp-echo-v2"), 9000);
    let gw = rx.borrow_and_update().workload.gateway.clone().unwrap();
    assert_eq!(gw.servers.len(), 1);
    assert_eq!(gw.servers[0].protocol, GatewayProtocol::Tcp);
    assert_eq!(
        tcp_summary(&gw),
        vec![(31400, 100, Some("v1".into()), vec![v1])]
    );
    assert_eq!(gw.servers[0].tcp[0].destination, svc_ref("tcp-echo"));

    add_yaml(
        &mut set,
        &std::fs::read_to_string(fixture("samples/tcp-echo/tcp-echo-20-v2.yaml")).unwrap(),
    );
    mesh.set_resources(&set);
    assert!(
        rx.has_changed().unwrap(),
        "the gateway is told of the new routes"
    );
    let gw = rx.borrow_and_update().workload.gateway.clone().unwrap();
    assert_eq!(
        tcp_summary(&gw),
        vec![
            (31400, 80, Some("v1".into()), vec![v1]),
            (31400, 20, Some("v2".into()), vec![v2]),
        ]
    );

    // A new v2 pod joins the subset's endpoints on the gateway.
    let mut v2b = pods
        .iter()
        .find(|p| p.workload == "tcp-echo-v2")
        .unwrap()
        .clone();
    v2b.name = "tcp-echo-v2-1".into();
    v2b.ip = Some(IpAddr::V4(Ipv4Addr::new(10, 1, 0, 99)));
    mesh.upsert_pod(v2b);
    let gw = rx.borrow_and_update().workload.gateway.clone().unwrap();
    assert_eq!(
        tcp_summary(&gw)[1].3,
        vec![v2, SocketAddr::from(([10, 1, 0, 99], 9000))]
    );

    // A sidecar proxy's view does not change with gateway-only routes.
    mesh.unsubscribe(&node);
}

#[test]
fn routes_answer_the_hosts_shared_by_server_and_virtual_service() {
    let mut set = set_of(&["samples/bookinfo/platform/kube/bookinfo.yaml"]);
    add_yaml(
        &mut set,
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: ["default/*.example.com", "other/*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: a-any}
spec:
  hosts: ["*"]
  gateways: [istio-system/gw]
  http:
  - route: [{destination: {host: details}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: b-named}
spec:
  hosts: [bookinfo.example.com]
  gateways: [istio-system/gw]
  http:
  - route: [{destination: {host: productpage}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: c-elsewhere}
spec:
  hosts: [bookinfo.example.org]
  gateways: [istio-system/gw]
  http:
  - route: [{destination: {host: ratings}}]
"#,
    );
    let mesh = Mesh::default();
    mesh.set_resources(&set);
    mesh.upsert_pods(pods_of(&set));
    let gw = gateway_of(&mesh, &ingress_pod()).unwrap();
    let routes: Vec<(Vec<String>, String)> = gw.servers[0]
        .http
        .iter()
        .map(|h| (h.hosts.clone(), h.routes[0].destination.name.clone()))
        .collect();
    // `other/*` admits only VirtualServices of namespace `other`; `*.example.org` is no
    // host of the server.
    assert_eq!(
        routes,
        vec![
            (vec!["*.example.com".to_owned()], "details".to_owned()),
            (
                vec!["bookinfo.example.com".to_owned()],
                "productpage".to_owned()
            ),
        ]
    );
}
