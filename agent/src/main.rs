//! The `proglog` command: the agent and its client, bench and admin verbs.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use proglog_agent::bench;

#[derive(Debug, Parser)]
#[command(name = "proglog", version, about = "A replicated, durable commit log")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Measure throughput and latency.
    Bench {
        #[command(subcommand)]
        target: BenchTarget,
    },
    /// Print the version.
    Version,
}

#[derive(Debug, Subcommand)]
enum BenchTarget {
    /// Append to a local WAL from N threads.
    Wal(bench::wal::WalArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    match cli.command {
        Command::Version => {
            println!("proglog {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Bench {
            target: BenchTarget::Wal(args),
        } => match bench::wal::run(&args) {
            Ok(report) => {
                report.print(args.json);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("proglog bench wal: {e}");
                ExitCode::FAILURE
            }
        },
    }
}
