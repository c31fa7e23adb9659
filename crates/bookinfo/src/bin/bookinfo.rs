//! `bookinfo`: runs one of Istio's Bookinfo sample apps, the tcp-echo server, or the
//! MariaDB-backed `mysqldb` service (see [`bookinfo::cli`]).

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    bookinfo::cli::run(bookinfo::cli::Cli::parse()).await
}
