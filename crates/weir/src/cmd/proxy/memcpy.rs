//! Keeps glibc's `memcpy` off `rep movsb` on AMD processors.
//!
//! On AMD Zen cores, `rep movsb` copies some 20 times slower when the destination sits
//! less than half a 64-byte line past the source (glibc bug 30994). glibc 2.36, the
//! version Debian 12 ships, still uses it for every copy of a few KiB and up; later
//! releases stopped doing so on AMD processors. rustls copies each decrypted record
//! into a fresh allocation, so a receiving mTLS sidecar meets that case on about half
//! its records: in the benchmark, that one copy took a fifth of the proxies' core
//! (BENCHMARKS.md). glibc reads its tunables once, before `main`, so the proxy execs
//! itself again with `glibc.cpu.x86_rep_movsb_threshold` raised past any copy it makes.
//! A threshold the operator set is kept as it is.

use std::ffi::{OsStr, OsString};
use std::io;

/// The environment variable glibc reads its tunables from.
const TUNABLES: &str = "GLIBC_TUNABLES";
/// The tunable that decides from which size `memcpy` uses `rep movsb`.
const KEY: &str = "glibc.cpu.x86_rep_movsb_threshold";
/// 1 GiB: larger than any copy the proxy makes, so `rep movsb` is never used.
const THRESHOLD: &str = "1073741824";

/// What [`ensure`] did when it returned (on success it does not return: the process
/// image is replaced).
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing to do: not an AMD processor, not glibc on x86-64, or the tunable is set.
    Unneeded,
    /// The exec failed; the proxy runs with glibc's default copy strategy.
    Failed(String),
}

/// Replaces the process with itself, run with the tunable added, when this machine
/// needs it. Call before any thread starts or any file is opened.
pub fn ensure() -> Outcome {
    if !cfg!(all(target_arch = "x86_64", target_env = "gnu")) {
        return Outcome::Unneeded;
    }
    let current = std::env::var_os(TUNABLES);
    let amd = || is_amd(&std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default());
    let Some(tunables) = with_threshold(current.as_deref(), amd) else {
        return Outcome::Unneeded;
    };
    Outcome::Failed(reexec(&tunables).to_string())
}

/// Execs the running binary with the same arguments and `GLIBC_TUNABLES` set; returns
/// only on failure. The binary is named by its path, not `/proc/self/exe`, because the
/// kernel names the process after the file exec'd: `ps`, `pgrep weir-proxy` and
/// `pkill` would otherwise see `exe`.
fn reexec(tunables: &OsStr) -> io::Error {
    use std::os::unix::process::CommandExt as _;
    let path = match std::env::current_exe() {
        Ok(path) if path.is_file() => path,
        // Replaced or removed since it started (an upgrade): run on as it is.
        Ok(path) => {
            return io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} is no longer there", path.display()),
            )
        }
        Err(e) => return e,
    };
    let mut args = std::env::args_os();
    let mut command = std::process::Command::new(path);
    if let Some(arg0) = args.next() {
        command.arg0(arg0);
    }
    command.args(args).env(TUNABLES, tunables).exec()
}

/// True when the first processor in `/proc/cpuinfo` is AMD's (or Hygon's, the same
/// cores) and has `rep movsb` fast enough that glibc picks it (`erms`).
fn is_amd(cpuinfo: &str) -> bool {
    let first = cpuinfo.split("\n\n").next().unwrap_or_default();
    let field = |name: &str| {
        first.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            (key.trim() == name).then(|| value.trim())
        })
    };
    let vendor = matches!(field("vendor_id"), Some("AuthenticAMD" | "HygonGenuine"));
    let erms = field("flags").is_some_and(|flags| flags.split_whitespace().any(|f| f == "erms"));
    vendor && erms
}

/// The `GLIBC_TUNABLES` value to exec with, or `None` when the process should run as
/// it is: the threshold is already set (by the operator, or by the exec that started
/// this process), or `amd` says the processor is not affected. `amd` is asked only
/// when needed, so the process the exec starts does not read `/proc/cpuinfo` again.
fn with_threshold(current: Option<&OsStr>, amd: impl FnOnce() -> bool) -> Option<OsString> {
    let current = current.filter(|c| !c.is_empty());
    let set = current.is_some_and(|c| {
        c.to_string_lossy()
            .split(':')
            .any(|entry| entry.split_once('=').is_some_and(|(key, _)| key == KEY))
    });
    if set || !amd() {
        return None;
    }
    let setting = format!("{KEY}={THRESHOLD}");
    Some(match current {
        None => setting.into(),
        Some(current) => {
            let mut value = current.to_owned();
            value.push(":");
            value.push(setting);
            value
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const AMD: &str =
        "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 erms fsrm\n\n\
                       processor\t: 1\nvendor_id\t: AuthenticAMD\n";
    const INTEL: &str = "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu erms fsrm\n";

    #[test]
    fn only_amd_processors_with_erms_are_affected() {
        assert!(is_amd(AMD));
        assert!(!is_amd(INTEL));
        assert!(!is_amd("vendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2\n"));
        assert!(is_amd("vendor_id : HygonGenuine\nflags : erms\n"));
        assert!(!is_amd(""));
    }

    #[test]
    fn the_threshold_is_added_once_and_an_operators_value_is_kept() {
        let ours = format!("{KEY}={THRESHOLD}");
        assert_eq!(with_threshold(None, || true), Some(OsString::from(&ours)));
        assert_eq!(
            with_threshold(Some(OsStr::new("")), || true),
            Some(OsString::from(&ours))
        );
        assert_eq!(
            with_threshold(Some(OsStr::new("glibc.malloc.arena_max=2")), || true),
            Some(OsString::from(format!("glibc.malloc.arena_max=2:{ours}")))
        );
        // Already set: by the exec that started this process, or by the operator.
        assert_eq!(with_threshold(Some(OsStr::new(&ours)), || true), None);
        let operator = format!("glibc.malloc.arena_max=2:{KEY}=8192");
        assert_eq!(with_threshold(Some(OsStr::new(&operator)), || true), None);
        // A key that only starts the same is a different tunable.
        let other = format!("{KEY}_x=1");
        assert_eq!(
            with_threshold(Some(OsStr::new(&other)), || true),
            Some(OsString::from(format!("{other}:{ours}")))
        );
        assert_eq!(with_threshold(None, || false), None);
        // Already set: the processor is not asked about.
        assert_eq!(
            with_threshold(Some(OsStr::new(&ours)), || unreachable!()),
            None
        );
    }
}
