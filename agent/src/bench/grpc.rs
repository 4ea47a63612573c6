//! `proglog bench produce|consume|stream`: closed-loop load against a
//! running agent over gRPC, `--in-flight` calls at a time.

use std::sync::Arc;
use std::time::Instant;

use proglog_client::{Client, Error};
use tokio_stream::StreamExt;

use super::{histogram, LoadArgs, Report};
use crate::cli::ConnectArgs;

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// Produce (or ProduceBatch with `--batch`), each call awaiting its ack.
    Produce,
    /// Consume of existing offsets, round robin.
    Consume,
    /// One ConsumeStream per in-flight slot, reading from offset 0.
    Stream,
}

/// Flags of the gRPC benchmarks.
#[derive(Debug, clap::Args)]
pub struct GrpcArgs {
    #[command(flatten)]
    /// How to reach the agent.
    pub conn: ConnectArgs,
    /// Record size, run time, batching (ProduceBatch), output.
    #[command(flatten)]
    pub load: LoadArgs,
    /// Concurrent calls (each its own task; connections are shared).
    #[arg(long, default_value_t = 1)]
    pub in_flight: usize,
    /// Connections to spread the calls over.
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
    /// Records to produce first when the log holds fewer (consume, stream).
    #[arg(long, default_value_t = 100_000)]
    pub preload: u64,
}

/// Runs `op` and returns its report.
pub async fn run(op: Op, args: &GrpcArgs) -> Result<Report, Error> {
    let mut clients = Vec::new();
    for _ in 0..args.connections.max(1) {
        clients.push(args.conn.connect().await?);
    }
    let available = if op == Op::Produce {
        0
    } else {
        preload(&mut clients[0], args).await?
    };
    let budget = args.load.budget();
    let start = Instant::now();
    let payload = Arc::new(vec![b'x'; args.load.size]);
    let mut tasks = tokio::task::JoinSet::new();
    for slot in 0..args.in_flight.max(1) {
        let mut client = clients[slot % clients.len()].clone();
        let (payload, batch) = (Arc::clone(&payload), args.load.batch.max(1));
        let stride = args.in_flight.max(1) as u64;
        let budget = budget.clone();
        tasks.spawn(async move {
            let mut latency = histogram();
            let mut done = 0u64;
            let mut offset = slot as u64;
            match op {
                Op::Stream => {
                    let mut stream = client.consume_stream(0).await?;
                    let mut t = Instant::now();
                    while budget.take() {
                        match tokio::time::timeout_at(budget.deadline().into(), stream.next()).await
                        {
                            Ok(Some(item)) => {
                                item?;
                            }
                            _ => break,
                        }
                        latency.saturating_record(t.elapsed().as_micros() as u64);
                        t = Instant::now();
                        done += 1;
                    }
                }
                _ => {
                    while budget.take() {
                        let t = Instant::now();
                        match op {
                            Op::Produce if batch == 1 => {
                                client.produce(payload.to_vec()).await?;
                            }
                            Op::Produce => {
                                client.produce_batch(vec![payload.to_vec(); batch]).await?;
                            }
                            _ => {
                                client.consume(offset % available).await?;
                                offset += stride;
                            }
                        }
                        latency.saturating_record(t.elapsed().as_micros() as u64);
                        done += if op == Op::Produce { batch as u64 } else { 1 };
                    }
                }
            }
            Ok::<_, Error>((done, latency))
        });
    }
    let mut latency = histogram();
    let mut records = 0;
    while let Some(joined) = tasks.join_next().await {
        let (done, h) = joined.expect("bench task panicked")?;
        records += done;
        latency.add(&h).expect("same bounds");
    }
    let params = serde_json::json!({
        "op": op, "in_flight": args.in_flight, "connections": args.connections,
        "size": args.load.size, "batch": args.load.batch, "addr": args.conn.addr,
        "tls": args.conn.tls_ca_file.is_some(), "unix": args.conn.unix_socket.is_some(),
        "ops": args.load.ops,
    });
    let name = format!(
        "grpc-{}",
        serde_json::to_value(op)
            .expect("op")
            .as_str()
            .unwrap_or("op")
    );
    Ok(Report::new(
        &name,
        params,
        records,
        records * args.load.size as u64,
        start.elapsed(),
        &latency,
    ))
}

/// Makes sure the log holds at least `--preload` records; returns how many
/// readable offsets there are from 0.
async fn preload(client: &mut Client, args: &GrpcArgs) -> Result<u64, Error> {
    let mut have = count_from_zero(client).await?;
    while have < args.preload {
        let n = (args.preload - have).min(1000) as usize;
        client
            .produce_batch(vec![vec![b'p'; args.load.size]; n])
            .await?;
        have += n as u64;
    }
    Ok(have.max(1))
}

/// The next offset, found by a binary search over Consume.
async fn count_from_zero(client: &mut Client) -> Result<u64, Error> {
    let exists = async |c: &mut Client, o: u64| match c.consume(o).await {
        Ok(_) => Ok(true),
        Err(Error::Status(s)) if s.code() == tonic::Code::OutOfRange => Ok(false),
        Err(e) => Err(e),
    };
    let (mut lo, mut hi) = (0u64, 1u64);
    while exists(client, hi - 1).await? {
        lo = hi;
        hi *= 2;
    }
    // Invariant: offsets < lo exist, hi - 1 does not.
    while lo + 1 < hi {
        let mid = lo + (hi - lo) / 2;
        if exists(client, mid - 1).await? {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(lo)
}
