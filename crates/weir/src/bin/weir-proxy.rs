//! `weir-proxy`: the data plane alone, exactly what `weir proxy` runs (sidecar, capture
//! rules, metered forwarder), in a binary that carries nothing else. Sidecars use it
//! when it sits beside `weir`.

use clap::Parser;

/// weir's sidecar proxy: the same flags and subcommands as `weir proxy`.
#[derive(Parser, Debug)]
#[command(name = "weir-proxy", version, about)]
struct Cli {
    #[command(flatten)]
    args: weir::cmd::proxy::ProxyArgs,
}

fn main() -> std::process::ExitCode {
    weir::exit_code(weir::cmd::proxy::run(Cli::parse().args))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory as _;
        super::Cli::command().debug_assert();
    }
}
