//! `weir control serve`: the control plane's resource store and local API; and the
//! connection settings the resource commands (`apply`, `get`, `delete`, `analyze`) share.

use std::io::Write as _;
use std::path::PathBuf;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use control::api::client::{Client, Response};
use control::ca;
use control::server::{ControlPlane, Extra, KubernetesSource, Listeners};

/// Where the control plane's API is, for commands that talk to it.
#[derive(clap::Args, Debug)]
pub struct ControlAddr {
    /// Address of the control plane's API (`weir control serve --listen`).
    #[arg(long = "control", env = "WEIR_CONTROL", default_value = control::api::DEFAULT_ADDR)]
    pub addr: String,
}

impl ControlAddr {
    /// A client of it.
    pub fn client(&self) -> Client {
        Client::new(&self.addr)
    }
}

/// Prints a reply (lines to stdout, notices and errors to stderr); an error when it failed.
pub fn print(response: Response, what: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    for line in &response.reply.lines {
        writeln!(out, "{line}").context("cannot write to standard output")?;
    }
    out.flush().context("cannot write to standard output")?;
    for line in &response.reply.errors {
        eprintln!("{line}");
    }
    if response.ok {
        Ok(())
    } else {
        anyhow::bail!("{what}")
    }
}

/// `weir control` subcommands.
#[derive(clap::Args, Debug)]
pub struct ControlArgs {
    #[command(subcommand)]
    command: ControlCommand,
}

#[derive(clap::Subcommand, Debug)]
enum ControlCommand {
    /// Run the control plane: keep resources in a state directory, serve the local API
    /// that `weir apply|get|delete|analyze` use, compute each proxy's configuration and
    /// push it over gRPC (mutual TLS), sign workload certificates, export metrics.
    Serve(Box<ServeArgs>),
}

/// Flags of `weir control serve`.
#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// Directory holding the stored resources and the generated CA (created if missing).
    #[arg(long)]
    state_dir: PathBuf,
    /// Address of the local API (loopback; port 0 picks a free one).
    #[arg(long, default_value = control::api::DEFAULT_ADDR)]
    listen: String,
    /// Address of the configuration push and certificate service (gRPC, mutual TLS).
    #[arg(long, default_value = "0.0.0.0:15012")]
    grpc: SocketAddr,
    /// Address of the control plane's Prometheus metrics (`/metrics`).
    #[arg(long, default_value = "0.0.0.0:15014")]
    monitoring: SocketAddr,
    /// A plug-in CA in Istio's cacerts layout (ca-cert.pem, ca-key.pem, root-cert.pem,
    /// cert-chain.pem). Without it a root is generated once and kept in the state
    /// directory (`ca/`).
    #[arg(long, value_name = "DIR")]
    cacerts: Option<PathBuf>,
    /// Trust domain of workload identities (and of a generated root).
    #[arg(long, default_value = ca::DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,
    /// Keep the manifests of this directory applied (repeatable): files added or
    /// changed are applied, objects whose files are removed are deleted.
    #[arg(long = "watch", value_name = "DIR")]
    watch: Vec<PathBuf>,
    /// How often watched directories are scanned.
    #[arg(long, default_value = "1s", value_parser = proxy::config::parse_duration)]
    watch_interval: Duration,
    /// Also take resources and pods from Kubernetes (in-cluster account or KUBECONFIG).
    #[arg(long)]
    kubernetes: bool,
    /// Kubernetes API address without authentication (e.g. `kubectl proxy`'s
    /// http://127.0.0.1:8001); implies --kubernetes.
    #[arg(long, value_name = "URL")]
    kubernetes_url: Option<String>,
}

/// Runs `weir control`.
pub fn run(args: ControlArgs) -> anyhow::Result<()> {
    match args.command {
        ControlCommand::Serve(serve_args) => serve(*serve_args),
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    // Source and push problems (a missing CRD, RBAC, a NACK) are only visible in the log.
    super::cluster::init_logging();
    let mut options = control::server::Options::new(&args.state_dir);
    options.cacerts = args.cacerts.clone();
    options.trust_domain = args.trust_domain.clone();
    options.watch = args.watch.clone();
    options.watch_interval = args.watch_interval;
    options.kubernetes = match (&args.kubernetes_url, args.kubernetes) {
        (Some(url), _) => KubernetesSource::Url(url.clone()),
        (None, true) => KubernetesSource::Default,
        (None, false) => KubernetesSource::Off,
    };
    let plane = ControlPlane::open(options)?;
    let (revision, count) = plane.opened();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let api = bind(&args.listen, "the API", "--listen").await?;
        let grpc = bind(&args.grpc.to_string(), "gRPC", "--grpc").await?;
        let monitoring = bind(&args.monitoring.to_string(), "metrics", "--monitoring").await?;
        let addr = |l: &tokio::net::TcpListener| {
            l.local_addr().context("cannot read a listening address")
        };
        let (local, grpc_addr, monitoring_addr) = (addr(&api)?, addr(&grpc)?, addr(&monitoring)?);
        // One line on stdout with the bound addresses, so scripts using port 0 find them.
        println!(
            "control plane listening on {local} (state {}, revision {revision}, {count} resources); gRPC on {grpc_addr}; metrics on {monitoring_addr}",
            args.state_dir.display()
        );
        std::io::stdout()
            .flush()
            .context("cannot write to standard output")?;
        let listeners = Listeners {
            api,
            grpc,
            monitoring,
        };
        plane
            .serve(listeners, Extra::default(), shutdown())
            .await
            .map_err(anyhow::Error::from)
    })
}

async fn bind(addr: &str, what: &str, flag: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on {addr} for {what}; pick a free address with {flag}")
    })
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        // Without a SIGTERM handler, Ctrl-C still stops it.
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
