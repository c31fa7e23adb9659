//! What a new cluster starts with: the `default` namespace with automatic sidecar
//! injection on (Istio's `istio-injection=enabled` label, as `kubectl label namespace
//! default istio-injection=enabled` does), `istio-system`, and Prometheus as an add-on
//! (Istio's `samples/addons/prometheus.yaml` role) whose scrape targets come from the
//! cluster through Prometheus's HTTP service discovery, and Istio's ingress gateway
//! (`istio-system/istio-ingressgateway`, labels `istio: ingressgateway`), whose ports
//! 8080 and 31400 the supervisor forwards from the host.

use std::time::Duration;

use axum::extract::Query;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};

use crate::kubelet::PodTable;
use crate::netns::NODE_IP;

/// Prometheus's port in its pod.
pub const PROMETHEUS_PORT: u16 = 9090;
/// Namespace of the add-ons.
pub const ADDON_NAMESPACE: &str = "istio-system";

/// The objects applied when a cluster is created.
pub fn bootstrap_manifests() -> String {
    format!(
        r#"apiVersion: v1
kind: Namespace
metadata:
  name: default
  labels:
    istio-injection: enabled
---
apiVersion: v1
kind: Namespace
metadata:
  name: {ADDON_NAMESPACE}
---
apiVersion: v1
kind: Service
metadata:
  name: prometheus
  namespace: {ADDON_NAMESPACE}
  labels:
    app: prometheus
spec:
  ports:
  - name: http
    port: {PROMETHEUS_PORT}
  selector:
    app: prometheus
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: prometheus
  namespace: {ADDON_NAMESPACE}
  labels:
    app: prometheus
spec:
  replicas: 1
  selector:
    matchLabels:
      app: prometheus
  template:
    metadata:
      labels:
        app: prometheus
        sidecar.istio.io/inject: "false"
      annotations:
        command.weir-mesh.io/prometheus: >-
          exec prometheus --config.file="$CLUSTER_DIR/addons/prometheus.yml"
          --storage.tsdb.path="$POD_DIR/volumes/data" --storage.tsdb.retention.time=1d
          --web.listen-address=0.0.0.0:{PROMETHEUS_PORT} --web.enable-lifecycle
    spec:
      containers:
      - name: prometheus
        image: prom/prometheus
        ports:
        - containerPort: {PROMETHEUS_PORT}
      volumes:
      - name: data
        emptyDir: {{}}
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: istio-ingressgateway-service-account
  namespace: {ADDON_NAMESPACE}
---
apiVersion: v1
kind: Service
metadata:
  name: istio-ingressgateway
  namespace: {ADDON_NAMESPACE}
  labels:
    app: istio-ingressgateway
    istio: ingressgateway
spec:
  ports:
  - name: status-port
    port: 15021
    targetPort: 15021
  - name: http2
    port: 80
    targetPort: 8080
  - name: tcp
    port: 31400
    targetPort: 31400
  selector:
    istio: ingressgateway
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: istio-ingressgateway
  namespace: {ADDON_NAMESPACE}
  labels:
    app: istio-ingressgateway
    istio: ingressgateway
spec:
  replicas: 1
  selector:
    matchLabels:
      istio: ingressgateway
  template:
    metadata:
      labels:
        app: istio-ingressgateway
        istio: ingressgateway
        sidecar.istio.io/inject: "true"
    spec:
      serviceAccountName: istio-ingressgateway-service-account
      containers:
      # The gateway is weir's proxy alone: the control plane gives it the servers of
      # the Gateways whose selector matches these labels.
      - name: istio-proxy
        image: docker.io/istio/proxyv2
        ports:
        - containerPort: 8080
        - containerPort: 31400
"#
    )
}

/// Prometheus's configuration: itself, the control plane (job `istiod`) and every
/// sidecar (job `envoy-stats`, `/stats/prometheus` on :15090), the jobs of Istio's
/// documented Prometheus configuration, with targets from [`sd_router`].
pub fn prometheus_config(scrape_interval: Duration) -> String {
    let every = format!("{}s", scrape_interval.as_secs().max(1));
    format!(
        r#"# Written by weir for the local cluster; targets come from the cluster itself.
global:
  scrape_interval: {every}
  evaluation_interval: {every}
scrape_configs:
- job_name: prometheus
  static_configs:
  - targets: ['localhost:{PROMETHEUS_PORT}']
- job_name: istiod
  http_sd_configs:
  - url: http://{NODE_IP}:15014/sd/prometheus?job=istiod
    refresh_interval: {every}
- job_name: envoy-stats
  metrics_path: /stats/prometheus
  http_sd_configs:
  - url: http://{NODE_IP}:15014/sd/prometheus?job=envoy-stats
    refresh_interval: {every}
"#
    )
}

/// `?job=` of a service discovery request.
#[derive(Debug, Deserialize)]
pub struct SdQuery {
    job: Option<String>,
}

/// One target group of Prometheus's HTTP SD format.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetGroup {
    /// `host:port` targets.
    pub targets: Vec<String>,
    /// Labels of every target of the group.
    pub labels: std::collections::BTreeMap<String, String>,
}

/// The targets of `job`: `istiod` (the control plane's metrics), `envoy-stats` (every
/// ready pod with a sidecar). An unknown job has none.
pub fn targets(table: &PodTable, job: &str) -> Vec<TargetGroup> {
    match job {
        "istiod" => vec![TargetGroup {
            targets: vec![format!("{NODE_IP}:15014")],
            labels: [
                ("namespace".to_owned(), ADDON_NAMESPACE.to_owned()),
                ("app".to_owned(), "istiod".to_owned()),
            ]
            .into(),
        }],
        "envoy-stats" => table
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|p| p.sidecar && p.containers.first().is_some_and(|c| c.ready))
            .map(|p| TargetGroup {
                targets: vec![format!("{}:15090", p.ip)],
                labels: [
                    ("namespace".to_owned(), p.namespace.clone()),
                    ("pod".to_owned(), p.name.clone()),
                ]
                .into(),
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// `GET /sd/prometheus?job=NAME`: Prometheus's HTTP service discovery (JSON list of
/// target groups, `[]` when there are none).
pub fn sd_router(table: PodTable) -> axum::Router {
    axum::Router::new().route(
        "/sd/prometheus",
        axum::routing::get(move |Query(q): Query<SdQuery>| {
            let table = table.clone();
            async move {
                let Some(job) = q.job else {
                    return (
                        StatusCode::BAD_REQUEST,
                        "missing ?job=: use istiod or envoy-stats\n",
                    )
                        .into_response();
                };
                let body = serde_json::to_string(&targets(&table, &job))
                    .unwrap_or_else(|_| "[]".to_owned());
                (
                    StatusCode::OK,
                    [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
                    body,
                )
                    .into_response()
            }
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{ContainerRecord, PodRecord};
    use std::sync::{Arc, Mutex};

    fn pod(name: &str, sidecar: bool, ready: bool) -> PodRecord {
        PodRecord {
            name: name.into(),
            namespace: "default".into(),
            deployment: "d".into(),
            netns: "n".into(),
            ip: std::net::Ipv4Addr::new(10, 244, 0, 7),
            phase: "Running".into(),
            ready,
            message: None,
            sidecar,
            labels: Default::default(),
            containers: vec![ContainerRecord {
                name: "istio-proxy".into(),
                command: vec![],
                env: vec![],
                running: true,
                ready,
                restarts: 0,
                last_exit: None,
            }],
            created: 0,
        }
    }

    #[test]
    fn only_ready_sidecars_are_envoy_stats_targets() {
        let table: PodTable = Arc::new(Mutex::new(Default::default()));
        {
            let mut t = table.lock().unwrap();
            for (n, s, r) in [("a", true, true), ("b", true, false), ("c", false, true)] {
                t.insert(("default".into(), n.into()), pod(n, s, r));
            }
        }
        let json = serde_json::to_string(&targets(&table, "envoy-stats")).unwrap();
        assert_eq!(
            json,
            r#"[{"targets":["10.244.0.7:15090"],"labels":{"namespace":"default","pod":"a"}}]"#
        );
        assert_eq!(
            serde_json::to_string(&targets(&table, "istiod")).unwrap(),
            r#"[{"targets":["10.244.0.1:15014"],"labels":{"app":"istiod","namespace":"istio-system"}}]"#
        );
        assert!(targets(&table, "other").is_empty());
    }

    #[test]
    fn bootstrap_objects_parse_and_prometheus_is_not_injected() {
        let docs = config::parse_str(&bootstrap_manifests(), "bootstrap").unwrap();
        let mut set = config::ResourceSet::new();
        set.apply(docs).unwrap();
        let plans = crate::workload::plans(&set);
        assert_eq!(plans.len(), 2);
        let (gw, _) = &plans[0];
        assert_eq!(gw.deployment, "istio-ingressgateway");
        assert!(gw.sidecar && gw.containers.is_empty(), "{gw:?}");
        let (p, _) = &plans[1];
        assert_eq!(p.namespace, "istio-system");
        assert!(!p.sidecar);
        assert!(
            matches!(&p.containers[0].program, crate::workload::Program::Shell(c) if c.starts_with("exec prometheus --config.file="))
        );
    }

    #[test]
    fn the_config_names_both_jobs() {
        let c = prometheus_config(Duration::from_secs(5));
        assert!(c.contains("scrape_interval: 5s"));
        assert!(c.contains("job_name: envoy-stats\n  metrics_path: /stats/prometheus"));
        assert!(c.contains("http://10.244.0.1:15014/sd/prometheus?job=istiod"));
    }
}
