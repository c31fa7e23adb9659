//! A container is a process group started inside its pod's network namespace with
//! `ip netns exec` (which also gives it the pod's `/etc/resolv.conf` and `/etc/hosts`),
//! with exactly the environment its manifest gives, its output appended to a log file
//! (the previous instance's kept as `.log.1`, as `kubectl logs --previous`), and a
//! restart schedule with backoff when it exits.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

use crate::ClusterError;

/// Largest log kept per container instance; beyond it the file is cut in half, oldest
/// half first, so a chatty program cannot fill the disk.
pub const MAX_LOG_BYTES: u64 = 16 * 1024 * 1024;

/// What to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Launch {
    /// The pod's network namespace.
    pub netns: String,
    /// Program and arguments.
    pub command: Vec<String>,
    /// The whole environment.
    pub env: Vec<(String, String)>,
    /// Working directory.
    pub dir: PathBuf,
    /// Log file.
    pub log: PathBuf,
}

/// Starts `launch` as a new process group. The last log becomes `<log>.1`.
pub fn spawn(launch: &Launch) -> Result<Child, ClusterError> {
    let Some((program, args)) = launch.command.split_first() else {
        return Err(ClusterError::Invalid(
            "a container with an empty command".into(),
        ));
    };
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&launch.log)
        .map_err(|e| ClusterError::io(&launch.log, "open", e))?;
    let err = log
        .try_clone()
        .map_err(|e| ClusterError::io(&launch.log, "open", e))?;
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &launch.netns])
        .arg(program)
        .args(args)
        .env_clear()
        .envs(launch.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&launch.dir)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .process_group(0)
        .kill_on_drop(false);
    cmd.spawn().map_err(|e| ClusterError::Command {
        command: format!(
            "ip netns exec {} {}",
            launch.netns,
            launch.command.join(" ")
        ),
        message: e.to_string(),
    })
}

/// Stops a container: SIGTERM to its group, then SIGKILL after `grace`.
pub async fn stop(child: &mut Child, grace: Duration) {
    let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) else {
        return; // already reaped
    };
    let group = Pid::from_raw(pid);
    let _ = killpg(group, Signal::SIGTERM);
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        let _ = killpg(group, Signal::SIGKILL);
        let _ = child.wait().await;
    }
    // Children the program left behind in its group (e.g. mariadbd under mysqldb).
    let _ = killpg(group, Signal::SIGKILL);
}

/// Makes `<log>` the previous instance's log, `<log>.1` (`weir logs --previous`).
pub fn rotate_log(log: &Path) {
    if log.exists() {
        let _ = std::fs::rename(log, log.with_extension("log.1"));
    }
}

/// Keeps a log at most [`MAX_LOG_BYTES`]: beyond it only the newest half is kept (from
/// a line start), read from the end of the file so memory stays bounded.
pub fn trim_log(path: &Path) {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let Ok(meta) = std::fs::metadata(path) else {
        return;
    };
    if meta.len() <= MAX_LOG_BYTES {
        return;
    }
    let Ok(mut file) = std::fs::File::open(path) else {
        return;
    };
    let keep = MAX_LOG_BYTES / 2;
    if file.seek(SeekFrom::End(-(keep as i64))).is_err() {
        return;
    }
    let mut tail = Vec::with_capacity(keep as usize);
    if file.take(keep).read_to_end(&mut tail).is_err() {
        return;
    }
    let start = tail.iter().position(|&b| b == b'\n').map_or(0, |i| i + 1);
    // The program keeps appending through its own descriptor (O_APPEND), so truncating
    // and rewriting in place keeps its output in this file.
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
    {
        let _ = std::io::Write::write_all(&mut f, &tail[start..]);
    }
}

/// Kubernetes' restart backoff: 1 s doubling to 30 s here (Kubernetes caps at 5 min;
/// a local cluster wants quicker feedback), reset after 10 minutes of running.
#[derive(Clone, Debug, Default)]
pub struct Backoff {
    failures: u32,
}

impl Backoff {
    /// Longest delay.
    pub const MAX: Duration = Duration::from_secs(30);
    /// A run this long resets the delay.
    pub const RESET_AFTER: Duration = Duration::from_secs(600);

    /// The delay before the next start, after a run of `ran`.
    pub fn next(&mut self, ran: Duration) -> Duration {
        if ran >= Self::RESET_AFTER {
            self.failures = 0;
        }
        let delay = Duration::from_secs(1u64 << self.failures.min(5)).min(Self::MAX);
        self.failures = self.failures.saturating_add(1);
        delay
    }
}

/// How a process ended, as `kubectl describe` says it.
pub fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => match Signal::try_from(sig) {
            Ok(s) => format!("killed by {s}"),
            Err(_) => format!("killed by signal {sig}"),
        },
        _ => "ended".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_thirty_seconds_and_resets_after_a_long_run() {
        let mut b = Backoff::default();
        let short = Duration::from_secs(1);
        let delays: Vec<u64> = (0..7).map(|_| b.next(short).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(b.next(Duration::from_secs(601)).as_secs(), 1);
        assert_eq!(b.next(short).as_secs(), 2);
    }

    #[test]
    fn exits_are_described_as_kubectl_does() {
        use std::os::unix::process::ExitStatusExt as _;
        let code = std::process::ExitStatus::from_raw(3 << 8);
        assert_eq!(describe_exit(code), "exit code 3");
        let killed = std::process::ExitStatus::from_raw(9);
        assert_eq!(describe_exit(killed), "killed by SIGKILL");
    }

    #[test]
    fn big_logs_lose_their_older_half_at_a_line_boundary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.log");
        let line = "x".repeat(99) + "\n";
        let lines = (MAX_LOG_BYTES / 100 + 10) as usize;
        std::fs::write(&path, line.repeat(lines)).unwrap();
        trim_log(&path);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.len() as u64 <= MAX_LOG_BYTES / 2);
        assert!(text.starts_with('x') && text.ends_with('\n'));
    }
}
