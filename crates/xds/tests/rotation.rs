//! Workload certificate rotation over the control plane's gRPC channel, against a real
//! server over loopback mTLS.

#[allow(dead_code)]
#[path = "common/harness.rs"]
mod harness;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use harness::*;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, IsCa, Issuer, KeyPair,
    SanType,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use x509_parser::time::ASN1Time;
use xds::ca::CertificateSigner;
use xds::rotate::{CurrentCert, RotateOptions, RotateStatus, Rotator};
use xds::tls::SpiffeId;

const IDENTITY: &str = "spiffe://cluster.local/ns/default/sa/productpage";

/// How the test CA answers.
enum Mode {
    /// Signs for the caller with the mesh root, for the requested TTL.
    Sign,
    /// Refuses every request.
    Fail,
    /// Signs with a CA the mesh does not trust.
    Foreign(Box<Issuer<'static, KeyPair>>),
}

struct TestSigner {
    issuer: Arc<Issuer<'static, KeyPair>>,
    mode: Mode,
}

impl CertificateSigner for TestSigner {
    fn sign(
        &self,
        csr_pem: &str,
        identity: &SpiffeId,
        ttl: Duration,
    ) -> Result<Vec<String>, String> {
        let issuer = match &self.mode {
            Mode::Sign => &*self.issuer,
            Mode::Fail => return Err("CA offline for maintenance".to_owned()),
            Mode::Foreign(issuer) => issuer,
        };
        let mut csr =
            CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| e.to_string())?;
        let uri = identity.to_string();
        csr.params.subject_alt_names = vec![SanType::URI(
            uri.as_str().try_into().map_err(|e| format!("{e}"))?,
        )];
        set_validity(&mut csr.params, 0, ttl.as_secs() as i64);
        let cert = csr.signed_by(issuer).map_err(|e| e.to_string())?;
        Ok(vec![cert.pem()])
    }
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Sets `params` valid from `from` to `to` seconds relative to now.
fn set_validity(params: &mut CertificateParams, from: i64, to: i64) {
    let at = |offset: i64| {
        ASN1Time::from_timestamp(now_unix() + offset)
            .unwrap()
            .to_datetime()
    };
    params.not_before = at(from);
    params.not_after = at(to);
}

/// A certificate directory for IDENTITY signed by the mesh root, valid from `from` to
/// `to` seconds relative to now.
fn cert_dir(pki: &Pki, dir: &Path, from: i64, to: i64) -> PathBuf {
    let root = std::fs::read_to_string(pki.server.join("root-cert.pem")).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .subject_alt_names
        .push(SanType::URI(IDENTITY.try_into().unwrap()));
    set_validity(&mut params, from, to);
    let cert = params.signed_by(&key, &pki.issuer).unwrap();
    let path = dir.join("certs");
    write_dir(&path, &cert.pem(), &key.serialize_pem(), &root);
    path
}

struct Files {
    chain: String,
    key: String,
    root: String,
}

fn files(dir: &Path) -> Files {
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
    Files {
        chain: read("cert-chain.pem"),
        key: read("key.pem"),
        root: read("root-cert.pem"),
    }
}

struct Running {
    status: watch::Receiver<RotateStatus>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    fn start(server: &RunningServer, dir: &Path, ttl: Duration, renew_at: f64) -> Self {
        let mut options = RotateOptions::new(server.addr, SERVER_NAME, dir);
        options.ttl = ttl;
        options.renew_at = renew_at;
        options.min_retry = Duration::from_millis(50);
        options.max_retry = Duration::from_millis(200);
        let rotator = Rotator::new(options);
        let status = rotator.status();
        let stop = CancellationToken::new();
        let task = tokio::spawn(rotator.run(stop.clone()));
        Self { status, stop, task }
    }

    async fn wait_for(
        &mut self,
        what: &str,
        mut ok: impl FnMut(&RotateStatus) -> bool,
    ) -> RotateStatus {
        let waited = tokio::time::timeout(WAIT, self.status.wait_for(|s| ok(s)))
            .await
            .map(|r| r.map(|s| s.clone()));
        waited
            .unwrap_or_else(|_| {
                panic!("{what} within {WAIT:?}; status {:?}", *self.status.borrow())
            })
            .unwrap()
    }

    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .unwrap()
            .unwrap();
    }
}

async fn server(pki: &Pki, mode: Mode) -> RunningServer {
    let signer = Arc::new(TestSigner {
        issuer: pki.issuer.clone(),
        mode,
    });
    RunningServer::start_with(
        TestSource::new(view(&[])),
        pki,
        "127.0.0.1:0".parse().unwrap(),
        Some(signer),
    )
    .await
}

#[tokio::test]
async fn a_short_lived_certificate_is_renewed_at_half_its_lifetime_again_and_again() {
    let pki = Pki::new(&[]);
    let server = server(&pki, Mode::Sign).await;
    let dir = cert_dir(&pki, pki._dir.path(), 0, 4);
    let before = files(&dir);
    let first = CurrentCert::read(&dir).unwrap();
    assert_eq!(first.not_after - first.not_before, 4);

    let mut rotation = Running::start(&server, &dir, Duration::from_secs(4), 0.5);
    let status = rotation
        .wait_for("first renewal", |s| s.renewals >= 1)
        .await;
    assert_eq!(status.last_error, None);
    let renewed_at = status.last_renewal.unwrap();
    // Not before half the lifetime (whole seconds: notBefore is truncated).
    assert!(
        renewed_at >= UNIX_EPOCH + Duration::from_secs((first.not_before + 2) as u64),
        "renewed too early: {renewed_at:?} for notBefore {}",
        first.not_before
    );
    let after = files(&dir);
    assert_ne!(after.chain, before.chain);
    assert_ne!(after.key, before.key);
    assert_eq!(after.root, before.root);
    let second = CurrentCert::read(&dir).unwrap();
    assert_eq!(second.identity.to_string(), IDENTITY);
    assert!(
        second.not_after > first.not_after,
        "{second:?} vs {first:?}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // The new files are usable material (key matches the leaf).
    xds::tls::TlsMaterial::from_dir(&dir)
        .unwrap()
        .client_config()
        .unwrap();

    let status = rotation
        .wait_for("second renewal", |s| s.renewals >= 2)
        .await;
    assert_eq!(status.last_error, None);
    let third = CurrentCert::read(&dir).unwrap();
    assert_eq!(third.identity.to_string(), IDENTITY);
    assert!(
        third.not_after > second.not_after,
        "{third:?} vs {second:?}"
    );
    assert_ne!(files(&dir).key, after.key);
    rotation.stop().await;
    server.stop().await;
}

/// Runs a rotation that is due at once against a CA in `mode`: the attempt fails with
/// `expected`, is rescheduled, and the files stay as they were.
async fn assert_fails_without_touching_files(mode: Mode, expected: &str) {
    let pki = Pki::new(&[]);
    let server = server(&pki, mode).await;
    let dir = cert_dir(&pki, pki._dir.path(), 0, 3600);
    let before = files(&dir);
    // renew_at 0: due at once.
    let mut rotation = Running::start(&server, &dir, Duration::from_secs(3600), 0.0);
    let status = rotation
        .wait_for("a failed attempt", |s| s.last_error.is_some())
        .await;
    let error = status.last_error.unwrap();
    assert!(error.contains(expected), "{error}");
    assert_eq!(status.renewals, 0);
    // It keeps retrying: a later attempt is scheduled.
    assert!(status.next_renewal.unwrap() > SystemTime::now() - Duration::from_secs(1));
    let after = files(&dir);
    assert_eq!(after.chain, before.chain);
    assert_eq!(after.key, before.key);
    assert_eq!(after.root, before.root);
    rotation.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn a_failing_signer_is_retried_and_reported_and_the_files_stay() {
    assert_fails_without_touching_files(Mode::Fail, "CA offline for maintenance").await;
}

#[tokio::test]
async fn a_certificate_from_an_untrusted_ca_is_rejected() {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let foreign = Issuer::new(params, key);
    assert_fails_without_touching_files(
        Mode::Foreign(Box::new(foreign)),
        "does not verify under the current root-cert.pem",
    )
    .await;
}

#[tokio::test]
async fn an_expired_certificate_is_reported_with_the_fix() {
    let pki = Pki::new(&[]);
    let server = server(&pki, Mode::Sign).await;
    let dir = cert_dir(&pki, pki._dir.path(), -7200, -3600);
    let expired = CurrentCert::read(&dir).unwrap();
    let before = files(&dir);
    let mut rotation = Running::start(&server, &dir, Duration::from_secs(3600), 0.5);
    let status = rotation
        .wait_for("the expiry reported", |s| s.last_error.is_some())
        .await;
    assert_eq!(
        status.last_error.unwrap(),
        format!(
            "certificate {} expired at {} (unix seconds); it cannot authenticate to the \
             control plane; fix: reissue it with `weir ca issue` into {}",
            dir.join("cert-chain.pem").display(),
            expired.not_after,
            dir.display()
        )
    );
    assert_eq!(files(&dir).key, before.key);
    rotation.stop().await;
    server.stop().await;
}
