//! A server-first protocol through the mesh: the real `mariadb` client queries a real
//! MariaDB server through two sidecars (mTLS and metadata exchange with the server's
//! greeting waiting behind it). Needs root.

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use support::http::eventually;
use support::mariadb::{MariaDb, PORT, ROWS};
use support::sidecar::{
    dump, inbound_port, mtls_endpoint, outbound_service, tcp_counts, Env, Expect, Sidecar, Workload,
};

const RATINGS: Workload = Workload {
    name: "ratings-v2-mysql",
    app: "ratings",
    version: "v2-mysql",
    sa: "bookinfo-ratings-v2",
    namespace: "default",
};
const MYSQLDB: Workload = Workload {
    name: "mysqldb-v1",
    app: "mysqldb",
    version: "v1",
    sa: "default",
    namespace: "default",
};
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 30);

#[test]
fn e2e_mariadb_client_and_server_through_both_sidecars() {
    let env = Env::new(&["ratings", "mysqldb"]);
    let db = MariaDb::start(&env, "mysqldb");
    let db_ip = env.pod("mysqldb").ip;
    let server = Sidecar::start(&env, "mysqldb", &MYSQLDB, |c| {
        c.inbound.ports = vec![inbound_port(PORT, "mysqldb", "default")];
    });
    let client = Sidecar::start(&env, "ratings", &RATINGS, |c| {
        c.outbound.services = vec![outbound_service(
            "mysqldb",
            "default",
            &[VIP],
            PORT,
            vec![mtls_endpoint(SocketAddr::from((db_ip, PORT)), &MYSQLDB)],
        )];
    });

    let vip = VIP.to_string();
    let port = PORT.to_string();
    let out = env.pod("ratings").netns.exec(&[
        "mariadb",
        "--no-defaults",
        "--connect-timeout=10",
        "-h",
        &vip,
        "-P",
        &port,
        "-uweir",
        "-pweir",
        "-N",
        "-B",
        "test",
        "-e",
        "SELECT id, stars FROM ratings ORDER BY id",
    ]);
    assert!(
        out.status.success(),
        "mariadb client through the mesh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), ROWS);
    // The server saw the client as a TCP peer (through its sidecar, from loopback).
    assert_eq!(
        db.sql("SELECT COUNT(*) FROM test.ratings").unwrap().trim(),
        "2"
    );

    let expect = |reporter| {
        Expect {
            reporter,
            src: Some(&RATINGS),
            dst: Some(&MYSQLDB),
            service: Some(("mysqldb", "default")),
            mtls: true,
            flags: "-",
        }
        .labels()
    };
    // Both reporters count the one connection and agree on the bytes each way.
    let (src, dst) = eventually(
        "both reporters saw the MariaDB connection",
        Duration::from_secs(5),
        || {
            let s = client.tcp_metrics(&env);
            let d = server.tcp_metrics(&env);
            let src = tcp_counts(&s, &expect("source"));
            let dst = tcp_counts(&d, &expect("destination"));
            if src.0 == 1.0 && src.1 == 1.0 && dst.0 == 1.0 && dst.1 == 1.0 && src == dst {
                Ok((src, dst))
            } else {
                Err(format!(
                    "source {src:?}, destination {dst:?}\n{}{}",
                    dump(&s),
                    dump(&d)
                ))
            }
        },
    );
    assert!(src.2 > 0.0 && src.3 > 0.0, "bytes both ways: {src:?}");
    assert_eq!(src, dst);
}
