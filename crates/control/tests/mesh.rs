//! The mesh computation over Istio's own sample manifests (`../shared/fixtures/istio`):
//! Bookinfo with subsets, routes, auto mTLS and policies, and incremental updates.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use config::model::{Document, Spec};
use config::{Kind, ResourceSet};
use control::mesh::{Mesh, MeshOptions, Pod};
use proxy::config::{
    Endpoint, EndpointTls, InboundMode, InboundPort, LoadBalancer, MetricOverride, OutboundPort,
    Route, ServiceRef, TagOperationKind, TagOverride,
};
use xds::{NodeInfo, ViewSource};

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/fixtures/istio")
        .join(rel)
}

const KUBE: &str = "samples/bookinfo/platform/kube";
const NET: &str = "samples/bookinfo/networking";

/// Loads fixture files into a set. `upsert` keeps documents the apply-time analysis would
/// reject (a route to a missing subset), which is what the mesh must cope with.
fn set_of(files: &[&str]) -> ResourceSet {
    let mut set = ResourceSet::new();
    for f in files {
        let docs = config::parse_path(&fixture(f)).unwrap();
        for d in docs {
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

fn doc_of(yaml: &str) -> Document {
    config::parse_str(yaml, "test.yaml").unwrap().remove(0)
}

/// One pod per Deployment, `<deployment>-0`, IPs 10.1.0.1, .2, ... in Deployment order.
fn pods_of(set: &ResourceSet, sidecar: impl Fn(&str) -> bool) -> Vec<Pod> {
    set.iter_kind(Kind::Deployment)
        .enumerate()
        .map(|(i, d)| {
            let name = d.resource.name();
            let ip = IpAddr::V4(Ipv4Addr::new(10, 1, 0, u8::try_from(i + 1).unwrap()));
            Pod::of_deployment(d, &format!("{name}-0"), Some(ip), sidecar(name)).unwrap()
        })
        .collect()
}

fn pod_ip(pods: &[Pod], workload: &str) -> IpAddr {
    pods.iter()
        .find(|p| p.workload == workload)
        .and_then(|p| p.ip)
        .unwrap()
}

fn mtls(ip: IpAddr, port: u16, sa: &str) -> Endpoint {
    Endpoint {
        address: SocketAddr::new(ip, port),
        tls: EndpointTls::IstioMutual,
        identity: Some(format!("spiffe://cluster.local/ns/default/sa/{sa}")),
    }
}

fn plain(ip: IpAddr, port: u16) -> Endpoint {
    Endpoint {
        address: SocketAddr::new(ip, port),
        tls: EndpointTls::Disable,
        identity: None,
    }
}

fn svc_ref(name: &str) -> ServiceRef {
    ServiceRef {
        name: name.into(),
        namespace: "default".into(),
        hostname: None,
    }
}

fn host(name: &str) -> String {
    format!("{name}.default.svc.cluster.local")
}

fn port_of(mesh: &Mesh, service: &str, port: u16) -> OutboundPort {
    let svc = mesh.service(&host(service)).unwrap();
    svc.ports.iter().find(|p| p.port == port).unwrap().clone()
}

fn bookinfo(extra: &[&str]) -> (Mesh, ResourceSet, Vec<Pod>) {
    let mut files = vec![
        "samples/bookinfo/platform/kube/bookinfo.yaml",
        "samples/bookinfo/networking/destination-rule-all.yaml",
    ];
    files.extend_from_slice(extra);
    let set = set_of(&files);
    let pods = pods_of(&set, |_| true);
    let mesh = Mesh::default();
    mesh.set_resources(&set);
    mesh.upsert_pods(pods.clone());
    (mesh, set, pods)
}

#[test]
fn reviews_has_three_subsets_with_their_pods() {
    let (mesh, mut set, pods) = bookinfo(&[]);
    let reviews = port_of(&mesh, "reviews", 9080);
    let sa = "bookinfo-reviews";
    let all: Vec<Endpoint> = ["reviews-v1", "reviews-v2", "reviews-v3"]
        .iter()
        .map(|w| mtls(pod_ip(&pods, w), 9080, sa))
        .collect();
    assert_eq!(reviews.endpoints, all);
    assert!(reviews.routes.is_empty());

    add_yaml(
        &mut set,
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews}\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - {destination: {host: reviews, subset: v1}, weight: 50}\n    - {destination: {host: reviews, subset: v2}, weight: 30}\n    - {destination: {host: reviews, subset: v3}, weight: 20}\n",
    );
    mesh.set_resources(&set);
    let routes = port_of(&mesh, "reviews", 9080).routes;
    let expect: Vec<Route> = [("v1", 50), ("v2", 30), ("v3", 20)]
        .iter()
        .map(|(v, w)| Route {
            weight: *w,
            destination: svc_ref("reviews"),
            subset: Some((*v).into()),
            load_balancer: Some(LoadBalancer::RoundRobin),
            endpoints: vec![mtls(pod_ip(&pods, &format!("reviews-{v}")), 9080, sa)],
            unresolved: None,
        })
        .collect();
    assert_eq!(routes, expect);
}

#[test]
fn reviews_v3_route_goes_only_to_v3() {
    let (mesh, _, pods) = bookinfo(&[&format!("{NET}/virtual-service-reviews-v3.yaml")]);
    assert_eq!(
        port_of(&mesh, "reviews", 9080).routes,
        vec![Route {
            weight: 100,
            destination: svc_ref("reviews"),
            subset: Some("v3".into()),
            load_balancer: Some(LoadBalancer::RoundRobin),
            endpoints: vec![mtls(pod_ip(&pods, "reviews-v3"), 9080, "bookinfo-reviews")],
            unresolved: None,
        }]
    );
    // Other services keep their plain endpoints.
    assert!(port_of(&mesh, "ratings", 9080).routes.is_empty());
}

#[test]
fn tcp_echo_weighted_80_20() {
    let mut set = set_of(&[
        "samples/tcp-echo/tcp-echo-services.yaml",
        "samples/tcp-echo/tcp-echo-all-v1.yaml",
    ]);
    let routes = std::fs::read_to_string(fixture("samples/tcp-echo/tcp-echo-20-v2.yaml")).unwrap();
    // As written, the routes are bound to the ingress gateway (which honours them, see
    // tests/gateway.rs): sidecars do not apply them, and nothing is reported as ignored.
    add_yaml(&mut set, &routes);
    let pods = pods_of(&set, |_| true);
    let mesh = Mesh::default();
    mesh.set_resources(&set);
    mesh.upsert_pods(pods.clone());
    assert!(port_of(&mesh, "tcp-echo", 9000).routes.is_empty());
    let diags: Vec<String> = mesh.diagnostics().iter().map(|d| d.to_string()).collect();
    assert!(
        !diags
            .iter()
            .any(|d| d.contains("VirtualService \"tcp-echo\"")),
        "{diags:#?}"
    );

    // The same routes for sidecars: `mesh` gateway, the service port.
    let mesh_routes = routes
        .replace("  - tcp-echo-gateway", "  - mesh")
        .replace("port: 31400", "port: 9000");
    add_yaml(&mut set, &mesh_routes);
    mesh.set_resources(&set);
    let port = port_of(&mesh, "tcp-echo", 9000);
    let summary: Vec<(u32, Option<&str>, Vec<SocketAddr>)> = port
        .routes
        .iter()
        .map(|r| {
            (
                r.weight,
                r.subset.as_deref(),
                r.endpoints.iter().map(|e| e.address).collect(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (
                80,
                Some("v1"),
                vec![SocketAddr::new(pod_ip(&pods, "tcp-echo-v1"), 9000)]
            ),
            (
                20,
                Some("v2"),
                vec![SocketAddr::new(pod_ip(&pods, "tcp-echo-v2"), 9000)]
            ),
        ]
    );
    // Port 9001 matches no rule and keeps the service's endpoints.
    let other = port_of(&mesh, "tcp-echo", 9001);
    assert!(other.routes.is_empty());
    assert_eq!(other.endpoints.len(), 2);
}

#[test]
fn ratings_mysql_talks_to_mysqldb_with_mtls_only_when_it_has_a_sidecar() {
    let set = set_of(&[
        &format!("{KUBE}/bookinfo.yaml"),
        &format!("{KUBE}/bookinfo-ratings-v2-mysql.yaml"),
        &format!("{KUBE}/bookinfo-mysql.yaml"),
        &format!("{NET}/destination-rule-all.yaml"),
        &format!("{NET}/virtual-service-ratings-mysql.yaml"),
    ]);
    let mut pods = pods_of(&set, |_| true);
    let mesh = Mesh::default();
    mesh.set_resources(&set);
    mesh.upsert_pods(pods.clone());
    let db_ip = pod_ip(&pods, "mysqldb-v1");
    let db = port_of(&mesh, "mysqldb", 3306);
    assert_eq!(db.endpoints, vec![mtls(db_ip, 3306, "default")]);
    let ratings = port_of(&mesh, "ratings", 9080);
    assert_eq!(ratings.routes.len(), 1);
    assert_eq!(ratings.routes[0].subset.as_deref(), Some("v2-mysql"));
    assert_eq!(
        ratings.routes[0].endpoints,
        vec![mtls(pod_ip(&pods, "ratings-v2-mysql"), 9080, "default")]
    );

    // The database without a sidecar: plaintext, no identity.
    let db_pod = pods
        .iter_mut()
        .find(|p| p.workload == "mysqldb-v1")
        .unwrap();
    db_pod.sidecar = false;
    mesh.upsert_pod(db_pod.clone());
    assert_eq!(
        port_of(&mesh, "mysqldb", 3306).endpoints,
        vec![plain(db_ip, 3306)]
    );
    // Its proxy connecting makes it a sidecar pod again.
    let node = node_of(db_pod);
    let _rx = mesh.subscribe(&node).unwrap();
    assert_eq!(
        port_of(&mesh, "mysqldb", 3306).endpoints,
        vec![mtls(db_ip, 3306, "default")]
    );
    mesh.unsubscribe(&node);
    assert_eq!(
        port_of(&mesh, "mysqldb", 3306).endpoints,
        vec![plain(db_ip, 3306)]
    );
}

#[test]
fn destination_rule_tls_wins_over_auto_mtls() {
    let (mesh, mut set, pods) = bookinfo(&[]);
    add_yaml(
        &mut set,
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews}\nspec:\n  host: reviews\n  trafficPolicy:\n    tls: {mode: DISABLE}\n    loadBalancer: {simple: LEAST_REQUEST}\n    connectionPool: {tcp: {maxConnections: 7, connectTimeout: 250ms}}\n  subsets:\n  - {name: v1, labels: {version: v1}}\n  - name: v2\n    labels: {version: v2}\n    trafficPolicy: {tls: {mode: ISTIO_MUTUAL}, loadBalancer: {simple: RANDOM}}\n",
    );
    add_yaml(
        &mut set,
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews}\nspec:\n  hosts: [reviews]\n  tcp:\n  - route:\n    - {destination: {host: reviews, subset: v1}, weight: 50}\n    - {destination: {host: reviews, subset: v2}, weight: 50}\n",
    );
    mesh.set_resources(&set);
    let port = port_of(&mesh, "reviews", 9080);
    assert!(port
        .endpoints
        .iter()
        .all(|e| e.tls == EndpointTls::Disable && e.identity.is_none()));
    assert_eq!(port.max_connections, Some(7));
    assert_eq!(port.connect_timeout, Some(Duration::from_millis(250)));
    assert_eq!(
        mesh.service(&host("reviews")).unwrap().load_balancer,
        LoadBalancer::LeastRequest
    );
    assert_eq!(
        port.routes[0].endpoints,
        vec![plain(pod_ip(&pods, "reviews-v1"), 9080)]
    );
    assert_eq!(
        port.routes[0].load_balancer,
        Some(LoadBalancer::LeastRequest)
    );
    // The subset's own policy overrides the rule's.
    assert_eq!(
        port.routes[1].endpoints,
        vec![mtls(pod_ip(&pods, "reviews-v2"), 9080, "bookinfo-reviews")]
    );
    assert_eq!(port.routes[1].load_balancer, Some(LoadBalancer::Random));
}

#[test]
fn route_to_undefined_subset_is_unresolved() {
    let (mesh, mut set, _) = bookinfo(&[]);
    add_yaml(
        &mut set,
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews}\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews, subset: v4}\n",
    );
    add_yaml(
        &mut set,
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: details}\nspec:\n  hosts: [details]\n  tcp:\n  - route:\n    - destination: {host: nowhere}\n",
    );
    mesh.set_resources(&set);
    let routes = port_of(&mesh, "reviews", 9080).routes;
    assert_eq!(routes.len(), 1);
    assert_eq!(
        routes[0].unresolved.as_deref(),
        Some("subset `v4` is not defined by any DestinationRule for host `reviews`; defined: v1, v2, v3")
    );
    assert!(routes[0].endpoints.is_empty());
    assert_eq!(
        port_of(&mesh, "details", 9080).routes[0]
            .unresolved
            .as_deref(),
        Some("host `nowhere` does not match any Service (`nowhere.default.svc.cluster.local`)")
    );
}

#[test]
fn service_without_pods_has_no_endpoints() {
    let set = set_of(&[
        &format!("{KUBE}/bookinfo.yaml"),
        &format!("{KUBE}/bookinfo-mysql.yaml"),
    ]);
    let mesh = Mesh::default();
    mesh.set_resources(&set);
    assert!(port_of(&mesh, "mysqldb", 3306).endpoints.is_empty());
    let diags: Vec<String> = mesh.diagnostics().iter().map(|d| d.to_string()).collect();
    assert!(diags.iter().any(|d| d.contains("Service \"mysqldb\": spec.selector: no registered pod matches the selector; connections to the Service get `UH`")), "{diags:#?}");
}

fn node_of(pod: &Pod) -> NodeInfo {
    NodeInfo {
        pod_name: pod.name.clone(),
        namespace: pod.namespace.clone(),
        workload_name: pod.workload.clone(),
        service_account: pod.service_account.clone(),
        ip: pod.ip,
        labels: pod.labels.clone(),
        container_ports: Default::default(),
    }
}

fn pod<'a>(pods: &'a [Pod], workload: &str) -> &'a Pod {
    pods.iter().find(|p| p.workload == workload).unwrap()
}

#[test]
fn peer_authentication_workload_overrides_namespace() {
    let (mesh, mut set, pods) = bookinfo(&[]);
    add_yaml(
        &mut set,
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\nspec: {mtls: {mode: DISABLE}}\n---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default}\nspec: {mtls: {mode: STRICT}}\n---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: reviews}\nspec:\n  selector: {matchLabels: {app: reviews}}\n  mtls: {mode: PERMISSIVE}\n",
    );
    let reviews = node_of(pod(&pods, "reviews-v2"));
    let ratings = node_of(pod(&pods, "ratings-v1"));
    let rx_reviews = mesh.subscribe(&reviews).unwrap();
    let rx_ratings = mesh.subscribe(&ratings).unwrap();
    assert_eq!(
        rx_reviews.borrow().workload.inbound_mode,
        InboundMode::Permissive
    );
    mesh.set_resources(&set);
    assert_eq!(
        rx_reviews.borrow().workload.inbound_mode,
        InboundMode::Permissive
    );
    assert_eq!(
        rx_ratings.borrow().workload.inbound_mode,
        InboundMode::Strict
    );
    // Without the namespace policy the mesh-wide one applies.
    mesh.remove_resource(Kind::PeerAuthentication, "default", "default");
    assert_eq!(
        rx_ratings.borrow().workload.inbound_mode,
        InboundMode::Disable
    );
    assert_eq!(
        rx_ratings.borrow().workload.inbound_ports,
        vec![InboundPort {
            port: 9080,
            target: Some(SocketAddr::from(([127, 0, 0, 1], 9080))),
            listen: None,
            service: Some(svc_ref("ratings")),
        }]
    );
}

#[test]
fn telemetry_resolves_mesh_namespace_workload() {
    let (mesh, mut set, pods) = bookinfo(&["telemetry/customize-metrics-ns-default.yaml"]);
    add_yaml(
        &mut set,
        "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: mesh-default, namespace: istio-system}\nspec:\n  metrics:\n  - reportingInterval: 30s\n    overrides:\n    - match: {metric: TCP_SENT_BYTES}\n      disabled: true\n",
    );
    let reviews = node_of(pod(&pods, "reviews-v1"));
    let rx = mesh.subscribe(&reviews).unwrap();
    mesh.set_resources(&set);
    let w = rx.borrow().workload.clone();
    assert_eq!(w.reporting_interval, Duration::from_secs(30));
    assert_eq!(
        w.telemetry.overrides,
        vec![
            MetricOverride {
                metric: "TCP_SENT_BYTES".into(),
                disabled: Some(true),
                tag_overrides: BTreeMap::new(),
            },
            MetricOverride {
                metric: "REQUEST_COUNT".into(),
                disabled: None,
                tag_overrides: [
                    ("custom_dimension", TagOperationKind::Upsert, Some("'test'")),
                    (
                        "grpc_response_status",
                        TagOperationKind::Upsert,
                        Some("filter_state[\"wasm.istio_grpcResponseStatus\"]")
                    ),
                    (
                        "request_operation",
                        TagOperationKind::Upsert,
                        Some("filter_state[\"wasm.istio_operationId\"]")
                    ),
                    (
                        "response_code",
                        TagOperationKind::Upsert,
                        Some("filter_state[\"wasm.istio_responseClass\"]")
                    ),
                    ("source_principal", TagOperationKind::Remove, None),
                ]
                .into_iter()
                .map(|(k, operation, v)| {
                    (
                        k.to_owned(),
                        TagOverride {
                            operation,
                            value: v.map(str::to_owned),
                        },
                    )
                })
                .collect(),
            },
        ]
    );
    // A namespace reporting interval wins over the mesh's.
    add_yaml(
        &mut set,
        "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: ns-default}\nspec:\n  metrics:\n  - providers: [{name: prometheus}]\n    reportingInterval: 5s\n",
    );
    mesh.set_resources(&set);
    assert_eq!(
        rx.borrow().workload.reporting_interval,
        Duration::from_secs(5)
    );
    assert_eq!(rx.borrow().workload.telemetry.overrides.len(), 1);
}

#[test]
fn one_virtual_service_change_replaces_only_its_service() {
    let (mesh, set, pods) = bookinfo(&[&format!("{NET}/virtual-service-all-v1.yaml")]);
    let mut receivers: Vec<_> = pods
        .iter()
        .map(|p| mesh.subscribe(&node_of(p)).unwrap())
        .collect();
    let before: Vec<Arc<xds::ProxyView>> = receivers
        .iter_mut()
        .map(|rx| rx.borrow_and_update().clone())
        .collect();
    assert_eq!(
        port_of(&mesh, "reviews", 9080).routes[0].subset.as_deref(),
        Some("v1")
    );

    let stats = mesh.upsert_resource(&doc_of(
        &std::fs::read_to_string(fixture(&format!("{NET}/virtual-service-reviews-v3.yaml")))
            .unwrap(),
    ));
    assert_eq!((stats.services_recomputed, stats.services_changed), (1, 1));
    assert_eq!(stats.proxies_notified, pods.len());
    for (rx, old) in receivers.iter_mut().zip(&before) {
        assert!(rx.has_changed().unwrap());
        let new = rx.borrow_and_update().clone();
        assert!(Arc::ptr_eq(&new.workload, &old.workload));
        for (host_name, svc) in new.services.iter() {
            let same = Arc::ptr_eq(svc, &old.services[host_name]);
            assert_eq!(same, *host_name != host("reviews"), "{host_name}");
        }
        assert_eq!(
            new.services[&host("reviews")].ports[0].routes[0]
                .subset
                .as_deref(),
            Some("v3")
        );
    }
    // Applying the same set again changes nothing and notifies no one.
    let mut again = set.clone();
    again.upsert(doc_of(
        &std::fs::read_to_string(fixture(&format!("{NET}/virtual-service-reviews-v3.yaml")))
            .unwrap(),
    ));
    let stats = mesh.set_resources(&again);
    assert_eq!(stats.services_changed, 0);
    assert_eq!(stats.proxies_notified, 0);
    assert!(!receivers[0].has_changed().unwrap());
}

#[test]
fn removed_pod_leaves_endpoints_and_its_services_only() {
    let (mesh, _, pods) = bookinfo(&[]);
    let before = mesh.services();
    let gone = pod(&pods, "reviews-v2");
    let stats = mesh.remove_pod(&gone.namespace, &gone.name);
    assert_eq!(stats.services_recomputed, 1);
    let eps: Vec<IpAddr> = port_of(&mesh, "reviews", 9080)
        .endpoints
        .iter()
        .map(|e| e.address.ip())
        .collect();
    assert_eq!(
        eps,
        vec![pod_ip(&pods, "reviews-v1"), pod_ip(&pods, "reviews-v3")]
    );
    let after = mesh.services();
    for (h, svc) in after.iter() {
        assert_eq!(Arc::ptr_eq(svc, &before[h]), *h != host("reviews"), "{h}");
    }
}

#[test]
fn vips_come_from_cluster_ip_or_the_range() {
    let (mesh, mut set, _) = bookinfo(&[]);
    let details = mesh.service(&host("details")).unwrap().addresses.clone();
    assert_eq!(details.len(), 1);
    assert!(details[0].to_string().starts_with("10.96."), "{details:?}");
    // Stable across recomputes and across meshes.
    let other = Mesh::new(MeshOptions::default());
    other.set_resources(&set);
    assert_eq!(other.service(&host("details")).unwrap().addresses, details);
    // An explicit clusterIP is used as written.
    let mut svc = set
        .get(Kind::Service, "default", "details")
        .unwrap()
        .clone();
    if let Spec::Service(s) = &mut svc.resource.spec {
        s.cluster_ip = Some("10.0.0.42".into());
    }
    set.upsert(svc);
    mesh.set_resources(&set);
    assert_eq!(
        mesh.service(&host("details")).unwrap().addresses,
        vec!["10.0.0.42".parse::<IpAddr>().unwrap()]
    );
}

#[test]
fn subscribe_refuses_a_proxy_with_another_identity() {
    let (mesh, _, pods) = bookinfo(&[]);
    let mut node = node_of(pod(&pods, "ratings-v1"));
    node.service_account = "bookinfo-reviews".into();
    let err = mesh.subscribe(&node).unwrap_err().to_string();
    assert_eq!(
        err,
        "proxy ratings-v1-0.default refused: the pod runs as service account `bookinfo-ratings` but the proxy's certificate is for `bookinfo-reviews`; issue the proxy a certificate for its pod's service account"
    );
}

/// 1,000 services × 10 endpoints, 1,000 subscribed proxies, one service change.
/// Prints the time of recompute + notify; run with `--ignored --nocapture`.
#[test]
#[ignore]
fn scale_one_change_among_a_thousand_services() {
    let mut set = ResourceSet::new();
    let mut yaml = String::new();
    for i in 0..1000 {
        let ns = format!("ns{}", i % 10);
        yaml.push_str(&format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: svc{i}, namespace: {ns}}}\nspec:\n  selector: {{app: app{i}}}\n  ports: [{{name: tcp, port: 9000}}]\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: svc{i}, namespace: {ns}}}\nspec:\n  host: svc{i}\n  subsets: [{{name: v1, labels: {{version: v1}}}}, {{name: v2, labels: {{version: v2}}}}]\n---\n"
        ));
    }
    add_yaml(&mut set, &yaml);
    let mesh = Mesh::default();
    mesh.set_resources(&set);
    let mut pods = Vec::new();
    for i in 0..1000u32 {
        for j in 0..10u32 {
            let n = i * 10 + j;
            pods.push(Pod {
                name: format!("app{i}-{j}"),
                namespace: format!("ns{}", i % 10),
                ip: Some(IpAddr::V4(Ipv4Addr::from(0x0a01_0000 + n + 1))),
                labels: [
                    ("app".to_owned(), format!("app{i}")),
                    ("version".to_owned(), format!("v{}", j % 2 + 1)),
                ]
                .into_iter()
                .collect(),
                service_account: "default".into(),
                sidecar: true,
                workload: format!("app{i}"),
            });
        }
    }
    let t = std::time::Instant::now();
    mesh.upsert_pods(pods.clone());
    println!("register 10,000 pods: {:?}", t.elapsed());
    let t = std::time::Instant::now();
    let receivers: Vec<_> = pods
        .iter()
        .step_by(10)
        .map(|p| mesh.subscribe(&node_of(p)).unwrap())
        .collect();
    println!("subscribe 1,000 proxies: {:?}", t.elapsed());
    let t = std::time::Instant::now();
    let stats = mesh.upsert_resource(&doc_of(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: svc500, namespace: ns0}\nspec:\n  hosts: [svc500]\n  tcp:\n  - route:\n    - {destination: {host: svc500, subset: v1}, weight: 80}\n    - {destination: {host: svc500, subset: v2}, weight: 20}\n",
    ));
    let total = t.elapsed();
    println!("one VirtualService change: {stats:?}; total including the call: {total:?}");
    assert_eq!(stats.services_changed, 1);
    assert_eq!(stats.proxies_notified, 1000);
    assert!(receivers.iter().all(|rx| rx.has_changed().unwrap()));
}
