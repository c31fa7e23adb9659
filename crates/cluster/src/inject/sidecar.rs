//! What injection adds to one pod template: Istio's labels, annotations, init container,
//! sidecar and volumes, with weir's image and arguments.
//!
//! Generated mappings list their keys alphabetically, as `istioctl kube-inject` writes
//! them (Go's encoder), so the two outputs diff cleanly.

use super::yaml::Node;
use super::{InjectError, InjectOptions, SidecarStatus, Workload};

/// Istio's container and annotation names.
pub const INIT_CONTAINER: &str = "istio-init";
pub const PROXY_CONTAINER: &str = "istio-proxy";
pub const STATUS_ANNOTATION: &str = "sidecar.istio.io/status";
pub const INJECT_ANNOTATION: &str = "sidecar.istio.io/inject";

/// The uid/gid the sidecar runs as; the capture rules leave its own traffic alone.
const PROXY_UID: &str = "1337";
/// Inbound ports never captured: weir's metrics (15090) and readiness (15021) ports, and
/// Istio's agent port 15020, kept so an Istio-aware tool sees the arguments it expects.
const EXCLUDED_INBOUND: [&str; 3] = ["15090", "15021", "15020"];
/// Volumes the sidecar mounts, in Istio's order. Istio also adds `workload-socket`,
/// `credential-socket` (SDS over a Unix socket) and `istio-ca-crl`; weir's sidecar uses
/// none of them.
const VOLUMES: [&str; 6] = [
    "workload-certs",
    "istio-envoy",
    "istio-data",
    "istio-podinfo",
    "istio-token",
    "istiod-ca-cert",
];

/// What happened to a pod template.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Injected,
    /// Left alone; the reason completes "document N (Kind name): …".
    Skipped(String),
}

/// A pod template about to be injected, with what error messages need to name it.
pub struct PodTemplate<'a> {
    pub index: usize,
    pub object: &'a str,
    /// Path of the pod spec in the object, e.g. `spec.template.spec`.
    pub spec_path: &'a str,
    pub workload: &'a Workload,
}

impl PodTemplate<'_> {
    fn malformed(
        &self,
        path: String,
        found: &'static str,
        expected: &'static str,
        fix: &'static str,
    ) -> InjectError {
        InjectError::Malformed {
            index: self.index,
            object: self.object.to_owned(),
            path,
            found,
            expected,
            fix,
        }
    }

    fn meta_path(&self, key: &str) -> String {
        match self.spec_path.strip_suffix("spec") {
            Some(prefix) => format!("{prefix}metadata.{key}"),
            None => format!("metadata.{key}"),
        }
    }

    /// Adds the sidecar to `template` (a mapping with `metadata` and `spec`).
    pub fn inject(
        &self,
        template: &mut Node,
        opts: &InjectOptions,
    ) -> Result<Outcome, InjectError> {
        let meta = template.get("metadata").cloned().unwrap_or(Node::Null);
        if !meta.is_map() && meta != Node::Null {
            return Err(self.malformed(
                self.meta_path("").trim_end_matches('.').to_owned(),
                meta.describe(),
                "a mapping",
                "write the pod's labels and annotations under metadata",
            ));
        }
        let labels = self.string_map(&meta, "labels")?;
        let annotations = self.string_map(&meta, "annotations")?;
        let spec = match template.get("spec") {
            Some(spec) if spec.is_map() => spec,
            other => {
                return Err(self.malformed(
                    self.spec_path.to_owned(),
                    other.map_or("missing", Node::describe),
                    "a pod spec (a mapping with containers)",
                    "add the pod spec with its containers",
                ))
            }
        };
        let containers = self.container_names(spec, "containers")?;
        if containers.is_empty() {
            return Err(InjectError::NoContainers {
                index: self.index,
                object: self.object.to_owned(),
                path: self.spec_path.to_owned(),
            });
        }
        let init_containers = self.container_names(spec, "initContainers")?;
        match spec.get("volumes") {
            None | Some(Node::Null | Node::Seq(_)) => {}
            Some(other) => {
                return Err(self.malformed(
                    format!("{}.volumes", self.spec_path),
                    other.describe(),
                    "a list of volumes",
                    "write each volume as a list item (`- name: data`)",
                ))
            }
        }

        // Already injected or opted out: say why and leave the pod as written.
        if annotations.iter().any(|(k, _)| k == STATUS_ANNOTATION) {
            return Ok(Outcome::Skipped(format!(
                "already injected ({STATUS_ANNOTATION} is set)"
            )));
        }
        if containers
            .iter()
            .chain(&init_containers)
            .any(|c| c == PROXY_CONTAINER)
        {
            return Ok(Outcome::Skipped(format!(
                "already has an {PROXY_CONTAINER} container"
            )));
        }
        // Istio's rule: a label wins over the annotation; only y/yes/true/on inject.
        let opt_out = [("label", &labels), ("annotation", &annotations)]
            .into_iter()
            .find_map(|(what, map)| {
                map.iter()
                    .find(|(k, _)| k == INJECT_ANNOTATION)
                    .map(|(_, v)| (what, v.clone()))
            });
        if let Some((what, value)) = opt_out {
            if !matches!(
                value.to_ascii_lowercase().as_str(),
                "y" | "yes" | "true" | "on"
            ) {
                return Ok(Outcome::Skipped(format!(
                    "sidecar injection disabled by the {what} {INJECT_ANNOTATION}: {value:?}"
                )));
            }
        }
        if spec.get("hostNetwork") == Some(&Node::Bool(true)) {
            return Ok(Outcome::Skipped(
                "uses the host network (hostNetwork: true), where capture rules would redirect the node's own traffic"
                    .into(),
            ));
        }

        let app_containers: Vec<String> = containers;
        let pod_ports = pod_ports_json(spec);
        let capture = CaptureArgs::from_annotations(&annotations);

        // Metadata: labels and annotations are appended after the user's.
        let not_a_map = |what: &str| {
            self.malformed(
                self.meta_path(what),
                "not a mapping",
                "a mapping",
                "write it as `key: value` lines",
            )
        };
        let metadata = metadata_entry(template).ok_or_else(|| not_a_map("metadata"))?;
        let label_of = |key: &str| {
            labels
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
                .filter(|v| !v.is_empty())
        };
        let canonical_name = label_of("app.kubernetes.io/name")
            .or_else(|| label_of("app"))
            .unwrap_or(&self.workload.name);
        let canonical_name = canonical_name_trim(canonical_name);
        let canonical_revision = label_of("app.kubernetes.io/version")
            .or_else(|| label_of("version"))
            .unwrap_or("latest")
            .to_owned();
        let label_map = metadata
            .map_entry("labels")
            .ok_or_else(|| not_a_map("labels"))?;
        add_if_absent(label_map, "security.istio.io/tlsMode", "istio");
        if !canonical_name.is_empty() {
            add_if_absent(
                label_map,
                "service.istio.io/canonical-name",
                &canonical_name,
            );
        }
        add_if_absent(
            label_map,
            "service.istio.io/canonical-revision",
            &canonical_revision,
        );

        let annotation_map = metadata
            .map_entry("annotations")
            .ok_or_else(|| not_a_map("annotations"))?;
        annotation_map.set("istio.io/rev", Node::str("default"));
        add_if_absent(
            annotation_map,
            "kubectl.kubernetes.io/default-container",
            &app_containers[0],
        );
        add_if_absent(
            annotation_map,
            "kubectl.kubernetes.io/default-logs-container",
            &app_containers[0],
        );
        // Istio points these at its agent's port 15020, which merges the app's metrics
        // with Envoy's. weir has no agent and no merging: the sidecar itself serves
        // /stats/prometheus on 15090. A pod that already declares prometheus.io
        // annotations keeps them (they describe the app's own metrics).
        if !annotations
            .iter()
            .any(|(k, _)| k.starts_with("prometheus.io/"))
        {
            annotation_map.set("prometheus.io/path", Node::str("/stats/prometheus"));
            annotation_map.set("prometheus.io/port", Node::str("15090"));
            annotation_map.set("prometheus.io/scrape", Node::str("true"));
        }
        let status = SidecarStatus {
            init_containers: if opts.native_sidecars {
                vec![INIT_CONTAINER, PROXY_CONTAINER]
            } else {
                vec![INIT_CONTAINER]
            },
            containers: (!opts.native_sidecars).then(|| vec![PROXY_CONTAINER]),
            volumes: VOLUMES.to_vec(),
            image_pull_secrets: None,
            revision: "default",
        };
        let status = serde_json::to_string(&status).unwrap_or_default();
        annotation_map.set(STATUS_ANNOTATION, Node::Str(status));

        // Spec: containers and volumes. Checked to be a mapping above.
        let spec = template.get_mut("spec").ok_or_else(|| not_a_map("spec"))?;
        let init = init_container(opts, &capture);
        let proxy = proxy_container(opts, self.workload, &labels, &app_containers, &pod_ports);
        // Checked to be lists (or absent) above.
        let not_a_list = |key: &str| {
            self.malformed(
                format!("{}.{key}", self.spec_path),
                "not a list",
                "a list",
                "write it as a YAML list",
            )
        };
        if opts.native_sidecars {
            // Istio's order: capture first, then the proxy, then the app's own init
            // containers, so they already run inside the mesh.
            let inits = spec
                .seq_entry("initContainers")
                .ok_or_else(|| not_a_list("initContainers"))?;
            let mut proxy = proxy;
            proxy.set("restartPolicy", Node::str("Always"));
            sort_keys(&mut proxy);
            inits.insert(0, proxy);
            inits.insert(0, init);
        } else {
            // Capture last, so the app's init containers are not yet redirected to a
            // proxy that is not running; the proxy after the app's containers, so
            // `kubectl exec` defaults to the app.
            spec.seq_entry("initContainers")
                .ok_or_else(|| not_a_list("initContainers"))?
                .push(init);
            spec.seq_entry("containers")
                .ok_or_else(|| not_a_list("containers"))?
                .push(proxy);
        }
        let volumes = spec
            .seq_entry("volumes")
            .ok_or_else(|| not_a_list("volumes"))?;
        volumes.extend(sidecar_volumes());
        Ok(Outcome::Injected)
    }

    /// A `metadata.labels`/`annotations` mapping as strings (values of other types are
    /// written as text, as Kubernetes would reject them anyway).
    fn string_map(&self, meta: &Node, key: &str) -> Result<Vec<(String, String)>, InjectError> {
        match meta.get(key) {
            None | Some(Node::Null) => Ok(Vec::new()),
            Some(Node::Map(entries)) => Ok(entries
                .iter()
                .map(|(k, v)| (scalar_text(k), scalar_text(v)))
                .collect()),
            Some(other) => Err(self.malformed(
                self.meta_path(key),
                other.describe(),
                "a mapping of names to strings",
                "write one `key: \"value\"` per line",
            )),
        }
    }

    /// Names of the containers under `key` of the pod spec.
    fn container_names(&self, spec: &Node, key: &str) -> Result<Vec<String>, InjectError> {
        let path = format!("{}.{key}", self.spec_path);
        let items = match spec.get(key) {
            None | Some(Node::Null) => return Ok(Vec::new()),
            Some(Node::Seq(items)) => items,
            Some(other) => {
                return Err(self.malformed(
                    path,
                    other.describe(),
                    "a list of containers",
                    "write each container as a list item (`- name: app`)",
                ))
            }
        };
        items
            .iter()
            .map(|c| match c.get_str("name") {
                Some(name) if c.is_map() => Ok(name.to_owned()),
                _ => Err(self.malformed(
                    format!("{path}[]"),
                    if c.is_map() {
                        "a container without a name"
                    } else {
                        c.describe()
                    },
                    "a container with a name",
                    "give every container a `name:`",
                )),
            })
            .collect()
    }
}

/// The template's `metadata` (a null one becomes a mapping), created first in the
/// template when missing; `None` when it is something else.
fn metadata_entry(template: &mut Node) -> Option<&mut Node> {
    if let Node::Map(entries) = template {
        if !entries.iter().any(|(k, _)| k.as_str() == Some("metadata")) {
            entries.insert(0, (Node::str("metadata"), Node::Map(Vec::new())));
        }
    }
    template.map_entry("metadata")
}

fn scalar_text(node: &Node) -> String {
    match node {
        Node::Str(s) => s.clone(),
        Node::Bool(b) => b.to_string(),
        Node::Int(i) => i.to_string(),
        Node::UInt(u) => u.to_string(),
        Node::Float(f) => f.to_string(),
        Node::Null => String::new(),
        Node::Seq(_) | Node::Map(_) => node.describe().to_owned(),
    }
}

fn add_if_absent(map: &mut Node, key: &str, value: &str) {
    if map.get(key).is_none() {
        map.set(key, Node::str(value));
    }
}

/// Istio's `trunc 63 | trimAll "-_."`: a label value's limits.
fn canonical_name_trim(name: &str) -> String {
    let truncated: String = name.chars().take(63).collect();
    truncated.trim_matches(['-', '_', '.']).to_owned()
}

/// `ISTIO_META_POD_PORTS` as Istio writes it: each container port as JSON with Go's field
/// order, one per line.
fn pod_ports_json(spec: &Node) -> String {
    let mut lines = Vec::new();
    for container in spec
        .get("containers")
        .and_then(Node::as_seq)
        .into_iter()
        .flatten()
    {
        for port in container
            .get("ports")
            .and_then(Node::as_seq)
            .into_iter()
            .flatten()
        {
            let fields: Vec<String> = ["name", "hostPort", "containerPort", "protocol", "hostIP"]
                .into_iter()
                .filter_map(|key| {
                    // Go's encoder leaves out empty strings and zero numbers (omitempty).
                    let value = match port.get(key)? {
                        Node::Str(s) if !s.is_empty() => serde_json::Value::from(s.clone()),
                        Node::Int(i) if *i != 0 => serde_json::Value::from(*i),
                        Node::UInt(u) => serde_json::Value::from(*u),
                        _ => return None,
                    };
                    Some(format!("{}:{value}", serde_json::Value::from(key)))
                })
                .collect();
            lines.push(format!("{{{}}}", fields.join(",")));
        }
    }
    let mut out = String::from("[");
    for (i, line) in lines.iter().enumerate() {
        out.push_str("\n    ");
        if i > 0 {
            out.push(',');
        }
        out.push_str(line);
    }
    out.push_str("\n]");
    out
}

/// Capture arguments a pod's `traffic.sidecar.istio.io/*` annotations adjust, as Istio's
/// template maps them onto `istio-iptables` flags.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CaptureArgs {
    include_outbound_cidrs: String,
    exclude_outbound_cidrs: String,
    include_inbound_ports: String,
    exclude_inbound_ports: String,
    exclude_outbound_ports: Option<String>,
}

impl CaptureArgs {
    fn from_annotations(annotations: &[(String, String)]) -> CaptureArgs {
        let get = |key: &str| {
            annotations
                .iter()
                .find(|(k, _)| k == &format!("traffic.sidecar.istio.io/{key}"))
                .map(|(_, v)| v.clone())
        };
        let mut excluded: Vec<String> = EXCLUDED_INBOUND.iter().map(|p| p.to_string()).collect();
        for port in get("excludeInboundPorts").unwrap_or_default().split(',') {
            let port = port.trim();
            if !port.is_empty() && !excluded.iter().any(|p| p == port) {
                excluded.push(port.to_owned());
            }
        }
        CaptureArgs {
            include_outbound_cidrs: get("includeOutboundIPRanges").unwrap_or_else(|| "*".into()),
            exclude_outbound_cidrs: get("excludeOutboundIPRanges").unwrap_or_default(),
            include_inbound_ports: get("includeInboundPorts").unwrap_or_else(|| "*".into()),
            exclude_inbound_ports: excluded.join(","),
            exclude_outbound_ports: get("excludeOutboundPorts").filter(|v| !v.is_empty()),
        }
    }
}

fn str_seq<S: AsRef<str>>(items: &[S]) -> Node {
    Node::Seq(items.iter().map(|s| Node::str(s.as_ref())).collect())
}

/// Istio's default proxy resources.
fn resources() -> Node {
    Node::map([
        (
            "limits",
            Node::map([("cpu", Node::str("2")), ("memory", Node::str("1Gi"))]),
        ),
        (
            "requests",
            Node::map([("cpu", Node::str("100m")), ("memory", Node::str("128Mi"))]),
        ),
    ])
}

/// `istio-init`: `weir proxy init` with `istio-iptables`' flags, as root with the two
/// network capabilities it needs.
fn init_container(opts: &InjectOptions, capture: &CaptureArgs) -> Node {
    let mut args: Vec<String> = [
        "proxy", "init", "-p", "15001", "-z", "15006", "-u", PROXY_UID, "-m", "REDIRECT", "-i",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(capture.include_outbound_cidrs.clone());
    args.push("-x".into());
    args.push(capture.exclude_outbound_cidrs.clone());
    args.push("-b".into());
    args.push(capture.include_inbound_ports.clone());
    args.push("-d".into());
    args.push(capture.exclude_inbound_ports.clone());
    if let Some(ports) = &capture.exclude_outbound_ports {
        args.push("-o".into());
        args.push(ports.clone());
    }
    Node::map([
        ("args", str_seq(&args)),
        ("image", Node::str(&opts.image)),
        ("name", Node::str(INIT_CONTAINER)),
        ("resources", resources()),
        (
            "securityContext",
            Node::map([
                ("allowPrivilegeEscalation", Node::Bool(false)),
                (
                    "capabilities",
                    Node::map([
                        ("add", Node::seq_of_str(&["NET_ADMIN", "NET_RAW"])),
                        ("drop", Node::seq_of_str(&["ALL"])),
                    ]),
                ),
                ("privileged", Node::Bool(false)),
                ("readOnlyRootFilesystem", Node::Bool(false)),
                ("runAsGroup", Node::Int(0)),
                ("runAsNonRoot", Node::Bool(false)),
                ("runAsUser", Node::Int(0)),
            ]),
        ),
    ])
}

fn env_value(name: &str, value: &str) -> Node {
    Node::map([("name", Node::str(name)), ("value", Node::str(value))])
}

fn env_field(name: &str, field: &str) -> Node {
    Node::map([
        ("name", Node::str(name)),
        (
            "valueFrom",
            Node::map([("fieldRef", Node::map([("fieldPath", Node::str(field))]))]),
        ),
    ])
}

fn ready_probe(period: i64, failures: i64) -> Node {
    Node::map([
        ("failureThreshold", Node::Int(failures)),
        (
            "httpGet",
            Node::map([
                ("path", Node::str("/healthz/ready")),
                ("port", Node::Int(15021)),
            ]),
        ),
        ("periodSeconds", Node::Int(period)),
        ("timeoutSeconds", Node::Int(3)),
    ])
}

/// `istio-proxy`: `weir proxy sidecar`, configured through Istio's environment variables.
fn proxy_container(
    opts: &InjectOptions,
    workload: &Workload,
    labels: &[(String, String)],
    app_containers: &[String],
    pod_ports: &str,
) -> Node {
    let workload_name = labels
        .iter()
        .find(|(k, _)| k == "service.istio.io/workload-name")
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| workload.name.clone());
    let mut env = vec![
        env_value("CA_ADDR", &opts.control_plane),
        env_field("POD_NAME", "metadata.name"),
        env_field("POD_NAMESPACE", "metadata.namespace"),
        env_field("INSTANCE_IP", "status.podIP"),
        env_field("SERVICE_ACCOUNT", "spec.serviceAccountName"),
        env_field("HOST_IP", "status.hostIP"),
        env_value("ISTIO_META_POD_PORTS", pod_ports),
        env_value("ISTIO_META_APP_CONTAINERS", &app_containers.join(",")),
        env_value("ISTIO_META_CLUSTER_ID", "Kubernetes"),
        env_field("ISTIO_META_NODE_NAME", "spec.nodeName"),
        env_value("ISTIO_META_INTERCEPTION_MODE", "REDIRECT"),
    ];
    if !workload_name.is_empty() {
        env.push(env_value("ISTIO_META_WORKLOAD_NAME", &workload_name));
    }
    if let Some(owner) = workload.owner() {
        env.push(env_value("ISTIO_META_OWNER", &owner));
    }
    env.push(env_value("ISTIO_META_MESH_ID", &opts.trust_domain));
    env.push(env_value("TRUST_DOMAIN", &opts.trust_domain));
    let mount = |name: &str, path: &str| {
        Node::map([("mountPath", Node::str(path)), ("name", Node::str(name))])
    };
    Node::map([
        ("args", Node::seq_of_str(&["proxy", "sidecar"])),
        ("env", Node::Seq(env)),
        ("image", Node::str(&opts.image)),
        ("name", Node::str(PROXY_CONTAINER)),
        (
            "ports",
            Node::Seq(vec![Node::map([
                ("containerPort", Node::Int(15090)),
                ("name", Node::str("http-envoy-prom")),
                ("protocol", Node::str("TCP")),
            ])]),
        ),
        ("readinessProbe", ready_probe(15, 4)),
        ("resources", resources()),
        (
            "securityContext",
            Node::map([
                ("allowPrivilegeEscalation", Node::Bool(false)),
                (
                    "capabilities",
                    Node::map([("drop", Node::seq_of_str(&["ALL"]))]),
                ),
                ("privileged", Node::Bool(false)),
                ("readOnlyRootFilesystem", Node::Bool(true)),
                ("runAsGroup", Node::Int(1337)),
                ("runAsNonRoot", Node::Bool(true)),
                ("runAsUser", Node::Int(1337)),
            ]),
        ),
        // Gates the app's start until the sidecar is ready (native sidecars), as Istio's.
        ("startupProbe", ready_probe(1, 600)),
        (
            "volumeMounts",
            Node::Seq(vec![
                mount(
                    "workload-certs",
                    "/var/run/secrets/workload-spiffe-credentials",
                ),
                mount("istiod-ca-cert", "/var/run/secrets/istio"),
                mount("istio-data", "/var/lib/istio/data"),
                mount("istio-envoy", "/etc/istio/proxy"),
                mount("istio-token", "/var/run/secrets/tokens"),
                mount("istio-podinfo", "/etc/istio/pod"),
            ]),
        ),
    ])
}

/// Puts a generated mapping's keys in alphabetical order (after adding one).
fn sort_keys(node: &mut Node) {
    if let Node::Map(entries) = node {
        entries.sort_by(|(a, _), (b, _)| a.as_str().cmp(&b.as_str()));
    }
}

fn sidecar_volumes() -> Vec<Node> {
    let field = |path: &str, field: &str| {
        Node::map([
            ("fieldRef", Node::map([("fieldPath", Node::str(field))])),
            ("path", Node::str(path)),
        ])
    };
    vec![
        // Istio leaves the source out (an emptyDir); the sidecar keeps its certificates
        // there, or finds them there when a Secret is mounted instead.
        Node::map([
            ("emptyDir", Node::Map(Vec::new())),
            ("name", Node::str("workload-certs")),
        ]),
        Node::map([
            ("emptyDir", Node::map([("medium", Node::str("Memory"))])),
            ("name", Node::str("istio-envoy")),
        ]),
        Node::map([
            ("emptyDir", Node::Map(Vec::new())),
            ("name", Node::str("istio-data")),
        ]),
        Node::map([
            (
                "downwardAPI",
                Node::map([(
                    "items",
                    Node::Seq(vec![
                        field("labels", "metadata.labels"),
                        field("annotations", "metadata.annotations"),
                    ]),
                )]),
            ),
            ("name", Node::str("istio-podinfo")),
        ]),
        Node::map([
            ("name", Node::str("istio-token")),
            (
                "projected",
                Node::map([(
                    "sources",
                    Node::Seq(vec![Node::map([(
                        "serviceAccountToken",
                        Node::map([
                            ("audience", Node::str("istio-ca")),
                            ("expirationSeconds", Node::Int(43200)),
                            ("path", Node::str("istio-token")),
                        ]),
                    )])]),
                )]),
            ),
        ]),
        Node::map([
            (
                "configMap",
                Node::map([("name", Node::str("istio-ca-root-cert"))]),
            ),
            ("name", Node::str("istiod-ca-cert")),
        ]),
    ]
}
