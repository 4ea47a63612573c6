//! The node's background loops: the failure watch, and on the leader the
//! producer bound, snapshots by bytes and retention.

use std::time::Duration;

use openraft::Raft;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::super::{Request, StateMachine, TypeConfig};
use crate::log::{retention_point, SegmentInfo};

/// How often the failure watch looks at the data log (openraft's fatal
/// errors arrive through its metrics at once).
pub(super) const FAILURE_CHECK: Duration = Duration::from_millis(100);
/// How often the snapshot-by-bytes loop measures.
pub(super) const SNAPSHOT_CHECK: Duration = Duration::from_secs(1);
/// How long the snapshot-by-bytes loop waits for a snapshot it asked for
/// before it asks again.
pub(super) const SNAPSHOT_RETRY: Duration = Duration::from_secs(60);

/// Why a node can no longer serve, if it can't: openraft stopped (a
/// storage error is fatal to it) or the data log failed.
pub(super) fn failure_of(raft: &Raft<TypeConfig>, sm: &StateMachine) -> Option<String> {
    if let Err(fatal) = &raft.metrics().borrow().running_state {
        return Some(format!("raft stopped: {fatal}"));
    }
    sm.failure()
}

/// Logs each new leader with its term, and watches for the node failing
/// for good; then stops Raft (a leader steps
/// down: it no longer heartbeats, so a cluster elects another) and
/// publishes why.
pub(super) async fn watch_failure(
    raft: Raft<TypeConfig>,
    sm: StateMachine,
    failed: watch::Sender<Option<String>>,
    stop: CancellationToken,
) {
    let mut metrics = raft.metrics();
    let mut known = (0, None);
    let why = loop {
        if let Some(why) = failure_of(&raft, &sm) {
            break why;
        }
        // openraft's own election lines are below the default filter.
        let now = {
            let m = metrics.borrow();
            (m.current_term, m.current_leader)
        };
        if now.1.is_some() && now != known {
            info!(term = now.0, leader = now.1, "leader known");
            known = now;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = metrics.changed() => if changed.is_err() {
                break "raft stopped".to_string();
            },
            _ = tokio::time::sleep(FAILURE_CHECK) => {}
        }
    };
    if stop.is_cancelled() {
        return;
    }
    error!(reason = %why, "storage failed: this node stops serving until restarted");
    failed.send_replace(Some(why));
    let _ = raft.shutdown().await;
}

/// On each term this node leads, replicates its `max_producers`, so every
/// node bounds the producer table alike.
pub(super) async fn producer_limit_loop(
    raft: Raft<TypeConfig>,
    id: u64,
    max: u64,
    stop: CancellationToken,
) {
    let mut metrics = raft.metrics();
    let mut done_term = None;
    loop {
        let leading = {
            let m = metrics.borrow_and_update();
            (m.current_leader == Some(id) && m.running_state.is_ok()).then_some(m.current_term)
        };
        if let Some(term) = leading.filter(|t| done_term != Some(*t)) {
            let write = raft.client_write(Request::ProducerLimit { max });
            let written = tokio::select! {
                _ = stop.cancelled() => return,
                written = write => written,
            };
            match written {
                Ok(_) => done_term = Some(term),
                Err(e) => warn!(error = %e, "replicating max_producers failed"),
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = metrics.changed() => if changed.is_err() { return },
        }
    }
}

/// Record bytes in the data log after `mark`: the sum over segments from
/// the marked one on, less what the marked segment held at the mark.
/// Retention dropping the marked segment only makes this smaller.
pub(super) fn bytes_since(segments: &[SegmentInfo], (base, bytes): (u64, u64)) -> u64 {
    segments
        .iter()
        .filter(|s| s.base >= base)
        .map(|s| s.bytes)
        .sum::<u64>()
        .saturating_sub(bytes)
}

/// A mark of the data log's end: its active segment and that one's size.
pub(super) fn end_mark(segments: &[SegmentInfo]) -> (u64, u64) {
    segments.last().map_or((0, 0), |s| (s.base, s.bytes))
}

/// openraft 0.9's snapshot policy counts entries only, and an entry may
/// hold up to [`MAX_BATCH_BYTES`] of records. This loop also triggers a
/// snapshot once the records applied since the last one pass `threshold`
/// bytes, which bounds the Raft log between snapshots in bytes too. It
/// measures the data log (the same records as the Raft log, without the
/// entry framing), whose segment sizes are at hand.
pub(super) async fn snapshot_size_loop(
    raft: Raft<TypeConfig>,
    sm: StateMachine,
    threshold: u64,
    stop: CancellationToken,
) {
    let mut last = raft.metrics().borrow().snapshot;
    let mut since = end_mark(&data_segments(&sm).await);
    // When this loop last asked for a snapshot that has not arrived yet
    // (asked again after a while, in case that build failed).
    let mut triggered: Option<Instant> = None;
    let mut tick = tokio::time::interval(SNAPSHOT_CHECK);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let segments = data_segments(&sm).await;
        let snapshot = raft.metrics().borrow().snapshot;
        if snapshot != last {
            // A snapshot was built or installed: count from here.
            (last, since, triggered) = (snapshot, end_mark(&segments), None);
            continue;
        }
        let waiting = triggered.is_some_and(|at| at.elapsed() < SNAPSHOT_RETRY);
        if !waiting && bytes_since(&segments, since) >= threshold {
            if raft.trigger().snapshot().await.is_err() {
                return;
            }
            triggered = Some(Instant::now());
            info!(
                threshold,
                "snapshot triggered by the bytes applied since the last"
            );
        }
    }
}

/// The data log's segments, listed on a blocking thread (it stats each
/// store file); none if that thread failed.
pub(super) async fn data_segments(sm: &StateMachine) -> Vec<SegmentInfo> {
    let data = sm.data();
    tokio::task::spawn_blocking(move || data.segments())
        .await
        .unwrap_or_default()
}

/// How often the leader checks retention.
pub(super) const RETENTION_CHECK: Duration = Duration::from_secs(1);

/// On the leader, proposes a new lowest offset when segments exceed the
/// retention limits; every node applies the same `Retain` command.
pub(super) async fn retention_loop(
    raft: Raft<TypeConfig>,
    id: u64,
    sm: StateMachine,
    (max_bytes, max_age): (u64, Option<Duration>),
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(RETENTION_CHECK);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if raft.metrics().borrow().current_leader != Some(id) {
            continue;
        }
        let segments = data_segments(&sm).await;
        let lowest = retention_point(&segments, max_bytes, max_age, std::time::SystemTime::now());
        if lowest > sm.lowest_offset() {
            match raft.client_write(Request::Retain { lowest }).await {
                Ok(_) => info!(
                    lowest,
                    "retention: dropped records below the new lowest offset"
                ),
                Err(e) => warn!(error = %e, "retention proposal failed"),
            }
        }
    }
}
