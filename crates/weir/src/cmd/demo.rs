//! `weir demo`: Istio's "Collecting Metrics for TCP Services" task, end to end on this
//! machine: the local cluster, Bookinfo with ratings v2 reading MySQL (MariaDB), mutual
//! TLS destination rules, virtual services, traffic to the product page, one reporting
//! interval, then the seed's PromQL queries answered by the cluster's Prometheus.

use std::io::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use cluster::state::{Paths, PodRecord};
use control::api::client::Client;
use control::api::Manifests;

use super::cluster::ClusterSel;

/// Flags of `weir demo`.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Product page requests to send.
    #[arg(long, default_value_t = 20)]
    requests: u32,
    /// Remove the cluster at the end (by default it stays up to explore).
    #[arg(long)]
    down: bool,
    #[command(flatten)]
    up: super::cluster::UpArgs,
    #[command(flatten)]
    sel: ClusterSel,
}

const STEPS: usize = 9;

fn step(n: usize, text: &str) {
    println!("==> [{n}/{STEPS}] {text}");
    let _ = std::io::stdout().flush();
}

/// Runs the demo.
pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let paths = args.sel.paths()?;
    println!(
        "weir demo: Istio's \"Collecting Metrics for TCP Services\" on this machine, no Kubernetes"
    );
    step(1, "Prerequisites: root, ip, iptables, prometheus, mariadbd");
    cluster::require_root()?;
    cluster::supervisor::check_programs()?;
    anyhow::ensure!(
        which("mariadbd"),
        "`mariadbd` is not installed; install it (Debian: apt-get install mariadb-server, or run scripts/install-deps.sh)"
    );
    println!("    ok");

    step(
        2,
        &format!(
            "Cluster {:?} up (state {})",
            paths.name,
            paths.dir.display()
        ),
    );
    let running = cluster::supervisor::status(&paths).is_ok();
    if running {
        println!("    already up: using it");
    } else {
        let weir = std::env::current_exe().context("cannot find the weir binary")?;
        cluster::supervisor::up(
            &args.up.options(paths.clone()),
            &weir,
            Duration::from_secs(90),
        )?;
    }
    let (info, _) = cluster::supervisor::status(&paths)?;
    println!(
        "    pod network 10.244.0.0/16, services 10.96.0.0/16, DNS {}",
        info.dns_ip
    );
    println!(
        "    control plane API {}; add-ons: prometheus, istio-ingressgateway (istio-system)",
        info.api
    );
    println!(
        "    namespace default: automatic sidecar injection on (label istio-injection=enabled)"
    );
    let client = Client::new(&info.api);
    let result = demo(&args, &paths, &info, &client);
    if args.down {
        let removed = cluster::down::down(&paths, Duration::from_secs(30))?;
        println!("cluster {:?}: {removed}", paths.name);
    }
    result
}

fn demo(
    args: &DemoArgs,
    paths: &Paths,
    info: &cluster::state::ClusterInfo,
    client: &Client,
) -> anyhow::Result<()> {
    step(3, "Bookinfo: samples/bookinfo/platform/kube/bookinfo.yaml");
    apply(client, "bookinfo.yaml")?;
    let bookinfo = [
        "details-v1",
        "productpage-v1",
        "ratings-v1",
        "reviews-v1",
        "reviews-v2",
        "reviews-v3",
    ];
    wait_ready(paths, &bookinfo)?;
    println!(
        "    6/6 pods ready (2/2 containers each): {}",
        bookinfo.join(" ")
    );

    step(
        4,
        "ratings v2 with its database (MongoDB is not packaged here: Istio's MySQL variant)",
    );
    apply(client, "bookinfo-mysql.yaml")?;
    apply(client, "bookinfo-ratings-v2-mysql.yaml")?;
    wait_ready(paths, &["mysqldb-v1", "ratings-v2-mysql"])?;
    println!(
        "    mysqldb-v1 ready (MariaDB with Istio's test.ratings table); ratings-v2-mysql ready"
    );

    step(
        5,
        "Destination rules with mutual TLS: destination-rule-all-mtls.yaml",
    );
    apply(client, "destination-rule-all-mtls.yaml")?;

    step(
        6,
        "Virtual services: reviews → v3, ratings → v2-mysql (virtual-service-ratings-mysql.yaml)",
    );
    apply(client, "virtual-service-ratings-mysql.yaml")?;

    step(
        7,
        "Traffic through the ingress gateway: bookinfo-gateway.yaml, then GET /productpage",
    );
    apply(client, "bookinfo-gateway.yaml")?;
    let gateway = wait_pod(paths, "istio-system", "istio-ingressgateway")?;
    let node = paths.node_netns();
    // From the host when the gateway's HTTP port is forwarded (as users curl it), else
    // from the node straight to the gateway pod.
    let (netns, target, url) = if info.ingress_http_port != 0 {
        let addr: SocketAddr = format!("{}:{}", info.ingress_host, info.ingress_http_port)
            .parse()
            .context("the cluster's ingress address")?;
        (None, addr, format!("http://{addr}/productpage"))
    } else {
        let addr = SocketAddr::from((gateway.ip, 8080));
        (
            Some(node.clone()),
            addr,
            format!("http://{addr}/productpage (inside the cluster)"),
        )
    };
    println!("    GATEWAY_URL={target}; {} × curl {url}", args.requests);
    // Routes take a moment to reach every proxy: the first red-star page says they did.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = (0, String::new());
    while Instant::now() < deadline {
        last = get(netns.as_deref(), target, "/productpage").unwrap_or((0, String::new()));
        if last.1.contains("data-color=\"red\"") {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    anyhow::ensure!(
        last.1.contains("data-color=\"red\""),
        "the product page never showed red stars through the gateway (last answer {}); see `weir logs -n istio-system deploy/istio-ingressgateway -c istio-proxy` and `weir logs deploy/ratings-v2-mysql`",
        last.0
    );
    let mut ok = 1;
    for _ in 1..args.requests {
        if get(netns.as_deref(), target, "/productpage")?.0 == 200 {
            ok += 1;
        }
    }
    println!(
        "    {ok}/{} answered 200; the page shows red stars read from mysqldb",
        args.requests
    );

    step(
        8,
        "Waiting for the sidecars' report and Prometheus's next scrape",
    );
    let prometheus = pod_of(paths, "istio-system", "prometheus")?;
    let prom = SocketAddr::from((prometheus.ip, cluster::addons::PROMETHEUS_PORT));
    let started = Instant::now();
    let deadline = started + args.up.reporting_interval + Duration::from_secs(60);
    // Prometheus answers its API with 503 until its storage is open, which on a busy
    // machine can still be the case this many steps after it started.
    loop {
        let answer = match fetch(&node, prom, "/-/ready") {
            Ok((200, _)) => break,
            Ok((status, body)) => format!("it answers {status}: {}", body.trim()),
            Err(e) => format!("{e:#}"),
        };
        anyhow::ensure!(
            Instant::now() < deadline,
            "Prometheus at {prom} is not ready ({answer}); see `weir logs -n istio-system deploy/prometheus`"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    loop {
        let opened = sum(
            &node,
            prom,
            r#"istio_tcp_connections_opened_total{destination_service_name="mysqldb"}"#,
        )?;
        let closed = sum(
            &node,
            prom,
            r#"istio_tcp_connections_closed_total{destination_service_name="mysqldb"}"#,
        )?;
        if opened > 0.0 && (opened - closed).abs() < f64::EPSILON && reporters(&node, prom)? == 2 {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "Prometheus has not seen the database connections from both reporters (opened {}, closed {}); see `weir logs -n istio-system deploy/prometheus` and `weir logs deploy/mysqldb-v1 -c istio-proxy`",
            opened,
            closed
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    println!("    {}s", started.elapsed().as_secs());

    step(
        9,
        "Prometheus (istio-system/prometheus:9090, /api/v1/query), the seed's queries:",
    );
    for metric in [
        "istio_tcp_connections_opened_total",
        "istio_tcp_connections_closed_total",
    ] {
        let q = format!(r#"{metric}{{destination_service_name="mysqldb"}}"#);
        println!("  {q}");
        table(&query(&node, prom, &q)?);
        println!();
    }
    println!("Dashboard: sudo weir dashboard prometheus   (then query istio_tcp_connections_opened_total)");
    println!("Explore:   weir get pods · weir logs deploy/ratings-v2-mysql -c istio-proxy · sudo weir exec deploy/productpage-v1 -- curl -s ratings:9080/ratings/0");
    println!("Remove:    sudo weir cluster down");
    Ok(())
}

fn which(program: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).any(|d| d.join(program).is_file())
}

fn apply(client: &Client, name: &str) -> anyhow::Result<()> {
    let text = cluster::sample(name).with_context(|| format!("no sample {name}"))?;
    let response = client.apply(&Manifests {
        text: text.to_owned(),
        file: name.to_owned(),
    })?;
    for line in &response.reply.lines {
        println!("    {line}");
    }
    anyhow::ensure!(
        response.ok,
        "applying {name} failed: {}",
        response.reply.errors.join("; ")
    );
    Ok(())
}

/// Waits until a pod of each Deployment is ready; a crashing one is named with its log.
fn wait_ready(paths: &Paths, deployments: &[&str]) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let pods = cluster::state::pods(paths)?;
        let missing: Vec<&str> = deployments
            .iter()
            .filter(|d| !pods.iter().any(|p| p.deployment == **d && p.ready))
            .copied()
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            let mut why = Vec::new();
            for d in &missing {
                match pods.iter().find(|p| p.deployment == *d) {
                    Some(p) => {
                        let mut line = format!("{} is {}", p.name, p.phase);
                        if let Some(m) = &p.message {
                            line.push_str(&format!(": {m}"));
                        }
                        for c in p.containers.iter().filter(|c| !c.ready) {
                            let log = paths
                                .pod_dir(&p.namespace, &p.name)
                                .join("logs")
                                .join(format!("{}.log", c.name));
                            line.push_str(&format!(
                                "\n  container {} ({}), last lines of its log:\n{}",
                                c.name,
                                c.last_exit.as_deref().unwrap_or("not ready"),
                                cluster::supervisor::tail(&log, 10)
                            ));
                        }
                        why.push(line);
                    }
                    None => why.push(format!(
                        "no pod of {d} was created; see {}",
                        paths.supervisor_log().display()
                    )),
                }
            }
            anyhow::bail!("pods not ready after 180s:\n{}", why.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Waits (up to a minute) for a ready pod of a Deployment.
fn wait_pod(paths: &Paths, namespace: &str, deployment: &str) -> anyhow::Result<PodRecord> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match pod_of(paths, namespace, deployment) {
            Ok(p) => return Ok(p),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

/// GET from the host, or from inside `netns`.
fn get(netns: Option<&str>, addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    match netns {
        Some(n) => fetch(n, addr, path),
        None => Ok(cluster::http_get(addr, path, Duration::from_secs(10))?),
    }
}

fn pod_of(paths: &Paths, namespace: &str, deployment: &str) -> anyhow::Result<PodRecord> {
    cluster::state::pods(paths)?
        .into_iter()
        .find(|p| p.namespace == namespace && p.deployment == deployment && p.ready)
        .with_context(|| format!("no ready pod of {namespace}/{deployment}"))
}

/// GET from inside the node's network namespace.
fn fetch(node: &str, addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let path = path.to_owned();
    Ok(cluster::netns::run_in(node, move || {
        cluster::http_get(addr, &path, Duration::from_secs(10))
    })??)
}

fn query(node: &str, prom: SocketAddr, q: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    let (status, body) = fetch(
        node,
        prom,
        &format!("/api/v1/query?query={}", cluster::url_encode(q)),
    )?;
    anyhow::ensure!(status == 200, "Prometheus answered {status}: {body}");
    let v: serde_json::Value =
        serde_json::from_str(&body).context("Prometheus's answer is not JSON")?;
    Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
}

fn sum(node: &str, prom: SocketAddr, series: &str) -> anyhow::Result<f64> {
    let rows = query(node, prom, &format!("sum({series})"))?;
    Ok(rows
        .first()
        .and_then(|r| r["value"][1].as_str())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0))
}

fn reporters(node: &str, prom: SocketAddr) -> anyhow::Result<usize> {
    Ok(query(
        node,
        prom,
        r#"count by (reporter) (istio_tcp_connections_closed_total{destination_service_name="mysqldb"})"#,
    )?
    .len())
}

const COLUMNS: [&str; 10] = [
    "job",
    "instance",
    "reporter",
    "source_workload",
    "source_canonical_service",
    "source_canonical_revision",
    "source_principal",
    "destination_workload",
    "destination_version",
    "connection_security_policy",
];

fn table(rows: &[serde_json::Value]) {
    let cell = |r: &serde_json::Value, c: &str| r["metric"][c].as_str().unwrap_or("").to_owned();
    let mut rows: Vec<&serde_json::Value> = rows.iter().collect();
    rows.sort_by_key(|r| cell(r, "reporter"));
    let widths: Vec<usize> = COLUMNS
        .iter()
        .map(|c| {
            rows.iter()
                .map(|r| cell(r, c).len())
                .chain([c.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<String>, value: &str| {
        let mut s = String::from("    ");
        for (c, w) in cells.iter().zip(&widths) {
            s.push_str(&format!("{c:<w$}  "));
        }
        s.push_str(value);
        println!("{s}");
    };
    line(COLUMNS.iter().map(|c| c.to_string()).collect(), "value");
    for r in rows {
        line(
            COLUMNS.iter().map(|c| cell(r, c)).collect(),
            r["value"][1].as_str().unwrap_or(""),
        );
    }
}
