//! What Istio's `examples-bookinfo-mysqldb` image does, with MariaDB from the OS
//! packages: initialise a data directory, start the server, make `root` reachable from
//! any host with `MYSQL_ROOT_PASSWORD`, and seed `test.ratings` with Istio's rows
//! (1, 5) and (2, 4). Starting again on an initialised directory keeps its data.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use tokio::process::{Child, Command};

/// Errors of the MariaDB bootstrap.
#[derive(Debug, thiserror::Error)]
pub enum MysqldbError {
    /// A MariaDB program is missing.
    #[error("{program} not found (looked in {looked}); fix: install MariaDB (apt-get install mariadb-server) or pass its path")]
    Missing {
        /// Program name.
        program: String,
        /// Where it was looked for.
        looked: String,
    },
    /// No root password is configured.
    #[error("MYSQL_ROOT_PASSWORD is not set; fix: set it (bookinfo-mysql.yaml takes it from Secret mysql-credentials, key rootpasswd) or set MYSQL_ALLOW_EMPTY_PASSWORD=yes")]
    NoPassword,
    /// A file-system step failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// The step.
        what: &'static str,
        /// The path involved.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// `mariadb-install-db` failed.
    #[error("{program} failed ({status}) initialising {datadir}; its output ends with:\n{output}")]
    Install {
        /// Program run.
        program: String,
        /// Exit status or timeout.
        status: String,
        /// Data directory.
        datadir: PathBuf,
        /// Tail of its output.
        output: String,
    },
    /// `mariadbd` exited or never accepted connections.
    #[error("mariadbd did not become ready on {socket} within {timeout:?} ({state}); its log {log} ends with:\n{output}")]
    NotReady {
        /// Socket waited on.
        socket: PathBuf,
        /// Limit.
        timeout: Duration,
        /// Whether it exited.
        state: String,
        /// Server log path.
        log: PathBuf,
        /// Tail of the log.
        output: String,
    },
    /// The server runs but refuses root with both an empty and the configured password.
    #[error("mariadbd on {socket} refuses root: {detail}; fix: {datadir} was initialised with another MYSQL_ROOT_PASSWORD, use that one or start from an empty data directory")]
    Login {
        /// Socket used.
        socket: PathBuf,
        /// Data directory.
        datadir: PathBuf,
        /// The server's answer.
        detail: String,
    },
    /// A seeding statement failed.
    #[error("seeding MariaDB through {socket}: {detail}")]
    Seed {
        /// Socket used.
        socket: PathBuf,
        /// Cause.
        detail: String,
    },
}

/// How to run MariaDB for the Bookinfo `mysqldb` service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MysqldbConfig {
    /// The server binary (`mariadbd`); a bare name is looked up in `PATH` and the sbin directories.
    pub mariadbd: PathBuf,
    /// The initialiser (`mariadb-install-db`), looked up the same way.
    pub install_db: PathBuf,
    /// Data directory (created if missing).
    pub datadir: PathBuf,
    /// Unix socket used for bootstrap and administration.
    pub socket: PathBuf,
    /// Address to listen on.
    pub bind_address: String,
    /// TCP port.
    pub port: u16,
    /// Password for `root@'%'` and `root@localhost`; empty only if explicitly allowed.
    pub root_password: String,
    /// Limit for initialisation and for the server to accept connections.
    pub ready_timeout: Duration,
}

impl MysqldbConfig {
    /// Defaults for `datadir` (socket `<datadir>/mysqld.sock`, port 3306, all
    /// addresses) with the password from `MYSQL_ROOT_PASSWORD`, or empty with
    /// `MYSQL_ALLOW_EMPTY_PASSWORD=yes`, as the MySQL image reads them.
    pub fn from_env(
        env: &impl Fn(&str) -> Option<String>,
        datadir: impl Into<PathBuf>,
    ) -> Result<Self, MysqldbError> {
        let root_password = match env("MYSQL_ROOT_PASSWORD").filter(|p| !p.is_empty()) {
            Some(p) => p,
            None if crate::env::var(env, "MYSQL_ALLOW_EMPTY_PASSWORD")
                .is_some_and(|v| matches!(v.as_str(), "yes" | "true" | "1")) =>
            {
                String::new()
            }
            None => return Err(MysqldbError::NoPassword),
        };
        let datadir = datadir.into();
        Ok(Self {
            mariadbd: "mariadbd".into(),
            install_db: "mariadb-install-db".into(),
            socket: datadir.join("mysqld.sock"),
            datadir,
            bind_address: "0.0.0.0".into(),
            port: 3306,
            root_password,
            ready_timeout: Duration::from_secs(60),
        })
    }
}

/// A running MariaDB; killed when dropped, stopped cleanly by [`MariaDb::shutdown`].
#[derive(Debug)]
pub struct MariaDb {
    child: Child,
    config: MysqldbConfig,
}

impl MariaDb {
    /// The configuration it runs with.
    pub fn config(&self) -> &MysqldbConfig {
        &self.config
    }

    /// Waits for the server to exit by itself.
    pub async fn wait(&mut self) -> Result<std::process::ExitStatus, MysqldbError> {
        self.child.wait().await.map_err(|source| MysqldbError::Io {
            what: "waiting for mariadbd",
            path: self.config.mariadbd.clone(),
            source,
        })
    }

    /// Asks the server to shut down (SQL `SHUTDOWN`) and waits up to 30 s, then kills it.
    pub async fn shutdown(mut self) -> Result<(), MysqldbError> {
        let asked = async {
            let mut conn = admin_conn(&self.config, &self.config.root_password).await?;
            conn.query_drop("SHUTDOWN").await
        };
        if let Err(e) = tokio::time::timeout(Duration::from_secs(10), asked)
            .await
            .unwrap_or_else(|_| Err(mysql_async::Error::Other("timed out".into())))
        {
            tracing::warn!(error = %e, "SQL SHUTDOWN failed; killing mariadbd");
            let _ = self.child.start_kill();
        }
        match tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await {
            Ok(_) => Ok(()),
            Err(_) => {
                let _ = self.child.start_kill();
                let _ = self.child.wait().await;
                Ok(())
            }
        }
    }
}

/// Initialises `config.datadir` if needed, starts `mariadbd`, waits until it accepts
/// connections and seeds users and `test.ratings`.
pub async fn start(config: MysqldbConfig) -> Result<MariaDb, MysqldbError> {
    let mariadbd = find_program(&config.mariadbd)?;
    let install_db = find_program(&config.install_db)?;
    tokio::fs::create_dir_all(&config.datadir)
        .await
        .map_err(|source| MysqldbError::Io {
            what: "creating data directory",
            path: config.datadir.clone(),
            source,
        })?;
    let fresh = !config.datadir.join("mysql").is_dir();
    if fresh {
        install(&install_db, &config).await?;
        // Like the MySQL image's entrypoint: seed with networking off, so no client
        // sees a half-seeded database or the install's password-less root accounts.
        let mut boot = spawn(&mariadbd, config.clone(), false)?;
        let password = wait_ready(&mut boot).await?;
        seed(&boot.config, &password).await?;
        boot.shutdown().await?;
    }
    let mut db = spawn(&mariadbd, config, true)?;
    let password = wait_ready(&mut db).await?;
    if !fresh {
        // Idempotent: brings users and the table in line with the configuration.
        seed(&db.config, &password).await?;
    }
    tracing::info!(port = db.config.port, "mariadbd ready, test.ratings seeded");
    Ok(db)
}

fn log_path(config: &MysqldbConfig) -> PathBuf {
    config.datadir.join("mariadbd.log")
}

fn spawn(
    mariadbd: &Path,
    config: MysqldbConfig,
    networking: bool,
) -> Result<MariaDb, MysqldbError> {
    let log = log_path(&config);
    let io = |what, source| MysqldbError::Io {
        what,
        path: log.clone(),
        source,
    };
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(|e| io("opening log", e))?;
    let log_err = log_file.try_clone().map_err(|e| io("opening log", e))?;
    let _ = std::fs::remove_file(&config.socket);
    tracing::info!(
        datadir = %config.datadir.display(), bind = %config.bind_address, port = config.port,
        networking, "starting mariadbd"
    );
    let tmpdir = private_tmpdir(&config)?;
    let mut cmd = Command::new(mariadbd);
    cmd.arg("--no-defaults")
        .arg("--user=root")
        .arg(format!("--datadir={}", config.datadir.display()))
        .arg(format!("--tmpdir={}", tmpdir.display()))
        .arg("--skip-name-resolve")
        .arg(format!("--socket={}", config.socket.display()))
        .arg(format!(
            "--pid-file={}",
            config.datadir.join("mariadbd.pid").display()
        ))
        .arg("--skip-log-bin");
    if networking {
        cmd.arg(format!("--bind-address={}", config.bind_address))
            .arg(format!("--port={}", config.port));
    } else {
        cmd.arg("--skip-networking");
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(log_file)
        .stderr(log_err)
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| MysqldbError::Io {
            what: "starting",
            path: mariadbd.to_path_buf(),
            source,
        })?;
    Ok(MariaDb { child, config })
}

/// Starts MariaDB and runs until it exits or this process gets SIGTERM/SIGINT, which
/// stop it cleanly.
pub async fn run(config: MysqldbConfig) -> Result<(), MysqldbError> {
    use tokio::signal::unix::{signal, SignalKind};
    // Handlers go in before MariaDB starts: a stop request that arrives while it is
    // still starting is held and honoured once it is up, instead of killing this
    // process with the default action and orphaning mariadbd.
    let handler = |kind: SignalKind, what: &'static str| {
        signal(kind).map_err(|source| MysqldbError::Io {
            what,
            path: PathBuf::new(),
            source,
        })
    };
    let mut term = handler(SignalKind::terminate(), "installing SIGTERM handler")?;
    let mut int = handler(SignalKind::interrupt(), "installing SIGINT handler")?;
    let mut db = start(config).await?;
    let exited = tokio::select! {
        status = db.wait() => Some(status),
        _ = term.recv() => None,
        _ = int.recv() => None,
    };
    match exited {
        Some(status) => {
            let status = status?;
            tracing::warn!(%status, "mariadbd exited");
            Ok(())
        }
        None => db.shutdown().await,
    }
}

fn find_program(program: &Path) -> Result<PathBuf, MysqldbError> {
    if program.components().count() > 1 {
        return if program.is_file() {
            Ok(program.to_path_buf())
        } else {
            Err(MysqldbError::Missing {
                program: program.display().to_string(),
                looked: program.display().to_string(),
            })
        };
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    // Debian installs mariadbd in /usr/sbin, which a non-login PATH may lack.
    dirs.extend(["/usr/sbin", "/usr/local/sbin", "/sbin", "/usr/bin"].map(PathBuf::from));
    dirs.iter()
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .ok_or_else(|| MysqldbError::Missing {
            program: program.display().to_string(),
            looked: dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(":"),
        })
}

/// A temporary-file directory of this server's own, beside its data directory: servers
/// that share one (`/tmp` by default) collide on their internal temporary tables when
/// they bootstrap at the same time.
fn private_tmpdir(config: &MysqldbConfig) -> Result<PathBuf, MysqldbError> {
    let name = config
        .datadir
        .file_name()
        .map(|n| format!("{}.tmp", n.to_string_lossy()))
        .unwrap_or_else(|| "mariadb.tmp".to_owned());
    let dir = config.datadir.with_file_name(name);
    std::fs::create_dir_all(&dir).map_err(|source| MysqldbError::Io {
        what: "creating MariaDB's temporary directory",
        path: dir.clone(),
        source,
    })?;
    Ok(dir)
}

async fn install(install_db: &Path, config: &MysqldbConfig) -> Result<(), MysqldbError> {
    tracing::info!(datadir = %config.datadir.display(), "initialising MariaDB data directory");
    let tmpdir = private_tmpdir(config)?;
    let run = Command::new(install_db)
        .arg("--no-defaults")
        .arg("--user=root")
        .arg(format!("--datadir={}", config.datadir.display()))
        .arg(format!("--tmpdir={}", tmpdir.display()))
        .arg("--auth-root-authentication-method=normal")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let fail = |status: String, output: String| MysqldbError::Install {
        program: install_db.display().to_string(),
        status,
        datadir: config.datadir.clone(),
        output,
    };
    match tokio::time::timeout(config.ready_timeout, run).await {
        Err(_) => Err(fail(
            format!("no exit within {:?}", config.ready_timeout),
            String::new(),
        )),
        Ok(Err(source)) => Err(MysqldbError::Io {
            what: "running",
            path: install_db.to_path_buf(),
            source,
        }),
        Ok(Ok(out)) if out.status.success() => Ok(()),
        Ok(Ok(out)) => {
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&out.stderr));
            Err(fail(out.status.to_string(), tail(&text)))
        }
    }
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

async fn admin_conn(
    config: &MysqldbConfig,
    password: &str,
) -> Result<mysql_async::Conn, mysql_async::Error> {
    let opts = mysql_async::OptsBuilder::default()
        .socket(Some(config.socket.display().to_string()))
        .user(Some("root"))
        .pass((!password.is_empty()).then(|| password.to_string()));
    mysql_async::Conn::new(opts).await
}

/// Polls the socket until root can log in (with no password on a fresh directory, or
/// with the configured one on a seeded directory); returns the password that worked.
async fn wait_ready(db: &mut MariaDb) -> Result<String, MysqldbError> {
    let log = log_path(&db.config);
    let started = Instant::now();
    let timeout = db.config.ready_timeout;
    let not_ready = |state: String| MysqldbError::NotReady {
        socket: db.config.socket.clone(),
        timeout,
        state,
        log: log.clone(),
        output: tail(&std::fs::read_to_string(&log).unwrap_or_default()),
    };
    loop {
        if let Ok(Some(status)) = db.child.try_wait() {
            return Err(not_ready(format!("exited with {status}")));
        }
        if db.config.socket.exists() {
            let mut refused = None;
            for password in ["", db.config.root_password.as_str()] {
                let attempt =
                    tokio::time::timeout(Duration::from_secs(5), admin_conn(&db.config, password))
                        .await;
                match attempt {
                    Ok(Ok(conn)) => {
                        let _ = conn.disconnect().await;
                        return Ok(password.to_string());
                    }
                    // ER_ACCESS_DENIED_ERROR: the server is up and said no.
                    Ok(Err(mysql_async::Error::Server(e))) if e.code == 1045 => {
                        refused = Some(e.message)
                    }
                    _ => {}
                }
            }
            if let Some(detail) = refused {
                let _ = db.child.start_kill();
                return Err(MysqldbError::Login {
                    socket: db.config.socket.clone(),
                    datadir: db.config.datadir.clone(),
                    detail,
                });
            }
        }
        if started.elapsed() > timeout {
            let _ = db.child.start_kill();
            return Err(not_ready("still running, killed".into()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A SQL string literal.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\'' => out.push_str("\\'"),
            '\\' => out.push_str("\\\\"),
            '\0' => out.push_str("\\0"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

async fn seed(config: &MysqldbConfig, current_password: &str) -> Result<(), MysqldbError> {
    let err = |e: mysql_async::Error| MysqldbError::Seed {
        socket: config.socket.clone(),
        detail: e.to_string(),
    };
    let mut conn = admin_conn(config, current_password).await.map_err(err)?;
    // Like the MySQL image: only root@localhost and root@'%' remain, both with the
    // configured password; anonymous users would shadow root from some hosts.
    let users: Vec<(String, String)> = conn
        .query("SELECT User, Host FROM mysql.user WHERE User = '' OR (User = 'root' AND Host NOT IN ('localhost', '%'))")
        .await
        .map_err(err)?;
    let mut statements: Vec<String> = users
        .iter()
        .map(|(u, h)| format!("DROP USER IF EXISTS {}@{}", quote(u), quote(h)))
        .collect();
    let pw = quote(&config.root_password);
    statements.extend([
        format!("CREATE USER IF NOT EXISTS 'root'@'%' IDENTIFIED BY {pw}"),
        format!("ALTER USER 'root'@'%' IDENTIFIED BY {pw}"),
        "GRANT ALL PRIVILEGES ON *.* TO 'root'@'%' WITH GRANT OPTION".into(),
        "CREATE DATABASE IF NOT EXISTS test".into(),
        "CREATE TABLE IF NOT EXISTS test.ratings (ReviewID INT NOT NULL, Rating INT, PRIMARY KEY (ReviewID))".into(),
        "INSERT IGNORE INTO test.ratings (ReviewID, Rating) VALUES (1, 5), (2, 4)".into(),
        // Last: the current session was authenticated with the old password.
        format!("ALTER USER 'root'@'localhost' IDENTIFIED BY {pw}"),
        "FLUSH PRIVILEGES".into(),
    ]);
    for statement in &statements {
        conn.query_drop(statement.as_str()).await.map_err(err)?;
    }
    let _ = conn.disconnect().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::from_pairs;

    #[test]
    fn quoting() {
        assert_eq!(quote("pa'ss\\w"), "'pa\\'ss\\\\w'");
    }

    #[test]
    fn password_is_required() {
        let err = MysqldbConfig::from_env(&from_pairs(&[]), "/tmp/x").unwrap_err();
        assert!(err
            .to_string()
            .starts_with("MYSQL_ROOT_PASSWORD is not set; fix:"));
        let ok = MysqldbConfig::from_env(
            &from_pairs(&[("MYSQL_ALLOW_EMPTY_PASSWORD", "yes")]),
            "/tmp/x",
        )
        .unwrap();
        assert_eq!(ok.root_password, "");
        let c = MysqldbConfig::from_env(&from_pairs(&[("MYSQL_ROOT_PASSWORD", "password")]), "/d")
            .unwrap();
        assert_eq!(
            (c.port, c.socket.as_path()),
            (3306, Path::new("/d/mysqld.sock"))
        );
    }

    #[test]
    fn missing_program_says_what_to_install() {
        let err = find_program(Path::new("no-such-mariadbd-binary"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("no-such-mariadbd-binary not found (looked in "));
        assert!(
            err.ends_with("fix: install MariaDB (apt-get install mariadb-server) or pass its path")
        );
    }
}
