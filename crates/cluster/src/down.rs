//! Removing a cluster, gracefully when its supervisor runs and completely in any case:
//! every process inside its namespaces, its namespaces and their `/etc/netns` files,
//! the `/run/netns` mount point if the cluster made it, and its state directory.
//! Idempotent; `weir cluster up` runs it first to clear what a crash left behind.

use std::os::unix::fs::MetadataExt as _;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::netns;
use crate::state::{self, ClusterInfo, Paths};
use crate::ClusterError;

/// What [`down`] removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Removed {
    /// Network namespaces.
    pub namespaces: usize,
    /// Processes that had to be killed (beyond the supervisor's own clean stop).
    pub processes: usize,
    /// Whether a state directory was removed.
    pub state_dir: bool,
}

impl std::fmt::Display for Removed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "removed {} network namespace{}, {} leftover process{}, {} state director{}",
            self.namespaces,
            if self.namespaces == 1 { "" } else { "s" },
            self.processes,
            if self.processes == 1 { "" } else { "es" },
            usize::from(self.state_dir),
            if self.state_dir { "y" } else { "ies" },
        )
    }
}

/// Stops and removes cluster `paths`. `grace` bounds the supervisor's clean stop.
pub fn down(paths: &Paths, grace: Duration) -> Result<Removed, ClusterError> {
    crate::require_root()?;
    let info: Option<ClusterInfo> = state::read_json(&paths.cluster_file()).unwrap_or(None);
    let mut removed = Removed::default();
    // 1. The supervisor stops its pods (apps, then sidecars, which flush their metrics).
    if let Some(sup) = info.as_ref().and_then(|i| i.supervisor) {
        if sup.alive() {
            let _ = kill(Pid::from_raw(sup.pid), Signal::SIGTERM);
            let deadline = Instant::now() + grace;
            while sup.alive() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            if sup.alive() {
                let _ = kill(Pid::from_raw(sup.pid), Signal::SIGKILL);
                removed.processes += 1;
            }
        }
    }
    // 2. Whatever still runs inside the cluster's namespaces (after a crash, or a child
    //    that escaped its group) is killed: TERM, a moment, then KILL.
    let names = netns::list(&paths.netns_prefix());
    let inodes: Vec<u64> = names
        .iter()
        .filter_map(|n| std::fs::metadata(format!("/run/netns/{n}")).ok())
        .map(|m| m.ino())
        .collect();
    let victims = processes_in(&inodes);
    removed.processes += victims.len();
    for pid in &victims {
        let _ = kill(Pid::from_raw(*pid), Signal::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline && victims.iter().any(|p| alive(*p)) {
        std::thread::sleep(Duration::from_millis(50));
    }
    for pid in victims.iter().filter(|p| alive(**p)) {
        let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
    }
    // 3. Namespaces (their links, addresses and iptables rules go with them).
    for name in &names {
        netns::delete(name)?;
        removed.namespaces += 1;
    }
    if let Ok(entries) = std::fs::read_dir("/etc/netns") {
        for e in entries.flatten() {
            if e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(&paths.netns_prefix()))
            {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    // `ip netns add` turns /run/netns into a mount point the first time; undo that
    // only if the cluster did it and nothing else uses it now.
    if let Some(info) = &info {
        if !info.run_netns_was_mounted && netns::run_netns_mounted() && netns::list("").is_empty() {
            let _ = netns::run("umount", &["/run/netns"]);
        }
    }
    // 4. The state directory.
    if paths.dir.exists() {
        std::fs::remove_dir_all(&paths.dir)
            .map_err(|e| ClusterError::io(&paths.dir, "remove", e))?;
        removed.state_dir = true;
    }
    Ok(removed)
}

fn alive(pid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Pids whose network namespace is one of `inodes`.
fn processes_in(inodes: &[u64]) -> Vec<i32> {
    if inodes.is_empty() {
        return Vec::new();
    }
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::metadata(format!("/proc/{pid}/ns/net"))
                .map(|m| inodes.contains(&m.ino()))
                .unwrap_or(false)
        })
        .collect()
}
