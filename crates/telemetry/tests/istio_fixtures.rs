//! The series Istio's own proxy tests expect (`fixtures/istio-proxy/testdata/metric`),
//! reproduced from the node metadata those proxies run with.

#[path = "support/exposition.rs"]
mod exposition;
#[path = "support/gotemplate.rs"]
mod gotemplate;

use std::collections::BTreeMap;
use std::path::PathBuf;

use exposition::Parsed;
use telemetry::{
    spiffe_id, DestinationService, Registry, ResponseFlags, SecurityPolicy, TagOperation,
    TagOverrides, TagValue, TcpLabels, TcpMetric, TcpMetrics, Workload,
};

fn testdata() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/fixtures/istio-proxy/testdata");
    assert!(
        dir.is_dir(),
        "fixtures missing: {} (the shared fixtures directory must sit beside the repository)",
        dir.display()
    );
    dir
}

fn read(rel: &str) -> String {
    let path = testdata().join(rel);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read fixture {}: {e}", path.display()))
}

/// The template variables of Istio's default test run.
fn default_vars() -> BTreeMap<&'static str, &'static str> {
    [
        ("AppVersionFallback", "false"),
        ("EnableAdditionalLabels", "false"),
        ("WasmRuntime", ""),
    ]
    .into()
}

/// A node metadata template as a [`Workload`] with the principal its test
/// certificate carries (`spiffe://cluster.local/ns/default/sa/<sa>`).
fn node(rel: &str, service_account: &str) -> Workload {
    let rendered = gotemplate::render(&read(rel), &default_vars());
    let json: serde_json::Value = serde_json::from_str(&format!("{{{rendered}}}"))
        .unwrap_or_else(|e| panic!("{rel} is not JSON after rendering: {e}\n{rendered}"));
    let s = |k: &str| json[k].as_str().unwrap_or_default().to_owned();
    Workload {
        name: s("WORKLOAD_NAME"),
        namespace: s("NAMESPACE"),
        cluster: s("CLUSTER_ID"),
        labels: json["LABELS"]
            .as_object()
            .expect("LABELS")
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
            .collect(),
        principal: Some(spiffe_id("cluster.local", "default", service_account)),
    }
}

/// An expected series: metric name, labels in order, value.
struct Expected {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

fn expected(rel: &str) -> Expected {
    expected_with(rel, &default_vars())
}

fn expected_with(rel: &str, vars: &BTreeMap<&str, &str>) -> Expected {
    let rendered = gotemplate::render(&read(rel), vars);
    let mut name = None;
    let mut value = None;
    let mut labels = Vec::new();
    let mut pending: Option<String> = None;
    for line in rendered.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let unquote = |v: &str| v.trim().trim_matches('"').to_owned();
        if let Some(v) = line.strip_prefix("name: ") {
            name = Some(unquote(v));
        } else if let Some(v) = line.strip_prefix("- name: ") {
            pending = Some(unquote(v));
        } else if let Some(v) = line.strip_prefix("value: ") {
            match pending.take() {
                Some(k) => labels.push((k, unquote(v))),
                None => value = Some(unquote(v).parse::<f64>().expect("counter value")),
            }
        }
    }
    Expected {
        name: name.expect("metric name"),
        labels,
        value: value.expect("counter value"),
    }
}

fn client() -> Workload {
    node("client_node_metadata.json.tmpl", "client")
}

fn server() -> Workload {
    node("server_node_metadata.json.tmpl", "server")
}

fn service() -> DestinationService {
    DestinationService::from_fqdn("server.default.svc.cluster.local")
}

/// Runs Istio's traffic (10 connections, 6 bytes up and 12 down each) through a
/// recorder per connection and scrapes.
fn run(labels: TcpLabels) -> Parsed {
    run_with(labels, TagOverrides::none())
}

fn run_with(labels: TcpLabels, overrides: TagOverrides) -> Parsed {
    let mut registry = Registry::default();
    let metrics = TcpMetrics::new(&mut registry);
    metrics.set_overrides(overrides);
    for _ in 0..10 {
        let mut r = metrics.recorder(labels.clone());
        let bytes = r.byte_counters();
        bytes.add_received(6);
        r.resolve(labels.clone());
        bytes.add_sent(12);
        metrics.flush_all();
        r.close(None);
    }
    Parsed::scrape(&registry)
}

fn assert_matches(p: &Parsed, templates: &[&str]) {
    assert_matches_with(p, templates, &default_vars());
}

fn assert_matches_with(p: &Parsed, templates: &[&str], vars: &BTreeMap<&str, &str>) {
    for t in templates {
        let want = expected_with(&format!("metric/{t}"), vars);
        let got = p.find(&want.name, &[]);
        assert_eq!(
            got.len(),
            1,
            "{t}: one series of {}:\n{}",
            want.name,
            p.text
        );
        assert_eq!(got[0].labels, want.labels, "{t}: labels and their order");
        assert_eq!(got[0].value, want.value, "{t}: value");
    }
}

#[test]
fn client_sidecar_series() {
    let labels = TcpLabels::outbound(&client(), &server(), &service(), ResponseFlags::None);
    assert_matches(
        &run(labels),
        &[
            "tcp_client_connection_open.yaml.tmpl",
            "tcp_client_connection_close.yaml.tmpl",
            "tcp_client_received_bytes.yaml.tmpl",
            "tcp_client_sent_bytes.yaml.tmpl",
        ],
    );
}

#[test]
fn server_sidecar_series() {
    let labels = TcpLabels::inbound(
        &server(),
        &client(),
        &service(),
        SecurityPolicy::MutualTls,
        ResponseFlags::None,
    );
    assert_matches(
        &run(labels),
        &[
            "tcp_server_connection_open.yaml.tmpl",
            "tcp_server_connection_close.yaml.tmpl",
            "tcp_server_received_bytes.yaml.tmpl",
            "tcp_server_sent_bytes.yaml.tmpl",
        ],
    );
}

#[test]
fn server_sidecar_without_mx() {
    // No metadata from the peer, only its verified certificate.
    let peer = Workload {
        principal: client().principal,
        ..Workload::unknown()
    };
    let labels = TcpLabels::inbound(
        &server(),
        &peer,
        &service(),
        SecurityPolicy::MutualTls,
        ResponseFlags::None,
    );
    assert_matches(
        &run(labels),
        &["tcp_server_connection_open_without_mx.yaml.tmpl"],
    );
}

#[test]
fn every_template_is_covered() {
    let mut names: Vec<_> = std::fs::read_dir(testdata().join("metric"))
        .expect("metric dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "tcp_client_connection_close.yaml.tmpl",
            "tcp_client_connection_open.yaml.tmpl",
            "tcp_client_received_bytes.yaml.tmpl",
            "tcp_client_sent_bytes.yaml.tmpl",
            "tcp_server_connection_close.yaml.tmpl",
            "tcp_server_connection_open.yaml.tmpl",
            "tcp_server_connection_open_without_mx.yaml.tmpl",
            "tcp_server_received_bytes.yaml.tmpl",
            "tcp_server_sent_bytes.yaml.tmpl",
        ]
    );
    // Each has exactly the 23 standard labels under the default variables.
    for n in &names {
        assert_eq!(expected(&format!("metric/{n}")).labels.len(), 23, "{n}");
    }
}

/// Istio's `EnableAdditionalLabels` run: a `role` label from the downstream peer's
/// pod labels on the opened-connections metric only.
#[test]
fn additional_role_label() {
    let mut vars = default_vars();
    vars.insert("EnableAdditionalLabels", "true");
    let mut overrides = TagOverrides::none();
    overrides.set_tag(
        Some(TcpMetric::OpenedConnections),
        "role",
        TagOperation::Upsert(TagValue::DownstreamPeerLabel("role".into())),
    );
    let outbound = TcpLabels::outbound(&client(), &server(), &service(), ResponseFlags::None);
    assert_matches_with(
        &run_with(outbound, overrides.clone()),
        &[
            "tcp_client_connection_open.yaml.tmpl",
            "tcp_client_connection_close.yaml.tmpl",
            "tcp_client_received_bytes.yaml.tmpl",
            "tcp_client_sent_bytes.yaml.tmpl",
        ],
        &vars,
    );
    let inbound = TcpLabels::inbound(
        &server(),
        &client(),
        &service(),
        SecurityPolicy::MutualTls,
        ResponseFlags::None,
    );
    assert_matches_with(
        &run_with(inbound, overrides),
        &[
            "tcp_server_connection_open.yaml.tmpl",
            "tcp_server_connection_close.yaml.tmpl",
            "tcp_server_received_bytes.yaml.tmpl",
            "tcp_server_sent_bytes.yaml.tmpl",
        ],
        &vars,
    );
    let role = expected_with("metric/tcp_server_connection_open.yaml.tmpl", &vars);
    assert_eq!(role.labels.len(), 24);
}
