//! Per-proxy configuration computed from the resource store, incrementally.
//!
//! [`Mesh`] turns the Istio/Kubernetes model ([`config::ResourceSet`]) plus a registry of
//! pods into the [`xds::ProxyView`] of every connected proxy, with Istio's semantics:
//! Service selector → pods, port → targetPort, DestinationRule subsets, load balancing,
//! TLS mode with auto mTLS, connection-pool limits, VirtualService TCP routes and
//! match-less HTTP routes, PeerAuthentication and Telemetry resolved mesh → namespace →
//! workload; and for the pods an Istio Gateway selects, the Gateway's servers routed by
//! the VirtualServices bound to it (HTTP by path, TCP by port, with weights and
//! subsets).
//!
//! Work is proportional to the change: each outbound service is cached with the set of
//! hosts it depends on (itself and its route destinations), each proxy's workload settings
//! are cached per pod, and a change to one resource or pod recomputes only the entries it
//! can affect. A recomputed entry equal to the cached one keeps its `Arc`, so a proxy's
//! delta is exactly the entries that changed. What cannot be honoured at L4 or cannot be
//! resolved is kept as [`config::Diagnostic`]s ([`Mesh::diagnostics`]).
//!
//! Service VIPs: `spec.clusterIP` when set; otherwise an address from a configurable range
//! (default `10.96.0.0/16`) derived from the host name, stable across recomputes and
//! restarts (see [`VipRange`]).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use config::model::{Document, Spec};
use config::{Diagnostic, ResourceSet, Severity};
use proxy::config::{OutboundService, OutboundTrafficPolicy};
use tokio::sync::watch;
use xds::{NodeInfo, ProxyView, SubscribeError, ViewSource};

mod engine;
mod gateway;
mod index;
mod resource_checks;
mod service;
mod vip;
mod workload;

pub use vip::{VipRange, VipRangeError};

/// Mesh-wide settings (Istio `meshConfig` and install options).
#[derive(Clone, Debug)]
pub struct MeshOptions {
    /// Namespace whose selector-less PeerAuthentication and Telemetry apply mesh-wide.
    pub root_namespace: String,
    /// SPIFFE trust domain of workload identities.
    pub trust_domain: String,
    /// Where VIPs of Services without `clusterIP` come from.
    pub vip_range: VipRange,
    /// `meshConfig.outboundTrafficPolicy.mode`.
    pub traffic_policy: OutboundTrafficPolicy,
    /// Reporting interval when no Telemetry sets one (Istio `tcpReportingDuration`).
    pub reporting_interval: Duration,
}

impl Default for MeshOptions {
    fn default() -> Self {
        Self {
            root_namespace: "istio-system".to_owned(),
            trust_domain: "cluster.local".to_owned(),
            vip_range: VipRange::default(),
            traffic_policy: OutboundTrafficPolicy::AllowAny,
            reporting_interval: Duration::from_secs(15),
        }
    }
}

/// A pod instance, as the runtime that started it (or its connected proxy) knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    /// Pod name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Pod IP; a pod without one is not an endpoint yet.
    pub ip: Option<IpAddr>,
    /// Pod labels (matched by Service selectors and DestinationRule subsets).
    pub labels: BTreeMap<String, String>,
    /// Service account: the SPIFFE identity of the pod's sidecar.
    pub service_account: String,
    /// Whether the pod runs a sidecar. With auto mTLS, endpoints with a sidecar get mutual
    /// TLS and the others plaintext.
    pub sidecar: bool,
    /// Owner workload (Deployment) name; named target ports are resolved from its
    /// container ports.
    pub workload: String,
}

impl Pod {
    /// A pod of a Deployment: its template's labels and service account.
    /// `None` when `doc` is not a Deployment.
    pub fn of_deployment(
        doc: &Document,
        name: &str,
        ip: Option<IpAddr>,
        sidecar: bool,
    ) -> Option<Pod> {
        let Spec::Deployment(dep) = &doc.resource.spec else {
            return None;
        };
        Some(Pod {
            name: name.to_owned(),
            namespace: doc.resource.namespace().to_owned(),
            ip,
            labels: dep.template.metadata.labels.0.clone(),
            service_account: dep
                .template
                .spec
                .service_account_name
                .clone()
                .unwrap_or_else(|| "default".to_owned()),
            sidecar,
            workload: doc.resource.name().to_owned(),
        })
    }

    /// The pod a connected proxy announces.
    pub fn of_node(node: &NodeInfo) -> Pod {
        Pod {
            name: node.pod_name.clone(),
            namespace: node.namespace.clone(),
            ip: node.ip,
            labels: node.labels.clone(),
            service_account: node.service_account.clone(),
            sidecar: true,
            workload: node.workload_name.clone(),
        }
    }
}

/// What one update cost, for the control plane's metrics and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UpdateStats {
    /// Outbound services recomputed.
    pub services_recomputed: usize,
    /// Of those, services whose configuration changed.
    pub services_changed: usize,
    /// Workload configurations recomputed.
    pub workloads_recomputed: usize,
    /// Proxies sent a new view.
    pub proxies_notified: usize,
    /// Wall time of recompute and notification.
    pub elapsed: Duration,
}

/// The mesh's computed configuration and the live view of every connected proxy.
/// Thread-safe; every method takes `&self`.
#[derive(Debug)]
pub struct Mesh {
    engine: Mutex<engine::Engine>,
}

impl Default for Mesh {
    fn default() -> Self {
        Self::new(MeshOptions::default())
    }
}

impl Mesh {
    /// An empty mesh.
    pub fn new(options: MeshOptions) -> Self {
        Self {
            engine: Mutex::new(engine::Engine::new(options)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, engine::Engine> {
        // A panic while holding the lock leaves caches that are at worst stale for the
        // entries being recomputed; serving them beats failing every proxy.
        self.engine.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Brings the mesh in line with `set`: the objects that differ from the previous call
    /// are diffed, and only what depends on them is recomputed and pushed.
    pub fn set_resources(&self, set: &ResourceSet) -> UpdateStats {
        self.lock().set_resources(set)
    }

    /// Adds or replaces one resource (kinds the mesh does not use are ignored).
    pub fn upsert_resource(&self, doc: &Document) -> UpdateStats {
        self.lock().upsert_resource(doc)
    }

    /// Removes one resource.
    pub fn remove_resource(&self, kind: config::Kind, namespace: &str, name: &str) -> UpdateStats {
        self.lock().remove_resource(kind, namespace, name)
    }

    /// Registers or updates a pod.
    pub fn upsert_pod(&self, pod: Pod) -> UpdateStats {
        self.lock().upsert_pods(vec![pod])
    }

    /// Registers or updates many pods with one recompute.
    pub fn upsert_pods(&self, pods: impl IntoIterator<Item = Pod>) -> UpdateStats {
        self.lock().upsert_pods(pods.into_iter().collect())
    }

    /// Removes a pod registration (a connected proxy keeps its own registration).
    pub fn remove_pod(&self, namespace: &str, name: &str) -> UpdateStats {
        self.lock().remove_pod(namespace, name)
    }

    /// The outbound configuration of a service by host name (FQDN), as every proxy sees it.
    pub fn service(&self, host: &str) -> Option<Arc<OutboundService>> {
        self.lock().service(host)
    }

    /// Every outbound service, by host name.
    pub fn services(&self) -> Arc<xds::ServiceMap> {
        self.lock().services()
    }

    /// The view a proxy of this pod gets (computed on demand when no proxy is connected).
    pub fn view_of(&self, pod: &Pod) -> ProxyView {
        self.lock().view_of(pod)
    }

    /// Number of connected proxies.
    pub fn proxies(&self) -> usize {
        self.lock().proxy_count()
    }

    /// The cost of the last update.
    pub fn last_update(&self) -> UpdateStats {
        self.lock().last_update()
    }

    /// What could not be honoured at L4 or resolved, with the resource, field and fix;
    /// errors first, then warnings, then notes, each ordered by source position.
    pub fn diagnostics(&self) -> Vec<Diagnostic> {
        self.lock().diagnostics()
    }
}

impl ViewSource for Mesh {
    fn subscribe(
        &self,
        node: &NodeInfo,
    ) -> Result<watch::Receiver<Arc<ProxyView>>, SubscribeError> {
        self.lock().subscribe(node)
    }

    fn unsubscribe(&self, node: &NodeInfo) {
        self.lock().unsubscribe(node);
    }
}

/// A diagnostic about a field of a resource.
pub(crate) fn diagnostic(
    doc: &Document,
    path: &str,
    severity: Severity,
    message: String,
    fix: Option<String>,
) -> Diagnostic {
    let d = Diagnostic::error(doc.position(path), message)
        .with_severity(severity)
        .with_object(Some(doc.resource.object_ref()))
        .with_path(path);
    match fix {
        Some(fix) => d.with_fix(fix),
        None => d,
    }
}
