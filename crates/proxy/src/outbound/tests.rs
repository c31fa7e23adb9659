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
            Target::Route { port, original } => {
                assert_eq!(port.key(), "mysqldb.default:3306");
                assert_eq!(original, Some(addr(dst)));
                assert_eq!(
                    port.choose().service.fqdn,
                    "mysqldb.default.svc.cluster.local"
                );
            }
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
    let Some(port) = t.lookup(addr("10.96.0.12:3306")) else {
        panic!("no route")
    };
    let order = |attempts| -> Vec<String> {
        port.choose()
            .pool
            .attempt_order(None, attempts)
            .iter()
            .map(|e| e.endpoint.address.to_string())
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

fn ep(a: &str) -> Endpoint {
    Endpoint {
        address: addr(a),
        tls: EndpointTls::Disable,
        identity: None,
    }
}

fn pool(lb: LoadBalancer, n: usize) -> EndpointPool {
    let endpoints: Vec<Endpoint> = (0..n).map(|i| ep(&format!("10.0.0.{i}:80"))).collect();
    let loads = endpoints.iter().map(|_| Arc::default()).collect();
    EndpointPool::new(endpoints, loads, lb)
}

fn first(p: &EndpointPool, original: Option<SocketAddr>) -> SocketAddr {
    p.attempt_order(original, 1)[0].endpoint.address
}

#[test]
fn weighted_pick_follows_the_cumulative_weights() {
    let w = [3u32, 0, 1];
    let picks: Vec<_> = (0..4).map(|r| balance::pick_weighted(w, r)).collect();
    assert_eq!(picks, [Some(0), Some(0), Some(0), Some(2)]);
    assert_eq!(balance::pick_weighted(w, 4), None);
    assert_eq!(balance::pick_weighted([0u32, 0], 0), None);
}

#[test]
fn random_below_stays_in_range_and_covers_it() {
    let mut seen = [0u32; 7];
    for _ in 0..7000 {
        seen[balance::random_below(7) as usize] += 1;
    }
    // Each bucket expects 1000 (sd ~29.3); 5 sd either way.
    assert!(seen.iter().all(|&n| (853..=1147).contains(&n)), "{seen:?}");
}

#[test]
fn passthrough_goes_to_the_original_destination_only() {
    let mut endpoints = vec![ep("10.0.0.1:80")];
    endpoints.push(Endpoint {
        address: addr("10.0.0.2:80"),
        tls: EndpointTls::IstioMutual,
        identity: Some("spiffe://cluster.local/ns/default/sa/b".into()),
    });
    let loads = endpoints.iter().map(|_| Arc::default()).collect();
    let p = EndpointPool::new(endpoints, loads, LoadBalancer::Passthrough);
    // A listed endpoint keeps its TLS settings and its load counter.
    let c = p.attempt_order(Some(addr("10.0.0.2:80")), 3);
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].endpoint.tls, EndpointTls::IstioMutual);
    assert!(c[0].load.is_some());
    // Any other address is reached in plaintext, even with no endpoints at all.
    let empty = EndpointPool::new(Vec::new(), Vec::new(), LoadBalancer::Passthrough);
    let c = empty.attempt_order(Some(addr("192.0.2.7:5432")), 3);
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].endpoint.address, addr("192.0.2.7:5432"));
    assert_eq!(c[0].endpoint.tls, EndpointTls::Disable);
    assert!(c[0].load.is_none());
    // Without an original destination (explicit listener): round robin.
    let rr: Vec<_> = (0..3).map(|_| first(&p, None)).collect();
    assert_eq!(
        rr,
        [
            addr("10.0.0.1:80"),
            addr("10.0.0.2:80"),
            addr("10.0.0.1:80")
        ]
    );
    assert!(empty.attempt_order(None, 3).is_empty());
}

#[test]
fn least_request_picks_the_less_loaded_of_two() {
    let p = pool(LoadBalancer::LeastRequest, 2);
    let guards: Vec<_> = (0..3).map(|_| ActiveGuard::acquire(&p.loads[0])).collect();
    for _ in 0..50 {
        assert_eq!(first(&p, None), addr("10.0.0.1:80"));
    }
    drop(guards);
    assert_eq!(p.loads[0].load(std::sync::atomic::Ordering::SeqCst), 0);
    // Three endpoints, one busy: the busy one loses every comparison it is in, so it
    // is never chosen.
    let p = pool(LoadBalancer::LeastRequest, 3);
    let _busy = ActiveGuard::acquire(&p.loads[1]);
    for _ in 0..100 {
        assert_ne!(first(&p, None), addr("10.0.0.1:80"));
    }
}

#[test]
fn try_acquire_caps_the_count() {
    let c = Arc::new(AtomicUsize::new(0));
    let a = ActiveGuard::try_acquire(&c, 2);
    let b = ActiveGuard::try_acquire(&c, 2);
    assert!(a.is_some() && b.is_some());
    assert!(ActiveGuard::try_acquire(&c, 2).is_none());
    drop(a);
    assert!(ActiveGuard::try_acquire(&c, 2).is_some());
    drop(b);
    assert_eq!(c.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[test]
fn routes_carry_their_destination_and_counts_survive_a_rebuild() {
    let yaml = r#"
node: {namespace: default, workloadName: productpage-v1}
outbound:
  services:
  - name: reviews
    namespace: default
    addresses: [10.96.0.20]
    loadBalancer: RANDOM
    ports:
    - port: 9080
      maxConnections: 7
      routes:
      - weight: 0
        destination: {name: reviews, namespace: default}
        subset: v1
        endpoints: [{address: "10.44.1.1:9080", tls: DISABLE}]
      - weight: 5
        destination: {name: reviews-canary, namespace: test}
        loadBalancer: LEAST_REQUEST
        endpoints: [{address: "10.44.1.2:9080", tls: DISABLE}]
"#;
    let c =
        crate::config::ProxyConfig::from_str_named(yaml, crate::config::Format::Yaml, "t").unwrap();
    let t = RouteTable::new(&c.outbound.services);
    let port = t.by_key("reviews.default:9080").unwrap();
    assert_eq!(port.max_connections, Some(7));
    assert_eq!(port.routes[0].pool.load_balancer, LoadBalancer::Random);
    assert_eq!(
        port.routes[1].pool.load_balancer,
        LoadBalancer::LeastRequest
    );
    for _ in 0..20 {
        let r = port.choose();
        assert_eq!(r.service.fqdn, "reviews-canary.test.svc.cluster.local");
        assert_eq!(r.service.name, "reviews-canary");
        assert_eq!(r.service.namespace, "test");
    }
    let _held = ActiveGuard::acquire(&port.routes[1].pool.loads[0]);
    let _slot = ActiveGuard::acquire(&port.active);
    let next = RouteTable::rebuild(&c.outbound.services, &t);
    let p2 = next.by_key("reviews.default:9080").unwrap();
    assert!(Arc::ptr_eq(&p2.active, &port.active));
    assert_eq!(
        p2.routes[1].pool.loads[0].load(std::sync::atomic::Ordering::SeqCst),
        1
    );
}
