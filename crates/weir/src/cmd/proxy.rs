//! `weir proxy`: run the sidecar from a static configuration, install its capture
//! rules (`init`), or run a metered plain TCP forwarder (`forward`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use proxy::config::{
    parse_duration, Endpoint, EndpointTls, InboundMode, OutboundPort, OutboundService, ProxyConfig,
};
use proxy::{LogLevelSetter, Proxy, ProxyOptions};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::EnvFilter;

mod memcpy;

/// Flags of `weir proxy`.
#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ProxyArgs {
    #[command(subcommand)]
    command: Option<ProxyCommand>,
    /// Static proxy configuration (YAML, or JSON when the name ends in .json);
    /// see docs/proxy-config.md.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Validate the configuration, print it with defaults filled in (JSON) and exit.
    #[arg(long, requires = "config")]
    check: bool,
    /// Control plane to take live configuration from (`weir control serve --grpc`),
    /// e.g. 10.44.0.1:15012. The file then is the bootstrap: identity, listeners,
    /// certificates; services, routes and policies come from the control plane. The
    /// channel is mutual TLS with the workload certificates of `tls.certDir`.
    #[arg(
        long,
        env = "WEIR_CONTROL_PLANE",
        value_name = "ADDR",
        requires = "config"
    )]
    control_plane: Option<SocketAddr>,
    /// The name the control plane's certificate must carry (a DNS SAN).
    #[arg(long, default_value = DEFAULT_CONTROL_PLANE_NAME, value_name = "NAME")]
    control_plane_name: String,
    #[command(flatten)]
    log: LogArgs,
    /// Worker threads (Istio's proxy `concurrency`). 1 runs every connection on one
    /// thread with no work stealing, the cheapest shape for a sidecar given one CPU;
    /// 0 or unset: one per CPU this process may run on. At most 1024.
    #[arg(
        long,
        env = "WEIR_CONCURRENCY",
        global = true,
        value_name = "N",
        value_parser = clap::value_parser!(u16).range(0..=1024)
    )]
    concurrency: Option<u16>,
}

#[derive(clap::Args, Debug)]
struct LogArgs {
    /// Log filter, e.g. `info` or `info,proxy=debug` (changeable at runtime through
    /// the admin endpoint `/logging?level=`).
    #[arg(long, env = "WEIR_LOG", default_value = "info", global = true)]
    log_level: String,
    /// Log JSON lines instead of text.
    #[arg(long, global = true)]
    log_json: bool,
}

#[derive(clap::Subcommand, Debug)]
enum ProxyCommand {
    /// Install the sidecar's traffic-capture rules in the current network namespace.
    Init(super::init::InitArgs),
    /// Forward TCP from one address to another with full istio_tcp_* telemetry.
    Forward(Box<ForwardArgs>),
    /// Run as the injected sidecar of a Kubernetes pod (`weir inject`): the bootstrap
    /// comes from the pod's environment, configuration from the control plane.
    Sidecar(Box<super::sidecar::SidecarArgs>),
}

/// Flags of `weir proxy forward`.
#[derive(clap::Args, Debug)]
struct ForwardArgs {
    /// Address to accept connections on.
    #[arg(long)]
    listen: SocketAddr,
    /// Address to forward them to.
    #[arg(long)]
    upstream: SocketAddr,
    /// Local workload name (source_workload).
    #[arg(long, default_value = "forward")]
    workload: String,
    /// Local namespace (source_workload_namespace).
    #[arg(long, default_value = "default")]
    namespace: String,
    /// Local pod label KEY=VALUE (repeatable), e.g. app=productpage.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// Destination service name (destination_service_name).
    #[arg(long, default_value = "upstream")]
    service: String,
    /// Destination service namespace (defaults to --namespace).
    #[arg(long)]
    service_namespace: Option<String>,
    /// Prometheus endpoint address.
    #[arg(long, default_value = "0.0.0.0:15090")]
    stats: SocketAddr,
    /// Admin endpoint address (loopback only).
    #[arg(long, default_value = "127.0.0.1:15000")]
    admin: SocketAddr,
    /// Readiness endpoint address.
    #[arg(long, default_value = "0.0.0.0:15021")]
    readiness: SocketAddr,
    /// Reporting interval of live connections, e.g. 15s.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    reporting_interval: Duration,
    /// Upstream connect timeout, e.g. 5s.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    connect_timeout: Duration,
    /// How long live connections may drain on SIGTERM, e.g. 5s.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    drain_timeout: Duration,
    /// Do not record istio_tcp_* metrics (the proxy still forwards and logs).
    #[arg(long)]
    no_telemetry: bool,
}

impl ForwardArgs {
    fn config(&self) -> anyhow::Result<ProxyConfig> {
        let mut c = ProxyConfig::minimal(&self.namespace, &self.workload);
        let mut labels = BTreeMap::new();
        for l in &self.labels {
            let (k, v) = l.split_once('=').with_context(|| {
                format!("--label {l:?}: write it as KEY=VALUE, e.g. app=productpage")
            })?;
            labels.insert(k.to_owned(), v.to_owned());
        }
        c.node.labels = labels;
        c.inbound.mode = InboundMode::Disable;
        c.outbound.services.push(Arc::new(OutboundService {
            name: self.service.clone(),
            namespace: self
                .service_namespace
                .clone()
                .unwrap_or_else(|| self.namespace.clone()),
            hostname: None,
            addresses: Vec::new(),
            load_balancer: Default::default(),
            ports: vec![OutboundPort {
                port: self.upstream.port(),
                listen: Some(self.listen),
                endpoints: vec![Endpoint {
                    address: self.upstream,
                    tls: EndpointTls::Disable,
                    identity: None,
                }],
                routes: Vec::new(),
                max_connections: None,
                connect_timeout: None,
            }],
        }));
        c.stats.listen = self.stats;
        c.admin.listen = self.admin;
        c.readiness.listen = self.readiness;
        c.reporting.interval = self.reporting_interval;
        c.limits.connect_timeout = self.connect_timeout;
        c.limits.drain_timeout = self.drain_timeout;
        c.telemetry.enabled = !self.no_telemetry;
        c.validate("command line")?;
        Ok(c)
    }
}

/// Runs `weir proxy`.
pub fn run(args: ProxyArgs) -> anyhow::Result<()> {
    let serves = match &args.command {
        Some(ProxyCommand::Init(_)) => false,
        Some(_) => true,
        None => !args.check,
    };
    // Before the runtime's threads exist: on success this does not return.
    let memcpy = if serves {
        memcpy::ensure()
    } else {
        memcpy::Outcome::Unneeded
    };
    match args.command {
        Some(ProxyCommand::Init(init)) => super::init::run(init),
        Some(ProxyCommand::Forward(fwd)) => {
            let config = fwd.config()?;
            let setter = init_logging(&args.log)?;
            serve_with(config, setter, None, args.concurrency, memcpy)
        }
        Some(ProxyCommand::Sidecar(sidecar)) => {
            let (config, control) = sidecar.bootstrap(&super::sidecar::process_env)?;
            let setter = init_logging(&args.log)?;
            tracing::info!(config = %serde_json_compact(&config), control_plane = %control.addr, "sidecar bootstrap from the pod's environment");
            serve_with(config, setter, Some(control), args.concurrency, memcpy)
        }
        None => {
            let path = args.config.context(
                "no configuration: run `weir proxy --config FILE` (see docs/proxy-config.md), \
                 `weir proxy forward --listen ADDR --upstream ADDR`, or `weir proxy init`",
            )?;
            let config = ProxyConfig::from_file(&path)?;
            if args.check {
                println!("{}", config.to_json());
                return Ok(());
            }
            let setter = init_logging(&args.log)?;
            tracing::info!(file = %path.display(), config = %serde_json_compact(&config), "effective configuration");
            let control = match args.control_plane {
                Some(addr) => {
                    let tls = config.tls.as_ref().with_context(|| {
                        format!(
                            "{}: --control-plane needs `tls.certDir` (the workload certificates \
                             authenticate the proxy to the control plane); add it, e.g. from `weir ca issue`",
                            path.display()
                        )
                    })?;
                    Some(ControlPlane {
                        addr,
                        name: args.control_plane_name.clone(),
                        cert_dir: tls.cert_dir.clone(),
                    })
                }
                None => None,
            };
            serve_with(config, setter, control, args.concurrency, memcpy)
        }
    }
}

fn serde_json_compact(config: &ProxyConfig) -> String {
    config
        .to_json()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn init_logging(args: &LogArgs) -> anyhow::Result<LogLevelSetter> {
    let filter = EnvFilter::try_new(&args.log_level).with_context(|| {
        format!(
            "--log-level {:?} is not a valid filter; use e.g. info or info,proxy=debug",
            args.log_level
        )
    })?;
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let registry = tracing_subscriber::registry().with(filter);
    if args.log_json {
        registry.with(fmt.json()).try_init()
    } else {
        registry.with(fmt).try_init()
    }
    .context("installing the logger")?;
    Ok(Arc::new(move |level: &str| {
        let filter = EnvFilter::try_new(level).map_err(|e| {
            format!("invalid log filter {level:?}: {e}; use e.g. debug or info,proxy=trace")
        })?;
        handle
            .reload(filter)
            .map_err(|e| format!("cannot change the log filter: {e}"))?;
        Ok(level.to_owned())
    }))
}

/// The name the control plane's serving certificate carries, as Istio's istiod.
pub const DEFAULT_CONTROL_PLANE_NAME: &str = control::server::CONTROL_PLANE_NAME;

/// Where live configuration comes from.
/// The control plane a proxy follows.
#[derive(Debug)]
pub struct ControlPlane {
    /// Its gRPC address.
    pub addr: SocketAddr,
    /// The DNS name its certificate carries.
    pub name: String,
    /// The workload certificates that authenticate the proxy to it.
    pub cert_dir: PathBuf,
}

/// Hands each configuration the control plane sends to the running proxy.
struct HandleSink(Arc<proxy::ProxyHandle>);

impl xds::client::ConfigSink for HandleSink {
    fn apply(&self, config: ProxyConfig, version: &str) -> Result<(), String> {
        match self.0.update_versioned(config, version.to_owned()) {
            Ok(summary) => {
                tracing::info!(version, changed = ?summary.changed, "configuration applied");
                Ok(())
            }
            Err(e) => {
                tracing::warn!(version, "configuration rejected: {e}");
                Err(e.to_string())
            }
        }
    }
}

/// The proxy's runtime: `concurrency` worker threads, or one per CPU this process may
/// run on. A single worker is a current-thread runtime: the accept loops and every
/// connection share one thread and one queue, without the multi-thread scheduler's
/// cross-thread bookkeeping.
fn runtime(concurrency: Option<u16>) -> anyhow::Result<tokio::runtime::Runtime> {
    let workers = match concurrency {
        Some(n) if n > 0 => usize::from(n),
        _ => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    builder
        .enable_all()
        .thread_name("weir-proxy")
        .build()
        .context("starting the async runtime")
}

/// Starts the proxy (following the control plane when given), waits for SIGTERM/SIGINT
/// or `/quitquitquit`, drains, exits 0.
fn serve_with(
    config: ProxyConfig,
    log_level: LogLevelSetter,
    control: Option<ControlPlane>,
    concurrency: Option<u16>,
    memcpy: memcpy::Outcome,
) -> anyhow::Result<()> {
    if let memcpy::Outcome::Failed(error) = memcpy {
        tracing::warn!(%error, "could not restart with glibc's rep movsb threshold raised (slower TLS copies on AMD processors); set GLIBC_TUNABLES=glibc.cpu.x86_rep_movsb_threshold=1073741824 in the proxy's environment");
    }
    let runtime = runtime(concurrency)?;
    runtime.block_on(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        // The file's configuration is the base every pushed update is merged onto.
        let base = config.clone();
        let handle = Proxy::start(
            config,
            ProxyOptions {
                log_level: Some(log_level),
            },
        )
        .await?;
        let handle = Arc::new(handle);
        let quit = handle.shutdown_requested();
        let stop_client = tokio_util::sync::CancellationToken::new();
        let client = control.map(|cp| {
            tracing::info!(control_plane = %cp.addr, name = %cp.name, "following the control plane");
            // Renews the workload certificate through the control plane before it expires;
            // the TLS reloader picks the new files up for new handshakes.
            let rotation = xds::rotate::RotateOptions::new(cp.addr, &cp.name, &cp.cert_dir);
            let rotator = tokio::spawn(xds::rotate::run(rotation, stop_client.clone()));
            let options = xds::client::ConfigClientOptions::new(
                cp.addr,
                cp.name,
                cp.cert_dir,
                base,
                Arc::new(HandleSink(handle.clone())),
            );
            (
                tokio::spawn(xds::client::run(options, stop_client.clone())),
                rotator,
            )
        });
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received; draining"),
            _ = int.recv() => tracing::info!("SIGINT received; draining"),
            _ = quit.cancelled() => tracing::info!("shutdown requested through the admin endpoint; draining"),
        }
        stop_client.cancel();
        if let Some((client, rotator)) = client {
            let _ = client.await;
            let _ = rotator.await;
        }
        let handle = Arc::into_inner(handle)
            .context("the proxy handle is still shared after the control-plane client stopped")?;
        let report = handle.shutdown().await;
        tracing::info!(cut_connections = report.cut_connections, "exiting");
        anyhow::Ok(())
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        proxy: ProxyArgs,
    }

    fn forward_config(extra: &[&str]) -> ProxyConfig {
        let mut argv = vec![
            "weir",
            "forward",
            "--listen",
            "127.0.0.1:7000",
            "--upstream",
            "127.0.0.1:7001",
        ];
        argv.extend_from_slice(extra);
        let cli = Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{e}"));
        let Some(ProxyCommand::Forward(fwd)) = cli.proxy.command else {
            panic!("not the forward subcommand");
        };
        fwd.config().unwrap_or_else(|e| panic!("{e:#}"))
    }

    #[test]
    fn forward_telemetry_is_on_unless_switched_off() {
        assert!(forward_config(&[]).telemetry.enabled);
        assert!(!forward_config(&["--no-telemetry"]).telemetry.enabled);
    }
}
