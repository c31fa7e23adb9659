//! A real MariaDB server (the OS package) in a pod: a throwaway datadir bootstrapped with
//! `mariadb-install-db`, `mariadbd` run as root on `0.0.0.0:3306`, a user `weir`/`weir`
//! reachable over TCP and a small table `test.ratings`.

use std::process::{Command, Stdio};
use std::time::Duration;

use super::http::eventually;
use super::process::ChildGuard;
use super::sidecar::Env;

/// Port MariaDB listens on.
pub const PORT: u16 = 3306;

/// A running MariaDB.
pub struct MariaDb {
    /// The server process.
    pub child: ChildGuard,
    socket: String,
}

/// What `test.ratings` holds.
pub const ROWS: &str = "1\t5\n2\t4\n";

impl MariaDb {
    /// Bootstraps a datadir in the temp dir and starts `mariadbd` inside pod `pod`.
    pub fn start(env: &Env, pod: &str) -> Self {
        let dir = env.path("mariadb");
        let data = dir.join("data");
        // A private tmpdir: concurrent bootstraps sharing /tmp collide on temp tables.
        let tmp = dir.join("tmp");
        std::fs::create_dir_all(&tmp).expect("mariadb dir");
        let install = Command::new("mariadb-install-db")
            .args([
                "--no-defaults",
                &format!("--datadir={}", data.display()),
                &format!("--tmpdir={}", tmp.display()),
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--user=root",
            ])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run mariadb-install-db ({e}); apt-get install mariadb-server")
            });
        assert!(
            install.status.success(),
            "mariadb-install-db failed: {}{}",
            String::from_utf8_lossy(&install.stdout),
            String::from_utf8_lossy(&install.stderr)
        );
        let socket = dir.join("mysqld.sock").display().to_string();
        let args = [
            "mariadbd".to_owned(),
            "--no-defaults".to_owned(),
            "--user=root".to_owned(),
            format!("--datadir={}", data.display()),
            format!("--tmpdir={}", tmp.display()),
            format!("--socket={socket}"),
            format!("--pid-file={}", dir.join("mysqld.pid").display()),
            format!("--port={PORT}"),
            "--bind-address=0.0.0.0".to_owned(),
            "--skip-name-resolve".to_owned(),
            "--skip-log-bin".to_owned(),
            "--innodb-buffer-pool-size=16M".to_owned(),
            format!("--log-error={}", dir.join("error.log").display()),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut child = env.spawn("mariadbd", Some(pod), &args);
        let sock = socket.clone();
        eventually(
            "mariadbd accepts connections",
            Duration::from_secs(60),
            || {
                child.assert_running();
                let out = sql_socket(&sock, "SELECT 1")?;
                if out.trim() == "1" {
                    Ok(())
                } else {
                    Err(out)
                }
            },
        );
        sql_socket(
            &socket,
            "CREATE DATABASE test; \
             CREATE USER 'weir'@'%' IDENTIFIED BY 'weir'; \
             GRANT ALL ON test.* TO 'weir'@'%'; \
             CREATE TABLE test.ratings (id INT PRIMARY KEY, stars INT NOT NULL); \
             INSERT INTO test.ratings VALUES (1, 5), (2, 4);",
        )
        .unwrap_or_else(|e| panic!("set up MariaDB: {e}"));
        Self { child, socket }
    }

    /// Runs SQL as root over the server's Unix socket (no network involved).
    pub fn sql(&self, statement: &str) -> Result<String, String> {
        sql_socket(&self.socket, statement)
    }
}

fn sql_socket(socket: &str, statement: &str) -> Result<String, String> {
    let out = Command::new("mariadb")
        .args([
            "--no-defaults",
            &format!("--socket={socket}"),
            "-uroot",
            "-N",
            "-B",
            "-e",
            statement,
        ])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run mariadb ({e}); apt-get install mariadb-client"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}
