//! [`Metrics`]: the agent's OpenTelemetry instruments, exported in the
//! Prometheus text format (opentelemetry-prometheus into a `prometheus`
//! registry). Every name carries the `proglog_` prefix and its Prometheus
//! suffix as written here (the exporter adds no unit or `_total` suffix).
//!
//! What records what:
//! - gRPC golden signals: the tower layer of `grpc` wraps the client
//!   port's gRPC server (every transport): calls, errors by gRPC code,
//!   latency, in flight, per service and method.
//! - WAL fsync latency: the syncer thread, through the log's
//!   [`SyncObserver`] hook (one histogram record per round).
//! - Raft hops of each entry this node proposes (submit, write, sync,
//!   commit, apply hand-off, apply, answer): the proposer, through the
//!   node's [`HopObserver`] hook, once the entry is answered.
//! - Raft, WAL size, gossip membership, data-dir disk free, open fds and
//!   RSS: observable gauges evaluated at scrape time. Scrapes run on a
//!   blocking thread ([`Metrics::render`]), since some callbacks stat
//!   files.
//!
//! This module reads the Raft node and gossip through their own plain
//! accessors; it never names openraft or serf.

mod grpc;
mod process;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry::metrics::{Histogram, Meter, MeterProvider as _};
use opentelemetry::KeyValue;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use prometheus::{Encoder, TextEncoder};
use tokio_util::sync::CancellationToken;

use crate::discovery::{GossipStatus, Membership};
use crate::log::SyncObserver;
use crate::raft::hops::{HopObserver, HOPS};
use crate::raft::node::WalStats;
use crate::raft::RaftNode;
pub use grpc::{GrpcLayer, GrpcService, MeteredBody, MeteredFuture};

/// Bucket bounds (seconds) of the gRPC latency histogram: 0.5 ms to 10 s.
const RPC_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Bucket bounds (seconds) of the fsync histogram: 50 µs to 1 s.
const FSYNC_BUCKETS: [f64; 13] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];
/// Bucket bounds (seconds) of the Raft hop histogram: 5 µs to 1 s (a
/// hand-off between threads is microseconds; a commit across peers is
/// milliseconds).
const HOP_BUCKETS: [f64; 16] = [
    0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
    0.025, 0.05, 0.1, 0.25, 1.0,
];
/// How often gossip membership is recounted when no member event came.
const MEMBERS_REFRESH: Duration = Duration::from_secs(5);
/// Gossip statuses, in the order of [`Metrics`]'s member counts.
const STATUSES: [GossipStatus; 5] = [
    GossipStatus::Alive,
    GossipStatus::Leaving,
    GossipStatus::Left,
    GossipStatus::Failed,
    GossipStatus::Unknown,
];

/// Why metrics could not be set up or rendered.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The Prometheus exporter could not be built.
    #[error("metrics exporter: {0}")]
    Exporter(String),
    /// Gathered metrics did not encode (a bug: names are fixed).
    #[error("encoding metrics: {0}")]
    Encode(String),
}

/// The agent's metrics: a handle the agent clones into what records
/// (the gRPC layer, the WAL's sync hook) and what observes (the node,
/// gossip, the process). Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: prometheus::Registry,
    /// Keeps the exporter's reader alive.
    _provider: SdkMeterProvider,
    meter: Meter,
    grpc: Arc<grpc::GrpcMetrics>,
    fsync: Histogram<f64>,
    hops: Histogram<f64>,
    /// Gossip members by status (see [`STATUSES`]), refreshed by
    /// [`Metrics::watch_membership`].
    members: Arc<Mutex<Option<[u64; 5]>>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// A fresh registry with the recording instruments (gRPC, fsync) and
    /// the gauges of gossip membership; add the node's and the process's
    /// with [`Metrics::observe_node`] and [`Metrics::observe_process`].
    pub fn new() -> Result<Metrics, MetricsError> {
        let registry = prometheus::Registry::new();
        let exporter = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .without_units()
            .without_counter_suffixes()
            .without_target_info()
            .scope_info_enabled(false)
            .build()
            .map_err(|e| MetricsError::Exporter(e.to_string()))?;
        let provider = SdkMeterProvider::builder().with_reader(exporter).build();
        let meter = provider.meter("proglog");
        let grpc = Arc::new(grpc::GrpcMetrics::new(&meter, RPC_BUCKETS.to_vec()));
        let fsync = meter
            .f64_histogram("proglog_wal_fsync_duration_seconds")
            .with_description("Duration of each group-commit fdatasync of a WAL")
            .with_boundaries(FSYNC_BUCKETS.to_vec())
            .build();
        let hops = meter
            .f64_histogram("proglog_raft_hop_duration_seconds")
            .with_description(
                "Time each entry this node proposed spent in each hop, from the hand-off to \
                 Raft to the answer (submit, write, sync, commit, apply_handoff, apply, answer)",
            )
            .with_boundaries(HOP_BUCKETS.to_vec())
            .build();
        let members: Arc<Mutex<Option<[u64; 5]>>> = Arc::default();
        let counts = Arc::clone(&members);
        meter
            .u64_observable_gauge("proglog_members")
            .with_description("Gossip members this node knows (itself included), by status")
            .with_callback(move |o| {
                let counts = *counts.lock().unwrap_or_else(|e| e.into_inner());
                for (status, n) in STATUSES.iter().zip(counts.into_iter().flatten()) {
                    o.observe(n, &[KeyValue::new("status", status.as_str())]);
                }
            })
            .build();
        Ok(Metrics {
            inner: Arc::new(Inner {
                registry,
                _provider: provider,
                meter,
                grpc,
                fsync,
                hops,
                members,
            }),
        })
    }

    /// The tower layer that counts the gRPC calls of a server.
    pub fn grpc_layer(&self) -> GrpcLayer {
        GrpcLayer::new(Some(Arc::clone(&self.inner.grpc)))
    }

    /// The hook that records each WAL fsync in
    /// `proglog_wal_fsync_duration_seconds`.
    pub fn sync_observer(&self) -> Arc<dyn SyncObserver> {
        Arc::new(FsyncRecorder(self.inner.fsync.clone()))
    }

    /// The hook that records the hops of each entry this node proposes in
    /// `proglog_raft_hop_duration_seconds{hop}`.
    pub fn hop_observer(&self) -> Arc<dyn HopObserver> {
        Arc::new(HopRecorder {
            histogram: self.inner.hops.clone(),
            labels: HOPS.map(|hop| [KeyValue::new("hop", hop)]),
        })
    }

    /// Registers the Raft and WAL gauges of `node`, read at each scrape.
    pub fn observe_node(&self, node: RaftNode) {
        let m = &self.inner.meter;
        let gauge = |name: &'static str, help: &'static str, read: fn(&RaftNode) -> u64| {
            let node = node.clone();
            m.u64_observable_gauge(name)
                .with_description(help)
                .with_callback(move |o| o.observe(read(&node), &[]))
                .build();
        };
        gauge("proglog_raft_term", "Current Raft term", |n| {
            n.raft_stats().term
        });
        gauge(
            "proglog_raft_is_leader",
            "1 if this node is the Raft leader, else 0",
            |n| n.raft_stats().leader as u64,
        );
        gauge(
            "proglog_raft_last_log_index",
            "Index of the last entry in this node's Raft log (0 when empty)",
            |n| n.raft_stats().last_log_index.unwrap_or(0),
        );
        gauge(
            "proglog_raft_commit_index",
            "Index of the last Raft entry known committed (0 before any)",
            |n| n.raft_stats().committed_index.unwrap_or(0),
        );
        gauge(
            "proglog_raft_applied_index",
            "Index of the last Raft entry applied to the state machine (0 before any)",
            |n| n.raft_stats().applied_index.unwrap_or(0),
        );
        let lag_node = node.clone();
        m.u64_observable_gauge("proglog_raft_replication_lag_entries")
            .with_description("On the leader: entries each other member is not known to hold")
            .with_callback(move |o| {
                for lag in lag_node.raft_stats().lag {
                    o.observe(lag.entries, &[KeyValue::new("follower", lag.name)]);
                }
            })
            .build();
        let wal = |name: &'static str, help: &'static str, read: fn(&WalStats) -> u64| {
            let node = node.clone();
            m.u64_observable_gauge(name)
                .with_description(help)
                .with_callback(move |o| {
                    for stats in node.wal_stats() {
                        o.observe(read(&stats), &[KeyValue::new("log", stats.log)]);
                    }
                })
                .build();
        };
        wal(
            "proglog_wal_bytes",
            "Store bytes of a WAL's segments (log=raft: Raft entries, log=data: records)",
            |s| s.bytes,
        );
        wal("proglog_wal_segments", "Segments of a WAL", |s| s.segments);
        wal("proglog_wal_records", "Records retained in a WAL", |s| {
            s.records
        });
    }

    /// Registers the saturation gauges of this process: free bytes of the
    /// file system holding `data_dir`, open fds, resident memory.
    pub fn observe_process(&self, data_dir: PathBuf) {
        process::observe(&self.inner.meter, data_dir);
    }

    /// Keeps `proglog_members` current: recounts gossip members by status
    /// on every member event and every few seconds, until `cancel`.
    pub async fn watch_membership(self, membership: Membership, cancel: CancellationToken) {
        let mut changes = membership.changes();
        loop {
            let mut counts = [0u64; 5];
            for member in membership.members().await {
                if let Some(i) = STATUSES.iter().position(|s| *s == member.status) {
                    counts[i] += 1;
                }
            }
            *self.inner.members.lock().unwrap_or_else(|e| e.into_inner()) = Some(counts);
            tokio::select! {
                _ = cancel.cancelled() => return,
                changed = changes.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(MEMBERS_REFRESH) => {}
            }
        }
    }

    /// Gathers every metric and encodes it in the Prometheus text format.
    /// Runs the gauges' callbacks, some of which stat files: call it on a
    /// blocking thread.
    pub fn render(&self) -> Result<Vec<u8>, MetricsError> {
        let mut out = Vec::with_capacity(16 << 10);
        TextEncoder::new()
            .encode(&self.inner.registry.gather(), &mut out)
            .map_err(|e| MetricsError::Encode(e.to_string()))?;
        Ok(out)
    }
}

/// Records WAL fsync durations (the log's [`SyncObserver`]).
#[derive(Debug)]
struct FsyncRecorder(Histogram<f64>);

impl SyncObserver for FsyncRecorder {
    fn synced(&self, took: Duration) {
        self.0.record(took.as_secs_f64(), &[]);
    }
}

/// Records the hops of proposed entries (the node's [`HopObserver`]), with
/// each hop's label built once.
#[derive(Debug)]
struct HopRecorder {
    histogram: Histogram<f64>,
    labels: [[KeyValue; 1]; HOPS.len()],
}

impl HopObserver for HopRecorder {
    fn hops(&self, hops: &[Duration; HOPS.len()]) {
        for (took, labels) in hops.iter().zip(&self.labels) {
            self.histogram.record(took.as_secs_f64(), labels);
        }
    }
}
