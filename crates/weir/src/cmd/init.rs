//! `weir proxy init`: installs (or removes) the sidecar's traffic-capture rules in the
//! current network namespace, as Istio's init container does. Run it inside the pod:
//! `ip netns exec POD weir proxy init`.

use anyhow::Context as _;
use proxy::capture::{self, CaptureConfig, InboundPorts, Ipv4Cidr};

/// Flags of `weir proxy init`.
#[derive(clap::Args, Debug)]
pub struct InitArgs {
    /// Uid the proxy runs as; its own connections are not captured.
    #[arg(long, short = 'u')]
    pub proxy_uid: Option<u32>,
    /// Gid the proxy runs as; its own connections are not captured.
    #[arg(long, short = 'g')]
    pub proxy_gid: Option<u32>,
    /// Socket mark the proxy sets on its upstream connections; they are not captured.
    /// `0` disables mark matching (then give --proxy-uid or --proxy-gid).
    #[arg(long, default_value_t = capture::DEFAULT_PROXY_MARK)]
    pub proxy_mark: u32,
    /// Port of the proxy's inbound capture listener.
    #[arg(long, short = 'z', default_value_t = 15006)]
    pub inbound_capture_port: u16,
    /// Port of the proxy's outbound capture listener.
    #[arg(long, short = 'p', default_value_t = 15001)]
    pub outbound_capture_port: u16,
    /// Inbound ports never captured, comma-separated. The proxy's own ports (15000,
    /// 15001, 15006, 15008, 15020, 15021, 15090) are never captured in any case.
    #[arg(
        long,
        short = 'd',
        default_value = "15000,15001,15006,15008,15020,15021,15090"
    )]
    pub exclude_inbound_ports: String,
    /// Inbound ports captured: `*` or a comma-separated list.
    #[arg(long, short = 'b', default_value = "*")]
    pub include_inbound_ports: String,
    /// Outbound destinations never captured, comma-separated IPv4 CIDRs.
    #[arg(long, short = 'x', default_value = "")]
    pub exclude_outbound_cidrs: String,
    /// Outbound destination ports never captured, comma-separated.
    #[arg(long, short = 'o', default_value = "")]
    pub exclude_outbound_ports: String,
    /// Outbound destinations captured: only `*` (all; exclude with -x). Istio's `-i`.
    #[arg(long, short = 'i', default_value = "*")]
    pub include_outbound_cidrs: String,
    /// Interception mode: only REDIRECT (Istio's default). Istio's `-m`.
    #[arg(long, short = 'm', default_value = "REDIRECT")]
    pub interception_mode: String,
    /// Print the rules (iptables-restore format) instead of installing them.
    #[arg(long)]
    pub dry_run: bool,
    /// Remove the rules an earlier `weir proxy init` installed.
    #[arg(long, conflicts_with = "dry_run")]
    pub cleanup: bool,
}

impl InitArgs {
    fn capture_config(&self) -> anyhow::Result<CaptureConfig> {
        anyhow::ensure!(
            self.interception_mode.eq_ignore_ascii_case("REDIRECT"),
            "interception mode {:?} is not supported: weir captures with REDIRECT; use -m REDIRECT (the sidecar.istio.io/interceptionMode annotation's default)",
            self.interception_mode
        );
        anyhow::ensure!(
            self.include_outbound_cidrs.trim() == "*",
            "--include-outbound-cidrs {:?}: weir captures all outbound traffic; give `*` and exclude destinations with --exclude-outbound-cidrs (-x)",
            self.include_outbound_cidrs
        );
        let mut exclude_inbound =
            capture::parse_ports(&self.exclude_inbound_ports).context("--exclude-inbound-ports")?;
        for own in [15000, 15001, 15006, 15008, 15020, 15021, 15090] {
            if !exclude_inbound.contains(&own) {
                exclude_inbound.push(own);
            }
        }
        let cidrs = self
            .exclude_outbound_cidrs
            .split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::parse::<Ipv4Cidr>)
            .collect::<Result<Vec<_>, _>>()
            .context("--exclude-outbound-cidrs")?;
        let config = CaptureConfig {
            proxy_uid: self.proxy_uid,
            proxy_gid: self.proxy_gid,
            proxy_mark: (self.proxy_mark != 0).then_some(self.proxy_mark),
            inbound_capture_port: self.inbound_capture_port,
            outbound_capture_port: self.outbound_capture_port,
            exclude_inbound_ports: exclude_inbound,
            include_inbound_ports: self
                .include_inbound_ports
                .parse::<InboundPorts>()
                .context("--include-inbound-ports")?,
            exclude_outbound_cidrs: cidrs,
            exclude_outbound_ports: capture::parse_ports(&self.exclude_outbound_ports)
                .context("--exclude-outbound-ports")?,
        };
        config.validate()?;
        Ok(config)
    }
}

/// Runs `weir proxy init`.
pub fn run(args: InitArgs) -> anyhow::Result<()> {
    if args.cleanup {
        capture::cleanup()?;
        eprintln!("weir proxy init: capture rules removed");
        return Ok(());
    }
    let config = args.capture_config()?;
    if args.dry_run {
        print!("{}", capture::render(&config));
        return Ok(());
    }
    capture::apply(&config)?;
    eprintln!(
        "weir proxy init: capturing inbound TCP to :{} and outbound TCP to :{}",
        config.inbound_capture_port, config.outbound_capture_port
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        init: InitArgs,
    }

    fn rules(args: &[&str]) -> anyhow::Result<String> {
        let cli = Cli::try_parse_from(std::iter::once("init").chain(args.iter().copied()))?;
        Ok(capture::render(&cli.init.capture_config()?))
    }

    #[test]
    fn istios_injected_arguments_give_the_default_rules_plus_the_uid() {
        let istio = rules(&[
            "-p",
            "15001",
            "-z",
            "15006",
            "-u",
            "1337",
            "-m",
            "REDIRECT",
            "-i",
            "*",
            "-x",
            "",
            "-b",
            "*",
            "-d",
            "15090,15021,15020",
        ])
        .unwrap();
        let ours = rules(&["--proxy-uid", "1337"]).unwrap();
        let sorted = |s: &str| {
            let mut l: Vec<String> = s.lines().map(str::to_owned).collect();
            l.sort();
            l
        };
        assert_eq!(sorted(&istio), sorted(&ours));
        assert!(istio.contains("--uid-owner 1337 -j RETURN"));
    }

    #[test]
    fn tproxy_and_partial_outbound_capture_are_refused_with_the_fix() {
        let e = rules(&["-m", "TPROXY"]).unwrap_err().to_string();
        assert!(e.contains("-m REDIRECT"), "{e}");
        let e = rules(&["-i", "10.0.0.0/8"]).unwrap_err().to_string();
        assert!(e.contains("--exclude-outbound-cidrs (-x)"), "{e}");
    }
}
