//! Applying to a ResourceSet: outcomes, kind names, analysis, and writing back out.

use std::path::{Path, PathBuf};

use config::{parse_path, parse_str, Action, Kind, ResourceSet, Severity};

fn sample(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/fixtures/istio")
        .join(rel)
}

fn apply_file(set: &mut ResourceSet, rel: &str) -> Vec<String> {
    let docs = parse_path(&sample(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    let outcomes = set.apply(docs).unwrap_or_else(|e| panic!("{rel}: {e}"));
    outcomes.iter().map(ToString::to_string).collect()
}

#[test]
fn created_configured_unchanged() {
    let mut set = ResourceSet::new();
    let lines = apply_file(&mut set, "samples/bookinfo/platform/kube/bookinfo.yaml");
    assert_eq!(lines.len(), 14);
    assert_eq!(lines[0], "service/details created");
    assert_eq!(lines[1], "serviceaccount/bookinfo-details created");
    assert_eq!(lines[2], "deployment.apps/details-v1 created");
    let lines = apply_file(
        &mut set,
        "samples/bookinfo/networking/destination-rule-all.yaml",
    );
    assert_eq!(
        lines,
        [
            "destinationrule.networking.istio.io/productpage created",
            "destinationrule.networking.istio.io/reviews created",
            "destinationrule.networking.istio.io/ratings created",
            "destinationrule.networking.istio.io/details created",
        ]
    );
    // Same content from another file: unchanged. mTLS variant: configured.
    let lines = apply_file(
        &mut set,
        "samples/bookinfo/networking/destination-rule-all.yaml",
    );
    assert!(lines.iter().all(|l| l.ends_with(" unchanged")), "{lines:?}");
    let lines = apply_file(
        &mut set,
        "samples/bookinfo/networking/destination-rule-all-mtls.yaml",
    );
    assert!(
        lines.iter().all(|l| l.ends_with(" configured")),
        "{lines:?}"
    );
    let lines = apply_file(
        &mut set,
        "samples/bookinfo/networking/virtual-service-ratings-db.yaml",
    );
    assert_eq!(
        lines,
        [
            "virtualservice.networking.istio.io/reviews created",
            "virtualservice.networking.istio.io/ratings created",
        ]
    );
    let lines = apply_file(
        &mut set,
        "samples/bookinfo/networking/virtual-service-reviews-v3.yaml",
    );
    assert_eq!(
        lines,
        ["virtualservice.networking.istio.io/reviews unchanged"]
    );
    assert_eq!(set.len(), 20);
    let outcomes = set
        .apply(
            parse_path(&sample(
                "samples/bookinfo/networking/virtual-service-all-v1.yaml",
            ))
            .unwrap(),
        )
        .unwrap();
    let actions: Vec<Action> = outcomes.iter().map(|o| o.action).collect();
    assert_eq!(
        actions,
        [
            Action::Created,
            Action::Configured,
            Action::Configured,
            Action::Created
        ]
    );
}

#[test]
fn get_and_delete_by_short_name() {
    let mut set = ResourceSet::new();
    apply_file(&mut set, "samples/bookinfo/platform/kube/bookinfo.yaml");
    apply_file(
        &mut set,
        "samples/bookinfo/networking/destination-rule-all.yaml",
    );
    for name in [
        "dr",
        "destinationrule",
        "destinationrules",
        "DestinationRule",
    ] {
        let kind = Kind::lookup(name).unwrap();
        assert_eq!(
            set.get(kind, "default", "reviews").unwrap().resource.name(),
            "reviews"
        );
    }
    let deploys: Vec<&str> = set
        .list(Kind::lookup("deploy").unwrap(), Some("default"))
        .map(|d| d.resource.name())
        .collect();
    assert_eq!(
        deploys,
        [
            "details-v1",
            "productpage-v1",
            "ratings-v1",
            "reviews-v1",
            "reviews-v2",
            "reviews-v3"
        ]
    );
    assert_eq!(set.list(Kind::lookup("sa").unwrap(), None).count(), 4);
    assert_eq!(
        set.list(Kind::lookup("svc").unwrap(), Some("other"))
            .count(),
        0
    );
    assert!(set
        .delete(Kind::DestinationRule, "default", "reviews")
        .is_some());
    assert!(set
        .delete(Kind::DestinationRule, "default", "reviews")
        .is_none());
    assert!(set
        .get(Kind::DestinationRule, "default", "reviews")
        .is_none());
}

#[test]
fn seed_scenario_analysis() {
    let mut set = ResourceSet::new();
    for f in [
        "samples/bookinfo/platform/kube/bookinfo.yaml",
        "samples/bookinfo/platform/kube/bookinfo-ratings-v2.yaml",
        "samples/bookinfo/platform/kube/bookinfo-db.yaml",
        "samples/bookinfo/networking/destination-rule-all.yaml",
        "samples/bookinfo/networking/virtual-service-ratings-db.yaml",
    ] {
        apply_file(&mut set, f);
    }
    assert_eq!(set.analyze(), []);
    // The MySQL variant: Secret, Service and Deployment; its ratings-v2-mysql pods.
    apply_file(
        &mut set,
        "samples/bookinfo/platform/kube/bookinfo-mysql.yaml",
    );
    apply_file(
        &mut set,
        "samples/bookinfo/platform/kube/bookinfo-ratings-v2-mysql.yaml",
    );
    apply_file(
        &mut set,
        "samples/bookinfo/networking/virtual-service-ratings-mysql.yaml",
    );
    assert_eq!(set.analyze(), []);
}

#[test]
fn warnings_for_missing_service_account_and_pods() {
    let mut set = ResourceSet::new();
    let text = "\
apiVersion: v1
kind: Service
metadata:
  name: ratings
spec:
  ports:
  - port: 9080
  selector:
    app: ratings
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: reviews-v1
spec:
  selector:
    matchLabels: {app: reviews}
  template:
    metadata:
      labels: {app: reviews}
    spec:
      serviceAccountName: bookinfo-reviews
      containers:
      - name: reviews
        image: reviews:1
        env:
        - name: PASSWORD
          valueFrom:
            secretKeyRef: {name: creds, key: pw}
";
    set.apply(parse_str(text, "w.yaml").unwrap()).unwrap();
    let lines: Vec<String> = set.analyze().iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        [
            "w.yaml:9:5: warning: Service \"ratings\": spec.selector: no Deployment in namespace `default` has pods labelled app=ratings; the Service has no endpoints; fix: apply the Deployment for this Service, or correct the selector",
            "w.yaml:22:27: warning: Deployment \"reviews-v1\": spec.template.spec.serviceAccountName: ServiceAccount `bookinfo-reviews` does not exist in namespace `default`; fix: apply a ServiceAccount named `bookinfo-reviews` (Kubernetes would not start these pods without it)",
            "w.yaml:29:34: warning: Deployment \"reviews-v1\": spec.template.spec.containers[0].env[0].valueFrom.secretKeyRef.name: Secret `creds` does not exist in namespace `default`; fix: apply a Secret named `creds` with key `pw`",
        ]
    );
    assert!(set
        .analyze()
        .iter()
        .all(|d| d.severity == Severity::Warning));
}

#[test]
fn conflicting_namespace_wide_telemetry_is_a_warning() {
    let mut set = ResourceSet::new();
    apply_file(&mut set, "telemetry/telemetry-default-selector.yaml");
    let diags = set.analyze();
    let conflicts: Vec<String> = diags
        .iter()
        .filter(|d| d.message.contains("no workload selector"))
        .map(|d| format!("{} {}", d.object.as_ref().unwrap().name, d.message))
        .collect();
    assert_eq!(
        conflicts,
        [
            "has-conflict-1 Telemetry objects has-conflict-1, has-conflict-2 in namespace `ns2` all have no workload selector; only one of them takes effect",
            "has-conflict-2 Telemetry objects has-conflict-1, has-conflict-2 in namespace `ns2` all have no workload selector; only one of them takes effect",
        ]
    );
}

#[test]
fn http_features_are_reported_not_ignored() {
    let mut set = ResourceSet::new();
    apply_file(&mut set, "samples/bookinfo/platform/kube/bookinfo.yaml");
    apply_file(
        &mut set,
        "samples/bookinfo/networking/destination-rule-all.yaml",
    );
    let text = "\
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata:
  name: ratings
spec:
  hosts: [ratings]
  http:
  - fault:
      delay: {percentage: {value: 100}, fixedDelay: 7s}
    retries: {attempts: 3}
    timeout: 10s
    route:
    - destination: {host: ratings, subset: v1}
";
    set.apply(parse_str(text, "f.yaml").unwrap()).unwrap();
    let lines: Vec<String> = set.analyze().iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        [
            "f.yaml:9:7: info: VirtualService \"ratings\": spec.http[0].fault: `fault` is accepted but not enforced: weir routes whole TCP connections (L4)",
            "f.yaml:10:14: info: VirtualService \"ratings\": spec.http[0].retries: `retries` is accepted but not enforced: weir routes whole TCP connections (L4)",
            "f.yaml:11:14: info: VirtualService \"ratings\": spec.http[0].timeout: `timeout` is accepted but not enforced: weir routes whole TCP connections (L4)",
        ]
    );
}

/// Every fixture writes back to YAML and JSON that parse to the same resources.
#[test]
fn round_trip_yaml_and_json() {
    let mut files = Vec::new();
    let root = sample("");
    let mut stack = vec![root];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "yaml")
                && !p.ends_with("telemetry-invalid.yaml")
            {
                files.push(p);
            }
        }
    }
    assert_eq!(files.len(), 33);
    for file in files {
        for doc in parse_path(&file).unwrap() {
            let yaml = config::to_yaml(&doc.resource).unwrap();
            let back = parse_str(&yaml, "back.yaml")
                .unwrap_or_else(|e| panic!("{}:\n{yaml}\n{e}", file.display()));
            assert_eq!(
                back[0].resource,
                doc.resource,
                "{}:\n{yaml}",
                file.display()
            );
            let json = config::to_json(&doc.resource).unwrap();
            let back = parse_str(&json, "back.json")
                .unwrap_or_else(|e| panic!("{}:\n{json}\n{e}", file.display()));
            assert_eq!(
                back[0].resource,
                doc.resource,
                "{}:\n{json}",
                file.display()
            );
        }
    }
}

#[test]
fn yaml_output_reads_like_the_input() {
    let text = "\
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata:
  name: reviews
spec:
  host: reviews
  trafficPolicy:
    loadBalancer:
      simple: RANDOM
    connectionPool:
      tcp: {maxConnections: 100, connectTimeout: 500ms}
  subsets:
  - name: v1
    labels:
      version: v1
";
    let docs = parse_str(text, "dr.yaml").unwrap();
    assert_eq!(
        config::to_json(&docs[0].resource).unwrap(),
        r#"{
  "apiVersion": "networking.istio.io/v1alpha3",
  "kind": "DestinationRule",
  "metadata": {
    "name": "reviews"
  },
  "spec": {
    "host": "reviews",
    "trafficPolicy": {
      "loadBalancer": {
        "simple": "RANDOM"
      },
      "connectionPool": {
        "tcp": {
          "maxConnections": 100,
          "connectTimeout": "0.5s"
        }
      }
    },
    "subsets": [
      {
        "name": "v1",
        "labels": {
          "version": "v1"
        }
      }
    ]
  }
}"#
    );
    let refs: Vec<&config::Resource> = docs.iter().map(|d| &d.resource).collect();
    let list = config::list_to_yaml(&refs).unwrap();
    let back = parse_str(&list, "list.yaml").unwrap();
    assert_eq!(back[0].resource, docs[0].resource);
}

/// A mirror of another store (a Kubernetes watch) takes objects in any order; what dangles
/// is reported by analysis instead of refused. Deleting never fails either.
#[test]
fn upsert_in_any_order_and_delete_leave_analysis_to_report() {
    let mut set = ResourceSet::new();
    for doc in parse_path(&sample(
        "samples/bookinfo/networking/virtual-service-ratings-db.yaml",
    ))
    .unwrap()
    {
        assert_eq!(set.upsert(doc).action, Action::Created);
    }
    let errors: Vec<String> = set
        .analyze()
        .iter()
        .filter(|d| d.is_error())
        .map(|d| format!("{}: {}", d.path, d.message))
        .collect();
    assert_eq!(
        errors,
        [
            "spec.http[0].route[0].destination.host: host `ratings` does not match any Service in namespace `default`",
            "spec.http[0].route[0].destination.subset: subset `v2` is not defined by any DestinationRule for host `ratings`; defined: none",
            "spec.http[0].route[0].destination.host: host `reviews` does not match any Service in namespace `default`",
            "spec.http[0].route[0].destination.subset: subset `v3` is not defined by any DestinationRule for host `reviews`; defined: none",
        ]
    );
    // A later apply of unrelated objects is not blocked by problems it did not cause.
    apply_file(&mut set, "samples/bookinfo/platform/kube/bookinfo.yaml");
    apply_file(
        &mut set,
        "samples/bookinfo/networking/destination-rule-all.yaml",
    );
    assert_eq!(set.analyze().iter().filter(|d| d.is_error()).count(), 0);
    // Deleting the rule leaves the route dangling; an apply that fixes nothing is still fine.
    assert!(set
        .delete(Kind::DestinationRule, "default", "ratings")
        .is_some());
    let dangling: Vec<String> = set
        .analyze()
        .iter()
        .filter(|d| d.is_error())
        .map(ToString::to_string)
        .collect();
    assert_eq!(dangling.len(), 1, "{dangling:?}");
    assert!(dangling[0].ends_with(
        "VirtualService \"ratings\": spec.http[0].route[0].destination.subset: subset `v2` is not defined by any DestinationRule for host `ratings`; defined: none; fix: apply a DestinationRule with `host: ratings` and a subset named `v2`"
    ));
    apply_file(
        &mut set,
        "samples/bookinfo/platform/kube/bookinfo-ratings-v2.yaml",
    );
}
