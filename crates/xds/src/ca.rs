//! Certificate signing over the delivery channel: a proxy sends a CSR and receives a
//! certificate for the identity its current client certificate proves, never another.

use std::time::Duration;

use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

use crate::tls::SpiffeId;

/// Largest CSR accepted, in bytes of PEM.
pub const MAX_CSR_BYTES: usize = 64 << 10;
/// Validity granted when the request names none.
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);

/// Issues workload certificates (the control plane's certificate authority).
pub trait CertificateSigner: Send + Sync + 'static {
    /// Signs `csr_pem` as a certificate for `identity`, valid for `ttl` (or less), and
    /// returns the PEM chain, leaf first. The caller has checked that the CSR asks for no
    /// other identity.
    fn sign(
        &self,
        csr_pem: &str,
        identity: &SpiffeId,
        ttl: Duration,
    ) -> Result<Vec<String>, String>;
}

/// Why a CSR is not signed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    /// Not a PEM CERTIFICATE REQUEST, or too large.
    #[error(
        "CSR unusable: {0}; fix: send one PEM CERTIFICATE REQUEST (at most {MAX_CSR_BYTES} bytes)"
    )]
    Malformed(String),
    /// The CSR asks for an identity the caller does not have.
    #[error("CSR asks for {requested} but the caller is {caller}; fix: request a certificate for the proxy's own identity only")]
    OtherIdentity {
        /// What the CSR's SAN says.
        requested: String,
        /// What the caller's certificate proves.
        caller: String,
    },
}

/// Checks that `csr_pem` is a CSR asking for no identity but `caller`'s.
pub fn authorize(csr_pem: &str, caller: &SpiffeId) -> Result<(), CsrError> {
    if csr_pem.len() > MAX_CSR_BYTES {
        return Err(CsrError::Malformed(format!("{} bytes", csr_pem.len())));
    }
    let (_, pem) = x509_parser::pem::parse_x509_pem(csr_pem.as_bytes())
        .map_err(|e| CsrError::Malformed(format!("not PEM: {e}")))?;
    if pem.label != "CERTIFICATE REQUEST" {
        return Err(CsrError::Malformed(format!("PEM block is {:?}", pem.label)));
    }
    let (_, csr) = X509CertificationRequest::from_der(&pem.contents)
        .map_err(|e| CsrError::Malformed(format!("not a CSR: {e}")))?;
    let caller_uri = caller.to_string();
    for extension in csr.requested_extensions().into_iter().flatten() {
        if let ParsedExtension::SubjectAlternativeName(san) = extension {
            for name in &san.general_names {
                let requested = match name {
                    GeneralName::URI(uri) if *uri == caller_uri => continue,
                    GeneralName::URI(uri) => (*uri).to_owned(),
                    other => other.to_string(),
                };
                return Err(CsrError::OtherIdentity {
                    requested,
                    caller: caller_uri,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller() -> SpiffeId {
        SpiffeId::parse("spiffe://cluster.local/ns/default/sa/productpage").unwrap()
    }

    fn csr(sans: Vec<rcgen::SanType>) -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = sans;
        params.serialize_request(&key).unwrap().pem().unwrap()
    }

    #[test]
    fn own_identity_or_none_is_authorized() {
        let own = rcgen::SanType::URI(
            "spiffe://cluster.local/ns/default/sa/productpage"
                .try_into()
                .unwrap(),
        );
        assert_eq!(authorize(&csr(vec![own]), &caller()), Ok(()));
        assert_eq!(authorize(&csr(vec![]), &caller()), Ok(()));
    }

    #[test]
    fn other_names_are_refused() {
        let dns = rcgen::SanType::DnsName("evil.example".try_into().unwrap());
        assert_eq!(
            authorize(&csr(vec![dns]), &caller()),
            Err(CsrError::OtherIdentity {
                requested: "DNSName(evil.example)".to_owned(),
                caller: caller().to_string(),
            })
        );
    }

    #[test]
    fn malformed_requests_are_named() {
        let cert_pem = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert_eq!(
            authorize(cert_pem, &caller()),
            Err(CsrError::Malformed(
                "PEM block is \"CERTIFICATE\"".to_owned()
            ))
        );
        let huge = "x".repeat(MAX_CSR_BYTES + 1);
        assert!(matches!(
            authorize(&huge, &caller()),
            Err(CsrError::Malformed(_))
        ));
    }
}
