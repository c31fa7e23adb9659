//! Workload certificates and the rustls configurations built from them.
//!
//! Certificates live in Istio's layout (`cert-chain.pem`, `key.pem`, `root-cert.pem`)
//! and are reloaded when the files change, so new handshakes use the new certificate
//! while established connections keep going. Identities are SPIFFE ids carried in the
//! certificates' URI SANs: the client checks the server's against the identity the
//! route expects (instead of a DNS name), the server requires a client certificate
//! signed by the same root and reads the client's identity from it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

/// File names of Istio's workload certificate layout.
pub const CERT_CHAIN_FILE: &str = "cert-chain.pem";
/// The workload's private key.
pub const KEY_FILE: &str = "key.pem";
/// The mesh root certificate(s).
pub const ROOT_CERT_FILE: &str = "root-cert.pem";

/// ALPN values the server accepts, in preference order.
const SERVER_ALPN: [&[u8]; 2] = mx::CLIENT_ALPN;

/// A PEM file larger than this is not a certificate file.
const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// Errors loading certificates or building TLS configurations.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {error}; the directory must hold cert-chain.pem, key.pem and root-cert.pem (Istio's layout)")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// A file is not usable PEM of the expected kind.
    #[error("{path}: {problem}; write {expected} in PEM form")]
    BadPem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
        /// What the file should contain.
        expected: &'static str,
    },
    /// rustls refused the material.
    #[error("{context}: {error}")]
    Rustls {
        /// What was being built.
        context: String,
        /// The rustls error.
        error: rustls::Error,
    },
}

/// The crypto provider used everywhere (ring), with AES-128-GCM preferred.
fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    // Envoy (BoringSSL) offers AES-128-GCM before AES-256-GCM on processors with AES
    // instructions, so that is what Istio's own proxies negotiate; it is also the
    // cheaper of the two (10 AES rounds rather than 14), and mutual TLS is where a
    // sidecar spends its processor time. Stable: ring's order is kept otherwise.
    provider.cipher_suites.sort_by_key(|suite| {
        let aes_128 = matches!(
            suite.suite(),
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
                | rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
                | rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
        );
        (suite.tls13().is_none(), !aes_128)
    });
    Arc::new(provider)
}

/// One consistent set of workload certificates and the configurations built from them.
#[derive(Debug)]
pub struct WorkloadCerts {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: Arc<RootCertStore>,
    identity: Option<String>,
    server: Arc<ServerConfig>,
    /// Client configurations by expected server identity (built on first use).
    clients: Mutex<HashMap<String, Arc<ClientConfig>>>,
}

impl WorkloadCerts {
    /// Loads the three files from `dir` and builds the server configuration.
    pub fn load(dir: &Path) -> Result<Self, TlsError> {
        let chain_path = dir.join(CERT_CHAIN_FILE);
        let key_path = dir.join(KEY_FILE);
        let root_path = dir.join(ROOT_CERT_FILE);
        let chain_pem = read_limited(&chain_path)?;
        let key_pem = read_limited(&key_path)?;
        let root_pem = read_limited(&root_path)?;

        let chain = parse_certs(&chain_path, &chain_pem, "the workload certificate chain")?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::BadPem {
            path: key_path.clone(),
            problem: format!("no private key found ({e})"),
            expected: "the workload's private key (PKCS#8, PKCS#1 or SEC1)",
        })?;
        let root_certs = parse_certs(&root_path, &root_pem, "the mesh root certificate")?;
        let mut roots = RootCertStore::empty();
        for cert in root_certs {
            roots.add(cert).map_err(|error| TlsError::Rustls {
                context: format!("{}: root certificate rejected", root_path.display()),
                error,
            })?;
        }
        let roots = Arc::new(roots);
        let identity = chain.first().and_then(|c| spiffe_ids(c).into_iter().next());

        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
                .build()
                .map_err(|e| TlsError::BadPem {
                    path: root_path.clone(),
                    problem: format!("cannot verify clients with these roots ({e})"),
                    expected: "the mesh root certificate",
                })?;
        let mut server = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|error| TlsError::Rustls {
                context: "TLS protocol versions".into(),
                error,
            })?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|error| TlsError::Rustls {
                context: format!(
                    "{} and {} do not form a usable server certificate",
                    chain_path.display(),
                    key_path.display()
                ),
                error,
            })?;
        server.alpn_protocols = SERVER_ALPN.iter().map(|p| p.to_vec()).collect();
        // No resumption: every handshake verifies the current certificates, so a
        // reload or a revoked identity takes effect on the next connection.
        server.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        server.send_tls13_tickets = 0;

        Ok(Self {
            chain,
            key,
            roots,
            identity,
            server: Arc::new(server),
            clients: Mutex::new(HashMap::new()),
        })
    }

    /// The SPIFFE id in our own leaf certificate, if it has one.
    pub fn identity(&self) -> Option<&str> {
        self.identity.as_deref()
    }

    /// The server configuration (client certificates required and verified).
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.server.clone()
    }

    /// A client configuration that presents our certificate, verifies the server's
    /// chain against the mesh root and requires its URI SAN to be `expected_identity`,
    /// and offers ALPN `istio-peer-exchange`, `istio`.
    pub fn client_config(&self, expected_identity: &str) -> Result<Arc<ClientConfig>, TlsError> {
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = clients.get(expected_identity) {
            return Ok(c.clone());
        }
        let verifier = Arc::new(SpiffeServerVerifier {
            roots: self.roots.clone(),
            expected: expected_identity.to_owned(),
            provider: provider(),
        });
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|error| TlsError::Rustls {
                context: "TLS protocol versions".into(),
                error,
            })?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|error| TlsError::Rustls {
                context: "the workload certificate cannot be used as a client certificate".into(),
                error,
            })?;
        config.alpn_protocols = mx::CLIENT_ALPN.iter().map(|p| p.to_vec()).collect();
        config.resumption = rustls::client::Resumption::disabled();
        let config = Arc::new(config);
        // Bounded: one entry per distinct expected identity in the configuration.
        clients.insert(expected_identity.to_owned(), config.clone());
        Ok(config)
    }
}

/// The server name handed to rustls. Our verifier ignores it (identities are checked
/// on the URI SAN) and an IP address sends no SNI.
pub fn server_name_for(addr: std::net::SocketAddr) -> ServerName<'static> {
    ServerName::IpAddress(addr.ip().into())
}

fn read_limited(path: &Path) -> Result<Vec<u8>, TlsError> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|error| TlsError::Read {
        path: path.to_owned(),
        error,
    })?;
    let mut buf = Vec::new();
    file.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|error| TlsError::Read {
            path: path.to_owned(),
            error,
        })?;
    if buf.len() as u64 > MAX_PEM_BYTES {
        return Err(TlsError::BadPem {
            path: path.to_owned(),
            problem: format!("larger than {MAX_PEM_BYTES} bytes"),
            expected: "certificates",
        });
    }
    Ok(buf)
}

fn parse_certs(
    path: &Path,
    pem: &[u8],
    expected: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(pem).collect();
    let certs = certs.map_err(|e| TlsError::BadPem {
        path: path.to_owned(),
        problem: format!("malformed PEM ({e})"),
        expected,
    })?;
    if certs.is_empty() {
        return Err(TlsError::BadPem {
            path: path.to_owned(),
            problem: "no CERTIFICATE block found".into(),
            expected,
        });
    }
    Ok(certs)
}

/// The SPIFFE ids (URI SANs starting with `spiffe://`) of a DER certificate; empty
/// when it has none or does not parse.
pub fn spiffe_ids(cert: &CertificateDer<'_>) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
        return Vec::new();
    };
    let Ok(Some(san)) = parsed.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(uri) if uri.starts_with("spiffe://") => Some((*uri).to_owned()),
            _ => None,
        })
        .collect()
}

/// The peer's SPIFFE id from the certificates it presented (first one wins).
pub fn peer_identity(certs: Option<&[CertificateDer<'_>]>) -> Option<String> {
    certs
        .and_then(|c| c.first())
        .and_then(|leaf| spiffe_ids(leaf).into_iter().next())
}

/// Raised inside a handshake when the server's identity is not the expected one.
#[derive(Debug, thiserror::Error)]
#[error("server identity {found} does not match the expected {expected}")]
pub struct IdentityMismatch {
    /// What the route expects.
    pub expected: String,
    /// What the certificate says (`none` if it carries no SPIFFE id).
    pub found: String,
}

/// Verifies the server's chain against the mesh root, then its SPIFFE id.
#[derive(Debug)]
struct SpiffeServerVerifier {
    roots: Arc<RootCertStore>,
    expected: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        let ids = spiffe_ids(end_entity);
        if ids.contains(&self.expected) {
            return Ok(ServerCertVerified::assertion());
        }
        Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::Other(rustls::OtherError(Arc::new(IdentityMismatch {
                expected: self.expected.clone(),
                found: if ids.is_empty() {
                    "none".into()
                } else {
                    ids.join(",")
                },
            }))),
        ))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Modification times and sizes of the three files: a change in any of them means
/// the set may have been replaced.
type Stamp = [Option<(SystemTime, u64)>; 3];

fn stamp(dir: &Path) -> Stamp {
    [CERT_CHAIN_FILE, KEY_FILE, ROOT_CERT_FILE].map(|f| {
        std::fs::metadata(dir.join(f))
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())))
    })
}

/// The current workload certificates, swapped atomically when the files change.
#[derive(Debug)]
pub struct CertStore {
    dir: PathBuf,
    current: RwLock<Arc<WorkloadCerts>>,
    stamp: Mutex<Stamp>,
}

impl CertStore {
    /// Loads the certificates in `dir`; fails when they are missing or unusable.
    pub fn load(dir: &Path) -> Result<Self, TlsError> {
        let before = stamp(dir);
        let certs = WorkloadCerts::load(dir)?;
        Ok(Self {
            dir: dir.to_owned(),
            current: RwLock::new(Arc::new(certs)),
            stamp: Mutex::new(before),
        })
    }

    /// The directory the certificates come from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The certificates new handshakes use.
    pub fn current(&self) -> Arc<WorkloadCerts> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Reloads when any file changed since the last load. Returns whether a new set is
    /// in use. A set that fails to load leaves the old one in place (the writer may be
    /// half-way through replacing the files); the next check tries again.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = stamp(&self.dir);
        let mut last = self.stamp.lock().unwrap_or_else(PoisonError::into_inner);
        if *last == now {
            return Ok(false);
        }
        let certs = WorkloadCerts::load(&self.dir)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(certs);
        *last = now;
        Ok(true)
    }

    /// Polls the files every `interval` until `stop` is cancelled.
    pub fn spawn_watcher(
        self: Arc<Self>,
        interval: Duration,
        stop: tokio_util::sync::CancellationToken,
        on_reload: impl Fn() + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last_error = None;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let store = self.clone();
                // File reads and key parsing are blocking work.
                let result = tokio::task::spawn_blocking(move || store.reload_if_changed()).await;
                match result {
                    Ok(Ok(true)) => {
                        last_error = None;
                        on_reload();
                        tracing::info!(dir = %self.dir.display(), identity = ?self.current().identity(), "workload certificates reloaded");
                    }
                    Ok(Ok(false)) => {}
                    Ok(Err(e)) => {
                        let msg = e.to_string();
                        // Log a persisting problem once, not on every poll.
                        if last_error.as_ref() != Some(&msg) {
                            tracing::warn!(error = %msg, "workload certificates changed but cannot be loaded; still using the previous ones");
                            last_error = Some(msg);
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "certificate reload task failed"),
                }
            }
        })
    }
}

#[cfg(test)]
mod tests;
