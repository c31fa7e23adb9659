//! Workload certificate rotation through the control plane: before the current
//! certificate runs out, the proxy generates a fresh key, sends a CSR for its own
//! identity over an mTLS channel authenticated with the current certificate, checks the
//! answer and replaces the files in its certificate directory. Whatever reads those
//! files (the proxy's TLS reloader) picks the new ones up for new handshakes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::client::SessionError;
use crate::proto::config_discovery_client::ConfigDiscoveryClient;
use crate::proto::CertificateRequest;
use crate::tls::{SpiffeId, TlsError, TlsMaterial, CERT_CHAIN_FILE, KEY_FILE, ROOT_CERT_FILE};

/// The renewal check runs at least this often, so a clock jump or a certificate replaced
/// by hand is noticed.
const MAX_SLEEP: Duration = Duration::from_secs(60);
/// Time allowed for one signing call.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// What to rotate and how.
#[derive(Clone, Debug)]
pub struct RotateOptions {
    /// The control plane's address.
    pub endpoint: SocketAddr,
    /// The DNS name the control plane's certificate must carry.
    pub server_name: String,
    /// Directory with `cert-chain.pem`, `key.pem` and `root-cert.pem`.
    pub cert_dir: PathBuf,
    /// Validity requested for each new certificate (the control plane may shorten it).
    pub ttl: Duration,
    /// Fraction of the current certificate's lifetime that elapses before it is renewed.
    pub renew_at: f64,
    /// First delay after a failed renewal.
    pub min_retry: Duration,
    /// Largest delay between failed renewals.
    pub max_retry: Duration,
}

impl RotateOptions {
    /// Renewal at half the lifetime (like Istio's `SECRET_GRACE_PERIOD_RATIO`), 24 h
    /// certificates, retries from 1 s to 5 min.
    pub fn new(endpoint: SocketAddr, server_name: &str, cert_dir: &Path) -> Self {
        Self {
            endpoint,
            server_name: server_name.to_owned(),
            cert_dir: cert_dir.to_owned(),
            ttl: crate::ca::DEFAULT_TTL,
            renew_at: 0.5,
            min_retry: Duration::from_secs(1),
            max_retry: Duration::from_secs(300),
        }
    }
}

/// Progress of the rotation, for status pages and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RotateStatus {
    /// Successful renewals since start.
    pub renewals: u64,
    /// When the last renewal was written.
    pub last_renewal: Option<SystemTime>,
    /// When the next renewal is due (or retried).
    pub next_renewal: Option<SystemTime>,
    /// The current certificate's notAfter.
    pub not_after: Option<SystemTime>,
    /// Why the last attempt failed; cleared by a success.
    pub last_error: Option<String>,
}

/// Why one renewal failed.
#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    /// The current material cannot be read.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The current certificate's validity cannot be read.
    #[error("{path}: {problem}; fix: provide a valid PEM certificate chain (reissue with `weir ca issue`)")]
    Certificate {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The current certificate has expired, so it cannot authenticate a renewal.
    #[error("certificate {path} expired at {not_after} (unix seconds); it cannot authenticate to the control plane; fix: reissue it with `weir ca issue` into {dir}")]
    Expired {
        /// The file.
        path: PathBuf,
        /// Its notAfter.
        not_after: i64,
        /// The certificate directory.
        dir: PathBuf,
    },
    /// No key or CSR could be made.
    #[error("cannot generate a key and CSR: {0}")]
    Generate(String),
    /// The control plane could not be reached.
    #[error("{0}; fix: check that the control plane is running and reachable")]
    Connect(#[from] SessionError),
    /// The control plane refused or failed the request.
    #[error("control plane {addr} did not sign: {code:?}: {message}")]
    Refused {
        /// The control plane.
        addr: SocketAddr,
        /// gRPC status code.
        code: tonic::Code,
        /// Its message.
        message: String,
    },
    /// The signing call took too long.
    #[error("control plane {0} did not answer the certificate request within {CALL_TIMEOUT:?}")]
    Timeout(SocketAddr),
    /// The returned certificate is not acceptable.
    #[error("certificate returned by {addr} rejected: {problem}; fix: check the control plane's CA (it must sign for the caller's identity under the mesh root)")]
    BadResponse {
        /// The control plane.
        addr: SocketAddr,
        /// What is wrong.
        problem: String,
    },
    /// The new files could not be written.
    #[error("cannot write {path}: {error}; fix: make the certificate directory writable")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
}

/// The current certificate's identity and validity window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CurrentCert {
    /// Its SPIFFE identity.
    pub identity: SpiffeId,
    /// notBefore, unix seconds.
    pub not_before: i64,
    /// notAfter, unix seconds.
    pub not_after: i64,
}

impl CurrentCert {
    /// Reads the leaf of `cert-chain.pem` in `dir`.
    pub fn read(dir: &Path) -> Result<Self, RotateError> {
        let material = TlsMaterial::from_dir(dir)?;
        Self::of(&material, &dir.join(CERT_CHAIN_FILE))
    }

    fn of(material: &TlsMaterial, path: &Path) -> Result<Self, RotateError> {
        let bad = |problem: String| RotateError::Certificate {
            path: path.to_owned(),
            problem,
        };
        let leaf = material
            .chain
            .first()
            .ok_or_else(|| bad("no certificate".to_owned()))?;
        let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref())
            .map_err(|e| bad(format!("does not parse: {e}")))?;
        let identity = SpiffeId::from_certificate(leaf).map_err(bad)?;
        let validity = parsed.validity();
        Ok(Self {
            identity,
            not_before: validity.not_before.timestamp(),
            not_after: validity.not_after.timestamp(),
        })
    }

    /// When to renew: `renew_at` of the lifetime after notBefore.
    pub fn renew_time(&self, renew_at: f64) -> SystemTime {
        // A nonsensical ratio falls back to Istio's default rather than panicking.
        let ratio = if renew_at.is_finite() {
            renew_at.clamp(0.0, 1.0)
        } else {
            0.5
        };
        let lifetime = self.not_after.saturating_sub(self.not_before).max(0) as f64;
        let offset = Duration::from_secs_f64(lifetime * ratio);
        let start = unix_time(self.not_before);
        start.checked_add(offset).unwrap_or(start)
    }
}

fn unix_time(seconds: i64) -> SystemTime {
    let span = Duration::from_secs(seconds.unsigned_abs());
    let time = if seconds >= 0 {
        UNIX_EPOCH.checked_add(span)
    } else {
        UNIX_EPOCH.checked_sub(span)
    };
    // Certificate times lie within years 0..=9999, which SystemTime holds.
    time.unwrap_or(UNIX_EPOCH)
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Rotates the certificate in `options.cert_dir` until `cancel` is cancelled.
pub async fn run(options: RotateOptions, cancel: CancellationToken) {
    Rotator::new(options).run(cancel).await;
}

/// A certificate rotator. Create it, take [`Rotator::status`], then [`Rotator::run`] it.
#[derive(Debug)]
pub struct Rotator {
    options: RotateOptions,
    status: watch::Sender<RotateStatus>,
}

impl Rotator {
    /// A rotator that has not looked at the certificate yet.
    pub fn new(options: RotateOptions) -> Self {
        Self {
            options,
            status: watch::Sender::new(RotateStatus::default()),
        }
    }

    /// The rotation's status, updated as it goes.
    pub fn status(&self) -> watch::Receiver<RotateStatus> {
        self.status.subscribe()
    }

    /// Waits for each renewal time and renews, retrying failures with backoff, until
    /// `cancel` is cancelled.
    pub async fn run(self, cancel: CancellationToken) {
        let mut retry = self.options.min_retry;
        loop {
            let wait = match self.step(retry) {
                Ok(Some(wait)) => wait,
                Ok(None) => Duration::ZERO,
                Err(()) => {
                    let wait = retry;
                    retry = (retry * 2).min(self.options.max_retry);
                    wait
                }
            };
            let wait = if wait.is_zero() {
                // Due now: renew.
                let outcome = tokio::select! {
                    () = cancel.cancelled() => return,
                    outcome = self.renew() => outcome,
                };
                match outcome {
                    Ok(not_after) => {
                        retry = self.options.min_retry;
                        tracing::info!(dir = %self.options.cert_dir.display(), not_after, "workload certificate renewed");
                        self.status.send_modify(|s| {
                            s.renewals += 1;
                            s.last_renewal = Some(SystemTime::now());
                            s.not_after = Some(unix_time(not_after));
                            s.last_error = None;
                        });
                        continue;
                    }
                    Err(error) => {
                        let wait = retry;
                        self.fail(&error, wait);
                        retry = (retry * 2).min(self.options.max_retry);
                        wait
                    }
                }
            } else {
                wait
            };
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(wait.min(MAX_SLEEP)) => {}
            }
        }
    }

    /// Looks at the current certificate: `Some(wait)` until its renewal time, `None` if
    /// due now, `Err` (already reported) if it cannot be used.
    fn step(&self, retry: Duration) -> Result<Option<Duration>, ()> {
        let current = match CurrentCert::read(&self.options.cert_dir) {
            Ok(current) => current,
            Err(error) => {
                self.fail(&error, retry);
                return Err(());
            }
        };
        let due = current.renew_time(self.options.renew_at);
        self.status.send_modify(|s| {
            s.next_renewal = Some(due);
            s.not_after = Some(unix_time(current.not_after));
        });
        Ok(due
            .duration_since(SystemTime::now())
            .ok()
            .filter(|d| !d.is_zero()))
    }

    fn fail(&self, error: &RotateError, retry_in: Duration) {
        tracing::warn!(%error, ?retry_in, "workload certificate renewal failed; the current certificate stays in use");
        let next = SystemTime::now() + retry_in;
        self.status.send_modify(|s| {
            s.last_error = Some(error.to_string());
            s.next_renewal = Some(next);
        });
    }

    /// One renewal; returns the new certificate's notAfter.
    async fn renew(&self) -> Result<i64, RotateError> {
        let dir = &self.options.cert_dir;
        let addr = self.options.endpoint;
        let material = TlsMaterial::from_dir(dir)?;
        let current = CurrentCert::of(&material, &dir.join(CERT_CHAIN_FILE))?;
        if current.not_after <= now_unix() {
            return Err(RotateError::Expired {
                path: dir.join(CERT_CHAIN_FILE),
                not_after: current.not_after,
                dir: dir.clone(),
            });
        }
        let (key, csr_pem) = new_csr(&current.identity)?;
        let channel = crate::client::connect(addr, &self.options.server_name, &material).await?;
        let request = CertificateRequest {
            csr_pem,
            ttl: Some(prost_types::Duration {
                seconds: i64::try_from(self.options.ttl.as_secs()).unwrap_or(i64::MAX),
                nanos: 0,
            }),
        };
        let response = tokio::time::timeout(
            CALL_TIMEOUT,
            ConfigDiscoveryClient::new(channel).create_certificate(request),
        )
        .await
        .map_err(|_| RotateError::Timeout(addr))?
        .map_err(|status| RotateError::Refused {
            addr,
            code: status.code(),
            message: status.message().to_owned(),
        })?
        .into_inner();
        let bad = |problem: String| RotateError::BadResponse { addr, problem };
        let chain_pem = response.cert_chain_pem.concat();
        let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(format!("invalid PEM: {e}")))?;
        let not_after = verify(&chain, &key, &current.identity, &material).map_err(bad)?;
        write_atomically(dir, KEY_FILE, key.serialize_pem().as_bytes(), true)?;
        write_atomically(dir, CERT_CHAIN_FILE, chain_pem.as_bytes(), false)?;
        Ok(not_after)
    }
}

/// A fresh ECDSA P-256 key and a CSR for `identity` signed with it.
fn new_csr(identity: &SpiffeId) -> Result<(rcgen::KeyPair, String), RotateError> {
    let generate = |e: rcgen::Error| RotateError::Generate(e.to_string());
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(generate)?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(generate)?;
    let uri = identity.to_string();
    params.subject_alt_names = vec![rcgen::SanType::URI(
        uri.as_str().try_into().map_err(generate)?,
    )];
    let csr = params
        .serialize_request(&key)
        .and_then(|csr| csr.pem())
        .map_err(generate)?;
    Ok((key, csr))
}

/// Checks a returned chain: the leaf holds the new key and the old identity, and the chain
/// verifies under the current roots as a client certificate. Returns the leaf's notAfter.
fn verify(
    chain: &[CertificateDer<'static>],
    key: &rcgen::KeyPair,
    identity: &SpiffeId,
    material: &TlsMaterial,
) -> Result<i64, String> {
    let leaf = chain.first().ok_or("empty certificate chain")?;
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| format!("leaf does not parse: {e}"))?;
    if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err("the leaf's public key is not the key of the request".to_owned());
    }
    let got = SpiffeId::from_certificate(leaf)?;
    if &got != identity {
        return Err(format!("the leaf is for {got}, not {identity}"));
    }
    let mut roots = rustls::RootCertStore::empty();
    for root in &material.roots {
        roots
            .add(root.clone())
            .map_err(|e| format!("current {ROOT_CERT_FILE} unusable: {e}"))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .map_err(|e| format!("current {ROOT_CERT_FILE} unusable: {e}"))?;
    verifier
        .verify_client_cert(leaf, &chain[1..], UnixTime::now())
        .map_err(|e| format!("does not verify under the current {ROOT_CERT_FILE}: {e}"))?;
    Ok(parsed.validity().not_after.timestamp())
}

/// Replaces `dir/name` by writing a temporary file beside it and renaming it over, so a
/// reader sees the old or the new content, never a mix.
fn write_atomically(
    dir: &Path,
    name: &str,
    contents: &[u8],
    private: bool,
) -> Result<(), RotateError> {
    use std::io::Write;
    let path = dir.join(name);
    let temp = dir.join(format!(".{name}.tmp"));
    let write_err = |error| RotateError::Write {
        path: path.clone(),
        error,
    };
    let mut open = std::fs::OpenOptions::new();
    open.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        open.mode(if private { 0o600 } else { 0o644 });
    }
    let mut file = open.open(&temp).map_err(write_err)?;
    #[cfg(unix)]
    if private {
        // A leftover temporary file keeps its old mode; the key must not be readable.
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(write_err)?;
    }
    file.write_all(contents).map_err(write_err)?;
    file.sync_all().map_err(write_err)?;
    drop(file);
    std::fs::rename(&temp, &path).map_err(write_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(not_before: i64, not_after: i64) -> CurrentCert {
        CurrentCert {
            identity: SpiffeId::parse("spiffe://cluster.local/ns/default/sa/productpage").unwrap(),
            not_before,
            not_after,
        }
    }

    #[test]
    fn renewal_time_is_the_fraction_of_the_lifetime() {
        let c = cert(1_000, 1_000 + 86_400);
        assert_eq!(c.renew_time(0.5), unix_time(1_000 + 43_200));
        assert_eq!(c.renew_time(0.0), unix_time(1_000));
        assert_eq!(c.renew_time(2.0), unix_time(1_000 + 86_400));
        assert_eq!(c.renew_time(f64::NAN), unix_time(1_000 + 43_200));
        // An inverted window renews at once.
        assert_eq!(cert(5_000, 1_000).renew_time(0.5), unix_time(5_000));
        assert_eq!(unix_time(-10), UNIX_EPOCH - Duration::from_secs(10));
    }

    #[test]
    fn files_are_replaced_whole_and_the_key_is_private() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(KEY_FILE), "old").unwrap();
        write_atomically(dir.path(), KEY_FILE, b"new", true).unwrap();
        assert_eq!(std::fs::read(dir.path().join(KEY_FILE)).unwrap(), b"new");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let missing = dir.path().join("absent");
        let error = write_atomically(&missing, CERT_CHAIN_FILE, b"x", false).unwrap_err();
        assert!(
            error.to_string().starts_with(&format!(
                "cannot write {}",
                missing.join(CERT_CHAIN_FILE).display()
            )),
            "{error}"
        );
    }
}
