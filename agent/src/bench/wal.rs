//! `proglog bench wal`: N threads append to one [`Log`] in a closed loop.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::SyncMode;
use crate::log::{Log, LogConfig};
use crate::units::parse_bytes;

use super::{histogram, LoadArgs, Report};

/// Flags of `proglog bench wal`.
#[derive(Debug, clap::Args)]
pub struct WalArgs {
    /// Record size, run time, batching, output.
    #[command(flatten)]
    pub load: LoadArgs,
    /// Concurrent appending threads.
    #[arg(long, default_value_t = 1)]
    pub writers: usize,
    /// When appends are synced.
    #[arg(long, value_enum, default_value = "always")]
    pub sync: SyncMode,
    /// Sync period with `--sync interval`.
    #[arg(long, default_value_t = 10)]
    pub sync_interval_ms: u64,
    /// Where to put the log (default: a fresh directory under $TMPDIR,
    /// removed afterwards).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Segment store size limit.
    #[arg(long, default_value = "64MiB", value_parser = parse_bytes)]
    pub segment_max_store_bytes: u64,
    /// Segment index size limit.
    #[arg(long, default_value = "8MiB", value_parser = parse_bytes)]
    pub segment_max_index_bytes: u64,
    /// Zeros pre-written ahead of the store's write position (0 = off).
    #[arg(long, default_value = "4MiB", value_parser = parse_bytes)]
    pub prealloc_bytes: u64,
    /// Afterwards, close the log and time a reopen; then abandon that log
    /// without closing it (as a killed process would) and time an unclean
    /// reopen, which verifies every record of the active segment.
    #[arg(long)]
    pub reopen: bool,
    /// Keep the log directory afterwards.
    #[arg(long)]
    pub keep: bool,
}

/// Runs the benchmark and returns its report.
pub fn run(args: &WalArgs) -> Result<Report, crate::log::LogError> {
    let dir = args.dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("proglog-bench-wal-{}", std::process::id()))
    });
    let config = LogConfig {
        max_store_bytes: args.segment_max_store_bytes,
        max_index_bytes: args.segment_max_index_bytes,
        sync: args
            .sync
            .policy(Duration::from_millis(args.sync_interval_ms)),
        prealloc_bytes: args.prealloc_bytes,
        ..LogConfig::default()
    };
    let log = Arc::new(Log::open(&dir, config.clone())?);
    let batch = args.load.batch.max(1);
    let budget = args.load.budget();
    let start = Instant::now();
    let workers: Vec<_> = (0..args.writers.max(1))
        .map(|w| {
            let (log, budget) = (Arc::clone(&log), budget.clone());
            let payload = vec![b'a' + (w % 26) as u8; args.load.size];
            std::thread::spawn(move || {
                let records: Vec<&[u8]> = vec![&payload; batch];
                let mut latency = histogram();
                let mut done = 0u64;
                while budget.take() {
                    let t = Instant::now();
                    if batch == 1 {
                        log.append(&payload)?;
                    } else {
                        log.append_batch(&records)?;
                    }
                    latency.saturating_record(t.elapsed().as_micros() as u64);
                    done += batch as u64;
                }
                Ok::<_, crate::log::LogError>((done, latency))
            })
        })
        .collect();
    let mut latency = histogram();
    let mut records = 0;
    for w in workers {
        let (done, h) = w.join().expect("writer thread panicked")?;
        records += done;
        latency.add(&h).expect("same histogram bounds");
    }
    let elapsed = start.elapsed();
    let params = serde_json::json!({
        "writers": args.writers, "size": args.load.size, "batch": batch,
        "sync": args.sync, "prealloc_bytes": args.prealloc_bytes, "ops": args.load.ops,
    });
    let mut report = Report::new(
        "wal",
        params,
        records,
        records * args.load.size as u64,
        elapsed,
        &latency,
    );
    let log = Arc::into_inner(log).expect("writers are done");
    let stats = log.sync_stats();
    if stats.syncs > 0 {
        let per_sync = records as f64 / stats.syncs as f64;
        let sync_us = stats.sync_micros as f64 / stats.syncs as f64;
        report.extra.insert("syncs".into(), stats.syncs.into());
        report.extra.insert(
            "recs/sync".into(),
            serde_json::json!((per_sync * 10.0).round() / 10.0),
        );
        report
            .extra
            .insert("sync_avg_us".into(), serde_json::json!(sync_us.round()));
    }
    if args.reopen {
        log.close()?;
        drop(log);
        let reopened = timed_open(&dir, &config, "reopen_ms", &mut report)?;
        let bytes = dir_bytes(&dir);
        report
            .extra
            .insert("log_mib".into(), serde_json::json!(bytes >> 20));
        let active_bytes = reopened.segments().last().map_or(0, |s| s.bytes);
        // Not closed: its active segment stays marked in use, and its
        // syncer thread is left idle until the process exits.
        std::mem::forget(reopened);
        let reopened = timed_open(&dir, &config, "reopen_unclean_ms", &mut report)?;
        report
            .extra
            .insert("active_mib".into(), serde_json::json!(active_bytes >> 20));
        if args.keep {
            drop(reopened);
        } else {
            reopened.remove()?;
        }
    } else if args.keep {
        drop(log);
    } else {
        log.remove()?;
    }
    Ok(report)
}

/// Opens the log and reports how long that took under `key`.
fn timed_open(
    dir: &std::path::Path,
    config: &LogConfig,
    key: &str,
    report: &mut Report,
) -> Result<Log, crate::log::LogError> {
    let t = Instant::now();
    let log = Log::open(dir, config.clone())?;
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    report
        .extra
        .insert(key.into(), serde_json::json!((ms * 10.0).round() / 10.0));
    Ok(log)
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}
