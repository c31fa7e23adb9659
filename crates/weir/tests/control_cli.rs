//! `weir control serve` with `weir apply|get|delete|analyze` against it: kubectl's outcome
//! lines, exact errors, atomic rejection, and resources kept across a restart.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const WEIR: &str = env!("CARGO_BIN_EXE_weir");

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/fixtures/istio/samples/bookinfo")
        .join(rel)
}

/// A running `weir control serve`, killed on drop.
struct Server {
    child: Child,
    addr: String,
}

impl Server {
    fn start(state: &Path) -> Server {
        let mut child = Command::new(WEIR)
            .args([
                "control",
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--grpc",
                "127.0.0.1:0",
                "--monitoring",
                "127.0.0.1:0",
                "--state-dir",
            ])
            .arg(state)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn weir control serve");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        // Construct the guard first so a failed start still kills the child.
        let mut server = Server {
            child,
            addr: String::new(),
        };
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("control plane printed its address within 30 s");
        server.addr = line
            .split_whitespace()
            .nth(4)
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        server
    }

    fn weir(&self, args: &[&str]) -> Output {
        Command::new(WEIR)
            .args(args)
            .env("WEIR_CONTROL", &self.addr)
            .output()
            .expect("run weir")
    }

    fn weir_stdin(&self, args: &[&str], input: &str) -> Output {
        let mut child = Command::new(WEIR)
            .args(args)
            .env("WEIR_CONTROL", &self.addr)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run weir");
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin.write_all(input.as_bytes()).expect("write stdin");
        drop(stdin);
        child.wait_with_output().expect("weir output")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "stdout:\n{}\nstderr:\n{}",
        stdout(out),
        stderr(out)
    );
    stdout(out)
}

const RULES: &str = "\
destinationrule.networking.istio.io/productpage {0}
destinationrule.networking.istio.io/reviews {0}
destinationrule.networking.istio.io/ratings {0}
destinationrule.networking.istio.io/details {0}
";

const BAD_DR: &str = "\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
spec:
  host: reviews
  subsetz:
  - name: v1
";

const BAD_VS: &str = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts: [reviews]
  http:
  - route:
    - destination:
        host: reviews
        subset: v9
";

#[test]
fn apply_get_delete_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let bookinfo = fixture("platform/kube/bookinfo.yaml");
    let rules = fixture("networking/destination-rule-all.yaml");
    let bookinfo = bookinfo.to_str().unwrap();
    let rules = rules.to_str().unwrap();

    let server = Server::start(&state);
    let out = ok(&server.weir(&["apply", "-f", bookinfo]));
    assert_eq!(
        out,
        "\
service/details created
serviceaccount/bookinfo-details created
deployment.apps/details-v1 created
service/ratings created
serviceaccount/bookinfo-ratings created
deployment.apps/ratings-v1 created
service/reviews created
serviceaccount/bookinfo-reviews created
deployment.apps/reviews-v1 created
deployment.apps/reviews-v2 created
deployment.apps/reviews-v3 created
service/productpage created
serviceaccount/bookinfo-productpage created
deployment.apps/productpage-v1 created
"
    );
    assert_eq!(
        ok(&server.weir(&["apply", "-f", rules])),
        RULES.replace("{0}", "created")
    );
    assert_eq!(
        ok(&server.weir(&["apply", "-f", rules])),
        RULES.replace("{0}", "unchanged")
    );

    // A change to one object, from standard input.
    let text = std::fs::read_to_string(rules).unwrap();
    let changed = text.replacen("version: v3", "version: v3-canary", 1);
    assert_ne!(text, changed);
    assert_eq!(
        ok(&server.weir_stdin(&["apply", "-f", "-"], &changed)),
        "\
destinationrule.networking.istio.io/productpage unchanged
destinationrule.networking.istio.io/reviews configured
destinationrule.networking.istio.io/ratings unchanged
destinationrule.networking.istio.io/details unchanged
"
    );

    let yaml = ok(&server.weir(&["get", "dr", "reviews", "-o", "yaml"]));
    assert!(yaml.starts_with("apiVersion: networking.istio.io/v1\nkind: DestinationRule\n"));
    assert!(
        yaml.contains("  - name: v3\n    labels:\n      version: v3-canary\n"),
        "{yaml}"
    );
    assert_eq!(
        ok(&server.weir(&["get", "destinationrules"])),
        "NAME\ndetails\nproductpage\nratings\nreviews\n"
    );
    let json = ok(&server.weir(&["get", "svc", "ratings", "-o", "json"]));
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(value["spec"]["ports"][0]["port"], 9080);

    // Rejected applies name file, line, column and fix, and change nothing.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, BAD_DR).unwrap();
    let bad = bad.to_str().unwrap();
    let out = server.weir(&["apply", "-f", bad]);
    assert!(!out.status.success());
    assert_eq!(stdout(&out), "");
    assert_eq!(
        stderr(&out),
        format!(
            "{bad}:7:3: DestinationRule \"reviews\": spec.subsetz: unknown field `subsetz` (did you mean `subsets`?); fix: rename it to `subsets`\n\
             error: apply of {bad} rejected; nothing in it was changed\n"
        )
    );
    let out = server.weir_stdin(&["apply", "-f", "-"], BAD_VS);
    assert!(!out.status.success());
    assert_eq!(
        stderr(&out),
        "-:11:17: VirtualService \"reviews\": spec.http[0].route[0].destination.subset: subset `v9` is not defined by any DestinationRule for host `reviews`; defined: v1, v2, v3; fix: route to one of the defined subsets, or add a subset named `v9` to DestinationRule `reviews`\n\
         error: apply of - rejected; nothing in it was changed\n"
    );
    let out = server.weir(&["get", "vs", "reviews"]);
    assert!(!out.status.success());
    assert_eq!(
        stderr(&out).lines().next(),
        Some("Error from server (NotFound): virtualservices.networking.istio.io \"reviews\" not found")
    );
    assert_eq!(
        ok(&server.weir(&["get", "dr", "reviews", "-o", "yaml"])),
        yaml
    );
    // The rules resolve; what remains is the mesh's view: no pods run behind the Services.
    let no_pods: String = [(44, "details"), (95, "ratings"), (146, "reviews"), (290, "productpage")]
        .iter()
        .map(|(line, name)| {
            format!(
                "{bookinfo}:{line}:5: warning: Service \"{name}\": spec.selector: no registered pod matches the selector; \
                 connections to the Service get `UH` (no healthy upstream); \
                 fix: start the Deployment that backs the Service, or correct the selector\n"
            )
        })
        .collect();
    assert_eq!(ok(&server.weir(&["analyze"])), no_pods);

    // Restart: the same resources, so re-applying changes nothing.
    drop(server);
    let server = Server::start(&state);
    assert_eq!(
        ok(&server.weir(&["get", "dr", "reviews", "-o", "yaml"])),
        yaml
    );
    assert_eq!(
        ok(&server.weir_stdin(&["apply", "-f", "-"], &changed)),
        RULES.replace("{0}", "unchanged")
    );

    assert_eq!(
        ok(&server.weir(&["delete", "-f", rules])),
        "\
destinationrule.networking.istio.io \"productpage\" deleted
destinationrule.networking.istio.io \"reviews\" deleted
destinationrule.networking.istio.io \"ratings\" deleted
destinationrule.networking.istio.io \"details\" deleted
"
    );
    let out = server.weir(&["get", "dr"]);
    assert!(out.status.success());
    assert_eq!(
        (stdout(&out), stderr(&out)),
        (
            String::new(),
            "No resources found in default namespace.\n".to_string()
        )
    );
}

/// `weir analyze` reports, besides the cross-resource checks, what the computed mesh cannot
/// honour, right after the apply that introduced it.
#[test]
fn analyze_reports_what_the_mesh_cannot_honour() {
    let state = tempfile::tempdir().unwrap();
    let server = Server::start(state.path());
    let rule = "\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
spec:
  host: reviews
  trafficPolicy:
    outlierDetection:
      consecutive5xxErrors: 7
";
    assert_eq!(
        ok(&server.weir_stdin(&["apply", "-f", "-"], rule)),
        "destinationrule.networking.istio.io/reviews created\n"
    );
    let report = ok(&server.weir(&["analyze"]));
    assert!(
        report.contains("spec.trafficPolicy.outlierDetection")
            && report
                .contains("`outlierDetection` is accepted but not enforced by weir's sidecars"),
        "{report}"
    );
    // Gone with the rule.
    ok(&server.weir_stdin(&["delete", "-f", "-"], rule));
    assert_eq!(
        ok(&server.weir(&["analyze"])),
        "No validation issues found.\n"
    );
}

#[test]
fn unreachable_control_plane_says_how_to_start_it() {
    // A port that was free a moment ago: nothing listens there.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let out = Command::new(WEIR)
        .args(["get", "dr", "--control", &addr.to_string()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.starts_with(&format!(
            "error: cannot reach the control plane at {addr}: "
        )),
        "{err}"
    );
    assert!(
        err.ends_with(
            "; start it with `weir control serve`, or point --control / WEIR_CONTROL at it\n"
        ),
        "{err}"
    );
}
