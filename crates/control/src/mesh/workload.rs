//! A proxy's own settings: the ports its workload serves, PeerAuthentication and Telemetry
//! resolved workload → namespace → mesh root namespace.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use config::model::{Document, LabelSelector, MtlsMode, Spec, TagOperation, WorkloadMode};
use proxy::config::{
    InboundMode, InboundPort, MetricOverride, ServiceRef, TagOperationKind, TagOverride,
    TelemetryConfig,
};
use xds::WorkloadConfig;

use super::index::{selects, service_selector, Key, Snapshot};
use super::{MeshOptions, Pod};

/// The scope of a PeerAuthentication or Telemetry.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    Mesh,
    Namespace,
    Workload,
}

fn effective_selector(selector: Option<&LabelSelector>) -> Option<&LabelSelector> {
    selector.filter(|s| !s.match_labels.0.is_empty())
}

/// The policies of one kind that apply to `pod`, least specific first. Within a level the
/// first by name is taken, as Istio takes the oldest.
fn applicable<'a>(
    docs: &'a BTreeMap<Key, Arc<Document>>,
    opts: &MeshOptions,
    pod: &Pod,
    selector_of: fn(&Document) -> Option<&LabelSelector>,
) -> Vec<(Level, &'a Arc<Document>)> {
    let mut best: BTreeMap<Level, &'a Arc<Document>> = BTreeMap::new();
    for ((ns, _), doc) in docs {
        let selector = effective_selector(selector_of(doc));
        let level = match selector {
            Some(s) if *ns == pod.namespace && s.matches(&pod.labels) => Level::Workload,
            Some(_) => continue,
            None if *ns == pod.namespace => Level::Namespace,
            None if *ns == opts.root_namespace => Level::Mesh,
            None => continue,
        };
        best.entry(level).or_insert(doc);
    }
    best.into_iter().collect()
}

/// The scope a PeerAuthentication or Telemetry affects: `None` for the whole mesh.
pub(crate) enum Scope<'a> {
    Mesh,
    Namespace(&'a str),
    Selected(&'a str, &'a LabelSelector),
}

pub(crate) fn scope_of<'a>(doc: &'a Document, opts: &MeshOptions) -> Scope<'a> {
    let ns = doc.resource.namespace();
    let selector = match &doc.resource.spec {
        Spec::PeerAuthentication(pa) => pa.selector.as_ref(),
        Spec::Telemetry(t) => t.selector.as_ref(),
        _ => None,
    };
    match effective_selector(selector) {
        Some(s) => Scope::Selected(ns, s),
        None if ns == opts.root_namespace => Scope::Mesh,
        None => Scope::Namespace(ns),
    }
}

fn pa_selector(doc: &Document) -> Option<&LabelSelector> {
    match &doc.resource.spec {
        Spec::PeerAuthentication(pa) => pa.selector.as_ref(),
        _ => None,
    }
}

fn telemetry_selector(doc: &Document) -> Option<&LabelSelector> {
    match &doc.resource.spec {
        Spec::Telemetry(t) => t.selector.as_ref(),
        _ => None,
    }
}

/// The workload settings of `pod`.
pub(crate) fn compute(snap: &Snapshot, opts: &MeshOptions, pod: &Pod) -> WorkloadConfig {
    WorkloadConfig {
        inbound_mode: inbound_mode(snap, opts, pod),
        inbound_ports: inbound_ports(snap, pod),
        traffic_policy: opts.traffic_policy,
        reporting_interval: reporting_interval(snap, opts, pod),
        telemetry: telemetry(snap, opts, pod),
        gateway: super::gateway::compute(snap, opts, pod),
    }
}

fn inbound_ports(snap: &Snapshot, pod: &Pod) -> Vec<InboundPort> {
    // Keyed by the target port: that is the original destination the inbound side sees.
    let mut by_port: BTreeMap<u16, InboundPort> = BTreeMap::new();
    for ((ns, name), doc) in snap.services_in(&pod.namespace) {
        if !selects(service_selector(doc), &pod.labels) {
            continue;
        }
        let Spec::Service(svc) = &doc.resource.spec else {
            continue;
        };
        for port in svc
            .ports
            .iter()
            .filter(|p| matches!(p.protocol, None | Some(config::model::Protocol::Tcp)))
        {
            let Some(target) = super::service::target_port_of(snap, port, pod) else {
                continue;
            };
            by_port.entry(target).or_insert_with(|| InboundPort {
                port: target,
                target: Some(SocketAddr::from(([127, 0, 0, 1], target))),
                listen: None,
                service: Some(ServiceRef {
                    name: name.clone(),
                    namespace: ns.clone(),
                    hostname: None,
                }),
            });
        }
    }
    by_port.into_values().collect()
}

fn inbound_mode(snap: &Snapshot, opts: &MeshOptions, pod: &Pod) -> InboundMode {
    // Most specific first; UNSET inherits from the next level.
    for (_, doc) in applicable(&snap.peer_authentications, opts, pod, pa_selector)
        .into_iter()
        .rev()
    {
        let Spec::PeerAuthentication(pa) = &doc.resource.spec else {
            continue;
        };
        match pa.mtls.map(|m| m.mode) {
            Some(MtlsMode::Strict) => return InboundMode::Strict,
            Some(MtlsMode::Permissive) => return InboundMode::Permissive,
            Some(MtlsMode::Disable) => return InboundMode::Disable,
            Some(MtlsMode::Unset) | None => {}
        }
    }
    InboundMode::Permissive
}

/// The `metrics` entries of the Telemetry objects for `pod`, least specific first, that
/// address the Prometheus provider (no `providers` means the default, Prometheus).
fn prometheus_metrics<'a>(
    snap: &'a Snapshot,
    opts: &MeshOptions,
    pod: &Pod,
) -> Vec<&'a config::model::Metrics> {
    applicable(&snap.telemetries, opts, pod, telemetry_selector)
        .into_iter()
        .filter_map(|(_, doc)| match &doc.resource.spec {
            Spec::Telemetry(t) => Some(&t.metrics),
            _ => None,
        })
        .flatten()
        .filter(|m| m.providers.is_empty() || m.providers.iter().any(|p| p.name == "prometheus"))
        .collect()
}

fn reporting_interval(snap: &Snapshot, opts: &MeshOptions, pod: &Pod) -> std::time::Duration {
    prometheus_metrics(snap, opts, pod)
        .into_iter()
        .rev()
        .find_map(|m| m.reporting_interval.map(|d| d.0))
        .unwrap_or(opts.reporting_interval)
}

fn telemetry(snap: &Snapshot, opts: &MeshOptions, pod: &Pod) -> TelemetryConfig {
    let mut overrides = Vec::new();
    for m in prometheus_metrics(snap, opts, pod) {
        for o in &m.overrides {
            let selector = o.selector.clone().unwrap_or_default();
            // Per-reporter overrides and custom metrics cannot be expressed to the proxy;
            // they are reported as not honoured.
            if selector.custom_metric.is_some()
                || selector
                    .mode
                    .is_some_and(|m| m != WorkloadMode::ClientAndServer)
            {
                continue;
            }
            overrides.push(MetricOverride {
                metric: selector
                    .metric
                    .map_or_else(|| "ALL_METRICS".to_owned(), |m| m.as_str().to_owned()),
                disabled: o.disabled,
                tag_overrides: o
                    .tag_overrides
                    .iter()
                    .map(|(k, t)| {
                        (
                            k.clone(),
                            TagOverride {
                                operation: match t.operation {
                                    Some(TagOperation::Remove) => TagOperationKind::Remove,
                                    Some(TagOperation::Upsert) | None => TagOperationKind::Upsert,
                                },
                                value: t.value.clone(),
                            },
                        )
                    })
                    .collect(),
            });
        }
    }
    TelemetryConfig {
        enabled: true,
        overrides,
    }
}
