//! `weir control serve`: the control plane's resource store and local API; and the
//! connection settings the resource commands (`apply`, `get`, `delete`, `analyze`) share.

use std::io::Write as _;
use std::path::PathBuf;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use control::api::client::{Client, Response};
use control::ca::{self, CertificateAuthority};
use control::mesh::{Mesh, MeshOptions, Pod};
use control::source::dir::DirSource;
use control::source::kube::{KubePod, KubeSource, PodSink};
use control::store::Store;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

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

/// The CA: the plug-in one, or the root kept in the state directory (generated once).
fn certificate_authority(args: &ServeArgs) -> anyhow::Result<CertificateAuthority> {
    if let Some(dir) = &args.cacerts {
        return CertificateAuthority::load_plugin_dir(dir)
            .with_context(|| format!("cannot use the plug-in CA in {}", dir.display()));
    }
    let dir = args.state_dir.join("ca");
    if dir.join("ca-key.pem").exists() {
        return CertificateAuthority::load_plugin_dir(&dir).with_context(|| {
            format!(
                "cannot load the control plane's CA from {}; restore it or remove the directory to generate a new root (every workload certificate must then be reissued)",
                dir.display()
            )
        });
    }
    let authority = CertificateAuthority::generate_root(&args.trust_domain, ca::DEFAULT_ROOT_TTL)?;
    authority.write_plugin_dir(&dir)?;
    tracing::info!(dir = %dir.display(), trust_domain = %args.trust_domain, "generated a root CA");
    Ok(authority)
}

/// Signs proxies' CSRs for their own identity.
struct Signer(Arc<CertificateAuthority>);

impl xds::ca::CertificateSigner for Signer {
    fn sign(
        &self,
        csr_pem: &str,
        identity: &xds::tls::SpiffeId,
        ttl: Duration,
    ) -> Result<Vec<String>, String> {
        let id = ca::SpiffeId::new(
            &identity.trust_domain,
            &identity.namespace,
            &identity.service_account,
        )
        .map_err(|e| e.to_string())?;
        let ttl = ttl.clamp(Duration::from_secs(60), ca::DEFAULT_WORKLOAD_TTL);
        let cert = self
            .0
            .issue_for_csr(csr_pem, &id, ttl)
            .map_err(|e| e.to_string())?;
        Ok(vec![cert.cert_chain_pem, cert.root_cert_pem])
    }
}

/// Kubernetes pods into the mesh's pod registry.
struct MeshPods(Arc<Mesh>);

fn mesh_pod(p: KubePod) -> Pod {
    Pod {
        name: p.name,
        namespace: p.namespace,
        // A pod that is not Ready receives no traffic, as kube-proxy's endpoints.
        ip: p.ready.then_some(p.ip),
        labels: p.labels,
        service_account: p.service_account,
        sidecar: p.sidecar,
        workload: p.workload,
    }
}

impl PodSink for MeshPods {
    fn upsert_pod(&self, pod: KubePod) {
        self.0.upsert_pod(mesh_pod(pod));
    }
    fn remove_pod(&self, namespace: &str, name: &str) {
        self.0.remove_pod(namespace, name);
    }
    fn replace_pods(&self, pods: Vec<KubePod>) {
        self.0.upsert_pods(pods.into_iter().map(mesh_pod));
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let store = Store::open(&args.state_dir)?;
    let authority = Arc::new(certificate_authority(&args)?);
    // The control plane's own serving certificate, reissued at every start.
    let tls_dir = args.state_dir.join("tls");
    let id = ca::SpiffeId::new(&args.trust_domain, "istio-system", "istiod")?;
    authority
        .issue_with_dns(
            &id,
            &[
                super::proxy::DEFAULT_CONTROL_PLANE_NAME,
                "istiod",
                "localhost",
            ],
            ca::DEFAULT_WORKLOAD_TTL,
        )?
        .write_dir(&tls_dir)?;
    let tls = xds::tls::TlsMaterial::from_dir(&tls_dir)?.server_config()?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .with_context(|| {
                format!("cannot listen on {}; pick a free address with --listen", args.listen)
            })?;
        let local = listener
            .local_addr()
            .context("cannot read the listening address")?;
        let grpc = tokio::net::TcpListener::bind(args.grpc).await.with_context(|| {
            format!("cannot listen on {} for gRPC; pick a free address with --grpc", args.grpc)
        })?;
        let grpc_addr = grpc.local_addr().context("cannot read the gRPC address")?;
        let monitoring = tokio::net::TcpListener::bind(args.monitoring)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {} for metrics; pick a free address with --monitoring",
                    args.monitoring
                )
            })?;
        let monitoring_addr = monitoring
            .local_addr()
            .context("cannot read the metrics address")?;

        let revision = store.revision();
        let count = store.resources().len();
        let mut changes = store.subscribe();
        let store = control::api::shared(store);
        let mesh = Arc::new(Mesh::new(MeshOptions {
            trust_domain: args.trust_domain.clone(),
            ..MeshOptions::default()
        }));
        mesh.set_resources(&changes.borrow_and_update().resources);

        let stop = CancellationToken::new();
        let mut registry = Registry::default();
        let server = xds::server::ConfigServer::new(mesh.clone(), &mut registry)
            .with_signer(Arc::new(Signer(authority.clone())));
        let registry = Arc::new(registry);

        // Every committed change reaches the mesh; the compute is incremental. `applied`
        // tells which store revision the mesh reflects.
        let (applied_tx, applied) = tokio::sync::watch::channel(revision);
        let follower = {
            let mesh = mesh.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                // What the mesh cannot honour (HTTP matches at L4, unresolved routes, services
                // without endpoints) is logged when it first appears.
                let mut reported = std::collections::BTreeSet::new();
                report_diagnostics(&mesh, &mut reported);
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        changed = changes.changed() => if changed.is_err() { return },
                    }
                    let next = changes.borrow_and_update().clone();
                    let compute = mesh.clone();
                    let resources = next.resources.clone();
                    let stats = tokio::task::spawn_blocking(move || compute.set_resources(&resources)).await;
                    if let Ok(stats) = stats {
                        tracing::info!(revision = next.revision, ?stats, "configuration recomputed");
                    }
                    applied_tx.send_replace(next.revision);
                    report_diagnostics(&mesh, &mut reported);
                }
            })
        };
        for dir in &args.watch {
            let source = DirSource::new(dir.clone());
            let stop = stop.clone();
            tokio::spawn(source.watch(store.clone(), args.watch_interval, async move {
                stop.cancelled().await
            }));
        }
        if args.kubernetes || args.kubernetes_url.is_some() {
            let client = match &args.kubernetes_url {
                Some(url) => control::source::kube::client_for(url).map_err(anyhow::Error::msg)?,
                None => control::source::kube::client().await.context(
                    "cannot reach Kubernetes: no in-cluster service account and no usable KUBECONFIG; \
                     run inside the cluster, set KUBECONFIG, or pass --kubernetes-url",
                )?,
            };
            let stop = stop.clone();
            tokio::spawn(KubeSource::new().run(
                client,
                store.clone(),
                Arc::new(MeshPods(mesh.clone())),
                async move { stop.cancelled().await },
            ));
        }
        let metrics = tokio::spawn(serve_metrics(monitoring, registry, stop.clone()));
        let grpc_task = tokio::spawn(server.serve(grpc, tls, stop.clone()));

        // One line on stdout with the bound addresses, so scripts using port 0 find them.
        println!(
            "control plane listening on {local} (state {}, revision {revision}, {count} resources); gRPC on {grpc_addr}; metrics on {monitoring_addr}",
            args.state_dir.display()
        );
        std::io::stdout()
            .flush()
            .context("cannot write to standard output")?;
        // `weir analyze` also reports what the mesh cannot honour, once it has caught up
        // with the revision being analysed.
        let more: control::api::MoreDiagnostics = {
            let mesh = mesh.clone();
            Arc::new(move |revision| {
                let mesh = mesh.clone();
                let mut applied = applied.clone();
                Box::pin(async move {
                    let _ = tokio::time::timeout(
                        std::time::Duration::from_secs(5),
                        applied.wait_for(|r| *r >= revision),
                    )
                    .await;
                    mesh.diagnostics()
                })
            })
        };
        let api = control::api::serve_with(listener, store, Some(more), {
            let stop = stop.clone();
            async move {
                shutdown().await;
                stop.cancel();
            }
        });
        let result = api.await.context("the control plane's API server failed");
        stop.cancel();
        let _ = follower.await;
        let _ = metrics.await;
        match grpc_task.await {
            Ok(Err(e)) => tracing::warn!("the gRPC server stopped with an error: {e}"),
            Err(e) => tracing::warn!("the gRPC server task failed: {e}"),
            Ok(Ok(())) => {}
        }
        result
    })
}

/// Logs the mesh's diagnostics not logged before; forgets those that went away.
fn report_diagnostics(mesh: &Mesh, reported: &mut std::collections::BTreeSet<String>) {
    let now: std::collections::BTreeSet<(config::Severity, String)> = mesh
        .diagnostics()
        .into_iter()
        .map(|d| (d.severity, d.to_string()))
        .collect();
    for (severity, line) in &now {
        if reported.insert(line.clone()) {
            match severity {
                config::Severity::Error | config::Severity::Warning => tracing::warn!("{line}"),
                config::Severity::Info => tracing::info!("{line}"),
            }
        }
    }
    reported.retain(|line| now.iter().any(|(_, l)| l == line));
}

/// Serves `/metrics` (Prometheus text) from `registry` until `stop`.
async fn serve_metrics(
    listener: tokio::net::TcpListener,
    registry: Arc<Registry>,
    stop: CancellationToken,
) {
    use axum::routing::get;
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let registry = registry.clone();
            async move {
                let mut text = String::new();
                match prometheus_client::encoding::text::encode(&mut text, &registry) {
                    Ok(()) => (
                        axum::http::StatusCode::OK,
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        text,
                    ),
                    Err(e) => (
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; charset=utf-8",
                        )],
                        format!("cannot encode metrics: {e}"),
                    ),
                }
            }
        }),
    );
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
    {
        tracing::warn!("the metrics server failed: {e}");
    }
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
