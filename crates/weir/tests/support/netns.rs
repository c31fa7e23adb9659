//! Network namespaces made by a test and removed when it ends (even on panic), a
//! bridge-and-veth topology of pods, and running code inside a namespace (a namespace
//! belongs to a thread, so each call gets its own thread).

use std::fs::File;
use std::net::Ipv4Addr;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::JoinHandle;

use nix::sched::{setns, CloneFlags};

/// Every name this harness creates starts with this, then `<pid>-<n>-`.
pub const PREFIX: &str = "weir-t";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Runs `ip ARGS`, panicking with its stderr on failure.
pub fn ip(args: &[&str]) -> Output {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run `ip` ({e}); apt-get install iproute2"));
    assert!(
        out.status.success(),
        "`ip {}` failed: {}; these tests need root",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    out
}

/// Deletes namespaces left by an earlier run of this harness that crashed: names
/// `weir-t<pid>-...` whose process no longer exists.
pub fn remove_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or("");
        let alive = pid
            .parse::<u32>()
            .is_ok_and(|p| std::path::Path::new(&format!("/proc/{p}")).exists());
        if !alive {
            let _ = Command::new("ip")
                .args(["netns", "del", name])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `name` with `lo` up.
    pub fn new(name: String) -> Self {
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        ip(&["netns", "add", &name]);
        let ns = Self { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    /// The namespace's name (for `ip netns exec`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `f` on a new thread inside this namespace and waits for it.
    pub fn run<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> R {
        match self.spawn(f).join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// Starts `f` on a new thread inside this namespace. Threads it spawns inherit the
    /// namespace.
    pub fn spawn<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> JoinHandle<R> {
        let path = format!("/run/netns/{}", self.name);
        std::thread::Builder::new()
            .name(format!("in-{}", self.name))
            .spawn(move || {
                let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
                setns(&file, CloneFlags::CLONE_NEWNET)
                    .unwrap_or_else(|e| panic!("setns {path}: {e}"));
                f()
            })
            .expect("spawn thread")
    }

    /// Runs a command inside the namespace to completion.
    pub fn exec(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("ip netns exec {} {args:?}: {e}", self.name))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// A pod: a namespace with one veth `eth0` into the topology's bridge.
#[derive(Debug)]
pub struct Pod {
    /// Short name (`client`, `server`, ...).
    pub name: String,
    /// The namespace.
    pub netns: Netns,
    /// Its address on the pod network.
    pub ip: Ipv4Addr,
}

/// Pods on one bridge, in a subnet `10.248.<n>.0/24`, plus a route for service VIPs
/// (`10.96.0.0/16`) on every pod. Dropping it removes every namespace (pods first).
#[derive(Debug)]
pub struct Topology {
    /// Name prefix of every namespace, `weir-t<pid>-<n>`.
    pub prefix: String,
    /// Pods, in creation order.
    pub pods: Vec<Pod>,
    bridge: Netns,
    subnet: u8,
}

/// Where service VIPs are allocated from; every pod routes it to its `eth0`.
pub const VIP_NET: &str = "10.96.0.0/16";

impl Topology {
    /// Creates a bridge and one pod per name, addressed `10.248.<n>.(10 + i)`.
    pub fn new(pods: &[&str]) -> Self {
        remove_stale();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("{PREFIX}{}-{n}", std::process::id());
        let subnet = u8::try_from(n % 200).unwrap_or(0);
        let bridge = Netns::new(format!("{prefix}-br"));
        ip(&["-n", bridge.name(), "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", bridge.name(), "link", "set", "br0", "up"]);
        let mut topo = Self {
            prefix,
            pods: Vec::new(),
            bridge,
            subnet,
        };
        for name in pods {
            topo.add_pod(name);
        }
        topo
    }

    /// Adds a pod.
    pub fn add_pod(&mut self, name: &str) -> &Pod {
        let i = self.pods.len();
        let netns = Netns::new(format!("{}-{name}", self.prefix));
        let host_end = format!("v{i}");
        ip(&[
            "-n",
            self.bridge.name(),
            "link",
            "add",
            &host_end,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            netns.name(),
        ]);
        ip(&[
            "-n",
            self.bridge.name(),
            "link",
            "set",
            &host_end,
            "master",
            "br0",
            "up",
        ]);
        let addr = Ipv4Addr::new(10, 248, self.subnet, 10 + u8::try_from(i).unwrap_or(0));
        ip(&[
            "-n",
            netns.name(),
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", netns.name(), "link", "set", "eth0", "up"]);
        ip(&["-n", netns.name(), "route", "add", VIP_NET, "dev", "eth0"]);
        self.pods.push(Pod {
            name: name.to_owned(),
            netns,
            ip: addr,
        });
        self.pods.last().expect("just pushed")
    }

    /// The pod called `name`.
    pub fn pod(&self, name: &str) -> &Pod {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no pod {name}"))
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        // Pods go first (their veths go with them), then the bridge.
        self.pods.clear();
    }
}
