//! Transparent traffic capture: the iptables rules a sidecar's init step installs in the
//! pod's network namespace, as Istio's `istio-init` container does.
//!
//! All rules live in the `nat` table, in four chains of our own (named `WEIR_*` so they
//! never collide with a real Istio installation's `ISTIO_*` chains):
//!
//! | chain | hooked from | what it does |
//! |---|---|---|
//! | `WEIR_INBOUND` | `PREROUTING -p tcp` | `RETURN` for excluded ports (the proxy's own 15000, 15001, 15006, 15008, 15020, 15021, 15090 by default), then the included ports (all by default) go to `WEIR_IN_REDIRECT` |
//! | `WEIR_IN_REDIRECT` | `WEIR_INBOUND` | `REDIRECT --to-ports 15006` |
//! | `WEIR_OUTPUT` | `OUTPUT -p tcp` | `RETURN` for the proxy's own traffic (by uid, gid and/or socket mark), for loopback traffic, and for excluded CIDRs and ports; the rest goes to `WEIR_REDIRECT` |
//! | `WEIR_REDIRECT` | `WEIR_OUTPUT` | `REDIRECT --to-ports 15001` |
//!
//! The proxy finds where a captured connection was going with `SO_ORIGINAL_DST`. Only
//! IPv4 is captured. [`apply`] is idempotent (it replaces earlier rules in one
//! `iptables-restore --noflush` transaction) and [`cleanup`] removes exactly what it added.

use std::fmt::{self, Write as _};
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

/// The chains this module owns, in creation order.
pub const CHAINS: [&str; 4] = [
    "WEIR_INBOUND",
    "WEIR_IN_REDIRECT",
    "WEIR_OUTPUT",
    "WEIR_REDIRECT",
];
/// Inbound ports never captured by default: the proxy's own ports (admin, outbound and
/// inbound capture, HBONE, merged metrics, readiness, Prometheus).
pub const DEFAULT_EXCLUDE_INBOUND_PORTS: [u16; 7] =
    [15000, 15001, 15006, 15008, 15020, 15021, 15090];
/// The socket mark Istio uses for the proxy's own connections (and its uid).
pub const DEFAULT_PROXY_MARK: u32 = 1337;

/// How long one `iptables-restore`/`iptables-save` may run.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest output read from `iptables-save`.
const MAX_OUTPUT: u64 = 16 << 20;

/// Errors from installing or removing capture rules.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The configuration cannot work.
    #[error("invalid capture configuration: {0}")]
    Invalid(String),
    /// A text is not a port list or CIDR.
    #[error("invalid {what} {value:?}: {fix}")]
    Parse {
        /// What was being parsed.
        what: &'static str,
        /// The text.
        value: String,
        /// The accepted form.
        fix: String,
    },
    /// An iptables program is not installed.
    #[error("`{program}` not found: install iptables (`apt-get install iptables`) and make sure /usr/sbin is on PATH")]
    Missing {
        /// The program.
        program: String,
    },
    /// The caller may not change the firewall.
    #[error("`{program}` was denied: {stderr}; run as root or with CAP_NET_ADMIN (e.g. `sudo ip netns exec POD weir proxy init`)")]
    Permission {
        /// The program.
        program: String,
        /// Its error output.
        stderr: String,
    },
    /// An iptables program failed.
    #[error("`{program}` failed ({status}): {stderr}")]
    Failed {
        /// The program and its arguments.
        program: String,
        /// Exit status.
        status: String,
        /// Its error output.
        stderr: String,
    },
    /// An iptables program did not finish in time.
    #[error("`{program}` did not finish within {secs}s (another process may hold the xtables lock); retry, or check `ps` for a stuck iptables")]
    Timeout {
        /// The program.
        program: String,
        /// The limit.
        secs: u64,
    },
    /// Running a program failed for another reason.
    #[error("cannot run `{program}`: {source}")]
    Io {
        /// The program.
        program: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Which inbound ports are captured.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum InboundPorts {
    /// Every port not excluded (`*`).
    #[default]
    All,
    /// Only these ports.
    List(Vec<u16>),
}

impl FromStr for InboundPorts {
    type Err = CaptureError;
    fn from_str(s: &str) -> Result<Self, CaptureError> {
        if s.trim() == "*" {
            Ok(Self::All)
        } else {
            parse_ports(s).map(Self::List)
        }
    }
}

/// Parses a comma-separated port list (`"15090,15021"`; empty means none).
pub fn parse_ports(s: &str) -> Result<Vec<u16>, CaptureError> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| match p.parse::<u16>() {
            Ok(port) if port != 0 => Ok(port),
            _ => Err(CaptureError::Parse {
                what: "port",
                value: p.to_owned(),
                fix: "write ports 1-65535 separated by commas, e.g. 15090,15021".to_owned(),
            }),
        })
        .collect()
}

/// An IPv4 network, `a.b.c.d/len` (a bare address means `/32`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Cidr {
    addr: Ipv4Addr,
    prefix: u8,
}

impl Ipv4Cidr {
    /// A network; host bits of `addr` are cleared. `None` when `prefix > 32`.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Option<Self> {
        if prefix > 32 {
            return None;
        }
        let mask = if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - prefix)
        };
        Some(Self {
            addr: Ipv4Addr::from(u32::from(addr) & mask),
            prefix,
        })
    }
}

impl FromStr for Ipv4Cidr {
    type Err = CaptureError;
    fn from_str(s: &str) -> Result<Self, CaptureError> {
        let bad = || CaptureError::Parse {
            what: "IPv4 CIDR",
            value: s.to_owned(),
            fix: "write an IPv4 network such as 10.96.0.0/12 or an address such as 169.254.169.254"
                .to_owned(),
        };
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => (a, p.parse::<u8>().map_err(|_| bad())?),
            None => (s.trim(), 32),
        };
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        Self::new(addr, prefix).ok_or_else(bad)
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// What to capture and how to recognise the proxy's own traffic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaptureConfig {
    /// The proxy's uid: its outbound connections are not captured again.
    pub proxy_uid: Option<u32>,
    /// The proxy's gid: likewise.
    pub proxy_gid: Option<u32>,
    /// The `SO_MARK` the proxy sets on its upstream sockets: likewise. The only choice
    /// when the proxy and the apps run as the same user (e.g. all as root).
    pub proxy_mark: Option<u32>,
    /// Where inbound connections are redirected (the proxy's inbound listener).
    pub inbound_capture_port: u16,
    /// Where outbound connections are redirected (the proxy's outbound listener).
    pub outbound_capture_port: u16,
    /// Inbound destination ports left alone.
    pub exclude_inbound_ports: Vec<u16>,
    /// Inbound destination ports captured.
    pub include_inbound_ports: InboundPorts,
    /// Outbound destinations left alone.
    pub exclude_outbound_cidrs: Vec<Ipv4Cidr>,
    /// Outbound destination ports left alone.
    pub exclude_outbound_ports: Vec<u16>,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        Self {
            proxy_uid: None,
            proxy_gid: None,
            proxy_mark: Some(DEFAULT_PROXY_MARK),
            inbound_capture_port: 15006,
            outbound_capture_port: 15001,
            exclude_inbound_ports: DEFAULT_EXCLUDE_INBOUND_PORTS.to_vec(),
            include_inbound_ports: InboundPorts::All,
            exclude_outbound_cidrs: Vec::new(),
            exclude_outbound_ports: Vec::new(),
        }
    }
}

impl CaptureConfig {
    /// Checks the rules cannot loop or capture the proxy's own listeners.
    pub fn validate(&self) -> Result<(), CaptureError> {
        if self.proxy_uid.is_none() && self.proxy_gid.is_none() && self.proxy_mark.is_none() {
            return Err(CaptureError::Invalid(
                "no way to recognise the proxy's own traffic, which would be captured again in a loop; set --proxy-uid, --proxy-gid or --proxy-mark".to_owned(),
            ));
        }
        for (name, port) in [
            ("inbound capture port", self.inbound_capture_port),
            ("outbound capture port", self.outbound_capture_port),
        ] {
            if port == 0 {
                return Err(CaptureError::Invalid(format!(
                    "{name} is 0; use a port 1-65535"
                )));
            }
        }
        if let InboundPorts::List(ports) = &self.include_inbound_ports {
            if ports.contains(&self.inbound_capture_port) {
                return Err(CaptureError::Invalid(format!(
                    "included inbound port {} is the inbound capture port itself, which would loop; remove it",
                    self.inbound_capture_port
                )));
            }
        } else if !self
            .exclude_inbound_ports
            .contains(&self.inbound_capture_port)
        {
            return Err(CaptureError::Invalid(format!(
                "the inbound capture port {} is not excluded from inbound capture, which would loop; add it to the excluded inbound ports",
                self.inbound_capture_port
            )));
        }
        if self.proxy_mark == Some(0) {
            return Err(CaptureError::Invalid(
                "proxy mark 0 is the mark of every unmarked packet; use a non-zero mark such as 1337".to_owned(),
            ));
        }
        Ok(())
    }
}

/// Renders the rules as an `iptables-restore --noflush` script for the `nat` table. It
/// is self-replacing: the jumps it adds are deleted first if present (see [`apply`]),
/// and declaring the chains flushes them.
pub fn render(cfg: &CaptureConfig) -> String {
    let mut s = String::from("*nat\n");
    for chain in CHAINS {
        let _ = writeln!(s, ":{chain} - [0:0]");
    }
    for port in &cfg.exclude_inbound_ports {
        let _ = writeln!(s, "-A WEIR_INBOUND -p tcp -m tcp --dport {port} -j RETURN");
    }
    match &cfg.include_inbound_ports {
        InboundPorts::All => s.push_str("-A WEIR_INBOUND -p tcp -j WEIR_IN_REDIRECT\n"),
        InboundPorts::List(ports) => {
            for port in ports {
                let _ = writeln!(
                    s,
                    "-A WEIR_INBOUND -p tcp -m tcp --dport {port} -j WEIR_IN_REDIRECT"
                );
            }
        }
    }
    let _ = writeln!(
        s,
        "-A WEIR_IN_REDIRECT -p tcp -j REDIRECT --to-ports {}",
        cfg.inbound_capture_port
    );
    // The proxy dialling its own pod's address (an app calling its own service) goes
    // over `lo`: hand it to the inbound side, as a connection from another pod would be.
    if let Some(uid) = cfg.proxy_uid {
        let _ = writeln!(
            s,
            "-A WEIR_OUTPUT ! -d 127.0.0.1/32 -o lo -m owner --uid-owner {uid} -j WEIR_IN_REDIRECT"
        );
    }
    if let Some(gid) = cfg.proxy_gid {
        let _ = writeln!(
            s,
            "-A WEIR_OUTPUT ! -d 127.0.0.1/32 -o lo -m owner --gid-owner {gid} -j WEIR_IN_REDIRECT"
        );
    }
    if let Some(mark) = cfg.proxy_mark {
        let _ = writeln!(
            s,
            "-A WEIR_OUTPUT ! -d 127.0.0.1/32 -o lo -m mark --mark {mark:#x} -j WEIR_IN_REDIRECT"
        );
    }
    // The proxy's own connections first, so nothing it dials is captured twice.
    if let Some(uid) = cfg.proxy_uid {
        let _ = writeln!(s, "-A WEIR_OUTPUT -m owner --uid-owner {uid} -j RETURN");
    }
    if let Some(gid) = cfg.proxy_gid {
        let _ = writeln!(s, "-A WEIR_OUTPUT -m owner --gid-owner {gid} -j RETURN");
    }
    if let Some(mark) = cfg.proxy_mark {
        let _ = writeln!(s, "-A WEIR_OUTPUT -m mark --mark {mark:#x} -j RETURN");
    }
    // Loopback traffic (the inbound proxy reaching the app, apps talking to themselves)
    // never leaves the pod.
    s.push_str("-A WEIR_OUTPUT -o lo -j RETURN\n");
    s.push_str("-A WEIR_OUTPUT -d 127.0.0.1/32 -j RETURN\n");
    for cidr in &cfg.exclude_outbound_cidrs {
        let _ = writeln!(s, "-A WEIR_OUTPUT -d {cidr} -j RETURN");
    }
    for port in &cfg.exclude_outbound_ports {
        let _ = writeln!(s, "-A WEIR_OUTPUT -p tcp -m tcp --dport {port} -j RETURN");
    }
    s.push_str("-A WEIR_OUTPUT -j WEIR_REDIRECT\n");
    let _ = writeln!(
        s,
        "-A WEIR_REDIRECT -p tcp -j REDIRECT --to-ports {}",
        cfg.outbound_capture_port
    );
    s.push_str("-A PREROUTING -p tcp -j WEIR_INBOUND\n");
    s.push_str("-A OUTPUT -p tcp -j WEIR_OUTPUT\n");
    s.push_str("COMMIT\n");
    s
}

/// Where the iptables programs run: the caller's network namespace, or a named one
/// (through `ip netns exec`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Target {
    netns: Option<String>,
}

impl Target {
    /// The caller's own network namespace.
    pub fn current() -> Self {
        Self { netns: None }
    }

    /// A namespace created with `ip netns add NAME`.
    pub fn netns(name: &str) -> Self {
        Self {
            netns: Some(name.to_owned()),
        }
    }

    fn command(&self, program: &str) -> Command {
        match &self.netns {
            None => Command::new(program),
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, program]);
                c
            }
        }
    }

    fn describe(&self, program: &str) -> String {
        match &self.netns {
            None => program.to_owned(),
            Some(ns) => format!("ip netns exec {ns} {program}"),
        }
    }

    /// Runs `program args` with `stdin`, returning its stdout.
    fn run(&self, program: &str, args: &[&str], stdin: &str) -> Result<String, CaptureError> {
        let name = self.describe(program);
        let mut child = self
            .command(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| {
                if source.kind() == std::io::ErrorKind::NotFound {
                    CaptureError::Missing {
                        program: if self.netns.is_some() {
                            "ip".to_owned()
                        } else {
                            program.to_owned()
                        },
                    }
                } else {
                    CaptureError::Io {
                        program: name.clone(),
                        source,
                    }
                }
            })?;
        // Readers run on their own threads so a full pipe never blocks the child.
        let out = child.stdout.take().map(|o| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = o.take(MAX_OUTPUT).read_to_end(&mut buf);
                buf
            })
        });
        let err = child.stderr.take().map(|e| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = e.take(64 << 10).read_to_end(&mut buf);
                buf
            })
        });
        if let Some(mut input) = child.stdin.take() {
            // A program that exits early closes the pipe; its exit status says why.
            let _ = input.write_all(stdin.as_bytes());
        }
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(CaptureError::Timeout {
                        program: name,
                        secs: COMMAND_TIMEOUT.as_secs(),
                    });
                }
                Err(source) => {
                    return Err(CaptureError::Io {
                        program: name,
                        source,
                    })
                }
            }
        };
        let stdout = out.and_then(|t| t.join().ok()).unwrap_or_default();
        let stderr = err.and_then(|t| t.join().ok()).unwrap_or_default();
        let stderr = String::from_utf8_lossy(&stderr).trim().to_owned();
        if status.success() {
            return Ok(String::from_utf8_lossy(&stdout).into_owned());
        }
        let lower = stderr.to_ascii_lowercase();
        if lower.contains("permission denied")
            || lower.contains("must be root")
            || lower.contains("operation not permitted")
        {
            return Err(CaptureError::Permission {
                program: name,
                stderr,
            });
        }
        if status.code() == Some(127)
            || lower.contains("no such file or directory") && lower.contains(program)
        {
            return Err(CaptureError::Missing {
                program: program.to_owned(),
            });
        }
        Err(CaptureError::Failed {
            program: format!("{name} {}", args.join(" ")),
            status: status.to_string(),
            stderr,
        })
    }

    /// The `nat` table as `iptables-save -t nat` prints it.
    pub fn save_nat(&self) -> Result<String, CaptureError> {
        self.run("iptables-save", &["-t", "nat"], "")
    }

    fn restore(&self, script: &str) -> Result<(), CaptureError> {
        self.run("iptables-restore", &["--noflush", "--wait", "10"], script)
            .map(|_| ())
    }
}

/// What of ours is in a `nat` table dump: the chains, and the rules elsewhere that jump
/// into them (as `-A ...` lines, ready to turn into `-D ...`).
fn ours(saved: &str) -> (Vec<String>, Vec<String>) {
    let mut chains = Vec::new();
    let mut jumps = Vec::new();
    for line in saved.lines() {
        if let Some(decl) = line.strip_prefix(':') {
            let name = decl.split_whitespace().next().unwrap_or("");
            if CHAINS.contains(&name) {
                chains.push(name.to_owned());
            }
        } else if let Some(rule) = line.strip_prefix("-A ") {
            let chain = rule.split_whitespace().next().unwrap_or("");
            let target = rule
                .split_whitespace()
                .skip_while(|w| *w != "-j")
                .nth(1)
                .unwrap_or("");
            if !CHAINS.contains(&chain) && CHAINS.contains(&target) {
                jumps.push(rule.to_owned());
            }
        }
    }
    (chains, jumps)
}

/// Installs the rules in the caller's network namespace (run it inside the pod's:
/// `ip netns exec POD weir proxy init`).
pub fn apply(cfg: &CaptureConfig) -> Result<(), CaptureError> {
    apply_in(&Target::current(), cfg)
}

/// Installs the rules in `target`, replacing any earlier ones, in one transaction.
pub fn apply_in(target: &Target, cfg: &CaptureConfig) -> Result<(), CaptureError> {
    cfg.validate()?;
    let (_, jumps) = ours(&target.save_nat()?);
    let rules = render(cfg);
    let mut script = String::from("*nat\n");
    for jump in jumps {
        let _ = writeln!(script, "-D {jump}");
    }
    script.push_str(rules.strip_prefix("*nat\n").unwrap_or(&rules));
    target.restore(&script)
}

/// Removes everything [`apply`] added in the caller's network namespace; a no-op when
/// nothing is installed.
pub fn cleanup() -> Result<(), CaptureError> {
    cleanup_in(&Target::current())
}

/// Removes everything [`apply_in`] added in `target`.
pub fn cleanup_in(target: &Target) -> Result<(), CaptureError> {
    let (chains, jumps) = ours(&target.save_nat()?);
    if chains.is_empty() && jumps.is_empty() {
        return Ok(());
    }
    let mut script = String::from("*nat\n");
    for jump in jumps {
        let _ = writeln!(script, "-D {jump}");
    }
    for chain in &chains {
        let _ = writeln!(script, "-F {chain}");
    }
    for chain in &chains {
        let _ = writeln!(script, "-X {chain}");
    }
    script.push_str("COMMIT\n");
    target.restore(&script)
}

#[cfg(test)]
mod tests;
