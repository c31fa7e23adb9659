use std::path::PathBuf;

use super::yaml::{self, Node};
use super::*;

fn opts() -> InjectOptions {
    InjectOptions::for_version("0.1.0")
}

fn testdata(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/inject")
        .join(name)
}

fn read(name: &str) -> String {
    std::fs::read_to_string(testdata(name)).unwrap()
}

/// Every non-empty document of a stream, parsed.
fn docs(text: &str) -> Vec<Node> {
    yaml::split_documents(text)
        .iter()
        .filter(|d| !d.is_empty())
        .map(|d| yaml::parse_document(&d.content).unwrap())
        .collect()
}

fn path<'a>(node: &'a Node, keys: &[&str]) -> &'a Node {
    keys.iter().fold(node, |n, k| {
        n.get(k)
            .unwrap_or_else(|| panic!("no {k} in {keys:?} of {n:?}"))
    })
}

fn keys(node: &Node) -> Vec<String> {
    match node {
        Node::Map(e) => e
            .iter()
            .filter_map(|(k, _)| k.as_str())
            .map(String::from)
            .collect(),
        _ => panic!("not a map: {node:?}"),
    }
}

fn names(list: &Node) -> Vec<String> {
    list.as_seq()
        .unwrap()
        .iter()
        .map(|c| c.get_str("name").unwrap().to_owned())
        .collect()
}

fn by_name<'a>(list: &'a Node, name: &str) -> &'a Node {
    list.as_seq()
        .unwrap()
        .iter()
        .find(|c| c.get_str("name") == Some(name))
        .unwrap_or_else(|| panic!("no {name}"))
}

fn strings(list: &Node) -> Vec<String> {
    list.as_seq()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

/// Compares with a golden file; `UPDATE_GOLDEN=1` rewrites it.
fn golden(input: &str, golden: &str) {
    let out = inject_manifests(&read(input), &opts()).unwrap();
    assert_eq!(out.notices, Vec::<String>::new());
    let path = testdata(golden);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &out.yaml).unwrap();
    }
    let want = std::fs::read_to_string(&path).unwrap();
    assert!(
        out.yaml == want,
        "{golden} differs; rerun with UPDATE_GOLDEN=1 and review the diff"
    );
    // The output re-parses and a second injection changes nothing.
    assert_eq!(docs(&out.yaml).len(), docs(&read(input)).len());
    let again = inject_manifests(&out.yaml, &opts()).unwrap();
    assert_eq!(again.yaml, out.yaml);
    assert!(again.notices.iter().all(|n| n.contains("already injected")));
}

#[test]
fn golden_bookinfo() {
    golden("bookinfo.yaml", "bookinfo.yaml.injected");
}

#[test]
fn golden_tcp_echo() {
    golden("tcp-echo.yaml", "tcp-echo.yaml.injected");
}

/// Same shape as `istioctl kube-inject` (Istio's own test output for the same input).
#[test]
fn matches_istio_shape() {
    let ours = &docs(
        &inject_manifests(&read("istio-hello.yaml"), &opts())
            .unwrap()
            .yaml,
    )[0];
    let istio = &docs(&read("istio-hello.yaml.injected"))[0];
    let template = ["spec", "template"];
    let meta = |d: &Node, k: &str| keys(path(d, &[&template[..], &["metadata", k]].concat()));
    let mut want = meta(istio, "annotations");
    want.sort();
    let mut got = meta(ours, "annotations");
    got.sort();
    assert_eq!(got, want);
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    assert_eq!(sorted(meta(ours, "labels")), sorted(meta(istio, "labels")));
    let spec = |d: &'static str| -> Vec<&str> { vec!["spec", "template", "spec", d] };
    let (ours_spec, istio_spec) = (
        path(ours, &spec("containers")),
        path(istio, &spec("containers")),
    );
    assert_eq!(names(ours_spec), names(istio_spec));
    let (oi, ii) = (
        path(ours, &spec("initContainers")),
        path(istio, &spec("initContainers")),
    );
    assert_eq!(names(oi), ["istio-init", "istio-proxy"]);
    assert_eq!(names(oi), names(ii));

    // Init: `weir proxy init` takes istio-iptables' flags and values.
    let our_args = strings(by_name(oi, "istio-init").get("args").unwrap());
    let istio_args = strings(by_name(ii, "istio-init").get("args").unwrap());
    assert_eq!(our_args[..2], ["proxy", "init"]);
    assert_eq!(istio_args[0], "istio-iptables");
    assert_eq!(our_args[2..], istio_args[1..istio_args.len() - 1]);
    assert_eq!(
        istio_args.last().unwrap(),
        "--log_output_level=default:info"
    );
    for c in ["istio-init", "istio-proxy"] {
        assert_eq!(
            by_name(oi, c).get("securityContext"),
            by_name(ii, c).get("securityContext"),
            "{c}"
        );
        assert_eq!(
            by_name(oi, c).get("resources"),
            by_name(ii, c).get("resources")
        );
    }

    // Sidecar: port, probes, native restart policy, env names (a subset of Istio's).
    let (op, ip) = (by_name(oi, "istio-proxy"), by_name(ii, "istio-proxy"));
    for k in ["ports", "readinessProbe", "startupProbe", "restartPolicy"] {
        assert_eq!(op.get(k), ip.get(k), "{k}");
    }
    assert_eq!(strings(op.get("args").unwrap()), ["proxy", "sidecar"]);
    let istio_env = names(ip.get("env").unwrap());
    let our_env = names(op.get("env").unwrap());
    for name in &our_env {
        assert!(
            istio_env.contains(name),
            "{name} is not one of Istio's variables"
        );
    }
    for (name, why) in [
        ("PILOT_CERT_PROVIDER", "Istio's agent"),
        ("ISTIO_CPU_LIMIT", "Envoy's concurrency"),
        ("PROXY_CONFIG", "Istio's agent"),
        ("GOMEMLIMIT", "Go's runtime"),
    ] {
        assert!(istio_env.contains(&name.to_owned()), "{name}");
        assert!(
            !our_env.contains(&name.to_owned()),
            "{name} is only for {why}"
        );
    }
    for name in [
        "CA_ADDR",
        "ISTIO_META_POD_PORTS",
        "ISTIO_META_APP_CONTAINERS",
        "ISTIO_META_OWNER",
    ] {
        assert_eq!(
            by_name(op.get("env").unwrap(), name),
            by_name(ip.get("env").unwrap(), name),
            "{name}"
        );
    }

    // Volumes: Istio's minus the three weir's sidecar does not use; the same definitions
    // and mount points.
    let (ov, iv) = (path(ours, &spec("volumes")), path(istio, &spec("volumes")));
    let missing: Vec<_> = names(iv)
        .into_iter()
        .filter(|n| !names(ov).contains(n))
        .collect();
    assert_eq!(
        missing,
        ["workload-socket", "credential-socket", "istio-ca-crl"]
    );
    let istio_order: Vec<_> = names(iv)
        .into_iter()
        .filter(|n| names(ov).contains(n))
        .collect();
    assert_eq!(names(ov), istio_order);
    for name in names(ov) {
        if name == "workload-certs" {
            // Istio leaves the source out, which Kubernetes reads as an emptyDir.
            assert_eq!(keys(by_name(iv, &name)), ["name"]);
            assert_eq!(by_name(ov, &name).get("emptyDir"), Some(&Node::Map(vec![])));
        } else {
            assert_eq!(by_name(ov, &name), by_name(iv, &name), "{name}");
        }
        let mount = |c: &Node| by_name(c.get("volumeMounts").unwrap(), &name).clone();
        assert_eq!(mount(op), mount(ip), "{name}");
    }

    // The status annotation has Istio's keys in Istio's order and names what was added.
    let status = |d: &Node| -> serde_json::Value {
        let a = path(d, &["spec", "template", "metadata", "annotations"]);
        serde_json::from_str(a.get_str(sidecar::STATUS_ANNOTATION).unwrap()).unwrap()
    };
    let (os, is) = (status(ours), status(istio));
    let key_list = |v: &serde_json::Value| -> Vec<String> {
        let text = v.to_string();
        let mut ks = Vec::new();
        for k in [
            "initContainers",
            "containers",
            "volumes",
            "imagePullSecrets",
            "revision",
        ] {
            assert!(text.contains(&format!("\"{k}\":")), "{k}");
            ks.push(k.to_owned());
        }
        ks
    };
    assert_eq!(key_list(&os), key_list(&is));
    assert_eq!(os["initContainers"], is["initContainers"]);
    assert_eq!(os["containers"], is["containers"]);
    assert_eq!(os["revision"], is["revision"]);
    assert_eq!(
        os["volumes"],
        serde_json::json!([
            "workload-certs",
            "istio-envoy",
            "istio-data",
            "istio-podinfo",
            "istio-token",
            "istiod-ca-cert"
        ])
    );
    let a = path(ours, &["spec", "template", "metadata", "annotations"]);
    assert_eq!(a.get_str("prometheus.io/port"), Some("15090"));
    let raw = inject_manifests(&read("istio-hello.yaml"), &opts())
        .unwrap()
        .yaml;
    // Written as Istio writes it: single-quoted JSON.
    assert!(
        raw.contains(r#"sidecar.istio.io/status: '{"initContainers":["istio-init","istio-proxy"],"containers":null,"#),
        "{raw}"
    );
}

const DEPLOYMENT: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
spec:
  template:
    metadata:
      labels:
        app: web
        version: v2
    spec:
      serviceAccountName: web
      initContainers:
      - name: migrate
        image: migrate:1
      containers:
      - name: web
        image: web:1
        ports:
        - containerPort: 8080
          name: http
          protocol: TCP
        - containerPort: 9000
      - name: log
        image: log:1
";

fn template_of(out: &str) -> Node {
    path(&docs(out)[0], &["spec", "template"]).clone()
}

fn env<'a>(proxy: &'a Node, name: &str) -> &'a str {
    by_name(proxy.get("env").unwrap(), name)
        .get_str("value")
        .unwrap()
}

#[test]
fn deployment_native_sidecar() {
    let out = inject_manifests(DEPLOYMENT, &opts()).unwrap();
    assert!(out.notices.is_empty());
    let t = template_of(&out.yaml);
    let spec = t.get("spec").unwrap();
    assert_eq!(
        names(spec.get("initContainers").unwrap()),
        ["istio-init", "istio-proxy", "migrate"]
    );
    assert_eq!(names(spec.get("containers").unwrap()), ["web", "log"]);
    let proxy = by_name(spec.get("initContainers").unwrap(), "istio-proxy");
    assert_eq!(proxy.get_str("restartPolicy"), Some("Always"));
    assert_eq!(proxy.get_str("image"), Some("ghcr.io/weir-mesh/weir:0.1.0"));
    assert_eq!(env(proxy, "CA_ADDR"), "istiod.istio-system.svc:15012");
    assert_eq!(env(proxy, "ISTIO_META_WORKLOAD_NAME"), "web");
    assert_eq!(
        env(proxy, "ISTIO_META_OWNER"),
        "kubernetes://apis/apps/v1/namespaces/shop/deployments/web"
    );
    assert_eq!(env(proxy, "ISTIO_META_APP_CONTAINERS"), "web,log");
    assert_eq!(env(proxy, "TRUST_DOMAIN"), "cluster.local");
    assert_eq!(
        env(proxy, "ISTIO_META_POD_PORTS"),
        "[\n    {\"name\":\"http\",\"containerPort\":8080,\"protocol\":\"TCP\"}\n    ,{\"containerPort\":9000}\n]"
    );
    let labels = path(&t, &["metadata", "labels"]);
    assert_eq!(
        keys(labels),
        [
            "app",
            "version",
            "security.istio.io/tlsMode",
            "service.istio.io/canonical-name",
            "service.istio.io/canonical-revision"
        ]
    );
    assert_eq!(
        labels.get_str("service.istio.io/canonical-name"),
        Some("web")
    );
    assert_eq!(
        labels.get_str("service.istio.io/canonical-revision"),
        Some("v2")
    );
    let annotations = path(&t, &["metadata", "annotations"]);
    assert_eq!(
        annotations.get_str("kubectl.kubernetes.io/default-container"),
        Some("web")
    );
    // The user's keys stay first and in order; the document's other fields are kept.
    assert_eq!(
        keys(&docs(&out.yaml)[0]),
        ["apiVersion", "kind", "metadata", "spec"]
    );
    assert_eq!(keys(&t), ["metadata", "spec"]);
    assert_eq!(
        keys(spec),
        [
            "serviceAccountName",
            "initContainers",
            "containers",
            "volumes"
        ]
    );
}

#[test]
fn deployment_classic_sidecar() {
    let mut o = opts();
    o.native_sidecars = false;
    let out = inject_manifests(DEPLOYMENT, &o).unwrap();
    let t = template_of(&out.yaml);
    let spec = t.get("spec").unwrap();
    assert_eq!(
        names(spec.get("initContainers").unwrap()),
        ["migrate", "istio-init"]
    );
    assert_eq!(
        names(spec.get("containers").unwrap()),
        ["web", "log", "istio-proxy"]
    );
    let proxy = by_name(spec.get("containers").unwrap(), "istio-proxy");
    assert_eq!(proxy.get("restartPolicy"), None);
    let status = path(&t, &["metadata", "annotations"])
        .get_str(sidecar::STATUS_ANNOTATION)
        .unwrap();
    assert!(
        status.starts_with(
            r#"{"initContainers":["istio-init"],"containers":["istio-proxy"],"volumes":["#
        ),
        "{status}"
    );
    assert!(
        status.ends_with(r#""imagePullSecrets":null,"revision":"default"}"#),
        "{status}"
    );
}

#[test]
fn options_reach_the_containers() {
    let o = InjectOptions {
        image: "registry.example/weir:dev".into(),
        native_sidecars: true,
        control_plane: "weir.mesh.svc:15012".into(),
        trust_domain: "example.org".into(),
    };
    let t = template_of(&inject_manifests(DEPLOYMENT, &o).unwrap().yaml);
    let inits = path(&t, &["spec", "initContainers"]);
    assert_eq!(
        by_name(inits, "istio-init").get_str("image"),
        Some("registry.example/weir:dev")
    );
    let proxy = by_name(inits, "istio-proxy");
    assert_eq!(env(proxy, "CA_ADDR"), "weir.mesh.svc:15012");
    assert_eq!(env(proxy, "TRUST_DOMAIN"), "example.org");
    assert_eq!(env(proxy, "ISTIO_META_MESH_ID"), "example.org");
}

#[test]
fn capture_annotations_become_init_flags() {
    let text = DEPLOYMENT.replace(
        "      labels:\n",
        "      annotations:\n        traffic.sidecar.istio.io/excludeOutboundIPRanges: 10.0.0.0/8\n        traffic.sidecar.istio.io/excludeInboundPorts: \"9000,15020\"\n        traffic.sidecar.istio.io/excludeOutboundPorts: \"3306\"\n      labels:\n",
    );
    let t = template_of(&inject_manifests(&text, &opts()).unwrap().yaml);
    let args = strings(
        by_name(path(&t, &["spec", "initContainers"]), "istio-init")
            .get("args")
            .unwrap(),
    );
    assert_eq!(
        args,
        [
            "proxy",
            "init",
            "-p",
            "15001",
            "-z",
            "15006",
            "-u",
            "1337",
            "-m",
            "REDIRECT",
            "-i",
            "*",
            "-x",
            "10.0.0.0/8",
            "-b",
            "*",
            "-d",
            "15090,15021,15020,9000",
            "-o",
            "3306"
        ]
    );
}

#[test]
fn other_kinds_pass_through_byte_for_byte() {
    let text = "# leading comment\napiVersion: v1\nkind: Service   # keep me\nmetadata: {name: web}\nspec:\n  ports: [{port: 80}]\n---\napiVersion: example.com/v1\nkind: Deployment\nmetadata:\n  name: custom\nspec:\n  template: {spec: {containers: [{name: a}]}}\n---\n";
    let out = inject_manifests(text, &opts()).unwrap();
    assert_eq!(out.yaml, text);
    assert!(out.notices.is_empty());
}

#[test]
fn opt_out_by_annotation_or_label() {
    for (place, value) in [
        ("annotations", "\"false\""),
        ("labels", "\"false\""),
        ("annotations", "false"),
    ] {
        let text = DEPLOYMENT.replace(
            "      labels:\n",
            &format!("      {place}:\n        sidecar.istio.io/inject: {value}\n      labels:\n"),
        );
        let text = if place == "labels" {
            DEPLOYMENT.replace(
                "        version: v2\n",
                "        version: v2\n        sidecar.istio.io/inject: \"false\"\n",
            )
        } else {
            text
        };
        let out = inject_manifests(&text, &opts()).unwrap();
        assert_eq!(out.yaml, text);
        let kind = if place == "labels" {
            "label"
        } else {
            "annotation"
        };
        assert_eq!(
            out.notices,
            [format!("document 1 (Deployment shop/web): sidecar injection disabled by the {kind} sidecar.istio.io/inject: \"false\"; left unchanged")]
        );
    }
    let text = DEPLOYMENT.replace(
        "        version: v2\n",
        "        version: v2\n        sidecar.istio.io/inject: \"true\"\n",
    );
    assert!(inject_manifests(&text, &opts()).unwrap().notices.is_empty());
}

#[test]
fn already_injected_is_left_alone() {
    let once = inject_manifests(DEPLOYMENT, &opts()).unwrap().yaml;
    let twice = inject_manifests(&once, &opts()).unwrap();
    assert_eq!(twice.yaml, once);
    assert_eq!(
        twice.notices,
        ["document 1 (Deployment shop/web): already injected (sidecar.istio.io/status is set); left unchanged"]
    );
    // Istio's own output counts as injected too.
    let istio = read("istio-hello.yaml.injected");
    let out = inject_manifests(&istio, &opts()).unwrap();
    assert_eq!(out.yaml, istio);
    assert_eq!(out.notices.len(), 1);
    // A hand-written istio-proxy container without the annotation.
    let text = DEPLOYMENT.replace("      - name: log\n", "      - name: istio-proxy\n");
    let out = inject_manifests(&text, &opts()).unwrap();
    assert_eq!(out.yaml, text);
    assert_eq!(
        out.notices,
        ["document 1 (Deployment shop/web): already has an istio-proxy container; left unchanged"]
    );
}

#[test]
fn host_network_is_skipped() {
    let text = DEPLOYMENT.replace(
        "      serviceAccountName: web\n",
        "      hostNetwork: true\n",
    );
    let out = inject_manifests(&text, &opts()).unwrap();
    assert_eq!(out.yaml, text);
    assert!(out.notices[0].contains("host network"), "{:?}", out.notices);
}

#[test]
fn every_pod_kind() {
    let cases = [
        (
            "v1",
            "Pod",
            "kubernetes://apis/v1/namespaces/default/pods/one",
        ),
        (
            "apps/v1",
            "StatefulSet",
            "kubernetes://apis/apps/v1/namespaces/default/statefulsets/one",
        ),
        (
            "apps/v1",
            "DaemonSet",
            "kubernetes://apis/apps/v1/namespaces/default/daemonsets/one",
        ),
        (
            "apps/v1",
            "ReplicaSet",
            "kubernetes://apis/apps/v1/namespaces/default/replicasets/one",
        ),
        (
            "v1",
            "ReplicationController",
            "kubernetes://apis/v1/namespaces/default/replicationcontrollers/one",
        ),
        (
            "batch/v1",
            "Job",
            "kubernetes://apis/batch/v1/namespaces/default/jobs/one",
        ),
        (
            "batch/v1",
            "CronJob",
            "kubernetes://apis/batch/v1/namespaces/default/cronjobs/one",
        ),
    ];
    let pod_spec = "{containers: [{name: main, image: busybox}]}";
    for (api, kind, owner) in cases {
        let body = match kind {
            "Pod" => format!("spec: {pod_spec}"),
            "CronJob" => format!("spec:\n  schedule: '* * * * *'\n  jobTemplate:\n    spec:\n      template:\n        spec: {pod_spec}"),
            _ => format!("spec:\n  template:\n    spec: {pod_spec}"),
        };
        let text = format!("apiVersion: {api}\nkind: {kind}\nmetadata:\n  name: one\n{body}\n");
        let out = inject_manifests(&text, &opts()).unwrap();
        let doc = &docs(&out.yaml)[0];
        let template: &[&str] = match kind {
            "Pod" => &[],
            "CronJob" => &["spec", "jobTemplate", "spec", "template"],
            _ => &["spec", "template"],
        };
        let t = path(doc, template);
        // A template without metadata gets it first, before spec.
        assert_eq!(
            keys(t)[0],
            if kind == "Pod" {
                "apiVersion"
            } else {
                "metadata"
            },
            "{kind}"
        );
        let proxy = by_name(path(t, &["spec", "initContainers"]), "istio-proxy");
        assert_eq!(env(proxy, "ISTIO_META_OWNER"), owner, "{kind}");
        let labels = path(t, &["metadata", "labels"]);
        assert_eq!(
            labels.get_str("service.istio.io/canonical-name"),
            Some("one"),
            "{kind}"
        );
        assert_eq!(
            labels.get_str("service.istio.io/canonical-revision"),
            Some("latest")
        );
    }
}

#[test]
fn list_items_are_injected() {
    let text = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Service\n  metadata: {name: a}\n- apiVersion: v1\n  kind: Pod\n  metadata: {name: p}\n  spec: {containers: [{name: c}]}\n";
    let out = inject_manifests(text, &opts()).unwrap();
    let doc = &docs(&out.yaml)[0];
    let items = doc.get("items").unwrap().as_seq().unwrap();
    assert_eq!(keys(&items[0]), ["apiVersion", "kind", "metadata"]);
    assert_eq!(
        names(path(&items[1], &["spec", "initContainers"])),
        ["istio-init", "istio-proxy"]
    );
}

#[test]
fn canonical_labels_follow_istio() {
    let with = |labels: &str| {
        let text = format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: pod-x\n  labels: {labels}\nspec: {{containers: [{{name: c}}]}}\n");
        let doc = &docs(&inject_manifests(&text, &opts()).unwrap().yaml)[0];
        let l = path(doc, &["metadata", "labels"]);
        (
            l.get_str("service.istio.io/canonical-name")
                .unwrap_or("")
                .to_owned(),
            l.get_str("service.istio.io/canonical-revision")
                .unwrap()
                .to_owned(),
        )
    };
    assert_eq!(
        with("{app: a, app.kubernetes.io/name: k, version: v1}"),
        ("k".into(), "v1".into())
    );
    assert_eq!(
        with("{app: a, app.kubernetes.io/version: '2', version: v1}"),
        ("a".into(), "2".into())
    );
    assert_eq!(with("{app: _a-}"), ("a".into(), "latest".into()));
    assert_eq!(
        with("{service.istio.io/canonical-name: mine, service.istio.io/canonical-revision: r}"),
        ("mine".into(), "r".into())
    );
    assert_eq!(with("{}"), ("pod-x".into(), "latest".into()));
}

#[test]
fn document_markers_and_comments_survive() {
    let text = "# header\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c}]}\n...\napiVersion: v1\nkind: ConfigMap # kept\nmetadata: {name: m}\n";
    let out = inject_manifests(text, &opts()).unwrap();
    assert!(
        out.yaml
            .starts_with("# header\n---\napiVersion: v1\nkind: Pod\n"),
        "{}",
        out.yaml
    );
    assert!(
        out.yaml
            .ends_with("...\napiVersion: v1\nkind: ConfigMap # kept\nmetadata: {name: m}\n"),
        "{}",
        out.yaml
    );
    assert_eq!(docs(&out.yaml).len(), 2);
    assert_eq!(inject_manifests("", &opts()).unwrap().yaml, "");
}

#[test]
fn errors_name_the_document_and_the_fix() {
    let err = |text: &str| inject_manifests(text, &opts()).unwrap_err().to_string();
    let e =
        err("apiVersion: v1\nkind: Service\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: p\n");
    assert!(e.starts_with("document 2 (line "), "{e}");
    assert!(e.contains("is not valid YAML"), "{e}");
    assert_eq!(
        err("---\n- a\n- b\n"),
        "document 1 (line 1) is a list, not a mapping: each document must be one Kubernetes object with apiVersion, kind and metadata"
    );
    assert!(err("just text\n").contains("is a string, not a mapping"));
    assert_eq!(
        err("a: 1\n---\nb: [1,\n  c: d\n"),
        "document 2 (line 3) is not valid YAML: unclosed bracket '['; fix the YAML at that line"
    );
    assert!(err("a: *x\n").contains("an alias (`*name`) refers to an anchor"));
    assert_eq!(
        err("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec:\n  template:\n    spec: {containers: []}\n"),
        "document 1 (Deployment d): spec.template.spec has no containers: add at least one container under spec.template.spec.containers (a pod needs one to run)"
    );
    assert!(
        err("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {}\n")
            .contains("document 1 (Pod p): spec has no containers")
    );
    assert_eq!(
        err("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec: {replicas: 1}\n"),
        "document 1 (Deployment d): spec.template is missing, expected a pod template (a mapping with metadata and spec): add the pod template the kind requires"
    );
    assert_eq!(
        err("apiVersion: batch/v1\nkind: CronJob\nmetadata: {name: c}\nspec:\n  jobTemplate:\n    spec:\n      template:\n        spec: {containers: {name: x}}\n"),
        "document 1 (CronJob c): spec.jobTemplate.spec.template.spec.containers is a mapping, expected a list of containers: write each container as a list item (`- name: app`)"
    );
    assert!(err("apiVersion: v1\nkind: Pod\nmetadata: {name: p, labels: [a]}\nspec: {containers: [{name: c}]}\n")
        .contains("metadata.labels is a list, expected a mapping"));
    assert!(err(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{image: x}]}\n"
    )
    .contains("spec.containers[] is a container without a name"));
    assert_eq!(
        err("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c}], volumes: {a: 1}}\n"),
        "document 1 (Pod p): spec.volumes is a mapping, expected a list of volumes: write each volume as a list item (`- name: data`)"
    );
    let big = "#".repeat(MAX_INPUT_BYTES + 1);
    assert!(err(&big).contains("more than the 16777216 accepted"));
}

#[test]
fn own_prometheus_annotations_are_kept() {
    let text = DEPLOYMENT.replace(
        "      labels:\n",
        "      annotations:\n        prometheus.io/scrape: \"true\"\n        prometheus.io/port: \"9090\"\n      labels:\n",
    );
    let t = template_of(&inject_manifests(&text, &opts()).unwrap().yaml);
    let a = path(&t, &["metadata", "annotations"]);
    assert_eq!(a.get_str("prometheus.io/port"), Some("9090"));
    assert_eq!(a.get("prometheus.io/path"), None);
    assert_eq!(
        keys(a)[..3],
        ["prometheus.io/scrape", "prometheus.io/port", "istio.io/rev"]
    );
}
