//! The `bookinfo` binary as the local cluster runs it: arguments and environment as in
//! Istio's manifests, real processes, loopback ports.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_bookinfo");

/// Stops the process if the test ends early: SIGTERM first, so `bookinfo mysqldb`
/// can stop its MariaDB child (SIGKILL would leave that running), then SIGKILL.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        if let (Ok(None), Some(pid)) = (self.0.try_wait(), self.0.id()) {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while matches!(self.0.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = self.0.start_kill();
    }
}

fn start(args: &[&str], env: &[(&str, &str)]) -> Process {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    Process(cmd.spawn().expect("spawn bookinfo"))
}

/// Polls until `port` accepts a connection, or panics after `limit`.
async fn wait_port(port: u16, limit: Duration) -> TcpStream {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(s) = TcpStream::connect(("127.0.0.1", port)).await {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "port {port} not accepting after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn tcp_echo_with_the_images_arguments() {
    let (a, b) = (common::closed_port().await, common::closed_port().await);
    let ports = format!("{a},{b}");
    let _p = start(&["tcp-echo", &ports, "hello"], &[]);
    for port in [a, b] {
        let s = wait_port(port, Duration::from_secs(10)).await;
        let (r, mut w) = s.into_split();
        w.write_all(b"world\n").await.unwrap();
        let mut line = String::new();
        tokio::time::timeout(
            Duration::from_secs(10),
            BufReader::new(r).read_line(&mut line),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(line, "hello world\n");
    }
}

#[tokio::test]
async fn bad_arguments_exit_with_a_clear_message() {
    let out = Command::new(BIN)
        .args(["tcp-echo", "90x0", "hello"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("\"90x0\" is not a list of ports; fix: pass comma-separated port numbers"),
        "{err}"
    );
    let out = Command::new(BIN)
        .args(["reviews", "--port", "1"])
        .env("SERVICE_VERSION", "v7")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("SERVICE_VERSION=\"v7\" is not a reviews version; fix: use v1, v2 or v3"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysqldb_serves_ratings_and_stops_cleanly_on_sigterm() {
    assert!(
        Path::new("/usr/sbin/mariadbd").is_file() || Path::new("/usr/bin/mariadbd").is_file(),
        "mariadbd is missing: install it with `apt-get install mariadb-server`"
    );
    let dir = tempfile::tempdir().unwrap();
    let datadir = dir.path().join("mysql");
    let db_port = common::closed_port().await;
    let db_port_s = db_port.to_string();
    let mut db = start(
        &[
            "mysqldb",
            "--data-dir",
            datadir.to_str().unwrap(),
            "--port",
            &db_port_s,
            "--bind-address",
            "127.0.0.1",
            // As in bookinfo-mysql.yaml.
            "--default-authentication-plugin",
            "mysql_native_password",
        ],
        &[("MYSQL_ROOT_PASSWORD", "password")],
    );
    let http_port = common::closed_port().await;
    let http_port_s = http_port.to_string();
    let _ratings = start(
        &[
            "ratings",
            "--version",
            "v2",
            "--port",
            &http_port_s,
            "--address",
            "127.0.0.1",
        ],
        &[
            ("DB_TYPE", "mysql"),
            ("MYSQL_DB_HOST", "127.0.0.1"),
            ("MYSQL_DB_PORT", &db_port_s),
            ("MYSQL_DB_USER", "root"),
            ("MYSQL_DB_PASSWORD", "password"),
        ],
    );
    wait_port(http_port, Duration::from_secs(10)).await;
    // The database is ready once ratings answers from it.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (status, body) = common::get(http_port, "/ratings/0").await;
        if status == 200 {
            assert_eq!(body, r#"{"id":0,"ratings":{"Reviewer1":5,"Reviewer2":4}}"#);
            break;
        }
        assert_eq!(body, r#"{"error":"could not connect to ratings database"}"#);
        assert!(
            Instant::now() < deadline,
            "MariaDB not serving ratings after 90 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let pid = db.0.id().expect("pid").to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(60), db.0.wait())
        .await
        .expect("bookinfo mysqldb did not stop within 60 s of SIGTERM")
        .unwrap();
    assert!(status.success(), "{status}");
    // mariadbd removes its pid file on a clean shutdown.
    assert!(!datadir.join("mariadbd.pid").exists());
}
