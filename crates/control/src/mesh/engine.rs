//! The incremental engine: inputs, caches, the dependency index, and the proxies'
//! channels. Every change first marks what it can affect ([`Dirty`]); one flush then
//! recomputes exactly that and notifies the proxies whose view changed.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use config::model::{Document, Spec};
use config::{Diagnostic, Kind, ResourceSet};
use proxy::config::OutboundService;
use tokio::sync::watch;
use xds::{NodeInfo, ProxyView, ServiceMap, SubscribeError, WorkloadConfig};

use super::index::{fqdn, selects, service_selector, Key, Snapshot};
use super::vip::VipAllocator;
use super::workload::{scope_of, Scope};
use super::{gateway, resource_checks, service, workload, MeshOptions, Pod, UpdateStats};

/// Kinds the mesh computes from.
const KINDS: &[Kind] = &[
    Kind::Service,
    Kind::Deployment,
    Kind::DestinationRule,
    Kind::VirtualService,
    Kind::PeerAuthentication,
    Kind::Telemetry,
    Kind::Gateway,
];

#[derive(Debug)]
struct ServiceEntry {
    service: Arc<OutboundService>,
    deps: BTreeSet<String>,
    diagnostics: Vec<Diagnostic>,
}

#[derive(Debug)]
struct ProxyEntry {
    subscriptions: usize,
    tx: watch::Sender<Arc<ProxyView>>,
    workload: Arc<WorkloadConfig>,
}

/// What a change can affect.
#[derive(Default)]
struct Dirty {
    /// Hosts whose Service, pods or DestinationRules changed: the service itself and every
    /// service routing to it are recomputed.
    hosts: BTreeSet<String>,
    /// Services recomputed themselves only (their VirtualService changed).
    services: BTreeSet<String>,
    workloads: BTreeSet<Key>,
    all_workloads: bool,
    /// A Gateway or a VirtualService bound to one changed: gateway pods are recomputed.
    gateways: bool,
}

#[derive(Debug)]
pub(crate) struct Engine {
    opts: MeshOptions,
    snap: Snapshot,
    vips: VipAllocator,
    explicit_ips: BTreeMap<Key, IpAddr>,
    services: BTreeMap<String, ServiceEntry>,
    /// The outbound map every view of the current revision shares. Changed through
    /// `Arc::make_mut`: the first change after a notify copies it once, not per proxy.
    shared: Arc<ServiceMap>,
    /// Host → services whose result depends on it.
    dependents: BTreeMap<String, BTreeSet<String>>,
    resource_diags: BTreeMap<(Kind, String, String), Vec<Diagnostic>>,
    proxies: BTreeMap<Key, ProxyEntry>,
    last: UpdateStats,
}

impl Engine {
    pub fn new(opts: MeshOptions) -> Self {
        Self {
            vips: VipAllocator::new(opts.vip_range),
            opts,
            snap: Snapshot::default(),
            explicit_ips: BTreeMap::new(),
            services: BTreeMap::new(),
            shared: Arc::default(),
            dependents: BTreeMap::new(),
            resource_diags: BTreeMap::new(),
            proxies: BTreeMap::new(),
            last: UpdateStats::default(),
        }
    }

    fn stored(&self, kind: Kind) -> Option<&BTreeMap<Key, Arc<Document>>> {
        Some(match kind {
            Kind::Service => &self.snap.services,
            Kind::Deployment => &self.snap.deployments,
            Kind::DestinationRule => &self.snap.destination_rules.docs,
            Kind::VirtualService => &self.snap.virtual_services.docs,
            Kind::PeerAuthentication => &self.snap.peer_authentications,
            Kind::Telemetry => &self.snap.telemetries,
            Kind::Gateway => &self.snap.gateways,
            _ => return None,
        })
    }

    pub fn set_resources(&mut self, set: &ResourceSet) -> UpdateStats {
        let started = Instant::now();
        let mut dirty = Dirty::default();
        for &kind in KINDS {
            let mut seen = BTreeSet::new();
            let mut changes = Vec::new();
            let stored = self.stored(kind);
            for doc in set.iter_kind(kind) {
                let key = (
                    doc.resource.namespace().to_owned(),
                    doc.resource.name().to_owned(),
                );
                let same = stored
                    .and_then(|m| m.get(&key))
                    .is_some_and(|old| old.resource == doc.resource);
                if !same {
                    changes.push((key.clone(), Some(Arc::new(doc.clone()))));
                }
                seen.insert(key);
            }
            for key in stored.into_iter().flat_map(|m| m.keys()) {
                if !seen.contains(key) {
                    changes.push((key.clone(), None));
                }
            }
            for (key, doc) in changes {
                self.change(kind, key, doc, &mut dirty);
            }
        }
        self.flush(dirty, started)
    }

    pub fn upsert_resource(&mut self, doc: &Document) -> UpdateStats {
        let started = Instant::now();
        let mut dirty = Dirty::default();
        let kind = doc.resource.kind();
        let key = (
            doc.resource.namespace().to_owned(),
            doc.resource.name().to_owned(),
        );
        let same = self
            .stored(kind)
            .and_then(|m| m.get(&key))
            .is_some_and(|old| old.resource == doc.resource);
        if !same {
            self.change(kind, key, Some(Arc::new(doc.clone())), &mut dirty);
        }
        self.flush(dirty, started)
    }

    pub fn remove_resource(&mut self, kind: Kind, namespace: &str, name: &str) -> UpdateStats {
        let started = Instant::now();
        let mut dirty = Dirty::default();
        let key = (namespace.to_owned(), name.to_owned());
        if self.stored(kind).is_some_and(|m| m.contains_key(&key)) {
            self.change(kind, key, None, &mut dirty);
        }
        self.flush(dirty, started)
    }

    /// Records one resource change and marks what it affects.
    fn change(&mut self, kind: Kind, key: Key, doc: Option<Arc<Document>>, dirty: &mut Dirty) {
        let diag_key = (kind, key.0.clone(), key.1.clone());
        match &doc {
            Some(d) => {
                let diags = resource_checks::check(d);
                if diags.is_empty() {
                    self.resource_diags.remove(&diag_key);
                } else {
                    self.resource_diags.insert(diag_key, diags);
                }
            }
            None => {
                self.resource_diags.remove(&diag_key);
            }
        }
        match kind {
            Kind::Service => {
                let old = match &doc {
                    Some(d) => self.snap.services.insert(key.clone(), d.clone()),
                    None => self.snap.services.remove(&key),
                };
                dirty.hosts.insert(fqdn(&key.0, &key.1));
                for d in old.iter().chain(doc.iter()) {
                    let selector = service_selector(d);
                    for pod in self.snap.pods_in(&key.0) {
                        if selects(selector, &pod.labels) {
                            dirty
                                .workloads
                                .insert((pod.namespace.clone(), pod.name.clone()));
                        }
                    }
                }
                if let Some(ip) = self.explicit_ips.remove(&key) {
                    self.vips.unclaim(ip);
                }
                let explicit = doc.as_ref().and_then(|d| match &d.resource.spec {
                    Spec::Service(s) => s
                        .cluster_ip
                        .as_deref()
                        .and_then(|ip| ip.parse::<IpAddr>().ok()),
                    _ => None,
                });
                if let Some(ip) = explicit {
                    if self.vips.in_range(ip) {
                        self.vips.claim(ip);
                    }
                    self.explicit_ips.insert(key, ip);
                }
            }
            Kind::Deployment => {
                match &doc {
                    Some(d) => self.snap.deployments.insert(key.clone(), d.clone()),
                    None => self.snap.deployments.remove(&key),
                };
                // Named target ports are resolved from Deployments.
                for ((ns, name), d) in self.snap.services_in(&key.0) {
                    let named = matches!(&d.resource.spec, Spec::Service(s)
                        if s.ports.iter().any(|p| matches!(p.target(), config::IntOrString::String(_))));
                    if named {
                        dirty.hosts.insert(fqdn(ns, name));
                    }
                }
                for pod in self.snap.pods_in(&key.0) {
                    if pod.workload == key.1 {
                        dirty
                            .workloads
                            .insert((pod.namespace.clone(), pod.name.clone()));
                    }
                }
            }
            Kind::DestinationRule => {
                for pattern in self.snap.destination_rules.set(&key, doc) {
                    dirty
                        .hosts
                        .extend(self.snap.service_hosts_matching(&pattern));
                }
            }
            Kind::VirtualService => {
                let old = self.snap.virtual_services.docs.get(&key);
                if old
                    .into_iter()
                    .chain(doc.as_ref())
                    .any(|d| gateway::binds_gateways(d))
                {
                    dirty.gateways = true;
                }
                for pattern in self.snap.virtual_services.set(&key, doc) {
                    dirty
                        .services
                        .extend(self.snap.service_hosts_matching(&pattern));
                }
            }
            Kind::Gateway => {
                let old = match &doc {
                    Some(d) => self.snap.gateways.insert(key.clone(), d.clone()),
                    None => self.snap.gateways.remove(&key),
                };
                dirty.gateways = true;
                // Pods that become or stop being gateways change how their services'
                // endpoints are secured.
                for d in old.iter().chain(doc.iter()) {
                    for pod in self.snap.live_pods.values() {
                        if !gateway::selects(d, &pod.labels) {
                            continue;
                        }
                        for ((ns, name), svc) in self.snap.services_in(&pod.namespace) {
                            if selects(service_selector(svc), &pod.labels) {
                                dirty.hosts.insert(fqdn(ns, name));
                            }
                        }
                    }
                }
            }
            Kind::PeerAuthentication | Kind::Telemetry => {
                let map = if kind == Kind::Telemetry {
                    &mut self.snap.telemetries
                } else {
                    &mut self.snap.peer_authentications
                };
                let old = match &doc {
                    Some(d) => map.insert(key.clone(), d.clone()),
                    None => map.remove(&key),
                };
                for d in old.iter().chain(doc.iter()) {
                    match scope_of(d, &self.opts) {
                        Scope::Mesh => dirty.all_workloads = true,
                        Scope::Namespace(ns) => dirty.workloads.extend(
                            self.snap
                                .pods_in(ns)
                                .map(|p| (p.namespace.clone(), p.name.clone())),
                        ),
                        Scope::Selected(ns, sel) => dirty.workloads.extend(
                            self.snap
                                .pods_in(ns)
                                .filter(|p| sel.matches(&p.labels))
                                .map(|p| (p.namespace.clone(), p.name.clone())),
                        ),
                    }
                }
            }
            _ => {}
        }
    }

    /// Marks what a change of one pod affects.
    fn pod_changed(&mut self, key: &Key, dirty: &mut Dirty) {
        let (old, new) = self.snap.refresh_pod(key);
        if old == new {
            return;
        }
        for pod in old.iter().chain(new.iter()) {
            for ((ns, name), d) in self.snap.services_in(&key.0) {
                if selects(service_selector(d), &pod.labels) {
                    dirty.hosts.insert(fqdn(ns, name));
                }
            }
        }
        dirty.workloads.insert(key.clone());
    }

    pub fn upsert_pods(&mut self, pods: Vec<Pod>) -> UpdateStats {
        let started = Instant::now();
        let mut dirty = Dirty::default();
        for pod in pods {
            let key = (pod.namespace.clone(), pod.name.clone());
            self.snap.pods.entry(key.clone()).or_default().declared = Some(pod);
            self.pod_changed(&key, &mut dirty);
        }
        self.flush(dirty, started)
    }

    pub fn remove_pod(&mut self, namespace: &str, name: &str) -> UpdateStats {
        let started = Instant::now();
        let mut dirty = Dirty::default();
        let key = (namespace.to_owned(), name.to_owned());
        if let Some(entry) = self.snap.pods.get_mut(&key) {
            entry.declared = None;
            self.pod_changed(&key, &mut dirty);
        }
        self.flush(dirty, started)
    }

    pub fn subscribe(
        &mut self,
        node: &NodeInfo,
    ) -> Result<watch::Receiver<Arc<ProxyView>>, SubscribeError> {
        let refuse = |reason: String| SubscribeError::Refused {
            pod: node.pod_name.clone(),
            namespace: node.namespace.clone(),
            reason,
        };
        if node.pod_name.is_empty() || node.namespace.is_empty() {
            return Err(refuse(
                "the node announces no pod name or namespace; set both in the proxy's node configuration".into(),
            ));
        }
        let key = (node.namespace.clone(), node.pod_name.clone());
        if let Some(declared) = self.snap.pods.get(&key).and_then(|e| e.declared.as_ref()) {
            if declared.service_account != node.service_account {
                return Err(refuse(format!(
                    "the pod runs as service account `{}` but the proxy's certificate is for `{}`; issue the proxy a certificate for its pod's service account",
                    declared.service_account, node.service_account
                )));
            }
        }
        let started = Instant::now();
        let mut dirty = Dirty::default();
        self.snap.pods.entry(key.clone()).or_default().proxy = Some(Pod::of_node(node));
        self.pod_changed(&key, &mut dirty);
        if let Some(p) = self.proxies.get_mut(&key) {
            p.subscriptions += 1;
            let rx = p.tx.subscribe();
            self.flush(dirty, started);
            return Ok(rx);
        }
        let pod = self
            .snap
            .live_pods
            .get(&key)
            .cloned()
            .unwrap_or_else(|| Pod::of_node(node));
        let workload = Arc::new(workload::compute(&self.snap, &self.opts, &pod));
        dirty.workloads.remove(&key);
        // The pod may have just become an endpoint: bring services up to date first.
        self.flush(dirty, started);
        let view = ProxyView {
            workload: workload.clone(),
            services: self.shared.clone(),
        };
        let (tx, rx) = watch::channel(Arc::new(view));
        self.proxies.insert(
            key,
            ProxyEntry {
                subscriptions: 1,
                tx,
                workload,
            },
        );
        Ok(rx)
    }

    pub fn unsubscribe(&mut self, node: &NodeInfo) {
        let key = (node.namespace.clone(), node.pod_name.clone());
        let Some(p) = self.proxies.get_mut(&key) else {
            return;
        };
        p.subscriptions = p.subscriptions.saturating_sub(1);
        if p.subscriptions > 0 {
            return;
        }
        self.proxies.remove(&key);
        let started = Instant::now();
        let mut dirty = Dirty::default();
        if let Some(entry) = self.snap.pods.get_mut(&key) {
            entry.proxy = None;
            self.pod_changed(&key, &mut dirty);
        }
        self.flush(dirty, started);
    }

    /// Recomputes what `dirty` names and notifies the proxies whose view changed.
    fn flush(&mut self, dirty: Dirty, started: Instant) -> UpdateStats {
        let mut stats = UpdateStats::default();
        // Gateway routes hold the endpoints of their destinations (subsets included),
        // so any service-level change may change them; gateway pods are few.
        let gateways_dirty =
            dirty.gateways || !dirty.hosts.is_empty() || !dirty.services.is_empty();
        let mut todo: BTreeSet<String> = dirty.services;
        for host in &dirty.hosts {
            if let Some(deps) = self.dependents.get(host) {
                todo.extend(deps.iter().cloned());
            }
            todo.insert(host.clone());
        }
        for host in todo {
            let known = self.services.contains_key(&host)
                || config::analyze::service_of(&host).is_some_and(|(ns, name)| {
                    self.snap
                        .services
                        .contains_key(&(ns.to_owned(), name.to_owned()))
                });
            if !known {
                continue;
            }
            stats.services_recomputed += 1;
            if self.recompute_service(&host) {
                stats.services_changed += 1;
            }
        }
        let mut changed_proxies: BTreeSet<Key> = BTreeSet::new();
        let mut keys: Vec<Key> = if dirty.all_workloads {
            self.proxies.keys().cloned().collect()
        } else {
            dirty
                .workloads
                .into_iter()
                .filter(|k| self.proxies.contains_key(k))
                .collect()
        };
        if gateways_dirty && !dirty.all_workloads {
            let gateway_proxies = self.proxies.iter().filter(|(k, p)| {
                p.workload.gateway.is_some()
                    || self
                        .snap
                        .live_pods
                        .get(*k)
                        .is_some_and(|pod| gateway::is_gateway_pod(&self.snap, pod))
            });
            let extra: Vec<Key> = gateway_proxies
                .map(|(k, _)| k.clone())
                .filter(|k| !keys.contains(k))
                .collect();
            keys.extend(extra);
        }
        for key in keys {
            let Some(pod) = self.snap.live_pods.get(&key) else {
                continue;
            };
            stats.workloads_recomputed += 1;
            let config = workload::compute(&self.snap, &self.opts, pod);
            if let Some(p) = self.proxies.get_mut(&key) {
                if *p.workload != config {
                    p.workload = Arc::new(config);
                    changed_proxies.insert(key);
                }
            }
        }
        for (key, p) in &self.proxies {
            if stats.services_changed > 0 || changed_proxies.contains(key) {
                stats.proxies_notified += 1;
                p.tx.send_replace(Arc::new(ProxyView {
                    workload: p.workload.clone(),
                    services: self.shared.clone(),
                }));
            }
        }
        stats.elapsed = started.elapsed();
        self.last = stats;
        stats
    }

    /// Recomputes one service; true when its configuration changed.
    fn recompute_service(&mut self, host: &str) -> bool {
        let key =
            config::analyze::service_of(host).map(|(ns, name)| (ns.to_owned(), name.to_owned()));
        let doc = key
            .as_ref()
            .and_then(|k| self.snap.services.get(k))
            .cloned();
        let (Some(key), Some(doc)) = (key, doc) else {
            let old = self.services.remove(host);
            if let Some(old) = &old {
                self.unindex(host, &old.deps);
            }
            if self.shared.contains_key(host) {
                Arc::make_mut(&mut self.shared).remove(host);
            }
            self.vips.release(host);
            return old.is_some();
        };
        let headless = matches!(&doc.resource.spec, Spec::Service(s) if s.cluster_ip.as_deref() == Some("None"));
        let vip = if headless || self.explicit_ips.contains_key(&key) {
            self.vips.release(host);
            None
        } else {
            self.vips.get_or_allocate(host)
        };
        let computed = service::compute(&self.snap, &self.opts, &key, &doc, vip);
        let old_deps = self
            .services
            .get(host)
            .map(|e| e.deps.clone())
            .unwrap_or_default();
        self.unindex(host, &old_deps);
        for dep in &computed.deps {
            self.dependents
                .entry(dep.clone())
                .or_default()
                .insert(host.to_owned());
        }
        let changed = self
            .services
            .get(host)
            .is_none_or(|e| *e.service != computed.service);
        let service = match self.services.get(host) {
            Some(e) if !changed => e.service.clone(),
            _ => Arc::new(computed.service),
        };
        if changed {
            Arc::make_mut(&mut self.shared).insert(host.to_owned(), service.clone());
        }
        self.services.insert(
            host.to_owned(),
            ServiceEntry {
                service,
                deps: computed.deps,
                diagnostics: computed.diagnostics,
            },
        );
        changed
    }

    fn unindex(&mut self, host: &str, deps: &BTreeSet<String>) {
        for dep in deps {
            if let Some(set) = self.dependents.get_mut(dep) {
                set.remove(host);
                if set.is_empty() {
                    self.dependents.remove(dep);
                }
            }
        }
    }

    pub fn service(&self, host: &str) -> Option<Arc<OutboundService>> {
        self.shared.get(host).cloned()
    }

    pub fn services(&self) -> Arc<ServiceMap> {
        self.shared.clone()
    }

    pub fn view_of(&self, pod: &Pod) -> ProxyView {
        let key = (pod.namespace.clone(), pod.name.clone());
        let workload = match self.proxies.get(&key) {
            Some(p) => p.workload.clone(),
            None => Arc::new(workload::compute(&self.snap, &self.opts, pod)),
        };
        ProxyView {
            workload,
            services: self.shared.clone(),
        }
    }

    pub fn proxy_count(&self) -> usize {
        self.proxies.len()
    }

    pub fn last_update(&self) -> UpdateStats {
        self.last
    }

    pub fn diagnostics(&self) -> Vec<Diagnostic> {
        let mut seen = HashSet::new();
        let mut out: Vec<Diagnostic> = self
            .resource_diags
            .values()
            .flatten()
            .chain(self.services.values().flat_map(|e| &e.diagnostics))
            .filter(|d| seen.insert(*d))
            .cloned()
            .collect();
        out.sort_by(|a, b| {
            (a.severity, &a.source, &a.path, &a.message)
                .cmp(&(b.severity, &b.source, &b.path, &b.message))
        });
        out
    }
}
