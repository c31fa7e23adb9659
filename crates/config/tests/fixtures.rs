//! Every Istio sample in the shared fixtures parses unchanged.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use config::{parse_path, Kind};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/istio")
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("fixtures missing at {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            yaml_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "yaml") {
            out.push(p);
        }
    }
}

fn counts(path: &Path) -> BTreeMap<Kind, usize> {
    let docs = parse_path(path).unwrap_or_else(|e| panic!("{}:\n{e}", path.display()));
    let mut counts = BTreeMap::new();
    for d in docs {
        *counts.entry(d.resource.kind()).or_insert(0) += 1;
    }
    counts
}

#[test]
fn every_istio_fixture_parses_unchanged() {
    let mut files = Vec::new();
    yaml_files(&fixtures(), &mut files);
    assert!(
        files.len() == 34,
        "expected the Istio fixtures, found {} files",
        files.len()
    );
    let mut failures = Vec::new();
    for file in &files {
        if file.ends_with("telemetry/telemetry-invalid.yaml") {
            continue;
        }
        if let Err(e) = parse_path(file) {
            failures.push(format!("{}:\n{e}", file.display()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

fn sample(rel: &str) -> PathBuf {
    fixtures().join(rel)
}

#[test]
fn resource_counts_of_key_files() {
    use Kind::*;
    let cases: &[(&str, &[(Kind, usize)])] = &[
        (
            "samples/bookinfo/platform/kube/bookinfo.yaml",
            &[(ServiceAccount, 4), (Service, 4), (Deployment, 6)],
        ),
        (
            "samples/bookinfo/platform/kube/bookinfo-mysql.yaml",
            &[(Secret, 1), (Service, 1), (Deployment, 1)],
        ),
        (
            "samples/bookinfo/platform/kube/bookinfo-ratings-v2.yaml",
            &[(ServiceAccount, 1), (Deployment, 1)],
        ),
        (
            "samples/bookinfo/networking/destination-rule-all.yaml",
            &[(DestinationRule, 4)],
        ),
        (
            "samples/bookinfo/networking/destination-rule-all-mtls.yaml",
            &[(DestinationRule, 4)],
        ),
        (
            "samples/bookinfo/networking/virtual-service-all-v1.yaml",
            &[(VirtualService, 4)],
        ),
        (
            "samples/bookinfo/networking/virtual-service-ratings-db.yaml",
            &[(VirtualService, 2)],
        ),
        (
            "samples/bookinfo/networking/bookinfo-gateway.yaml",
            &[(VirtualService, 1), (Gateway, 1)],
        ),
        (
            "samples/tcp-echo/tcp-echo-all-v1.yaml",
            &[(DestinationRule, 1), (VirtualService, 1), (Gateway, 1)],
        ),
        (
            "samples/tcp-echo/tcp-echo-services.yaml",
            &[(Service, 1), (Deployment, 2)],
        ),
        (
            "samples/tcp-echo/gateway-api/tcp-echo-all-v1.yaml",
            &[(Service, 2), (KubernetesGateway, 1), (TcpRoute, 1)],
        ),
        ("telemetry/telemetry-valid.yaml", &[(Telemetry, 3)]),
        (
            "telemetry/telemetry-default-selector.yaml",
            &[(Telemetry, 4)],
        ),
    ];
    for (file, expected) in cases {
        let expected: BTreeMap<Kind, usize> = expected.iter().copied().collect();
        assert_eq!(counts(&sample(file)), expected, "{file}");
    }
}

#[test]
fn fixture_values_are_read_exactly() {
    use config::model::*;
    let docs = parse_path(&sample(
        "samples/bookinfo/platform/kube/bookinfo-mysql.yaml",
    ))
    .unwrap();
    let Spec::Secret(secret) = &docs[0].resource.spec else {
        panic!("not a Secret")
    };
    assert_eq!(
        secret.value("rootpasswd").as_deref(),
        Some(&b"password"[..])
    );
    let Spec::Deployment(dep) = &docs[2].resource.spec else {
        panic!("not a Deployment")
    };
    let env = &dep.template.spec.containers[0].env[0];
    assert_eq!(env.name, "MYSQL_ROOT_PASSWORD");
    let key_ref = env
        .value_from
        .as_ref()
        .unwrap()
        .secret_key_ref
        .as_ref()
        .unwrap();
    assert_eq!(
        (key_ref.name.as_str(), key_ref.key.as_str()),
        ("mysql-credentials", "rootpasswd")
    );
    assert_eq!(
        dep.template.spec.containers[0].args,
        ["--default-authentication-plugin", "mysql_native_password"]
    );
    assert_eq!((docs[2].source.line, docs[2].source.column), (41, 1));

    let docs = parse_path(&sample(
        "samples/bookinfo/platform/kube/bookinfo-ratings-v2-mysql.yaml",
    ))
    .unwrap();
    let Spec::Deployment(dep) = &docs[0].resource.spec else {
        panic!("not a Deployment")
    };
    assert_eq!(dep.template.metadata.labels.0["version"], "v2-mysql");
    assert_eq!(docs[0].resource.name(), "ratings-v2-mysql");

    let docs = parse_path(&sample("samples/tcp-echo/tcp-echo-20-v2.yaml")).unwrap();
    let Spec::VirtualService(vs) = &docs[0].resource.spec else {
        panic!("not a VirtualService")
    };
    assert_eq!(vs.tcp[0].matches[0].port, Some(config::Port(31400)));
    let weights: Vec<(Option<&str>, Option<i32>)> = vs.tcp[0]
        .route
        .iter()
        .map(|r| (r.destination.subset.as_deref(), r.weight))
        .collect();
    assert_eq!(weights, [(Some("v1"), Some(80)), (Some("v2"), Some(20))]);
    assert_eq!(
        vs.tcp[0].route[0].destination.port.unwrap().number,
        config::Port(9000)
    );

    let docs = parse_path(&sample("telemetry/helm-extended-telemetry.yaml")).unwrap();
    let Spec::Telemetry(t) = &docs[0].resource.spec else {
        panic!("not a Telemetry")
    };
    assert_eq!(
        t.metrics[0].reporting_interval.unwrap().0,
        std::time::Duration::from_secs(10)
    );
    assert_eq!(t.metrics[0].providers[0].name, "prometheus");

    let docs = parse_path(&sample("telemetry/customize-metrics-ns-default.yaml")).unwrap();
    let Spec::Telemetry(t) = &docs[0].resource.spec else {
        panic!("not a Telemetry")
    };
    let o = &t.metrics[0].overrides[0];
    assert_eq!(
        o.selector.as_ref().unwrap().metric,
        Some(MetricName::RequestCount)
    );
    assert_eq!(
        o.tag_overrides["source_principal"].operation,
        Some(TagOperation::Remove)
    );
    assert_eq!(
        o.tag_overrides["custom_dimension"].value.as_deref(),
        Some("'test'")
    );

    let docs = parse_path(&sample(
        "samples/bookinfo/networking/destination-rule-all-mtls.yaml",
    ))
    .unwrap();
    let Spec::DestinationRule(dr) = &docs[2].resource.spec else {
        panic!("not a DestinationRule")
    };
    assert_eq!(dr.host, "ratings");
    let names: Vec<&str> = dr.subsets.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["v1", "v2", "v2-mysql", "v2-mysql-vm"]);
    assert_eq!(
        dr.traffic_policy
            .as_ref()
            .unwrap()
            .tls
            .as_ref()
            .unwrap()
            .mode,
        TlsMode::IstioMutual
    );
}

/// Istio's CRD test data: each document carries the expected error in a `_err` field that
/// Istio's test harness strips before validating. Applied unchanged, the file is rejected
/// with `_err` reported as an unknown field (what a strict kubectl does) and every CRD
/// error reported too; with `_err` stripped, exactly the four CRD errors remain.
#[test]
fn telemetry_invalid_is_rejected_with_every_error() {
    let path = sample("telemetry/telemetry-invalid.yaml");
    let file = path.display().to_string();
    let err = parse_path(&path).unwrap_err();
    let lines: Vec<String> = err
        .lines()
        .iter()
        .map(|l| l.replacen(&file, "F", 1))
        .collect();
    let unknown = |line: u32, name: &str| {
        format!("F:{line}:1: Telemetry \"{name}\": _err: unknown field `_err`; fix: remove it; valid fields here: apiVersion, kind, metadata, spec")
    };
    assert_eq!(
        lines,
        [
            unknown(1, "bad-provider"),
            "F:9:13: Telemetry \"bad-provider\": spec.metrics[0].providers[0].name: must be at least 1 character long; fix: name a provider, e.g. `prometheus`".to_string(),
            unknown(11, "bad-custom-metric"),
            "F:20:23: Telemetry \"bad-custom-metric\": spec.metrics[0].overrides[0].match.customMetric: must be at least 1 character long; fix: name the custom metric, or use `metric:` for a standard one".to_string(),
            unknown(22, "bad-tag-upsert"),
            "F:32:11: Telemetry \"bad-tag-upsert\": spec.metrics[0].overrides[0].tagOverrides.foo: value must be set when operation is UPSERT; fix: add `value: <expression>`, or use `operation: REMOVE`".to_string(),
            unknown(34, "bad-tag-remove"),
            "F:45:11: Telemetry \"bad-tag-remove\": spec.metrics[0].overrides[0].tagOverrides.foo.value: value must not be set when operation is REMOVE; fix: delete `value`, or use `operation: UPSERT`".to_string(),
        ]
    );

    // As Istio's harness does: drop the `_err:` lines, then each document fails on its own.
    let text = std::fs::read_to_string(&path).unwrap();
    let expected_by_istio: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("_err: "))
        .map(|e| e.trim_matches('"'))
        .collect();
    assert_eq!(expected_by_istio.len(), 4);
    let stripped: String = text
        .lines()
        .map(|l| if l.starts_with("_err:") { "" } else { l })
        .collect::<Vec<_>>()
        .join("\n");
    let err = config::parse_str(&stripped, "t.yaml").unwrap_err();
    assert_eq!(err.0.len(), 4);
    // Istio's wording names the field ("name in body", "customMetric in body") or states the
    // rule; ours names the same field in the path, or states the same rule.
    for (ours, istio) in err.0.iter().zip(&expected_by_istio) {
        let field = istio.split(' ').next().unwrap();
        assert!(
            ours.path.ends_with(field) || ours.message == *istio,
            "{ours} does not match Istio's `{istio}`"
        );
    }
}
