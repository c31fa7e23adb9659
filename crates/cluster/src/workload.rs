//! From Deployments to pods: how many, named how, running which local programs with
//! which environment, and whether they get weir's sidecar (Istio's injection rules).

use std::collections::BTreeMap;

use config::model::workload::{Container, DeploymentSpec};
use config::{Document, Kind, ResourceSet, Spec};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

/// Annotation naming the local command of a container whose image has no built-in
/// program: `command.weir-mesh.io/<container>: "exec my-server --port 8080"`, run by
/// `sh -c` inside the pod.
pub const COMMAND_ANNOTATION: &str = "command.weir-mesh.io/";
/// Namespace label that turns injection on (Istio's).
pub const INJECTION_LABEL: &str = "istio-injection";
/// Pod label or annotation that opts a pod in or out (Istio's).
pub const INJECT_OVERRIDE: &str = "sidecar.istio.io/inject";
/// The sidecar container's name (Istio's).
pub const SIDECAR: &str = "istio-proxy";
/// The injector's status annotation; present on pods `weir inject` or Istio already injected.
const STATUS_ANNOTATION: &str = "sidecar.istio.io/status";

/// One pod to run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PodPlan {
    /// Owning Deployment.
    pub deployment: String,
    /// Namespace.
    pub namespace: String,
    /// Hash of the pod template: pods of an older template are replaced.
    pub template_hash: String,
    /// Pod labels.
    pub labels: BTreeMap<String, String>,
    /// Service account (identity of the sidecar).
    pub service_account: String,
    /// Whether weir's sidecar runs beside the containers.
    pub sidecar: bool,
    /// The app containers.
    pub containers: Vec<ContainerPlan>,
    /// emptyDir volumes (a directory per pod each).
    pub volumes: Vec<String>,
}

/// One app container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ContainerPlan {
    /// Container name.
    pub name: String,
    /// What it runs.
    pub program: Program,
    /// Environment from the manifest (before per-pod values are filled in).
    pub env: Vec<(String, EnvValue)>,
    /// Declared TCP ports: the container is ready when they accept connections.
    pub ports: Vec<u16>,
    /// Volume mounts: (volume name, mount path).
    pub mounts: Vec<(String, String)>,
}

/// A container's program.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Program {
    /// A built-in sample app: `weir bookinfo ARGS` followed by the container's args.
    Bookinfo(Vec<String>),
    /// A command from the pod's [`COMMAND_ANNOTATION`], run by `sh -c`.
    Shell(String),
    /// The image cannot run here; the text says why and what to do.
    Unavailable(String),
}

/// A variable's value, some known only when the pod exists.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum EnvValue {
    /// Literal.
    Value(String),
    /// `fieldRef`: metadata.name, metadata.namespace, status.podIP, spec.serviceAccountName, ...
    Field(String),
    /// A missing Secret or key: the container cannot start (CreateContainerConfigError).
    Error(String),
}

/// The pods Deployments ask for, per Deployment, with injection decided.
pub fn plans(resources: &ResourceSet) -> Vec<(PodPlan, u32)> {
    let mut out = Vec::new();
    for doc in resources.iter_kind(Kind::Deployment) {
        let Spec::Deployment(dep) = &doc.resource.spec else {
            continue;
        };
        let replicas = dep.replicas.unwrap_or(1);
        out.push((plan(resources, doc, dep), replicas));
    }
    out
}

fn plan(resources: &ResourceSet, doc: &Document, dep: &DeploymentSpec) -> PodPlan {
    let namespace = doc.resource.namespace().to_owned();
    let meta = &dep.template.metadata;
    let pod = &dep.template.spec;
    let labels = meta.labels.0.clone();
    let already_injected = meta.annotations.0.contains_key(STATUS_ANNOTATION)
        || pod.containers.iter().any(|c| c.name == SIDECAR)
        || init_containers(pod).iter().any(|n| n == SIDECAR);
    let sidecar =
        already_injected || injects(resources, &namespace, &meta.labels.0, &meta.annotations.0);
    let containers = pod
        .containers
        .iter()
        .filter(|c| c.name != SIDECAR)
        .map(|c| container_plan(resources, &namespace, &meta.annotations.0, c))
        .collect();
    PodPlan {
        deployment: doc.resource.name().to_owned(),
        namespace,
        template_hash: template_hash(dep),
        labels,
        service_account: pod
            .service_account_name
            .clone()
            .unwrap_or_else(|| "default".to_owned()),
        sidecar,
        containers,
        volumes: pod
            .volumes
            .iter()
            .filter(|v| v.empty_dir.is_some())
            .map(|v| v.name.clone())
            .collect(),
    }
}

fn init_containers(pod: &config::model::workload::PodSpec) -> Vec<String> {
    pod.extra
        .get("initContainers")
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|c| c.get("name").and_then(|n| n.as_str()).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Istio's injection policy: the pod's `sidecar.istio.io/inject` label (or annotation)
/// wins; otherwise the namespace's `istio-injection=enabled` (or an `istio.io/rev`).
pub fn injects(
    resources: &ResourceSet,
    namespace: &str,
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
) -> bool {
    let ns_labels = resources
        .get(Kind::Namespace, "", namespace)
        .map(|ns| ns.resource.metadata.labels.0.clone())
        .unwrap_or_default();
    // Either side saying "disabled"/"false" wins, as Istio's webhook selectors.
    if ns_labels.get(INJECTION_LABEL).map(String::as_str) == Some("disabled") {
        return false;
    }
    if let Some(v) = labels
        .get(INJECT_OVERRIDE)
        .or(annotations.get(INJECT_OVERRIDE))
    {
        if v == "false" {
            return false;
        }
        if v == "true" {
            return true;
        }
    }
    match ns_labels.get(INJECTION_LABEL).map(String::as_str) {
        Some("enabled") => true,
        Some(_) => false,
        None => ns_labels.contains_key("istio.io/rev"),
    }
}

fn container_plan(
    resources: &ResourceSet,
    namespace: &str,
    annotations: &BTreeMap<String, String>,
    c: &Container,
) -> ContainerPlan {
    let program = if let Some(cmd) = annotations.get(&format!("{COMMAND_ANNOTATION}{}", c.name)) {
        Program::Shell(cmd.clone())
    } else {
        match bookinfo::images::local_command(&c.image) {
            Ok(Some(args)) => {
                let mut args: Vec<String> = args.into_iter().map(str::to_owned).collect();
                args.extend(c.args.iter().cloned());
                Program::Bookinfo(args)
            }
            Ok(None) => Program::Unavailable(format!(
                "image {} has no local program; name one with the pod annotation {COMMAND_ANNOTATION}{}: \"<command>\" (see docs/cluster.md)",
                c.image, c.name
            )),
            Err(e) => Program::Unavailable(e.to_string()),
        }
    };
    let env = c
        .env
        .iter()
        .map(|var| (var.name.clone(), env_value(resources, namespace, var)))
        .collect();
    ContainerPlan {
        name: c.name.clone(),
        program,
        env,
        ports: c
            .ports
            .iter()
            .filter(|p| {
                p.protocol
                    .as_ref()
                    .is_none_or(|p| format!("{p:?}").eq_ignore_ascii_case("tcp"))
            })
            .map(|p| p.container_port.0)
            .collect(),
        mounts: c
            .volume_mounts
            .iter()
            .map(|m| (m.name.clone(), m.mount_path.clone()))
            .collect(),
    }
}

fn env_value(
    resources: &ResourceSet,
    namespace: &str,
    var: &config::model::workload::EnvVar,
) -> EnvValue {
    if let Some(v) = &var.value {
        return EnvValue::Value(v.clone());
    }
    let Some(from) = &var.value_from else {
        return EnvValue::Value(String::new());
    };
    if let Some(r) = &from.secret_key_ref {
        let secret = resources
            .get(Kind::Secret, namespace, &r.name)
            .and_then(|d| match &d.resource.spec {
                Spec::Secret(s) => Some(s),
                _ => None,
            });
        return match secret.and_then(|s| s.value(&r.key)) {
            Some(bytes) => match String::from_utf8(bytes) {
                Ok(s) => EnvValue::Value(s),
                Err(_) => EnvValue::Error(format!(
                    "env {}: key {} of Secret {namespace}/{} is not UTF-8 text",
                    var.name, r.key, r.name
                )),
            },
            None if r.optional => EnvValue::Value(String::new()),
            None => EnvValue::Error(format!(
                "env {}: Secret {namespace}/{} {}; apply the Secret (weir apply -f) and the pod starts",
                var.name,
                r.name,
                if secret.is_some() {
                    format!("has no key {:?}", r.key)
                } else {
                    "not found".to_owned()
                }
            )),
        };
    }
    if let Some(path) = from
        .extra
        .get("fieldRef")
        .and_then(|f| f.get("fieldPath"))
        .and_then(|p| p.as_str())
    {
        return EnvValue::Field(path.to_owned());
    }
    EnvValue::Error(format!(
        "env {}: only value, secretKeyRef and fieldRef are supported by the local cluster",
        var.name
    ))
}

/// A short stable hash of a Deployment's pod template (Kubernetes' pod-template-hash).
pub fn template_hash(dep: &DeploymentSpec) -> String {
    let json = serde_json::to_vec(&dep.template).unwrap_or_default();
    let digest = Sha256::digest(&json);
    encode_safe(&digest[..8], 10)
}

/// Kubernetes' "safe" alphabet (no vowels, no look-alikes) for generated name parts.
const SAFE: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

fn encode_safe(bytes: &[u8], len: usize) -> String {
    let mut n = u64::from_be_bytes(bytes.try_into().unwrap_or([0; 8]));
    (0..len)
        .map(|_| {
            let c = SAFE[(n % SAFE.len() as u64) as usize] as char;
            n /= SAFE.len() as u64;
            c
        })
        .collect()
}

/// A new pod name, `<deployment>-<template hash>-<5 chars>`; `seed` (per supervisor)
/// and `seq` make it unique.
pub fn pod_name(plan: &PodPlan, seed: u64, seq: u64) -> String {
    let digest = Sha256::digest(format!(
        "{}/{}/{seed}/{seq}",
        plan.deployment, plan.template_hash
    ));
    format!(
        "{}-{}-{}",
        plan.deployment,
        plan.template_hash,
        encode_safe(&digest[..8], 5)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(texts: &[&str]) -> ResourceSet {
        let mut set = ResourceSet::new();
        for (i, t) in texts.iter().enumerate() {
            let docs = config::parse_str(t, &format!("doc{i}.yaml")).unwrap();
            set.apply(docs).unwrap();
        }
        set
    }

    fn fixture(path: &str) -> String {
        let p = format!(
            "{}/../../../shared/fixtures/istio/samples/{path}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
    }

    const DEFAULT_NS: &str = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: default\n  labels:\n    istio-injection: enabled\n";

    #[test]
    fn bookinfo_pods_map_to_local_programs_with_the_sidecar() {
        let s = set(&[DEFAULT_NS, &fixture("bookinfo/platform/kube/bookinfo.yaml")]);
        let plans = plans(&s);
        let names: Vec<&str> = plans.iter().map(|(p, _)| p.deployment.as_str()).collect();
        assert_eq!(
            names,
            [
                "details-v1",
                "productpage-v1",
                "ratings-v1",
                "reviews-v1",
                "reviews-v2",
                "reviews-v3"
            ]
        );
        for (p, replicas) in &plans {
            assert_eq!(*replicas, 1);
            assert!(p.sidecar, "{}", p.deployment);
        }
        let reviews = &plans[4].0;
        assert_eq!(reviews.service_account, "bookinfo-reviews");
        assert_eq!(
            reviews.containers[0].program,
            Program::Bookinfo(vec!["reviews".into(), "--version".into(), "v2".into()])
        );
        assert_eq!(reviews.containers[0].ports, [9080]);
        assert_eq!(reviews.volumes, ["wlp-output", "tmp"]);
    }

    #[test]
    fn mysql_credentials_come_from_the_secret_and_args_follow_the_image_command() {
        let s = set(&[
            DEFAULT_NS,
            &fixture("bookinfo/platform/kube/bookinfo-mysql.yaml"),
        ]);
        let (p, _) = &plans(&s)[0];
        let c = &p.containers[0];
        assert_eq!(
            c.env,
            [(
                "MYSQL_ROOT_PASSWORD".to_owned(),
                EnvValue::Value("password".into())
            )]
        );
        assert_eq!(
            c.program,
            Program::Bookinfo(vec![
                "mysqldb".into(),
                "--default-authentication-plugin".into(),
                "mysql_native_password".into()
            ])
        );
        assert_eq!(
            c.mounts,
            [("var-lib-mysql".to_owned(), "/var/lib/mysql".to_owned())]
        );
    }

    #[test]
    fn a_missing_secret_is_named_with_the_fix() {
        let text = fixture("bookinfo/platform/kube/bookinfo-mysql.yaml");
        let without_secret = text.split("---").skip(1).collect::<Vec<_>>().join("---");
        let s = set(&[&without_secret]);
        let (p, _) = &plans(&s)[0];
        let EnvValue::Error(e) = &p.containers[0].env[0].1 else {
            panic!("{:?}", p.containers[0].env)
        };
        assert!(
            e.contains("Secret default/mysql-credentials not found; apply the Secret"),
            "{e}"
        );
    }

    #[test]
    fn injection_follows_istios_labels() {
        let dep = |labels: &str| {
            format!(
                "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: app\nspec:\n  selector:\n    matchLabels:\n      app: a\n  template:\n    metadata:\n      labels:\n        app: a\n{labels}    spec:\n      containers:\n      - name: a\n        image: nginx\n"
            )
        };
        let opt_out = dep("        sidecar.istio.io/inject: \"false\"\n");
        let opt_in = dep("        sidecar.istio.io/inject: \"true\"\n");
        let plain = dep("");
        assert!(plans(&set(&[DEFAULT_NS, &plain]))[0].0.sidecar);
        assert!(!plans(&set(&[DEFAULT_NS, &opt_out]))[0].0.sidecar);
        assert!(!plans(&set(&[&plain]))[0].0.sidecar, "no namespace label");
        assert!(plans(&set(&[&opt_in]))[0].0.sidecar);
        let disabled = DEFAULT_NS.replace("enabled", "disabled");
        assert!(
            !plans(&set(&[&disabled, &opt_in]))[0].0.sidecar,
            "the namespace's disabled wins"
        );
        let Program::Unavailable(why) = &plans(&set(&[&plain]))[0].0.containers[0].program else {
            panic!()
        };
        assert!(why.contains("command.weir-mesh.io/a"), "{why}");
    }

    #[test]
    fn pods_injected_beforehand_get_weirs_sidecar_in_place_of_theirs() {
        let opts = crate::inject::InjectOptions::for_version("0.1.0");
        let injected =
            crate::inject::inject_manifests(&fixture("tcp-echo/tcp-echo-services.yaml"), &opts)
                .unwrap();
        // No namespace label: only the injected shape says "sidecar".
        let plans = plans(&set(&[&injected.yaml]));
        assert_eq!(plans.len(), 2);
        for (p, _) in &plans {
            assert!(p.sidecar, "{}", p.deployment);
            let names: Vec<&str> = p.containers.iter().map(|c| c.name.as_str()).collect();
            assert_eq!(names, ["tcp-echo"]);
        }
    }

    #[test]
    fn names_look_like_kubernetes_and_change_with_the_template() {
        let s = set(&[&fixture("tcp-echo/tcp-echo-services.yaml")]);
        let plans = plans(&s);
        let (v1, _) = &plans[0];
        let name = pod_name(v1, 7, 0);
        assert!(name.starts_with("tcp-echo-v1-"), "{name}");
        assert_eq!(name.len(), "tcp-echo-v1-".len() + 10 + 1 + 5);
        assert_ne!(pod_name(v1, 7, 0), pod_name(v1, 7, 1));
        assert_ne!(v1.template_hash, plans[1].0.template_hash);
        assert_eq!(
            v1.containers[0].program,
            Program::Bookinfo(vec![
                "tcp-echo".into(),
                "9000,9001,9002".into(),
                "one".into()
            ])
        );
    }
}
