//! The `bookinfo` command line: runs one of Istio's Bookinfo sample apps, the tcp-echo
//! server, or the MariaDB-backed `mysqldb` service, configured by the process environment
//! as Istio's images are. The `bookinfo` binary and weir's local cluster (`weir bookinfo`)
//! both run it.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tokio::net::TcpListener;

use crate::{details, mysqldb, productpage, ratings, reviews, tcp_echo};

/// `bookinfo APP [FLAGS]`.
#[derive(Parser, Debug)]
#[command(
    name = "bookinfo",
    about = "Istio's Bookinfo sample apps and tcp-echo server"
)]
pub struct Cli {
    #[command(subcommand)]
    app: App,
}

#[derive(Subcommand, Debug)]
enum App {
    /// The web page and API; calls details and reviews.
    Productpage(Http),
    /// Book details.
    Details(Http),
    /// Reviews; v2/v3 call ratings.
    // `--version` names the app's version here, not the program's.
    #[command(disable_version_flag = true)]
    Reviews {
        #[command(flatten)]
        http: Http,
        /// v1 (no stars), v2 (black stars) or v3 (red stars); overrides SERVICE_VERSION.
        #[arg(long = "version", value_name = "VERSION")]
        service_version: Option<String>,
    },
    /// Ratings; v2 reads a database (DB_TYPE=mysql with MYSQL_DB_*).
    #[command(disable_version_flag = true)]
    Ratings {
        #[command(flatten)]
        http: Http,
        /// v1 (in memory) or v2 (database); overrides SERVICE_VERSION.
        #[arg(long = "version", value_name = "VERSION")]
        service_version: Option<String>,
    },
    /// Writes back every received line as "<PREFIX> <line>" on each port.
    TcpEcho {
        /// Comma-separated ports, e.g. 9000,9001,9002.
        ports: String,
        /// Prefix of every answer.
        #[arg(default_value = "hello")]
        prefix: String,
    },
    /// MariaDB seeded like Istio's mysqldb image (password from MYSQL_ROOT_PASSWORD).
    Mysqldb {
        /// Data directory (created and initialised if empty).
        #[arg(long, default_value = "/var/lib/mysql")]
        data_dir: PathBuf,
        /// TCP port.
        #[arg(long, default_value_t = 3306)]
        port: u16,
        /// Address to listen on.
        #[arg(long, default_value = "0.0.0.0")]
        bind_address: String,
        /// Unix socket (default: <data-dir>/mysqld.sock).
        #[arg(long)]
        socket: Option<PathBuf>,
        /// The server binary.
        #[arg(long, default_value = "mariadbd")]
        mariadbd: PathBuf,
        /// The data directory initialiser.
        #[arg(long, default_value = "mariadb-install-db")]
        install_db: PathBuf,
        /// MySQL 8 option in Istio's manifest; MariaDB already uses mysql_native_password.
        #[arg(long)]
        default_authentication_plugin: Option<String>,
    },
}

#[derive(clap::Args, Debug)]
struct Http {
    /// TCP port (Istio's apps use 9080).
    #[arg(long, default_value_t = 9080)]
    port: u16,
    /// Address to listen on (default: all IPv6 and IPv4 addresses).
    #[arg(long)]
    address: Option<std::net::IpAddr>,
}

fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Process environment with `SERVICE_VERSION` replaced by the flag when given.
fn env_with_version(version: Option<String>) -> impl Fn(&str) -> Option<String> {
    move |name| match (name, &version) {
        ("SERVICE_VERSION", Some(v)) => Some(v.clone()),
        _ => process_env(name),
    }
}

/// Binds `[::]:port` (which also takes IPv4 where the host allows it), or
/// `0.0.0.0:port` on hosts without IPv6.
async fn bind(address: Option<std::net::IpAddr>, port: u16) -> Result<TcpListener> {
    if let Some(ip) = address {
        let addr = SocketAddr::new(ip, port);
        return TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"));
    }
    match TcpListener::bind((Ipv6Addr::UNSPECIFIED, port)).await {
        Ok(l) => Ok(l),
        Err(_) => TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))
            .await
            .with_context(|| format!("binding port {port} on [::] and 0.0.0.0")),
    }
}

/// Runs the app `cli` names until it fails (they serve forever otherwise).
pub async fn run(cli: Cli) -> Result<()> {
    match cli.app {
        App::Productpage(http) => {
            let config = productpage::ProductpageConfig::from_env(&process_env)?;
            productpage::serve(bind(http.address, http.port).await?, config).await?;
        }
        App::Details(http) => {
            let config = details::DetailsConfig::from_env(&process_env);
            details::serve(bind(http.address, http.port).await?, config).await?;
        }
        App::Reviews {
            http,
            service_version,
        } => {
            let config = reviews::ReviewsConfig::from_env(&env_with_version(service_version))?;
            reviews::serve(bind(http.address, http.port).await?, config).await?;
        }
        App::Ratings {
            http,
            service_version,
        } => {
            let config = ratings::RatingsConfig::from_env(&env_with_version(service_version))?;
            ratings::serve(bind(http.address, http.port).await?, config).await?;
        }
        App::TcpEcho { ports, prefix } => {
            let (ports, config) = tcp_echo::parse_args(&ports, &prefix)?;
            let mut listeners = Vec::new();
            for port in ports {
                listeners.push(bind(None, port).await?);
            }
            tcp_echo::serve_all(listeners, config).await?;
        }
        App::Mysqldb {
            data_dir,
            port,
            bind_address,
            socket,
            mariadbd,
            install_db,
            default_authentication_plugin,
        } => {
            if let Some(plugin) = default_authentication_plugin {
                tracing::info!(%plugin, "--default-authentication-plugin is a MySQL 8 option; MariaDB uses mysql_native_password already");
            }
            let mut config = mysqldb::MysqldbConfig::from_env(&process_env, data_dir)?;
            config.port = port;
            config.bind_address = bind_address;
            config.mariadbd = mariadbd;
            config.install_db = install_db;
            if let Some(socket) = socket {
                config.socket = socket;
            }
            mysqldb::run(config).await?;
        }
    }
    Ok(())
}
