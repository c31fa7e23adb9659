use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    SanType,
};

use super::*;

const ID: &str = "spiffe://cluster.local/ns/default/sa/ratings";

fn write_set(dir: &Path, id: &str) {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let issuer = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let mut leaf = CertificateParams::new(Vec::<String>::new()).unwrap();
    leaf.subject_alt_names = vec![SanType::URI(id.try_into().unwrap())];
    leaf.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = KeyPair::generate().unwrap();
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    std::fs::write(dir.join(CERT_CHAIN_FILE), cert.pem()).unwrap();
    std::fs::write(dir.join(KEY_FILE), key.serialize_pem()).unwrap();
    std::fs::write(dir.join(ROOT_CERT_FILE), issuer.pem()).unwrap();
}

#[test]
fn loads_istio_layout_and_reads_the_identity() {
    let dir = tempfile::tempdir().unwrap();
    write_set(dir.path(), ID);
    let certs = WorkloadCerts::load(dir.path()).unwrap();
    assert_eq!(certs.identity(), Some(ID));
    assert_eq!(spiffe_ids(&certs.chain[0]), vec![ID.to_owned()]);
    assert_eq!(peer_identity(Some(&certs.chain)), Some(ID.to_owned()));
    assert_eq!(peer_identity(None), None);
    // One client configuration per expected identity, reused.
    let a = certs
        .client_config("spiffe://cluster.local/ns/default/sa/a")
        .unwrap();
    let again = certs
        .client_config("spiffe://cluster.local/ns/default/sa/a")
        .unwrap();
    assert!(Arc::ptr_eq(&a, &again));
    assert_eq!(
        a.alpn_protocols,
        vec![b"istio-peer-exchange".to_vec(), b"istio".to_vec()]
    );
    assert_eq!(certs.server_config().alpn_protocols.len(), 2);
}

#[test]
fn two_sidecars_negotiate_tls13_with_aes_128_gcm_as_envoy_does() {
    let dir = tempfile::tempdir().unwrap();
    write_set(dir.path(), ID);
    let certs = WorkloadCerts::load(dir.path()).unwrap();
    let name = rustls::pki_types::ServerName::try_from("outbound.weir").unwrap();
    let mut client = rustls::ClientConnection::new(certs.client_config(ID).unwrap(), name).unwrap();
    let mut server = rustls::ServerConnection::new(certs.server_config()).unwrap();
    // Both ends in memory: each flight goes across until neither has anything to say.
    for _ in 0..10 {
        let mut wire = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut wire).unwrap();
        }
        server.read_tls(&mut wire.as_slice()).unwrap();
        server.process_new_packets().unwrap();
        let mut wire = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut wire).unwrap();
        }
        client.read_tls(&mut wire.as_slice()).unwrap();
        client.process_new_packets().unwrap();
        if !client.is_handshaking() && !server.is_handshaking() {
            break;
        }
    }
    assert!(!client.is_handshaking() && !server.is_handshaking());
    for suite in [
        client.negotiated_cipher_suite(),
        server.negotiated_cipher_suite(),
    ] {
        assert_eq!(
            suite.map(|s| s.suite()),
            Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256)
        );
    }
    // The order otherwise is ring's: TLS 1.3 first, ChaCha20 after both AES suites.
    let order: Vec<_> = provider().cipher_suites.iter().map(|s| s.suite()).collect();
    assert_eq!(
        order[..3],
        [
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256,
            rustls::CipherSuite::TLS13_AES_256_GCM_SHA384,
            rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
        ]
    );
    assert_eq!(
        order.len(),
        rustls::crypto::ring::default_provider().cipher_suites.len()
    );
}

#[test]
fn missing_and_bad_files_name_the_file_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let err = WorkloadCerts::load(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("cert-chain.pem") && err.contains("Istio's layout"),
        "{err}"
    );

    write_set(dir.path(), ID);
    std::fs::write(dir.path().join(KEY_FILE), "garbage").unwrap();
    let err = WorkloadCerts::load(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("key.pem") && err.contains("private key"),
        "{err}"
    );

    write_set(dir.path(), ID);
    std::fs::write(dir.path().join(ROOT_CERT_FILE), "").unwrap();
    let err = WorkloadCerts::load(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("root-cert.pem") && err.contains("no CERTIFICATE"),
        "{err}"
    );
}

#[test]
fn reload_only_when_files_change_and_keep_the_old_set_on_error() {
    let dir = tempfile::tempdir().unwrap();
    write_set(dir.path(), ID);
    let store = CertStore::load(dir.path()).unwrap();
    assert!(!store.reload_if_changed().unwrap());
    let other = "spiffe://cluster.local/ns/default/sa/other";
    // Size differs from the first set's, so the change is seen even within one mtime tick.
    write_set(dir.path(), other);
    assert!(store.reload_if_changed().unwrap());
    assert_eq!(store.current().identity(), Some(other));
    std::fs::write(dir.path().join(KEY_FILE), "broken").unwrap();
    assert!(store.reload_if_changed().is_err());
    assert_eq!(store.current().identity(), Some(other));
}
