//! Network namespaces and links, through the `ip` program (iproute2), and running code
//! inside a namespace. The cluster touches no host interface, route or rule: the node's
//! bridge and every pod live in namespaces of their own.

use std::net::Ipv4Addr;
use std::os::fd::AsFd as _;
use std::process::Command;

use crate::ClusterError;

/// The node's address on the pod network: the pods' gateway, the control plane.
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
/// Prefix length of the pod network 10.244.0.0/16.
pub const POD_PREFIX: u8 = 16;
/// The cluster DNS server's address (in the service range, as kube-dns's).
pub const DNS_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

/// Runs `ip ARGS`; the error names the command and what `ip` said.
pub fn ip(args: &[&str]) -> Result<(), ClusterError> {
    run("ip", args)
}

/// How long one `ip` or `iptables` command may take before it is killed.
pub const COMMAND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// Runs a program to completion (at most [`COMMAND_TIMEOUT`]), feeding it `stdin`; the
/// error names the command and its stderr.
pub fn run_with_input(
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<(), ClusterError> {
    use std::io::{Read as _, Write as _};
    use std::process::Stdio;
    let command = || format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                ClusterError::Missing(program.to_owned())
            } else {
                ClusterError::Command {
                    command: command(),
                    message: e.to_string(),
                }
            }
        })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        let _ = pipe.write_all(text.as_bytes());
    }
    let deadline = std::time::Instant::now() + COMMAND_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(ClusterError::Command {
                    command: command(),
                    message: format!("did not finish within {}s", COMMAND_TIMEOUT.as_secs()),
                });
            }
            Err(e) => {
                return Err(ClusterError::Command {
                    command: command(),
                    message: e.to_string(),
                })
            }
        }
    };
    let mut stderr = String::new();
    if let Some(pipe) = child.stderr.take() {
        let _ = pipe.take(64 * 1024).read_to_string(&mut stderr);
    }
    if status.success() {
        Ok(())
    } else {
        Err(ClusterError::Command {
            command: command(),
            message: stderr.trim().to_owned(),
        })
    }
}

/// Runs a program to completion; the error names the command and its stderr.
pub fn run(program: &str, args: &[&str]) -> Result<(), ClusterError> {
    run_with_input(program, args, None)
}

/// Network namespaces whose names start with `prefix`.
pub fn list(prefix: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect();
    names.sort();
    names
}

/// Whether `/run/netns` is a mount point now (`ip netns add` makes it one).
pub fn run_netns_mounted() -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|m| {
            m.lines()
                .any(|l| l.split_whitespace().nth(4) == Some("/run/netns"))
        })
        .unwrap_or(false)
}

/// Creates namespace `name` with its loopback up. An existing one is an error: names
/// are unique per cluster and a leftover means an unclean stop (`weir cluster down`).
pub fn add(name: &str) -> Result<(), ClusterError> {
    ip(&["netns", "add", name])?;
    ip(&["-n", name, "link", "set", "lo", "up"])
}

/// Deletes namespace `name` (its links, addresses and iptables rules go with it) and
/// its `/etc/netns/NAME` files. Missing is fine.
pub fn delete(name: &str) -> Result<(), ClusterError> {
    if std::path::Path::new("/run/netns").join(name).exists() {
        ip(&["netns", "del", name])?;
    }
    let etc = std::path::Path::new("/etc/netns").join(name);
    match std::fs::remove_dir_all(&etc) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ClusterError::io(&etc, "remove", e)),
    }
}

/// The node: namespace, bridge `br0` with the pods' gateway address, and the DNS address.
pub fn setup_node(node: &str) -> Result<(), ClusterError> {
    add(node)?;
    ip(&["-n", node, "link", "add", "br0", "type", "bridge"])?;
    ip(&[
        "-n",
        node,
        "addr",
        "add",
        &format!("{NODE_IP}/{POD_PREFIX}"),
        "dev",
        "br0",
    ])?;
    ip(&["-n", node, "link", "set", "br0", "up"])?;
    ip(&[
        "-n",
        node,
        "addr",
        "add",
        &format!("{DNS_IP}/32"),
        "dev",
        "lo",
    ])
}

/// A pod's network: namespace `pod`, a veth pair whose node end (`veth`, at most 15
/// bytes) joins the bridge, `eth0` with `ip`, and the default route through the node.
/// `hosts` and `resolv_conf` become the pod's `/etc/hosts` and `/etc/resolv.conf` for
/// every process started with `ip netns exec`.
pub fn setup_pod(
    node: &str,
    pod: &str,
    veth: &str,
    ip_addr: Ipv4Addr,
    hosts: &str,
    resolv_conf: &str,
) -> Result<(), ClusterError> {
    add(pod)?;
    let etc = std::path::Path::new("/etc/netns").join(pod);
    std::fs::create_dir_all(&etc).map_err(|e| ClusterError::io(&etc, "create", e))?;
    for (file, text) in [("hosts", hosts), ("resolv.conf", resolv_conf)] {
        let path = etc.join(file);
        std::fs::write(&path, text).map_err(|e| ClusterError::io(&path, "write", e))?;
    }
    ip(&[
        "link", "add", veth, "netns", node, "type", "veth", "peer", "name", "eth0", "netns", pod,
    ])?;
    ip(&["-n", node, "link", "set", veth, "master", "br0", "up"])?;
    ip(&[
        "-n",
        pod,
        "addr",
        "add",
        &format!("{ip_addr}/{POD_PREFIX}"),
        "dev",
        "eth0",
    ])?;
    ip(&["-n", pod, "link", "set", "eth0", "up"])?;
    ip(&[
        "-n",
        pod,
        "route",
        "add",
        "default",
        "via",
        &NODE_IP.to_string(),
    ])
}

/// Moves the calling thread into namespace `name`. Threads it starts afterwards are
/// born there too; sockets it makes belong there for their whole life.
pub fn enter(name: &str) -> Result<(), ClusterError> {
    let path = std::path::Path::new("/run/netns").join(name);
    let file = std::fs::File::open(&path).map_err(|e| ClusterError::io(&path, "open", e))?;
    nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
        ClusterError::Command {
            command: format!("setns {}", path.display()),
            message: format!("{e}; entering a network namespace needs root"),
        }
    })
}

/// Runs `f` on a new thread inside namespace `name` and returns its result. The
/// thread ends with `f`, so no pooled thread is ever left in another namespace.
pub fn run_in<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ClusterError> {
    let name = name.to_owned();
    std::thread::spawn(move || {
        enter(&name)?;
        Ok(f())
    })
    .join()
    .map_err(|_| ClusterError::Invalid("a thread inside a network namespace panicked".into()))?
}
