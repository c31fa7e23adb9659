//! The exposition passes `promtool check metrics` (Prometheus's own linter).

#[path = "support/exposition.rs"]
mod exposition;

use std::io::Write;
use std::process::{Command, Stdio};

use telemetry::{
    encode, DestinationService, Format, Registry, ResponseFlags, SecurityPolicy, TagOperation,
    TagOverrides, TagValue, TcpLabels, TcpMetric, TcpMetrics, Workload,
};

const PROMTOOL: &str = "promtool";

/// Runs `promtool check metrics` on `text`; returns (success, combined output).
fn promtool_check(text: &str) -> (bool, String) {
    let mut child = Command::new(PROMTOOL)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run `{PROMTOOL}` ({e}): install it with `apt-get install prometheus` \
                 (Debian package `prometheus` ships /usr/bin/promtool)"
            )
        });
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool exit");
    let mut msg = String::from_utf8_lossy(&out.stdout).into_owned();
    msg.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), msg)
}

/// A registry with many shapes of series: every flag, both reporters, odd
/// characters in values, an extra label from overrides.
fn busy_registry() -> Registry {
    let mut registry = Registry::default();
    let metrics = TcpMetrics::new(&mut registry);
    let local = Workload {
        name: "ratings-v2-mysql".into(),
        namespace: "default".into(),
        cluster: "Kubernetes".into(),
        labels: [
            ("app".to_string(), "ratings".to_string()),
            ("version".to_string(), "v2-mysql".to_string()),
        ]
        .into(),
        principal: Some("spiffe://cluster.local/ns/default/sa/bookinfo-ratings-v2".into()),
    };
    let odd = Workload {
        name: "we\"ird\\name\nwith newline, comma={}".into(),
        labels: [("app".to_string(), "ünïcødé".to_string())].into(),
        ..Workload::unknown()
    };
    let svc = DestinationService::from_fqdn("mysqldb.default.svc.cluster.local");
    let flags = [
        ResponseFlags::None,
        ResponseFlags::UpstreamConnectionFailure,
        ResponseFlags::NoHealthyUpstream,
        ResponseFlags::UpstreamOverflow,
        ResponseFlags::UpstreamRetryLimitExceeded,
        ResponseFlags::NoClusterFound,
        ResponseFlags::DurationTimeout,
    ];
    for f in flags {
        let mut r = metrics.recorder(TcpLabels::outbound(&local, &odd, &svc, f));
        r.resolve(TcpLabels::outbound(&local, &odd, &svc, f));
        r.byte_counters().add_received(1);
        r.close(None);
        metrics
            .recorder(TcpLabels::inbound(
                &local,
                &odd,
                &svc,
                SecurityPolicy::None,
                ResponseFlags::None,
            ))
            .close(Some(f));
    }
    let mut o = TagOverrides::none();
    o.set_tag(
        Some(TcpMetric::OpenedConnections),
        "role",
        TagOperation::Upsert(TagValue::Literal("server".into())),
    );
    // Telemetry resources may name tags with characters Prometheus label names lack.
    o.set_tag(
        Some(TcpMetric::OpenedConnections),
        "app.kubernetes.io/part-of",
        TagOperation::Upsert(TagValue::Literal("bookinfo".into())),
    );
    metrics.set_overrides(o);
    metrics
        .recorder(TcpLabels::inbound(
            &local,
            &Workload::unknown(),
            &DestinationService::unknown(),
            SecurityPolicy::MutualTls,
            ResponseFlags::None,
        ))
        .close(None);
    registry
}

#[test]
fn prometheus_text_passes_promtool() {
    let text = encode(&busy_registry(), Format::PrometheusText).expect("encode");
    let (ok, msg) = promtool_check(&text);
    assert!(ok, "promtool rejected the exposition: {msg}\n{text}");
    assert_eq!(msg.trim(), "", "promtool lint output:\n{text}");
    for name in [
        "istio_tcp_connections_opened_total",
        "istio_tcp_connections_closed_total",
        "istio_tcp_sent_bytes_total",
        "istio_tcp_received_bytes_total",
    ] {
        assert!(
            text.contains(&format!("# TYPE {name} counter\n")),
            "no TYPE line for {name}:\n{text}"
        );
    }
    // The odd value survived escaping intact.
    let p = exposition::Parsed::parse(&text);
    assert!(p
        .samples
        .iter()
        .any(|s| s.label("app_kubernetes_io_part_of") == Some("bookinfo")));
    assert!(p
        .samples
        .iter()
        .any(|s| s.label("destination_workload") == Some("we\"ird\\name\nwith newline, comma={}")));
}

#[test]
fn empty_registry_passes_promtool() {
    let mut registry = Registry::default();
    let _metrics = TcpMetrics::new(&mut registry);
    let text = encode(&registry, Format::PrometheusText).expect("encode");
    let (ok, msg) = promtool_check(&text);
    assert!(ok && msg.trim().is_empty(), "{msg}\n{text}");
}

/// promtool 2.42 reads only the Prometheus text format: on OpenMetrics it reports
/// the counter families (named without `_total`) as lacking help. This is why the
/// OpenMetrics exposition is served only to scrapers that ask for it.
#[test]
fn openmetrics_is_only_for_scrapers_that_ask() {
    let text = encode(&busy_registry(), Format::OpenMetrics).expect("encode");
    assert!(text.ends_with("# EOF\n"));
    assert!(text.contains("# TYPE istio_tcp_connections_opened counter\n"));
    assert!(text.contains("\nistio_tcp_connections_opened_total{"));
    let (ok, msg) = promtool_check(&text);
    assert!(
        !ok,
        "promtool now accepts OpenMetrics; revisit the default format"
    );
    assert!(
        msg.contains("istio_tcp_connections_opened_total no help text"),
        "{msg}"
    );
}
