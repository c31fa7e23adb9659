use super::*;

const FULL: &str = r#"
node:
  podName: ratings-v2-6d9f
  namespace: default
  workloadName: ratings-v2
  serviceAccount: bookinfo-ratings-v2
  trustDomain: cluster.local
  clusterId: Kubernetes
  ip: 10.44.0.5
  labels: {app: ratings, version: v2}
tls:
  certDir: /var/run/weir/certs/ratings
inbound:
  listen: 0.0.0.0:15006
  mode: STRICT
  ports:
    - port: 9080
      service: {name: ratings, namespace: default}
outbound:
  listen: 127.0.0.1:15001
  trafficPolicy: REGISTRY_ONLY
  services:
    - name: mysqldb
      namespace: default
      addresses: [10.96.0.12]
      loadBalancer: ROUND_ROBIN
      ports:
        - port: 3306
          listen: 127.0.0.1:13306
          endpoints:
            - address: 10.44.0.9:3306
              tls: ISTIO_MUTUAL
              identity: spiffe://cluster.local/ns/default/sa/mysqldb
            - address: 10.44.0.10:3306
              tls: DISABLE
reporting:
  interval: 10s
limits:
  connectTimeout: 500ms
  mxMaxFrameBytes: 4096
  mxTimeout: 2s
  drainTimeout: 1m
admin: {listen: 127.0.0.1:15000}
stats: {listen: 0.0.0.0:15090}
readiness: {listen: 0.0.0.0:15021}
capture: {mark: 1337}
"#;

fn yaml(text: &str) -> Result<ProxyConfig, ConfigError> {
    ProxyConfig::from_str_named(text, Format::Yaml, "test.yaml")
}

#[test]
fn full_example_parses_with_every_field() {
    let c = yaml(FULL).unwrap();
    assert_eq!(c.node.pod(), "ratings-v2-6d9f");
    assert_eq!(
        c.node.spiffe_id(),
        "spiffe://cluster.local/ns/default/sa/bookinfo-ratings-v2"
    );
    assert_eq!(c.node.labels["version"], "v2");
    assert_eq!(c.inbound.mode, InboundMode::Strict);
    assert_eq!(
        c.inbound.ports[0].target_addr(),
        "127.0.0.1:9080".parse().unwrap()
    );
    assert_eq!(
        c.inbound.ports[0].service.as_ref().unwrap().fqdn(),
        "ratings.default.svc.cluster.local"
    );
    assert_eq!(
        c.outbound.traffic_policy,
        OutboundTrafficPolicy::RegistryOnly
    );
    let port = &c.outbound.services[0].ports[0];
    assert_eq!(port.endpoints[1].tls, EndpointTls::Disable);
    assert_eq!(c.reporting.interval, Duration::from_secs(10));
    assert_eq!(c.limits.connect_timeout, Duration::from_millis(500));
    assert_eq!(c.limits.drain_timeout, Duration::from_secs(60));
    assert_eq!(c.limits.mx_max_frame_bytes, 4096);
    assert_eq!(c.capture.mark, Some(1337));
    assert_eq!(
        c.tls.as_ref().unwrap().poll_interval,
        Duration::from_secs(1)
    );
}

#[test]
fn json_and_yaml_round_trip_to_the_same_value() {
    let c = yaml(FULL).unwrap();
    let json = c.to_json();
    let back = ProxyConfig::from_str_named(&json, Format::Json, "dump.json").unwrap();
    assert_eq!(back, c);
}

#[test]
fn minimal_defaults() {
    let c = yaml("node: {namespace: default, workloadName: productpage-v1}\n").unwrap();
    assert_eq!(c.node.service_account, "default");
    assert_eq!(c.node.cluster_id, "Kubernetes");
    assert_eq!(c.inbound.mode, InboundMode::Permissive);
    assert_eq!(c.reporting.interval, Duration::from_secs(15));
    assert_eq!(c.limits.connect_timeout, Duration::from_secs(5));
    assert_eq!(c.limits.mx_max_frame_bytes, 65536);
    assert_eq!(c.admin.listen, "127.0.0.1:15000".parse().unwrap());
    assert_eq!(c.stats.listen, "0.0.0.0:15090".parse().unwrap());
    assert_eq!(c.readiness.listen, "0.0.0.0:15021".parse().unwrap());
    ProxyConfig::minimal("default", "x")
        .validate("minimal")
        .unwrap();
}

fn invalid_field(result: Result<ProxyConfig, ConfigError>) -> (String, String) {
    match result {
        Err(ConfigError::Invalid {
            field, value, fix, ..
        }) => {
            assert!(!fix.is_empty());
            (field, value)
        }
        other => panic!("expected a validation error, got {other:?}"),
    }
}

#[test]
fn unknown_field_is_a_parse_error_naming_it() {
    let err = yaml("node: {namespace: default, workloadName: a, colour: blue}\n").unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, ConfigError::Parse { .. }));
    assert!(text.contains("test.yaml"), "{text}");
    assert!(text.contains("colour"), "{text}");
}

#[test]
fn bad_duration_names_the_format() {
    let err = yaml("node: {namespace: default, workloadName: a}\nreporting: {interval: 15}\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("\"15s\""), "{err}");
}

#[test]
fn mutual_tls_endpoint_needs_identity_and_certs() {
    let base = "node: {namespace: default, workloadName: a}\n";
    let no_certs = format!(
        "{base}outbound:\n  services:\n  - name: b\n    namespace: default\n    ports:\n    - port: 80\n      endpoints: [{{address: 127.0.0.1:8080}}]\n"
    );
    let (field, value) = invalid_field(yaml(&no_certs));
    assert_eq!(field, "outbound.services[0].ports[0].endpoints[0].tls");
    assert_eq!(value, "ISTIO_MUTUAL");

    let no_id = format!("{base}tls: {{certDir: /tmp}}\n{}", &no_certs[base.len()..]);
    let (field, _) = invalid_field(yaml(&no_id));
    assert_eq!(field, "outbound.services[0].ports[0].endpoints[0].identity");

    let bad_id = no_id.replace(
        "{address: 127.0.0.1:8080}",
        "{address: 127.0.0.1:8080, identity: cluster.local/ns/default/sa/b}",
    );
    let (field, value) = invalid_field(yaml(&bad_id));
    assert_eq!(field, "outbound.services[0].ports[0].endpoints[0].identity");
    assert_eq!(value, "cluster.local/ns/default/sa/b");
}

#[test]
fn inbound_mtls_without_certs_is_refused() {
    let text = "node: {namespace: default, workloadName: a}\ninbound: {listen: 127.0.0.1:15006, mode: STRICT}\n";
    let (field, value) = invalid_field(yaml(text));
    assert_eq!((field.as_str(), value.as_str()), ("inbound.mode", "STRICT"));
}

#[test]
fn clashing_listeners_are_refused() {
    let text = "node: {namespace: default, workloadName: a}\nstats: {listen: 127.0.0.1:15000}\n";
    let (field, value) = invalid_field(yaml(text));
    assert_eq!(field, "stats.listen");
    assert_eq!(value, "127.0.0.1:15000");
}

#[test]
fn admin_must_be_loopback() {
    let text = "node: {namespace: default, workloadName: a}\nadmin: {listen: 0.0.0.0:15000}\n";
    let (field, _) = invalid_field(yaml(text));
    assert_eq!(field, "admin.listen");
}

#[test]
fn limits_are_checked() {
    let base = "node: {namespace: default, workloadName: a}\n";
    for (limits, field) in [
        ("{connectTimeout: 0s}", "limits.connectTimeout"),
        ("{connectAttempts: 0}", "limits.connectAttempts"),
        ("{mxMaxFrameBytes: 4}", "limits.mxMaxFrameBytes"),
        ("{maxConnections: 0}", "limits.maxConnections"),
    ] {
        let (got, _) = invalid_field(yaml(&format!("{base}limits: {limits}\n")));
        assert_eq!(got, field);
    }
}

#[test]
fn missing_file_names_the_path() {
    let err = ProxyConfig::from_file(Path::new("/nonexistent/weir.yaml")).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/weir.yaml"));
}

#[test]
fn shipped_examples_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/two-sidecars");
    let server = ProxyConfig::from_file(&dir.join("server.yaml")).unwrap();
    let client = ProxyConfig::from_file(&dir.join("client.yaml")).unwrap();
    let server_listen = server.inbound.ports[0].listen.unwrap();
    let endpoint = &client.outbound.services[0].ports[0].endpoints[0];
    assert_eq!(endpoint.address, server_listen);
    assert_eq!(
        endpoint.identity.as_deref(),
        Some(server.node.spiffe_id().as_str())
    );
}

const ROUTED: &str = r#"
node: {namespace: default, workloadName: productpage-v1}
outbound:
  services:
  - name: reviews
    namespace: default
    addresses: [10.96.0.20]
    ports:
    - port: 9080
      maxConnections: 100
      connectTimeout: 250ms
      routes:
      - weight: 80
        destination: {name: reviews, namespace: default}
        subset: v1
        endpoints: [{address: "10.44.1.1:9080", tls: DISABLE}]
      - weight: 20
        destination: {name: reviews, namespace: default}
        subset: v3
        loadBalancer: LEAST_REQUEST
        endpoints: [{address: "10.44.1.3:9080", tls: DISABLE}]
telemetry:
  overrides:
  - metric: TCP_OPENED_CONNECTIONS
    tagOverrides:
      request_protocol: {operation: REMOVE}
      team: {value: "'db'"}
"#;

#[test]
fn routes_and_overrides_parse() {
    let c = yaml(ROUTED).unwrap();
    let port = &c.outbound.services[0].ports[0];
    assert_eq!(port.max_connections, Some(100));
    assert_eq!(port.connect_timeout, Some(Duration::from_millis(250)));
    assert_eq!(port.routes.len(), 2);
    assert_eq!(port.routes[0].weight, 80);
    assert_eq!(
        port.routes[1].load_balancer,
        Some(LoadBalancer::LeastRequest)
    );
    assert_eq!(port.routes[1].subset.as_deref(), Some("v3"));
    assert_eq!(c.telemetry.overrides[0].tag_overrides.len(), 2);
}

/// `ROUTED` with one text replaced; the replacement must apply.
fn routed_with(from: &str, to: &str) -> Result<ProxyConfig, ConfigError> {
    assert!(ROUTED.contains(from), "{from}");
    yaml(&ROUTED.replacen(from, to, 1))
}

#[test]
fn route_rules_are_checked() {
    let p = "outbound.services[0].ports[0]";
    let cases = [
        (
            ("weight: 80", "weight: 0"),
            ("weight: 20", "weight: 0"),
            format!("{p}.routes[*].weight"),
            "[0, 0]",
        ),
        (
            ("maxConnections: 100", "maxConnections: 0"),
            ("", ""),
            format!("{p}.maxConnections"),
            "0",
        ),
        (
            ("connectTimeout: 250ms", "connectTimeout: 0s"),
            ("", ""),
            format!("{p}.connectTimeout"),
            "0s",
        ),
        (
            (
                "subset: v1\n",
                "subset: v1\n        unresolved: no subset v1\n",
            ),
            ("", ""),
            format!("{p}.routes[0].unresolved"),
            "no subset v1",
        ),
        (
            (
                "{name: reviews, namespace: default}\n        subset: v3",
                "{name: Reviews, namespace: default}\n        subset: v3",
            ),
            ("", ""),
            format!("{p}.routes[1].destination.name"),
            "Reviews",
        ),
        (
            (
                "address: \"10.44.1.3:9080\", tls: DISABLE",
                "address: \"10.44.1.3:9080\"",
            ),
            ("", ""),
            format!("{p}.routes[1].endpoints[0].tls"),
            "ISTIO_MUTUAL",
        ),
    ];
    for ((a, b), (c, d), field, value) in cases {
        let text = ROUTED.replacen(a, b, 1).replacen(c, d, 1);
        assert_ne!(text, ROUTED);
        let got = invalid_field(yaml(&text));
        assert_eq!((got.0.as_str(), got.1.as_str()), (field.as_str(), value));
    }
    // An unresolved route without endpoints is fine: it refuses with NC.
    let ok = routed_with(
        "subset: v1\n        endpoints: [{address: \"10.44.1.1:9080\", tls: DISABLE}]",
        "subset: v1\n        unresolved: no subset v1 in the DestinationRule",
    )
    .unwrap();
    assert!(ok.outbound.services[0].ports[0].routes[0]
        .unresolved
        .is_some());
}

#[test]
fn telemetry_overrides_are_checked() {
    let err = routed_with("metric: TCP_OPENED_CONNECTIONS", "metric: TCP_OPENED").unwrap_err();
    assert_eq!(
        err.to_string(),
        "test.yaml: field `telemetry.overrides[0].metric` = \"TCP_OPENED\": is not a Telemetry API metric; fix: use ALL_METRICS, TCP_OPENED_CONNECTIONS, TCP_CLOSED_CONNECTIONS, TCP_SENT_BYTES or TCP_RECEIVED_BYTES (HTTP metrics REQUEST_COUNT, REQUEST_DURATION, REQUEST_SIZE, RESPONSE_SIZE, GRPC_REQUEST_MESSAGES, GRPC_RESPONSE_MESSAGES are accepted and ignored)"
    );
    let err = routed_with("value: \"'db'\"", "value: request.host").unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "test.yaml: field `telemetry.overrides[0].tagOverrides[\"team\"].value` = \"request.host\": is not a supported expression; fix: use {}",
            crate::sidecar::overrides::SUPPORTED_VALUES
        )
    );
    // HTTP metrics are accepted (and have no effect).
    routed_with("metric: TCP_OPENED_CONNECTIONS", "metric: REQUEST_COUNT").unwrap();
}

#[test]
fn documented_route_and_telemetry_examples_are_valid() {
    let doc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/proxy-config.md"),
    )
    .unwrap();
    let blocks: Vec<&str> = doc
        .split("```yaml\n")
        .skip(1)
        .filter_map(|b| b.split_once("```").map(|(yaml, _)| yaml))
        .filter(|b| b.starts_with("outbound:\n") || b.starts_with("telemetry:\n"))
        .collect();
    assert_eq!(blocks.len(), 2, "the outbound and telemetry examples");
    let head = "node: {namespace: default, workloadName: productpage-v1}\ntls: {certDir: /certs}\ninbound: {mode: DISABLE}\n";
    for block in blocks {
        let c = yaml(&format!("{head}{block}")).unwrap_or_else(|e| panic!("{e}\n{block}"));
        if block.starts_with("outbound") {
            let routes = &c.outbound.services[0].ports[0].routes;
            assert_eq!(
                routes.iter().map(|r| r.weight).collect::<Vec<_>>(),
                [80, 20, 0]
            );
        } else {
            assert_eq!(c.telemetry.overrides.len(), 3);
            crate::sidecar::overrides::tag_overrides(&c.telemetry).unwrap();
        }
    }
}
