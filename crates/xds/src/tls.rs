//! mTLS material for the delivery channel, in Istio's file layout, and the SPIFFE
//! identity carried by a peer certificate.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

/// The certificate chain file of a TLS material directory.
pub const CERT_CHAIN_FILE: &str = "cert-chain.pem";
/// The private key file of a TLS material directory.
pub const KEY_FILE: &str = "key.pem";
/// The mesh root certificate file of a TLS material directory.
pub const ROOT_CERT_FILE: &str = "root-cert.pem";

/// Largest PEM file read; certificate files are a few KiB.
const MAX_PEM_BYTES: u64 = 1 << 20;

/// ALPN for gRPC over TLS.
const ALPN_H2: &[u8] = b"h2";

/// Why TLS material cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {error}; fix: check the path and its permissions")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// A file's content is not usable.
    #[error("{path}: {problem}; fix: {fix}")]
    Content {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
        /// What to do.
        fix: &'static str,
    },
    /// rustls refused the material (e.g. the key does not match the certificate).
    #[error("TLS material from {dir} refused: {error}; fix: provide a key matching the first certificate of {CERT_CHAIN_FILE}")]
    Rustls {
        /// The directory the material came from.
        dir: String,
        /// rustls's error.
        error: rustls::Error,
    },
}

/// A workload's certificate chain, key and the mesh root it trusts.
#[derive(Debug)]
pub struct TlsMaterial {
    /// Where it came from, for messages.
    pub origin: String,
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: PrivateKeyDer<'static>,
    /// Trusted roots for the peer's certificate.
    pub roots: Vec<CertificateDer<'static>>,
}

fn read_limited(path: &Path) -> Result<Vec<u8>, TlsError> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|error| TlsError::Read {
        path: path.to_owned(),
        error,
    })?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|error| TlsError::Read {
            path: path.to_owned(),
            error,
        })?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(TlsError::Content {
            path: path.to_owned(),
            problem: format!("larger than {MAX_PEM_BYTES} bytes"),
            fix: "point at a PEM certificate or key file",
        });
    }
    Ok(bytes)
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read_limited(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Content {
            path: path.to_owned(),
            problem: format!("invalid PEM: {e}"),
            fix: "provide PEM-encoded CERTIFICATE blocks",
        })?;
    if certs.is_empty() {
        return Err(TlsError::Content {
            path: path.to_owned(),
            problem: "no CERTIFICATE block".to_owned(),
            fix: "provide PEM-encoded CERTIFICATE blocks",
        });
    }
    Ok(certs)
}

impl TlsMaterial {
    /// Reads `cert-chain.pem`, `key.pem` and `root-cert.pem` from `dir`.
    pub fn from_dir(dir: &Path) -> Result<Self, TlsError> {
        let key_path = dir.join(KEY_FILE);
        let key_bytes = read_limited(&key_path)?;
        let key = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|e| TlsError::Content {
            path: key_path.clone(),
            problem: format!("no usable private key: {e}"),
            fix: "provide a PEM PRIVATE KEY (PKCS#8, PKCS#1 or SEC1)",
        })?;
        Ok(Self {
            origin: dir.display().to_string(),
            chain: certs(&dir.join(CERT_CHAIN_FILE))?,
            key,
            roots: certs(&dir.join(ROOT_CERT_FILE))?,
        })
    }

    fn root_store(&self) -> Result<RootCertStore, TlsError> {
        let mut store = RootCertStore::empty();
        for root in &self.roots {
            store.add(root.clone()).map_err(|error| TlsError::Rustls {
                dir: self.origin.clone(),
                error,
            })?;
        }
        Ok(store)
    }

    fn rustls_err(&self) -> impl Fn(rustls::Error) -> TlsError + '_ {
        |error| TlsError::Rustls {
            dir: self.origin.clone(),
            error,
        }
    }

    /// A server configuration that requires a client certificate issued under the roots.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = WebPkiClientVerifier::builder_with_provider(
            Arc::new(self.root_store()?),
            provider.clone(),
        )
        .build()
        .map_err(|e| TlsError::Content {
            path: Path::new(&self.origin).join(ROOT_CERT_FILE),
            problem: format!("cannot verify clients with these roots: {e}"),
            fix: "provide the mesh root certificate",
        })?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(self.rustls_err())?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(self.rustls_err())?;
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(Arc::new(config))
    }

    /// A client configuration presenting the chain and trusting the roots.
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(self.rustls_err())?
            .with_root_certificates(self.root_store()?)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(self.rustls_err())?;
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(Arc::new(config))
    }
}

/// A SPIFFE identity of Istio's shape, `spiffe://<td>/ns/<ns>/sa/<sa>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpiffeId {
    /// Trust domain.
    pub trust_domain: String,
    /// Namespace.
    pub namespace: String,
    /// Service account.
    pub service_account: String,
}

impl std::fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl SpiffeId {
    /// Parses `spiffe://<td>/ns/<ns>/sa/<sa>`.
    pub fn parse(uri: &str) -> Option<Self> {
        let rest = uri.strip_prefix("spiffe://")?;
        let mut parts = rest.split('/');
        let (td, ns_key, ns, sa_key, sa) = (
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
        );
        if parts.next().is_some() || ns_key != "ns" || sa_key != "sa" {
            return None;
        }
        if [td, ns, sa].iter().any(|s| s.is_empty()) {
            return None;
        }
        Some(Self {
            trust_domain: td.to_owned(),
            namespace: ns.to_owned(),
            service_account: sa.to_owned(),
        })
    }

    /// The SPIFFE identity in a certificate's URI subject alternative names.
    pub fn from_certificate(cert: &CertificateDer<'_>) -> Result<Self, String> {
        use x509_parser::extensions::GeneralName;
        let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
            .map_err(|e| format!("certificate does not parse: {e}"))?;
        let san = parsed
            .subject_alternative_name()
            .map_err(|e| format!("bad subjectAltName extension: {e}"))?
            .ok_or_else(|| "certificate has no subjectAltName".to_owned())?;
        let uris: Vec<&str> = san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::URI(uri) => Some(*uri),
                _ => None,
            })
            .collect();
        uris.iter()
            .find_map(|u| Self::parse(u))
            .ok_or_else(|| format!("no spiffe://<td>/ns/<ns>/sa/<sa> URI among {uris:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::SpiffeId;

    #[test]
    fn spiffe_parse() {
        assert_eq!(
            SpiffeId::parse("spiffe://cluster.local/ns/default/sa/bookinfo-ratings"),
            Some(SpiffeId {
                trust_domain: "cluster.local".to_owned(),
                namespace: "default".to_owned(),
                service_account: "bookinfo-ratings".to_owned(),
            })
        );
        for bad in [
            "spiffe://cluster.local/ns/default",
            "spiffe://cluster.local/ns/default/sa/x/extra",
            "spiffe://cluster.local/namespace/default/sa/x",
            "spiffe:///ns/default/sa/x",
            "https://cluster.local/ns/default/sa/x",
        ] {
            assert_eq!(SpiffeId::parse(bad), None, "{bad}");
        }
    }
}
