//! `weir ca init` and `weir ca issue`: files in Istio's layouts, modes, and errors.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};

use control::ca::{CertificateAuthority, SpiffeId};

const WEIR: &str = env!("CARGO_BIN_EXE_weir");

fn weir(args: &[&str]) -> Output {
    Command::new(WEIR).args(args).output().expect("run weir")
}

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn init_then_issue_writes_istio_layouts() {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("cacerts");
    let ca = ca_dir.to_str().unwrap();
    let out = weir(&["ca", "init", "--dir", ca, "--trust-domain", "example.org"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in ["ca-cert.pem", "root-cert.pem", "cert-chain.pem"] {
        assert_eq!(mode(&ca_dir.join(f)), 0o644, "{f}");
    }
    assert_eq!(mode(&ca_dir.join("ca-key.pem")), 0o600);

    // A second init refuses to replace the key.
    let out = weir(&["ca", "init", "--dir", ca]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing to overwrite a CA key"));

    let wl_dir = dir.path().join("ratings");
    let out = weir(&[
        "ca",
        "issue",
        "--ca-dir",
        ca,
        "--namespace",
        "default",
        "--service-account",
        "ratings",
        "--trust-domain",
        "example.org",
        "--ttl",
        "2h",
        "--out",
        wl_dir.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(mode(&wl_dir.join("key.pem")), 0o600);
    let chain = std::fs::read_to_string(wl_dir.join("cert-chain.pem")).unwrap();
    let root = std::fs::read_to_string(wl_dir.join("root-cert.pem")).unwrap();
    assert_eq!(
        root,
        std::fs::read_to_string(ca_dir.join("root-cert.pem")).unwrap()
    );
    let pem = x509_parser::pem::parse_x509_pem(chain.as_bytes())
        .unwrap()
        .1;
    let cert = pem.parse_x509().unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    assert_eq!(
        format!("{:?}", san.value.general_names),
        "[URI(\"spiffe://example.org/ns/default/sa/ratings\")]"
    );
    let life = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
    assert_eq!(
        life,
        2 * 3600 + 60,
        "2 h plus the 60 s clock-skew allowance"
    );

    // The same CA loads back as a library user sees it.
    let loaded = CertificateAuthority::load_plugin_dir(&ca_dir).unwrap();
    assert_eq!(loaded.root_cert_pem(), root);
    let _ = SpiffeId::new("example.org", "default", "ratings").unwrap();
}

#[test]
fn issue_errors_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let out = weir(&[
        "ca",
        "issue",
        "--ca-dir",
        missing.to_str().unwrap(),
        "--namespace",
        "default",
        "--service-account",
        "x",
        "--out",
        dir.path().join("o").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot read {}/ca-cert.pem", missing.display())),
        "{err}"
    );

    let out = weir(&[
        "ca",
        "issue",
        "--ca-dir",
        "x",
        "--namespace",
        "default",
        "--service-account",
        "x",
        "--ttl",
        "1.5h",
        "--out",
        "o",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid lifetime \"1.5h\""), "{err}");

    let ca_dir = dir.path().join("ca");
    assert!(weir(&["ca", "init", "--dir", ca_dir.to_str().unwrap()])
        .status
        .success());
    let out = weir(&[
        "ca",
        "issue",
        "--ca-dir",
        ca_dir.to_str().unwrap(),
        "--namespace",
        "a/b",
        "--service-account",
        "x",
        "--out",
        dir.path().join("o").to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid namespace \"a/b\""), "{err}");
}
