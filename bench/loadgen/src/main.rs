//! Load generator of the benchmark harness (`bench/run.sh`): the server end the traffic
//! goes to and the three client workloads iperf3 does not cover — small
//! request/response latency over one kept connection, new connections per second
//! (connect, exchange, close) and many idle connections held open. Each client prints
//! one JSON object on stdout so the harness can record it.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, Subcommand};

mod clients;
mod server;

/// Bytes of every request and response.
pub const MESSAGE: usize = 64;
/// Time allowed for one connect, read or write before the attempt counts as failed.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Benchmark load generator for weir.
#[derive(Parser, Debug)]
#[command(name = "loadgen", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve: echo on --echo; on --close answer one 64-byte request and close first
    /// (so TIME_WAIT stays on the server side and clients never run out of ports).
    Serve {
        /// Echo listener (latency and idle connections).
        #[arg(long)]
        echo: SocketAddr,
        /// Answer-then-close listener (connections per second).
        #[arg(long)]
        close: SocketAddr,
    },
    /// Ping-pong 64-byte messages over one connection; print latency percentiles.
    Rr {
        /// Where to connect (an echo listener, directly or through a proxy).
        #[arg(long)]
        connect: SocketAddr,
        /// Seconds to measure (after a warm-up of a tenth of that, at most 1 s).
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
    },
    /// Connect, send 64 bytes, read 64 bytes and the close, in a loop with
    /// --concurrency loops at once; print connections per second.
    Cps {
        /// Where to connect (an answer-then-close listener).
        #[arg(long)]
        connect: SocketAddr,
        /// Seconds to run.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Connections in flight at once.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
    },
    /// Open --count connections, exchange 64 bytes on each, print how many are open,
    /// then hold them for --hold seconds (or until killed).
    Idle {
        /// Where to connect (an echo listener).
        #[arg(long)]
        connect: SocketAddr,
        /// Connections to open.
        #[arg(long)]
        count: usize,
        /// Connections being opened at once.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Seconds to hold them open before exiting.
        #[arg(long, default_value_t = 120.0)]
        hold: f64,
    },
}

fn seconds(value: f64, flag: &str) -> anyhow::Result<Duration> {
    anyhow::ensure!(
        value.is_finite() && value > 0.0 && value <= 86_400.0,
        "{flag} {value}: give a number of seconds between 0 and 86400, e.g. 5"
    );
    Ok(Duration::from_secs_f64(value))
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { echo, close } => server::run(echo, close),
        Command::Rr {
            connect,
            seconds: s,
        } => seconds(s, "--seconds").and_then(|d| clients::request_response(connect, d)),
        Command::Cps {
            connect,
            seconds: s,
            concurrency,
        } => seconds(s, "--seconds")
            .and_then(|d| clients::connections_per_second(connect, d, concurrency)),
        Command::Idle {
            connect,
            count,
            concurrency,
            hold,
        } => seconds(hold, "--hold")
            .and_then(|d| clients::idle_connections(connect, count, concurrency, d)),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("loadgen: error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
