//! The subcommands of the `weir` command line, shared by the `weir` CLI and by
//! `weir-proxy`, the data plane on its own: a sidecar runs only the proxy, and a
//! binary without the cluster runtime, control plane and sample apps keeps its
//! resident memory small (see BENCHMARKS.md, RSS at rest).

pub mod cmd;

/// Prints a command's error the way every weir binary does and gives the exit code.
pub fn exit_code(result: anyhow::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
