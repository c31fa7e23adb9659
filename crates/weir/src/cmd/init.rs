//! `weir proxy init`: installs (or removes) the sidecar's traffic-capture rules in the
//! current network namespace, as Istio's init container does. Run it inside the pod:
//! `ip netns exec POD weir proxy init`.

use anyhow::Context as _;
use proxy::capture::{self, CaptureConfig, InboundPorts, Ipv4Cidr};

/// Flags of `weir proxy init`.
#[derive(clap::Args, Debug)]
pub struct InitArgs {
    /// Uid the proxy runs as; its own connections are not captured.
    #[arg(long)]
    pub proxy_uid: Option<u32>,
    /// Gid the proxy runs as; its own connections are not captured.
    #[arg(long)]
    pub proxy_gid: Option<u32>,
    /// Socket mark the proxy sets on its upstream connections; they are not captured.
    /// `0` disables mark matching (then give --proxy-uid or --proxy-gid).
    #[arg(long, default_value_t = capture::DEFAULT_PROXY_MARK)]
    pub proxy_mark: u32,
    /// Port of the proxy's inbound capture listener.
    #[arg(long, default_value_t = 15006)]
    pub inbound_capture_port: u16,
    /// Port of the proxy's outbound capture listener.
    #[arg(long, default_value_t = 15001)]
    pub outbound_capture_port: u16,
    /// Inbound ports never captured, comma-separated.
    #[arg(long, default_value = "15000,15001,15006,15008,15020,15021,15090")]
    pub exclude_inbound_ports: String,
    /// Inbound ports captured: `*` or a comma-separated list.
    #[arg(long, default_value = "*")]
    pub include_inbound_ports: String,
    /// Outbound destinations never captured, comma-separated IPv4 CIDRs.
    #[arg(long, default_value = "")]
    pub exclude_outbound_cidrs: String,
    /// Outbound destination ports never captured, comma-separated.
    #[arg(long, default_value = "")]
    pub exclude_outbound_ports: String,
    /// Print the rules (iptables-restore format) instead of installing them.
    #[arg(long)]
    pub dry_run: bool,
    /// Remove the rules an earlier `weir proxy init` installed.
    #[arg(long, conflicts_with = "dry_run")]
    pub cleanup: bool,
}

impl InitArgs {
    fn capture_config(&self) -> anyhow::Result<CaptureConfig> {
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
            exclude_inbound_ports: capture::parse_ports(&self.exclude_inbound_ports)
                .context("--exclude-inbound-ports")?,
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
