//! The whole control plane in one place: the store, the CA, the computed mesh, the xDS
//! push, the metrics and the local API, served on listeners the caller bound. `weir
//! control serve` runs it alone; the local cluster embeds it (with its own routes added
//! to the API and the monitoring port) and reaches the mesh and the CA directly.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::api::{self, MoreDiagnostics, Shared};
use crate::ca::{self, CertificateAuthority};
use crate::mesh::{Mesh, MeshOptions, Pod};
use crate::source::dir::DirSource;
use crate::source::kube::{KubePod, KubeSource, PodSink};
use crate::store::Store;

/// The DNS name sidecars expect on the control plane's certificate, as Istio's istiod.
pub const CONTROL_PLANE_NAME: &str = "istiod.istio-system.svc";

/// Errors from starting the control plane.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The CA could not be loaded, generated or used.
    #[error(transparent)]
    Ca(#[from] crate::ca::CaError),
    /// The plug-in CA could not be loaded.
    #[error("cannot use the plug-in CA in {dir}: {error}")]
    PluginCa {
        /// Its directory.
        dir: PathBuf,
        /// Why.
        error: crate::ca::CaError,
    },
    /// The generated CA kept in the state directory could not be loaded.
    #[error("cannot load the control plane's CA from {dir}: {error}; restore it or remove the directory to generate a new root (every workload certificate must then be reissued)")]
    StoredCa {
        /// Its directory.
        dir: PathBuf,
        /// Why.
        error: crate::ca::CaError,
    },
    /// The serving certificate could not be turned into a TLS configuration.
    #[error("cannot use the control plane's serving certificate: {0}")]
    Tls(String),
    /// Kubernetes could not be reached.
    #[error("{0}")]
    Kubernetes(String),
    /// A server failed.
    #[error("the control plane's {what} failed: {error}")]
    Serve {
        /// Which server.
        what: &'static str,
        /// Why.
        error: std::io::Error,
    },
}

/// Where Kubernetes resources and pods come from, if anywhere.
#[derive(Clone, Debug, Default)]
pub enum KubernetesSource {
    /// Not used.
    #[default]
    Off,
    /// In-cluster service account or KUBECONFIG.
    Default,
    /// An unauthenticated URL such as `kubectl proxy`'s.
    Url(String),
}

/// How the control plane runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// Directory of the stored resources and the generated CA.
    pub state_dir: PathBuf,
    /// A plug-in CA in Istio's cacerts layout, instead of the stored one.
    pub cacerts: Option<PathBuf>,
    /// Trust domain of workload identities.
    pub trust_domain: String,
    /// Directories whose manifests are kept applied.
    pub watch: Vec<PathBuf>,
    /// How often they are scanned.
    pub watch_interval: Duration,
    /// Kubernetes as a source.
    pub kubernetes: KubernetesSource,
    /// Extra DNS names of the serving certificate (besides [`CONTROL_PLANE_NAME`],
    /// `istiod` and `localhost`).
    pub extra_names: Vec<String>,
}

impl Options {
    /// Defaults for a state directory.
    pub fn new(state_dir: impl Into<PathBuf>) -> Options {
        Options {
            state_dir: state_dir.into(),
            cacerts: None,
            trust_domain: ca::DEFAULT_TRUST_DOMAIN.to_owned(),
            watch: Vec::new(),
            watch_interval: Duration::from_secs(1),
            kubernetes: KubernetesSource::Off,
            extra_names: Vec::new(),
        }
    }
}

/// The listeners it serves on, bound by the caller (so the caller picks the network
/// namespace and reports port conflicts in its own terms).
#[derive(Debug)]
pub struct Listeners {
    /// The local HTTP/JSON API (`weir apply|get|delete|analyze`).
    pub api: TcpListener,
    /// xDS push and certificate signing (gRPC, mutual TLS).
    pub grpc: TcpListener,
    /// Prometheus metrics (`/metrics`).
    pub monitoring: TcpListener,
}

/// Routes the embedding program adds.
#[derive(Default)]
pub struct Extra {
    /// Merged into the API.
    pub api: Option<axum::Router>,
    /// Merged into the monitoring port.
    pub monitoring: Option<axum::Router>,
}

impl std::fmt::Debug for Extra {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Extra").finish_non_exhaustive()
    }
}

/// An opened control plane, not yet serving.
pub struct ControlPlane {
    options: Options,
    /// The resource store, shared with the API.
    pub store: Shared,
    /// The computed mesh; a runtime that starts pods registers them here.
    pub mesh: Arc<Mesh>,
    /// The CA, for a runtime that issues pods' first certificates.
    pub authority: Arc<CertificateAuthority>,
    /// The store revision the mesh reflects.
    pub applied: watch::Receiver<u64>,
    applied_tx: watch::Sender<u64>,
    tls: Arc<rustls::ServerConfig>,
    revision: u64,
    resources: usize,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("state_dir", &self.options.state_dir)
            .field("revision", &self.revision)
            .finish_non_exhaustive()
    }
}

impl ControlPlane {
    /// Opens the store, loads or generates the CA and (re)issues the serving certificate.
    pub fn open(options: Options) -> Result<ControlPlane, ServerError> {
        let store = Store::open(&options.state_dir)?;
        let authority = Arc::new(certificate_authority(&options)?);
        // The control plane's own serving certificate, reissued at every start.
        let tls_dir = options.state_dir.join("tls");
        let id = ca::SpiffeId::new(&options.trust_domain, "istio-system", "istiod")?;
        let mut names = vec![CONTROL_PLANE_NAME, "istiod", "localhost"];
        names.extend(options.extra_names.iter().map(String::as_str));
        authority
            .issue_with_dns(&id, &names, ca::DEFAULT_WORKLOAD_TTL)?
            .write_dir(&tls_dir)?;
        let tls = xds::tls::TlsMaterial::from_dir(&tls_dir)
            .and_then(|m| m.server_config())
            .map_err(|e| ServerError::Tls(e.to_string()))?;
        let mesh = Arc::new(Mesh::new(MeshOptions {
            trust_domain: options.trust_domain.clone(),
            ..MeshOptions::default()
        }));
        let revision = store.revision();
        let resources = store.resources().len();
        let (applied_tx, applied) = watch::channel(0);
        Ok(ControlPlane {
            options,
            store: api::shared(store),
            mesh,
            authority,
            applied,
            applied_tx,
            tls,
            revision,
            resources,
        })
    }

    /// The store's revision and resource count when it was opened.
    pub fn opened(&self) -> (u64, usize) {
        (self.revision, self.resources)
    }

    /// Serves until `shutdown` completes, then stops every task.
    pub async fn serve(
        self,
        listeners: Listeners,
        extra: Extra,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let ControlPlane {
            options,
            store,
            mesh,
            authority,
            applied,
            applied_tx,
            tls,
            ..
        } = self;
        let mut changes = api::lock(&store).subscribe();
        let first = changes.borrow_and_update().clone();
        mesh.set_resources(&first.resources);
        applied_tx.send_replace(first.revision);

        let stop = CancellationToken::new();
        let mut registry = Registry::default();
        let server = xds::server::ConfigServer::new(mesh.clone(), &mut registry)
            .with_signer(Arc::new(Signer(authority.clone())));
        let registry = Arc::new(registry);

        // Every committed change reaches the mesh; the compute is incremental.
        let follower = {
            let mesh = mesh.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                // What the mesh cannot honour is logged when it first appears.
                let mut reported = BTreeSet::new();
                report_diagnostics(&mesh, &mut reported);
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        changed = changes.changed() => if changed.is_err() { return },
                    }
                    let next = changes.borrow_and_update().clone();
                    let compute = mesh.clone();
                    let resources = next.resources.clone();
                    let stats =
                        tokio::task::spawn_blocking(move || compute.set_resources(&resources))
                            .await;
                    if let Ok(stats) = stats {
                        tracing::info!(
                            revision = next.revision,
                            ?stats,
                            "configuration recomputed"
                        );
                    }
                    applied_tx.send_replace(next.revision);
                    report_diagnostics(&mesh, &mut reported);
                }
            })
        };
        for dir in &options.watch {
            let source = DirSource::new(dir.clone());
            let stop = stop.clone();
            tokio::spawn(
                source.watch(store.clone(), options.watch_interval, async move {
                    stop.cancelled().await
                }),
            );
        }
        let client = match &options.kubernetes {
            KubernetesSource::Off => None,
            KubernetesSource::Url(url) => Some(
                crate::source::kube::client_for(url).map_err(ServerError::Kubernetes)?,
            ),
            KubernetesSource::Default => Some(crate::source::kube::client().await.map_err(|e| {
                ServerError::Kubernetes(format!(
                    "cannot reach Kubernetes: {e}; run inside the cluster, set KUBECONFIG, or pass --kubernetes-url"
                ))
            })?),
        };
        if let Some(client) = client {
            let stop = stop.clone();
            tokio::spawn(KubeSource::new().run(
                client,
                store.clone(),
                Arc::new(MeshPods(mesh.clone())),
                async move { stop.cancelled().await },
            ));
        }
        let monitoring = metrics_router(registry).merge(extra.monitoring.unwrap_or_default());
        let metrics = {
            let stop = stop.clone();
            tokio::spawn(async move {
                axum::serve(listeners.monitoring, monitoring)
                    .with_graceful_shutdown(async move { stop.cancelled().await })
                    .await
            })
        };
        let grpc_task = tokio::spawn(server.serve(listeners.grpc, tls, stop.clone()));

        // `weir analyze` also reports what the mesh cannot honour, once it has caught up
        // with the revision being analysed.
        let more: MoreDiagnostics = {
            let mesh = mesh.clone();
            Arc::new(move |revision| {
                let mesh = mesh.clone();
                let mut applied = applied.clone();
                Box::pin(async move {
                    let _ = tokio::time::timeout(
                        Duration::from_secs(5),
                        applied.wait_for(|r| *r >= revision),
                    )
                    .await;
                    mesh.diagnostics()
                })
            })
        };
        let router = api::router_with(store, Some(more)).merge(extra.api.unwrap_or_default());
        let result = {
            let stop = stop.clone();
            axum::serve(listeners.api, router)
                .with_graceful_shutdown(async move {
                    tokio::select! {
                        _ = shutdown => {}
                        _ = stop.cancelled() => {}
                    }
                })
                .await
        };
        stop.cancel();
        let _ = follower.await;
        match metrics.await {
            Ok(Err(e)) => tracing::warn!("the metrics server failed: {e}"),
            Err(e) => tracing::warn!("the metrics server task failed: {e}"),
            Ok(Ok(())) => {}
        }
        match grpc_task.await {
            Ok(Err(e)) => tracing::warn!("the gRPC server stopped with an error: {e}"),
            Err(e) => tracing::warn!("the gRPC server task failed: {e}"),
            Ok(Ok(())) => {}
        }
        result.map_err(|error| ServerError::Serve { what: "API", error })
    }
}

/// The CA: the plug-in one, or the root kept in the state directory (generated once).
fn certificate_authority(options: &Options) -> Result<CertificateAuthority, ServerError> {
    if let Some(dir) = &options.cacerts {
        return CertificateAuthority::load_plugin_dir(dir).map_err(|error| ServerError::PluginCa {
            dir: dir.clone(),
            error,
        });
    }
    let dir = options.state_dir.join("ca");
    if dir.join("ca-key.pem").exists() {
        return CertificateAuthority::load_plugin_dir(&dir)
            .map_err(|error| ServerError::StoredCa { dir, error });
    }
    let authority =
        CertificateAuthority::generate_root(&options.trust_domain, ca::DEFAULT_ROOT_TTL)?;
    authority.write_plugin_dir(&dir)?;
    tracing::info!(dir = %dir.display(), trust_domain = %options.trust_domain, "generated a root CA");
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

/// Logs the mesh's diagnostics not logged before; forgets those that went away.
fn report_diagnostics(mesh: &Mesh, reported: &mut BTreeSet<String>) {
    let now: BTreeSet<(config::Severity, String)> = mesh
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

/// `/metrics` (Prometheus text) from `registry`.
fn metrics_router(registry: Arc<Registry>) -> axum::Router {
    use axum::http::{header, StatusCode};
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let registry = registry.clone();
            async move {
                let mut text = String::new();
                match prometheus_client::encoding::text::encode(&mut text, &registry) {
                    Ok(()) => (
                        StatusCode::OK,
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        text,
                    ),
                    Err(e) => (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                        format!("cannot encode metrics: {e}"),
                    ),
                }
            }
        }),
    )
}
