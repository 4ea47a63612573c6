//! `proglog bench`: closed-loop load generators that report throughput and
//! latency percentiles. Numbers are for notes and comparisons, never
//! asserted in tests.

pub mod grpc;
pub mod wal;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Flags every load generator shares.
#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    /// Payload bytes per record.
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// How long to run.
    #[arg(long, default_value = "10s", value_parser = crate::units::parse_duration)]
    pub duration: Duration,
    /// Records per call (append_batch, ProduceBatch); 1 = one record per call.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Stop after this many calls in all (each one record or one batch),
    /// or at `--duration`, whichever comes first.
    #[arg(long)]
    pub ops: Option<u64>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

impl LoadArgs {
    /// The run's stopping rule, shared by every worker of one run.
    pub fn budget(&self) -> Budget {
        Budget {
            deadline: std::time::Instant::now() + self.duration,
            ops: self.ops.map(|n| Arc::new(AtomicU64::new(n))),
        }
    }
}

/// When a run stops: at a deadline, or once its calls are spent. Clones
/// share the count.
#[derive(Debug, Clone)]
pub struct Budget {
    deadline: std::time::Instant,
    ops: Option<Arc<AtomicU64>>,
}

impl Budget {
    /// Whether the caller may make one more call (and counts it).
    pub fn take(&self) -> bool {
        if std::time::Instant::now() >= self.deadline {
            return false;
        }
        match &self.ops {
            None => true,
            Some(left) => left
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok(),
        }
    }

    /// The time limit of the run.
    pub fn deadline(&self) -> std::time::Instant {
        self.deadline
    }
}

/// What every benchmark prints: throughput and call latency.
#[derive(Debug, Serialize)]
pub struct Report {
    /// What was measured, e.g. `wal`.
    pub bench: String,
    /// The knobs of the run, for the record.
    pub params: serde_json::Value,
    /// Records completed.
    pub records: u64,
    /// Wall time of the run, seconds.
    pub seconds: f64,
    /// Records per second.
    pub records_per_sec: f64,
    /// Payload MiB per second.
    pub mib_per_sec: f64,
    /// Latency percentiles of one call (one record or one batch), µs.
    pub p50_us: u64,
    /// 99th percentile, µs.
    pub p99_us: u64,
    /// 99.9th percentile, µs.
    pub p999_us: u64,
    /// Slowest call, µs.
    pub max_us: u64,
    /// Benchmark-specific extra figures.
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Report {
    /// Builds a report from a latency histogram (µs) and totals.
    pub fn new(
        bench: &str,
        params: serde_json::Value,
        records: u64,
        payload_bytes: u64,
        elapsed: Duration,
        latency: &Histogram<u64>,
    ) -> Report {
        let seconds = elapsed.as_secs_f64();
        Report {
            bench: bench.to_string(),
            params,
            records,
            seconds,
            records_per_sec: records as f64 / seconds,
            mib_per_sec: payload_bytes as f64 / seconds / (1 << 20) as f64,
            p50_us: latency.value_at_quantile(0.50),
            p99_us: latency.value_at_quantile(0.99),
            p999_us: latency.value_at_quantile(0.999),
            max_us: latency.max(),
            extra: serde_json::Map::new(),
        }
    }

    /// Prints one JSON object, or a short human-readable table.
    pub fn print(&self, json: bool) {
        if json {
            println!(
                "{}",
                serde_json::to_string(self).expect("report serializes")
            );
            return;
        }
        println!("{} {}", self.bench, self.params);
        println!("  records/s    {:.0}", self.records_per_sec);
        println!("  MiB/s        {:.1}", self.mib_per_sec);
        println!("  records      {} in {:.2}s", self.records, self.seconds);
        println!(
            "  latency µs   p50 {}  p99 {}  p99.9 {}  max {}",
            self.p50_us, self.p99_us, self.p999_us, self.max_us
        );
        for (k, v) in &self.extra {
            println!("  {k:<12} {v}");
        }
    }
}

/// A latency histogram in µs from 1 µs to 1 minute, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_stops_at_its_op_count_across_clones() {
        let args = LoadArgs {
            size: 1,
            duration: Duration::from_secs(3600),
            batch: 1,
            ops: Some(5),
            json: false,
        };
        let (a, b) = (args.budget(), args.budget());
        assert_eq!((0..10).filter(|_| a.take()).count(), 5);
        let shared = b.clone();
        assert_eq!((0..3).filter(|_| b.take()).count(), 3);
        assert_eq!((0..3).filter(|_| shared.take()).count(), 2);
        let expired = LoadArgs {
            duration: Duration::ZERO,
            ops: None,
            ..args
        };
        assert!(!expired.budget().take());
    }
}
