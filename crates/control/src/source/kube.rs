//! Kubernetes as a source: the same kinds `weir apply` takes, watched through the API
//! server (kube-rs list + watch, with its reconnect and backoff), plus the pods that make
//! up service endpoints.
//!
//! Objects arrive as the API server serializes them and go through the same parser and
//! validation as files, so what the cluster holds and what `weir apply` would accept are
//! one model. An object the parser refuses is logged with its error and skipped; it
//! does not hold back the others. After a (re)list, objects of that kind this source
//! applied earlier and the list no longer holds are deleted, as a reflector does.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::pin::pin;

use ::kube::api::{Api, ApiResource, DynamicObject};
use ::kube::runtime::watcher::{self, Event};
use ::kube::runtime::WatchStreamExt;
use config::{Document, ObjectKey};
use futures_util::stream::{self, StreamExt};

use crate::api::{lock, Shared};
use crate::store::ApplyError;

/// The kinds watched: (group, version, kind, plural).
pub const WATCHED_KINDS: &[(&str, &str, &str, &str)] = &[
    ("", "v1", "Namespace", "namespaces"),
    ("", "v1", "Service", "services"),
    ("", "v1", "ServiceAccount", "serviceaccounts"),
    ("apps", "v1", "Deployment", "deployments"),
    (
        "networking.istio.io",
        "v1",
        "DestinationRule",
        "destinationrules",
    ),
    (
        "networking.istio.io",
        "v1",
        "VirtualService",
        "virtualservices",
    ),
    ("networking.istio.io", "v1", "Gateway", "gateways"),
    (
        "security.istio.io",
        "v1",
        "PeerAuthentication",
        "peerauthentications",
    ),
    ("telemetry.istio.io", "v1", "Telemetry", "telemetries"),
];

/// A pod as endpoints need it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubePod {
    /// Pod name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Pod IP; pods without one yet are not reported.
    pub ip: IpAddr,
    /// Pod labels.
    pub labels: BTreeMap<String, String>,
    /// Service account (`default` when unset).
    pub service_account: String,
    /// True when the pod runs a sidecar (an `istio-proxy` container, or Istio's
    /// `sidecar.istio.io/status` annotation that injection leaves).
    pub sidecar: bool,
    /// True when the pod is Ready.
    pub ready: bool,
    /// The owning workload: the Deployment behind its ReplicaSet, else the owner's
    /// name, else the pod's own name.
    pub workload: String,
}

/// Where pod changes go (the mesh's pod registry).
pub trait PodSink: Send + Sync {
    /// A pod appeared or changed.
    fn upsert_pod(&self, pod: KubePod);
    /// A pod is gone.
    fn remove_pod(&self, namespace: &str, name: &str);
    /// A full list: pods not in it are gone.
    fn replace_pods(&self, pods: Vec<KubePod>);
}

fn api_resource(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: group.to_owned(),
        version: version.to_owned(),
        api_version: if group.is_empty() {
            version.to_owned()
        } else {
            format!("{group}/{version}")
        },
        kind: kind.to_owned(),
        plural: plural.to_owned(),
    }
}

/// Turns an object as the API server sent it into a parsed document.
pub fn to_document(obj: &DynamicObject, ar: &ApiResource) -> Result<Document, String> {
    let mut value = serde_json::to_value(obj).map_err(|e| e.to_string())?;
    let Some(map) = value.as_object_mut() else {
        return Err("not an object".into());
    };
    // Items of a list come without their type; the watch knows it.
    map.insert("apiVersion".into(), ar.api_version.clone().into());
    map.insert("kind".into(), ar.kind.clone().into());
    let label = format!(
        "kubernetes {}/{}/{}",
        ar.plural,
        obj.metadata.namespace.as_deref().unwrap_or("-"),
        obj.metadata.name.as_deref().unwrap_or("-")
    );
    let text = serde_json::to_string(&value).map_err(|e| e.to_string())?;
    let mut docs = config::parse_str(&text, &label).map_err(|e| e.lines().join("; "))?;
    match docs.len() {
        1 => Ok(docs.remove(0)),
        n => Err(format!("{label}: expected one object, found {n}")),
    }
}

/// A pod from the API server's JSON; `None` for pods without an IP yet.
pub fn to_pod(obj: &DynamicObject) -> Option<KubePod> {
    let data = &obj.data;
    let ip = data
        .pointer("/status/podIP")
        .and_then(|v| v.as_str())
        .and_then(|s| s.parse().ok())?;
    let containers = data
        .pointer("/spec/containers")
        .and_then(|v| v.as_array())
        .map(Vec::as_slice)
        .unwrap_or_default();
    let annotations = obj.metadata.annotations.clone().unwrap_or_default();
    let sidecar = containers
        .iter()
        .any(|c| c.get("name").and_then(|n| n.as_str()) == Some("istio-proxy"))
        || annotations.contains_key("sidecar.istio.io/status");
    let ready = data
        .pointer("/status/conditions")
        .and_then(|v| v.as_array())
        .is_some_and(|conds| {
            conds.iter().any(|c| {
                c.get("type").and_then(|t| t.as_str()) == Some("Ready")
                    && c.get("status").and_then(|s| s.as_str()) == Some("True")
            })
        });
    let name = obj.metadata.name.clone()?;
    let labels = obj.metadata.labels.clone().unwrap_or_default();
    let workload = obj
        .metadata
        .owner_references
        .as_deref()
        .and_then(|o| o.iter().find(|r| r.controller == Some(true)).or(o.first()))
        .map(
            |owner| match (owner.kind.as_str(), labels.get("pod-template-hash")) {
                ("ReplicaSet", Some(hash)) => owner
                    .name
                    .strip_suffix(&format!("-{hash}"))
                    .unwrap_or(&owner.name)
                    .to_owned(),
                _ => owner.name.clone(),
            },
        )
        .unwrap_or_else(|| name.clone());
    Some(KubePod {
        name,
        workload,
        namespace: obj
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        ip,
        labels,
        service_account: data
            .pointer("/spec/serviceAccountName")
            .and_then(|v| v.as_str())
            .unwrap_or("default")
            .to_owned(),
        sidecar,
        ready,
    })
}

/// What the source did with one watch event; for logs and tests.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// kubectl-style lines of objects created or configured.
    pub lines: Vec<String>,
    /// Objects deleted.
    pub deleted: Vec<ObjectKey>,
    /// Objects refused, with the reason.
    pub refused: Vec<String>,
}

/// The state of the Kubernetes source: which objects it owns, per kind.
#[derive(Debug, Default)]
pub struct KubeSource {
    owned: BTreeMap<usize, BTreeSet<ObjectKey>>,
    relist: BTreeMap<usize, Vec<Document>>,
    pods_relist: Option<Vec<KubePod>>,
}

impl KubeSource {
    /// A source that owns nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    fn apply_docs(&mut self, kind: usize, docs: Vec<Document>, store: &Shared, out: &mut Applied) {
        // One object at a time: a refused one must not hold back the rest.
        for doc in docs {
            let key = ObjectKey::of(&doc);
            let result = lock(store).apply(vec![doc]);
            match result {
                Ok((outcomes, _)) => {
                    out.lines.extend(
                        outcomes
                            .iter()
                            .filter(|o| o.action != config::Action::Unchanged)
                            .map(ToString::to_string),
                    );
                    self.owned.entry(kind).or_default().insert(key);
                }
                Err(ApplyError::Invalid(e)) => out.refused.push(e.lines().join("; ")),
                Err(ApplyError::Store(e)) => out.refused.push(e.to_string()),
            }
        }
    }

    /// Handles one event for `WATCHED_KINDS[kind]`.
    pub fn handle(
        &mut self,
        kind: usize,
        ar: &ApiResource,
        event: Event<DynamicObject>,
        store: &Shared,
    ) -> Applied {
        let mut out = Applied::default();
        let convert = |obj: &DynamicObject, out: &mut Applied| match to_document(obj, ar) {
            Ok(d) => Some(d),
            Err(e) => {
                out.refused.push(e);
                None
            }
        };
        match event {
            Event::Init => {
                self.relist.insert(kind, Vec::new());
            }
            Event::InitApply(obj) => {
                if let Some(doc) = convert(&obj, &mut out) {
                    self.relist.entry(kind).or_default().push(doc);
                }
            }
            Event::InitDone => {
                let docs = self.relist.remove(&kind).unwrap_or_default();
                let listed: BTreeSet<ObjectKey> = docs.iter().map(ObjectKey::of).collect();
                let gone: Vec<ObjectKey> = self
                    .owned
                    .get(&kind)
                    .map(|o| o.difference(&listed).cloned().collect())
                    .unwrap_or_default();
                self.owned.insert(kind, BTreeSet::new());
                self.apply_docs(kind, docs, store, &mut out);
                self.delete(&gone, store, &mut out);
            }
            Event::Apply(obj) => {
                if let Some(doc) = convert(&obj, &mut out) {
                    self.apply_docs(kind, vec![doc], store, &mut out);
                }
            }
            Event::Delete(obj) => {
                if let Some(doc) = convert(&obj, &mut out) {
                    let key = ObjectKey::of(&doc);
                    if let Some(o) = self.owned.get_mut(&kind) {
                        o.remove(&key);
                    }
                    self.delete(&[key], store, &mut out);
                }
            }
        }
        out
    }

    fn delete(&self, keys: &[ObjectKey], store: &Shared, out: &mut Applied) {
        if keys.is_empty() {
            return;
        }
        match lock(store).delete_keys(keys) {
            Ok(found) => out.deleted.extend(found),
            Err(e) => out.refused.push(e.to_string()),
        }
    }

    /// Handles one pod event.
    pub fn handle_pod(&mut self, event: Event<DynamicObject>, pods: &dyn PodSink) {
        match event {
            Event::Init => self.pods_relist = Some(Vec::new()),
            Event::InitApply(obj) => {
                if let (Some(list), Some(pod)) = (self.pods_relist.as_mut(), to_pod(&obj)) {
                    list.push(pod);
                }
            }
            Event::InitDone => pods.replace_pods(self.pods_relist.take().unwrap_or_default()),
            Event::Apply(obj) => match to_pod(&obj) {
                Some(pod) => pods.upsert_pod(pod),
                // An IP-less pod (pending, or being torn down) is no endpoint.
                None => remove_pod(&obj, pods),
            },
            Event::Delete(obj) => remove_pod(&obj, pods),
        }
    }

    /// Watches every kind and pods until `stop` completes.
    pub async fn run(
        mut self,
        client: ::kube::Client,
        store: Shared,
        pods: std::sync::Arc<dyn PodSink>,
        stop: impl std::future::Future<Output = ()>,
    ) {
        let kinds: Vec<ApiResource> = WATCHED_KINDS
            .iter()
            .map(|(g, v, k, p)| api_resource(g, v, k, p))
            .collect();
        let pod_ar = api_resource("", "v1", "Pod", "pods");
        let cfg = watcher::Config::default();
        let mut streams: Vec<_> = kinds
            .iter()
            .enumerate()
            .map(|(i, ar)| {
                let api: Api<DynamicObject> = Api::all_with(client.clone(), ar);
                watcher::watcher(api, cfg.clone())
                    .default_backoff()
                    .map(move |e| (Some(i), e))
                    .boxed()
            })
            .collect();
        let pod_api: Api<DynamicObject> = Api::all_with(client.clone(), &pod_ar);
        streams.push(
            watcher::watcher(pod_api, cfg.clone())
                .default_backoff()
                .map(|e| (None, e))
                .boxed(),
        );
        let mut all = stream::select_all(streams);
        let mut stop = pin!(stop);
        let mut failing: BTreeSet<Option<usize>> = BTreeSet::new();
        loop {
            let next = tokio::select! {
                _ = &mut stop => return,
                next = all.next() => next,
            };
            let Some((which, event)) = next else { return };
            let event = match event {
                Ok(e) => {
                    failing.remove(&which);
                    e
                }
                Err(e) => {
                    // Logged once per failing stream; the watcher retries with backoff.
                    if failing.insert(which) {
                        let what = which.map_or("pods", |i| kinds[i].plural.as_str());
                        tracing::warn!(
                            "kubernetes: watching {what} failed: {e}; retrying with backoff \
                             (check the API server address, RBAC, and that Istio's CRDs are installed)"
                        );
                    }
                    continue;
                }
            };
            match which {
                None => self.handle_pod(event, pods.as_ref()),
                Some(i) => {
                    let applied = self.handle(i, &kinds[i], event, &store);
                    for line in &applied.lines {
                        tracing::info!("kubernetes: {line}");
                    }
                    for key in &applied.deleted {
                        tracing::info!(kind = ?key.kind, namespace = %key.namespace, name = %key.name, "kubernetes: deleted");
                    }
                    for why in &applied.refused {
                        tracing::warn!("kubernetes: object refused: {why}");
                    }
                }
            }
        }
    }
}

fn remove_pod(obj: &DynamicObject, pods: &dyn PodSink) {
    if let Some(name) = &obj.metadata.name {
        pods.remove_pod(obj.metadata.namespace.as_deref().unwrap_or("default"), name);
    }
}

/// Connects to the API server the usual way: in-cluster service account, or
/// `KUBECONFIG` / `~/.kube/config`.
pub async fn client() -> Result<::kube::Client, ::kube::Error> {
    ::kube::Client::try_default().await
}

/// A client for an API server at `url` with no authentication (`kubectl proxy`, tests).
pub fn client_for(url: &str) -> Result<::kube::Client, String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("invalid Kubernetes API address {url:?}: {e}; fix: give a URL such as http://127.0.0.1:8001"))?;
    ::kube::Client::try_from(::kube::Config::new(uri))
        .map_err(|e| format!("cannot build a Kubernetes client for {url}: {e}"))
}

#[cfg(test)]
mod tests;
