//! `weir proxy sidecar`: the sidecar of a pod made by `weir inject` on Kubernetes. Its
//! bootstrap comes from the environment Istio's injector gives `istio-proxy` (`POD_NAME`,
//! `POD_NAMESPACE`, `INSTANCE_IP`, `SERVICE_ACCOUNT`, `ISTIO_META_*`, `TRUST_DOMAIN`,
//! `CA_ADDR`) and the pod's labels from the downward API; everything else comes from the
//! control plane.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs as _};
use std::path::PathBuf;

use anyhow::Context as _;
use proxy::config::{PodIdentity, ProxyConfig};

use super::proxy::{ControlPlane, DEFAULT_CONTROL_PLANE_NAME};

/// Flags of `weir proxy sidecar`.
#[derive(clap::Args, Debug)]
pub struct SidecarArgs {
    /// Workload certificates (cert-chain.pem, key.pem, root-cert.pem).
    #[arg(long, default_value = "/var/run/secrets/workload-spiffe-credentials")]
    cert_dir: PathBuf,
    /// The downward API directory with the pod's `labels`.
    #[arg(long, default_value = "/etc/istio/pod")]
    pod_info: PathBuf,
    /// The control plane's gRPC address (default: `CA_ADDR`, else istiod's).
    #[arg(long)]
    control_plane: Option<String>,
    /// The DNS name the control plane's certificate carries.
    #[arg(long, default_value = DEFAULT_CONTROL_PLANE_NAME)]
    control_plane_name: String,
    /// Sets SO_MARK on the proxy's sockets (needs CAP_NET_ADMIN). Injected pods run the
    /// sidecar as uid 1337 and the capture rules recognise that uid instead.
    #[arg(long)]
    mark: Option<u32>,
}

/// The process environment.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl SidecarArgs {
    /// The bootstrap and the control plane, from `env` and the pod's files.
    pub fn bootstrap(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> anyhow::Result<(ProxyConfig, ControlPlane)> {
        let need = |name: &str| {
            env(name).with_context(|| {
                format!("{name} is not set; `weir proxy sidecar` runs as the istio-proxy container `weir inject` adds, which sets it from the pod (fieldRef)")
            })
        };
        let pod_name = need("POD_NAME")?;
        let namespace = need("POD_NAMESPACE")?;
        let ip = match env("INSTANCE_IP") {
            Some(ip) => Some(
                ip.parse()
                    .with_context(|| format!("INSTANCE_IP {ip:?} is not an IP address"))?,
            ),
            None => None,
        };
        let labels_file = self.pod_info.join("labels");
        let labels = match std::fs::read_to_string(&labels_file) {
            Ok(text) => parse_downward(&text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => {
                return Err(e).with_context(|| format!("cannot read {}", labels_file.display()))
            }
        };
        let workload = env("ISTIO_META_WORKLOAD_NAME").unwrap_or_else(|| pod_name.clone());
        let pod = PodIdentity {
            pod_name,
            namespace,
            workload,
            service_account: env("SERVICE_ACCOUNT").unwrap_or_else(|| "default".to_owned()),
            trust_domain: env("TRUST_DOMAIN").unwrap_or_else(|| "cluster.local".to_owned()),
            cluster_id: env("ISTIO_META_CLUSTER_ID"),
            ip,
            labels,
            owner: env("ISTIO_META_OWNER"),
        };
        let config = ProxyConfig::sidecar(pod, self.cert_dir.clone(), self.mark);
        let address = self
            .control_plane
            .clone()
            .or_else(|| env("CA_ADDR"))
            .unwrap_or_else(|| format!("{DEFAULT_CONTROL_PLANE_NAME}:15012"));
        let addr = resolve(&address)?;
        Ok((
            config,
            ControlPlane {
                addr,
                name: self.control_plane_name.clone(),
                cert_dir: self.cert_dir.clone(),
            },
        ))
    }
}

fn resolve(address: &str) -> anyhow::Result<SocketAddr> {
    if let Ok(addr) = address.parse() {
        return Ok(addr);
    }
    address
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve the control plane address {address:?}; give it as HOST:PORT (CA_ADDR or --control-plane)"))?
        .next()
        .with_context(|| format!("the control plane address {address:?} resolves to nothing"))
}

/// The downward API's `key="value"` lines (values with Go's escapes for `"` and `\`).
fn parse_downward(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| {
            let (k, v) = line.split_once('=')?;
            let v = v.strip_prefix('"')?.strip_suffix('"')?;
            let mut out = String::new();
            let mut chars = v.chars();
            while let Some(c) = chars.next() {
                if c == '\\' {
                    match chars.next() {
                        Some('n') => out.push('\n'),
                        Some('t') => out.push('\t'),
                        Some(other) => out.push(other),
                        None => {}
                    }
                } else {
                    out.push(c);
                }
            }
            Some((k.to_owned(), out))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(pod_info: PathBuf) -> SidecarArgs {
        SidecarArgs {
            cert_dir: PathBuf::from("/certs"),
            pod_info,
            control_plane: None,
            control_plane_name: DEFAULT_CONTROL_PLANE_NAME.to_owned(),
            mark: None,
        }
    }

    #[test]
    fn the_bootstrap_comes_from_istios_environment_and_the_pods_labels() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("labels"),
            "app=\"ratings\"\npod-template-hash=\"6c9d7f8b5\"\nversion=\"v2-mysql\"\nweird=\"a\\\"b\"",
        )
        .unwrap();
        let env: BTreeMap<&str, &str> = [
            ("POD_NAME", "ratings-v2-mysql-6c9d7f8b5-x2k4q"),
            ("POD_NAMESPACE", "default"),
            ("INSTANCE_IP", "10.1.2.3"),
            ("SERVICE_ACCOUNT", "bookinfo-ratings"),
            ("ISTIO_META_WORKLOAD_NAME", "ratings-v2-mysql"),
            (
                "ISTIO_META_OWNER",
                "kubernetes://apis/apps/v1/namespaces/default/deployments/ratings-v2-mysql",
            ),
            ("CA_ADDR", "10.96.0.9:15012"),
        ]
        .into();
        let lookup = |n: &str| env.get(n).map(|v| v.to_string());
        let (c, cp) = args(dir.path().to_path_buf()).bootstrap(&lookup).unwrap();
        assert_eq!(c.node.workload_name, "ratings-v2-mysql");
        assert_eq!(c.node.service_account, "bookinfo-ratings");
        assert_eq!(c.node.labels["version"], "v2-mysql");
        assert_eq!(c.node.labels["weird"], "a\"b");
        assert_eq!(c.node.ip, Some("10.1.2.3".parse().unwrap()));
        assert_eq!(c.capture.mark, None);
        assert_eq!(cp.addr, "10.96.0.9:15012".parse().unwrap());
        assert_eq!(c.tls.unwrap().cert_dir, PathBuf::from("/certs"));
    }

    #[test]
    fn a_missing_pod_name_says_where_it_comes_from() {
        let err = args(PathBuf::from("/nonexistent"))
            .bootstrap(&|_| None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("POD_NAME is not set") && err.contains("weir inject"),
            "{err}"
        );
    }
}
