//! The typed resource model: metadata, the spec of each kind, and the parsed document.
//!
//! Fields weir acts on are typed; fields of the Kubernetes/Istio schema that weir does not
//! act on are kept verbatim (`extra`), so nothing a user wrote is silently dropped and
//! `get -o yaml` gives it back.

use std::collections::BTreeMap;

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};
use serde_json::Value as Json;

use crate::decode::{Cx, Decode, StringMap};
use crate::error::{ObjectRef, SourceRef};
use crate::kind::Kind;
use crate::node::{FieldIndex, Node, Value};

pub mod core;
pub mod gateway;
pub mod gateway_api;
pub mod networking;
pub mod policy;
pub mod workload;

pub use self::core::*;
pub use self::gateway::*;
pub use self::gateway_api::*;
pub use self::networking::*;
pub use self::policy::*;
pub use self::workload::*;

/// The namespace of a namespaced resource that does not name one.
pub const DEFAULT_NAMESPACE: &str = "default";

pub(crate) fn is_false(b: &bool) -> bool {
    !*b
}

pub(crate) fn map_is_empty(m: &StringMap) -> bool {
    m.0.is_empty()
}

/// `metadata`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ObjectMeta {
    /// `name`.
    pub name: String,
    /// `namespace`; `None` means the default namespace (see [`Resource::namespace`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// `labels`.
    #[serde(skip_serializing_if = "map_is_empty")]
    pub labels: StringMap,
    /// `annotations`.
    #[serde(skip_serializing_if = "map_is_empty")]
    pub annotations: StringMap,
    /// Server-populated and other metadata fields, kept verbatim.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Json>,
}

impl Decode for ObjectMeta {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Self {
        let f = cx.fields(
            node,
            &["name", "namespace", "labels", "annotations"],
            &[
                "generateName",
                "uid",
                "resourceVersion",
                "generation",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "ownerReferences",
                "finalizers",
                "managedFields",
                "selfLink",
            ],
        );
        let name: String = f.req(cx, "name", "give the resource a name, e.g. `name: reviews`");
        // Service and Namespace names become one DNS label (`reviews.default.svc...`), so
        // Kubernetes allows no dots in them; other names are DNS subdomains.
        let label_name = cx
            .object
            .as_ref()
            .is_some_and(|o| matches!(o.kind, Kind::Service | Kind::Namespace));
        let rule = if label_name {
            DnsName::Label
        } else {
            DnsName::Subdomain
        };
        if let Some(n) = f.node("name") {
            cx.at_key("name", |cx| check_dns_name(cx, n, &name, rule));
        }
        let namespace: Option<String> = f.opt(cx, "namespace");
        if let (Some(n), Some(ns)) = (f.node("namespace"), &namespace) {
            cx.at_key("namespace", |cx| check_dns_name(cx, n, ns, DnsName::Label));
        }
        ObjectMeta {
            name,
            namespace,
            labels: f.get(cx, "labels"),
            annotations: f.get(cx, "annotations"),
            extra: f.rest(),
        }
    }
}

/// The two shapes of Kubernetes object names (RFC 1123, lowercase).
#[derive(Clone, Copy)]
enum DnsName {
    /// At most 253 letters, digits, `-` and `.`.
    Subdomain,
    /// At most 63 letters, digits and `-`: namespaces, Services.
    Label,
}

fn check_dns_name(cx: &mut Cx<'_>, node: &Node, name: &str, rule: DnsName) {
    if name.is_empty() && matches!(node.value, Value::Str(_)) {
        cx.error(
            node,
            "must not be empty",
            Some("use a lowercase name such as `reviews`".into()),
        );
        return;
    }
    let (max, dots, allowed) = match rule {
        DnsName::Subdomain => (253, true, "lowercase letters, digits, '-' or '.'"),
        DnsName::Label => (63, false, "lowercase letters, digits or '-'"),
    };
    let valid_chars = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || (dots && c == '.'));
    let ends_ok = name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if !name.is_empty() && (!valid_chars || !ends_ok || name.len() > max) {
        let suggestion: String = name
            .to_ascii_lowercase()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || (dots && c == '.') {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        let suggestion = suggestion.trim_matches(['-', '.']).to_string();
        let fix = if suggestion.is_empty() || suggestion.len() > max {
            format!("use at most {max} {allowed}, starting and ending with a letter or digit")
        } else {
            format!(
                "use {allowed}, starting and ending with a letter or digit, e.g. `{suggestion}`"
            )
        };
        cx.error(node, format!("`{name}` is not a valid name"), Some(fix));
    }
}

/// A label selector: `matchLabels` (and `matchExpressions`, kept verbatim).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    /// `matchLabels`.
    #[serde(skip_serializing_if = "map_is_empty")]
    pub match_labels: StringMap,
    /// `matchExpressions`, kept verbatim.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Json>,
}

impl LabelSelector {
    /// True when every `matchLabels` pair is in `labels`.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .0
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
    }
}

impl Decode for LabelSelector {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Self {
        let f = cx.fields(node, &["matchLabels"], &["matchExpressions"]);
        LabelSelector {
            match_labels: f.get(cx, "matchLabels"),
            extra: f.rest(),
        }
    }
}

/// The kind-specific part of a resource.
#[derive(Debug, Clone, PartialEq)]
pub enum Spec {
    /// A Namespace.
    Namespace(NamespaceBody),
    /// A ServiceAccount.
    ServiceAccount(ServiceAccountBody),
    /// A Secret.
    Secret(SecretBody),
    /// A Service.
    Service(ServiceSpec),
    /// A Deployment.
    Deployment(DeploymentSpec),
    /// An Istio DestinationRule.
    DestinationRule(DestinationRuleSpec),
    /// An Istio VirtualService.
    VirtualService(VirtualServiceSpec),
    /// An Istio Gateway.
    Gateway(GatewaySpec),
    /// An Istio PeerAuthentication.
    PeerAuthentication(PeerAuthenticationSpec),
    /// An Istio Telemetry.
    Telemetry(TelemetrySpec),
    /// A Kubernetes Gateway API Gateway.
    KubernetesGateway(KubernetesGatewaySpec),
    /// A Kubernetes Gateway API TCPRoute.
    TcpRoute(TcpRouteSpec),
}

impl Spec {
    /// The kind of this spec.
    pub fn kind(&self) -> Kind {
        match self {
            Spec::Namespace(_) => Kind::Namespace,
            Spec::ServiceAccount(_) => Kind::ServiceAccount,
            Spec::Secret(_) => Kind::Secret,
            Spec::Service(_) => Kind::Service,
            Spec::Deployment(_) => Kind::Deployment,
            Spec::DestinationRule(_) => Kind::DestinationRule,
            Spec::VirtualService(_) => Kind::VirtualService,
            Spec::Gateway(_) => Kind::Gateway,
            Spec::PeerAuthentication(_) => Kind::PeerAuthentication,
            Spec::Telemetry(_) => Kind::Telemetry,
            Spec::KubernetesGateway(_) => Kind::KubernetesGateway,
            Spec::TcpRoute(_) => Kind::TcpRoute,
        }
    }
}

/// One Kubernetes/Istio object.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    /// `apiVersion` as written (e.g. `networking.istio.io/v1alpha3`).
    pub api_version: String,
    /// `metadata`.
    pub metadata: ObjectMeta,
    /// The kind and its body.
    pub spec: Spec,
    /// Top-level fields weir does not act on (`status`), kept verbatim.
    pub extra: BTreeMap<String, Json>,
}

impl Resource {
    /// Its kind.
    pub fn kind(&self) -> Kind {
        self.spec.kind()
    }

    /// `metadata.name`.
    pub fn name(&self) -> &str {
        &self.metadata.name
    }

    /// The effective namespace: as written, else `default`; empty for cluster-scoped kinds.
    pub fn namespace(&self) -> &str {
        if !self.kind().namespaced() {
            return "";
        }
        self.metadata
            .namespace
            .as_deref()
            .unwrap_or(DEFAULT_NAMESPACE)
    }

    /// How diagnostics name it.
    pub fn object_ref(&self) -> ObjectRef {
        ObjectRef {
            kind: self.kind(),
            namespace: self
                .kind()
                .namespaced()
                .then(|| self.namespace().to_string()),
            name: self.name().to_string(),
        }
    }
}

impl Serialize for Resource {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("apiVersion", &self.api_version)?;
        map.serialize_entry("kind", self.kind().name())?;
        map.serialize_entry("metadata", &self.metadata)?;
        match &self.spec {
            Spec::Namespace(b) => flatten_into(&mut map, b)?,
            Spec::ServiceAccount(b) => flatten_into(&mut map, b)?,
            Spec::Secret(b) => flatten_into(&mut map, b)?,
            Spec::Service(b) => map.serialize_entry("spec", b)?,
            Spec::Deployment(b) => map.serialize_entry("spec", b)?,
            Spec::DestinationRule(b) => map.serialize_entry("spec", b)?,
            Spec::VirtualService(b) => map.serialize_entry("spec", b)?,
            Spec::Gateway(b) => map.serialize_entry("spec", b)?,
            Spec::PeerAuthentication(b) => map.serialize_entry("spec", b)?,
            Spec::Telemetry(b) => map.serialize_entry("spec", b)?,
            Spec::KubernetesGateway(b) => map.serialize_entry("spec", b)?,
            Spec::TcpRoute(b) => map.serialize_entry("spec", b)?,
        }
        for (k, v) in &self.extra {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

/// Writes the fields of a body that lives at the top level (Secret `data`, ...).
fn flatten_into<M: SerializeMap, T: Serialize>(map: &mut M, body: &T) -> Result<(), M::Error> {
    let value = serde_json::to_value(body).map_err(serde::ser::Error::custom)?;
    if let Json::Object(fields) = value {
        for (k, v) in fields {
            map.serialize_entry(&k, &v)?;
        }
    }
    Ok(())
}

/// A parsed resource with where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// The resource.
    pub resource: Resource,
    /// File, line and column where the object starts.
    pub source: SourceRef,
    /// Positions of every field, for diagnostics found later (cross-resource analysis).
    pub fields: FieldIndex,
}

impl Document {
    /// The source position of a field path, or of its nearest ancestor, or of the object.
    pub fn position(&self, path: &str) -> SourceRef {
        match self.fields.nearest(path) {
            Some((line, column)) => SourceRef::new(self.source.file.clone(), line, column),
            None => self.source.clone(),
        }
    }
}

/// Reads one object. `None` when it has errors (recorded in `cx`).
pub(crate) fn decode_object(node: &Node, cx: &mut Cx<'_>) -> Option<Resource> {
    let Value::Map(_) = &node.value else {
        cx.error(
            node,
            format!(
                "expected a Kubernetes object (a map with apiVersion, kind, metadata), found {}",
                node.value.describe()
            ),
            Some("start each document with `apiVersion:` and `kind:` at column 1".into()),
        );
        return None;
    };
    let before = cx.diags.len();
    // Read type fields without reporting unknown fields yet: that depends on the kind.
    let entries = match &node.value {
        Value::Map(entries) => entries,
        _ => return None,
    };
    let find = |key: &str| entries.iter().find(|e| e.key == key);
    let text_of = |cx: &mut Cx<'_>, key: &str, fix: &str| -> Option<String> {
        match find(key) {
            Some(e) if matches!(e.value.value, Value::Str(_)) => {
                Some(cx.at_key(key, |cx| String::decode(&e.value, cx)))
            }
            Some(e) => {
                cx.at_key(key, |cx| {
                    String::decode(&e.value, cx);
                });
                None
            }
            None => {
                cx.at_key(key, |cx| {
                    cx.error(node, "required field is missing", Some(fix.to_string()));
                });
                None
            }
        }
    };
    let api_version = text_of(
        cx,
        "apiVersion",
        "add `apiVersion:`, e.g. `apiVersion: networking.istio.io/v1`",
    );
    let kind_text = text_of(cx, "kind", "add `kind:`, e.g. `kind: DestinationRule`");
    let (api_version, kind_text) = (api_version?, kind_text?);
    let kind = match Kind::from_manifest(&api_version, &kind_text) {
        Ok(kind) => kind,
        Err(e) => {
            let (field, message, fix) = match e {
                crate::kind::KindError::WrongApiVersion {
                    kind,
                    api_version,
                    expected,
                } => (
                    "apiVersion",
                    format!("`{api_version}` does not serve kind `{kind}`"),
                    format!("use one of: {expected}"),
                ),
                crate::kind::KindError::UnknownManifestKind {
                    kind,
                    suggestion: Some(s),
                    ..
                } => (
                    "kind",
                    format!("unsupported kind `{kind}` (did you mean `{s}`?)"),
                    format!("write `kind: {s}`"),
                ),
                other => (
                    "kind",
                    other
                        .to_string()
                        .split("; ")
                        .next()
                        .unwrap_or_default()
                        .to_string(),
                    format!("use one of the supported kinds: {}", Kind::manifest_kinds()),
                ),
            };
            let at = find(field).map_or(node, |e| &e.value);
            cx.at_key(field, |cx| cx.error(at, message, Some(fix)));
            return None;
        }
    };
    cx.object = Some(ObjectRef {
        kind,
        namespace: None,
        name: String::new(),
    });
    let metadata: ObjectMeta = match find("metadata") {
        Some(e) => cx.at_key("metadata", |cx| ObjectMeta::decode(&e.value, cx)),
        None => {
            cx.at_key("metadata", |cx| {
                cx.error(
                    node,
                    "required field is missing",
                    Some("add `metadata:` with at least `name:`".into()),
                );
            });
            ObjectMeta::default()
        }
    };
    cx.object = Some(ObjectRef {
        kind,
        namespace: metadata.namespace.clone(),
        name: metadata.name.clone(),
    });
    // The diagnostics so far name no resource; give them the name now known.
    for d in &mut cx.diags[before..] {
        d.object.clone_from(&cx.object);
    }
    let (spec, extra) = decode_body(kind, node, cx);
    (cx.diags.len() == before).then_some(Resource {
        api_version,
        metadata,
        spec,
        extra,
    })
}

const TYPE_FIELDS: &[&str] = &["apiVersion", "kind", "metadata"];

fn decode_body(kind: Kind, node: &Node, cx: &mut Cx<'_>) -> (Spec, BTreeMap<String, Json>) {
    match kind {
        Kind::Secret => {
            let body = SecretBody::decode(node, cx);
            (Spec::Secret(body), BTreeMap::new())
        }
        Kind::ServiceAccount => {
            let f = cx.fields(
                node,
                TYPE_FIELDS,
                &[
                    "secrets",
                    "imagePullSecrets",
                    "automountServiceAccountToken",
                ],
            );
            (
                Spec::ServiceAccount(ServiceAccountBody { extra: f.rest() }),
                BTreeMap::new(),
            )
        }
        Kind::Namespace => {
            let f = cx.fields(node, TYPE_FIELDS, &["spec", "status"]);
            (
                Spec::Namespace(NamespaceBody { extra: f.rest() }),
                BTreeMap::new(),
            )
        }
        Kind::Service => with_spec(node, cx, true, Spec::Service),
        Kind::Deployment => with_spec(node, cx, true, Spec::Deployment),
        Kind::DestinationRule => with_spec(node, cx, true, Spec::DestinationRule),
        Kind::VirtualService => with_spec(node, cx, true, Spec::VirtualService),
        Kind::Gateway => with_spec(node, cx, true, Spec::Gateway),
        // An empty PeerAuthentication or Telemetry is meaningful (mesh or namespace defaults).
        Kind::PeerAuthentication => with_spec(node, cx, false, Spec::PeerAuthentication),
        Kind::Telemetry => with_spec(node, cx, false, Spec::Telemetry),
        Kind::KubernetesGateway => with_spec(node, cx, true, Spec::KubernetesGateway),
        Kind::TcpRoute => with_spec(node, cx, true, Spec::TcpRoute),
    }
}

/// Kinds whose body is under `spec`; `status` is accepted and kept.
fn with_spec<T: Decode>(
    node: &Node,
    cx: &mut Cx<'_>,
    required: bool,
    wrap: fn(T) -> Spec,
) -> (Spec, BTreeMap<String, Json>) {
    let f = cx.fields(
        node,
        &["apiVersion", "kind", "metadata", "spec"],
        &["status"],
    );
    let spec = if required {
        f.req(cx, "spec", "add `spec:` with the resource's settings")
    } else {
        f.get(cx, "spec")
    };
    (wrap(spec), f.rest())
}
