//! Istio's file layouts: reading and validating a plug-in CA directory, and atomic
//! writes (temp file + rename) so a reader never sees half a certificate or key.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{Issuer, KeyPair};
use x509_parser::certificate::X509Certificate;
use x509_parser::pem::Pem;

use super::{CaError, CertificateAuthority};

/// The CA's signing certificate.
pub const CA_CERT_FILE: &str = "ca-cert.pem";
/// The CA's private key.
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// The mesh root, in both layouts.
pub const ROOT_CERT_FILE: &str = "root-cert.pem";
/// The certificate chain, in both layouts (CA: ca-cert to root; workload: leaf first).
pub const CERT_CHAIN_FILE: &str = "cert-chain.pem";
/// The workload's private key.
pub const WORKLOAD_KEY_FILE: &str = "key.pem";

/// Largest file read from a CA directory; certificates and keys are a few KiB.
const MAX_FILE_BYTES: u64 = 1 << 20;

/// Writes `contents` to `path` atomically: a temp file in the same directory with `mode`,
/// flushed to disk, then renamed over `path`.
pub fn write_file_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), CaError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let write_err = |source| CaError::Write {
        path: path.to_owned(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{name}.tmp.{}.{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(write_err)
}

pub(super) fn create_dir(dir: &Path, mode: u32) -> Result<(), CaError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .map_err(|source| CaError::Write {
            path: dir.to_owned(),
            source,
        })
}

fn read(path: &Path) -> Result<String, CaError> {
    let read_err = |source| CaError::Read {
        path: path.to_owned(),
        source,
    };
    let len = fs::metadata(path).map_err(read_err)?.len();
    if len > MAX_FILE_BYTES {
        return Err(bad(
            path,
            format!("file is {len} bytes, larger than the 1 MiB limit"),
            "point at the PEM files of the CA, not another file",
        ));
    }
    fs::read_to_string(path).map_err(read_err)
}

fn bad(path: &Path, problem: impl Into<String>, fix: impl Into<String>) -> CaError {
    CaError::BadFile {
        path: path.to_owned(),
        problem: problem.into(),
        fix: fix.into(),
    }
}

/// The DER certificates of a PEM file, in order.
fn certs(path: &Path, text: &str) -> Result<Vec<Vec<u8>>, CaError> {
    let mut out = Vec::new();
    for pem in Pem::iter_from_buffer(text.as_bytes()) {
        let pem = pem.map_err(|e| {
            bad(
                path,
                format!("not valid PEM: {e}"),
                "write PEM `CERTIFICATE` blocks",
            )
        })?;
        if pem.label != "CERTIFICATE" {
            return Err(bad(
                path,
                format!("holds a `{}` block", pem.label),
                "this file holds only `CERTIFICATE` blocks",
            ));
        }
        pem.parse_x509().map_err(|e| {
            bad(
                path,
                format!("certificate {} does not parse: {e}", out.len() + 1),
                "regenerate the certificate",
            )
        })?;
        out.push(pem.contents);
    }
    if out.is_empty() {
        return Err(bad(
            path,
            "no certificate found",
            "write at least one PEM `CERTIFICATE` block",
        ));
    }
    Ok(out)
}

fn parse(der: &[u8]) -> Option<X509Certificate<'_>> {
    x509_parser::parse_x509_certificate(der)
        .ok()
        .map(|(_, c)| c)
}

fn is_ca(cert: &X509Certificate<'_>) -> bool {
    matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca)
}

fn unix(t: x509_parser::time::ASN1Time) -> SystemTime {
    let secs = t.timestamp();
    if secs <= 0 {
        UNIX_EPOCH
    } else {
        UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
    }
}

pub(super) fn load(dir: &Path) -> Result<CertificateAuthority, CaError> {
    let ca_path = dir.join(super::CA_CERT_FILE);
    let key_path = dir.join(super::CA_KEY_FILE);
    let root_path = dir.join(super::ROOT_CERT_FILE);
    let chain_path = dir.join(super::CERT_CHAIN_FILE);

    let ca_text = read(&ca_path)?;
    let ca_ders = certs(&ca_path, &ca_text)?;
    let ca_der = ca_ders[0].clone();
    let key_text = read(&key_path)?;
    let root_text = read(&root_path)?;
    let root_ders = certs(&root_path, &root_text)?;
    if root_ders.len() != 1 {
        return Err(bad(
            &root_path,
            format!("holds {} certificates", root_ders.len()),
            "keep exactly the one root certificate in root-cert.pem",
        ));
    }
    let root_der = root_ders[0].clone();
    let chain_ders: Vec<Vec<u8>> = match fs::metadata(&chain_path) {
        Ok(_) => certs(&chain_path, &read(&chain_path)?)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && ca_der == root_der => {
            vec![ca_der.clone()]
        }
        Err(source) => {
            return Err(CaError::Read {
                path: chain_path,
                source,
            })
        }
    };

    let key = KeyPair::from_pem(&key_text).map_err(|e| {
        bad(
            &key_path,
            format!("not a usable private key ({e})"),
            "write the key as unencrypted PKCS#8 PEM (`openssl pkcs8 -topk8 -nocrypt -in ca-key.pem -out ca-key.pk8.pem`) with an ECDSA P-256/P-384, Ed25519 or RSA key",
        )
    })?;

    let ca = parse(&ca_der).ok_or_else(|| bad(&ca_path, "does not parse", "regenerate it"))?;
    let root =
        parse(&root_der).ok_or_else(|| bad(&root_path, "does not parse", "regenerate it"))?;
    if ca.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(bad(
            &key_path,
            format!(
                "the key does not match the certificate in {}",
                ca_path.display()
            ),
            "put the CA certificate and its own key side by side",
        ));
    }
    if !is_ca(&ca) {
        return Err(bad(
            &ca_path,
            "not a CA certificate (basicConstraints CA:TRUE missing)",
            "use a certificate issued with CA:TRUE and keyCertSign",
        ));
    }
    if !is_ca(&root) {
        return Err(bad(
            &root_path,
            "not a CA certificate (basicConstraints CA:TRUE missing)",
            "root-cert.pem must hold the mesh root",
        ));
    }
    let now = SystemTime::now();
    let not_after = unix(ca.validity().not_after);
    if now > not_after || now < unix(ca.validity().not_before) {
        return Err(bad(
            &ca_path,
            format!(
                "outside its validity ({} to {})",
                ca.validity().not_before,
                ca.validity().not_after
            ),
            "rotate the CA certificate",
        ));
    }
    if chain_ders[0] != ca_der {
        return Err(bad(
            &chain_path,
            format!(
                "does not start with the certificate of {}",
                ca_path.display()
            ),
            "write cert-chain.pem as ca-cert.pem followed by any intermediates and the root",
        ));
    }
    // Every link must be signed by the next; the last by the root (or be the root).
    let mut chain: Vec<Vec<u8>> = chain_ders;
    if chain.last() != Some(&root_der) {
        chain.push(root_der.clone());
    }
    for (i, pair) in chain.windows(2).enumerate() {
        let (child, parent) = match (parse(&pair[0]), parse(&pair[1])) {
            (Some(c), Some(p)) => (c, p),
            _ => {
                return Err(bad(
                    &chain_path,
                    "a certificate does not parse",
                    "regenerate it",
                ))
            }
        };
        if child.verify_signature(Some(parent.public_key())).is_err() {
            return Err(bad(
                &chain_path,
                format!(
                    "certificate {} is not signed by the next one ({})",
                    i + 1,
                    if i + 2 == chain.len() {
                        "root-cert.pem"
                    } else {
                        "cert-chain.pem"
                    }
                ),
                "order the chain from ca-cert.pem up to the root, and use the root that issued it",
            ));
        }
    }
    if root.verify_signature(None).is_err() {
        return Err(bad(
            &root_path,
            "the root is not self-signed",
            "root-cert.pem must hold the top of the chain",
        ));
    }

    let pem_of = |der: &Vec<u8>| {
        let mut s = String::from("-----BEGIN CERTIFICATE-----\n");
        let b64 = base64(der);
        for line in b64.as_bytes().chunks(64) {
            s.push_str(&String::from_utf8_lossy(line));
            s.push('\n');
        }
        s.push_str("-----END CERTIFICATE-----\n");
        s
    };
    let intermediates_pem: String = chain
        .iter()
        .filter(|der| **der != root_der)
        .map(pem_of)
        .collect();
    let chain_pem: String = chain.iter().map(pem_of).collect();

    let issuer = Issuer::from_ca_cert_der(&ca_der.clone().into(), key).map_err(|e| {
        bad(
            &ca_path,
            format!("cannot sign with this certificate: {e}"),
            "use a CA certificate with keyCertSign",
        )
    })?;
    Ok(CertificateAuthority {
        issuer,
        ca_cert_pem: pem_of(&ca_der),
        root_cert_pem: pem_of(&root_der),
        chain_pem,
        intermediates_pem,
        not_after,
    })
}

/// Standard base64 with padding (PEM bodies).
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
pub(super) fn tests_base64(data: &[u8]) -> String {
    base64(data)
}
