//! weir's single-host cluster: Kubernetes' and Istio's objects run on one Linux machine
//! without Kubernetes. Pods are network namespaces on a bridge inside a node namespace,
//! services get virtual IPs and DNS names, Deployments get their replicas as local
//! programs (Istio's sample images map to built-in apps), injected pods get weir's
//! capture rules and sidecar, and Prometheus runs as an add-on scraping every sidecar.
//! One supervisor process per cluster ([`supervisor`]) owns it all, with the control
//! plane embedded; `weir cluster down` ([`down`]) removes everything it made, even after
//! a crash. Nothing touches the host's own interfaces, routes or iptables rules.

pub mod addons;
pub mod dns;
pub mod down;
pub mod forward;
pub mod inject;
pub mod kubelet;
pub mod netns;
pub mod process;
pub mod services;
pub mod state;
pub mod supervisor;
pub mod workload;

use std::path::{Path, PathBuf};

/// Errors of the cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// Not run as root.
    #[error("the local cluster needs root to create network namespaces and iptables rules; run it with sudo (e.g. `sudo weir cluster up`)")]
    NotRoot,
    /// A program the cluster needs is not installed.
    #[error("`{0}` is not installed; install it (Debian: `apt-get install iproute2 iptables prometheus`, or run scripts/install-deps.sh)")]
    Missing(String),
    /// A command failed.
    #[error("`{command}` failed: {message}")]
    Command {
        /// The command line.
        command: String,
        /// What it said.
        message: String,
    },
    /// A file operation failed.
    #[error("cannot {op} {path}: {error}")]
    Io {
        /// What was done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// Why it failed.
        error: std::io::Error,
    },
    /// A port the cluster must listen on is taken.
    #[error(
        "cannot listen on {addr} for {what}: {error}; free the port or pick another with {flag}"
    )]
    PortInUse {
        /// The address.
        addr: String,
        /// What the port is for.
        what: &'static str,
        /// The flag that changes it.
        flag: &'static str,
        /// The error.
        error: std::io::Error,
    },
    /// The cluster is already running.
    #[error("cluster {0:?} is already up; see `weir cluster status`, or remove it with `weir cluster down`")]
    AlreadyUp(String),
    /// The cluster is not running.
    #[error("cluster {0:?} is not up; start it with `sudo weir cluster up`")]
    NotUp(String),
    /// Bad input or state, with what to do.
    #[error("{0}")]
    Invalid(String),
    /// The control plane failed.
    #[error(transparent)]
    Control(#[from] control::server::ServerError),
}

impl ClusterError {
    /// An I/O error on `path`.
    pub fn io(path: &Path, op: &'static str, error: std::io::Error) -> ClusterError {
        ClusterError::Io {
            op,
            path: path.to_path_buf(),
            error,
        }
    }
}

/// Fails with [`ClusterError::NotRoot`] unless the effective user is root.
pub fn require_root() -> Result<(), ClusterError> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(ClusterError::NotRoot)
    }
}

/// Istio's sample manifests the demo applies, byte-identical to Istio's (see
/// `samples/SOURCE.md`): (file name, text).
pub const SAMPLES: [(&str, &str); 9] = [
    ("bookinfo.yaml", include_str!("../samples/bookinfo.yaml")),
    (
        "bookinfo-mysql.yaml",
        include_str!("../samples/bookinfo-mysql.yaml"),
    ),
    (
        "bookinfo-ratings-v2-mysql.yaml",
        include_str!("../samples/bookinfo-ratings-v2-mysql.yaml"),
    ),
    (
        "destination-rule-all-mtls.yaml",
        include_str!("../samples/destination-rule-all-mtls.yaml"),
    ),
    (
        "virtual-service-ratings-mysql.yaml",
        include_str!("../samples/virtual-service-ratings-mysql.yaml"),
    ),
    (
        "bookinfo-gateway.yaml",
        include_str!("../samples/bookinfo-gateway.yaml"),
    ),
    (
        "tcp-echo-services.yaml",
        include_str!("../samples/tcp-echo-services.yaml"),
    ),
    (
        "tcp-echo-all-v1.yaml",
        include_str!("../samples/tcp-echo-all-v1.yaml"),
    ),
    (
        "tcp-echo-20-v2.yaml",
        include_str!("../samples/tcp-echo-20-v2.yaml"),
    ),
];

/// The text of sample `name`.
pub fn sample(name: &str) -> Option<&'static str> {
    SAMPLES.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

/// A blocking HTTP/1.0 GET of `path` at `addr` (bodies up to 16 MiB), for the demo and
/// tests: `(status, body)`. Call it on a thread inside the right network namespace.
pub fn http_get(
    addr: std::net::SocketAddr,
    path: &str,
    timeout: std::time::Duration,
) -> Result<(u16, String), ClusterError> {
    use std::io::{Read as _, Write as _};
    let fail = |e: std::io::Error| ClusterError::Command {
        command: format!("GET http://{addr}{path}"),
        message: e.to_string(),
    };
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout).map_err(fail)?;
    s.set_read_timeout(Some(timeout)).map_err(fail)?;
    s.set_write_timeout(Some(timeout)).map_err(fail)?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: weir\r\n\r\n"
    )
    .map_err(fail)?;
    let mut buf = Vec::new();
    s.take(16 << 20).read_to_end(&mut buf).map_err(fail)?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| fail(std::io::Error::other("not an HTTP response")))?;
    Ok((status, body.to_owned()))
}

/// Percent-encodes a query parameter value.
pub fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn samples_are_istios() {
        for (name, text) in super::SAMPLES {
            let dir = if name.starts_with("tcp-echo") {
                "tcp-echo"
            } else if name.starts_with("bookinfo") && !name.contains("gateway") {
                "bookinfo/platform/kube"
            } else {
                "bookinfo/networking"
            };
            let path = format!(
                "{}/../../../shared/fixtures/istio/samples/{dir}/{name}",
                env!("CARGO_MANIFEST_DIR")
            );
            let want = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            assert_eq!(text, want, "{name}");
        }
    }

    #[test]
    fn queries_are_percent_encoded() {
        assert_eq!(
            super::url_encode(r#"sum(x{a="b c"})"#),
            "sum%28x%7Ba%3D%22b%20c%22%7D%29"
        );
    }
}
