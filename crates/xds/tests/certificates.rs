//! Certificate signing over the delivery channel: a proxy gets a certificate for its own
//! identity and no other.

#[allow(dead_code)]
#[path = "common/harness.rs"]
mod harness;

use std::sync::Arc;
use std::time::Duration;

use harness::*;
use rcgen::{CertificateParams, CertificateSigningRequestParams, Issuer, KeyPair, SanType};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use xds::ca::CertificateSigner;
use xds::proto::config_discovery_client::ConfigDiscoveryClient;
use xds::proto::CertificateRequest;
use xds::tls::{SpiffeId, TlsMaterial};

/// Signs with the test mesh root, as the control plane's CA would.
struct RootSigner {
    issuer: Arc<Issuer<'static, KeyPair>>,
}

impl CertificateSigner for RootSigner {
    fn sign(
        &self,
        csr_pem: &str,
        identity: &SpiffeId,
        _ttl: Duration,
    ) -> Result<Vec<String>, String> {
        let mut csr =
            CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| e.to_string())?;
        let uri = identity.to_string();
        csr.params.subject_alt_names = vec![SanType::URI(
            uri.as_str().try_into().map_err(|e| format!("{e}"))?,
        )];
        let cert = csr.signed_by(&self.issuer).map_err(|e| e.to_string())?;
        Ok(vec![cert.pem()])
    }
}

fn csr_for(uri: &str) -> String {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .subject_alt_names
        .push(SanType::URI(uri.try_into().unwrap()));
    params.serialize_request(&key).unwrap().pem().unwrap()
}

async fn client(
    server: &RunningServer,
    pki: &Pki,
) -> ConfigDiscoveryClient<tonic::transport::Channel> {
    let material = TlsMaterial::from_dir(pki.client("default", "productpage")).unwrap();
    let channel = xds::client::connect(server.addr, SERVER_NAME, &material)
        .await
        .unwrap();
    ConfigDiscoveryClient::new(channel)
}

#[tokio::test]
async fn a_proxy_gets_a_certificate_for_its_own_identity_only() {
    let pki = Pki::new(&[("default", "productpage")]);
    let signer = Arc::new(RootSigner {
        issuer: pki.issuer.clone(),
    });
    let server = RunningServer::start_with(
        TestSource::new(view(&[])),
        &pki,
        "127.0.0.1:0".parse().unwrap(),
        Some(signer),
    )
    .await;
    let mut grpc = client(&server, &pki).await;

    let own = "spiffe://cluster.local/ns/default/sa/productpage";
    let response = tokio::time::timeout(
        WAIT,
        grpc.create_certificate(CertificateRequest {
            csr_pem: csr_for(own),
            ttl: Some(prost_types::Duration {
                seconds: 3600,
                nanos: 0,
            }),
        }),
    )
    .await
    .unwrap()
    .unwrap()
    .into_inner();
    assert_eq!(response.cert_chain_pem.len(), 1);
    let leaf = CertificateDer::from_pem_slice(response.cert_chain_pem[0].as_bytes()).unwrap();
    assert_eq!(SpiffeId::from_certificate(&leaf).unwrap().to_string(), own);

    let status = tokio::time::timeout(
        WAIT,
        grpc.create_certificate(CertificateRequest {
            csr_pem: csr_for("spiffe://cluster.local/ns/kube-system/sa/admin"),
            ttl: None,
        }),
    )
    .await
    .unwrap()
    .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert_eq!(
        status.message(),
        "CSR asks for spiffe://cluster.local/ns/kube-system/sa/admin but the caller is \
         spiffe://cluster.local/ns/default/sa/productpage; fix: request a certificate for \
         the proxy's own identity only"
    );

    let status = grpc
        .create_certificate(CertificateRequest {
            csr_pem: "not a csr".to_owned(),
            ttl: None,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().starts_with("CSR unusable: not PEM"),
        "{}",
        status.message()
    );
    server.stop().await;
}

#[tokio::test]
async fn without_a_signer_certificates_are_unimplemented() {
    let pki = Pki::new(&[("default", "productpage")]);
    let server = RunningServer::start(
        TestSource::new(view(&[])),
        &pki,
        "127.0.0.1:0".parse().unwrap(),
    )
    .await;
    let mut grpc = client(&server, &pki).await;
    let status = grpc
        .create_certificate(CertificateRequest {
            csr_pem: csr_for("spiffe://cluster.local/ns/default/sa/productpage"),
            ttl: None,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unimplemented);
    server.stop().await;
}
