//! The `weir` command line: thin, delegating to the library crates.

use clap::{Parser, Subcommand};
use weir::cmd;

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
    /// The single-host cluster: `weir cluster up|down|status`.
    Cluster(cmd::cluster::ClusterArgs),
    /// Print a container's log: `weir logs deploy/NAME [-c istio-proxy] [-p] [-f]`.
    Logs(cmd::cluster::LogsArgs),
    /// Run a command inside a pod's network and DNS: `weir exec deploy/NAME -- CMD`.
    Exec(cmd::cluster::ExecArgs),
    /// Open a cluster add-on's UI from the host: `weir dashboard prometheus`.
    Dashboard(cmd::cluster::DashboardArgs),
    /// Add the sidecar to Kubernetes manifests, as `istioctl kube-inject`.
    Inject(cmd::cluster::InjectArgs),
    /// Run Istio's "Collecting Metrics for TCP Services" task end to end on this machine.
    Demo(cmd::demo::DemoArgs),
    /// Istio's Bookinfo sample apps and tcp-echo (what the cluster runs for their images).
    #[command(hide = true)]
    Bookinfo(bookinfo::cli::Cli),
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
        Command::Cluster(args) => cmd::cluster::run(args),
        Command::Logs(args) => cmd::cluster::logs(args),
        Command::Exec(args) => match cmd::cluster::exec(args) {
            Ok(code) => return code,
            Err(e) => Err(e),
        },
        Command::Dashboard(args) => cmd::cluster::dashboard(args),
        Command::Inject(args) => cmd::cluster::inject(args),
        Command::Demo(args) => cmd::demo::run(args),
        Command::Bookinfo(args) => cmd::cluster::bookinfo(args),
    };
    weir::exit_code(result)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory as _;
        super::Cli::command().debug_assert();
    }
}
