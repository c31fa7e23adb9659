//! The proxy's side: keeps a configuration stream to the control plane open, merges each
//! delta onto the last good resource set, hands the result to a [`ConfigSink`] and
//! answers with an ACK or a NACK.
//!
//! While the control plane is away nothing is torn down: the last applied configuration
//! stays in force and the client reconnects with exponential backoff and jitter.

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use proxy::config::{OutboundService, ProxyConfig};
use rustls::pki_types::ServerName;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

use crate::convert::{
    assemble, node_info_of, node_to_proto, service_from_proto, workload_from_proto, ConvertError,
};
use crate::proto::config_discovery_client::ConfigDiscoveryClient;
use crate::proto::{self, resource::Kind, ResourceType};
use crate::tls::{TlsError, TlsMaterial};
use crate::{NodeInfo, WorkloadConfig, WORKLOAD_RESOURCE_NAME};

/// Largest response accepted (a full view of a large mesh).
const MAX_RESPONSE_BYTES: usize = 64 << 20;
/// Time allowed to establish the connection (TCP and TLS).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 pings on an idle connection, and how long an answer may take.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where configuration goes: the running proxy. `apply` swaps the configuration in, or
/// refuses it with a reason (which is sent to the control plane as a NACK).
pub trait ConfigSink: Send + Sync {
    /// Applies a complete configuration at `version` (the control plane's system
    /// version).
    fn apply(&self, config: ProxyConfig, version: &str) -> Result<(), String>;
}

/// Reconnection delays: exponential from `initial` to `max`, each with random jitter
/// (between half and all of the nominal delay).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// First delay.
    pub initial: Duration,
    /// Largest delay.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(15),
        }
    }
}

/// How to reach the control plane and what to build on.
#[derive(Clone)]
pub struct ConfigClientOptions {
    /// The control plane's address.
    pub endpoint: SocketAddr,
    /// The DNS name the control plane's certificate must carry.
    pub server_name: String,
    /// Directory with `cert-chain.pem`, `key.pem` and `root-cert.pem`, read again on
    /// every connection attempt (so rotated certificates are picked up).
    pub tls_dir: PathBuf,
    /// What the proxy announces.
    pub node: NodeInfo,
    /// The static part of the configuration (listeners, admin, limits, TLS, node); the
    /// pushed resources are merged onto it.
    pub base: ProxyConfig,
    /// Where configurations go.
    pub sink: Arc<dyn ConfigSink>,
    /// Reconnection delays.
    pub backoff: Backoff,
}

impl std::fmt::Debug for ConfigClientOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigClientOptions")
            .field("endpoint", &self.endpoint)
            .field("server_name", &self.server_name)
            .field("tls_dir", &self.tls_dir)
            .field("node", &self.node)
            .field("backoff", &self.backoff)
            .finish_non_exhaustive()
    }
}

impl ConfigClientOptions {
    /// Options with the node taken from `base` and the default backoff.
    pub fn new(
        endpoint: SocketAddr,
        server_name: impl Into<String>,
        tls_dir: impl Into<PathBuf>,
        base: ProxyConfig,
        sink: Arc<dyn ConfigSink>,
    ) -> Self {
        Self {
            endpoint,
            server_name: server_name.into(),
            tls_dir: tls_dir.into(),
            node: node_info_of(&base),
            base,
            sink,
            backoff: Backoff::default(),
        }
    }
}

/// What the client is doing, for `/config_dump` and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientStatus {
    /// A stream to the control plane is open.
    pub connected: bool,
    /// System version of the configuration last applied.
    pub applied_version: Option<String>,
    /// Configurations applied so far.
    pub applied: u64,
    /// Configurations rejected (NACKed) so far.
    pub rejected: u64,
    /// Connection attempts that failed or streams that broke so far.
    pub disconnects: u64,
    /// The last connection failure or rejection, for humans.
    pub last_error: Option<String>,
    /// Resource name → version of the last good resource set.
    pub resource_versions: BTreeMap<String, String>,
    /// Names of the resources the last response added or changed.
    pub last_update: Vec<String>,
    /// Names of the resources the last response removed.
    pub last_removed: Vec<String>,
}

/// Why a session with the control plane ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The TLS material could not be loaded.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The connection could not be made.
    #[error("cannot connect to control plane {addr}: {error}")]
    Connect {
        /// The control plane's address.
        addr: SocketAddr,
        /// The cause, with its sources.
        error: String,
    },
    /// The control plane refused the stream or it broke.
    #[error("configuration stream from {addr}: {status}")]
    Stream {
        /// The control plane's address.
        addr: SocketAddr,
        /// The gRPC status.
        status: Box<tonic::Status>,
    },
    /// The server name is not a valid DNS name or IP.
    #[error("server name {0:?} is not a valid DNS name or IP address; fix: set the control plane's certificate name")]
    ServerName(String),
    /// The control plane ended the stream.
    #[error("configuration stream from {0} ended")]
    Ended(SocketAddr),
}

/// The last good resource set. Names and versions are shared strings, so the copy made
/// for each response costs reference counts, not an allocation per resource.
#[derive(Clone, Default)]
struct Resources {
    workload: Option<(Arc<WorkloadConfig>, Arc<str>)>,
    services: BTreeMap<Arc<str>, (Arc<OutboundService>, Arc<str>)>,
}

impl Resources {
    fn versions(&self) -> Vec<proto::ResourceVersion> {
        let workload = self.workload.iter().map(|(_, v)| proto::ResourceVersion {
            r#type: ResourceType::Workload as i32,
            name: WORKLOAD_RESOURCE_NAME.to_owned(),
            version: v.to_string(),
        });
        let services = self
            .services
            .iter()
            .map(|(n, (_, v))| proto::ResourceVersion {
                r#type: ResourceType::Service as i32,
                name: n.to_string(),
                version: v.to_string(),
            });
        workload.chain(services).collect()
    }

    /// This set with `response` applied.
    fn merged(&self, response: &proto::DeltaResponse) -> Result<Self, ConvertError> {
        let mut next = self.clone();
        for resource in &response.resources {
            let name = &resource.name;
            match &resource.kind {
                Some(Kind::Service(s)) => {
                    let service = service_from_proto(s, &format!("service[{name}]"))?;
                    next.services.insert(
                        name.as_str().into(),
                        (Arc::new(service), resource.version.as_str().into()),
                    );
                }
                Some(Kind::Workload(w)) => {
                    let workload = workload_from_proto(w, &format!("workload[{name}]"))?;
                    next.workload = Some((Arc::new(workload), resource.version.as_str().into()));
                }
                None => {
                    return Err(ConvertError::Invalid {
                        field: format!("resources[{name}]"),
                        problem: "no content".to_owned(),
                        fix: "send a Service or a Workload".to_owned(),
                    })
                }
            }
        }
        for key in &response.removed {
            match ResourceType::try_from(key.r#type) {
                Ok(ResourceType::Service) => {
                    next.services.remove(key.name.as_str());
                }
                Ok(ResourceType::Workload) => next.workload = None,
                _ => {
                    return Err(ConvertError::UnknownEnum {
                        field: format!("removed[{}].type", key.name),
                        kind: "ResourceType",
                        value: key.r#type,
                        expected: "SERVICE, WORKLOAD",
                    })
                }
            }
        }
        Ok(next)
    }
}

/// A configuration client. Create it, take [`ConfigClient::status`], then
/// [`ConfigClient::run`] it.
pub struct ConfigClient {
    options: ConfigClientOptions,
    status: watch::Sender<ClientStatus>,
    resources: Resources,
}

impl std::fmt::Debug for ConfigClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigClient")
            .field("options", &self.options)
            .field("status", &*self.status.borrow())
            .finish_non_exhaustive()
    }
}

/// Runs a configuration client until `cancel` is cancelled.
pub async fn run(options: ConfigClientOptions, cancel: CancellationToken) {
    ConfigClient::new(options).run(cancel).await;
}

impl ConfigClient {
    /// A client that has not connected yet.
    pub fn new(options: ConfigClientOptions) -> Self {
        Self {
            options,
            status: watch::Sender::new(ClientStatus::default()),
            resources: Resources::default(),
        }
    }

    /// The client's status, updated as it goes.
    pub fn status(&self) -> watch::Receiver<ClientStatus> {
        self.status.subscribe()
    }

    /// Connects, applies configurations and reconnects until `cancel` is cancelled.
    pub async fn run(mut self, cancel: CancellationToken) {
        let mut delay = self.options.backoff.initial;
        loop {
            let mut progressed = false;
            let outcome = tokio::select! {
                () = cancel.cancelled() => return,
                outcome = self.session(&mut progressed) => outcome,
            };
            let error = match outcome {
                Ok(()) => return,
                Err(e) => e,
            };
            if progressed {
                delay = self.options.backoff.initial;
            }
            let wait = jitter(delay);
            tracing::warn!(error = %error, retry_in = ?wait, "control plane connection lost; keeping the last good configuration");
            self.status.send_modify(|s| {
                s.connected = false;
                s.disconnects += 1;
                s.last_error = Some(error.to_string());
            });
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            delay = (delay * 2).min(self.options.backoff.max);
        }
    }

    /// One connection: returns when it fails. `progressed` is set once a response was
    /// handled (the backoff then starts over).
    async fn session(&mut self, progressed: &mut bool) -> Result<(), SessionError> {
        let addr = self.options.endpoint;
        let material = TlsMaterial::from_dir(&self.options.tls_dir)?;
        let channel = connect(addr, &self.options.server_name, &material).await?;
        let mut client =
            ConfigDiscoveryClient::new(channel).max_decoding_message_size(MAX_RESPONSE_BYTES);

        let (requests, requests_rx) = mpsc::channel(16);
        let first = proto::DeltaRequest {
            node: Some(node_to_proto(&self.options.node)),
            initial_resource_versions: self.resources.versions(),
            ..Default::default()
        };
        // The channel is fresh and has room: this cannot wait.
        let _ = requests.send(first).await;
        let outbound = futures_util::stream::unfold(requests_rx, |mut rx| async move {
            rx.recv().await.map(|r| (r, rx))
        });
        let stream_err = |status| SessionError::Stream {
            addr,
            status: Box::new(status),
        };
        let mut responses = client
            .delta_config(outbound)
            .await
            .map_err(stream_err)?
            .into_inner();
        self.status.send_modify(|s| s.connected = true);
        tracing::info!(%addr, "connected to control plane");
        loop {
            let Some(response) = responses.message().await.map_err(stream_err)? else {
                return Err(SessionError::Ended(addr));
            };
            let answer = self.handle(&response);
            *progressed = true;
            if requests.send(answer).await.is_err() {
                return Err(SessionError::Ended(addr));
            }
        }
    }

    /// Applies one response and builds its ACK or NACK.
    fn handle(&mut self, response: &proto::DeltaResponse) -> proto::DeltaRequest {
        let nothing_new = response.resources.is_empty() && response.removed.is_empty();
        let already_applied = self.status.borrow().applied > 0;
        let result = if nothing_new && already_applied {
            // In sync already (a reconnect where everything matched): no swap needed.
            Ok(None)
        } else {
            self.resources
                .merged(response)
                .map_err(|e| e.to_string())
                .and_then(|next| {
                    let config = assemble(
                        &self.options.base,
                        next.workload.as_ref().map(|(w, _)| w.as_ref()),
                        next.services.values().map(|(s, _)| s),
                    );
                    self.options
                        .sink
                        .apply(config, &response.system_version)
                        .map(|()| Some(next))
                })
        };
        let mut request = proto::DeltaRequest {
            response_nonce: response.nonce.clone(),
            ..Default::default()
        };
        self.status.send_modify(|s| {
            s.last_update = response.resources.iter().map(|r| r.name.clone()).collect();
            s.last_removed = response.removed.iter().map(|r| r.name.clone()).collect();
        });
        match result {
            Ok(next) => {
                let applied = next.is_some();
                if let Some(next) = next {
                    self.resources = next;
                }
                self.status.send_modify(|s| {
                    s.applied_version = Some(response.system_version.clone());
                    if applied {
                        s.applied += 1;
                        // The held set is the previous one plus this delta: so are its
                        // versions (kept in step without a pass over every resource).
                        for r in &response.resources {
                            s.resource_versions
                                .insert(r.name.clone(), r.version.clone());
                        }
                        for key in &response.removed {
                            s.resource_versions.remove(&key.name);
                        }
                    }
                });
            }
            Err(error) => {
                tracing::warn!(version = %response.system_version, %error, "configuration rejected; keeping the last good one");
                self.status.send_modify(|s| {
                    s.rejected += 1;
                    s.last_error = Some(format!(
                        "configuration {} rejected: {error}",
                        response.system_version
                    ));
                });
                request.error_detail = Some(proto::ErrorDetail {
                    code: tonic::Code::InvalidArgument as i32,
                    message: error,
                });
            }
        }
        request
    }
}

/// Opens a gRPC channel to the control plane at `addr` over mutual TLS with `material`,
/// verifying that its certificate is valid for `server_name`.
pub async fn connect(
    addr: SocketAddr,
    server_name: &str,
    material: &TlsMaterial,
) -> Result<Channel, SessionError> {
    let tls = tokio_rustls::TlsConnector::from(material.client_config()?);
    let server_name = ServerName::try_from(server_name.to_owned())
        .map_err(|_| SessionError::ServerName(server_name.to_owned()))?;
    let connector = tower::service_fn(move |_uri: tonic::transport::Uri| {
        let tls = tls.clone();
        let server_name = server_name.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            let stream = tls.connect(server_name, tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    });
    Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| SessionError::Connect {
            addr,
            error: e.to_string(),
        })?
        .connect_timeout(CONNECT_TIMEOUT)
        // A control plane that vanished without closing the connection is noticed.
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .connect_with_connector(connector)
        .await
        .map_err(|e| SessionError::Connect {
            addr,
            error: error_chain(&e),
        })
}

/// A delay between half and all of `nominal`, so proxies that lost the control plane
/// together do not return together.
fn jitter(nominal: Duration) -> Duration {
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let fraction = 0.5 + (random % 1000) as f64 / 2000.0;
    nominal.mul_f64(fraction)
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}
