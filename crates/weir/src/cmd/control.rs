//! `weir control serve`: the control plane's resource store and local API; and the
//! connection settings the resource commands (`apply`, `get`, `delete`, `analyze`) share.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use control::api::client::{Client, Response};
use control::store::Store;

/// Where the control plane's API is, for commands that talk to it.
#[derive(clap::Args, Debug)]
pub struct ControlAddr {
    /// Address of the control plane's API (`weir control serve --listen`).
    #[arg(long = "control", env = "WEIR_CONTROL", default_value = control::api::DEFAULT_ADDR)]
    pub addr: String,
}

impl ControlAddr {
    /// A client of it.
    pub fn client(&self) -> Client {
        Client::new(&self.addr)
    }
}

/// Prints a reply (lines to stdout, notices and errors to stderr); an error when it failed.
pub fn print(response: Response, what: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    for line in &response.reply.lines {
        writeln!(out, "{line}").context("cannot write to standard output")?;
    }
    out.flush().context("cannot write to standard output")?;
    for line in &response.reply.errors {
        eprintln!("{line}");
    }
    if response.ok {
        Ok(())
    } else {
        anyhow::bail!("{what}")
    }
}

/// `weir control` subcommands.
#[derive(clap::Args, Debug)]
pub struct ControlArgs {
    #[command(subcommand)]
    command: ControlCommand,
}

#[derive(clap::Subcommand, Debug)]
enum ControlCommand {
    /// Run the control plane: keep resources in a state directory and serve the local API
    /// that `weir apply|get|delete|analyze` use.
    Serve {
        /// Directory holding the stored resources (created if missing).
        #[arg(long)]
        state_dir: PathBuf,
        /// Address to serve the API on (loopback; port 0 picks a free one).
        #[arg(long, default_value = control::api::DEFAULT_ADDR)]
        listen: String,
    },
}

/// Runs `weir control`.
pub fn run(args: ControlArgs) -> anyhow::Result<()> {
    match args.command {
        ControlCommand::Serve { state_dir, listen } => serve(state_dir, &listen),
    }
}

fn serve(state_dir: PathBuf, listen: &str) -> anyhow::Result<()> {
    let store = Store::open(&state_dir)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| {
                format!("cannot listen on {listen}; pick a free address with --listen")
            })?;
        let local = listener
            .local_addr()
            .context("cannot read the listening address")?;
        let revision = store.revision();
        let count = store.resources().len();
        // One line on stdout with the bound address, so scripts using port 0 can find it.
        println!(
            "control plane listening on {local} (state {}, revision {revision}, {count} resources)",
            state_dir.display()
        );
        std::io::stdout()
            .flush()
            .context("cannot write to standard output")?;
        control::api::serve(listener, control::api::shared(store), shutdown())
            .await
            .context("the control plane's API server failed")
    })
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        // Without a SIGTERM handler, Ctrl-C still stops it.
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
