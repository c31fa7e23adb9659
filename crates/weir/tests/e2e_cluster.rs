//! The local cluster end to end with the real binary: `weir demo` runs the seed (Bookinfo,
//! ratings v2 on a real MariaDB, mutual TLS, virtual services, a real Prometheus fed by
//! HTTP service discovery); the test then checks from Prometheus's HTTP API what the
//! seed asks for, that the page's stars come from the database, that a crashed container
//! restarts, and that `weir cluster down` leaves the host as it was. Needs root.

mod support;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use support::http::eventually;
use support::sidecar::WEIR;

/// One cluster with its own name, state directory and free host ports; removed on drop.
struct Cluster {
    name: String,
    root: PathBuf,
    _tmp: tempfile::TempDir,
    api: String,
    http_port: u16,
    tcp_port: u16,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Cluster {
    /// `tag` keeps the names of tests run in parallel by `cargo test` apart.
    fn new(tag: &str) -> Cluster {
        let tmp = tempfile::tempdir().expect("tempdir");
        Cluster {
            name: format!("t{}{tag}", std::process::id()),
            root: tmp.path().to_path_buf(),
            _tmp: tmp,
            api: format!("127.0.0.1:{}", free_port()),
            http_port: free_port(),
            tcp_port: free_port(),
        }
    }

    fn weir(&self, args: &[&str]) -> Output {
        let out = Command::new(WEIR)
            .args(args)
            .env("WEIR_CLUSTER", &self.name)
            .env("WEIR_CLUSTER_ROOT", &self.root)
            .env("WEIR_CONTROL", &self.api)
            .output()
            .expect("run weir");
        out
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.weir(args);
        assert!(
            out.status.success(),
            "weir {args:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn up_args(&self) -> Vec<String> {
        vec![
            "--api".into(),
            self.api.clone(),
            "--http-port".into(),
            self.http_port.to_string(),
            "--tcp-port".into(),
            self.tcp_port.to_string(),
            "--reporting-interval".into(),
            "2s".into(),
            "--scrape-interval".into(),
            "2s".into(),
        ]
    }

    /// Prometheus's answer to `query`, asked inside its pod.
    fn promql(&self, query: &str) -> serde_json::Value {
        let out = self.ok(&[
            "exec",
            "-n",
            "istio-system",
            "deploy/prometheus",
            "--",
            "curl",
            "-fsS",
            "-G",
            "http://127.0.0.1:9090/api/v1/query",
            "--data-urlencode",
            &format!("query={query}"),
        ]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("Prometheus JSON");
        v["data"]["result"].clone()
    }

    /// The `weir get pods` columns (NAME READY STATUS RESTARTS AGE) of the first pod
    /// whose name starts with `prefix`; empty when there is none.
    fn pod_columns(&self, prefix: &str) -> Vec<String> {
        self.ok(&["get", "pods"])
            .lines()
            .find(|l| l.starts_with(prefix))
            .map(|l| l.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default()
    }

    fn dir(&self) -> PathBuf {
        self.root.join(&self.name)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let out = self.weir(&["cluster", "down"]);
        if !out.status.success() {
            eprintln!(
                "cluster down failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// What a cluster could leave behind on the host. Only what a cluster can make is kept
/// (other tests run beside this one and make namespaces and listeners of their own).
fn host_state(c: &Cluster) -> Vec<String> {
    let run = |cmd: &[&str]| {
        let out = Command::new(cmd[0]).args(&cmd[1..]).output().expect(cmd[0]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let prefix = format!("weirc-{}.", c.name);
    let ours = |text: String| -> String {
        text.lines()
            .filter(|l| l.contains(&prefix))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let ports = [
        c.api.rsplit(':').next().unwrap_or_default().to_owned(),
        c.http_port.to_string(),
        c.tcp_port.to_string(),
    ];
    let mut state = vec![
        ours(run(&["ip", "netns", "list"])),
        // The cluster's links live in its namespaces; none may appear on the host.
        run(&["ip", "-o", "link", "show"])
            .lines()
            .filter(|l| l.contains(": vp") || l.contains("br0"))
            .collect::<Vec<_>>()
            .join("\n"),
        run(&["ip", "route", "show", "table", "all"]),
        // Counters change with unrelated traffic; the rules are what matter.
        run(&["iptables-save"])
            .lines()
            .filter(|l| !l.starts_with('#') && !l.starts_with(':'))
            .collect::<Vec<_>>()
            .join("\n"),
        run(&["ss", "-ltnH"])
            .lines()
            .filter(|l| ports.iter().any(|p| l.contains(&format!(":{p} "))))
            .collect::<Vec<_>>()
            .join("\n"),
    ];
    let etc = entries("/etc/netns", |n| n.starts_with(&prefix));
    state.push(format!("/etc/netns: {etc:?}"));
    // Mount points (mount ids change; where and what is mounted is what matters).
    let mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .map(|l| {
            l.split_whitespace()
                .skip(3)
                .take(2)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .filter(|m| m.contains(&prefix) || m.ends_with(" /run/netns"))
        .collect();
    state.push(format!("mounts: {mounts:?}"));
    let name = &c.name;
    let procs: Vec<String> = std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_to_string(e.path().join("cmdline")).ok())
                .filter(|c| {
                    c.contains(&format!("weirc-{name}."))
                        || c.contains(&format!("--cluster\0{name}"))
                })
                .collect()
        })
        .unwrap_or_default();
    state.push(format!("cluster processes: {procs:?}"));
    state
}

fn count(rows: &serde_json::Value) -> usize {
    rows.as_array().map_or(0, Vec::len)
}

fn value(row: &serde_json::Value) -> f64 {
    row["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(-1.0)
}

#[test]
fn the_seed_runs_end_to_end_and_down_leaves_the_host_as_it_was() {
    let cluster = Cluster::new("s");
    let before = host_state(&cluster);

    let mut demo = vec!["demo", "--requests", "10"];
    let up = cluster.up_args();
    demo.extend(up.iter().map(String::as_str));
    let out = cluster.ok(&demo);
    assert!(out.contains("10/10 answered 200"), "{out}");
    assert!(
        out.contains("istio_tcp_connections_opened_total{destination_service_name=\"mysqldb\"}"),
        "{out}"
    );

    // The gateway answers on the host port; paths outside bookinfo-gateway.yaml's
    // matches get 404.
    let gateway = format!("http://127.0.0.1:{}", cluster.http_port);
    let code = |path: &str| {
        let out = Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                &format!("{gateway}{path}"),
            ])
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(code("/productpage"), "200");
    assert_eq!(code("/nope"), "404");
    let status = cluster.ok(&["cluster", "status"]);
    assert!(
        status.contains(&format!(
            "export GATEWAY_URL=127.0.0.1:{}",
            cluster.http_port
        )),
        "{status}"
    );

    // The seed's assertions, from Prometheus's HTTP API: ratings v2 → the database,
    // counted by both reporters with the full label set.
    let selector = r#"destination_service_name="mysqldb",source_canonical_service="ratings",source_canonical_revision="v2-mysql",source_workload="ratings-v2-mysql",destination_workload="mysqldb-v1",destination_version="v1",destination_service="mysqldb.default.svc.cluster.local",source_principal="spiffe://cluster.local/ns/default/sa/default",destination_principal="spiffe://cluster.local/ns/default/sa/default",job="envoy-stats""#;
    let opened = cluster.promql(&format!("istio_tcp_connections_opened_total{{{selector}}}"));
    assert_eq!(count(&opened), 2, "one series per reporter: {opened}");
    let destination = cluster.promql(&format!(
        "istio_tcp_connections_opened_total{{{selector},reporter=\"destination\",connection_security_policy=\"mutual_tls\"}}"
    ));
    assert_eq!(count(&destination), 1, "{destination}");
    let source = cluster.promql(&format!(
        "istio_tcp_connections_opened_total{{{selector},reporter=\"source\"}}"
    ));
    assert_eq!(count(&source), 1, "{source}");
    // Traffic has stopped: opened and closed agree on each reporter.
    for reporter in ["source", "destination"] {
        let o = cluster.promql(&format!(
            "sum(istio_tcp_connections_opened_total{{{selector},reporter=\"{reporter}\"}})"
        ));
        let c = cluster.promql(&format!(
            "sum(istio_tcp_connections_closed_total{{{selector},reporter=\"{reporter}\"}})"
        ));
        assert!(value(&o[0]) >= 10.0, "{reporter} opened {o}");
        assert_eq!(
            value(&o[0]),
            value(&c[0]),
            "{reporter}: opened {o} closed {c}"
        );
        let sent = cluster.promql(&format!(
            "sum(istio_tcp_sent_bytes_total{{{selector},reporter=\"{reporter}\"}})"
        ));
        assert!(value(&sent[0]) > 0.0, "{reporter} sent bytes {sent}");
    }
    // Both scrape jobs' targets are up, found through HTTP service discovery.
    eventually(
        "8 sidecars, the gateway and the control plane scraped",
        Duration::from_secs(30),
        || {
            let up = cluster.promql(r#"up{job=~"envoy-stats|istiod"} == 1"#);
            if count(&up) == 10 {
                Ok(())
            } else {
                Err(up.to_string())
            }
        },
    );

    // The stars come from the database: change a rating there and the page follows.
    let page = || {
        cluster.ok(&[
            "exec",
            "deploy/productpage-v1",
            "--",
            "curl",
            "-fsS",
            "http://productpage:9080/productpage",
        ])
    };
    assert!(page().contains(r#"data-stars="5" data-color="red""#));
    cluster.ok(&[
        "exec",
        "deploy/mysqldb-v1",
        "--",
        "mariadb",
        "--no-defaults",
        "-h",
        "127.0.0.1",
        "-uroot",
        "-ppassword",
        "test",
        "-e",
        "UPDATE ratings SET Rating = 1 WHERE ReviewID = 1",
    ]);
    eventually(
        "one red star from the database",
        Duration::from_secs(20),
        || {
            let p = page();
            if p.contains(r#"data-stars="1" data-color="red""#) {
                Ok(())
            } else {
                Err("still the old rating".to_owned())
            }
        },
    );

    // Names resolve as in Kubernetes, through the pod's resolv.conf and the cluster DNS.
    let hosts = cluster.ok(&[
        "exec",
        "deploy/details-v1",
        "--",
        "getent",
        "hosts",
        "ratings",
        "ratings.default",
        "ratings.default.svc.cluster.local",
    ]);
    assert_eq!(hosts.lines().count(), 3, "{hosts}");
    assert!(hosts.lines().all(|l| l.starts_with("10.96.")), "{hosts}");

    // The dashboard forwards a host port to Prometheus.
    let port = free_port();
    let mut dashboard = Command::new(WEIR)
        .args([
            "dashboard",
            "prometheus",
            "--port",
            &port.to_string(),
            "--browser=false",
        ])
        .env("WEIR_CLUSTER", &cluster.name)
        .env("WEIR_CLUSTER_ROOT", &cluster.root)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("weir dashboard");
    let ready = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let answer = eventually(
        "Prometheus through the dashboard",
        Duration::from_secs(20),
        || support::http::get(ready, "/-/ready"),
    );
    let _ = dashboard.kill();
    let _ = dashboard.wait();
    assert_eq!(answer.0, 200, "{answer:?}");

    // A pod without a sidecar reaches a Service by its virtual IP too (kube-proxy's DNAT).
    let plain = cluster.ok(&[
        "exec",
        "-n",
        "istio-system",
        "deploy/prometheus",
        "--",
        "curl",
        "-fsS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "http://productpage.default:9080/productpage",
    ]);
    assert_eq!(plain, "200");

    // A crashed app restarts; its previous log stays readable.
    let pods = cluster.ok(&["get", "pods"]);
    assert_eq!(
        pods.lines()
            .filter(|l| l.contains("2/2") && l.contains("Running"))
            .count(),
        8,
        "{pods}"
    );
    // The gateway reports the connections it makes, as a sidecar's outbound side.
    let gw = cluster.promql(r#"istio_tcp_connections_opened_total{reporter="source",source_workload="istio-ingressgateway",destination_service_name="productpage"}"#);
    assert_eq!(count(&gw), 1, "{gw}");
    let details = find_app_pid(&cluster.dir(), "details-v1");
    let _ = Command::new("kill")
        .args(["-9", &details.to_string()])
        .status();
    eventually(
        "details restarted and ready",
        Duration::from_secs(30),
        || {
            let cols = cluster.pod_columns("details-v1");
            if cols.get(1).map(String::as_str) == Some("2/2")
                && cols.get(3).map(String::as_str) == Some("1")
            {
                Ok(())
            } else {
                Err(cols.join(" "))
            }
        },
    );
    cluster.ok(&["logs", "deploy/details-v1", "--previous"]);
    let sidecar_log = cluster.ok(&["logs", "deploy/ratings-v2-mysql", "-c", "istio-proxy"]);
    assert!(
        sidecar_log.contains("mysqldb.default.svc.cluster.local"),
        "{sidecar_log}"
    );

    // Istio's TCP traffic shifting through the gateway's TCP port: all to v1, then 80/20.
    let samples = tempfile::tempdir().expect("tempdir");
    for name in [
        "tcp-echo-services.yaml",
        "tcp-echo-all-v1.yaml",
        "tcp-echo-20-v2.yaml",
    ] {
        std::fs::write(
            samples.path().join(name),
            cluster::sample(name).expect("sample"),
        )
        .expect("write");
    }
    let file = |n: &str| samples.path().join(n).to_string_lossy().into_owned();
    cluster.ok(&["apply", "-f", &file("tcp-echo-services.yaml")]);
    cluster.ok(&["apply", "-f", &file("tcp-echo-all-v1.yaml")]);
    let tcp = std::net::SocketAddr::from(([127, 0, 0, 1], cluster.tcp_port));
    eventually(
        "every connection answered by v1",
        Duration::from_secs(60),
        || {
            let answers: Vec<String> = (0..20).map(|i| echo(tcp, i)).collect::<Result<_, _>>()?;
            if answers.iter().all(|a| a.starts_with("one ")) {
                Ok(())
            } else {
                Err(format!("{answers:?}"))
            }
        },
    );
    cluster.ok(&["apply", "-f", &file("tcp-echo-20-v2.yaml")]);
    eventually(
        "a v2 answer after the shift",
        Duration::from_secs(30),
        || match echo(tcp, 0) {
            Ok(a) if a.starts_with("two ") => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    let answers: Vec<String> = (0..200).map(|i| echo(tcp, i).expect("echo")).collect();
    let two = answers.iter().filter(|a| a.starts_with("two ")).count();
    let one = answers.iter().filter(|a| a.starts_with("one ")).count();
    assert_eq!(one + two, 200, "{answers:?}");
    // p = 0.2 over 200: mean 40, sigma ~5.7; ±22 is almost 4 sigma.
    assert!((18..=62).contains(&two), "v2 answered {two} of 200");

    let down = cluster.ok(&["cluster", "down"]);
    assert!(down.contains("removed"), "{down}");
    assert_eq!(host_state(&cluster), before, "the host changed");
}

/// One tcp-echo exchange: a line out, the prefixed line back.
fn echo(addr: std::net::SocketAddr, i: usize) -> Result<String, String> {
    use std::io::{BufRead as _, Write as _};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    writeln!(s, "hello {i}").map_err(|e| e.to_string())?;
    let mut line = String::new();
    std::io::BufReader::new(s)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    if line.ends_with('\n') {
        Ok(line.trim_end().to_owned())
    } else {
        Err(format!("no answer line: {line:?}"))
    }
}

/// The pid of a Deployment's app container (not the sidecar), from the pod's processes.
fn find_app_pid(dir: &Path, deployment: &str) -> i32 {
    let pods = dir.join("pods/default");
    let pod = std::fs::read_dir(&pods)
        .expect("pods dir")
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with(deployment))
        .expect("pod dir");
    let netns = format!(
        "weirc-{}.default.{}",
        dir.file_name().unwrap().to_string_lossy(),
        pod.file_name().to_string_lossy()
    );
    let inode = std::fs::metadata(format!("/run/netns/{netns}"))
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .expect("netns");
    for e in std::fs::read_dir("/proc").expect("proc").flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let same = std::fs::metadata(format!("/proc/{pid}/ns/net"))
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m) == inode)
            .unwrap_or(false);
        let cmd = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if same && cmd.contains("bookinfo\0details") {
            return pid;
        }
    }
    panic!("no details process in {netns}");
}

#[test]
fn mistakes_are_named_with_their_fix() {
    let cluster = Cluster::new("m");
    // A port in use names itself and the flag.
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let out = cluster.weir(&[
        "cluster",
        "up",
        "--api",
        &addr,
        "--http-port",
        "0",
        "--tcp-port",
        "0",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains(&addr) && err.contains("--api"), "{err}");
    drop(taken);

    // Up twice.
    let up = cluster.up_args();
    let mut args = vec!["cluster", "up"];
    args.extend(up.iter().map(String::as_str));
    cluster.ok(&args);
    let again = cluster.weir(&args);
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already up"),
        "{again:?}"
    );

    // A pod whose image has no local program says what to do; one that exits restarts.
    let dir = tempfile::tempdir().expect("tempdir");
    let manifest = dir.path().join("bad.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: nginx\nspec:\n  selector:\n    matchLabels: {app: nginx}\n  template:\n    metadata:\n      labels: {app: nginx}\n    spec:\n      containers:\n      - name: nginx\n        image: nginx:1.27\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: crasher\nspec:\n  selector:\n    matchLabels: {app: crasher}\n  template:\n    metadata:\n      labels: {app: crasher, sidecar.istio.io/inject: \"false\"}\n      annotations:\n        command.weir-mesh.io/main: \"echo starting; exit 3\"\n    spec:\n      containers:\n      - name: main\n        image: none\n",
    )
    .expect("write");
    cluster.ok(&["apply", "-f", manifest.to_str().expect("path")]);
    eventually(
        "the crasher restarts with backoff",
        Duration::from_secs(30),
        || {
            let cols = cluster.pod_columns("crasher");
            let restarts: u32 = cols.get(3).and_then(|r| r.parse().ok()).unwrap_or(0);
            if restarts >= 2 && cols.get(2).map(String::as_str) == Some("CrashLoopBackOff") {
                Ok(())
            } else {
                Err(cols.join(" "))
            }
        },
    );
    let log = cluster.ok(&["logs", "deploy/crasher", "--previous"]);
    assert_eq!(log, "starting\n");
    let pod = std::fs::read_dir(cluster.dir().join("pods/default"))
        .expect("pods")
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("nginx"))
        .expect("nginx pod");
    let record = std::fs::read_to_string(pod.path().join("pod.json")).expect("pod.json");
    assert!(record.contains("command.weir-mesh.io/nginx"), "{record}");

    // Manifests injected beforehand (`weir inject`, as for a real cluster) run too: the
    // injected istio-proxy is replaced by the cluster's sidecar.
    let source = dir.path().join("tcp-echo-services.yaml");
    std::fs::write(
        &source,
        cluster::sample("tcp-echo-services.yaml").expect("sample"),
    )
    .expect("write");
    let injected = cluster.ok(&["inject", "-f", source.to_str().expect("path")]);
    assert!(
        injected.contains("name: istio-proxy") && injected.contains("sidecar.istio.io/status"),
        "{injected}"
    );
    let injected_file = dir.path().join("injected.yaml");
    std::fs::write(&injected_file, &injected).expect("write");
    cluster.ok(&["apply", "-f", injected_file.to_str().expect("path")]);
    eventually(
        "injected tcp-echo pods ready with their sidecar",
        Duration::from_secs(60),
        || {
            let pods = cluster.ok(&["get", "pods"]);
            let ready = pods
                .lines()
                .filter(|l| l.starts_with("tcp-echo-v") && l.contains(" 2/2 "))
                .count();
            if ready == 2 {
                Ok(())
            } else {
                Err(pods)
            }
        },
    );

    // Without root, the cluster says what to do.
    let as_nobody = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            WEIR,
            "cluster",
            "up",
        ])
        .env("WEIR_CLUSTER", &cluster.name)
        .env("WEIR_CLUSTER_ROOT", &cluster.root)
        .output()
        .expect("setpriv");
    let err = String::from_utf8_lossy(&as_nobody.stderr);
    assert!(
        !as_nobody.status.success() && err.contains("needs root") && err.contains("sudo"),
        "{err}"
    );

    // Deleting a Deployment removes its pod and namespace.
    cluster.ok(&["delete", "-f", manifest.to_str().expect("path")]);
    eventually("pods gone", Duration::from_secs(30), || {
        let left = entries("/run/netns", |n| {
            ["nginx", "crasher"]
                .iter()
                .any(|d| n.starts_with(&format!("weirc-{}.default.{d}-", cluster.name)))
        });
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("{left:?}"))
        }
    });

    // After a crash of the supervisor, `down` still removes everything.
    let info: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(cluster.dir().join("cluster.json")).expect("cluster.json"),
    )
    .expect("json");
    let pid = info["supervisor"]["pid"].as_i64().expect("pid");
    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    let down = cluster.ok(&["cluster", "down"]);
    // Its pods outlived it (Prometheus, the gateway, tcp-echo); down found and stopped them.
    assert!(
        down.contains("leftover process") && !down.contains(" 0 leftover"),
        "{down}"
    );
    let prefix = format!("weirc-{}.", cluster.name);
    let left = entries("/run/netns", |n| n.starts_with(&prefix));
    assert!(left.is_empty(), "{left:?}");
    assert!(!cluster.dir().exists());
    let procs = host_state(&cluster);
    assert_eq!(
        procs.last().map(String::as_str),
        Some("cluster processes: []")
    );
}

/// The names in `dir` that `keep` accepts (none when `dir` does not exist).
fn entries(dir: &str, keep: impl Fn(&str) -> bool) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| keep(n))
                .collect()
        })
        .unwrap_or_default()
}
