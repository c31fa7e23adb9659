//! The cluster's one long-lived process (`weir cluster run`, started in the background
//! by `weir cluster up`): the control plane, the pods ([`crate::kubelet`]), the DNS
//! server and the host port forwarders, until SIGTERM (`weir cluster down`).
//!
//! Host sockets (the API, the ingress ports) are bound first; then the process enters
//! the node's network namespace, so every thread and socket made afterwards (gRPC,
//! metrics, DNS, probes, forwarders' upstreams) lives on the pod network.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::addons;
use crate::forward;
use crate::kubelet::{self, Kubelet, PodTable};
use crate::netns::{self, DNS_IP, NODE_IP};
use crate::state::{self, ClusterInfo, Paths, Phase, PodRecord, ProcessId};
use crate::ClusterError;

/// How a cluster runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// Its paths.
    pub paths: Paths,
    /// The control plane's API on the host.
    pub api: String,
    /// Host address of the ingress ports.
    pub ingress_host: Ipv4Addr,
    /// Host port for the gateway's HTTP port 8080 (0: none).
    pub http_port: u16,
    /// Host port for the gateway's TCP port 31400 (0: none).
    pub tcp_port: u16,
    /// Sidecars' reporting interval (Istio's default 15 s).
    pub reporting_interval: Duration,
    /// Prometheus's scrape interval.
    pub scrape_interval: Duration,
    /// A plug-in CA (Istio's cacerts layout) instead of a generated root.
    pub cacerts: Option<PathBuf>,
}

impl Options {
    /// Defaults for `paths`.
    pub fn new(paths: Paths) -> Options {
        Options {
            paths,
            api: control::api::DEFAULT_ADDR.to_owned(),
            ingress_host: Ipv4Addr::LOCALHOST,
            http_port: 8080,
            tcp_port: 31400,
            reporting_interval: Duration::from_secs(15),
            scrape_interval: Duration::from_secs(5),
            cacerts: None,
        }
    }

    /// The flags of `weir cluster run` that reproduce these options.
    pub fn to_args(&self) -> Vec<String> {
        let root = self
            .paths
            .dir
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let mut args: Vec<String> = vec![
            "--cluster".into(),
            self.paths.name.clone(),
            "--state-root".into(),
            root,
            "--api".into(),
            self.api.clone(),
            "--ingress-host".into(),
            self.ingress_host.to_string(),
            "--http-port".into(),
            self.http_port.to_string(),
            "--tcp-port".into(),
            self.tcp_port.to_string(),
            "--reporting-interval".into(),
            format!("{}ms", self.reporting_interval.as_millis()),
            "--scrape-interval".into(),
            format!("{}ms", self.scrape_interval.as_millis()),
        ];
        if let Some(dir) = &self.cacerts {
            args.extend(["--cacerts".into(), dir.display().to_string()]);
        }
        args
    }
}

/// Programs a cluster needs, with the package that has each.
const NEEDED: [(&str, &str); 4] = [
    ("ip", "iproute2"),
    ("iptables", "iptables"),
    ("iptables-restore", "iptables"),
    ("prometheus", "prometheus"),
];

/// Checks the programs are installed; the error names the missing ones and their packages.
pub fn check_programs() -> Result<(), ClusterError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let missing: Vec<String> = NEEDED
        .iter()
        .filter(|(prog, _)| !std::env::split_paths(&path).any(|d| d.join(prog).is_file()))
        .map(|(prog, pkg)| format!("{prog} (package {pkg})"))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(ClusterError::Missing(missing.join(", ")))
    }
}

/// `weir cluster up`: clears leftovers of an unclean stop, starts the supervisor
/// (`weir` = this program) in the background and waits until it serves.
pub fn up(
    options: &Options,
    weir: &std::path::Path,
    wait: Duration,
) -> Result<ClusterInfo, ClusterError> {
    crate::require_root()?;
    check_programs()?;
    let paths = &options.paths;
    if let Some(info) = state::read_json::<ClusterInfo>(&paths.cluster_file()).unwrap_or(None) {
        if info.supervisor.is_some_and(|s| s.alive()) {
            return Err(ClusterError::AlreadyUp(paths.name.clone()));
        }
    }
    crate::down::down(paths, Duration::from_secs(20))?;
    std::fs::create_dir_all(&paths.dir).map_err(|e| ClusterError::io(&paths.dir, "create", e))?;
    let log = std::fs::File::create(paths.supervisor_log())
        .map_err(|e| ClusterError::io(&paths.supervisor_log(), "create", e))?;
    let err = log
        .try_clone()
        .map_err(|e| ClusterError::io(&paths.supervisor_log(), "open", e))?;
    let mut cmd = std::process::Command::new(weir);
    cmd.args(["cluster", "run"])
        .args(options.to_args())
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err);
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd.spawn().map_err(|e| ClusterError::Command {
        command: format!("{} cluster run", weir.display()),
        message: e.to_string(),
    })?;
    let deadline = Instant::now() + wait;
    loop {
        if let Some(info) = state::read_json::<ClusterInfo>(&paths.cluster_file())? {
            match &info.phase {
                Phase::Ready => return Ok(info),
                Phase::Failed(why) => {
                    let _ = child.wait();
                    return Err(ClusterError::Invalid(format!(
                        "the cluster did not start: {why}"
                    )));
                }
                _ => {}
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(ClusterError::Invalid(format!(
                "the cluster's supervisor exited ({status}); its log {}:\n{}",
                paths.supervisor_log().display(),
                tail(&paths.supervisor_log(), 20)
            )));
        }
        if Instant::now() > deadline {
            return Err(ClusterError::Invalid(format!(
                "the cluster did not become ready within {}s; see {} and remove what started with `weir cluster down`",
                wait.as_secs(),
                paths.supervisor_log().display()
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The last `n` lines of a file.
pub fn tail(path: &std::path::Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The cluster's record when its supervisor runs.
pub fn status(paths: &Paths) -> Result<(ClusterInfo, Vec<PodRecord>), ClusterError> {
    let info = state::read_json::<ClusterInfo>(&paths.cluster_file())?
        .filter(|i| i.supervisor.is_some_and(|s| s.alive()))
        .ok_or_else(|| ClusterError::NotUp(paths.name.clone()))?;
    Ok((info, state::pods(paths)?))
}

fn write_info(paths: &Paths, info: &ClusterInfo) {
    if let Err(e) = state::write_json(&paths.cluster_file(), info) {
        tracing::error!("{e}");
    }
}

/// `weir cluster run`: the supervisor. Returns when stopped by SIGTERM or SIGINT.
pub fn run(options: Options) -> Result<(), ClusterError> {
    let paths = options.paths.clone();
    let mut info = ClusterInfo {
        name: paths.name.clone(),
        phase: Phase::Starting,
        supervisor: ProcessId::current(),
        api: options.api.clone(),
        node_ip: NODE_IP,
        dns_ip: DNS_IP,
        ingress_host: options.ingress_host.to_string(),
        ingress_http_port: options.http_port,
        ingress_tcp_port: options.tcp_port,
        run_netns_was_mounted: netns::run_netns_mounted(),
    };
    std::fs::create_dir_all(&paths.dir).map_err(|e| ClusterError::io(&paths.dir, "create", e))?;
    let lock = std::fs::File::create(paths.lock_file())
        .map_err(|e| ClusterError::io(&paths.lock_file(), "create", e))?;
    let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|_| ClusterError::AlreadyUp(paths.name.clone()))?;
    write_info(&paths, &info);
    let result = serve(&options, &mut info);
    if let Err(e) = &result {
        info.phase = Phase::Failed(e.to_string());
        write_info(&paths, &info);
        // What a failed start made goes at once (pods were never started).
        let _ = netns::delete(&paths.node_netns());
    }
    result
}

fn serve(options: &Options, info: &mut ClusterInfo) -> Result<(), ClusterError> {
    let paths = &options.paths;
    crate::require_root()?;
    // Host sockets first, while this thread is still in the host's namespace.
    let api = forward::bind_host(&options.api, "the cluster's API", "--api")?;
    let http = (options.http_port != 0)
        .then(|| {
            forward::bind_host(
                &format!("{}:{}", options.ingress_host, options.http_port),
                "the ingress gateway's HTTP port",
                "--http-port (0 for none)",
            )
        })
        .transpose()?;
    let tcp = (options.tcp_port != 0)
        .then(|| {
            forward::bind_host(
                &format!("{}:{}", options.ingress_host, options.tcp_port),
                "the ingress gateway's TCP port",
                "--tcp-port (0 for none)",
            )
        })
        .transpose()?;
    netns::setup_node(&paths.node_netns())?;
    netns::enter(&paths.node_netns())?;
    // From here on every new thread is born in the node's namespace.
    let node_listener = |ip: Ipv4Addr, port: u16, what: &'static str| {
        let addr = SocketAddr::from((ip, port));
        std::net::TcpListener::bind(addr)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|error| ClusterError::PortInUse {
                addr: addr.to_string(),
                what,
                flag: "(inside the node namespace; should not happen: report it)",
                error,
            })
    };
    let grpc = node_listener(NODE_IP, 15012, "the control plane's gRPC")?;
    let monitoring = node_listener(NODE_IP, 15014, "the control plane's metrics")?;
    let dns_addr = SocketAddr::from((DNS_IP, 53));
    let dns_udp = std::net::UdpSocket::bind(dns_addr).map_err(|error| ClusterError::PortInUse {
        addr: dns_addr.to_string(),
        what: "DNS",
        flag: "(inside the node namespace)",
        error,
    })?;
    let dns_tcp = node_listener(DNS_IP, 53, "DNS")?;
    let addon_dir = paths.addons_dir();
    std::fs::create_dir_all(&addon_dir).map_err(|e| ClusterError::io(&addon_dir, "create", e))?;
    let prom = addon_dir.join("prometheus.yml");
    std::fs::write(&prom, addons::prometheus_config(options.scrape_interval))
        .map_err(|e| ClusterError::io(&prom, "write", e))?;

    let mut control_options = control::server::Options::new(paths.control_dir());
    control_options.extra_names = vec!["istiod.istio-system.svc.cluster.local".into()];
    control_options.cacerts = options.cacerts.clone();
    let plane = control::server::ControlPlane::open(control_options)?;
    let first_start = plane.opened().1 == 0;
    if first_start {
        let docs = config::parse_str(&addons::bootstrap_manifests(), "cluster bootstrap")
            .map_err(|e| ClusterError::Invalid(e.lines().join("; ")))?;
        control::api::lock(&plane.store)
            .apply(docs)
            .map_err(|e| ClusterError::Invalid(e.to_string()))?;
    }
    let weir = std::env::current_exe()
        .map_err(|e| ClusterError::io(std::path::Path::new("/proc/self/exe"), "read", e))?;
    let table: PodTable = Arc::new(Mutex::new(BTreeMap::new()));
    let cx = kubelet::Context {
        paths: paths.clone(),
        weir,
        mesh: plane.mesh.clone(),
        authority: plane.authority.clone(),
        trust_domain: control::ca::DEFAULT_TRUST_DOMAIN.to_owned(),
        reporting_interval: options.reporting_interval,
        table: table.clone(),
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| ClusterError::Invalid(format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(async move {
        let stop = CancellationToken::new();
        let dns = crate::dns::Dns::start(
            dns_udp,
            dns_tcp
                .try_clone()
                .map_err(|e| ClusterError::io(std::path::Path::new("dns"), "listen", e))?,
        )
        .map_err(|e| ClusterError::Invalid(e.to_string()))?;
        drop(dns_tcp);
        let dns = Arc::new(dns);
        let mesh = plane.mesh.clone();
        let dns_task = tokio::spawn(keep_dns(dns.clone(), mesh.clone(), stop.clone()));
        let services_task = tokio::spawn(keep_services(mesh, table.clone(), stop.clone()));

        let mut changes = control::api::lock(&plane.store).subscribe();
        let kubelet_task = {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut kubelet = Kubelet::new(cx);
                loop {
                    let resources = changes.borrow_and_update().resources.clone();
                    kubelet.reconcile(&resources);
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        changed = changes.changed() => if changed.is_err() { break },
                    }
                }
                kubelet.shutdown().await;
            })
        };
        let mut forwarders = Vec::new();
        for (listener, port, what) in [
            (http, 8080u16, "ingress HTTP"),
            (tcp, 31400u16, "ingress TCP"),
        ] {
            let Some(listener) = listener else { continue };
            let listener = tokio::net::TcpListener::from_std(listener)
                .map_err(|e| ClusterError::io(std::path::Path::new(what), "listen", e))?;
            let table = table.clone();
            let target: forward::Target =
                Arc::new(move || gateway_pod(&table).map(|ip| SocketAddr::from((ip, port))));
            forwarders.push(tokio::spawn(forward::serve(
                listener,
                target,
                what,
                stop.clone(),
            )));
        }
        let listeners = control::server::Listeners {
            api: tokio::net::TcpListener::from_std(api)
                .map_err(|e| ClusterError::io(std::path::Path::new("api"), "listen", e))?,
            grpc: tokio::net::TcpListener::from_std(grpc)
                .map_err(|e| ClusterError::io(std::path::Path::new("grpc"), "listen", e))?,
            monitoring: tokio::net::TcpListener::from_std(monitoring)
                .map_err(|e| ClusterError::io(std::path::Path::new("monitoring"), "listen", e))?,
        };
        let extra = control::server::Extra {
            api: None,
            monitoring: Some(addons::sd_router(table.clone())),
        };
        info.phase = Phase::Ready;
        write_info(paths, info);
        tracing::info!(cluster = %paths.name, "cluster ready");
        let served = plane.serve(listeners, extra, shutdown_signal()).await;
        info.phase = Phase::Stopping;
        write_info(paths, info);
        stop.cancel();
        let _ = kubelet_task.await;
        for f in forwarders {
            let _ = f.await;
        }
        let _ = dns_task.await;
        let _ = services_task.await;
        if let Ok(dns) = Arc::try_unwrap(dns) {
            dns.shutdown().await;
        }
        served.map_err(ClusterError::from)
    })?;
    // The node goes last: pods are gone, nothing runs in it but this process.
    if let Err(e) = netns::delete(&paths.node_netns()) {
        tracing::warn!("{e}");
    }
    Ok(())
}

/// The IP of a ready ingress gateway pod (`istio: ingressgateway`).
fn gateway_pod(table: &PodTable) -> Option<Ipv4Addr> {
    table
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .values()
        .find(|p| p.ready && p.labels.get("istio").map(String::as_str) == Some("ingressgateway"))
        .map(|p| p.ip)
}

/// Keeps the DNS zone equal to the mesh's services: `<svc>.<ns>.svc.cluster.local`
/// → the service's virtual IPs (`istiod.istio-system.svc` → the node).
async fn keep_dns(
    dns: Arc<crate::dns::Dns>,
    mesh: Arc<control::mesh::Mesh>,
    stop: CancellationToken,
) {
    let mut last: Option<Arc<xds::ServiceMap>> = None;
    loop {
        let services = mesh.services();
        if last.as_ref().is_none_or(|l| !Arc::ptr_eq(l, &services)) {
            let mut names: BTreeMap<String, Vec<Ipv4Addr>> = BTreeMap::new();
            names.insert(
                "istiod.istio-system.svc.cluster.local".into(),
                vec![NODE_IP],
            );
            for s in services.values() {
                let v4: Vec<Ipv4Addr> = s
                    .addresses
                    .iter()
                    .filter_map(|a| match a {
                        std::net::IpAddr::V4(v4) => Some(*v4),
                        std::net::IpAddr::V6(_) => None,
                    })
                    .collect();
                if !v4.is_empty() {
                    names.insert(format!("{}.{}.svc.cluster.local", s.name, s.namespace), v4);
                }
            }
            match dns.replace(&names).await {
                Ok(()) => last = Some(services),
                Err(e) => tracing::warn!("cannot update DNS: {e}"),
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
}

/// Keeps every running pod's service translations ([`crate::services`]) equal to the
/// mesh's services and their ready endpoints.
async fn keep_services(mesh: Arc<control::mesh::Mesh>, table: PodTable, stop: CancellationToken) {
    let mut applied: BTreeMap<String, Arc<String>> = BTreeMap::new();
    let mut last: Option<(Arc<xds::ServiceMap>, Arc<String>)> = None;
    loop {
        let services = mesh.services();
        let script = match &last {
            Some((map, script)) if Arc::ptr_eq(map, &services) => script.clone(),
            _ => {
                let script = Arc::new(crate::services::render(&services));
                last = Some((services, script.clone()));
                script
            }
        };
        let pods: Vec<String> = table
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|p| p.phase != "Terminating" && !p.containers.is_empty())
            .map(|p| p.netns.clone())
            .collect();
        applied.retain(|n, _| pods.contains(n));
        for netns in pods {
            if applied
                .get(&netns)
                .is_some_and(|s| Arc::ptr_eq(s, &script) || **s == *script)
            {
                continue;
            }
            let text = script.clone();
            let name = netns.clone();
            let done =
                tokio::task::spawn_blocking(move || crate::services::restore(&name, &text)).await;
            match done {
                Ok(Ok(())) => {
                    applied.insert(netns, script.clone());
                }
                Ok(Err(e)) => tracing::debug!("service rules not updated yet: {e}"),
                Err(e) => tracing::warn!("service rules task failed: {e}"),
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// Completes on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Paths of a cluster by name (`--state-root` default [`state::DEFAULT_ROOT`]).
pub fn paths(name: &str, root: Option<PathBuf>) -> Result<Paths, ClusterError> {
    Paths::new(name, root.as_deref())
}
