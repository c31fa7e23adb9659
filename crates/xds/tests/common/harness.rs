//! Shared test harness: certificates, a view source, a recording sink, and running
//! servers and clients.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::registry::Registry;
use proxy::config::{
    Endpoint, EndpointTls, InboundMode, InboundPort, LoadBalancer, OutboundPort, OutboundService,
    OutboundTrafficPolicy, ProxyConfig, TelemetryConfig,
};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use xds::ca::CertificateSigner;
use xds::client::{ClientStatus, ConfigClient, ConfigClientOptions, ConfigSink};
use xds::proto;
use xds::proto::config_discovery_client::ConfigDiscoveryClient;
use xds::server::{ConfigServer, ServerMetrics};
use xds::tls::TlsMaterial;
use xds::{NodeInfo, ProxyView, SubscribeError, ViewSource, WorkloadConfig};

pub const SERVER_NAME: &str = "weir-control.weir-system.svc";
pub const WAIT: Duration = Duration::from_secs(20);

// ---- certificates ----

pub struct Pki {
    pub _dir: tempfile::TempDir,
    /// The mesh root and its key, for signing in tests.
    pub issuer: Arc<Issuer<'static, KeyPair>>,
    pub server: PathBuf,
    /// Client material by SPIFFE identity's namespace/service account.
    pub clients: BTreeMap<String, PathBuf>,
}

pub fn write_dir(dir: &Path, chain: &str, key: &str, root: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("cert-chain.pem"), chain).unwrap();
    std::fs::write(dir.join("key.pem"), key).unwrap();
    std::fs::write(dir.join("root-cert.pem"), root).unwrap();
}

impl Pki {
    /// A mesh root, the control plane's certificate, and a client certificate per
    /// `(namespace, service account)`.
    pub fn new(clients: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let root = ca.pem();
        let issuer = Issuer::new(ca_params, ca_key);

        let server_key = KeyPair::generate().unwrap();
        let server_cert = CertificateParams::new(vec![SERVER_NAME.to_owned()])
            .unwrap()
            .signed_by(&server_key, &issuer)
            .unwrap();
        let server = dir.path().join("server");
        write_dir(
            &server,
            &server_cert.pem(),
            &server_key.serialize_pem(),
            &root,
        );

        let mut client_dirs = BTreeMap::new();
        for (ns, sa) in clients {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            let uri = format!("spiffe://cluster.local/ns/{ns}/sa/{sa}");
            params
                .subject_alt_names
                .push(SanType::URI(uri.as_str().try_into().unwrap()));
            let cert = params.signed_by(&key, &issuer).unwrap();
            let path = dir.path().join(format!("{ns}-{sa}"));
            write_dir(&path, &cert.pem(), &key.serialize_pem(), &root);
            client_dirs.insert(format!("{ns}/{sa}"), path);
        }
        Self {
            _dir: dir,
            issuer: Arc::new(issuer),
            server,
            clients: client_dirs,
        }
    }

    pub fn client(&self, ns: &str, sa: &str) -> &Path {
        &self.clients[&format!("{ns}/{sa}")]
    }
}

// ---- the control plane's side ----

pub struct TestSource {
    pub views: watch::Sender<Arc<ProxyView>>,
    pub subscribed: Mutex<Vec<NodeInfo>>,
    pub unsubscribed: AtomicUsize,
}

impl TestSource {
    pub fn new(view: ProxyView) -> Arc<Self> {
        Arc::new(Self {
            views: watch::Sender::new(Arc::new(view)),
            subscribed: Mutex::new(Vec::new()),
            unsubscribed: AtomicUsize::new(0),
        })
    }

    pub fn update(&self, change: impl FnOnce(&mut ProxyView)) {
        self.views.send_modify(|view| change(Arc::make_mut(view)));
    }
}

impl ViewSource for TestSource {
    fn subscribe(
        &self,
        node: &NodeInfo,
    ) -> Result<watch::Receiver<Arc<ProxyView>>, SubscribeError> {
        self.subscribed.lock().unwrap().push(node.clone());
        Ok(self.views.subscribe())
    }

    fn unsubscribe(&self, _node: &NodeInfo) {
        self.unsubscribed.fetch_add(1, Ordering::SeqCst);
    }
}

pub struct RunningServer {
    pub addr: SocketAddr,
    pub metrics: ServerMetrics,
    pub registry: Registry,
    pub stop: CancellationToken,
    pub task: tokio::task::JoinHandle<()>,
}

impl RunningServer {
    pub async fn start(source: Arc<TestSource>, pki: &Pki, addr: SocketAddr) -> Self {
        Self::start_with(source, pki, addr, None).await
    }

    pub async fn start_with(
        source: Arc<TestSource>,
        pki: &Pki,
        addr: SocketAddr,
        signer: Option<Arc<dyn CertificateSigner>>,
    ) -> Self {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut registry = Registry::default();
        let mut server = ConfigServer::new(source, &mut registry);
        if let Some(signer) = signer {
            server = server.with_signer(signer);
        }
        let metrics = server.metrics().clone();
        let tls = TlsMaterial::from_dir(&pki.server)
            .unwrap()
            .server_config()
            .unwrap();
        let stop = CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            server.serve(listener, tls, token).await.unwrap();
        });
        Self {
            addr,
            metrics,
            registry,
            stop,
            task,
        }
    }

    pub async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("server stops within the deadline")
            .unwrap();
    }

    /// The value of an unlabelled sample in the text exposition.
    pub fn scrape(&self, sample: &str) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no sample {sample} in:\n{text}"))
            .to_owned()
    }
}

// ---- the proxy's side ----

#[derive(Default)]
pub struct RecordingSink {
    pub applied: Mutex<Vec<(ProxyConfig, String)>>,
    /// Refuse any configuration with a service of this name.
    pub refuse: Mutex<Option<String>>,
}

impl RecordingSink {
    pub fn last(&self) -> ProxyConfig {
        self.applied.lock().unwrap().last().unwrap().0.clone()
    }

    pub fn count(&self) -> usize {
        self.applied.lock().unwrap().len()
    }
}

impl ConfigSink for RecordingSink {
    fn apply(&self, config: ProxyConfig, version: &str) -> Result<(), String> {
        if let Some(bad) = &*self.refuse.lock().unwrap() {
            if config.outbound.services.iter().any(|s| &s.name == bad) {
                return Err(format!("service {bad}: refused by the test sink"));
            }
        }
        self.applied
            .lock()
            .unwrap()
            .push((config, version.to_owned()));
        Ok(())
    }
}

pub struct RunningClient {
    pub status: watch::Receiver<ClientStatus>,
    pub stop: CancellationToken,
    pub task: tokio::task::JoinHandle<()>,
}

impl RunningClient {
    pub fn start(addr: SocketAddr, tls_dir: &Path, sink: Arc<RecordingSink>) -> Self {
        let mut options = ConfigClientOptions::new(
            addr,
            SERVER_NAME,
            tls_dir,
            base_config(),
            sink as Arc<dyn ConfigSink>,
        );
        options.backoff.initial = Duration::from_millis(20);
        options.backoff.max = Duration::from_millis(200);
        let client = ConfigClient::new(options);
        let status = client.status();
        let stop = CancellationToken::new();
        let task = tokio::spawn(client.run(stop.clone()));
        Self { status, stop, task }
    }

    pub async fn wait_for(
        &mut self,
        what: &str,
        pred: impl FnMut(&ClientStatus) -> bool,
    ) -> ClientStatus {
        let reached = match tokio::time::timeout(WAIT, self.status.wait_for(pred)).await {
            Ok(Ok(status)) => Some(status.clone()),
            _ => None,
        };
        reached.unwrap_or_else(|| {
            panic!(
                "client never reached: {what}; status {:?}",
                *self.status.borrow()
            )
        })
    }

    pub async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .unwrap()
            .unwrap();
    }
}

/// Polls `cond` until it holds or the deadline passes.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// ---- configurations ----

pub fn base_config() -> ProxyConfig {
    let mut base = ProxyConfig::minimal("default", "productpage");
    base.node.service_account = "productpage".to_owned();
    base.node.pod_name = Some("productpage-v1-0".to_owned());
    base
}

pub fn fqdn(name: &str) -> String {
    format!("{name}.default.svc.cluster.local")
}

pub fn service(name: &str, endpoint: &str) -> Arc<OutboundService> {
    Arc::new(OutboundService {
        name: name.to_owned(),
        namespace: "default".to_owned(),
        hostname: None,
        addresses: vec!["10.96.0.10".parse().unwrap()],
        load_balancer: LoadBalancer::RoundRobin,
        ports: vec![OutboundPort {
            port: 9080,
            listen: None,
            endpoints: vec![Endpoint {
                address: endpoint.parse().unwrap(),
                tls: EndpointTls::IstioMutual,
                identity: Some(format!("spiffe://cluster.local/ns/default/sa/{name}")),
            }],
            routes: vec![],
            max_connections: None,
            connect_timeout: None,
        }],
    })
}

pub fn workload() -> Arc<WorkloadConfig> {
    Arc::new(WorkloadConfig {
        inbound_mode: InboundMode::Strict,
        inbound_ports: vec![InboundPort {
            port: 9080,
            target: None,
            listen: None,
            service: None,
        }],
        traffic_policy: OutboundTrafficPolicy::RegistryOnly,
        reporting_interval: Duration::from_secs(5),
        telemetry: TelemetryConfig::default(),
        gateway: None,
    })
}

pub fn view(services: &[(&str, &str)]) -> ProxyView {
    ProxyView {
        workload: workload(),
        services: Arc::new(
            services
                .iter()
                .map(|(name, ep)| (fqdn(name), service(name, ep)))
                .collect(),
        ),
    }
}

pub fn node(namespace: &str, service_account: &str) -> proto::Node {
    xds::convert::node_to_proto(&NodeInfo {
        pod_name: "productpage-v1-0".to_owned(),
        namespace: namespace.to_owned(),
        workload_name: "productpage".to_owned(),
        service_account: service_account.to_owned(),
        ip: None,
        labels: BTreeMap::new(),
        container_ports: [9080].into(),
    })
}

/// A raw stream, to see exactly what the server sends.
pub struct RawStream {
    pub requests: tokio::sync::mpsc::Sender<proto::DeltaRequest>,
    pub responses: tonic::Streaming<proto::DeltaResponse>,
}

impl RawStream {
    pub async fn open(
        addr: SocketAddr,
        tls_dir: &Path,
        first: proto::DeltaRequest,
    ) -> Result<Self, tonic::Status> {
        let material = TlsMaterial::from_dir(tls_dir).unwrap();
        let channel = xds::client::connect(addr, SERVER_NAME, &material)
            .await
            .unwrap();
        let (requests, rx) = tokio::sync::mpsc::channel(8);
        requests.send(first).await.unwrap();
        let outbound =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|r| (r, rx)) },
            );
        let responses = ConfigDiscoveryClient::new(channel)
            .delta_config(outbound)
            .await?
            .into_inner();
        Ok(Self {
            requests,
            responses,
        })
    }

    pub async fn recv(&mut self) -> proto::DeltaResponse {
        tokio::time::timeout(WAIT, self.responses.message())
            .await
            .expect("a response within the deadline")
            .unwrap()
            .expect("the stream stays open")
    }

    pub async fn ack(&self, response: &proto::DeltaResponse) {
        self.requests
            .send(proto::DeltaRequest {
                response_nonce: response.nonce.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
}

pub fn names(response: &proto::DeltaResponse) -> Vec<&str> {
    response.resources.iter().map(|r| r.name.as_str()).collect()
}
