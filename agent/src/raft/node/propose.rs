//! The propose loop: group commit at the Raft level, a few entries in
//! flight, with a deadline on every produce and byte bounds on the queue
//! and on each entry.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use openraft::Raft;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, RwLock, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::super::hops::HopClock;
use super::super::{Member, Request, Response, TypeConfig};
use super::now_ms;
use crate::server::CommitError;

/// An append request waiting in the proposal queue.
pub(super) struct Pending {
    /// Always a `Request::Append`; the propose loop stamps its `at_ms`.
    pub(super) request: Request,
    /// Record bytes of the request.
    pub(super) bytes: usize,
    /// Where the answer goes; closed once the caller gave up.
    pub(super) reply: oneshot::Sender<Result<Response, CommitError>>,
    /// When the caller gives up.
    pub(super) deadline: Instant,
    /// The request's share of the queue's byte bound, released when the
    /// request leaves the queue.
    pub(super) _queued: OwnedSemaphorePermit,
}

/// Requests queued for proposal before producers wait (backpressure), and
/// the record bytes they may hold.
pub(super) const PROPOSAL_QUEUE: usize = 4096;
pub(super) const PROPOSAL_QUEUE_BYTES: usize = 64 << 20;
/// The most client requests, and record bytes, batched into one entry. A
/// single request larger than the byte cap goes alone.
pub(super) const MAX_BATCH: usize = 1024;
pub(super) const MAX_BATCH_BYTES: usize = 8 << 20;
pub(super) fn queue_full() -> CommitError {
    CommitError::Unavailable("the proposal queue stayed full past produce_timeout".into())
}

pub(super) fn stopped() -> CommitError {
    CommitError::Unavailable("raft stopped".into())
}

pub(super) fn timed_out() -> CommitError {
    CommitError::Unavailable(
        "not committed within produce_timeout (it may still be; retry with a producer id to be safe)"
            .into(),
    )
}

/// Waits, until `deadline`, for a leader to be known; returns its id and
/// its member entry (where to forward to).
pub(super) async fn wait_leader(
    raft: &Raft<TypeConfig>,
    deadline: Instant,
) -> Result<(u64, Member), CommitError> {
    // The common case, a known leader, without openraft's waiter (which
    // clones the whole metrics on every check).
    {
        let metrics = raft.metrics();
        let now = metrics.borrow();
        if let (Ok(_), Some(found)) = (&now.running_state, leader_of(&now)) {
            return Ok(found);
        }
    }
    let wait = deadline.saturating_duration_since(Instant::now());
    let led = raft
        .wait(Some(wait))
        .metrics(
            |m| leader_of(m).is_some() || m.running_state.is_err(),
            "a leader",
        )
        .await
        .map_err(|_| CommitError::Unavailable("no leader elected".into()))?;
    if let Err(fatal) = &led.running_state {
        return Err(CommitError::Unavailable(format!("raft stopped: {fatal}")));
    }
    leader_of(&led).ok_or_else(|| CommitError::Unavailable("no leader elected".into()))
}

/// The leader the metrics name, with its address, if it is a member.
fn leader_of(m: &openraft::RaftMetrics<u64, Member>) -> Option<(u64, Member)> {
    let leader = m.current_leader?;
    let member = m.membership_config.membership().get_node(&leader)?;
    Some((leader, member.clone()))
}

/// Entries the propose loop keeps in flight at once. With one, the
/// leader's fsync, the round trip, the followers' fsync and the apply of
/// one entry all happen before the next entry starts, which roughly
/// halves a cluster's throughput; with a few, the next entry is written
/// and sent while the previous one is being acknowledged. More than a few
/// costs: every entry has a fixed cost, and more entries in flight mean
/// smaller batches. Measured on three nodes in one process (the
/// `measure_three_nodes` test, release, a busy 2-core machine) at 16 and
/// 64 requests in flight: depth 1 gave 7.0k and 26.5k records/s (p99 9 ms),
/// depth 2 7.6k and 25.9k, depth 4 8.4-9.4k and 28.5k (p99 3 ms), depth 8
/// 5.9k and 12.0k.
///
/// A cluster of one voter keeps one entry in flight: there is no round
/// trip to overlap, the log store's group commit already lets one fsync
/// cover every entry written meanwhile, and more entries in flight only
/// split the batches into more, smaller entries, each with its fixed cost
/// (encode, write, apply, openraft's bookkeeping). Measured on one node,
/// four in flight produced half the records per second of one at 16 and
/// 64 requests in flight.
pub(super) const MAX_IN_FLIGHT: usize = 4;

/// What the propose loop shares with the appends that skip it.
///
/// When nothing is queued or being submitted, an append submits its own
/// entry from the caller's task ([`Lane::try_direct`]): two task
/// hand-offs fewer (to the loop, and to the task awaiting the commit),
/// which is most of what one request in flight waits for besides the
/// fsync. It takes an entry slot like the loop does, and the gate, so the
/// in-flight bound and leadership transfers hold for it too. The loop
/// counts each request from the moment it is queued until its entry is
/// submitted (`pending`); a direct submit needs that count at zero, so it
/// never overtakes a request queued before it: a ProduceStream, which
/// sends its next request only once the previous one is ordered, keeps
/// its order whichever way each request goes.
pub(super) struct Lane {
    /// Entry slots, [`MAX_IN_FLIGHT`] of them.
    slots: Arc<Semaphore>,
    /// Requests queued or being submitted by the loop.
    pending: AtomicUsize,
    /// Taken shared to submit; a leadership transfer holds it exclusively.
    pub(super) gate: Arc<RwLock<()>>,
    /// Entries submitted directly (the tests look).
    direct: AtomicU64,
    /// Reports the hops of each answered entry.
    pub(super) hops: Arc<HopClock>,
}

impl Lane {
    pub(super) fn new(hops: Arc<HopClock>) -> Lane {
        Lane {
            slots: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            pending: AtomicUsize::new(0),
            gate: Arc::new(RwLock::new(())),
            direct: AtomicU64::new(0),
            hops,
        }
    }

    /// Counts a request about to be queued.
    pub(super) fn queued(&self) {
        self.pending.fetch_add(1, Ordering::SeqCst);
    }

    /// Uncounts `n` requests: submitted, failed, dropped, or never queued.
    pub(super) fn left(&self, n: usize) {
        self.pending.fetch_sub(n, Ordering::SeqCst);
    }

    /// Entries submitted without the loop so far.
    #[cfg(test)]
    pub(super) fn direct_entries(&self) -> u64 {
        self.direct.load(Ordering::Relaxed)
    }

    /// Submits `request` (an append) as an entry of its own from the
    /// caller's task, when nothing is queued or being submitted, a slot is
    /// free and no transfer holds the gate; `Err(request)` otherwise (the
    /// caller queues it). The entry's future resolves once it is applied,
    /// and holds the slot until then.
    pub(super) async fn try_direct(
        &self,
        raft: &Raft<TypeConfig>,
        request: Request,
        deadline: Instant,
    ) -> Result<Result<Committed, CommitError>, Request> {
        if self.pending.load(Ordering::SeqCst) != 0 {
            return Err(request);
        }
        let Ok(slot) = Arc::clone(&self.slots).try_acquire_many_owned(entry_weight(raft)) else {
            return Err(request);
        };
        let Ok(open) = Arc::clone(&self.gate).try_read_owned() else {
            return Err(request);
        };
        self.direct.fetch_add(1, Ordering::Relaxed);
        let mut request = request;
        if let Request::Append { at_ms, .. } = &mut request {
            *at_ms = now_ms();
        }
        let submitted = std::time::Instant::now();
        let submit = raft.client_write_ff(Request::Batch(vec![request]));
        let committed = match tokio::time::timeout_at(deadline, submit).await {
            Err(_) => return Ok(Err(timed_out())),
            Ok(Err(e)) => return Ok(Err(CommitError::Unavailable(e.to_string()))),
            Ok(Ok(committed)) => committed,
        };
        drop(open);
        let hops = Arc::clone(&self.hops);
        Ok(Ok(Box::pin(async move {
            let written = applied(committed, deadline, (&hops, submitted)).await;
            drop(slot);
            match written? {
                Response::Batch(mut answers) if answers.len() == 1 => Ok(answers.remove(0)),
                other => Err(CommitError::Unavailable(format!(
                    "unexpected reply {other:?}"
                ))),
            }
        })))
    }
}

/// The commit of a directly submitted entry: its request's answer.
pub(super) type Committed =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response, CommitError>> + Send>>;

/// Slots (of [`MAX_IN_FLIGHT`]) the next entry takes: one in a cluster of
/// several voters, all of them with a single voter (one entry in flight).
fn entry_weight(raft: &Raft<TypeConfig>) -> u32 {
    let voters = raft
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .voter_ids()
        .count();
    if voters > 1 {
        1
    } else {
        MAX_IN_FLIGHT as u32
    }
}

/// Group commit at the Raft level, pipelined. openraft 0.9 writes and
/// flushes one append at a time, so one entry per request would cost one
/// fsync per request. Instead, up to [`MAX_IN_FLIGHT`] entries are in
/// flight (one with a single voter), and every request that arrives while all of them are goes into
/// the next entry, as a `Request::Batch` of at most [`MAX_BATCH`] requests
/// and [`MAX_BATCH_BYTES`]. Entries are submitted one after the other with
/// `client_write_ff`, which keeps submission order, so the queue's order is
/// the log's. The entry is stamped with this (the leader's) clock. An
/// entry gives up at the latest deadline of its requests (a leader cut off
/// from its quorum never answers); requests whose caller already gave up
/// are not proposed. Submitting takes the lane's gate shared: a leadership
/// transfer holds it exclusively, so nothing new is proposed meanwhile
/// (requests wait, up to their deadline). Slots are shared with the
/// appends that skip the queue when it is idle (see [`Lane`]).
pub(super) async fn propose_loop(
    raft: Raft<TypeConfig>,
    id: u64,
    mut queue: mpsc::Receiver<Pending>,
    lane: Arc<Lane>,
    stop: CancellationToken,
) {
    let mut carry: Option<Pending> = None;
    loop {
        let first = match carry.take() {
            Some(first) => first,
            None => tokio::select! {
                _ = stop.cancelled() => return,
                next = queue.recv() => match next {
                    Some(first) => first,
                    None => return,
                },
            },
        };
        // Then a free slot: requests arriving while every slot is taken
        // wait in the queue and join this entry.
        let slot = tokio::select! {
            _ = stop.cancelled() => return,
            slot = Arc::clone(&lane.slots).acquire_many_owned(entry_weight(&raft)) => match slot {
                Ok(slot) => slot,
                Err(_) => return,
            },
        };
        let mut bytes = first.bytes;
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                // Checked before adding, so an entry stays within the cap
                // unless its only request is larger.
                Ok(next) if bytes + next.bytes > MAX_BATCH_BYTES => {
                    carry = Some(next);
                    break;
                }
                Ok(next) => {
                    bytes += next.bytes;
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        let taken = batch.len();
        batch.retain(|p| !p.reply.is_closed());
        let Some(deadline) = batch.iter().map(|p| p.deadline).max() else {
            lane.left(taken);
            continue;
        };
        let at_ms = now_ms();
        let mut requests = Vec::with_capacity(batch.len());
        let mut replies = Vec::with_capacity(batch.len());
        for pending in batch {
            let mut request = pending.request;
            if let Request::Append { at_ms: stamp, .. } = &mut request {
                *stamp = at_ms;
            }
            requests.push(request);
            replies.push(pending.reply);
        }
        let submit = async {
            let _open = lane.gate.read().await;
            let (leader, member) = wait_leader(&raft, deadline).await?;
            if leader != id {
                return Err(CommitError::Unavailable(format!(
                    "not the leader: {member} (node {leader}) leads"
                )));
            }
            let submitted = std::time::Instant::now();
            raft.client_write_ff(Request::Batch(requests))
                .await
                .map(|committed| (committed, submitted))
                .map_err(|e| CommitError::Unavailable(e.to_string()))
        };
        let submitted = tokio::select! {
            _ = stop.cancelled() => Err(shutting_down()),
            submitted = tokio::time::timeout_at(deadline, submit) => {
                submitted.unwrap_or_else(|_| Err(timed_out()))
            }
        };
        // Ordered (or failed): no longer ahead of a direct submit.
        lane.left(taken);
        let (committed, submitted) = match submitted {
            Ok(submitted) => submitted,
            Err(e) => {
                answer(Err(e), replies);
                continue;
            }
        };
        let (stop, hops) = (stop.clone(), Arc::clone(&lane.hops));
        tokio::spawn(async move {
            let written = tokio::select! {
                _ = stop.cancelled() => Err(shutting_down()),
                written = applied(committed, deadline, (&hops, submitted)) => written,
            };
            answer(written, replies);
            drop(slot);
        });
    }
}

/// Waits, until `deadline`, for a submitted entry to be applied
/// (`committed` is what `client_write_ff` returned at `submitted`); its
/// answer. Reports the entry's hops to `hops` (this is where the
/// proposer holds the answer; the loop's callers get it one hand-off
/// later).
async fn applied<E: std::fmt::Display, X>(
    committed: impl std::future::Future<
        Output = Result<Result<openraft::raft::ClientWriteResponse<TypeConfig>, E>, X>,
    >,
    deadline: Instant,
    (hops, submitted): (&HopClock, std::time::Instant),
) -> Result<Response, CommitError> {
    match tokio::time::timeout_at(deadline, committed).await {
        Err(_) => Err(timed_out()),
        Ok(Err(_)) => Err(stopped()),
        Ok(Ok(written)) => written
            .map(|w| {
                hops.answered(w.log_id.index, submitted);
                w.data
            })
            .map_err(|e| CommitError::Unavailable(e.to_string())),
    }
}

fn shutting_down() -> CommitError {
    CommitError::Unavailable("the node is shutting down".into())
}

/// Sends each request of an entry its answer: its element of the entry's
/// `Response::Batch`, or the entry's error.
fn answer(
    written: Result<Response, CommitError>,
    replies: Vec<oneshot::Sender<Result<Response, CommitError>>>,
) {
    let answers = match written {
        Ok(Response::Batch(answers)) if answers.len() == replies.len() => {
            answers.into_iter().map(Ok).collect()
        }
        Ok(other) => {
            let e = format!("unexpected reply {other:?}");
            vec![Err(e); replies.len()]
        }
        Err(CommitError::Unavailable(e)) => vec![Err(e); replies.len()],
        Err(other) => vec![Err(other.to_string()); replies.len()],
    };
    for (reply, answer) in replies.into_iter().zip(answers) {
        let _ = reply.send(answer.map_err(CommitError::Unavailable));
    }
}
