//! The `weir` command line: thin, delegating to the library crates.

use clap::{Parser, Subcommand};

mod cmd;

/// weir: a TCP-telemetry service mesh, wire- and metric-compatible with Istio.
#[derive(Parser, Debug)]
#[command(name = "weir", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the sidecar proxy, set up traffic capture, or run a metered TCP forwarder.
    Proxy(cmd::proxy::ProxyArgs),
    /// Issue workload certificates in Istio's layout from a local certificate authority.
    Ca(cmd::ca::CaArgs),
    /// Run the control plane (`weir control serve`).
    Control(cmd::control::ControlArgs),
    /// Apply manifests to the control plane (`-f FILE|DIR|-`).
    Apply(cmd::apply::FileArgs),
    /// Show resources: `weir get KIND [NAME] [-n NS|-A] [-o yaml|json|wide]`.
    Get(cmd::get::GetArgs),
    /// Delete the resources the manifests name (`-f FILE|DIR|-`).
    Delete(cmd::apply::FileArgs),
    /// Report cross-resource problems (missing subsets, hosts, ...).
    Analyze(cmd::get::AnalyzeArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Proxy(args) => cmd::proxy::run(args),
        Command::Ca(args) => cmd::ca::run(args),
        Command::Control(args) => cmd::control::run(args),
        Command::Apply(args) => cmd::apply::apply(args),
        Command::Get(args) => cmd::get::get(args),
        Command::Delete(args) => cmd::apply::delete(args),
        Command::Analyze(args) => cmd::get::analyze(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
