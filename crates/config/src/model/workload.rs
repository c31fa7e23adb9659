//! `apps/v1` Deployment and the pod template it carries.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value as Json;

use crate::decode::{string_enum, Cx, Decode, StringMap};
use crate::model::core::{check_unique, Protocol};
use crate::model::{is_false, LabelSelector};
use crate::node::Node;
use crate::values::{Port, Quantity};

/// Deployment `spec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentSpec {
    /// `replicas` (defaults to 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
    /// `selector`.
    pub selector: LabelSelector,
    /// `template`.
    pub template: PodTemplate,
    /// `strategy`, `minReadySeconds`, ... kept verbatim.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Json>,
}

impl Decode for DeploymentSpec {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Self {
        let f = cx.fields(
            node,
            &["replicas", "selector", "template"],
            &[
                "strategy",
                "minReadySeconds",
                "revisionHistoryLimit",
                "progressDeadlineSeconds",
                "paused",
            ],
        );
        let spec = DeploymentSpec {
            replicas: f.opt(cx, "replicas"),
            selector: f.req(
                cx,
                "selector",
                "add `selector: {matchLabels: ...}` matching the pod template labels",
            ),
            template: f.req(
                cx,
                "template",
                "add the pod `template` with metadata.labels and spec.containers",
            ),
            extra: f.rest(),
        };
        // Kubernetes rejects a selector that does not select its own template.
        if let (Some(sel), false) = (f.node("selector"), spec.selector.match_labels.0.is_empty()) {
            let labels = &spec.template.metadata.labels.0;
            let missing: Vec<String> = spec
                .selector
                .match_labels
                .0
                .iter()
                .filter(|(k, v)| labels.get(*k) != Some(*v))
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            if !missing.is_empty() && f.node("template").is_some() {
                cx.at_key("selector", |cx| {
                    cx.error(
                        sel,
                        format!(
                            "selector does not match the pod template labels (missing: {})",
                            missing.join(", ")
                        ),
                        Some(
                            "make spec.template.metadata.labels contain every selector label"
                                .into(),
                        ),
                    );
                });
            }
        }
        spec
    }
}

/// Pod template: labels and annotations, and the pod spec.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PodTemplate {
    /// `metadata`.
    pub metadata: TemplateMeta,
    /// `spec`.
    pub spec: PodSpec,
}

impl Decode for PodTemplate {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Self {
        let f = cx.fields(node, &["metadata", "spec"], &[]);
        PodTemplate {
            metadata: f.get(cx, "metadata"),
            spec: f.req(cx, "spec", "add the pod `spec` with its `containers`"),
        }
    }
}

/// Pod template metadata.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TemplateMeta {
    /// `labels` (app, version: the workload's identity in metrics).
    #[serde(skip_serializing_if = "crate::model::map_is_empty")]
    pub labels: StringMap,
    /// `annotations`.
    #[serde(skip_serializing_if = "crate::model::map_is_empty")]
    pub annotations: StringMap,
    /// Other metadata kept verbatim.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Json>,
}

impl Decode for TemplateMeta {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Self {
        let f = cx.fields(
            node,
            &["labels", "annotations"],
            &[
                "name",
                "namespace",
                "generateName",
                "creationTimestamp",
                "finalizers",
                "ownerReferences",
            ],
        );
        TemplateMeta {
            labels: f.get(cx, "labels"),
            annotations: f.get(cx, "annotations"),
            extra: f.rest(),
        }
    }
}

/// Pod spec.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    /// `serviceAccountName` (defaults to `default`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// `containers`.
    pub containers: Vec<Container>,
    /// `volumes`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
    /// Scheduling and security settings weir does not act on, kept verbatim.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Json>,
}

const POD_ACCEPTED: &[&str] = &[
    "initContainers",
    "ephemeralContainers",
    "serviceAccount",
    "automountServiceAccountToken",
    "nodeSelector",
    "nodeName",
    "affinity",
    "tolerations",
    "securityContext",
    "hostNetwork",
    "hostPID",
    "hostIPC",
    "hostUsers",
    "hostname",
    "subdomain",
    "hostAliases",
    "dnsPolicy",
    "dnsConfig",
    "restartPolicy",
    "terminationGracePeriodSeconds",
    "activeDeadlineSeconds",
    "imagePullSecrets",
    "priorityClassName",
    "priority",
    "preemptionPolicy",
    "schedulerName",
    "shareProcessNamespace",
    "topologySpreadConstraints",
    "enableServiceLinks",
    "overhead",
    "readinessGates",
    "runtimeClassName",
    "setHostnameAsFQDN",
    "os",
    "schedulingGates",
    "resourceClaims",
    "resources",
];

impl Decode for PodSpec {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Self {
        let f = cx.fields(
            node,
            &["serviceAccountName", "containers", "volumes"],
            POD_ACCEPTED,
        );
        let containers: Vec<Container> = f.req(
            cx,
            "containers",
            "add at least one container with a `name` and an `image`",
        );
        if let Some(list) = f.node("containers") {
            if containers.is_empty() {
                cx.at_key("containers", |cx| {
                    cx.error(
                        list,
                        "a pod needs at least one container",
                        Some("add a container with a `name` and an `image`".into()),
                    );
                });
            }
            check_unique(
                cx,
                list,
                "containers",
                containers.iter().map(|c| Some(c.name.as_str())),
                "container name",
            );
        }
        let volumes: Vec<Volume> = f.get(cx, "volumes");
        if let Some(list) = f.node("volumes") {
            check_unique(
                cx,
                list,
                "volumes",
                volumes.iter().map(|v| Some(v.name.as_str())),
                "volume name",
            );
        }
        PodSpec {
            service_account_name: f.opt(cx, "serviceAccountName"),
            containers,
            volumes,
            extra: f.rest(),
        }
    }
}

string_enum!(
    /// Container `imagePullPolicy` (accepted; images map to local programs).
    PullPolicy, "image pull policy" {
        /// `IfNotPresent`
        IfNotPresent = "IfNotPresent",
        /// `Always`
        Always = "Always",
        /// `Never`
        Never = "Never",
    }
);

/// A container.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    /// `name`.
    pub name: String,
    /// `image`.
    pub image: String,
    /// `imagePullPolicy` (kept; weir maps images to local programs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<PullPolicy>,
    /// `ports`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ContainerPort>,
    /// `env`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// `command`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// `args`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// `volumeMounts`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub volume_mounts: Vec<VolumeMount>,
    /// `resources` (requests and limits as quantities).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// `securityContext`, kept verbatim.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub security_context: Option<Json>,
    /// Probes, lifecycle, workingDir, ... kept verbatim.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Json>,
}

impl Decode for Container {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Self {
        let f = cx.fields(
            node,
            &[
                "name",
                "image",
                "imagePullPolicy",
                "ports",
                "env",
                "command",
                "args",
                "volumeMounts",
                "resources",
                "securityContext",
            ],
            &[
                "workingDir",
                "envFrom",
                "livenessProbe",
                "readinessProbe",
                "startupProbe",
                "lifecycle",
                "stdin",
                "stdinOnce",
                "tty",
                "terminationMessagePath",
                "terminationMessagePolicy",
                "volumeDevices",
                "restartPolicy",
                "resizePolicy",
            ],
        );
        Container {
            name: f.req(cx, "name", "name the container, e.g. `name: app`"),
            image: f.req(cx, "image", "set the container image"),
            image_pull_policy: f.opt(cx, "imagePullPolicy"),
            ports: f.get(cx, "ports"),
            env: f.get(cx, "env"),
            command: f.get(cx, "command"),
            args: f.get(cx, "args"),
            volume_mounts: f.get(cx, "volumeMounts"),
            resources: f.opt(cx, "resources"),
            security_context: f.opt(cx, "securityContext"),
            extra: f.rest(),
        }
    }
}

/// Container `resources`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Resources {
    /// `requests`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub requests: BTreeMap<String, Quantity>,
    /// `limits`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub limits: BTreeMap<String, Quantity>,
    /// `claims`, kept verbatim.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Json>,
}

impl Decode for Resources {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Self {
        let f = cx.fields(node, &["requests", "limits"], &["claims"]);
        Resources {
            requests: f.get(cx, "requests"),
            limits: f.get(cx, "limits"),
            extra: f.rest(),
        }
    }
}

/// A container port.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerPort {
    /// `containerPort`.
    pub container_port: Port,
    /// `name`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `protocol`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    /// `hostPort`, `hostIP`, kept verbatim.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Json>,
}

impl Decode for ContainerPort {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Self {
        let f = cx.fields(
            node,
            &["containerPort", "name", "protocol"],
            &["hostPort", "hostIP"],
        );
        ContainerPort {
            container_port: f.req(cx, "containerPort", "set the port the container listens on"),
            name: f.opt(cx, "name"),
            protocol: f.opt(cx, "protocol"),
            extra: f.rest(),
        }
    }
}

/// An environment variable: a literal `value` or `valueFrom.secretKeyRef`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvVar {
    /// `name`.
    pub name: String,
    /// `value`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// `valueFrom`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value_from: Option<EnvSource>,
}

impl Decode for EnvVar {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Self {
        let f = cx.fields(node, &["name", "value", "valueFrom"], &[]);
        let var = EnvVar {
            name: f.req(cx, "name", "name the variable"),
            value: f.opt(cx, "value"),
            value_from: f.opt(cx, "valueFrom"),
        };
        if var.value.is_some() && var.value_from.is_some() {
            let (line, column) = f.key_position("valueFrom");
            cx.at_key("valueFrom", |cx| {
                cx.error_at(
                    line,
                    column,
                    "`value` and `valueFrom` are mutually exclusive",
                    Some("keep only one of them".into()),
                );
            });
        }
        var
    }
}

/// `valueFrom`: weir resolves `secretKeyRef`; the other sources are kept verbatim.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvSource {
    /// `secretKeyRef`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<SecretKeyRef>,
    /// `configMapKeyRef`, `fieldRef`, `resourceFieldRef`, kept verbatim.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Json>,
}

impl Decode for EnvSource {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Self {
        let f = cx.fields(
            node,
            &["secretKeyRef"],
            &["configMapKeyRef", "fieldRef", "resourceFieldRef"],
        );
        EnvSource {
            secret_key_ref: f.opt(cx, "secretKeyRef"),
            extra: f.rest(),
        }
    }
}

/// `secretKeyRef`: a key of a Secret in the pod's namespace.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SecretKeyRef {
    /// Secret name.
    pub name: String,
    /// Key in the Secret.
    pub key: String,
    /// `optional`.
    #[serde(skip_serializing_if = "is_false")]
    pub optional: bool,
}

impl Decode for SecretKeyRef {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Self {
        let f = cx.fields(node, &["name", "key", "optional"], &[]);
        SecretKeyRef {
            name: f.req(cx, "name", "name the Secret"),
            key: f.req(cx, "key", "name the key inside the Secret"),
            optional: f.get(cx, "optional"),
        }
    }
}

/// A volume mount.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeMount {
    /// Volume name.
    pub name: String,
    /// `mountPath`.
    pub mount_path: String,
    /// `readOnly`.
    #[serde(skip_serializing_if = "is_false")]
    pub read_only: bool,
    /// `subPath` and friends, kept verbatim.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Json>,
}

impl Decode for VolumeMount {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Self {
        let f = cx.fields(
            node,
            &["name", "mountPath", "readOnly"],
            &[
                "subPath",
                "subPathExpr",
                "mountPropagation",
                "recursiveReadOnly",
            ],
        );
        VolumeMount {
            name: f.req(cx, "name", "name the volume to mount"),
            mount_path: f.req(cx, "mountPath", "set the path inside the container"),
            read_only: f.get(cx, "readOnly"),
            extra: f.rest(),
        }
    }
}

/// A pod volume; `emptyDir` is modelled, other sources are kept verbatim.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Volume {
    /// `name`.
    pub name: String,
    /// `emptyDir` (its `medium`/`sizeLimit`, kept as written).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub empty_dir: Option<Json>,
    /// Other volume sources, kept verbatim.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Json>,
}

impl Decode for Volume {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Self {
        let f = cx.fields(
            node,
            &["name", "emptyDir"],
            &[
                "configMap",
                "secret",
                "persistentVolumeClaim",
                "hostPath",
                "projected",
                "downwardAPI",
                "ephemeral",
                "csi",
                "nfs",
                "image",
            ],
        );
        let empty_dir = f.node("emptyDir").map(Node::to_json).or_else(|| {
            // `emptyDir:` with nothing after it is an empty emptyDir, not an absent one.
            f.has_key("emptyDir")
                .then(|| Json::Object(Default::default()))
        });
        Volume {
            name: f.req(cx, "name", "name the volume"),
            empty_dir,
            extra: f.rest(),
        }
    }
}
