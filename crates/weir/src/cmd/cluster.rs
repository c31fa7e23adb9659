//! The local cluster's commands: `weir cluster up|down|status`, `weir get pods`,
//! `weir logs`, `weir exec`, `weir dashboard prometheus`, `weir inject`, and the
//! hidden `weir cluster run` (the supervisor) and `weir bookinfo` (the sample apps).

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use cluster::state::{Paths, PodRecord};
use cluster::supervisor::Options;

/// Which cluster.
#[derive(clap::Args, Debug, Clone)]
pub struct ClusterSel {
    /// The cluster's name.
    #[arg(id = "cluster", long = "cluster", env = "WEIR_CLUSTER", default_value = cluster::state::DEFAULT_NAME, global = true)]
    pub name: String,
    /// Directory holding clusters' state.
    #[arg(long, env = "WEIR_CLUSTER_ROOT", default_value = cluster::state::DEFAULT_ROOT, global = true, hide = true)]
    pub state_root: PathBuf,
}

impl ClusterSel {
    /// Its paths.
    pub fn paths(&self) -> anyhow::Result<Paths> {
        Ok(Paths::new(&self.name, Some(&self.state_root))?)
    }
}

/// `weir cluster` subcommands.
#[derive(clap::Args, Debug)]
pub struct ClusterArgs {
    #[command(subcommand)]
    command: ClusterCommand,
    #[command(flatten)]
    sel: ClusterSel,
}

#[derive(clap::Subcommand, Debug)]
enum ClusterCommand {
    /// Create the cluster and start its supervisor in the background: pod network, DNS,
    /// control plane (API on --api), Prometheus, ingress ports.
    Up(UpArgs),
    /// Stop every pod and remove every namespace, rule, process and file the cluster made.
    Down,
    /// Print the cluster's addresses, the gateway's environment variables and its pods.
    Status,
    /// The supervisor itself (started by `up`).
    #[command(hide = true)]
    Run(UpArgs),
}

/// Flags of `weir cluster up` (and `weir demo`).
#[derive(clap::Args, Debug, Clone)]
pub struct UpArgs {
    /// The control plane's API on the host (`weir apply` talks to it).
    #[arg(long, default_value = control::api::DEFAULT_ADDR)]
    api: String,
    /// Host address of the ingress gateway's ports.
    #[arg(long, default_value = "127.0.0.1")]
    ingress_host: std::net::Ipv4Addr,
    /// Host port forwarded to the ingress gateway's HTTP port 8080 (0: none).
    #[arg(long, default_value_t = 8080)]
    http_port: u16,
    /// Host port forwarded to the ingress gateway's TCP port 31400 (0: none).
    #[arg(long, default_value_t = 31400)]
    tcp_port: u16,
    /// How often sidecars report live connections (Istio's tcpReportingDuration).
    #[arg(long, default_value = "15s", value_parser = proxy::config::parse_duration)]
    pub reporting_interval: Duration,
    /// Prometheus's scrape interval.
    #[arg(long, default_value = "5s", value_parser = proxy::config::parse_duration)]
    scrape_interval: Duration,
    /// A plug-in CA in Istio's cacerts layout (ca-cert.pem, ca-key.pem, root-cert.pem,
    /// cert-chain.pem) for the cluster's certificates; without it a root is generated.
    #[arg(long, value_name = "DIR")]
    cacerts: Option<PathBuf>,
}

impl UpArgs {
    /// The supervisor's options.
    pub fn options(&self, paths: Paths) -> Options {
        let mut o = Options::new(paths);
        o.api = self.api.clone();
        o.ingress_host = self.ingress_host;
        o.http_port = self.http_port;
        o.tcp_port = self.tcp_port;
        o.reporting_interval = self.reporting_interval;
        o.scrape_interval = self.scrape_interval;
        o.cacerts = self.cacerts.clone();
        o
    }
}

/// Runs `weir cluster`.
pub fn run(args: ClusterArgs) -> anyhow::Result<()> {
    let sel = args.sel.clone();
    match args.command {
        ClusterCommand::Up(up) => {
            let paths = sel.paths()?;
            let weir = std::env::current_exe().context("cannot find the weir binary")?;
            let info = cluster::supervisor::up(
                &up.options(paths.clone()),
                &weir,
                Duration::from_secs(90),
            )?;
            println!(
                "cluster {:?} is up (state {})",
                info.name,
                paths.dir.display()
            );
            println!(
                "namespace default: automatic sidecar injection on (label istio-injection=enabled)"
            );
            print_status(&paths)
        }
        ClusterCommand::Down => {
            let paths = sel.paths()?;
            let removed = cluster::down::down(&paths, Duration::from_secs(30))?;
            println!("cluster {:?}: {removed}", paths.name);
            Ok(())
        }
        ClusterCommand::Status => print_status(&sel.paths()?),
        ClusterCommand::Run(up) => {
            init_logging();
            cluster::supervisor::run(up.options(sel.paths()?))?;
            Ok(())
        }
    }
}

/// Logs to stderr (`WEIR_LOG` filter; default info).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WEIR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,hickory_server=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}

fn print_status(paths: &Paths) -> anyhow::Result<()> {
    let (info, pods) = cluster::supervisor::status(paths)?;
    println!("control plane API: {}  (weir apply -f FILE)", info.api);
    println!(
        "pod network 10.244.0.0/16, services 10.96.0.0/16, DNS {} (cluster.local)",
        info.dns_ip
    );
    if info.ingress_http_port != 0 || info.ingress_tcp_port != 0 {
        println!("ingress gateway (istio-system/istio-ingressgateway):");
        println!(
            "  export INGRESS_HOST={} INGRESS_PORT={} TCP_INGRESS_PORT={}",
            info.ingress_host, info.ingress_http_port, info.ingress_tcp_port
        );
        println!(
            "  export GATEWAY_URL={}:{}",
            info.ingress_host, info.ingress_http_port
        );
    }
    println!();
    print_pods(&pods, true, false);
    Ok(())
}

fn age(created: u64) -> String {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let s = now.saturating_sub(created);
    match s {
        0..120 => format!("{s}s"),
        120..7200 => format!("{}m", s / 60),
        _ => format!("{}h", s / 3600),
    }
}

fn print_pods(pods: &[PodRecord], with_namespace: bool, wide: bool) {
    let mut rows = vec![];
    let mut header = vec![];
    if with_namespace {
        header.push("NAMESPACE");
    }
    header.extend(["NAME", "READY", "STATUS", "RESTARTS", "AGE"]);
    if wide {
        header.push("IP");
    }
    rows.push(header.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    for p in pods {
        let mut row = vec![];
        if with_namespace {
            row.push(p.namespace.clone());
        }
        row.extend([
            p.name.clone(),
            p.ready_column(),
            p.phase.clone(),
            p.restarts().to_string(),
            age(p.created),
        ]);
        if wide {
            row.push(p.ip.to_string());
        }
        rows.push(row);
    }
    if pods.is_empty() {
        println!("No pods found.");
        return;
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        println!("{}", line.join("   ").trim_end());
    }
}

/// `weir get pods`.
pub fn get_pods(sel: &ClusterSel, namespace: Option<&str>, wide: bool) -> anyhow::Result<()> {
    let (_, pods) = cluster::supervisor::status(&sel.paths()?)?;
    let pods: Vec<PodRecord> = pods
        .into_iter()
        .filter(|p| namespace.is_none_or(|n| p.namespace == n))
        .collect();
    print_pods(&pods, namespace.is_none(), wide);
    Ok(())
}

/// Finds the pod `target` names: `deploy/NAME` (its first ready pod, else its first),
/// `pod/NAME` or `NAME`.
pub fn find_pod(sel: &ClusterSel, namespace: &str, target: &str) -> anyhow::Result<PodRecord> {
    let (_, pods) = cluster::supervisor::status(&sel.paths()?)?;
    let pods: Vec<PodRecord> = pods
        .into_iter()
        .filter(|p| p.namespace == namespace)
        .collect();
    let (kind, name) = target.split_once('/').unwrap_or(("pod", target));
    let found = match kind {
        "deploy" | "deployment" | "deployments" | "deployment.apps" => {
            let mut of: Vec<&PodRecord> = pods.iter().filter(|p| p.deployment == name).collect();
            of.sort_by_key(|p| !p.ready);
            of.first().map(|p| (*p).clone())
        }
        "pod" | "pods" | "po" => pods.iter().find(|p| p.name == name).cloned(),
        other => anyhow::bail!("{target}: unknown kind {other:?}; use deploy/NAME or a pod name"),
    };
    found.with_context(|| {
        let names: Vec<&str> = pods.iter().map(|p| p.name.as_str()).collect();
        format!(
            "no pod for {target} in namespace {namespace}; pods there: {}",
            if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            }
        )
    })
}

/// Flags of `weir logs`.
#[derive(clap::Args, Debug)]
pub struct LogsArgs {
    /// `deploy/NAME` or a pod name.
    target: String,
    /// Container (default: the first app container; `istio-proxy` is the sidecar).
    #[arg(short = 'c', long)]
    container: Option<String>,
    /// Namespace.
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    /// The previous instance's log (before the last restart).
    #[arg(short = 'p', long)]
    previous: bool,
    /// Keep printing new lines.
    #[arg(short = 'f', long)]
    follow: bool,
    #[command(flatten)]
    sel: ClusterSel,
}

/// Runs `weir logs`.
pub fn logs(args: LogsArgs) -> anyhow::Result<()> {
    let pod = find_pod(&args.sel, &args.namespace, &args.target)?;
    let container = pick_container(&pod, args.container.as_deref())?;
    let paths = args.sel.paths()?;
    let mut file = paths
        .pod_dir(&pod.namespace, &pod.name)
        .join("logs")
        .join(format!("{container}.log"));
    if args.previous {
        file = file.with_extension("log.1");
        anyhow::ensure!(
            file.exists(),
            "container {container} of pod {} has not restarted: no previous log",
            pod.name
        );
    }
    let mut offset = 0usize;
    let mut out = std::io::stdout().lock();
    loop {
        let bytes = std::fs::read(&file).unwrap_or_default();
        if bytes.len() < offset {
            offset = 0; // restarted: a new file
        }
        out.write_all(&bytes[offset..])
            .context("cannot write to standard output")?;
        out.flush().context("cannot write to standard output")?;
        offset = bytes.len();
        if !args.follow {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn pick_container(pod: &PodRecord, want: Option<&str>) -> anyhow::Result<String> {
    let names: Vec<&str> = pod.containers.iter().map(|c| c.name.as_str()).collect();
    match want {
        Some(c) if names.contains(&c) => Ok(c.to_owned()),
        Some(c) => anyhow::bail!(
            "pod {} has no container {c:?}; its containers: {}",
            pod.name,
            names.join(", ")
        ),
        None => names
            .iter()
            .find(|n| **n != cluster::workload::SIDECAR)
            .or(names.first())
            .map(|n| (*n).to_owned())
            .with_context(|| format!("pod {} has no containers", pod.name)),
    }
}

/// Flags of `weir exec`.
#[derive(clap::Args, Debug)]
pub struct ExecArgs {
    /// `deploy/NAME` or a pod name.
    target: String,
    /// Run with this container's environment.
    #[arg(short = 'c', long)]
    container: Option<String>,
    /// Namespace.
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    /// The command and its arguments (after `--`).
    #[arg(last = true, required = true)]
    command: Vec<String>,
    #[command(flatten)]
    sel: ClusterSel,
}

/// Runs `weir exec`: the command runs on the host's filesystem inside the pod's network
/// and DNS; its exit code is returned.
pub fn exec(args: ExecArgs) -> anyhow::Result<std::process::ExitCode> {
    cluster::require_root()?;
    let pod = find_pod(&args.sel, &args.namespace, &args.target)?;
    let mut cmd = std::process::Command::new("ip");
    cmd.args(["netns", "exec", &pod.netns]).args(&args.command);
    if let Some(c) = &args.container {
        let name = pick_container(&pod, Some(c))?;
        if let Some(rec) = pod.containers.iter().find(|r| r.name == name) {
            // Exactly the container's environment, as `kubectl exec` gives.
            cmd.env_clear().envs(rec.env.iter().map(|(k, v)| (k, v)));
        }
    }
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {:?} in pod {}", args.command, pod.name))?;
    Ok(std::process::ExitCode::from(
        status
            .code()
            .and_then(|c| u8::try_from(c).ok())
            .unwrap_or(1),
    ))
}

/// `weir dashboard` subcommands.
#[derive(clap::Args, Debug)]
pub struct DashboardArgs {
    #[command(subcommand)]
    which: Dashboard,
}

#[derive(clap::Subcommand, Debug)]
enum Dashboard {
    /// Forward a host port to the cluster's Prometheus (its UI and HTTP API).
    Prometheus {
        /// Host port.
        #[arg(short = 'p', long, default_value_t = 9090)]
        port: u16,
        /// Host address.
        #[arg(long, default_value = "127.0.0.1")]
        address: std::net::Ipv4Addr,
        /// Open a browser (when a display is available).
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        browser: bool,
        #[command(flatten)]
        sel: ClusterSel,
    },
}

/// Runs `weir dashboard prometheus` until Ctrl-C.
pub fn dashboard(args: DashboardArgs) -> anyhow::Result<()> {
    let Dashboard::Prometheus {
        port,
        address,
        browser,
        sel,
    } = args.which;
    cluster::require_root()?;
    let paths = sel.paths()?;
    let prometheus = find_pod(&sel, cluster::addons::ADDON_NAMESPACE, "deploy/prometheus")?;
    anyhow::ensure!(
        prometheus.ready,
        "Prometheus is not ready ({}); see `weir logs -n istio-system deploy/prometheus`",
        prometheus.phase
    );
    let addr = format!("{address}:{port}");
    let listener = cluster::forward::bind_host(&addr, "the Prometheus dashboard", "--port")?;
    let url = format!("http://{addr}");
    println!(
        "Prometheus of cluster {:?}: {url}  (Ctrl-C to stop)",
        paths.name
    );
    std::io::stdout().flush().ok();
    if browser
        && (std::env::var_os("DISPLAY").is_some() || std::env::var_os("WAYLAND_DISPLAY").is_some())
    {
        let _ = std::process::Command::new("xdg-open")
            .arg(&url)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
    }
    // The upstream side is made inside the node's network namespace.
    cluster::netns::enter(&paths.node_netns())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let upstream = SocketAddr::from((prometheus.ip, cluster::addons::PROMETHEUS_PORT));
    runtime.block_on(async move {
        let stop = tokio_util::sync::CancellationToken::new();
        let listener = tokio::net::TcpListener::from_std(listener).context("cannot listen")?;
        let target: cluster::forward::Target = std::sync::Arc::new(move || Some(upstream));
        let serve = tokio::spawn(cluster::forward::serve(
            listener,
            target,
            "dashboard",
            stop.clone(),
        ));
        let _ = tokio::signal::ctrl_c().await;
        stop.cancel();
        let _ = serve.await;
        Ok(())
    })
}

/// Flags of `weir inject`.
#[derive(clap::Args, Debug)]
pub struct InjectArgs {
    /// Manifests to inject (`-` for standard input).
    #[arg(short = 'f', long = "filename")]
    file: PathBuf,
    /// The sidecar and init image.
    #[arg(long)]
    image: Option<String>,
    /// Put the sidecar in initContainers with restartPolicy Always (Kubernetes ≥ 1.29), as
    /// Istio does by default; false puts it in containers.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    native_sidecars: bool,
    /// The control plane's address the sidecars dial.
    #[arg(long, default_value = cluster::inject::DEFAULT_CONTROL_PLANE)]
    control_plane: String,
    /// Trust domain of workload identities.
    #[arg(long, default_value = cluster::inject::DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,
}

/// Runs `weir inject`: prints the manifests with the sidecar added.
pub fn inject(args: InjectArgs) -> anyhow::Result<()> {
    let text = if args.file.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .context("cannot read standard input")?;
        s
    } else {
        std::fs::read_to_string(&args.file)
            .with_context(|| format!("cannot read {}", args.file.display()))?
    };
    let mut opts = cluster::inject::InjectOptions::for_version(env!("CARGO_PKG_VERSION"));
    if let Some(image) = args.image {
        opts.image = image;
    }
    opts.native_sidecars = args.native_sidecars;
    opts.control_plane = args.control_plane;
    opts.trust_domain = args.trust_domain;
    let out = cluster::inject::inject_manifests(&text, &opts)
        .with_context(|| format!("cannot inject {}", args.file.display()))?;
    for n in &out.notices {
        eprintln!("{n}");
    }
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(out.yaml.as_bytes())
        .and_then(|()| stdout.flush())
        .context("cannot write to standard output")
}

/// Runs `weir bookinfo APP` (the local programs of Istio's sample images).
pub fn bookinfo(args: bookinfo::cli::Cli) -> anyhow::Result<()> {
    init_logging();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(bookinfo::cli::run(args))
}
