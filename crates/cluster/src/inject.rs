//! `weir inject`: adds weir's sidecar to Kubernetes manifests in the shape
//! `istioctl kube-inject` produces, so the result runs on a real cluster with weir's image.
//!
//! The names are Istio's (`istio-init`, `istio-proxy`, `sidecar.istio.io/status`, the
//! `istio-*` volumes, the `ISTIO_META_*` variables) so that tools, dashboards and weir's own
//! control plane recognise an injected pod; the images and arguments are weir's. The
//! transform is pure: text in, text and notices out. Documents that get no sidecar (other
//! kinds, opted-out or already injected pods) are written back byte for byte.

use serde::Serialize;

mod sidecar;
mod yaml;

#[cfg(test)]
mod tests;

use yaml::{Node, RawDocument};

/// The image repository `weir inject` uses by default; the tag is weir's version.
pub const DEFAULT_IMAGE_REPOSITORY: &str = "ghcr.io/weir-mesh/weir";
/// Where sidecars find the control plane: the `istiod` Service of
/// `deploy/kubernetes/weir-control.yaml`, Istio's default `CA_ADDR`.
pub const DEFAULT_CONTROL_PLANE: &str = "istiod.istio-system.svc:15012";
/// Trust domain of workload identities, Istio's default.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
/// Largest input accepted; manifests are kilobytes, this only stops runaway input.
pub const MAX_INPUT_BYTES: usize = 16 * 1024 * 1024;

/// How sidecars are injected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectOptions {
    /// Image of the init container and the sidecar (one image for both).
    pub image: String,
    /// Run the sidecar as a Kubernetes native sidecar (an init container with
    /// `restartPolicy: Always`, Kubernetes ≥ 1.29), as Istio does by default; otherwise
    /// it is appended to `containers`.
    pub native_sidecars: bool,
    /// Control plane address the sidecar dials (`CA_ADDR`).
    pub control_plane: String,
    /// Trust domain of workload identities (`TRUST_DOMAIN`, `ISTIO_META_MESH_ID`).
    pub trust_domain: String,
}

impl InjectOptions {
    /// The defaults, with weir's image at `version` (e.g. `env!("CARGO_PKG_VERSION")`).
    pub fn for_version(version: &str) -> InjectOptions {
        InjectOptions {
            image: format!("{DEFAULT_IMAGE_REPOSITORY}:{version}"),
            native_sidecars: true,
            control_plane: DEFAULT_CONTROL_PLANE.to_owned(),
            trust_domain: DEFAULT_TRUST_DOMAIN.to_owned(),
        }
    }
}

/// The injected manifests and what was left alone, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Injected {
    /// The manifests (multi-document YAML).
    pub yaml: String,
    /// One line per workload that did not get a sidecar and why, for standard error.
    pub notices: Vec<String>,
}

/// Why the manifests could not be injected. Documents are counted from 1.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InjectError {
    #[error(
        "the input is {size} bytes, more than the {MAX_INPUT_BYTES} accepted: split it into several files"
    )]
    TooLarge { size: usize },
    #[error(
        "document {index} (line {line}) is not valid YAML: {message}; fix the YAML at that line"
    )]
    Yaml {
        index: usize,
        line: usize,
        message: String,
    },
    #[error(
        "document {index} (line {line}) is {found}, not a mapping: each document must be one Kubernetes object with apiVersion, kind and metadata"
    )]
    NotAMapping {
        index: usize,
        line: usize,
        found: &'static str,
    },
    #[error(
        "document {index} ({object}): {path} has no containers: add at least one container under {path}.containers (a pod needs one to run)"
    )]
    NoContainers {
        index: usize,
        object: String,
        path: String,
    },
    #[error("document {index} ({object}): {path} is {found}, expected {expected}: {fix}")]
    Malformed {
        index: usize,
        object: String,
        path: String,
        found: &'static str,
        expected: &'static str,
        fix: &'static str,
    },
    #[error("document {index} ({object}) cannot be written back as YAML: {message}")]
    Write {
        index: usize,
        object: String,
        message: String,
    },
}

/// Adds the sidecar to every pod template of `yaml` (a multi-document stream).
///
/// Pod templates of Deployment, StatefulSet, DaemonSet, ReplicaSet, ReplicationController,
/// Job, CronJob (its `jobTemplate`), bare Pods and the items of a `List` get the sidecar;
/// other documents are written back unchanged, byte for byte. Pods already injected
/// (`sidecar.istio.io/status` or an `istio-proxy` container), opted out
/// (`sidecar.istio.io/inject: "false"`) or on the host network are left alone with a notice,
/// so injecting twice changes nothing.
pub fn inject_manifests(yaml: &str, opts: &InjectOptions) -> Result<Injected, InjectError> {
    if yaml.len() > MAX_INPUT_BYTES {
        return Err(InjectError::TooLarge { size: yaml.len() });
    }
    let mut out = String::with_capacity(yaml.len() * 2);
    let mut notices = Vec::new();
    for (i, raw) in yaml::split_documents(yaml).iter().enumerate() {
        let index = i + 1;
        if raw.is_empty() {
            out.push_str(&raw.verbatim());
            continue;
        }
        let mut doc =
            yaml::parse_document(&raw.content).map_err(|(message, line)| InjectError::Yaml {
                index,
                line: raw.first_line + line.unwrap_or(1).saturating_sub(1),
                message,
            })?;
        if !doc.is_map() {
            return Err(InjectError::NotAMapping {
                index,
                line: raw.first_line,
                found: doc.describe(),
            });
        }
        let mut ctx = Context {
            index,
            opts,
            notices: &mut notices,
        };
        if ctx.inject_object(&mut doc)? {
            out.push_str(&rewritten(raw, &doc).map_err(|message| InjectError::Write {
                index,
                object: describe(&doc),
                message,
            })?);
        } else {
            out.push_str(&raw.verbatim());
        }
    }
    Ok(Injected { yaml: out, notices })
}

/// The new text of a changed document, keeping its `---` and a closing `...`.
fn rewritten(raw: &RawDocument, doc: &Node) -> Result<String, String> {
    let mut text = String::new();
    if raw.marker.is_some() {
        text.push_str("---\n");
    }
    text.push_str(&yaml::write_document(doc)?);
    if !text.ends_with('\n') {
        text.push('\n');
    }
    // A document after `...` may start without `---`; keep the end marker it relies on.
    if raw
        .body
        .lines()
        .any(|l| l.starts_with("...") && l[3..].trim().is_empty())
    {
        text.push_str("...\n");
    }
    Ok(text)
}

/// `Kind namespace/name` of an object, for messages.
fn describe(doc: &Node) -> String {
    let kind = doc.get_str("kind").unwrap_or("object without kind");
    let meta = doc.get("metadata");
    let name = meta
        .and_then(|m| m.get_str("name").or_else(|| m.get_str("generateName")))
        .unwrap_or("(no name)");
    match meta.and_then(|m| m.get_str("namespace")) {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}

/// Where a kind keeps its pod template, as a path of mapping keys from the object; empty
/// for a Pod (the object is the pod).
fn template_path(api_version: &str, kind: &str) -> Option<&'static [&'static str]> {
    // Only the built-in kinds: a custom resource may reuse a name like `Deployment`.
    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
    match (group, kind) {
        ("", "Pod") => Some(&[]),
        ("", "ReplicationController") => Some(&["spec", "template"]),
        ("apps" | "extensions", "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet") => {
            Some(&["spec", "template"])
        }
        ("batch", "Job") => Some(&["spec", "template"]),
        ("batch", "CronJob") => Some(&["spec", "jobTemplate", "spec", "template"]),
        _ => None,
    }
}

/// The workload a pod template belongs to, as Istio derives it (`DeploymentMeta`,
/// `TypeMeta`): it names the workload and its owner in the proxy's metadata.
#[derive(Debug, Clone)]
struct Workload {
    api_version: String,
    kind: String,
    name: String,
    namespace: Option<String>,
}

impl Workload {
    /// `kubernetes://apis/apps/v1/namespaces/default/deployments/reviews-v1`.
    fn owner(&self) -> Option<String> {
        if self.name.is_empty() || self.api_version.is_empty() {
            return None;
        }
        Some(format!(
            "kubernetes://apis/{}/namespaces/{}/{}s/{}",
            self.api_version,
            self.namespace.as_deref().unwrap_or("default"),
            self.kind.to_ascii_lowercase(),
            self.name
        ))
    }
}

struct Context<'a> {
    index: usize,
    opts: &'a InjectOptions,
    notices: &'a mut Vec<String>,
}

impl Context<'_> {
    /// Injects the object's pod template, if it has one; true when the object changed.
    fn inject_object(&mut self, doc: &mut Node) -> Result<bool, InjectError> {
        let kind = doc.get_str("kind").unwrap_or_default().to_owned();
        let api_version = doc.get_str("apiVersion").unwrap_or_default().to_owned();
        if kind.ends_with("List") {
            return self.inject_list(doc);
        }
        let Some(path) = template_path(&api_version, &kind) else {
            return Ok(false);
        };
        let object = describe(doc);
        let meta = doc.get("metadata");
        let workload = Workload {
            api_version,
            kind,
            name: meta
                .and_then(|m| m.get_str("name"))
                .unwrap_or_default()
                .to_owned(),
            namespace: meta.and_then(|m| m.get_str("namespace")).map(str::to_owned),
        };
        let mut template = &mut *doc;
        let mut walked = String::new();
        for key in path {
            walked = if walked.is_empty() {
                (*key).to_owned()
            } else {
                format!("{walked}.{key}")
            };
            let found = template.get(key).map_or("missing", Node::describe);
            template = match template.get_mut(key) {
                Some(next) if next.is_map() => next,
                _ => {
                    return Err(InjectError::Malformed {
                        index: self.index,
                        object,
                        path: walked,
                        found,
                        expected: "a pod template (a mapping with metadata and spec)",
                        fix: "add the pod template the kind requires",
                    })
                }
            };
        }
        let template_name = if walked.is_empty() {
            "spec".to_owned()
        } else {
            format!("{walked}.spec")
        };
        let pod = sidecar::PodTemplate {
            index: self.index,
            object: &object,
            spec_path: &template_name,
            workload: &workload,
        };
        match pod.inject(template, self.opts)? {
            sidecar::Outcome::Injected => Ok(true),
            sidecar::Outcome::Skipped(reason) => {
                self.notices.push(format!(
                    "document {} ({object}): {reason}; left unchanged",
                    self.index
                ));
                Ok(false)
            }
        }
    }

    fn inject_list(&mut self, doc: &mut Node) -> Result<bool, InjectError> {
        let object = describe(doc);
        let index = self.index;
        let Some(items) = doc.get_mut("items") else {
            return Ok(false);
        };
        let found = items.describe();
        let Node::Seq(items) = items else {
            if *items == Node::Null {
                return Ok(false);
            }
            return Err(InjectError::Malformed {
                index,
                object,
                path: "items".into(),
                found,
                expected: "a list of objects",
                fix: "write the list's objects under items as a YAML list",
            });
        };
        let mut changed = false;
        for item in items.iter_mut() {
            if !item.is_map() {
                return Err(InjectError::Malformed {
                    index,
                    object,
                    path: "items[]".into(),
                    found: item.describe(),
                    expected: "a Kubernetes object (a mapping)",
                    fix: "each list item must be one object with apiVersion and kind",
                });
            }
            changed |= self.inject_object(item)?;
        }
        Ok(changed)
    }
}

/// The `sidecar.istio.io/status` annotation: what the injection added, with Istio's keys
/// in Istio's order, so Istio's tools (and a second `inject`) recognise an injected pod.
#[derive(Debug, Serialize)]
struct SidecarStatus<'a> {
    #[serde(rename = "initContainers")]
    init_containers: Vec<&'a str>,
    containers: Option<Vec<&'a str>>,
    volumes: Vec<&'a str>,
    #[serde(rename = "imagePullSecrets")]
    image_pull_secrets: Option<Vec<&'a str>>,
    revision: &'a str,
}
