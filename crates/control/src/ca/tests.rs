use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};
use x509_parser::extensions::GeneralName;
use x509_parser::pem::Pem;

use super::*;

fn id(ns: &str, sa: &str) -> SpiffeId {
    SpiffeId::new("cluster.local", ns, sa).unwrap()
}

fn ders(pem: &str) -> Vec<Vec<u8>> {
    Pem::iter_from_buffer(pem.as_bytes())
        .map(|p| p.unwrap().contents)
        .collect()
}

fn uri_sans(der: &[u8]) -> Vec<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    assert!(san.critical, "SAN must be critical with an empty subject");
    san.value
        .general_names
        .iter()
        .map(|n| match n {
            GeneralName::URI(u) => u.to_string(),
            other => panic!("unexpected SAN {other:?}"),
        })
        .collect()
}

/// Verifies a workload chain against a root the way a peer sidecar does (rustls, ring).
fn rustls_verify(root_pem: &str, chain_pem: &str) -> Result<(), rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(root_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .unwrap();
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .map(|c| c.unwrap())
        .collect();
    verifier
        .verify_client_cert(&chain[0], &chain[1..], UnixTime::now())
        .map(|_| ())
}

#[test]
fn spiffe_ids_format_parse_and_reject() {
    let id = id("default", "ratings");
    assert_eq!(
        id.to_string(),
        "spiffe://cluster.local/ns/default/sa/ratings"
    );
    assert_eq!(SpiffeId::parse(&id.to_string()).unwrap(), id);
    for bad in [
        "spiffe://cluster.local/ns/default",
        "http://cluster.local/ns/a/sa/b",
        "spiffe://cluster.local/ns//sa/b",
        "spiffe://cluster.local/ns/a b/sa/b",
    ] {
        assert!(SpiffeId::parse(bad).is_err(), "{bad}");
    }
    let err = SpiffeId::new("cluster.local", "a/b", "c")
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "invalid namespace \"a/b\": only ASCII letters, digits, '-', '.' and '_' are allowed"
    );
}

#[test]
fn issued_certificate_carries_identity_validity_and_chain() {
    let ca = CertificateAuthority::generate_root("cluster.local", DEFAULT_ROOT_TTL).unwrap();
    let before = SystemTime::now();
    let wl = ca
        .issue(&id("default", "ratings"), Duration::from_secs(3600))
        .unwrap();
    let chain = ders(&wl.cert_chain_pem);
    assert_eq!(chain.len(), 1, "a root-signed leaf has no intermediates");
    assert_eq!(
        uri_sans(&chain[0]),
        vec!["spiffe://cluster.local/ns/default/sa/ratings".to_owned()]
    );
    let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0]).unwrap();
    let nb = leaf.validity().not_before.timestamp();
    let na = leaf.validity().not_after.timestamp();
    let before_s = before.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    assert!(
        (before_s - 61..=before_s).contains(&nb),
        "not_before {nb} vs {before_s}"
    );
    assert!(
        (before_s + 3600..=before_s + 3602).contains(&na),
        "not_after {na}"
    );
    assert!(!matches!(leaf.basic_constraints(), Ok(Some(bc)) if bc.value.ca));
    let root = ders(ca.root_cert_pem());
    let (_, root_cert) = x509_parser::parse_x509_certificate(&root[0]).unwrap();
    assert_eq!(leaf.issuer(), root_cert.subject());
    assert_eq!(root_cert.subject().to_string(), "O=cluster.local");
    leaf.verify_signature(Some(root_cert.public_key())).unwrap();
    assert_eq!(wl.root_cert_pem, ca.root_cert_pem());
    rustls_verify(ca.root_cert_pem(), &wl.cert_chain_pem).unwrap();

    // Another root does not accept it.
    let other = CertificateAuthority::generate_root("cluster.local", DEFAULT_ROOT_TTL).unwrap();
    assert!(rustls_verify(other.root_cert_pem(), &wl.cert_chain_pem).is_err());

    // The key matches the certificate.
    let key = KeyPair::from_pem(wl.key_pem.as_deref().unwrap()).unwrap();
    assert_eq!(
        leaf.public_key().subject_public_key.data.as_ref(),
        key.public_key_raw()
    );
}

#[test]
fn serials_differ_for_the_same_key() {
    let ca = CertificateAuthority::generate_root("cluster.local", DEFAULT_ROOT_TTL).unwrap();
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let csr = CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    let a = ca
        .issue_for_csr(&csr, &id("a", "b"), DEFAULT_WORKLOAD_TTL)
        .unwrap();
    let b = ca
        .issue_for_csr(&csr, &id("a", "b"), DEFAULT_WORKLOAD_TTL)
        .unwrap();
    let serial = |pem: &str| {
        let d = ders(pem);
        let (_, c) = x509_parser::parse_x509_certificate(&d[0]).unwrap();
        c.raw_serial().to_vec()
    };
    assert_ne!(serial(&a.cert_chain_pem), serial(&b.cert_chain_pem));
}

#[test]
fn csr_for_the_identity_is_signed_and_others_are_refused() {
    let ca = CertificateAuthority::generate_root("cluster.local", DEFAULT_ROOT_TTL).unwrap();
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let want = id("default", "productpage");
    let csr_for = |sans: Vec<SanType>| {
        let mut p = CertificateParams::default();
        p.subject_alt_names = sans;
        p.serialize_request(&key).unwrap().pem().unwrap()
    };
    let uri = |s: &str| SanType::URI(s.try_into().unwrap());

    let ok = ca
        .issue_for_csr(
            &csr_for(vec![uri(&want.to_string())]),
            &want,
            DEFAULT_WORKLOAD_TTL,
        )
        .unwrap();
    assert_eq!(ok.key_pem, None);
    let chain = ders(&ok.cert_chain_pem);
    assert_eq!(uri_sans(&chain[0]), vec![want.to_string()]);
    let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0]).unwrap();
    assert_eq!(
        leaf.public_key().subject_public_key.data.as_ref(),
        key.public_key_raw()
    );
    rustls_verify(ca.root_cert_pem(), &ok.cert_chain_pem).unwrap();

    let err = ca
        .issue_for_csr(
            &csr_for(vec![uri("spiffe://cluster.local/ns/default/sa/admin")]),
            &want,
            DEFAULT_WORKLOAD_TTL,
        )
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "certificate signing request asks for URI spiffe://cluster.local/ns/default/sa/admin, \
         but this workload may only have spiffe://cluster.local/ns/default/sa/productpage"
    );
    let err = ca
        .issue_for_csr(
            &csr_for(vec![SanType::DnsName("evil.example".try_into().unwrap())]),
            &want,
            DEFAULT_WORKLOAD_TTL,
        )
        .unwrap_err();
    assert!(
        matches!(err, CaError::CsrIdentity { ref requested, .. } if requested == "DNS name evil.example"),
        "{err}"
    );

    let err = ca
        .issue_for_csr(
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
            &want,
            DEFAULT_WORKLOAD_TTL,
        )
        .unwrap_err();
    assert!(matches!(err, CaError::BadCsr { .. }), "{err}");
}

#[test]
fn ttl_limits() {
    let ca = CertificateAuthority::generate_root("cluster.local", DEFAULT_ROOT_TTL).unwrap();
    for ttl in [
        Duration::from_secs(1),
        MAX_WORKLOAD_TTL + Duration::from_secs(1),
    ] {
        let err = ca.issue(&id("a", "b"), ttl).unwrap_err();
        assert!(matches!(err, CaError::BadTtl { .. }), "{err}");
    }
    let short =
        CertificateAuthority::generate_root("cluster.local", Duration::from_secs(7200)).unwrap();
    let err = short
        .issue(&id("a", "b"), DEFAULT_WORKLOAD_TTL)
        .unwrap_err();
    assert!(err.to_string().contains("would outlive its CA"), "{err}");
}

#[test]
fn plugin_dir_round_trip_and_workload_files() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("cacerts");
    let ca = CertificateAuthority::generate_root("cluster.local", DEFAULT_ROOT_TTL).unwrap();
    ca.write_plugin_dir(&ca_dir).unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&ca_dir.join(CA_KEY_FILE)), 0o600);
    for f in [CA_CERT_FILE, ROOT_CERT_FILE, CERT_CHAIN_FILE] {
        assert_eq!(
            std::fs::read_to_string(ca_dir.join(f)).unwrap(),
            ca.root_cert_pem(),
            "{f}"
        );
    }
    // No temp files are left behind.
    let mut names: Vec<String> = std::fs::read_dir(&ca_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "ca-cert.pem",
            "ca-key.pem",
            "cert-chain.pem",
            "root-cert.pem"
        ]
    );

    let err = ca.write_plugin_dir(&ca_dir).unwrap_err();
    assert!(matches!(err, CaError::Exists { .. }), "{err}");

    let loaded = CertificateAuthority::load_plugin_dir(&ca_dir).unwrap();
    assert_eq!(loaded.root_cert_pem(), ca.root_cert_pem());
    let wl = loaded
        .issue(&id("default", "ratings"), DEFAULT_WORKLOAD_TTL)
        .unwrap();
    rustls_verify(ca.root_cert_pem(), &wl.cert_chain_pem).unwrap();

    let out = dir.path().join("certs/ratings");
    wl.write_dir(&out).unwrap();
    assert_eq!(mode(&out.join(WORKLOAD_KEY_FILE)), 0o600);
    assert_eq!(
        std::fs::read_to_string(out.join(CERT_CHAIN_FILE)).unwrap(),
        wl.cert_chain_pem
    );
    assert_eq!(
        std::fs::read_to_string(out.join(ROOT_CERT_FILE)).unwrap(),
        wl.root_cert_pem
    );
    // Rewriting replaces the files in place.
    let wl2 = loaded
        .issue(&id("default", "ratings"), DEFAULT_WORKLOAD_TTL)
        .unwrap();
    wl2.write_dir(&out).unwrap();
    assert_eq!(
        std::fs::read_to_string(out.join(CERT_CHAIN_FILE)).unwrap(),
        wl2.cert_chain_pem
    );
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 3);
}

/// A plug-in CA that is an intermediate under an offline root, as Istio's
/// `Makefile.selfsigned.mk` produces.
fn intermediate_layout(dir: &Path) -> (CertificateAuthority, String) {
    let root = CertificateAuthority::generate_root("cluster.local", DEFAULT_ROOT_TTL).unwrap();
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "cluster.local");
    dn.push(DnType::CommonName, "Intermediate CA");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = to_offset(SystemTime::now() - Duration::from_secs(60)).unwrap();
    params.not_after = to_offset(SystemTime::now() + DEFAULT_ROOT_TTL / 2).unwrap();
    let cert = params.signed_by(&key, &root.issuer).unwrap().pem();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(CA_CERT_FILE), &cert).unwrap();
    std::fs::write(dir.join(CA_KEY_FILE), key.serialize_pem()).unwrap();
    std::fs::write(dir.join(ROOT_CERT_FILE), root.root_cert_pem()).unwrap();
    std::fs::write(
        dir.join(CERT_CHAIN_FILE),
        format!("{cert}{}", root.root_cert_pem()),
    )
    .unwrap();
    (root, cert)
}

#[test]
fn intermediate_plugin_ca_issues_full_chains() {
    let dir = tempfile::tempdir().unwrap();
    let (root, inter_pem) = intermediate_layout(dir.path());
    let ca = CertificateAuthority::load_plugin_dir(dir.path()).unwrap();
    let wl = ca
        .issue(&id("default", "reviews"), DEFAULT_WORKLOAD_TTL)
        .unwrap();
    let chain = ders(&wl.cert_chain_pem);
    assert_eq!(chain.len(), 2, "leaf + intermediate");
    assert_eq!(chain[1], ders(&inter_pem)[0]);
    assert_eq!(wl.root_cert_pem, root.root_cert_pem());
    rustls_verify(root.root_cert_pem(), &wl.cert_chain_pem).unwrap();
    // Without the intermediate the leaf does not verify.
    let leaf_only = wl
        .cert_chain_pem
        .split_inclusive("-----END CERTIFICATE-----\n")
        .next()
        .unwrap();
    assert!(rustls_verify(root.root_cert_pem(), leaf_only).is_err());
}

#[test]
fn bad_plugin_dirs_name_the_file_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let err = CertificateAuthority::load_plugin_dir(p)
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with(&format!("cannot read {}/ca-cert.pem", p.display())),
        "{err}"
    );

    // Key of another CA.
    let a = CertificateAuthority::generate_root("cluster.local", DEFAULT_ROOT_TTL).unwrap();
    let b = CertificateAuthority::generate_root("cluster.local", DEFAULT_ROOT_TTL).unwrap();
    a.write_plugin_dir(&p.join("a")).unwrap();
    b.write_plugin_dir(&p.join("b")).unwrap();
    std::fs::copy(p.join("b/ca-key.pem"), p.join("a/ca-key.pem")).unwrap();
    let err = CertificateAuthority::load_plugin_dir(&p.join("a"))
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        format!(
            "{0}/a/ca-key.pem: the key does not match the certificate in {0}/a/ca-cert.pem; fix: put the CA certificate and its own key side by side",
            p.display()
        )
    );

    // A leaf certificate is not a CA.
    let wl = b.issue(&id("x", "y"), DEFAULT_WORKLOAD_TTL).unwrap();
    let leaf_dir = p.join("leaf");
    std::fs::create_dir(&leaf_dir).unwrap();
    std::fs::write(leaf_dir.join(CA_CERT_FILE), &wl.cert_chain_pem).unwrap();
    std::fs::write(leaf_dir.join(CA_KEY_FILE), wl.key_pem.as_deref().unwrap()).unwrap();
    std::fs::write(leaf_dir.join(ROOT_CERT_FILE), b.root_cert_pem()).unwrap();
    std::fs::write(leaf_dir.join(CERT_CHAIN_FILE), &wl.cert_chain_pem).unwrap();
    let err = CertificateAuthority::load_plugin_dir(&leaf_dir)
        .unwrap_err()
        .to_string();
    assert!(err.contains("ca-cert.pem: not a CA certificate"), "{err}");

    // Garbage instead of a certificate.
    std::fs::write(p.join("b/root-cert.pem"), "hello").unwrap();
    let err = CertificateAuthority::load_plugin_dir(&p.join("b"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("root-cert.pem: no certificate found"), "{err}");

    // Intermediate with the wrong root.
    let idir = p.join("inter");
    intermediate_layout(&idir);
    std::fs::write(idir.join(ROOT_CERT_FILE), a.root_cert_pem()).unwrap();
    let err = CertificateAuthority::load_plugin_dir(&idir)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cert-chain.pem: certificate 2 is not signed by the next one (root-cert.pem)"),
        "{err}"
    );
}

#[test]
fn base64_matches_known_vectors() {
    assert_eq!(files::tests_base64(b""), "");
    assert_eq!(files::tests_base64(b"f"), "Zg==");
    assert_eq!(files::tests_base64(b"fo"), "Zm8=");
    assert_eq!(files::tests_base64(b"foo"), "Zm9v");
    assert_eq!(files::tests_base64(b"foobar"), "Zm9vYmFy");
}
