//! A test environment (pods, a CA, a temp dir) and sidecars in it: certificates from
//! `control::ca`, a config file from the proxy's own config types, `weir proxy init`
//! (iptables capture) and `weir proxy --config FILE`, both inside the pod.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use control::ca::{CertificateAuthority, SpiffeId, DEFAULT_ROOT_TTL, DEFAULT_WORKLOAD_TTL};
use proxy::config::{
    Endpoint, EndpointTls, InboundPort, OutboundPort, OutboundService, PodIdentity, ProxyConfig,
    ServiceRef,
};

use super::http::{eventually, get, parse_exposition, Sample};
use super::netns::{Pod, Topology};
use super::process::ChildGuard;

/// The `weir` binary under test.
pub const WEIR: &str = env!("CARGO_BIN_EXE_weir");
/// The mark the sidecars set on their own upstream sockets (`weir proxy init` default).
pub const PROXY_MARK: u32 = 1337;
/// Reporting interval of the test sidecars.
pub const REPORTING: Duration = Duration::from_secs(1);

/// Pods, a mesh CA and a temp dir for one test. Declare it before the sidecars and
/// servers that use it, so those stop first.
pub struct Env {
    /// The pods.
    pub topo: Topology,
    /// The mesh CA (trust domain `cluster.local`).
    pub ca: CertificateAuthority,
    /// Logs, configs, certificates, data dirs.
    pub dir: tempfile::TempDir,
}

impl Env {
    /// Creates pods with these names.
    pub fn new(pods: &[&str]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("weir-e2e-")
            .tempdir()
            .expect("tempdir");
        let ca = CertificateAuthority::generate_root("cluster.local", DEFAULT_ROOT_TTL)
            .expect("generate CA");
        Self {
            topo: Topology::new(pods),
            ca,
            dir,
        }
    }

    /// A pod.
    pub fn pod(&self, name: &str) -> &Pod {
        self.topo.pod(name)
    }

    /// A path in the temp dir.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts a process inside pod `pod` (or on the host), logs in the temp dir.
    pub fn spawn(&self, name: &str, pod: Option<&str>, args: &[&str]) -> ChildGuard {
        let ns = pod.map(|p| self.pod(p).netns.name().to_owned());
        ChildGuard::spawn(name, ns.as_deref(), args, self.dir.path())
    }
}

/// Who a workload is.
#[derive(Clone, Debug)]
pub struct Workload {
    /// Deployment name, e.g. `ratings-v1`.
    pub name: &'static str,
    /// `app` label.
    pub app: &'static str,
    /// `version` label.
    pub version: &'static str,
    /// Service account.
    pub sa: &'static str,
    /// Namespace.
    pub namespace: &'static str,
}

impl Workload {
    /// Its SPIFFE id.
    pub fn principal(&self) -> String {
        format!(
            "spiffe://cluster.local/ns/{}/sa/{}",
            self.namespace, self.sa
        )
    }

    /// A base config: identity, labels, certificates, capture listeners on Istio's ports,
    /// 1 s reporting, and the sidecar mark.
    pub fn config(&self, ip: Ipv4Addr, cert_dir: PathBuf) -> ProxyConfig {
        let pod = PodIdentity {
            pod_name: format!("{}-7d4b9c", self.name),
            namespace: self.namespace.to_owned(),
            workload: self.name.to_owned(),
            service_account: self.sa.to_owned(),
            trust_domain: "cluster.local".to_owned(),
            cluster_id: None,
            ip: Some(IpAddr::V4(ip)),
            labels: BTreeMap::from([
                ("app".to_owned(), self.app.to_owned()),
                ("version".to_owned(), self.version.to_owned()),
            ]),
            owner: None,
        };
        let mut c = ProxyConfig::sidecar(pod, cert_dir, Some(PROXY_MARK));
        // Tests want certificate changes and reports sooner, and longer drains.
        if let Some(tls) = c.tls.as_mut() {
            tls.poll_interval = Duration::from_secs(1);
        }
        c.reporting.interval = REPORTING;
        c.limits.drain_timeout = Duration::from_secs(10);
        c
    }
}

/// An inbound app port served by the workload, belonging to service `service`.
pub fn inbound_port(port: u16, service: &str, namespace: &str) -> InboundPort {
    InboundPort {
        port,
        target: None,
        listen: None,
        service: Some(ServiceRef {
            name: service.to_owned(),
            namespace: namespace.to_owned(),
            hostname: None,
        }),
    }
}

/// An outbound service with one port and its endpoints.
pub fn outbound_service(
    name: &str,
    namespace: &str,
    vips: &[Ipv4Addr],
    port: u16,
    endpoints: Vec<Endpoint>,
) -> Arc<OutboundService> {
    Arc::new(OutboundService {
        name: name.to_owned(),
        namespace: namespace.to_owned(),
        hostname: None,
        addresses: vips.iter().copied().map(IpAddr::V4).collect(),
        load_balancer: Default::default(),
        ports: vec![OutboundPort {
            port,
            listen: None,
            endpoints,
            routes: Vec::new(),
            max_connections: None,
            connect_timeout: None,
        }],
    })
}

/// An endpoint with a sidecar (mTLS, identity checked).
pub fn mtls_endpoint(addr: SocketAddr, workload: &Workload) -> Endpoint {
    Endpoint {
        address: addr,
        tls: EndpointTls::IstioMutual,
        identity: Some(workload.principal()),
    }
}

/// An endpoint without a sidecar (plaintext).
pub fn plain_endpoint(addr: SocketAddr) -> Endpoint {
    Endpoint {
        address: addr,
        tls: EndpointTls::Disable,
        identity: None,
    }
}

/// A running sidecar.
pub struct Sidecar {
    /// The process.
    pub child: ChildGuard,
    /// Its pod's address.
    pub ip: Ipv4Addr,
    netns: String,
    /// The config file.
    pub config_path: PathBuf,
}

impl Sidecar {
    /// Issues the workload certificate, writes the config, installs capture rules with
    /// `weir proxy init` and starts `weir proxy`, then waits until it is ready.
    pub fn start(
        env: &Env,
        pod: &str,
        workload: &Workload,
        edit: impl FnOnce(&mut ProxyConfig),
    ) -> Self {
        Self::start_args(env, pod, workload, &[], edit)
    }

    /// As [`Sidecar::start`], with more `weir proxy` arguments (e.g. `--control-plane`).
    pub fn start_args(
        env: &Env,
        pod: &str,
        workload: &Workload,
        extra: &[&str],
        edit: impl FnOnce(&mut ProxyConfig),
    ) -> Self {
        let p = env.pod(pod);
        let cert_dir = env.path(&format!("certs-{pod}"));
        let id =
            SpiffeId::new("cluster.local", workload.namespace, workload.sa).expect("spiffe id");
        env.ca
            .issue(&id, DEFAULT_WORKLOAD_TTL)
            .expect("issue workload cert")
            .write_dir(&cert_dir)
            .expect("write workload cert");
        let mut config = workload.config(p.ip, cert_dir);
        edit(&mut config);
        let config_path = env.path(&format!("sidecar-{pod}.json"));
        std::fs::write(&config_path, config.to_json()).expect("write sidecar config");

        let init = p.netns.exec(&[
            WEIR,
            "proxy",
            "init",
            "--proxy-mark",
            &PROXY_MARK.to_string(),
        ]);
        assert!(
            init.status.success(),
            "weir proxy init in {pod} failed: {}{}",
            String::from_utf8_lossy(&init.stdout),
            String::from_utf8_lossy(&init.stderr)
        );
        let config_arg = config_path.to_string_lossy().into_owned();
        let mut args = vec![WEIR, "proxy", "--config", &config_arg];
        args.extend_from_slice(extra);
        let mut child = env.spawn(&format!("sidecar-{pod}"), Some(pod), &args);
        let ready = SocketAddr::from((p.ip, 15021));
        let ns = p.netns.name().to_owned();
        let netns = &p.netns;
        eventually(
            &format!("sidecar in {pod} ready"),
            Duration::from_secs(20),
            || {
                child.assert_running();
                let r = netns.run(move || get(ready, "/healthz/ready"));
                match r {
                    Ok((200, _)) => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            },
        );
        Self {
            child,
            ip: p.ip,
            netns: ns,
            config_path,
        }
    }

    /// `GET path` on the stats port (15090), from inside the pod.
    pub fn stats_text(&self, env: &Env) -> String {
        let pod = env
            .topo
            .pods
            .iter()
            .find(|p| p.netns.name() == self.netns)
            .expect("sidecar pod");
        let addr = SocketAddr::from((self.ip, 15090));
        match pod.netns.run(move || get(addr, "/stats/prometheus")) {
            Ok((200, body)) => body,
            other => panic!("scrape {addr}: {other:?}"),
        }
    }

    /// The `istio_tcp_*` samples of a scrape.
    pub fn tcp_metrics(&self, env: &Env) -> Vec<Sample> {
        parse_exposition(&self.stats_text(env))
            .into_iter()
            .filter(|s| s.name.starts_with("istio_tcp_"))
            .collect()
    }
}

/// The 23 labels, in Istio's order, of a connection from `src` to `dst` through
/// `service` (`None` when no service matched), as reporter `reporter` sees it.
pub struct Expect<'a> {
    /// `source` or `destination`.
    pub reporter: &'a str,
    /// The client workload; `None` when unknown.
    pub src: Option<&'a Workload>,
    /// The server workload; `None` when unknown.
    pub dst: Option<&'a Workload>,
    /// The destination service name and namespace.
    pub service: Option<(&'a str, &'a str)>,
    /// Whether the hop was mTLS (principals known).
    pub mtls: bool,
    /// `response_flags`.
    pub flags: &'a str,
}

/// Label names, in Istio's order.
pub const LABELS: [&str; 23] = [
    "reporter",
    "source_workload",
    "source_canonical_service",
    "source_canonical_revision",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_cluster",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_service_name",
    "destination_service_namespace",
    "destination_cluster",
    "request_protocol",
    "response_flags",
    "connection_security_policy",
];

impl Expect<'_> {
    /// The expected labels, in order.
    pub fn labels(&self) -> Vec<(String, String)> {
        let u = || "unknown".to_owned();
        let w = |w: Option<&Workload>, f: fn(&Workload) -> String| w.map_or_else(u, f);
        let principal = |w: Option<&Workload>| {
            if self.mtls {
                w.map_or_else(u, Workload::principal)
            } else {
                u()
            }
        };
        let rev = |w: Option<&Workload>| w.map_or("latest".to_owned(), |w| w.version.to_owned());
        let cluster = |w: Option<&Workload>| w.map_or_else(u, |_| "Kubernetes".to_owned());
        let values = [
            self.reporter.to_owned(),
            w(self.src, |w| w.name.to_owned()),
            w(self.src, |w| w.app.to_owned()),
            rev(self.src),
            w(self.src, |w| w.namespace.to_owned()),
            principal(self.src),
            w(self.src, |w| w.app.to_owned()),
            w(self.src, |w| w.version.to_owned()),
            cluster(self.src),
            w(self.dst, |w| w.name.to_owned()),
            w(self.dst, |w| w.namespace.to_owned()),
            principal(self.dst),
            w(self.dst, |w| w.app.to_owned()),
            w(self.dst, |w| w.version.to_owned()),
            self.service
                .map_or_else(u, |(n, ns)| format!("{n}.{ns}.svc.cluster.local")),
            w(self.dst, |w| w.app.to_owned()),
            rev(self.dst),
            self.service.map_or_else(u, |(n, _)| n.to_owned()),
            self.service.map_or_else(u, |(_, ns)| ns.to_owned()),
            cluster(self.dst),
            "tcp".to_owned(),
            self.flags.to_owned(),
            if self.reporter == "source" {
                "unknown".to_owned()
            } else if self.mtls {
                "mutual_tls".to_owned()
            } else {
                "none".to_owned()
            },
        ];
        LABELS
            .iter()
            .zip(values)
            .map(|(k, v)| ((*k).to_owned(), v))
            .collect()
    }
}

/// The four `istio_tcp_*` values for exactly `labels`, as
/// `(opened, closed, received, sent)`; missing series count as 0. Panics if a series has
/// the right values but labels in another order.
pub fn tcp_counts(samples: &[Sample], labels: &[(String, String)]) -> (f64, f64, f64, f64) {
    let value = |name: &str| {
        samples
            .iter()
            .filter(|s| s.name == name && s.label_map() == labels.iter().cloned().collect())
            .inspect(|s| assert_eq!(s.labels, labels, "labels of {name} out of Istio's order"))
            .map(|s| s.value)
            .sum::<f64>()
    };
    (
        value("istio_tcp_connections_opened_total"),
        value("istio_tcp_connections_closed_total"),
        value("istio_tcp_received_bytes_total"),
        value("istio_tcp_sent_bytes_total"),
    )
}

/// A readable dump of the `istio_tcp_*` samples, for assertion messages.
pub fn dump(samples: &[Sample]) -> String {
    samples
        .iter()
        .map(|s| {
            let labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("{} {} {}\n", s.name, labels.join(","), s.value)
        })
        .collect()
}
