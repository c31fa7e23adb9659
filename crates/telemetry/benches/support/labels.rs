//! The workloads and label sets the benchmarks record: Istio's Bookinfo names, with
//! the labels and identity a sidecar would report.

use telemetry::{DestinationService, ResponseFlags, SecurityPolicy, TcpLabels, Workload};

pub fn workload(name: &str) -> Workload {
    Workload {
        name: name.into(),
        namespace: "default".into(),
        cluster: "Kubernetes".into(),
        labels: [
            ("app".to_string(), name.to_string()),
            ("version".to_string(), "v1".to_string()),
        ]
        .into(),
        principal: Some(format!("spiffe://cluster.local/ns/default/sa/{name}")),
    }
}

/// The inbound label set of `local` (serving ratings) for a connection from `peer`.
pub fn labels(local: &Workload, peer: &str) -> TcpLabels {
    TcpLabels::inbound(
        local,
        &workload(peer),
        &DestinationService::from_fqdn("ratings.default.svc.cluster.local"),
        SecurityPolicy::MutualTls,
        ResponseFlags::None,
    )
}
