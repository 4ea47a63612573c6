//! [`RaftNode`]: one Raft member over our log store and state machine,
//! serving the gRPC service's [`CommitLog`]. Produce goes through Raft;
//! reads serve applied records only.
//!
//! Background tasks of a node: the propose loop (group commit into Raft
//! entries, a few in flight, bounded in requests and bytes, every produce
//! under a deadline), the failure watch (a storage failure stops the node for
//! good), the leader's producer-bound and retention proposals, and the
//! snapshot-by-bytes trigger. They live in `propose.rs` and `loops.rs`;
//! `network.rs` has the [`Forward`] half of a node's network and the
//! placeholder network of a node without peers; `transfer.rs` hands
//! leadership to another voter, `membership.rs` changes the members;
//! `stats.rs` reads the numbers the metrics endpoint exports.

mod loops;
mod membership;
mod network;
mod propose;
mod stats;
mod transfer;

#[cfg(test)]
mod router;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_cluster;
#[cfg(test)]
mod tests_pipeline;
#[cfg(test)]
mod tests_power;

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use openraft::network::RaftNetworkFactory;
use openraft::storage::RaftLogStorage;
use openraft::{Raft, SnapshotPolicy};
use proglog_proto::Server;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::hops::{HopClock, HopObserver};
use super::{LogStore, Member, Request, Response, StateMachine, TypeConfig};
use crate::log::fs::{replace_durably, RealFs};
use crate::log::{LogConfig, LogError};
use loops::*;
pub use membership::{ClusterStatus, MemberStatus, MembershipError, RoleWatch};
pub use network::{Campaigned, Forward, Forwarded, NoNetwork};
use propose::*;
pub use stats::{FollowerLag, RaftStats, WalStats};

use crate::server::{
    CommitError, CommitLog, Durable, Ordered, Producer, Reading, READ_BATCH_BYTES,
};

/// Why a Raft node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Opening the Raft log or the state machine failed.
    #[error(transparent)]
    Log(#[from] LogError),
    /// openraft refused to start or initialize.
    #[error("raft: {0}")]
    Raft(String),
    /// The node's identity files could not be read or written.
    #[error("{}: {source}", path.display())]
    Identity {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Settings of a [`RaftNode`].
#[derive(Debug, Clone)]
pub struct NodeSettings {
    /// Directory for the Raft log, the state machine and identity files.
    pub dir: PathBuf,
    /// This node as members see it: its name (GetServers shows it) and
    /// the RPC address it advertises.
    pub member: Member,
    /// Segment sizes for the Raft log and the data log, and the Raft log's
    /// sync policy (the data log never syncs: it is replayed from Raft).
    pub log: LogConfig,
    /// Entries applied since the last snapshot that trigger a new one.
    pub snapshot_threshold: u64,
    /// Record bytes applied since the last snapshot that trigger a new
    /// one (0: only the entry threshold counts).
    pub snapshot_threshold_bytes: u64,
    /// Retention by size (0: none).
    pub retention_bytes: u64,
    /// Retention by age.
    pub retention_age: Option<Duration>,
    /// How long a produce may take, queueing and commit included, before
    /// it answers UNAVAILABLE.
    pub produce_timeout: Duration,
    /// Idempotent producers remembered (least recently used out); the
    /// leader replicates it, so every node keeps the same ones.
    pub max_producers: u64,
    /// Raft log entries kept behind the last snapshot when the log is
    /// purged (openraft's `max_in_snapshot_log_to_keep`). A follower at
    /// most this far behind catches up from the log; one further behind
    /// (down longer, or new) is sent the snapshot, which costs the whole
    /// data log. [`MAX_IN_SNAPSHOT_LOG_TO_KEEP`] unless tests want a
    /// snapshot install sooner.
    pub max_in_snapshot_log_to_keep: u64,
    /// Told the hops of each entry this node proposes and answers (the
    /// agent's hop histogram); `None`: nothing is stamped.
    pub hop_observer: Option<Arc<dyn HopObserver>>,
}

/// The usual [`NodeSettings::max_in_snapshot_log_to_keep`]: a follower
/// down for up to this many entries catches up without a snapshot.
pub const MAX_IN_SNAPSHOT_LOG_TO_KEEP: u64 = 1000;

/// A running Raft member. Cheap to clone.
#[derive(Clone)]
pub struct RaftNode {
    id: u64,
    member: Member,
    raft: Raft<TypeConfig>,
    /// Sends a follower's appends to the leader.
    forward: Arc<dyn Forward>,
    sm: StateMachine,
    log: LogStore,
    dir: PathBuf,
    /// The cluster this node bootstrapped (its `cluster-id` file).
    cluster_id: Arc<OnceLock<u64>>,
    /// Set once the state machine has applied every entry the Raft log
    /// held at start: until then, reads past the data log's end answer
    /// UNAVAILABLE rather than a misleading OUT_OF_RANGE.
    caught_up: Arc<AtomicBool>,
    /// Requests waiting to be proposed (see [`propose_loop`]).
    proposals: mpsc::Sender<Pending>,
    /// Record bytes the proposal queue may hold (one permit per byte).
    queue_bytes: Arc<Semaphore>,
    /// Deadline of each produce.
    produce_timeout: Duration,
    /// Why the node stopped serving, once it did (see [`watch_failure`]).
    failure: watch::Receiver<Option<String>>,
    /// Stops the background loops.
    stop: CancellationToken,
    /// Serialises membership changes (one at a time).
    membership_lock: Arc<tokio::sync::Mutex<()>>,
    /// Entry slots, the count of queued requests and the gate (a
    /// leadership transfer holds it exclusively, so no entry is proposed
    /// meanwhile), shared by the propose loop and direct submits.
    lane: Arc<Lane>,
}

/// Entries per AppendEntries RPC (openraft's `max_payload_entries`, which
/// counts entries only). With entries of at most [`MAX_BATCH_BYTES`] of
/// records, or one larger request, an RPC carries at most 16 x 8 MiB =
/// 128 MiB of records, or 16 such requests: the Raft transport's message
/// limit must allow that plus framing.
pub const MAX_PAYLOAD_ENTRIES: u64 = 16;
/// How long one snapshot chunk may take, the install after the last one
/// included (openraft's `install_snapshot_timeout`, in ms).
const INSTALL_SNAPSHOT_TIMEOUT_MS: u64 = 60_000;
impl RaftNode {
    /// Opens the stores and starts Raft, talking to peers through
    /// `network`. The node id is created on first start and persisted in
    /// the directory.
    pub async fn start<N>(settings: NodeSettings, network: N) -> Result<RaftNode, NodeError>
    where
        N: RaftNetworkFactory<TypeConfig> + Forward + Clone,
    {
        std::fs::create_dir_all(&settings.dir).map_err(|source| NodeError::Identity {
            path: settings.dir.clone(),
            source,
        })?;
        let id = persisted_id(&settings.dir.join("node-id"))?;
        let cluster_id = Arc::new(OnceLock::new());
        if let Some(cluster) = read_id(&settings.dir.join("cluster-id"))? {
            let _ = cluster_id.set(cluster);
        }
        info!(
            node_id = id,
            cluster_id = ?cluster_id.get(),
            sync = ?settings.log.sync,
            "starting the raft node"
        );
        let hops = HopClock::new(settings.hop_observer.clone());
        let log = LogStore::open(&settings.dir.join("raft"), settings.log.clone())?
            .timed(Arc::clone(&hops));
        let sm = StateMachine::open(&settings.dir.join("sm"), settings.log.clone())?
            .timed(Arc::clone(&hops));
        let config = openraft::Config {
            cluster_name: "proglog".into(),
            heartbeat_interval: 100,
            election_timeout_min: 300,
            election_timeout_max: 600,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(settings.snapshot_threshold),
            max_in_snapshot_log_to_keep: settings.max_in_snapshot_log_to_keep,
            max_payload_entries: MAX_PAYLOAD_ENTRIES,
            // openraft's 200 ms default covers each snapshot chunk, and the
            // last one includes the whole install on the follower (unpack
            // and check the data log): seconds for a large snapshot.
            install_snapshot_timeout: INSTALL_SNAPSHOT_TIMEOUT_MS,
            ..openraft::Config::default()
        }
        .validate()
        .map_err(|e| NodeError::Raft(e.to_string()))?;
        let last_at_start = log
            .clone()
            .get_log_state()
            .await
            .map_err(|e| NodeError::Raft(e.to_string()))?
            .last_log_id
            .map(|l| l.index);
        let forward: Arc<dyn Forward> = Arc::new(network.clone());
        let raft = Raft::new(id, Arc::new(config), network, log.clone(), sm.clone())
            .await
            .map_err(|e| NodeError::Raft(e.to_string()))?;
        let caught_up = Arc::new(AtomicBool::new(last_at_start.is_none()));
        if !caught_up.load(Ordering::Acquire) {
            let (raft, flag) = (raft.clone(), Arc::clone(&caught_up));
            tokio::spawn(async move {
                let applied = raft
                    .wait(None)
                    .applied_index_at_least(last_at_start, "replay")
                    .await;
                if applied.is_ok() {
                    flag.store(true, Ordering::Release);
                    info!("state machine caught up with the raft log");
                }
            });
        }
        let stop = CancellationToken::new();
        let (proposals, queue) = mpsc::channel(PROPOSAL_QUEUE);
        let lane = Arc::new(Lane::new(hops));
        tokio::spawn(propose_loop(
            raft.clone(),
            id,
            queue,
            Arc::clone(&lane),
            stop.clone(),
        ));
        let (failed, failure) = watch::channel(None);
        tokio::spawn(watch_failure(
            raft.clone(),
            sm.clone(),
            failed,
            stop.clone(),
        ));
        tokio::spawn(producer_limit_loop(
            raft.clone(),
            id,
            settings.max_producers,
            stop.clone(),
        ));
        if settings.snapshot_threshold_bytes > 0 {
            tokio::spawn(snapshot_size_loop(
                raft.clone(),
                sm.clone(),
                settings.snapshot_threshold_bytes,
                stop.clone(),
            ));
        }
        if settings.retention_bytes > 0 || settings.retention_age.is_some() {
            tokio::spawn(retention_loop(
                raft.clone(),
                id,
                sm.clone(),
                (settings.retention_bytes, settings.retention_age),
                stop.clone(),
            ));
        }
        Ok(RaftNode {
            id,
            member: settings.member,
            raft,
            forward,
            sm,
            log,
            dir: settings.dir,
            cluster_id,
            caught_up,
            proposals,
            queue_bytes: Arc::new(Semaphore::new(PROPOSAL_QUEUE_BYTES)),
            produce_timeout: settings.produce_timeout,
            failure,
            stop,
            membership_lock: Arc::default(),
            lane,
        })
    }

    /// Initializes a one-member cluster of this node, unless Raft state
    /// exists (then it is a no-op). Returns whether it initialized. The
    /// new cluster's id is persisted first (`cluster-id`), so a crash
    /// between the two steps leaves the id for the retry.
    pub async fn bootstrap(&self) -> Result<bool, NodeError> {
        let initialized = self
            .raft
            .is_initialized()
            .await
            .map_err(|e| NodeError::Raft(e.to_string()))?;
        if initialized {
            return Ok(false);
        }
        let cluster = persisted_id(&self.dir.join("cluster-id"))?;
        let members = BTreeMap::from([(self.id, self.member.clone())]);
        self.raft
            .initialize(members)
            .await
            .map_err(|e| NodeError::Raft(e.to_string()))?;
        let _ = self.cluster_id.set(cluster);
        info!(
            node_id = self.id,
            cluster_id = cluster,
            "bootstrapped a new cluster"
        );
        Ok(true)
    }

    /// The id of the cluster this node bootstrapped or joined, from its
    /// `cluster-id` file; `None` before either. A leader refuses a join
    /// from a node of another cluster.
    pub fn cluster_id(&self) -> Option<u64> {
        self.cluster_id.get().copied()
    }

    /// Records the id of the cluster this node joined (persisted first).
    /// A node of another cluster keeps its own id and gets an error.
    pub async fn adopt_cluster_id(&self, cluster: u64) -> Result<(), NodeError> {
        match self.cluster_id() {
            Some(own) if own == cluster => return Ok(()),
            Some(own) => {
                return Err(NodeError::Raft(format!(
                    "this node belongs to cluster {own}, not {cluster}"
                )))
            }
            None => {}
        }
        let path = self.dir.join("cluster-id");
        let written = path.clone();
        tokio::task::spawn_blocking(move || {
            replace_durably(&RealFs, &written, cluster.to_string().as_bytes())
        })
        .await
        .map_err(|e| NodeError::Raft(e.to_string()))?
        .map_err(|source| NodeError::Identity { path, source })?;
        let _ = self.cluster_id.set(cluster);
        Ok(())
    }

    /// The openraft handle, for the peer service (Raft RPCs from peers).
    pub(crate) fn raft(&self) -> &Raft<TypeConfig> {
        &self.raft
    }

    /// The state machine, for the peer service (a snapshot chunk reads the
    /// data log's store files).
    pub(crate) fn state_machine(&self) -> &StateMachine {
        &self.sm
    }

    /// How long a produce may take (a forwarded one too).
    pub fn produce_timeout(&self) -> Duration {
        self.produce_timeout
    }

    /// Why the node stopped serving, or `None` while it serves. A failed
    /// write or sync in either log, or openraft stopping on a storage
    /// error, is for good: the node takes no more writes until restarted.
    pub fn failure(&self) -> Option<String> {
        self.failure.borrow().clone()
    }

    /// A receiver that changes once, to `Some(reason)`, when the node stops
    /// serving for good (see [`RaftNode::failure`]): the agent turns its
    /// health to NOT_SERVING on it.
    pub fn failure_watch(&self) -> watch::Receiver<Option<String>> {
        self.failure.clone()
    }

    /// Stops Raft and closes both logs.
    pub async fn shutdown(&self) -> Result<(), LogError> {
        self.stop.cancel();
        let _ = self.raft.shutdown().await;
        // Closing writes the metadata and seals the log (fsyncs).
        let log = self.log.clone();
        tokio::task::spawn_blocking(move || log.close())
            .await
            .map_err(|e| LogError::Io {
                path: self.dir.clone(),
                source: std::io::Error::other(e),
            })??;
        self.sm.close().await
    }
}

impl RaftNode {
    /// Appends through this node's own Raft, which must lead by the time
    /// the entry is proposed (else UNAVAILABLE): the local half of
    /// [`CommitLog::append`], and what a leader does with a forwarded
    /// append (it never forwards again, so a stale leader hint cannot make
    /// a loop).
    pub fn append_local(
        &self,
        records: Vec<Bytes>,
        producer: Producer,
        deadline: Instant,
    ) -> Ordered {
        let (proposals, queue_bytes) = (self.proposals.clone(), Arc::clone(&self.queue_bytes));
        let (raft, lane) = (self.raft.clone(), Arc::clone(&self.lane));
        let failure = self.failure();
        Box::pin(async move {
            if let Some(why) = failure {
                return Err(CommitError::Unavailable(why));
            }
            let named = producer.clone();
            let records = super::own_records(records);
            let bytes: usize = records.iter().map(Bytes::len).sum();
            let request = Request::Append {
                records,
                producer,
                at_ms: 0,
            };
            // Nothing queued: this task submits the entry itself.
            let request = match lane.try_direct(&raft, request, deadline).await {
                Ok(committed) => {
                    let committed = committed?;
                    return Ok(
                        Box::pin(async move { appended(committed.await?, named) }) as Durable
                    );
                }
                Err(request) => request,
            };
            // A request larger than the whole bound waits for an empty queue.
            let share = bytes.clamp(1, PROPOSAL_QUEUE_BYTES) as u32;
            let queued = tokio::time::timeout_at(deadline, queue_bytes.acquire_many_owned(share))
                .await
                .map_err(|_| queue_full())?
                .map_err(|_| stopped())?;
            let (reply_tx, reply_rx) = oneshot::channel();
            let pending = Pending {
                request,
                bytes,
                reply: reply_tx,
                deadline,
                _queued: queued,
            };
            lane.queued();
            let sent = tokio::time::timeout_at(deadline, proposals.send(pending)).await;
            if !matches!(sent, Ok(Ok(()))) {
                lane.left(1);
            }
            sent.map_err(|_| queue_full())?.map_err(|_| stopped())?;
            Ok(Box::pin(async move {
                let reply = tokio::time::timeout_at(deadline, reply_rx)
                    .await
                    .map_err(|_| timed_out())?
                    .map_err(|_| stopped())??;
                appended(reply, named)
            }) as Durable)
        })
    }
}

/// The answer of an append request as (first offset, count).
fn appended(reply: Response, producer: Producer) -> Result<(u64, u64), CommitError> {
    match reply {
        Response::Appended {
            first_offset,
            count,
        } => Ok((first_offset, count)),
        Response::StaleSequence { oldest } => {
            let (producer, sequence) = producer.unwrap_or_default();
            Err(CommitError::StaleSequence {
                producer,
                sequence,
                oldest,
            })
        }
        other => Err(CommitError::Unavailable(format!(
            "unexpected reply {other:?}"
        ))),
    }
}

impl CommitLog for RaftNode {
    /// Appends through the leader: queued for this node's next Raft entry
    /// when it leads, forwarded to the leader otherwise. The whole produce
    /// (finding a leader, a place in the bounded queue, commit) has
    /// `produce_timeout`; after it, or at once when the node failed,
    /// UNAVAILABLE. A forwarded append is ordered only once the leader
    /// answered, so a stream through a follower has one in flight.
    fn append(&self, records: Vec<Bytes>, producer: Producer) -> Ordered {
        let deadline = Instant::now() + self.produce_timeout;
        let node = self.clone();
        Box::pin(async move {
            if let Some(why) = node.failure() {
                return Err(CommitError::Unavailable(why));
            }
            let (leader, member) = wait_leader(&node.raft, deadline).await?;
            if leader == node.id {
                return node.append_local(records, producer, deadline).await;
            }
            let request = Request::Append {
                records,
                producer: producer.clone(),
                at_ms: 0,
            };
            let forwarded = node.forward.forward(leader, &member, request, deadline);
            let reply = tokio::time::timeout_at(deadline, forwarded)
                .await
                .map_err(|_| timed_out())??;
            let answer = appended(reply, producer);
            Ok(Box::pin(std::future::ready(answer)) as Durable)
        })
    }

    /// Reads applied records without waiting for applies or snapshot
    /// installs (see [`StateMachine::read`]), on a blocking thread.
    fn read(&self, offset: u64, max: usize) -> Reading {
        let (sm, caught_up) = (self.sm.clone(), Arc::clone(&self.caught_up));
        Box::pin(async move {
            tokio::task::spawn_blocking(move || read_applied(&sm, &caught_up, offset, max))
                .await
                .map_err(|e| CommitError::Unavailable(format!("read task failed: {e}")))?
        })
    }

    /// The state machine's watermark (next applied offset): it survives
    /// snapshot installs, which replace the data log.
    fn subscribe(&self) -> watch::Receiver<u64> {
        self.sm.subscribe()
    }

    fn servers(&self) -> Vec<Server> {
        let metrics = self.raft.metrics().borrow().clone();
        metrics
            .membership_config
            .membership()
            .nodes()
            .map(|(id, node)| Server {
                id: node.name.clone(),
                rpc_addr: node.rpc_addr.clone(),
                is_leader: metrics.current_leader == Some(*id),
            })
            .collect()
    }
}

/// Reads the id persisted in `path`, if the file exists.
fn read_id(path: &Path) -> Result<Option<u64>, NodeError> {
    let err = |source| NodeError::Identity {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => text.trim().parse().map(Some).map_err(|_| {
            err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "not a number",
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(err(e)),
    }
}

/// Reads records from `offset` on (see [`CommitLog::read`]). Outside the
/// records held, [`CommitError::OutOfRange`] with the bounds (below the
/// lowest offset: removed by retention; else past the end). Past the end
/// before a restarted node has replayed its log, UNAVAILABLE rather than a
/// misleading OUT_OF_RANGE.
fn read_applied(
    sm: &StateMachine,
    caught_up: &AtomicBool,
    offset: u64,
    max: usize,
) -> Result<Vec<Bytes>, CommitError> {
    let first = match sm.read(offset) {
        Err(CommitError::OutOfRange { lowest, .. })
            if offset >= lowest && !caught_up.load(Ordering::Acquire) =>
        {
            return Err(CommitError::Unavailable(
                "replaying the raft log after a restart".into(),
            ))
        }
        other => other?,
    };
    let mut bytes = first.len();
    let mut records = vec![first];
    let end = sm.next_offset().min(offset.saturating_add(max as u64));
    for o in offset.saturating_add(1)..end {
        if bytes >= READ_BATCH_BYTES {
            break;
        }
        let record = sm.read(o)?;
        bytes += record.len();
        records.push(record);
    }
    Ok(records)
}

/// Reads a random id persisted in `path`, creating it on first use.
fn persisted_id(path: &Path) -> Result<u64, NodeError> {
    if let Some(id) = read_id(path)? {
        return Ok(id);
    }
    // RandomState is seeded from the OS.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(now_ms());
    let id = id_from_hash(h.finish());
    replace_durably(&RealFs, path, id.to_string().as_bytes()).map_err(|source| {
        NodeError::Identity {
            path: path.to_path_buf(),
            source,
        }
    })?;
    Ok(id)
}

/// A node or cluster id from 64 random bits: 63 bits (it prints the same
/// in every JSON and signed reader), never 0 (kept free).
fn id_from_hash(hash: u64) -> u64 {
    (hash >> 1).max(1)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
