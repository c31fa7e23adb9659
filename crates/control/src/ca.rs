//! The mesh's certificate authority.
//!
//! A CA is either generated (a self-signed ECDSA P-256 root) or loaded from a directory in
//! Istio's plug-in `cacerts` layout:
//!
//! | file | content |
//! |---|---|
//! | `ca-cert.pem` | the certificate that signs workload certificates (the root or an intermediate) |
//! | `ca-key.pem` | its private key (PKCS#8 PEM) |
//! | `root-cert.pem` | the root every workload trusts |
//! | `cert-chain.pem` | `ca-cert.pem`, then any intermediates, ending at the root |
//!
//! Workload certificates carry one URI SAN, the SPIFFE id
//! `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`, are short-lived (24 h by
//! default) and are written as Istio's sidecars expect them: `cert-chain.pem` (leaf, then
//! the intermediates), `key.pem` and `root-cert.pem`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use sha2::{Digest, Sha256};

mod files;

pub use files::{
    write_file_atomic, CA_CERT_FILE, CA_KEY_FILE, CERT_CHAIN_FILE, ROOT_CERT_FILE,
    WORKLOAD_KEY_FILE,
};

/// The trust domain used when none is given (Istio's default).
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
/// Lifetime of a workload certificate when none is given (Istio's default).
pub const DEFAULT_WORKLOAD_TTL: Duration = Duration::from_secs(24 * 3600);
/// Lifetime of a generated root (Istio's self-signed default).
pub const DEFAULT_ROOT_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Longest workload certificate lifetime accepted.
pub const MAX_WORKLOAD_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// Allowance for clocks that run slightly behind: certificates start this long ago.
const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// Errors of the certificate authority.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}; check that the CA directory holds Istio's plug-in files (ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem)")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file could not be written.
    #[error("cannot write {path}: {source}; check that the directory exists and is writable")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file's content is not acceptable.
    #[error("{path}: {problem}; fix: {fix}")]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
        /// What to do.
        fix: String,
    },
    /// The target directory already holds a CA key.
    #[error("{path} already exists; refusing to overwrite a CA key: remove the directory's CA files or choose another directory")]
    Exists {
        /// The existing key file.
        path: PathBuf,
    },
    /// A SPIFFE id component is not acceptable.
    #[error("invalid {what} {value:?}: {problem}")]
    BadIdentity {
        /// Which component (`trust domain`, `namespace`, `service account`).
        what: &'static str,
        /// The value.
        value: String,
        /// What is wrong, with the accepted form.
        problem: String,
    },
    /// The requested lifetime is not acceptable.
    #[error("invalid certificate lifetime {ttl:?}: {problem}")]
    BadTtl {
        /// The requested lifetime.
        ttl: Duration,
        /// What is wrong.
        problem: String,
    },
    /// The CSR cannot be parsed or its signature does not verify.
    #[error("invalid certificate signing request: {problem}; send a PEM `CERTIFICATE REQUEST` signed by the workload key")]
    BadCsr {
        /// What is wrong.
        problem: String,
    },
    /// The CSR asks for something other than the identity being issued.
    #[error("certificate signing request asks for {requested}, but this workload may only have {allowed}")]
    CsrIdentity {
        /// What the CSR asked for.
        requested: String,
        /// The identity being issued.
        allowed: String,
    },
    /// Certificate generation failed.
    #[error("cannot generate {what}: {source}")]
    Generate {
        /// What was being generated.
        what: &'static str,
        /// The generator's error.
        source: rcgen::Error,
    },
}

/// A workload identity, `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    trust_domain: String,
    namespace: String,
    service_account: String,
}

impl SpiffeId {
    /// Builds and validates an identity. Components are Kubernetes-style names: ASCII
    /// letters, digits, `-`, `.` and `_`, 1–253 characters.
    pub fn new(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, CaError> {
        check_component("trust domain", trust_domain)?;
        check_component("namespace", namespace)?;
        check_component("service account", service_account)?;
        Ok(Self {
            trust_domain: trust_domain.to_owned(),
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
        })
    }

    /// Parses `spiffe://<td>/ns/<ns>/sa/<sa>`.
    pub fn parse(uri: &str) -> Result<Self, CaError> {
        let bad = |problem: &str| CaError::BadIdentity {
            what: "SPIFFE id",
            value: uri.to_owned(),
            problem: format!(
                "{problem}; write spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>"
            ),
        };
        let rest = uri
            .strip_prefix("spiffe://")
            .ok_or_else(|| bad("it does not start with spiffe://"))?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            [td, "ns", ns, "sa", sa] => Self::new(td, ns, sa),
            _ => Err(bad("it does not have the form")),
        }
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }
    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }
    /// The service account.
    pub fn service_account(&self) -> &str {
        &self.service_account
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

fn check_component(what: &'static str, value: &str) -> Result<(), CaError> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_');
    let problem = if value.is_empty() {
        "it is empty"
    } else if value.len() > 253 {
        "it is longer than 253 characters"
    } else if !value.chars().all(ok_char) {
        "only ASCII letters, digits, '-', '.' and '_' are allowed"
    } else {
        return Ok(());
    };
    Err(CaError::BadIdentity {
        what,
        value: value.to_owned(),
        problem: problem.to_owned(),
    })
}

/// A workload certificate and what goes with it, in Istio's workload layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadCert {
    /// The identity the certificate carries.
    pub id: SpiffeId,
    /// `cert-chain.pem`: the leaf, then the intermediates (not the root).
    pub cert_chain_pem: String,
    /// `key.pem`: the workload's private key (PKCS#8), when the CA generated it; `None`
    /// for a certificate issued from a CSR (the key never left the workload).
    pub key_pem: Option<String>,
    /// `root-cert.pem`: the mesh's root.
    pub root_cert_pem: String,
    /// End of validity.
    pub not_after: SystemTime,
}

impl WorkloadCert {
    /// Writes `cert-chain.pem`, `key.pem` (mode 0600, when present) and `root-cert.pem`
    /// into `dir` (created if missing), each atomically, key first so a reader that sees a
    /// new chain also sees its key.
    pub fn write_dir(&self, dir: &Path) -> Result<(), CaError> {
        files::create_dir(dir, 0o755)?;
        if let Some(key) = &self.key_pem {
            write_file_atomic(&dir.join(WORKLOAD_KEY_FILE), key.as_bytes(), 0o600)?;
        }
        write_file_atomic(
            &dir.join(CERT_CHAIN_FILE),
            self.cert_chain_pem.as_bytes(),
            0o644,
        )?;
        write_file_atomic(
            &dir.join(ROOT_CERT_FILE),
            self.root_cert_pem.as_bytes(),
            0o644,
        )?;
        Ok(())
    }
}

/// A certificate authority able to sign workload certificates.
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    ca_cert_pem: String,
    root_cert_pem: String,
    /// `cert-chain.pem` of the plug-in layout: ca-cert first, ending at the root.
    chain_pem: String,
    /// The chain a workload presents above its leaf: ca-cert and intermediates, no root.
    intermediates_pem: String,
    not_after: SystemTime,
}

impl fmt::Debug for CertificateAuthority {
    // The signing key stays out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// Generates a self-signed ECDSA P-256 root for `trust_domain` (subject
    /// `O=<trust-domain>`), valid for `ttl`.
    pub fn generate_root(trust_domain: &str, ttl: Duration) -> Result<Self, CaError> {
        check_component("trust domain", trust_domain)?;
        if ttl < Duration::from_secs(3600) {
            return Err(CaError::BadTtl {
                ttl,
                problem: "a root must live at least one hour".to_owned(),
            });
        }
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|source| {
            CaError::Generate {
                what: "the root key",
                source,
            }
        })?;
        let now = SystemTime::now();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, trust_domain);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = to_offset(now.checked_sub(CLOCK_SKEW).unwrap_or(now))?;
        let not_after = now + ttl;
        params.not_after = to_offset(not_after)?;
        params.serial_number = Some(serial(key.public_key_raw()));
        let cert = params
            .self_signed(&key)
            .map_err(|source| CaError::Generate {
                what: "the root certificate",
                source,
            })?;
        let pem = cert.pem();
        Ok(Self {
            issuer: Issuer::new(params, key),
            ca_cert_pem: pem.clone(),
            root_cert_pem: pem.clone(),
            chain_pem: pem,
            intermediates_pem: String::new(),
            not_after,
        })
    }

    /// Loads a CA from a directory in Istio's plug-in layout and validates it: every file
    /// parses, the key matches `ca-cert.pem`, `ca-cert.pem` is a CA certificate within its
    /// validity, and `cert-chain.pem` leads from it to `root-cert.pem`. A missing
    /// `cert-chain.pem` is accepted when `ca-cert.pem` is the root itself.
    pub fn load_plugin_dir(dir: &Path) -> Result<Self, CaError> {
        files::load(dir)
    }

    /// Writes the CA in Istio's plug-in layout (key mode 0600); refuses to replace an
    /// existing `ca-key.pem`.
    pub fn write_plugin_dir(&self, dir: &Path) -> Result<(), CaError> {
        files::create_dir(dir, 0o700)?;
        let key_path = dir.join(CA_KEY_FILE);
        if key_path.exists() {
            return Err(CaError::Exists { path: key_path });
        }
        write_file_atomic(
            &key_path,
            self.issuer.key().serialize_pem().as_bytes(),
            0o600,
        )?;
        write_file_atomic(&dir.join(CA_CERT_FILE), self.ca_cert_pem.as_bytes(), 0o644)?;
        write_file_atomic(
            &dir.join(ROOT_CERT_FILE),
            self.root_cert_pem.as_bytes(),
            0o644,
        )?;
        write_file_atomic(&dir.join(CERT_CHAIN_FILE), self.chain_pem.as_bytes(), 0o644)?;
        Ok(())
    }

    /// The root certificate (PEM).
    pub fn root_cert_pem(&self) -> &str {
        &self.root_cert_pem
    }

    /// The signing certificate (PEM).
    pub fn ca_cert_pem(&self) -> &str {
        &self.ca_cert_pem
    }

    /// Issues a certificate for `id` with a freshly generated ECDSA P-256 key.
    pub fn issue(&self, id: &SpiffeId, ttl: Duration) -> Result<WorkloadCert, CaError> {
        self.issue_with_dns(id, &[], ttl)
    }

    /// Issues a certificate for `id` that also carries DNS names, for a server that
    /// clients reach by name (the control plane's `istiod.istio-system.svc`).
    pub fn issue_with_dns(
        &self,
        id: &SpiffeId,
        dns_names: &[&str],
        ttl: Duration,
    ) -> Result<WorkloadCert, CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|source| {
            CaError::Generate {
                what: "a workload key",
                source,
            }
        })?;
        let (mut params, not_after) = self.leaf_params(id, ttl, key.public_key_raw())?;
        for name in dns_names {
            let dns = (*name)
                .to_owned()
                .try_into()
                .map_err(|source| CaError::Generate {
                    what: "a DNS SAN",
                    source,
                })?;
            params.subject_alt_names.push(SanType::DnsName(dns));
        }
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|source| CaError::Generate {
                what: "a workload certificate",
                source,
            })?;
        Ok(self.workload(id, cert.pem(), Some(key.serialize_pem()), not_after))
    }

    /// Issues a certificate for `id` to the key of a PEM CSR. The CSR's signature must
    /// verify, and it may ask for no identity or exactly `id` (as a URI SAN); anything
    /// else (another SPIFFE id, DNS names, a CA certificate) is refused. The subject and
    /// extensions of the issued certificate are the CA's choice, not the CSR's.
    pub fn issue_for_csr(
        &self,
        csr_pem: &str,
        id: &SpiffeId,
        ttl: Duration,
    ) -> Result<WorkloadCert, CaError> {
        let csr =
            CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| CaError::BadCsr {
                problem: e.to_string(),
            })?;
        let allowed = id.to_string();
        for san in &csr.params.subject_alt_names {
            let ok = matches!(san, SanType::URI(uri) if uri.as_str() == allowed);
            if !ok {
                return Err(CaError::CsrIdentity {
                    requested: describe_san(san),
                    allowed,
                });
            }
        }
        if !matches!(csr.params.is_ca, IsCa::NoCa | IsCa::ExplicitNoCa) {
            return Err(CaError::CsrIdentity {
                requested: "a CA certificate".to_owned(),
                allowed,
            });
        }
        let (params, not_after) =
            self.leaf_params(id, ttl, rcgen::PublicKeyData::der_bytes(&csr.public_key))?;
        let cert = params
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(|source| CaError::Generate {
                what: "a workload certificate",
                source,
            })?;
        Ok(self.workload(id, cert.pem(), None, not_after))
    }

    fn leaf_params(
        &self,
        id: &SpiffeId,
        ttl: Duration,
        public_key: &[u8],
    ) -> Result<(CertificateParams, SystemTime), CaError> {
        if ttl < Duration::from_secs(60) || ttl > MAX_WORKLOAD_TTL {
            return Err(CaError::BadTtl {
                ttl,
                problem: "a workload certificate lives between 1 minute and 365 days".to_owned(),
            });
        }
        let now = SystemTime::now();
        let not_after = now + ttl;
        if not_after > self.not_after {
            return Err(CaError::BadTtl {
                ttl,
                problem: format!(
                    "the certificate would outlive its CA (which expires in {}s); ask for a shorter lifetime or rotate the CA",
                    self.not_after
                        .duration_since(now)
                        .unwrap_or_default()
                        .as_secs()
                ),
            });
        }
        let uri = id
            .to_string()
            .try_into()
            .map_err(|source| CaError::Generate {
                what: "the SPIFFE URI SAN",
                source,
            })?;
        let mut params = CertificateParams::default();
        // Istio's workload certificates have an empty subject; the SAN is then critical.
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(uri)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = to_offset(now.checked_sub(CLOCK_SKEW).unwrap_or(now))?;
        params.not_after = to_offset(not_after)?;
        params.serial_number = Some(serial(public_key));
        Ok((params, not_after))
    }

    fn workload(
        &self,
        id: &SpiffeId,
        leaf_pem: String,
        key_pem: Option<String>,
        not_after: SystemTime,
    ) -> WorkloadCert {
        let mut chain = leaf_pem;
        chain.push_str(&self.intermediates_pem);
        WorkloadCert {
            id: id.clone(),
            cert_chain_pem: chain,
            key_pem,
            root_cert_pem: self.root_cert_pem.clone(),
            not_after,
        }
    }
}

fn describe_san(san: &SanType) -> String {
    match san {
        SanType::URI(uri) => format!("URI {}", uri.as_str()),
        SanType::DnsName(name) => format!("DNS name {}", name.as_str()),
        SanType::Rfc822Name(name) => format!("e-mail {}", name.as_str()),
        SanType::IpAddress(ip) => format!("IP address {ip}"),
        other => format!("{other:?}"),
    }
}

fn to_offset(t: SystemTime) -> Result<time::OffsetDateTime, CaError> {
    let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    i64::try_from(secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .ok_or(CaError::BadTtl {
            ttl: Duration::from_secs(secs),
            problem: "the validity end is out of range".to_owned(),
        })
}

/// A unique positive 16-byte serial: a hash of the key, the time and a process counter,
/// so two certificates for the same key never share a serial.
fn serial(public_key: &[u8]) -> SerialNumber {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hash = Sha256::new();
    hash.update(public_key);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    hash.update(now.as_nanos().to_be_bytes());
    hash.update(std::process::id().to_be_bytes());
    hash.update(COUNTER.fetch_add(1, Ordering::Relaxed).to_be_bytes());
    let mut bytes = hash.finalize()[..16].to_vec();
    bytes[0] &= 0x7f;
    // A leading zero byte would be dropped in DER; keep the length fixed.
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

#[cfg(test)]
mod tests;
