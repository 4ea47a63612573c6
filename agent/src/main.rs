//! The `proglog` command: the agent and its client, bench and admin verbs.
//! Exit codes: 0 clean stop, 1 runtime failure, 2 bad config or usage.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use notify_debouncer_full::notify::RecursiveMode;
use proglog_agent::agent::{Agent, AgentError, LogLevelHook};
use proglog_agent::config::{AgentFlags, Config, LogFormat};
use proglog_agent::telemetry::{self, TelemetrySettings};
use proglog_agent::{bench, certs, cli, sd_notify};
use tokio::signal::unix::{signal, SignalKind};

/// mimalloc (its 2.x line) rather than glibc's malloc: a produce allocates
/// at every layer (HTTP/2 frames, the decoded request, the Raft entry, the
/// encoded WAL record), and with 64 produces in flight glibc's allocator
/// took about 18% of the agent's CPU samples (README, "Performance"). Built
/// with `no_thp`: asking for transparent huge pages made an idle agent's
/// resident memory 20 MiB larger.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "proglog", version, about = "A replicated, durable commit log")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent.
    Agent(Box<AgentFlags>),
    /// Append records: each argument, or each line of stdin; prints offsets.
    Produce {
        #[command(flatten)]
        conn: cli::ConnectArgs,
        /// Record values (default: read lines from stdin).
        values: Vec<String>,
    },
    /// Print records, one per line, to the end of the log.
    Consume {
        #[command(flatten)]
        conn: cli::ConnectArgs,
        /// First offset to print (default: where the log starts, 0 or the
        /// lowest offset retention kept).
        #[arg(long)]
        from: Option<u64>,
        /// Keep waiting for new records.
        #[arg(long)]
        follow: bool,
        /// Print {"offset": N, "value": "..."} per line.
        #[arg(long)]
        json: bool,
    },
    /// List the servers of the cluster.
    Servers {
        #[command(flatten)]
        conn: cli::ConnectArgs,
    },
    /// List the gossip members this agent sees: address, status, tags.
    Members {
        #[command(flatten)]
        conn: cli::ConnectArgs,
    },
    /// Show this agent's Raft view: term, leader, indexes, members.
    Status {
        #[command(flatten)]
        conn: cli::ConnectArgs,
    },
    /// Add a node as a voter (a learner until it has caught up).
    AddVoter {
        #[command(flatten)]
        conn: cli::ConnectArgs,
        /// The node's Raft id (the `node-id` file in its data dir).
        #[arg(long)]
        id: u64,
        /// The node's name.
        #[arg(long)]
        name: String,
        /// The RPC address the node advertises, host:port.
        rpc_addr: String,
    },
    /// Remove a voter or learner from the cluster.
    RemovePeer {
        #[command(flatten)]
        conn: cli::ConnectArgs,
        /// The member's name or numeric id.
        node: String,
    },
    /// Hand leadership to another node.
    TransferLeader {
        #[command(flatten)]
        conn: cli::ConnectArgs,
        /// The member's name or numeric id (default: the most caught-up
        /// follower).
        node: Option<String>,
    },
    /// Write a development CA, server and client certificates.
    Certs {
        /// Output directory.
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// Server certificate SANs.
        #[arg(long, value_delimiter = ',', default_value = "127.0.0.1,localhost")]
        hosts: Vec<String>,
        /// Replace certificates that already exist.
        #[arg(long)]
        force: bool,
    },
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
    /// Produce to an agent, N calls in flight.
    Produce(bench::grpc::GrpcArgs),
    /// Consume existing records from an agent, N calls in flight.
    Consume(bench::grpc::GrpcArgs),
    /// Read with ConsumeStream from offset 0, N streams.
    Stream(bench::grpc::GrpcArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Agent(flags) => run_agent(*flags),
        Command::Version => {
            println!("proglog {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Certs { dir, hosts, force } => {
            if !force && certs::exist(&dir) {
                eprintln!(
                    "proglog certs: keeping the certificates in {} (--force replaces them)",
                    dir.display()
                );
                return ExitCode::SUCCESS;
            }
            let result = certs::generate(&dir, &hosts);
            if result.is_ok() {
                print!("{}", certs::summary(&dir, &hosts));
            }
            report("certs", result.map_err(Into::into))
        }
        Command::Bench { target } => match target {
            BenchTarget::Wal(args) => {
                if let Err(e) = telemetry::init(TelemetrySettings::stderr("warn", LogFormat::Text))
                {
                    eprintln!("proglog bench wal: {e}");
                }
                let result = bench::wal::run(&args).map(|r| r.print(args.load.json));
                report("bench wal", result.map_err(Into::into))
            }
            BenchTarget::Produce(args) => bench_grpc(bench::grpc::Op::Produce, args),
            BenchTarget::Consume(args) => bench_grpc(bench::grpc::Op::Consume, args),
            BenchTarget::Stream(args) => bench_grpc(bench::grpc::Op::Stream, args),
        },
        Command::Produce { conn, values } => client(|| cli::produce(&conn, values)),
        Command::Consume {
            conn,
            from,
            follow,
            json,
        } => client(|| cli::consume(&conn, from, follow, json)),
        Command::Servers { conn } => client(|| cli::servers(&conn)),
        Command::Status { conn } => client(|| cli::status(&conn)),
        Command::Members { conn } => client(|| cli::members(&conn)),
        Command::AddVoter {
            conn,
            id,
            name,
            rpc_addr,
        } => client(|| cli::add_voter(&conn, id, &name, &rpc_addr)),
        Command::RemovePeer { conn, node } => client(|| cli::remove_peer(&conn, &node)),
        Command::TransferLeader { conn, node } => {
            client(|| cli::transfer_leader(&conn, node.as_deref()))
        }
    }
}

fn bench_grpc(op: bench::grpc::Op, args: bench::grpc::GrpcArgs) -> ExitCode {
    client(|| async move {
        bench::grpc::run(op, &args).await?.print(args.load.json);
        Ok(())
    })
}

fn report(what: &str, result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("proglog {what}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn client<F, Fut>(call: F) -> ExitCode
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<(), proglog_client::Error>>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("building a tokio runtime");
    match runtime.block_on(call()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("proglog: {e}");
            ExitCode::FAILURE
        }
    }
}

/// How long the agent waits at exit for queued spans to reach the OTLP
/// sink.
const TRACE_FLUSH_DEADLINE: Duration = Duration::from_secs(3);

fn run_agent(flags: AgentFlags) -> ExitCode {
    let config = match Config::load(&flags) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("proglog agent: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("building a tokio runtime");
    // The OTLP exporter's channel lives on the runtime.
    let installed = {
        let _entered = runtime.enter();
        telemetry::init(TelemetrySettings::agent(&config))
    };
    let telemetry = match installed {
        Ok(telemetry) => telemetry,
        Err(e) => {
            eprintln!("proglog agent: {e}");
            return ExitCode::FAILURE;
        }
    };
    for name in proglog_agent::config::ignored_env_vars() {
        tracing::warn!(variable = %name, "ignoring an environment variable that names no config key");
    }
    let hook = telemetry.level_hook();
    let result = runtime.block_on(agent_main(flags, config, hook));
    // Queued spans go out while the runtime still runs the exporter.
    telemetry.shutdown(TRACE_FLUSH_DEADLINE);
    match result {
        // Refusing to found a second cluster is a usage error.
        Err(e) if matches!(e.downcast_ref(), Some(AgentError::ClusterExists { .. })) => {
            eprintln!("proglog agent: {e}");
            ExitCode::from(2)
        }
        // A port taken, typically by another agent (the README's first
        // command still running): say how to run a second one.
        Err(e) if matches!(e.downcast_ref(), Some(AgentError::Io { source, .. }) if source.kind() == std::io::ErrorKind::AddrInUse) =>
        {
            eprintln!(
                "proglog agent: {e}\n  another process (an agent started earlier?) holds the port: \
                 stop it, or give this agent other ports, e.g. --rpc-port 8500 --bind-addr \
                 127.0.0.1:8501 (clients then pass --addr 127.0.0.1:8500)"
            );
            ExitCode::FAILURE
        }
        result => report("agent", result),
    }
}

async fn agent_main(flags: AgentFlags, config: Config, hook: LogLevelHook) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
    let agent = Agent::start(config, Some(hook)).await?;
    // Serving (a leader need not be known: a cluster cold-starts under
    // systemd's Type=notify).
    notify("READY=1");

    // Watch the directories of the reloadable files: tools replace files
    // by rename, which a watch on the file itself would miss.
    let (changed_tx, mut changed) = tokio::sync::mpsc::unbounded_channel();
    let mut watched = agent.watched_files();
    watched.extend(flags.config_file.clone());
    let watched_names = watched.clone();
    let mut debouncer = notify_debouncer_full::new_debouncer(
        Duration::from_millis(200),
        None,
        move |events: notify_debouncer_full::DebounceEventResult| {
            let Ok(events) = events else { return };
            let relevant = events.iter().any(|ev| {
                !ev.kind.is_access()
                    && ev
                        .paths
                        .iter()
                        .any(|p| watched_names.iter().any(|w| p.file_name() == w.file_name()))
            });
            if relevant {
                let _ = changed_tx.send(());
            }
        },
    )
    .context("starting the file watcher")?;
    let mut dirs: Vec<PathBuf> = watched
        .iter()
        .filter_map(|f| {
            f.parent().map(|d| {
                if d.as_os_str().is_empty() {
                    ".".into()
                } else {
                    d.to_path_buf()
                }
            })
        })
        .collect();
    dirs.sort();
    dirs.dedup();
    for dir in &dirs {
        debouncer
            .watch(dir, RecursiveMode::NonRecursive)
            .with_context(|| format!("watching {}", dir.display()))?;
    }

    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => reload(&agent, &flags).await,
            Some(()) = changed.recv() => reload(&agent, &flags).await,
        }
    }
    drop(debouncer);
    // A second signal exits at once.
    tokio::spawn(async move {
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        eprintln!("proglog agent: second signal, exiting now");
        std::process::exit(1);
    });
    notify("STOPPING=1");
    agent.terminate().await?;
    Ok(())
}

/// Tells systemd `state` if it asked (`$NOTIFY_SOCKET`); a failure is
/// logged, never fatal.
fn notify(state: &str) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!(error = %e, state, "sd_notify failed");
    }
}

async fn reload(agent: &Agent, flags: &AgentFlags) {
    let config = match Config::load(flags) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(error = %e, "config reload failed; keeping the previous settings");
            None
        }
    };
    agent.reload(config).await;
}
