//! The peer metadata model: the `x-envoy-peer-metadata` Struct as a typed value.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use prost::Message;
use prost_types::value::Kind;
use prost_types::{ListValue, Struct, Value};

/// Keys of the `x-envoy-peer-metadata` Struct that [`PeerMetadata`] models as fields.
pub mod keys {
    pub const NAME: &str = "NAME";
    pub const NAMESPACE: &str = "NAMESPACE";
    pub const WORKLOAD_NAME: &str = "WORKLOAD_NAME";
    pub const CLUSTER_ID: &str = "CLUSTER_ID";
    pub const OWNER: &str = "OWNER";
    pub const LABELS: &str = "LABELS";
    pub const IDENTITY: &str = "IDENTITY";
    pub const REGION: &str = "REGION";
    pub const AVAILABILITY_ZONE: &str = "AVAILABILITY_ZONE";
    pub const SERVICE_ACCOUNT: &str = "SERVICE_ACCOUNT";
    pub const MESH_ID: &str = "MESH_ID";

    /// Every key with a typed field, in wire (sorted) order.
    pub const ALL: [&str; 11] = [
        AVAILABILITY_ZONE,
        CLUSTER_ID,
        IDENTITY,
        LABELS,
        MESH_ID,
        NAME,
        NAMESPACE,
        OWNER,
        REGION,
        SERVICE_ACCOUNT,
        WORKLOAD_NAME,
    ];
}

/// Well-known workload labels.
pub mod labels {
    pub const APP: &str = "app";
    pub const VERSION: &str = "version";
    pub const CANONICAL_NAME: &str = "service.istio.io/canonical-name";
    pub const CANONICAL_REVISION: &str = "service.istio.io/canonical-revision";
    pub const K8S_NAME: &str = "app.kubernetes.io/name";
    pub const K8S_VERSION: &str = "app.kubernetes.io/version";
}

/// `CLUSTER_ID` when nothing else is configured (Istio's default).
pub const DEFAULT_CLUSTER_ID: &str = "Kubernetes";

/// Canonical revision when no label names one.
pub const DEFAULT_CANONICAL_REVISION: &str = "latest";

/// A known key of the peer metadata Struct carries a value of the wrong kind.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum MetadataError {
    #[error("peer metadata key {key} must be a string, found {found}")]
    NotAString {
        key: &'static str,
        found: &'static str,
    },
    #[error("peer metadata key LABELS must be a struct, found {found}")]
    LabelsNotAStruct { found: &'static str },
}

/// A `google.protobuf.Value` kept verbatim for a key [`PeerMetadata`] does not model.
///
/// Equality compares the deterministic encoding, so it is reflexive even for NaN numbers
/// and can back `Eq`.
#[derive(Clone, Debug)]
pub struct ExtraValue(pub Value);

impl ExtraValue {
    /// The value as received.
    pub fn value(&self) -> &Value {
        &self.0
    }

    /// Consumes `self`, returning the value as received.
    pub fn into_value(self) -> Value {
        self.0
    }

    /// The string content, when the value is a string.
    pub fn as_str(&self) -> Option<&str> {
        match &self.0.kind {
            Some(Kind::StringValue(s)) => Some(s),
            _ => None,
        }
    }
}

impl PartialEq for ExtraValue {
    fn eq(&self, other: &Self) -> bool {
        self.0.encode_to_vec() == other.0.encode_to_vec()
    }
}

impl Eq for ExtraValue {}

impl From<Value> for ExtraValue {
    fn from(v: Value) -> Self {
        ExtraValue(v)
    }
}

/// Typed peer metadata (the `x-envoy-peer-metadata` Struct).
///
/// Mapping to and from the Struct:
/// - `name`, `namespace`, `workload_name`, `cluster_id`, `owner`: an absent key reads as an
///   empty string, and an empty string is not written (as Istio's own encoder does).
/// - `labels`: `LABELS` is always written, possibly as an empty Struct; an absent key reads as
///   no labels.
/// - `identity`, `region`, `zone`, `service_account`, `mesh_id`: `None` is an absent key.
/// - Every other key is kept verbatim in `extra` and written back unchanged. A key in `extra`
///   that names a typed field is overridden by that field when writing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerMetadata {
    /// `NAME`: the pod name.
    pub name: String,
    /// `NAMESPACE`.
    pub namespace: String,
    /// `WORKLOAD_NAME`, e.g. the deployment name.
    pub workload_name: String,
    /// `CLUSTER_ID`, `Kubernetes` by default.
    pub cluster_id: String,
    /// `OWNER`, e.g. `kubernetes://apis/apps/v1/namespaces/default/deployments/ratings-v2`.
    pub owner: String,
    /// `LABELS` (always encoded, possibly empty).
    pub labels: BTreeMap<String, String>,
    /// `IDENTITY`: the SPIFFE id, where known.
    pub identity: Option<String>,
    /// `REGION`.
    pub region: Option<String>,
    /// `AVAILABILITY_ZONE`.
    pub zone: Option<String>,
    /// `SERVICE_ACCOUNT` (older Istio versions send it).
    pub service_account: Option<String>,
    /// `MESH_ID`.
    pub mesh_id: Option<String>,
    /// Keys without a typed field, kept so that a decoded Struct re-encodes unchanged.
    pub extra: BTreeMap<String, ExtraValue>,
}

impl PeerMetadata {
    /// The metadata a sidecar of a Deployment's pod sends: owner derived from the
    /// deployment, `CLUSTER_ID` = `Kubernetes`, the given labels.
    pub fn for_deployment(
        namespace: &str,
        deployment: &str,
        pod: &str,
        labels: BTreeMap<String, String>,
    ) -> Self {
        PeerMetadata {
            name: pod.to_owned(),
            namespace: namespace.to_owned(),
            workload_name: deployment.to_owned(),
            cluster_id: DEFAULT_CLUSTER_ID.to_owned(),
            owner: owner_for_deployment(namespace, deployment),
            labels,
            ..PeerMetadata::default()
        }
    }

    /// The Struct sent as `x-envoy-peer-metadata`.
    pub fn to_struct(&self) -> Struct {
        let mut fields: BTreeMap<String, Value> = self
            .extra
            .iter()
            .map(|(k, v)| (k.clone(), v.0.clone()))
            .collect();
        for key in keys::ALL {
            fields.remove(key);
        }
        let required = [
            (keys::NAME, &self.name),
            (keys::NAMESPACE, &self.namespace),
            (keys::WORKLOAD_NAME, &self.workload_name),
            (keys::CLUSTER_ID, &self.cluster_id),
            (keys::OWNER, &self.owner),
        ];
        for (key, val) in required {
            if !val.is_empty() {
                fields.insert(key.to_owned(), string_value(val));
            }
        }
        let optional = [
            (keys::IDENTITY, &self.identity),
            (keys::REGION, &self.region),
            (keys::AVAILABILITY_ZONE, &self.zone),
            (keys::SERVICE_ACCOUNT, &self.service_account),
            (keys::MESH_ID, &self.mesh_id),
        ];
        for (key, val) in optional {
            if let Some(val) = val {
                fields.insert(key.to_owned(), string_value(val));
            }
        }
        let labels = Struct {
            fields: self
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), string_value(v)))
                .collect(),
        };
        fields.insert(
            keys::LABELS.to_owned(),
            Value {
                kind: Some(Kind::StructValue(labels)),
            },
        );
        Struct { fields }
    }

    /// Reads the `x-envoy-peer-metadata` Struct.
    ///
    /// Unknown keys go to `extra`. A typed key holding anything but a string (or, for
    /// `LABELS`, anything but a Struct) is an error. Label values are Kubernetes strings;
    /// a peer that sends another kind gets this rule: a bool becomes `true`/`false`, a
    /// number its shortest decimal form (`2`, `2.5`), and null, Struct and list values are
    /// dropped, since no label selector could match them.
    pub fn from_struct(s: &Struct) -> Result<Self, MetadataError> {
        let mut md = PeerMetadata::default();
        for (key, value) in &s.fields {
            let slot: &mut String = match key.as_str() {
                keys::NAME => &mut md.name,
                keys::NAMESPACE => &mut md.namespace,
                keys::WORKLOAD_NAME => &mut md.workload_name,
                keys::CLUSTER_ID => &mut md.cluster_id,
                keys::OWNER => &mut md.owner,
                keys::IDENTITY => md.identity.get_or_insert_with(String::new),
                keys::REGION => md.region.get_or_insert_with(String::new),
                keys::AVAILABILITY_ZONE => md.zone.get_or_insert_with(String::new),
                keys::SERVICE_ACCOUNT => md.service_account.get_or_insert_with(String::new),
                keys::MESH_ID => md.mesh_id.get_or_insert_with(String::new),
                keys::LABELS => {
                    md.labels = labels_from_value(value)?;
                    continue;
                }
                _ => {
                    md.extra.insert(key.clone(), ExtraValue(value.clone()));
                    continue;
                }
            };
            *slot = string_field(key_name(key), value)?.to_owned();
        }
        Ok(md)
    }

    /// A label's value.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).map(String::as_str)
    }

    /// Istio's canonical service: label `service.istio.io/canonical-name`, else
    /// `app.kubernetes.io/name`, else `app`, else the workload name.
    pub fn canonical_service(&self) -> String {
        [labels::CANONICAL_NAME, labels::K8S_NAME, labels::APP]
            .iter()
            .find_map(|k| self.label(k).filter(|v| !v.is_empty()))
            .unwrap_or(&self.workload_name)
            .to_owned()
    }

    /// Istio's canonical revision: label `service.istio.io/canonical-revision`, else
    /// `app.kubernetes.io/version`, else `version`, else `latest`.
    pub fn canonical_revision(&self) -> String {
        [
            labels::CANONICAL_REVISION,
            labels::K8S_VERSION,
            labels::VERSION,
        ]
        .iter()
        .find_map(|k| self.label(k).filter(|v| !v.is_empty()))
        .unwrap_or(DEFAULT_CANONICAL_REVISION)
        .to_owned()
    }
}

/// `OWNER` of a Deployment's pods: `kubernetes://apis/apps/v1/namespaces/<ns>/deployments/<name>`.
pub fn owner_for_deployment(namespace: &str, name: &str) -> String {
    format!("kubernetes://apis/apps/v1/namespaces/{namespace}/deployments/{name}")
}

/// A sidecar's node id: `sidecar~<ip>~<pod>.<ns>~<ns>.svc.cluster.local`.
pub fn node_id(ip: IpAddr, pod: &str, namespace: &str) -> String {
    format!("sidecar~{ip}~{pod}.{namespace}~{namespace}.svc.cluster.local")
}

pub(crate) fn string_value(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.to_owned())),
    }
}

/// Name of a `google.protobuf.Value` kind, for error messages.
pub(crate) fn kind_name(v: &Value) -> &'static str {
    match &v.kind {
        None => "no value",
        Some(Kind::NullValue(_)) => "null",
        Some(Kind::NumberValue(_)) => "number",
        Some(Kind::StringValue(_)) => "string",
        Some(Kind::BoolValue(_)) => "bool",
        Some(Kind::StructValue(_)) => "struct",
        Some(Kind::ListValue(ListValue { .. })) => "list",
    }
}

fn key_name(key: &str) -> &'static str {
    keys::ALL
        .iter()
        .find(|k| **k == key)
        .copied()
        .unwrap_or("(unknown)")
}

fn string_field<'a>(key: &'static str, v: &'a Value) -> Result<&'a str, MetadataError> {
    match &v.kind {
        Some(Kind::StringValue(s)) => Ok(s),
        _ => Err(MetadataError::NotAString {
            key,
            found: kind_name(v),
        }),
    }
}

fn labels_from_value(v: &Value) -> Result<BTreeMap<String, String>, MetadataError> {
    let Some(Kind::StructValue(s)) = &v.kind else {
        return Err(MetadataError::LabelsNotAStruct {
            found: kind_name(v),
        });
    };
    Ok(s.fields
        .iter()
        .filter_map(|(k, v)| label_text(v).map(|t| (k.clone(), t)))
        .collect())
}

fn label_text(v: &Value) -> Option<String> {
    match &v.kind {
        Some(Kind::StringValue(s)) => Some(s.clone()),
        Some(Kind::BoolValue(b)) => Some(b.to_string()),
        Some(Kind::NumberValue(n)) => Some(number_text(*n)),
        _ => None,
    }
}

/// Shortest decimal form; integral values print without a fraction (`2`, not `2.0`).
fn number_text(n: f64) -> String {
    if n.is_finite() && n.fract() == 0.0 && n.abs() < 9.007_199_254_740_992e15 {
        format!("{}", n as i64)
    } else {
        format!("{n}")
    }
}

impl fmt::Display for PeerMetadata {
    /// `<workload>.<namespace>` (or the pod name when the workload is unknown), for logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let who = if self.workload_name.is_empty() {
            &self.name
        } else {
            &self.workload_name
        };
        write!(f, "{who}.{}", self.namespace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn canonical_service_precedence() {
        let mut md = PeerMetadata {
            workload_name: "ratings-v2".into(),
            ..Default::default()
        };
        assert_eq!(md.canonical_service(), "ratings-v2");
        md.labels = labels(&[("app", "ratings")]);
        assert_eq!(md.canonical_service(), "ratings");
        md.labels
            .insert(labels::K8S_NAME.into(), "k8s-ratings".into());
        assert_eq!(md.canonical_service(), "k8s-ratings");
        md.labels
            .insert(labels::CANONICAL_NAME.into(), "canon".into());
        assert_eq!(md.canonical_service(), "canon");
    }

    #[test]
    fn canonical_revision_precedence() {
        let mut md = PeerMetadata::default();
        assert_eq!(md.canonical_revision(), "latest");
        md.labels = labels(&[("version", "v2")]);
        assert_eq!(md.canonical_revision(), "v2");
        md.labels.insert(labels::K8S_VERSION.into(), "2.0".into());
        assert_eq!(md.canonical_revision(), "2.0");
        md.labels
            .insert(labels::CANONICAL_REVISION.into(), "rev".into());
        assert_eq!(md.canonical_revision(), "rev");
    }

    #[test]
    fn owner_and_node_id() {
        assert_eq!(
            owner_for_deployment("default", "ratings-v2"),
            "kubernetes://apis/apps/v1/namespaces/default/deployments/ratings-v2"
        );
        assert_eq!(
            node_id("10.0.0.5".parse().unwrap(), "ratings-v2-abc", "default"),
            "sidecar~10.0.0.5~ratings-v2-abc.default~default.svc.cluster.local"
        );
        assert_eq!(
            node_id("fd00::5".parse().unwrap(), "p", "ns"),
            "sidecar~fd00::5~p.ns~ns.svc.cluster.local"
        );
    }

    #[test]
    fn struct_round_trip_keeps_extra_and_empty_labels() {
        let mut md = PeerMetadata::for_deployment("default", "tcp-echo", "tcp-echo-1", labels(&[]));
        md.extra.insert(
            "PLATFORM_METADATA".into(),
            ExtraValue(Value {
                kind: Some(Kind::StructValue(Struct::default())),
            }),
        );
        md.extra.insert(
            "NaN".into(),
            ExtraValue(Value {
                kind: Some(Kind::NumberValue(f64::NAN)),
            }),
        );
        let s = md.to_struct();
        assert!(matches!(
            s.fields[keys::LABELS].kind,
            Some(Kind::StructValue(ref l)) if l.fields.is_empty()
        ));
        assert!(!s.fields.contains_key(keys::IDENTITY));
        assert_eq!(PeerMetadata::from_struct(&s), Ok(md));
    }

    #[test]
    fn typed_fields_override_extra_on_write() {
        let md = PeerMetadata {
            name: "real".into(),
            extra: [("NAME".to_string(), ExtraValue(string_value("shadow")))].into(),
            ..Default::default()
        };
        let s = md.to_struct();
        assert_eq!(s.fields["NAME"], string_value("real"));
    }

    #[test]
    fn missing_keys_read_as_empty() {
        let md = PeerMetadata::from_struct(&Struct::default()).unwrap();
        assert_eq!(md, PeerMetadata::default());
    }

    #[test]
    fn wrong_kinds_are_errors() {
        let mut s = Struct::default();
        s.fields.insert(
            "NAME".into(),
            Value {
                kind: Some(Kind::NumberValue(1.0)),
            },
        );
        assert_eq!(
            PeerMetadata::from_struct(&s),
            Err(MetadataError::NotAString {
                key: "NAME",
                found: "number"
            })
        );
        let mut s = Struct::default();
        s.fields.insert("LABELS".into(), string_value("app=x"));
        let err = PeerMetadata::from_struct(&s).unwrap_err();
        assert_eq!(err, MetadataError::LabelsNotAStruct { found: "string" });
        assert_eq!(
            err.to_string(),
            "peer metadata key LABELS must be a struct, found string"
        );
    }

    #[test]
    fn non_string_label_values_rule() {
        let num = |n| Value {
            kind: Some(Kind::NumberValue(n)),
        };
        let l = Struct {
            fields: [
                ("int".to_string(), num(2.0)),
                ("frac".to_string(), num(2.5)),
                ("neg".to_string(), num(-3.0)),
                (
                    "flag".to_string(),
                    Value {
                        kind: Some(Kind::BoolValue(true)),
                    },
                ),
                (
                    "null".to_string(),
                    Value {
                        kind: Some(Kind::NullValue(0)),
                    },
                ),
                ("none".to_string(), Value { kind: None }),
                (
                    "list".to_string(),
                    Value {
                        kind: Some(Kind::ListValue(ListValue::default())),
                    },
                ),
                ("s".to_string(), string_value("x")),
            ]
            .into(),
        };
        let s = Struct {
            fields: [(
                "LABELS".to_string(),
                Value {
                    kind: Some(Kind::StructValue(l)),
                },
            )]
            .into(),
        };
        let md = PeerMetadata::from_struct(&s).unwrap();
        assert_eq!(
            md.labels,
            labels(&[
                ("flag", "true"),
                ("frac", "2.5"),
                ("int", "2"),
                ("neg", "-3"),
                ("s", "x")
            ])
        );
    }

    #[test]
    fn display_names_workload() {
        let md = PeerMetadata::for_deployment("default", "ratings-v2", "ratings-v2-x", labels(&[]));
        assert_eq!(md.to_string(), "ratings-v2.default");
    }
}
