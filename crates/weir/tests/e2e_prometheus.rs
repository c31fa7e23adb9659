//! A real Prometheus scrapes two sidecars in network namespaces and answers Istio's
//! queries; `promtool` accepts the exposition. Needs root.

mod support;

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::apps::{self, Respond};
use support::prometheus::{Prometheus, JOB};
use support::sidecar::{
    inbound_port, mtls_endpoint, outbound_service, Env, Expect, Sidecar, Workload,
};

const PRODUCTPAGE: Workload = Workload {
    name: "productpage-v1",
    app: "productpage",
    version: "v1",
    sa: "productpage",
    namespace: "default",
};
const REVIEWS: Workload = Workload {
    name: "reviews-v3",
    app: "reviews",
    version: "v3",
    sa: "bookinfo-reviews",
    namespace: "default",
};
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 40);
const PORT: u16 = 9080;

#[test]
fn e2e_prometheus_answers_istio_query_and_promtool_accepts_exposition() {
    let env = Env::new(&["client", "server", "prometheus"]);
    let server_ip = env.pod("server").ip;
    let server_app = apps::serve(
        &env.pod("server").netns,
        SocketAddr::from(([0, 0, 0, 0], PORT)),
        777,
        Respond::Concurrently,
        3,
    );
    let server = Sidecar::start(&env, "server", &REVIEWS, |c| {
        c.inbound.ports = vec![inbound_port(PORT, "reviews", "default")];
    });
    let client = Sidecar::start(&env, "client", &PRODUCTPAGE, |c| {
        c.outbound.services = vec![outbound_service(
            "reviews",
            "default",
            &[VIP],
            PORT,
            vec![mtls_endpoint(SocketAddr::from((server_ip, PORT)), &REVIEWS)],
        )];
    });
    let prom = Prometheus::start(
        &env,
        "prometheus",
        &[
            SocketAddr::from((client.ip, 15090)),
            SocketAddr::from((server.ip, 15090)),
        ],
    );
    for _ in 0..3 {
        let t = apps::request(&env.pod("client").netns, SocketAddr::from((VIP, PORT)), 100);
        assert_eq!(t.received, 777);
    }
    assert_eq!(server_app.join().unwrap().len(), 3);

    let mut want: std::collections::BTreeMap<String, String> = Expect {
        reporter: "destination",
        src: Some(&PRODUCTPAGE),
        dst: Some(&REVIEWS),
        service: Some(("reviews", "default")),
        mtls: true,
        flags: "-",
    }
    .labels()
    .into_iter()
    .collect();
    want.insert(
        "__name__".into(),
        "istio_tcp_connections_opened_total".into(),
    );
    want.insert("job".into(), JOB.into());
    want.insert("instance".into(), format!("{}:15090", server.ip));
    let result = prom.query_until(
        &env,
        "istio_tcp_connections_opened_total{reporter=\"destination\"}",
        Duration::from_secs(20),
        |r| match r {
            [s] if s.value == 3.0 => Ok(()),
            _ => Err("want one series with value 3".into()),
        },
    );
    assert_eq!(result[0].labels, want);

    // Both reporters, as the seed task asks: the source side shows the same count.
    let by_reporter = prom.query_until(
        &env,
        "sum by (reporter) (istio_tcp_connections_closed_total{destination_service_name=\"reviews\"})",
        Duration::from_secs(20),
        |r| {
            let mut v: Vec<(String, f64)> = r
                .iter()
                .map(|s| (s.labels.get("reporter").cloned().unwrap_or_default(), s.value))
                .collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            if v == [("destination".to_owned(), 3.0), ("source".to_owned(), 3.0)] {
                Ok(())
            } else {
                Err(format!("{v:?}"))
            }
        },
    );
    assert_eq!(by_reporter.len(), 2);
    let bytes = prom.query_until(
        &env,
        "sum(istio_tcp_received_bytes_total{reporter=\"source\"})",
        Duration::from_secs(20),
        |r| match r {
            [s] if s.value == 300.0 => Ok(()),
            _ => Err("want 300 received bytes".into()),
        },
    );
    assert_eq!(bytes.len(), 1);

    // promtool lints the exposition of both sidecars.
    for (who, sidecar) in [("client", &client), ("server", &server)] {
        let text = sidecar.stats_text(&env);
        let mut child = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run promtool (apt-get install prometheus)");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool check metrics rejects the {who} exposition: {}{}\n{text}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
