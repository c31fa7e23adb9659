//! Route weights, subsets and load balancers; refusals (NC, UO, UH).

use proxy::config::LoadBalancer;

use crate::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_routes_split_80_20_and_label_the_chosen_destination() {
    let up = Upstreams::start(&["v1", "v3"]).await;
    let cfg = routed(
        vec![
            route(80, "reviews", up.endpoints(&["v1"])),
            route(20, "reviews-canary", up.endpoints(&["v3"])),
        ],
        Vec::new(),
        LoadBalancer::RoundRobin,
    );
    let (p, addr) = start(cfg).await;
    const N: usize = 600;
    let got = tally(addr, N).await;
    let v1 = got.get("v1").copied().unwrap_or(0);
    assert_eq!(v1 + got.get("v3").copied().unwrap_or(0), N, "{got:?}");
    // Binomial(600, 0.8): mean 480, sd sqrt(600 * 0.8 * 0.2) = 9.80; 5 sd = 49, so a
    // correct proxy fails this about once in 1.7 million runs.
    assert!((431..=529).contains(&v1), "v1 got {v1} of {N}");
    // Each connection carries its route's destination labels.
    let samples = eventually(&p, |s| total(s, CLOSED, &[]) == N as f64).await;
    assert_eq!(
        total(&samples, OPENED, &[("destination_service_name", "reviews")]),
        v1 as f64
    );
    assert_eq!(
        total(
            &samples,
            OPENED,
            &[
                ("destination_service_name", "reviews-canary"),
                (
                    "destination_service",
                    "reviews-canary.default.svc.cluster.local"
                ),
                ("destination_service_namespace", "default"),
            ]
        ),
        (N - v1) as f64
    );
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_0_split_sends_everything_to_one_route() {
    let up = Upstreams::start(&["v1", "v3"]).await;
    let cfg = routed(
        vec![
            route(100, "reviews", up.endpoints(&["v1"])),
            route(0, "reviews", up.endpoints(&["v3"])),
        ],
        Vec::new(),
        LoadBalancer::RoundRobin,
    );
    let (p, addr) = start(cfg).await;
    let got = tally(addr, 50).await;
    assert_eq!(got, BTreeMap::from([("v1".to_owned(), 50)]));
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subset_route_uses_its_endpoints_in_exact_round_robin() {
    let up = Upstreams::start(&["v1", "v2", "v3", "other"]).await;
    let mut subset = route(1, "reviews", up.endpoints(&["v1", "v2", "v3"]));
    subset.subset = Some("v123".into());
    // The port's own endpoint is not part of the subset and must never be used.
    let cfg = routed(
        vec![subset],
        up.endpoints(&["other"]),
        LoadBalancer::RoundRobin,
    );
    let (p, addr) = start(cfg).await;
    let mut seen = Vec::new();
    for _ in 0..9 {
        seen.push(who(addr).await);
    }
    assert_eq!(seen, ["v1", "v2", "v3", "v1", "v2", "v3", "v1", "v2", "v3"]);
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_request_prefers_the_endpoint_with_fewer_open_connections() {
    let up = Upstreams::start(&["a", "b"]).await;
    // Five connections held open on `a` while it is the only endpoint...
    let only_a = routed(Vec::new(), up.endpoints(&["a"]), LoadBalancer::LeastRequest);
    let (p, addr) = start(only_a.clone()).await;
    let mut on_a = Vec::new();
    for _ in 0..5 {
        on_a.push(open(addr).await.unwrap());
    }
    assert!(on_a.iter().all(|h| h.name == "a"));
    // ...then `b` joins. The per-endpoint counts carry over the update, so `b` (0 open)
    // wins every comparison until it has as many: four new held connections all go
    // to `b`.
    let mut both = only_a;
    Arc::make_mut(&mut both.outbound.services[0]).ports[0].endpoints = up.endpoints(&["a", "b"]);
    p.update(both).unwrap();
    let mut new = Vec::new();
    for _ in 0..4 {
        new.push(open(addr).await.unwrap());
    }
    let names: Vec<&str> = new.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, ["b", "b", "b", "b"]);
    // Once `a`'s connections close, it is preferred again.
    drop(on_a);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while p.live_connections() != 4 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "connections never closed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut again = Vec::new();
    for _ in 0..4 {
        again.push(open(addr).await.unwrap());
    }
    let names: Vec<&str> = again.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, ["a", "a", "a", "a"]);
    drop(new);
    drop(again);
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_spreads_over_every_endpoint() {
    let up = Upstreams::start(&["a", "b", "c"]).await;
    let cfg = routed(
        Vec::new(),
        up.endpoints(&["a", "b", "c"]),
        LoadBalancer::Random,
    );
    let (p, addr) = start(cfg).await;
    let got = tally(addr, 600).await;
    // Each count is Binomial(600, 1/3): mean 200, sd sqrt(600 * 1/3 * 2/3) = 11.55;
    // 5 sd = 57.7.
    assert_eq!(got.len(), 3, "{got:?}");
    for (name, n) in &got {
        assert!((143..=257).contains(n), "{name}: {n} of 600 ({got:?})");
    }
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_on_an_explicit_listener_falls_back_to_round_robin() {
    let up = Upstreams::start(&["a", "b"]).await;
    let mut r = route(1, "reviews", up.endpoints(&["a", "b"]));
    r.load_balancer = Some(LoadBalancer::Passthrough);
    let (p, addr) = start(routed(vec![r], Vec::new(), LoadBalancer::RoundRobin)).await;
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(who(addr).await);
    }
    assert_eq!(seen, ["a", "b", "a", "b"]);
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unresolved_route_is_nc_and_empty_route_is_uh() {
    let mut gone = route(1, "reviews", Vec::new());
    gone.subset = Some("v9".into());
    gone.unresolved = Some("subset v9 is not defined by any DestinationRule".into());
    let (p, addr) = start(routed(vec![gone], Vec::new(), LoadBalancer::RoundRobin)).await;
    assert!(open(addr).await.is_none());
    let samples = eventually(&p, |s| total(s, CLOSED, &[]) == 1.0).await;
    let nc = [
        ("response_flags", "NC"),
        ("destination_service_name", "reviews"),
    ];
    assert_eq!(total(&samples, OPENED, &nc), 1.0);
    assert_eq!(total(&samples, CLOSED, &nc), 1.0);
    assert_eq!(total(&samples, OPENED, &[]), 1.0);
    p.shutdown().await;

    let (p, addr) = start(routed(
        vec![route(1, "reviews", Vec::new())],
        Vec::new(),
        LoadBalancer::RoundRobin,
    ))
    .await;
    assert!(open(addr).await.is_none());
    let samples = eventually(&p, |s| total(s, CLOSED, &[]) == 1.0).await;
    assert_eq!(total(&samples, CLOSED, &[("response_flags", "UH")]), 1.0);
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_port_max_connections_refuses_with_uo() {
    let up = Upstreams::start(&["a"]).await;
    let mut cfg = routed(
        vec![route(1, "reviews", up.endpoints(&["a"]))],
        Vec::new(),
        LoadBalancer::RoundRobin,
    );
    Arc::make_mut(&mut cfg.outbound.services[0]).ports[0].max_connections = Some(2);
    let (p, addr) = start(cfg).await;
    let one = open(addr).await.unwrap();
    let two = open(addr).await.unwrap();
    assert!(open(addr).await.is_none(), "a third connection is refused");
    let samples = eventually(&p, |s| total(s, CLOSED, &[]) == 1.0).await;
    assert_eq!(total(&samples, CLOSED, &[("response_flags", "UO")]), 1.0);
    assert_eq!(total(&samples, OPENED, &[]), 3.0);
    // Closing one frees its slot.
    drop(one);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(h) = open(addr).await {
            assert_eq!(h.name, "a");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "slot never freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(two);
    p.shutdown().await;
}

/// A loopback listener whose accept queue is full: further connects get no answer
/// (their SYNs are dropped), so they can only end by timing out.
fn saturated_listener() -> (std::net::TcpListener, Vec<std::net::TcpStream>) {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&loopback0().into()).unwrap();
    sock.listen(0).unwrap();
    let listener: std::net::TcpListener = sock.into();
    let addr = listener.local_addr().unwrap();
    let mut fill = Vec::new();
    // Backlog 0 admits one pending connection; a few more make sure it is full.
    for _ in 0..3 {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.set_nonblocking(true).unwrap();
        let _ = s.connect(&addr.into());
        fill.push(s.into());
    }
    std::thread::sleep(Duration::from_millis(50));
    (listener, fill)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_port_connect_timeout_overrides_the_limit() {
    let (listener, _fill) = saturated_listener();
    let dead = listener.local_addr().unwrap();
    let mut cfg = routed(
        vec![route(1, "reviews", vec![plain_endpoint(dead)])],
        Vec::new(),
        LoadBalancer::RoundRobin,
    );
    cfg.limits.connect_timeout = Duration::from_secs(60);
    Arc::make_mut(&mut cfg.outbound.services[0]).ports[0].connect_timeout =
        Some(Duration::from_millis(200));
    let (p, addr) = start(cfg).await;
    // With the 60 s limit this would outlive the 10 s deadline of `open`.
    assert!(open(addr).await.is_none());
    let samples = eventually(&p, |s| total(s, CLOSED, &[]) == 1.0).await;
    assert_eq!(total(&samples, CLOSED, &[("response_flags", "UF")]), 1.0);
    p.shutdown().await;
}
