//! The inputs of the computation, indexed for the questions it asks: which pods a selector
//! picks, which DestinationRules and VirtualServices name a host.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use config::analyze::CLUSTER_DOMAIN;
use config::model::{Document, Spec};
use config::resolve_host;

use super::Pod;

/// `(namespace, name)`.
pub(crate) type Key = (String, String);

/// The FQDN of a Service.
pub(crate) fn fqdn(namespace: &str, name: &str) -> String {
    format!("{name}.{namespace}.{CLUSTER_DOMAIN}")
}

/// True when a host pattern (`*`, `*.suffix` or a full name) covers `host`.
pub(crate) fn host_matches(pattern: &str, host: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_prefix('*') {
        Some(suffix) => host.ends_with(suffix),
        None => pattern == host,
    }
}

/// A pod as registered by the runtime and by its connected proxy.
#[derive(Debug, Default)]
pub(crate) struct PodEntry {
    pub declared: Option<Pod>,
    pub proxy: Option<Pod>,
}

impl PodEntry {
    /// The pod as the mesh sees it: the runtime's registration, marked as having a
    /// sidecar when its proxy is connected.
    pub fn effective(&self) -> Option<Pod> {
        match (&self.declared, &self.proxy) {
            (Some(d), proxy) => {
                let mut pod = d.clone();
                if let Some(p) = proxy {
                    pod.sidecar = true;
                    pod.ip = pod.ip.or(p.ip);
                }
                Some(pod)
            }
            (None, Some(p)) => Some(p.clone()),
            (None, None) => None,
        }
    }
}

/// A resource by its `(namespace, name)`, with the resolved host patterns it names.
#[derive(Debug, Default)]
pub(crate) struct HostIndexed {
    pub docs: BTreeMap<Key, Arc<Document>>,
    /// Resolved host (or wildcard pattern) → resources naming it.
    pub by_host: BTreeMap<String, BTreeSet<Key>>,
    /// The wildcard patterns among `by_host`'s keys.
    pub wildcards: BTreeSet<String>,
}

impl HostIndexed {
    fn hosts_of(doc: &Document) -> Vec<String> {
        let ns = doc.resource.namespace();
        match &doc.resource.spec {
            Spec::DestinationRule(dr) => vec![resolve_host(&dr.host, ns)],
            Spec::VirtualService(vs) => vs.hosts.iter().map(|h| resolve_host(h, ns)).collect(),
            _ => Vec::new(),
        }
    }

    /// Replaces (or removes, with `None`) a resource; returns the host patterns of the old
    /// and new versions.
    pub fn set(&mut self, key: &Key, doc: Option<Arc<Document>>) -> BTreeSet<String> {
        let mut touched = BTreeSet::new();
        if let Some(old) = self.docs.remove(key) {
            for host in Self::hosts_of(&old) {
                if let Some(set) = self.by_host.get_mut(&host) {
                    set.remove(key);
                    if set.is_empty() {
                        self.by_host.remove(&host);
                        self.wildcards.remove(&host);
                    }
                }
                touched.insert(host);
            }
        }
        if let Some(new) = doc {
            for host in Self::hosts_of(&new) {
                if host.contains('*') {
                    self.wildcards.insert(host.clone());
                }
                self.by_host
                    .entry(host.clone())
                    .or_default()
                    .insert(key.clone());
                touched.insert(host);
            }
            self.docs.insert(key.clone(), new);
        }
        touched
    }

    /// Resources naming exactly `host`, then (when none) those whose wildcard covers it,
    /// the most specific pattern first.
    pub fn for_host(&self, host: &str) -> Vec<&Arc<Document>> {
        let exact: Vec<&Arc<Document>> = self
            .by_host
            .get(host)
            .into_iter()
            .flatten()
            .filter_map(|k| self.docs.get(k))
            .collect();
        if !exact.is_empty() {
            return exact;
        }
        let mut patterns: Vec<&String> = self
            .wildcards
            .iter()
            .filter(|p| host_matches(p, host))
            .collect();
        patterns.sort_by_key(|p| std::cmp::Reverse(p.len()));
        patterns
            .into_iter()
            .flat_map(|p| self.by_host.get(p).into_iter().flatten())
            .filter_map(|k| self.docs.get(k))
            .collect()
    }
}

/// Everything the mesh computes from.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    pub services: BTreeMap<Key, Arc<Document>>,
    pub deployments: BTreeMap<Key, Arc<Document>>,
    pub destination_rules: HostIndexed,
    pub virtual_services: HostIndexed,
    pub peer_authentications: BTreeMap<Key, Arc<Document>>,
    pub telemetries: BTreeMap<Key, Arc<Document>>,
    /// Istio Gateways.
    pub gateways: BTreeMap<Key, Arc<Document>>,
    pub pods: BTreeMap<Key, PodEntry>,
    /// The effective pods (see [`PodEntry::effective`]).
    pub live_pods: BTreeMap<Key, Pod>,
    /// `(namespace, label, value)` → pod names, for selector lookups.
    label_index: BTreeMap<(String, String, String), BTreeSet<String>>,
}

impl Snapshot {
    /// Recomputes the effective pod of `key`; returns the old and new versions.
    pub fn refresh_pod(&mut self, key: &Key) -> (Option<Pod>, Option<Pod>) {
        let new = self.pods.get(key).and_then(PodEntry::effective);
        if self
            .pods
            .get(key)
            .is_some_and(|e| e.declared.is_none() && e.proxy.is_none())
        {
            self.pods.remove(key);
        }
        let old = self.live_pods.remove(key);
        if let Some(old) = &old {
            for (k, v) in &old.labels {
                let ik = (key.0.clone(), k.clone(), v.clone());
                if let Some(set) = self.label_index.get_mut(&ik) {
                    set.remove(&key.1);
                    if set.is_empty() {
                        self.label_index.remove(&ik);
                    }
                }
            }
        }
        if let Some(new) = &new {
            for (k, v) in &new.labels {
                self.label_index
                    .entry((key.0.clone(), k.clone(), v.clone()))
                    .or_default()
                    .insert(key.1.clone());
            }
            self.live_pods.insert(key.clone(), new.clone());
        }
        (old, new)
    }

    /// Pods of `namespace` carrying every label of `selector` (none for an empty selector,
    /// as Kubernetes gives a selector-less Service no endpoints), in name order.
    pub fn pods_selected<'a>(
        &'a self,
        namespace: &'a str,
        selector: &'a BTreeMap<String, String>,
    ) -> impl Iterator<Item = &'a Pod> + 'a {
        // The rarest label narrows the candidates; the others are checked per pod.
        let candidates = selector
            .iter()
            .map(|(k, v)| {
                self.label_index
                    .get(&(namespace.to_owned(), k.clone(), v.clone()))
            })
            .min_by_key(|set| set.map_or(0, BTreeSet::len))
            .flatten();
        candidates
            .into_iter()
            .flatten()
            .filter_map(move |name| self.live_pods.get(&(namespace.to_owned(), name.clone())))
            .filter(move |pod| selector.iter().all(|(k, v)| pod.labels.get(k) == Some(v)))
    }

    /// Services of one namespace, in name order.
    pub fn services_in<'a>(
        &'a self,
        namespace: &'a str,
    ) -> impl Iterator<Item = (&'a Key, &'a Arc<Document>)> + 'a {
        self.services
            .range((namespace.to_owned(), String::new())..)
            .take_while(move |(k, _)| k.0 == namespace)
    }

    /// Live pods of one namespace, in name order.
    pub fn pods_in<'a>(&'a self, namespace: &'a str) -> impl Iterator<Item = &'a Pod> + 'a {
        self.live_pods
            .range((namespace.to_owned(), String::new())..)
            .take_while(move |(k, _)| k.0 == namespace)
            .map(|(_, p)| p)
    }

    /// Host names of every Service covered by a host pattern.
    pub fn service_hosts_matching(&self, pattern: &str) -> Vec<String> {
        if !pattern.contains('*') {
            return vec![pattern.to_owned()];
        }
        self.services
            .keys()
            .map(|(ns, name)| fqdn(ns, name))
            .filter(|h| host_matches(pattern, h))
            .collect()
    }
}

/// The selector of a Service (empty when it has none).
pub(crate) fn service_selector(doc: &Document) -> Option<&BTreeMap<String, String>> {
    match &doc.resource.spec {
        Spec::Service(svc) => svc
            .selector
            .as_ref()
            .map(|s| &s.0)
            .filter(|s| !s.is_empty()),
        _ => None,
    }
}

/// True when `selector` is set and all its labels are on the pod.
pub(crate) fn selects(
    selector: Option<&BTreeMap<String, String>>,
    labels: &BTreeMap<String, String>,
) -> bool {
    selector.is_some_and(|s| s.iter().all(|(k, v)| labels.get(k) == Some(v)))
}
