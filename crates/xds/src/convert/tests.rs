use super::*;
use proxy::config::{GatewayConfig, GatewayHttpRoute, GatewayProtocol, GatewayServer, PathMatch};

fn endpoint(addr: &str, tls: EndpointTls, identity: Option<&str>) -> Endpoint {
    Endpoint {
        address: addr.parse().unwrap(),
        tls,
        identity: identity.map(str::to_owned),
    }
}

fn sample_service() -> OutboundService {
    OutboundService {
        name: "reviews".to_owned(),
        namespace: "default".to_owned(),
        hostname: Some("reviews.default.svc.cluster.local".to_owned()),
        addresses: vec!["10.96.0.7".parse().unwrap(), "fd00::7".parse().unwrap()],
        load_balancer: LoadBalancer::LeastRequest,
        ports: vec![
            OutboundPort {
                port: 9080,
                listen: Some("127.0.0.1:19080".parse().unwrap()),
                endpoints: vec![endpoint(
                    "10.0.0.5:9080",
                    EndpointTls::IstioMutual,
                    Some("spiffe://cluster.local/ns/default/sa/bookinfo-reviews"),
                )],
                routes: vec![
                    Route {
                        weight: 80,
                        destination: ServiceRef {
                            name: "reviews".to_owned(),
                            namespace: "default".to_owned(),
                            hostname: None,
                        },
                        subset: Some("v3".to_owned()),
                        load_balancer: Some(LoadBalancer::Passthrough),
                        endpoints: vec![endpoint("[fd00::5]:9080", EndpointTls::Disable, None)],
                        unresolved: None,
                    },
                    Route {
                        weight: 20,
                        destination: ServiceRef {
                            name: "reviews".to_owned(),
                            namespace: "default".to_owned(),
                            hostname: Some("reviews.default.svc.cluster.local".to_owned()),
                        },
                        subset: Some("v4".to_owned()),
                        load_balancer: None,
                        endpoints: vec![],
                        unresolved: Some("subset v4 is not defined".to_owned()),
                    },
                ],
                max_connections: Some(100),
                connect_timeout: Some(Duration::from_millis(1500)),
            },
            OutboundPort {
                port: 9081,
                listen: None,
                endpoints: vec![],
                routes: vec![],
                max_connections: None,
                connect_timeout: None,
            },
        ],
    }
}

fn sample_workload() -> WorkloadConfig {
    let mut tags = BTreeMap::new();
    tags.insert(
        "request_protocol".to_owned(),
        TagOverride {
            operation: TagOperationKind::Remove,
            value: None,
        },
    );
    tags.insert(
        "destination_version".to_owned(),
        TagOverride {
            operation: TagOperationKind::Upsert,
            value: Some("'v1'".to_owned()),
        },
    );
    WorkloadConfig {
        inbound_mode: InboundMode::Strict,
        inbound_ports: vec![InboundPort {
            port: 9080,
            target: Some("127.0.0.1:9080".parse().unwrap()),
            listen: Some("0.0.0.0:15080".parse().unwrap()),
            service: Some(ServiceRef {
                name: "ratings".to_owned(),
                namespace: "default".to_owned(),
                hostname: None,
            }),
        }],
        traffic_policy: OutboundTrafficPolicy::RegistryOnly,
        reporting_interval: Duration::from_secs(5),
        telemetry: TelemetryConfig {
            enabled: false,
            overrides: vec![MetricOverride {
                metric: "TCP_OPENED_CONNECTIONS".to_owned(),
                disabled: Some(true),
                tag_overrides: tags,
            }],
        },
        gateway: Some(sample_gateway()),
    }
}

fn sample_gateway() -> GatewayConfig {
    let route = |subset: &str, weight: u32| Route {
        weight,
        destination: ServiceRef {
            name: "tcp-echo".to_owned(),
            namespace: "default".to_owned(),
            hostname: None,
        },
        subset: Some(subset.to_owned()),
        load_balancer: None,
        endpoints: vec![endpoint("10.0.0.8:9000", EndpointTls::Disable, None)],
        unresolved: None,
    };
    GatewayConfig {
        servers: vec![
            GatewayServer {
                port: 8080,
                protocol: GatewayProtocol::Http,
                listen: None,
                tcp: vec![],
                http: vec![GatewayHttpRoute {
                    hosts: vec![
                        "bookinfo.example.com".to_owned(),
                        "*.bookinfo.test".to_owned(),
                    ],
                    matches: vec![
                        PathMatch::Exact("/productpage".to_owned()),
                        PathMatch::Prefix("/static".to_owned()),
                    ],
                    routes: vec![route("v1", 100)],
                }],
            },
            GatewayServer {
                port: 31400,
                protocol: GatewayProtocol::Tcp,
                listen: Some("127.0.0.1:31400".parse().unwrap()),
                tcp: vec![route("v1", 80), route("v2", 20)],
                http: vec![],
            },
        ],
    }
}

#[test]
fn gateway_bad_values_are_named() {
    let mut w = workload_to_proto(&sample_workload());
    let gw = w.gateway.as_mut().unwrap();
    gw.servers[1].protocol = 9;
    let e = workload_from_proto(&w, "workload").unwrap_err();
    assert_eq!(
        e.to_string(),
        "workload.gateway.servers[1].protocol: unknown GatewayProtocol value 9; fix: send one of HTTP, TCP"
    );
    let mut w = workload_to_proto(&sample_workload());
    w.gateway.as_mut().unwrap().servers[0].http[0].matches[1].kind = None;
    let e = workload_from_proto(&w, "workload").unwrap_err();
    assert_eq!(
        e.to_string(),
        "workload.gateway.servers[0].http[0].matches[1]: neither `exact` nor `prefix` is set; fix: send one path condition per match"
    );
    let mut w = workload_to_proto(&sample_workload());
    w.gateway.as_mut().unwrap().servers[1].port = 70000;
    let e = workload_from_proto(&w, "workload").unwrap_err();
    assert!(
        e.to_string()
            .starts_with("workload.gateway.servers[1].port: port 70000 is out of range"),
        "{e}"
    );
}

#[test]
fn service_round_trips() {
    let s = sample_service();
    let back = service_from_proto(&service_to_proto(&s), "svc").unwrap();
    assert_eq!(back, s);
}

#[test]
fn workload_round_trips() {
    let w = sample_workload();
    let back = workload_from_proto(&workload_to_proto(&w), "workload").unwrap();
    assert_eq!(back, w);
    for mode in [InboundMode::Permissive, InboundMode::Disable] {
        let w = WorkloadConfig {
            inbound_mode: mode,
            traffic_policy: OutboundTrafficPolicy::AllowAny,
            ..sample_workload()
        };
        assert_eq!(workload_from_proto(&workload_to_proto(&w), "w").unwrap(), w);
    }
}

#[test]
fn node_round_trips() {
    let node = NodeInfo {
        pod_name: "ratings-v2-abc".to_owned(),
        namespace: "default".to_owned(),
        workload_name: "ratings-v2".to_owned(),
        service_account: "bookinfo-ratings".to_owned(),
        ip: Some("10.0.0.9".parse().unwrap()),
        labels: [("app".to_owned(), "ratings".to_owned())].into(),
        container_ports: [9080].into(),
    };
    assert_eq!(node_from_proto(&node_to_proto(&node)).unwrap(), node);
}

#[test]
fn unknown_enum_is_named() {
    let mut p = service_to_proto(&sample_service());
    p.ports[0].routes[0].load_balancer = 42;
    let err = service_from_proto(&p, "reviews.default.svc.cluster.local").unwrap_err();
    assert_eq!(
        err.to_string(),
        "reviews.default.svc.cluster.local.ports[0].routes[0].load_balancer: unknown \
         LoadBalancer value 42; fix: send one of ROUND_ROBIN, LEAST_REQUEST, RANDOM, PASSTHROUGH"
    );
    let mut w = workload_to_proto(&sample_workload());
    w.inbound_mode = 9;
    let err = workload_from_proto(&w, "workload").unwrap_err();
    assert_eq!(
        err,
        ConvertError::UnknownEnum {
            field: "workload.inbound_mode".to_owned(),
            kind: "InboundMode",
            value: 9,
            expected: "STRICT, PERMISSIVE, PLAINTEXT",
        }
    );
}

#[test]
fn bad_address_is_named() {
    let mut p = service_to_proto(&sample_service());
    p.ports[0].endpoints[0].address = "10.0.0.5".to_owned();
    let err = service_from_proto(&p, "svc").unwrap_err();
    assert_eq!(
        err.to_string(),
        "svc.ports[0].endpoints[0].address: \"10.0.0.5\" is not an ip:port socket address; \
         fix: send an ip:port socket address"
    );
    let mut p = service_to_proto(&sample_service());
    p.addresses[1] = "not-an-ip".to_owned();
    let err = service_from_proto(&p, "svc").unwrap_err();
    assert!(
        matches!(err, ConvertError::BadAddress { ref field, .. } if field == "svc.addresses[1]")
    );
}

#[test]
fn port_out_of_range_is_named() {
    let mut p = service_to_proto(&sample_service());
    p.ports[1].port = 70000;
    let err = service_from_proto(&p, "svc").unwrap_err();
    assert_eq!(
        err.to_string(),
        "svc.ports[1].port: port 70000 is out of range; fix: send a port in 1-65535"
    );
    let mut w = workload_to_proto(&sample_workload());
    w.inbound_ports[0].port = 65536;
    assert_eq!(
        workload_from_proto(&w, "workload").unwrap_err(),
        ConvertError::PortRange {
            field: "workload.inbound_ports[0].port".to_owned(),
            value: 65536
        }
    );
}

#[test]
fn missing_and_bad_durations_are_named() {
    let mut w = workload_to_proto(&sample_workload());
    w.reporting_interval = None;
    assert_eq!(
        workload_from_proto(&w, "workload").unwrap_err().to_string(),
        "workload.reporting_interval: missing; fix: send the interval between reports of \
         live connections"
    );
    let mut p = service_to_proto(&sample_service());
    p.ports[0].connect_timeout = Some(prost_types::Duration {
        seconds: -1,
        nanos: 0,
    });
    let err = service_from_proto(&p, "svc").unwrap_err();
    assert!(
        matches!(err, ConvertError::Invalid { ref field, .. } if field == "svc.ports[0].connect_timeout")
    );
}

#[test]
fn absent_telemetry_means_defaults() {
    let mut w = workload_to_proto(&sample_workload());
    w.telemetry = None;
    let back = workload_from_proto(&w, "workload").unwrap();
    assert_eq!(back.telemetry, TelemetryConfig::default());
}

#[test]
fn assemble_merges_resources_onto_base() {
    let base = ProxyConfig::minimal("default", "productpage");
    let w = sample_workload();
    let s = Arc::new(sample_service());
    let config = assemble(&base, Some(&w), [&s]);
    assert_eq!(config.outbound.services, vec![s]);
    assert_eq!(config.inbound.mode, InboundMode::Strict);
    assert_eq!(config.inbound.ports, w.inbound_ports);
    assert_eq!(
        config.outbound.traffic_policy,
        OutboundTrafficPolicy::RegistryOnly
    );
    assert_eq!(config.reporting.interval, Duration::from_secs(5));
    assert_eq!(config.telemetry, w.telemetry);
    assert_eq!(config.node, base.node);
    assert_eq!(config.admin, base.admin);
    let untouched = assemble(&base, None, []);
    assert_eq!(untouched, base);
}
