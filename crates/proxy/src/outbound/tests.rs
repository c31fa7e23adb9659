use super::*;

fn table() -> RouteTable {
    let yaml = r#"
node: {namespace: default, workloadName: productpage-v1}
outbound:
  services:
  - name: mysqldb
    namespace: default
    addresses: [10.96.0.12]
    ports:
    - port: 3306
      endpoints:
      - {address: "10.44.0.9:3306", tls: DISABLE}
      - {address: "10.44.0.10:3306", tls: DISABLE}
      - {address: "10.44.0.11:3306", tls: DISABLE}
"#;
    let c =
        crate::config::ProxyConfig::from_str_named(yaml, crate::config::Format::Yaml, "t").unwrap();
    RouteTable::new(&c.outbound.services)
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn service_vip_and_pod_addresses_route_to_the_service() {
    let t = table();
    for dst in ["10.96.0.12:3306", "10.44.0.10:3306"] {
        match Target::classify(&t, OutboundTrafficPolicy::RegistryOnly, addr(dst)) {
            Target::Route(r) => assert_eq!(r.service.fqdn, "mysqldb.default.svc.cluster.local"),
            other => panic!("{dst}: {other:?}"),
        }
    }
}

#[test]
fn unknown_destinations_follow_the_traffic_policy() {
    let t = table();
    // Right address, wrong port: not the service.
    let dst = addr("10.96.0.12:80");
    assert!(matches!(
        Target::classify(&t, OutboundTrafficPolicy::AllowAny, dst),
        Target::Passthrough
    ));
    let nc = Target::classify(&t, OutboundTrafficPolicy::RegistryOnly, dst);
    assert!(matches!(nc, Target::NoRoute));
    assert_eq!(nc.service().name, BLACKHOLE_CLUSTER);
    assert_eq!(Target::Passthrough.service().fqdn, PASSTHROUGH_CLUSTER);
}

#[test]
fn round_robin_starts_on_the_next_endpoint_and_retries_are_capped() {
    let t = table();
    let Some(route) = t.lookup(addr("10.96.0.12:3306")) else {
        panic!("no route")
    };
    let order = |attempts| -> Vec<String> {
        route
            .attempt_order(attempts)
            .iter()
            .map(|e| e.address.to_string())
            .collect()
    };
    assert_eq!(order(2), ["10.44.0.9:3306", "10.44.0.10:3306"]);
    assert_eq!(order(2), ["10.44.0.10:3306", "10.44.0.11:3306"]);
    assert_eq!(
        order(10),
        ["10.44.0.11:3306", "10.44.0.9:3306", "10.44.0.10:3306"]
    );
    assert_eq!(order(1), ["10.44.0.9:3306"]);
}
