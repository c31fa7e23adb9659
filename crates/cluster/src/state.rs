//! Where a cluster keeps its state on the host, and the records other processes read:
//! `cluster.json` (what the supervisor is doing and where it listens) and one
//! `pod.json` per pod (phase, IP, containers, restarts). The supervisor is the only
//! writer; `weir cluster status`, `weir get pods`, `weir logs` and `weir exec` read.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::ClusterError;

/// Prefix of every network namespace a cluster makes. Nothing else on the host may use
/// it; `weir cluster down` removes what carries it (and the cluster's name).
pub const NETNS_PREFIX: &str = "weirc-";
/// The cluster name when none is given.
pub const DEFAULT_NAME: &str = "local";
/// Where clusters keep their state when no directory is given.
pub const DEFAULT_ROOT: &str = "/var/lib/weir/clusters";

/// The paths of one cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Paths {
    /// The cluster's name.
    pub name: String,
    /// Its state directory.
    pub dir: PathBuf,
}

impl Paths {
    /// The paths of cluster `name` under `root` (default [`DEFAULT_ROOT`]).
    pub fn new(name: &str, root: Option<&Path>) -> Result<Paths, ClusterError> {
        let ok = !name.is_empty()
            && name.len() <= 16
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !name.starts_with('-');
        if !ok {
            return Err(ClusterError::Invalid(format!(
                "cluster name {name:?}: use 1 to 16 lowercase letters, digits or '-', e.g. local"
            )));
        }
        let root = root.map_or_else(|| PathBuf::from(DEFAULT_ROOT), Path::to_path_buf);
        Ok(Paths {
            name: name.to_owned(),
            dir: root.join(name),
        })
    }

    /// Prefix of this cluster's network namespaces. It ends with `.`, which cluster
    /// names cannot hold, so cluster `local` never claims `local-2`'s namespaces.
    pub fn netns_prefix(&self) -> String {
        format!("{NETNS_PREFIX}{}.", self.name)
    }
    /// The node's network namespace (bridge, DNS, control plane).
    pub fn node_netns(&self) -> String {
        format!("{}node", self.netns_prefix())
    }
    /// A pod's network namespace.
    pub fn pod_netns(&self, namespace: &str, pod: &str) -> String {
        format!("{}{namespace}.{pod}", self.netns_prefix())
    }
    /// `cluster.json`.
    pub fn cluster_file(&self) -> PathBuf {
        self.dir.join("cluster.json")
    }
    /// The supervisor's log.
    pub fn supervisor_log(&self) -> PathBuf {
        self.dir.join("supervisor.log")
    }
    /// The lock file the supervisor holds while it runs.
    pub fn lock_file(&self) -> PathBuf {
        self.dir.join("lock")
    }
    /// The control plane's state directory.
    pub fn control_dir(&self) -> PathBuf {
        self.dir.join("control")
    }
    /// All pods.
    pub fn pods_dir(&self) -> PathBuf {
        self.dir.join("pods")
    }
    /// One pod's directory.
    pub fn pod_dir(&self, namespace: &str, pod: &str) -> PathBuf {
        self.pods_dir().join(namespace).join(pod)
    }
    /// Add-on files (Prometheus's configuration).
    pub fn addons_dir(&self) -> PathBuf {
        self.dir.join("addons")
    }
}

/// What the supervisor is doing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Phase {
    /// Creating the network and the control plane.
    Starting,
    /// Serving.
    Ready,
    /// Stopping pods.
    Stopping,
    /// It could not start; the message says why.
    Failed(String),
}

/// `cluster.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterInfo {
    /// The cluster's name.
    pub name: String,
    /// What the supervisor is doing.
    pub phase: Phase,
    /// The supervisor's pid and its start time (clock ticks since boot, from
    /// `/proc/PID/stat`), so a reused pid is never taken for it.
    pub supervisor: Option<ProcessId>,
    /// The control plane's API on the host (`weir apply --control`).
    pub api: String,
    /// The node's address on the pod network (control plane gRPC and metrics).
    pub node_ip: Ipv4Addr,
    /// The cluster DNS server's address.
    pub dns_ip: Ipv4Addr,
    /// Host address of the ingress gateway.
    pub ingress_host: String,
    /// Host port forwarded to the ingress gateway's HTTP port (0: none).
    pub ingress_http_port: u16,
    /// Host port forwarded to the ingress gateway's TCP port (0: none).
    pub ingress_tcp_port: u16,
    /// Whether `/run/netns` was a mount point before the cluster made it one.
    pub run_netns_was_mounted: bool,
}

/// A process and its start time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessId {
    /// The pid.
    pub pid: i32,
    /// Start time in clock ticks since boot.
    pub start: u64,
}

impl ProcessId {
    /// This process.
    pub fn current() -> Option<ProcessId> {
        let pid = i32::try_from(std::process::id()).ok()?;
        ProcessId::of(pid)
    }

    /// `pid` as it is now, if it runs.
    pub fn of(pid: i32) -> Option<ProcessId> {
        start_time(pid).map(|start| ProcessId { pid, start })
    }

    /// Whether this very process still runs (same pid, same start time).
    pub fn alive(&self) -> bool {
        start_time(self.pid) == Some(self.start)
    }
}

/// Field 22 of `/proc/PID/stat`: the start time; `None` for a zombie (it has exited;
/// only its parent has not collected it yet). The command name (field 2) may hold
/// spaces and parentheses, so fields are counted after its closing parenthesis.
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    if fields.next()? == "Z" {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

/// A pod as the supervisor last recorded it (`pods/<ns>/<pod>/pod.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodRecord {
    /// Pod name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Owning Deployment.
    pub deployment: String,
    /// Network namespace.
    pub netns: String,
    /// Pod IP.
    pub ip: Ipv4Addr,
    /// `Pending`, `Running`, `CrashLoopBackOff`, `Error`, `Terminating`.
    pub phase: String,
    /// Whether every container is ready.
    pub ready: bool,
    /// Why it is not running, when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Whether it runs weir's sidecar.
    pub sidecar: bool,
    /// Its labels.
    pub labels: std::collections::BTreeMap<String, String>,
    /// Containers, the sidecar (`istio-proxy`) first when there is one.
    pub containers: Vec<ContainerRecord>,
    /// When it was created (seconds since the epoch).
    pub created: u64,
}

/// One container of a [`PodRecord`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerRecord {
    /// Container name.
    pub name: String,
    /// The command it runs (program and arguments).
    pub command: Vec<String>,
    /// Its environment (as given to the program; secrets resolved).
    pub env: Vec<(String, String)>,
    /// Whether it is running.
    pub running: bool,
    /// Whether it is ready.
    pub ready: bool,
    /// How many times it was restarted.
    pub restarts: u32,
    /// The last exit status, as text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<String>,
}

impl PodRecord {
    /// Restarts over all containers.
    pub fn restarts(&self) -> u32 {
        self.containers.iter().map(|c| c.restarts).sum()
    }
    /// `READY` as kubectl prints it, e.g. `2/2`.
    pub fn ready_column(&self) -> String {
        let ready = self.containers.iter().filter(|c| c.ready).count();
        format!("{ready}/{}", self.containers.len())
    }
}

/// Writes `value` as JSON to `path` atomically (a reader sees the old or the new file).
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), ClusterError> {
    let text = serde_json::to_vec_pretty(value)
        .map_err(|e| ClusterError::Invalid(format!("cannot encode {}: {e}", path.display())))?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text).map_err(|e| ClusterError::io(&tmp, "write", e))?;
    std::fs::rename(&tmp, path).map_err(|e| ClusterError::io(path, "replace", e))
}

/// Reads a JSON file written by [`write_json`]; `None` when it does not exist.
pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>, ClusterError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            ClusterError::Invalid(format!(
                "{} is not a valid cluster record ({e}); run `weir cluster down` to reset the cluster",
                path.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ClusterError::io(path, "read", e)),
    }
}

/// Every pod record of the cluster, sorted by namespace and name.
pub fn pods(paths: &Paths) -> Result<Vec<PodRecord>, ClusterError> {
    let mut out = Vec::new();
    let Ok(namespaces) = std::fs::read_dir(paths.pods_dir()) else {
        return Ok(out);
    };
    for ns in namespaces.flatten() {
        let Ok(pods) = std::fs::read_dir(ns.path()) else {
            continue;
        };
        for pod in pods.flatten() {
            // A record being replaced or damaged hides one pod, not the whole list.
            if let Ok(Some(record)) = read_json::<PodRecord>(&pod.path().join("pod.json")) {
                out.push(record);
            }
        }
    }
    out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_netns_carry_the_prefix() {
        let p = Paths::new("local", Some(Path::new("/tmp/x"))).unwrap();
        assert_eq!(p.dir, PathBuf::from("/tmp/x/local"));
        assert_eq!(p.node_netns(), "weirc-local.node");
        let other = Paths::new("local-2", None).unwrap();
        assert!(!other.node_netns().starts_with(&p.netns_prefix()));
        assert_eq!(
            p.pod_netns("default", "ratings-v1-abc"),
            "weirc-local.default.ratings-v1-abc"
        );
        for bad in ["", "Local", "a/b", "-x", "toolongtoolongtoolong"] {
            let err = Paths::new(bad, None).unwrap_err().to_string();
            assert!(err.contains("lowercase"), "{bad}: {err}");
        }
    }

    #[test]
    fn this_process_is_alive_and_a_changed_start_time_is_not() {
        let me = ProcessId::current().unwrap();
        assert!(me.alive());
        let other = ProcessId {
            start: me.start + 1,
            ..me
        };
        assert!(!other.alive());
    }

    #[test]
    fn an_exited_child_not_yet_collected_is_not_alive() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while ProcessId::of(pid).is_some() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(ProcessId::of(pid), None, "a zombie counts as gone");
        child.wait().unwrap();
    }

    #[test]
    fn records_round_trip_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.json");
        assert_eq!(read_json::<ClusterInfo>(&path).unwrap(), None);
        let info = ClusterInfo {
            name: "t".into(),
            phase: Phase::Failed("port 15080 is in use".into()),
            supervisor: ProcessId::current(),
            api: "127.0.0.1:15080".into(),
            node_ip: Ipv4Addr::new(10, 244, 0, 1),
            dns_ip: Ipv4Addr::new(10, 96, 0, 10),
            ingress_host: "127.0.0.1".into(),
            ingress_http_port: 8080,
            ingress_tcp_port: 31400,
            run_netns_was_mounted: true,
        };
        write_json(&path, &info).unwrap();
        assert_eq!(read_json::<ClusterInfo>(&path).unwrap(), Some(info));
        std::fs::write(&path, "{").unwrap();
        let err = read_json::<ClusterInfo>(&path).unwrap_err().to_string();
        assert!(err.contains("weir cluster down"), "{err}");
    }
}
