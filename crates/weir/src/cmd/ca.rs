//! `weir ca`: a local certificate authority in Istio's plug-in `cacerts` layout, and
//! workload certificates in the layout the sidecars read.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use control::ca::{self, CertificateAuthority, SpiffeId};

/// `weir ca` subcommands.
#[derive(clap::Args, Debug)]
pub struct CaArgs {
    #[command(subcommand)]
    command: CaCommand,
}

#[derive(clap::Subcommand, Debug)]
enum CaCommand {
    /// Generate a self-signed root (ECDSA P-256) and write ca-cert.pem, ca-key.pem,
    /// root-cert.pem and cert-chain.pem into DIR.
    Init {
        /// Directory to create the CA in (Istio's `cacerts` layout).
        #[arg(long)]
        dir: PathBuf,
        /// Trust domain, the root's organisation.
        #[arg(long, default_value = ca::DEFAULT_TRUST_DOMAIN)]
        trust_domain: String,
    },
    /// Issue a workload certificate for spiffe://TD/ns/NS/sa/SA and write cert-chain.pem,
    /// key.pem and root-cert.pem into OUT.
    Issue {
        /// Directory holding the CA (Istio's plug-in `cacerts` layout).
        #[arg(long)]
        ca_dir: PathBuf,
        /// The workload's namespace.
        #[arg(long)]
        namespace: String,
        /// The workload's service account.
        #[arg(long)]
        service_account: String,
        /// Trust domain of the SPIFFE id.
        #[arg(long, default_value = ca::DEFAULT_TRUST_DOMAIN)]
        trust_domain: String,
        /// Lifetime, e.g. `24h`, `90m`, `3600s`.
        #[arg(long, default_value = "24h", value_parser = parse_ttl)]
        ttl: Duration,
        /// Sign this PEM CSR instead of generating a key (key.pem is then not written).
        #[arg(long)]
        csr: Option<PathBuf>,
        /// Directory to write the workload files into.
        #[arg(long)]
        out: PathBuf,
    },
}

/// Parses `<n>s`, `<n>m`, `<n>h` or `<n>d`.
fn parse_ttl(text: &str) -> Result<Duration, String> {
    let bad = || {
        format!("invalid lifetime {text:?}: write a whole number and a unit s, m, h or d, e.g. 24h")
    };
    let t = text.trim();
    let unit = t.chars().last().ok_or_else(bad)?;
    let n: u64 = t[..t.len() - unit.len_utf8()].parse().map_err(|_| bad())?;
    let secs = match unit {
        's' => Some(n),
        'm' => n.checked_mul(60),
        'h' => n.checked_mul(3600),
        'd' => n.checked_mul(86400),
        _ => None,
    };
    secs.map(Duration::from_secs).ok_or_else(bad)
}

/// Runs `weir ca`.
pub fn run(args: CaArgs) -> anyhow::Result<()> {
    match args.command {
        CaCommand::Init { dir, trust_domain } => {
            let authority =
                CertificateAuthority::generate_root(&trust_domain, ca::DEFAULT_ROOT_TTL)?;
            authority.write_plugin_dir(&dir)?;
            eprintln!(
                "weir ca: root CA for trust domain {trust_domain} written to {} (ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem)",
                dir.display()
            );
            Ok(())
        }
        CaCommand::Issue {
            ca_dir,
            namespace,
            service_account,
            trust_domain,
            ttl,
            csr,
            out,
        } => {
            let authority = CertificateAuthority::load_plugin_dir(&ca_dir)?;
            let id = SpiffeId::new(&trust_domain, &namespace, &service_account)?;
            let cert = match csr {
                Some(path) => {
                    let text = std::fs::read_to_string(&path)
                        .with_context(|| format!("cannot read CSR {}", path.display()))?;
                    authority.issue_for_csr(&text, &id, ttl)?
                }
                None => authority.issue(&id, ttl)?,
            };
            cert.write_dir(&out)?;
            eprintln!(
                "weir ca: issued {id} (valid {}s) into {}",
                ttl.as_secs(),
                out.display()
            );
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_forms() {
        assert_eq!(parse_ttl("24h"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse_ttl("90m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_ttl("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_ttl("2d"), Ok(Duration::from_secs(172800)));
        for bad in ["", "h", "24", "1.5h", "-1h", "99999999999999999999d"] {
            assert!(parse_ttl(bad).is_err(), "{bad}");
        }
    }
}
