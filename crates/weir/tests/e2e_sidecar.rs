//! End-to-end tests of the sidecar in real network namespaces: transparent capture by
//! `weir proxy init`, mTLS and metadata exchange between two `weir proxy` processes, data
//! integrity by SHA-256, and the `istio_tcp_*` metrics on both reporters. Needs root.

mod support;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr};
use std::time::Duration;

use nix::sys::signal::Signal;
use proxy::config::OutboundTrafficPolicy;
use support::apps::{self, pattern_sha256, Respond, CLIENT_SEED, SERVER_SEED};
use support::http::eventually;
use support::sidecar::{
    dump, inbound_port, mtls_endpoint, outbound_service, plain_endpoint, tcp_counts, Env, Expect,
    Sidecar, Workload,
};

const PRODUCTPAGE: Workload = Workload {
    name: "productpage-v1",
    app: "productpage",
    version: "v1",
    sa: "productpage",
    namespace: "default",
};
const RATINGS: Workload = Workload {
    name: "ratings-v1",
    app: "ratings",
    version: "v1",
    sa: "ratings",
    namespace: "default",
};
/// The `ratings` service: its VIP and port.
const RATINGS_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
const PORT: u16 = 9080;
const MB: u64 = 1_000_000;

/// Client pod (productpage, sidecar) → ratings service VIP → server pod (ratings, sidecar).
fn mesh(env: &Env) -> (Sidecar, Sidecar) {
    let server_ip = env.pod("server").ip;
    let server = Sidecar::start(env, "server", &RATINGS, |c| {
        c.inbound.ports = vec![inbound_port(PORT, "ratings", "default")];
    });
    let client = Sidecar::start(env, "client", &PRODUCTPAGE, |c| {
        c.outbound.services = vec![outbound_service(
            "ratings",
            "default",
            &[RATINGS_VIP],
            PORT,
            vec![mtls_endpoint(SocketAddr::from((server_ip, PORT)), &RATINGS)],
        )];
    });
    (client, server)
}

fn expect_mtls(reporter: &str) -> Vec<(String, String)> {
    Expect {
        reporter,
        src: Some(&PRODUCTPAGE),
        dst: Some(&RATINGS),
        service: Some(("ratings", "default")),
        mtls: true,
        flags: "-",
    }
    .labels()
}

/// Waits until `sidecar` reports exactly `want` = (opened, closed, received, sent) for
/// `labels`.
fn wait_counts(
    env: &Env,
    sidecar: &Sidecar,
    labels: &[(String, String)],
    want: (f64, f64, f64, f64),
    limit: Duration,
) {
    eventually("istio_tcp_* values", limit, || {
        let samples = sidecar.tcp_metrics(env);
        let got = tcp_counts(&samples, labels);
        if got == want {
            Ok(())
        } else {
            Err(format!(
                "want (opened, closed, received, sent) = {want:?}, got {got:?} for {labels:?}; scrape:\n{}",
                dump(&samples)
            ))
        }
    });
}

#[test]
fn e2e_mtls_100mb_each_way_half_close_and_metrics() {
    let env = Env::new(&["client", "server"]);
    let server_app = apps::serve(
        &env.pod("server").netns,
        SocketAddr::from(([0, 0, 0, 0], PORT)),
        100 * MB,
        Respond::Concurrently,
        1,
    );
    let (client, server) = mesh(&env);
    let vip = SocketAddr::from((RATINGS_VIP, PORT));

    // 100 MB each way at once through both sidecars.
    let c = apps::request(&env.pod("client").netns, vip, 100 * MB);
    let s = server_app.join().expect("server app");
    assert_eq!(s.len(), 1);
    assert_eq!(c.received, 100 * MB);
    assert_eq!(c.received_sha256, pattern_sha256(SERVER_SEED, 100 * MB));
    assert_eq!(s[0].received, 100 * MB);
    assert_eq!(s[0].received_sha256, pattern_sha256(CLIENT_SEED, 100 * MB));
    assert_eq!(s[0].received_sha256, c.sent_sha256);
    assert_eq!(c.received_sha256, s[0].sent_sha256);

    let want = (1.0, 1.0, (100 * MB) as f64, (100 * MB) as f64);
    wait_counts(
        &env,
        &client,
        &expect_mtls("source"),
        want,
        Duration::from_secs(5),
    );
    wait_counts(
        &env,
        &server,
        &expect_mtls("destination"),
        want,
        Duration::from_secs(5),
    );

    // A request that half-closes before the server answers still gets all of the answer.
    let server_app = apps::serve(
        &env.pod("server").netns,
        SocketAddr::from(([0, 0, 0, 0], PORT)),
        5 * MB,
        Respond::AfterEof,
        1,
    );
    let c = apps::request(&env.pod("client").netns, vip, 1234);
    let s = server_app.join().expect("server app");
    assert_eq!((s[0].received, c.received), (1234, 5 * MB));
    assert_eq!(s[0].received_sha256, pattern_sha256(CLIENT_SEED, 1234));
    assert_eq!(c.received_sha256, pattern_sha256(SERVER_SEED, 5 * MB));

    let want = (2.0, 2.0, (100 * MB + 1234) as f64, (105 * MB) as f64);
    wait_counts(
        &env,
        &client,
        &expect_mtls("source"),
        want,
        Duration::from_secs(5),
    );
    wait_counts(
        &env,
        &server,
        &expect_mtls("destination"),
        want,
        Duration::from_secs(5),
    );
}

#[test]
fn e2e_live_connection_is_reported_within_one_interval() {
    let env = Env::new(&["client", "server"]);
    let server_app = apps::serve(
        &env.pod("server").netns,
        SocketAddr::from(([0, 0, 0, 0], PORT)),
        3000,
        Respond::Concurrently,
        1,
    );
    let (client, server) = mesh(&env);
    let mut conn = apps::connect(
        &env.pod("client").netns,
        SocketAddr::from((RATINGS_VIP, PORT)),
    )
    .expect("connect to the ratings VIP");
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    conn.write_all(&[7u8; 1000]).unwrap();
    let mut answer = vec![0u8; 3000];
    conn.read_exact(&mut answer).unwrap();

    // Reporting interval 1 s: the live connection shows while still open. The limit
    // leaves room for a loaded machine and still rules out the 15 s default interval
    // and reporting only at close.
    let limit = Duration::from_secs(4);
    let open = (1.0, 0.0, 1000.0, 3000.0);
    wait_counts(&env, &client, &expect_mtls("source"), open, limit);
    wait_counts(&env, &server, &expect_mtls("destination"), open, limit);

    conn.write_all(&[8u8; 500]).unwrap();
    let open = (1.0, 0.0, 1500.0, 3000.0);
    wait_counts(&env, &client, &expect_mtls("source"), open, limit);
    wait_counts(&env, &server, &expect_mtls("destination"), open, limit);

    conn.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest).unwrap();
    assert_eq!(rest.len(), 0);
    let s = server_app.join().unwrap();
    assert_eq!(s[0].received, 1500);
    let closed = (1.0, 1.0, 1500.0, 3000.0);
    wait_counts(
        &env,
        &client,
        &expect_mtls("source"),
        closed,
        Duration::from_secs(5),
    );
    wait_counts(
        &env,
        &server,
        &expect_mtls("destination"),
        closed,
        Duration::from_secs(5),
    );
}

#[test]
fn e2e_plaintext_peer_without_sidecar() {
    let env = Env::new(&["client", "server"]);
    let server_ip = env.pod("server").ip;
    // The server pod has no sidecar: its app listens on the pod IP directly.
    let server_app = apps::serve(
        &env.pod("server").netns,
        SocketAddr::from((server_ip, PORT)),
        40_000,
        Respond::Concurrently,
        1,
    );
    let client = Sidecar::start(&env, "client", &PRODUCTPAGE, |c| {
        c.outbound.services = vec![outbound_service(
            "ratings",
            "default",
            &[RATINGS_VIP],
            PORT,
            vec![plain_endpoint(SocketAddr::from((server_ip, PORT)))],
        )];
    });
    let c = apps::request(
        &env.pod("client").netns,
        SocketAddr::from((RATINGS_VIP, PORT)),
        30_000,
    );
    let s = server_app.join().unwrap();
    assert_eq!((c.received, s[0].received), (40_000, 30_000));
    assert_eq!(c.received_sha256, pattern_sha256(SERVER_SEED, 40_000));
    assert_eq!(s[0].received_sha256, pattern_sha256(CLIENT_SEED, 30_000));

    let labels = Expect {
        reporter: "source",
        src: Some(&PRODUCTPAGE),
        dst: None,
        service: Some(("ratings", "default")),
        mtls: false,
        flags: "-",
    }
    .labels();
    wait_counts(
        &env,
        &client,
        &labels,
        (1.0, 1.0, 30_000.0, 40_000.0),
        Duration::from_secs(5),
    );
}

#[test]
fn e2e_refused_upstream_is_uf_and_unknown_destination_is_nc() {
    let env = Env::new(&["client", "server"]);
    let server_ip = env.pod("server").ip;
    let other_vip = Ipv4Addr::new(10, 96, 0, 99);
    // Nothing listens on the server pod: connects are refused.
    let client = Sidecar::start(&env, "client", &PRODUCTPAGE, |c| {
        c.outbound.traffic_policy = OutboundTrafficPolicy::RegistryOnly;
        c.limits.connect_attempts = 1;
        c.outbound.services = vec![outbound_service(
            "ratings",
            "default",
            &[RATINGS_VIP],
            PORT,
            vec![mtls_endpoint(SocketAddr::from((server_ip, PORT)), &RATINGS)],
        )];
    });
    let netns = &env.pod("client").netns;

    // UF: the app's connection is accepted by the sidecar, then closed without data.
    let received = apps::request_expecting_close(netns, SocketAddr::from((RATINGS_VIP, PORT)), 100);
    assert_eq!(received, 0);
    let uf = Expect {
        reporter: "source",
        src: Some(&PRODUCTPAGE),
        dst: None,
        service: Some(("ratings", "default")),
        mtls: false,
        flags: "UF",
    }
    .labels();
    wait_counts(
        &env,
        &client,
        &uf,
        (1.0, 1.0, 0.0, 0.0),
        Duration::from_secs(10),
    );

    // NC: REGISTRY_ONLY and a destination no service matches.
    let received = apps::request_expecting_close(netns, SocketAddr::from((other_vip, 1234)), 100);
    assert_eq!(received, 0);
    // Istio's names for the refusing cluster.
    let mut nc = Expect {
        reporter: "source",
        src: Some(&PRODUCTPAGE),
        dst: None,
        service: None,
        mtls: false,
        flags: "NC",
    }
    .labels();
    for (k, v) in &mut nc {
        if k == "destination_service" || k == "destination_service_name" {
            *v = "BlackHoleCluster".to_owned();
        }
    }
    wait_counts(
        &env,
        &client,
        &nc,
        (1.0, 1.0, 0.0, 0.0),
        Duration::from_secs(5),
    );
}

#[test]
fn e2e_sigterm_drains_live_connection_and_exits_zero() {
    let env = Env::new(&["client", "server"]);
    let server_app = apps::serve(
        &env.pod("server").netns,
        SocketAddr::from(([0, 0, 0, 0], PORT)),
        2 * MB,
        Respond::AfterEof,
        1,
    );
    let (mut client, server) = mesh(&env);
    let mut conn = apps::connect(
        &env.pod("client").netns,
        SocketAddr::from((RATINGS_VIP, PORT)),
    )
    .expect("connect");
    conn.write_all(&[1u8; 1000]).unwrap();
    // The connection is established through both sidecars before the signal.
    wait_counts(
        &env,
        &server,
        &expect_mtls("destination"),
        (1.0, 0.0, 1000.0, 0.0),
        Duration::from_secs(5),
    );

    client.child.signal(Signal::SIGTERM);
    // The live connection goes on while the sidecar drains.
    eventually("the sidecar logs the drain", Duration::from_secs(5), || {
        let log = client.child.stderr();
        if log.contains("SIGTERM received; draining") {
            Ok(())
        } else {
            Err(log)
        }
    });
    assert_eq!(
        client.child.try_status(),
        None,
        "exited before its live connection ended"
    );
    conn.write_all(&[2u8; 1000]).unwrap();
    conn.shutdown(Shutdown::Write).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let (n, sha) = apps::read_all(&mut conn).expect("read response while draining");
    assert_eq!((n, sha), (2 * MB, pattern_sha256(SERVER_SEED, 2 * MB)));
    assert_eq!(server_app.join().unwrap()[0].received, 2000);
    drop(conn);

    let status = client
        .child
        .wait_timeout(Duration::from_secs(15))
        .expect("sidecar exits after draining");
    assert!(
        status.success(),
        "exit status {status}; stderr:\n{}",
        client.child.stderr()
    );
    assert!(
        client.child.stderr().contains("cut_connections=0"),
        "the drain cut a connection:\n{}",
        client.child.stderr()
    );
    wait_counts(
        &env,
        &server,
        &expect_mtls("destination"),
        (1.0, 1.0, 2000.0, (2 * MB) as f64),
        Duration::from_secs(5),
    );
}

#[test]
fn e2e_plaintext_client_into_permissive_sidecar() {
    let env = Env::new(&["client", "server"]);
    let server_app = apps::serve(
        &env.pod("server").netns,
        SocketAddr::from(([0, 0, 0, 0], PORT)),
        2222,
        Respond::Concurrently,
        1,
    );
    let server = Sidecar::start(&env, "server", &RATINGS, |c| {
        c.inbound.ports = vec![inbound_port(PORT, "ratings", "default")];
    });
    // The client pod has no sidecar: it dials the server pod's IP in plaintext, and the
    // server's capture hands the connection to its sidecar (PERMISSIVE).
    let c = apps::request(
        &env.pod("client").netns,
        SocketAddr::from((server.ip, PORT)),
        1111,
    );
    let s = server_app.join().unwrap();
    assert_eq!((c.received, s[0].received), (2222, 1111));
    assert_eq!(c.received_sha256, pattern_sha256(SERVER_SEED, 2222));
    assert_eq!(s[0].received_sha256, pattern_sha256(CLIENT_SEED, 1111));
    let labels = Expect {
        reporter: "destination",
        src: None,
        dst: Some(&RATINGS),
        service: Some(("ratings", "default")),
        mtls: false,
        flags: "-",
    }
    .labels();
    wait_counts(
        &env,
        &server,
        &labels,
        (1.0, 1.0, 1111.0, 2222.0),
        Duration::from_secs(5),
    );
}
