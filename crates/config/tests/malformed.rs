//! Malformed input: each case gets its exact error, and the ResourceSet is left unchanged.

use std::path::Path;

use config::{parse_path, parse_str, ResourceSet};

fn base_set() -> ResourceSet {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/fixtures/istio/samples/bookinfo");
    let mut set = ResourceSet::new();
    for f in [
        "platform/kube/bookinfo.yaml",
        "networking/destination-rule-all.yaml",
    ] {
        set.apply(parse_path(&root.join(f)).unwrap()).unwrap();
    }
    set
}

/// Parses and applies `text`; returns the error lines and asserts the set did not change.
fn rejected(text: &str) -> Vec<String> {
    let mut set = base_set();
    let before = set.clone();
    let result = parse_str(text, "bad.yaml").and_then(|docs| set.apply(docs));
    let err = match result {
        Ok(outcomes) => panic!("accepted: {outcomes:?}"),
        Err(e) => e,
    };
    assert_eq!(set, before, "a rejected apply changed the set");
    err.lines()
}

const DR_HEAD: &str =
    "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: reviews\n";

#[test]
fn bad_indentation() {
    let text = "apiVersion: v1\nkind: Service\nmetadata:\n  name: a\n   labels: {}\n";
    assert_eq!(rejected(text), ["bad.yaml:5:10: invalid YAML: mapping values are not allowed in this context; fix: check the indentation: keys of one mapping must start in the same column, and nested values must be indented further than their key"]);
}

#[test]
fn wrong_type_for_labels() {
    let text = format!("{DR_HEAD}spec:\n  host: reviews\n  subsets:\n  - name: v1\n    labels: {{version: v1}}\n  - name: v2\n    labels:\n    - version: v2\n");
    assert_eq!(rejected(&text), ["bad.yaml:12:7: DestinationRule \"reviews\": spec.subsets[1].labels: expected a map of strings, found a list; fix: write `key: value` pairs instead of `- ` list items, e.g. `version: v1`"]);
}

#[test]
fn unknown_kind() {
    let text = "apiVersion: networking.istio.io/v1\nkind: DestinationRules\nmetadata:\n  name: reviews\nspec:\n  host: reviews\n";
    assert_eq!(rejected(text), ["bad.yaml:2:7: kind: unsupported kind `DestinationRules` (did you mean `DestinationRule`?); fix: write `kind: DestinationRule`"]);
    let text = "apiVersion: batch/v1\nkind: CronJob\nmetadata:\n  name: nightly\n";
    assert_eq!(rejected(text), ["bad.yaml:2:7: kind: unsupported kind `CronJob` (apiVersion `batch/v1`); fix: use one of the supported kinds: Namespace, ServiceAccount, Secret, Service, Deployment, DestinationRule, VirtualService, Gateway, PeerAuthentication, Telemetry, TCPRoute"]);
}

#[test]
fn wrong_api_version() {
    let text = "apiVersion: networking.istio.io/v2\nkind: VirtualService\nmetadata:\n  name: reviews\nspec:\n  hosts: [reviews]\n";
    assert_eq!(rejected(text), ["bad.yaml:1:13: apiVersion: `networking.istio.io/v2` does not serve kind `VirtualService`; fix: use one of: networking.istio.io/v1, networking.istio.io/v1beta1, networking.istio.io/v1alpha3"]);
}

#[test]
fn missing_required_fields() {
    let text = format!("{DR_HEAD}spec:\n  subsets:\n  - labels: {{version: v1}}\n");
    assert_eq!(rejected(&text), ["bad.yaml:6:3: DestinationRule \"reviews\": spec.host: required field is missing; fix: set the service this rule applies to, e.g. `host: reviews`", "bad.yaml:7:5: DestinationRule \"reviews\": spec.subsets[0].name: required field is missing; fix: name the subset, e.g. `name: v1`"]);
    let text = "apiVersion: v1\nkind: Service\nspec:\n  ports:\n  - port: 80\n";
    assert_eq!(rejected(text), ["bad.yaml:1:1: Service (unnamed): metadata: required field is missing; fix: add `metadata:` with at least `name:`"]);
}

#[test]
fn duplicate_names_in_one_apply() {
    let text = "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: a\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: a\n";
    assert_eq!(rejected(text), ["bad.yaml:9:9: ServiceAccount \"a\": metadata.name: ServiceAccount `a` in namespace `default` is defined twice in this apply (first at bad.yaml:1:1); fix: remove one of the two, or give them different names"]);
}

#[test]
fn dangling_subset() {
    let text = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: reviews\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination:\n        host: reviews\n        subset: v4\n";
    assert_eq!(rejected(text), ["bad.yaml:11:17: VirtualService \"reviews\": spec.http[0].route[0].destination.subset: subset `v4` is not defined by any DestinationRule for host `reviews`; defined: v1, v2, v3; fix: route to one of the defined subsets, or add a subset named `v4` to DestinationRule `reviews`"]);
}

#[test]
fn dangling_host() {
    let text = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: ratings\nspec:\n  hosts: [ratings]\n  tcp:\n  - route:\n    - destination:\n        host: ratingz\n";
    assert_eq!(rejected(text), ["bad.yaml:10:15: VirtualService \"ratings\": spec.tcp[0].route[0].destination.host: host `ratingz` does not match any Service in namespace `default`; fix: did you mean `ratings`? Otherwise apply the Service `ratingz` first"]);
}

#[test]
fn unknown_field_typo() {
    let text = format!(
        "{DR_HEAD}spec:\n  host: reviews\n  subsetz:\n  - name: v1\n    labels: {{version: v1}}\n"
    );
    assert_eq!(rejected(&text), ["bad.yaml:7:3: DestinationRule \"reviews\": spec.subsetz: unknown field `subsetz` (did you mean `subsets`?); fix: rename it to `subsets`"]);
}

#[test]
fn invalid_values() {
    let text = format!("{DR_HEAD}spec:\n  host: reviews\n  trafficPolicy:\n    loadBalancer:\n      simple: ROUND_ROBBIN\n    connectionPool:\n      tcp:\n        maxConnections: \"100\"\n        connectTimeout: 10\n");
    assert_eq!(rejected(&text), ["bad.yaml:9:15: DestinationRule \"reviews\": spec.trafficPolicy.loadBalancer.simple: `ROUND_ROBBIN` is not a valid load balancer policy (did you mean `ROUND_ROBIN`?); fix: use one of: UNSPECIFIED, ROUND_ROBIN, LEAST_REQUEST, LEAST_CONN, RANDOM, PASSTHROUGH", "bad.yaml:12:25: DestinationRule \"reviews\": spec.trafficPolicy.connectionPool.tcp.maxConnections: expected an integer, found the string \"100\"; fix: remove the quotes: 100", "bad.yaml:13:25: DestinationRule \"reviews\": spec.trafficPolicy.connectionPool.tcp.connectTimeout: expected a duration, found the integer 10; fix: add a unit: `10s`"]);
}

#[test]
fn weights_and_ports() {
    let text = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: reviews\nspec:\n  hosts: [reviews]\n  tcp:\n  - match:\n    - port: 70000\n    route:\n    - destination: {host: reviews, subset: v1}\n      weight: 50\n    - destination: {host: reviews, subset: v2}\n      weight: 40\n";
    assert_eq!(rejected(text), ["bad.yaml:9:13: VirtualService \"reviews\": spec.tcp[0].match[0].port: port 70000 is out of range; fix: use a port number from 1 to 65535", "bad.yaml:11:7: VirtualService \"reviews\": spec.tcp[0].route: weights add up to 90 (50 + 40), not 100; fix: make the weights of the 2 destinations add up to 100"]);
}

#[test]
fn oversized_input() {
    let text = format!("# {}\n", "x".repeat(config::MAX_INPUT_BYTES));
    assert_eq!(rejected(&text), ["bad.yaml: input is too large (8388611 bytes; the limit is 8388608 bytes = 8 MiB); fix: split the manifests into several files and apply the directory"]);
}

#[test]
fn deep_nesting() {
    let text = format!(
        "{DR_HEAD}spec:\n  host: {}{}\n",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    assert_eq!(rejected(&text), ["bad.yaml:6:73: YAML nesting is deeper than 64 levels; fix: Kubernetes manifests nest far less; check the input is the file you meant"]);
    let mut block = String::from(DR_HEAD);
    block.push_str("spec:\n");
    for i in 0..200 {
        block.push_str(&format!("{}k{i}:\n", "  ".repeat(i + 1)));
    }
    assert_eq!(rejected(&block), ["bad.yaml:69:129: YAML nesting is deeper than 64 levels; fix: Kubernetes manifests nest far less; check the input is the file you meant"]);
}

#[test]
fn billion_laughs() {
    let mut text = String::from(
        "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    for i in 1..10u8 {
        let (prev, cur) = ((b'a' + i - 1) as char, (b'a' + i) as char);
        let refs = vec![format!("*{prev}"); 9].join(",");
        text.push_str(&format!("{cur}: &{cur} [{refs}]\n"));
    }
    assert_eq!(rejected(&text), ["bad.yaml:6:8: aliases (`*name`) expand to more than 100000 values; fix: write the repeated parts out, or remove the aliases; manifests rarely need them"]);
}

#[test]
fn not_an_object() {
    assert_eq!(rejected("just a string\n"), ["bad.yaml:1:1: expected a Kubernetes object (a map with apiVersion, kind, metadata), found the string \"just a string\"; fix: start each document with `apiVersion:` and `kind:` at column 1"]);
    assert_eq!(rejected("- a\n- b\n"), ["bad.yaml:1:1: expected a Kubernetes object (a map with apiVersion, kind, metadata), found a list; fix: start each document with `apiVersion:` and `kind:` at column 1"]);
}

#[test]
fn json_syntax_error() {
    let text = "{\"apiVersion\": \"v1\", \"kind\": \"ServiceAccount\",\n \"metadata\": {\"name\": \"a\",}}\n";
    let mut set = base_set();
    let before = set.clone();
    let err = parse_str(text, "bad.json")
        .and_then(|d| set.apply(d))
        .unwrap_err();
    assert_eq!(set, before);
    assert_eq!(err.lines(), ["bad.json:2:27: invalid JSON: trailing comma; fix: check the JSON syntax here: quotes, commas, brackets"]);
}

#[test]
fn duplicate_yaml_key() {
    let text = "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: a\n  name: b\n";
    assert_eq!(rejected(text), ["bad.yaml:5:3: invalid YAML: duplicate mapping key `name` is not allowed here; fix: remove one of the duplicate keys"]);
}

#[test]
fn one_bad_document_rejects_the_whole_batch() {
    let text = "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: fine\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: Bad_Name\nspec:\n  ports:\n  - port: 0\n    protocol: tcp\n";
    assert_eq!(rejected(text), ["bad.yaml:9:9: Service \"Bad_Name\": metadata.name: `Bad_Name` is not a valid name; fix: use lowercase letters, digits or '-', starting and ending with a letter or digit, e.g. `bad-name`", "bad.yaml:12:11: Service \"Bad_Name\": spec.ports[0].port: port 0 is out of range; fix: use a port number from 1 to 65535", "bad.yaml:13:15: Service \"Bad_Name\": spec.ports[0].protocol: `tcp` is not a valid protocol (did you mean `TCP`?); fix: use one of: TCP, UDP, SCTP"]);
}

#[test]
fn quoted_numbers_and_unquoted_strings() {
    let text = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: db\nspec:\n  selector:\n    matchLabels: {app: db}\n  template:\n    metadata:\n      labels: {app: db, version: 1}\n    spec:\n      containers:\n      - name: db\n        image: mysql\n        ports:\n        - containerPort: \"3306\"\n        env:\n        - name: PORT\n          value: 3306\n";
    assert_eq!(rejected(text), ["bad.yaml:10:34: Deployment \"db\": spec.template.metadata.labels.version: expected a string, found the integer 1; fix: quote the value: \"1\"", "bad.yaml:16:26: Deployment \"db\": spec.template.spec.containers[0].ports[0].containerPort: expected an integer, found the string \"3306\"; fix: remove the quotes: 3306", "bad.yaml:19:18: Deployment \"db\": spec.template.spec.containers[0].env[0].value: expected a string, found the integer 3306; fix: quote the value: \"3306\""]);
}

#[test]
fn directories_and_files() {
    let dir = tempfile::tempdir().unwrap();
    let sa =
        |name: &str| format!("apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: {name}\n");
    std::fs::write(dir.path().join("b.yaml"), sa("b")).unwrap();
    std::fs::write(dir.path().join("a.yml"), sa("a")).unwrap();
    std::fs::write(
        dir.path().join("c.json"),
        r#"{"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "c"}}"#,
    )
    .unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not a manifest").unwrap();
    let names: Vec<String> = parse_path(dir.path())
        .unwrap()
        .iter()
        .map(|d| {
            format!(
                "{}:{}",
                d.source.file.rsplit('/').next().unwrap(),
                d.resource.name()
            )
        })
        .collect();
    assert_eq!(names, ["a.yml:a", "b.yaml:b", "c.json:c"]);

    // Errors from every file are collected, each with its own file name.
    std::fs::write(
        dir.path().join("d.yaml"),
        "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  nam: d\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("e.yaml"), "kind: Service\n").unwrap();
    let err = parse_path(dir.path()).unwrap_err();
    let d = dir.path().display();
    assert_eq!(
        err.lines(),
        [
            format!("{d}/d.yaml:4:3: ServiceAccount (unnamed): metadata.nam: unknown field `nam` (did you mean `name`?); fix: rename it to `name`"),
            format!("{d}/d.yaml:4:3: ServiceAccount (unnamed): metadata.name: required field is missing; fix: give the resource a name, e.g. `name: reviews`"),
            format!("{d}/e.yaml:1:1: apiVersion: required field is missing; fix: add `apiVersion:`, e.g. `apiVersion: networking.istio.io/v1`"),
        ]
    );

    let empty = tempfile::tempdir().unwrap();
    assert_eq!(
        parse_path(empty.path()).unwrap_err().to_string(),
        format!("{}: no .yaml, .yml or .json files in this directory; fix: point -f at a manifest file or a directory of manifests", empty.path().display())
    );
    let missing = dir.path().join("missing.yaml");
    assert_eq!(
        parse_path(&missing).unwrap_err().to_string(),
        format!("{}: cannot read: No such file or directory (os error 2); fix: check that the path exists and is readable", missing.display())
    );
    let big = dir.path().join("big.yaml");
    let file = std::fs::File::create(&big).unwrap();
    file.set_len(config::MAX_INPUT_BYTES as u64 + 1).unwrap();
    assert_eq!(
        parse_path(&big).unwrap_err().to_string(),
        format!("{}: input is too large (more than 8 MiB; the limit is 8388608 bytes = 8 MiB); fix: split the manifests into several files and apply the directory", big.display())
    );
}

/// Nesting just under the limit parses even from a thread with a small stack (a tokio worker
/// has 2 MiB): the reader runs on its own stack.
#[test]
fn deep_but_allowed_nesting_on_a_small_stack() {
    let mut text = String::from(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: deep\nspec:\n  selector:\n    matchLabels: {app: deep}\n  template:\n    metadata:\n      labels: {app: deep}\n    spec:\n      containers: [{name: c, image: i}]\n      affinity:\n",
    );
    for i in 0..(config::MAX_DEPTH - 8) {
        text.push_str(&format!("{}k{i}:\n", "  ".repeat(i + 4)));
    }
    let parsed = std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(move || parse_str(&text, "deep.yaml").map(|d| d.len()))
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(parsed, Ok(1));
}

#[test]
fn istio_policy_errors() {
    let text = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: default\n  namespace: istio-system\nspec:\n  mtls:\n    mode: STRICTT\n  portLevelMtls:\n    \"3306\": {mode: DISABLE}\n    db: {mode: DISABLE}\n";
    assert_eq!(rejected(text), ["bad.yaml:8:11: PeerAuthentication \"default\": spec.mtls.mode: `STRICTT` is not a valid mTLS mode (did you mean `STRICT`?); fix: use one of: UNSET, DISABLE, PERMISSIVE, STRICT", "bad.yaml:11:5: PeerAuthentication \"default\": spec.portLevelMtls: `db` is not a port number; fix: key each entry by a port number from 1 to 65535", "bad.yaml:9:3: PeerAuthentication \"default\": spec.portLevelMtls: portLevelMtls requires a workload selector; fix: add `selector: {matchLabels: ...}`, or move the mode to `mtls`"]);
    let text = "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata:\n  name: mesh-default\n  namespace: istio-system\nspec:\n  metrics:\n  - providers: [{name: prometheus}]\n    reportingInterval: 15\n    overrides:\n    - match: {metric: TCP_OPENED_CONNECTION, mode: CLIENT}\n      tagOverrides:\n        request_protocol: {operation: DROP}\n";
    assert_eq!(rejected(text), ["bad.yaml:9:24: Telemetry \"mesh-default\": spec.metrics[0].reportingInterval: expected a duration, found the integer 15; fix: add a unit: `15s`", "bad.yaml:11:23: Telemetry \"mesh-default\": spec.metrics[0].overrides[0].match.metric: `TCP_OPENED_CONNECTION` is not a valid metric (did you mean `TCP_OPENED_CONNECTIONS`?); fix: use one of: ALL_METRICS, REQUEST_COUNT, REQUEST_DURATION, REQUEST_SIZE, RESPONSE_SIZE, TCP_OPENED_CONNECTIONS, TCP_CLOSED_CONNECTIONS, TCP_SENT_BYTES, TCP_RECEIVED_BYTES, GRPC_REQUEST_MESSAGES, GRPC_RESPONSE_MESSAGES", "bad.yaml:13:39: Telemetry \"mesh-default\": spec.metrics[0].overrides[0].tagOverrides.request_protocol.operation: `DROP` is not a valid tag operation; fix: use one of: UPSERT, REMOVE"]);
}

#[test]
fn empty_tag_name() {
    let text = "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata:\n  name: mesh-default\n  namespace: istio-system\nspec:\n  metrics:\n  - overrides:\n    - tagOverrides:\n        \"\": {value: \"'x'\"}\n";
    assert_eq!(rejected(text), ["bad.yaml:10:9: Telemetry \"mesh-default\": spec.metrics[0].overrides[0].tagOverrides[\"\"]: tag name must not be empty; fix: name the label to set or remove, e.g. `request_protocol:`"]);
}

#[test]
fn dotted_service_and_namespace_names() {
    let text = "apiVersion: v1\nkind: Service\nmetadata:\n  name: ratings.v2\n  namespace: team.a\nspec:\n  ports:\n  - port: 9080\n";
    assert_eq!(rejected(text), ["bad.yaml:4:9: Service \"ratings.v2\": metadata.name: `ratings.v2` is not a valid name; fix: use lowercase letters, digits or '-', starting and ending with a letter or digit, e.g. `ratings-v2`", "bad.yaml:5:14: Service \"ratings.v2\": metadata.namespace: `team.a` is not a valid name; fix: use lowercase letters, digits or '-', starting and ending with a letter or digit, e.g. `team-a`"]);
    // Other kinds keep DNS subdomain names, dots included.
    let text = "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: bookinfo.ratings\n";
    let docs = parse_str(text, "ok.yaml").unwrap();
    assert_eq!(docs[0].resource.name(), "bookinfo.ratings");
}
