//! [`RaftNode`]: one Raft member over our log store and state machine,
//! serving the gRPC service's [`CommitLog`]. Produce goes through Raft;
//! reads serve applied records only.

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::storage::RaftLogStorage;
use openraft::{BasicNode, Raft, SnapshotPolicy};
use proglog_proto::Server;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::{LogStore, Request, Response, StateMachine, TypeConfig};
use crate::log::{retention_point, LogConfig, LogError};
use crate::server::{CommitError, CommitLog, Durable, Ordered, Producer};

/// How long a write waits for a leader before UNAVAILABLE.
const LEADER_WAIT: Duration = Duration::from_secs(5);

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
    /// Human name of the node (GetServers shows it).
    pub name: String,
    /// Segment sizes for the Raft log and the data log.
    pub log: LogConfig,
    /// Entries applied since the last snapshot that trigger a new one.
    pub snapshot_threshold: u64,
    /// Retention by size (0: none).
    pub retention_bytes: u64,
    /// Retention by age.
    pub retention_age: Option<Duration>,
}

/// A running Raft member. Cheap to clone.
#[derive(Clone)]
pub struct RaftNode {
    id: u64,
    name: String,
    raft: Raft<TypeConfig>,
    sm: StateMachine,
    log: LogStore,
    dir: PathBuf,
    /// Set once the state machine has applied every entry the Raft log
    /// held at start: until then, reads past the data log's end answer
    /// UNAVAILABLE rather than a misleading OUT_OF_RANGE.
    caught_up: Arc<AtomicBool>,
    /// Requests waiting to be proposed (see [`propose_loop`]).
    proposals: mpsc::Sender<Pending>,
    /// Stops the background loops.
    stop: CancellationToken,
}

/// An append request and where its answer goes.
type Pending = (Request, oneshot::Sender<Result<Response, CommitError>>);

/// Requests queued for proposal before producers wait (backpressure).
const PROPOSAL_QUEUE: usize = 4096;
/// The most client requests, and record bytes, batched into one entry.
const MAX_BATCH: usize = 1024;
const MAX_BATCH_BYTES: usize = 8 << 20;

impl RaftNode {
    /// Opens the stores and starts Raft. The node id is created on first
    /// start and persisted in the directory.
    pub async fn start(settings: NodeSettings) -> Result<RaftNode, NodeError> {
        std::fs::create_dir_all(&settings.dir).map_err(|source| NodeError::Identity {
            path: settings.dir.clone(),
            source,
        })?;
        let id = persisted_id(&settings.dir.join("node-id"))?;
        let log = LogStore::open(&settings.dir.join("raft"), settings.log.clone())?;
        let sm = StateMachine::open(&settings.dir.join("sm"), settings.log.clone())?;
        let config = openraft::Config {
            cluster_name: "proglog".into(),
            heartbeat_interval: 100,
            election_timeout_min: 300,
            election_timeout_max: 600,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(settings.snapshot_threshold),
            max_in_snapshot_log_to_keep: 1000,
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
        let raft = Raft::new(id, Arc::new(config), NoNetwork, log.clone(), sm.clone())
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
        let (proposals, queue) = mpsc::channel(PROPOSAL_QUEUE);
        tokio::spawn(propose_loop(raft.clone(), id, queue));
        let stop = CancellationToken::new();
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
            name: settings.name,
            raft,
            sm,
            log,
            dir: settings.dir,
            caught_up,
            proposals,
            stop,
        })
    }

    /// Initializes a one-member cluster of this node, unless Raft state
    /// exists (then it is a no-op). Returns whether it initialized.
    pub async fn bootstrap(&self, rpc_addr: &str) -> Result<bool, NodeError> {
        let initialized = self
            .raft
            .is_initialized()
            .await
            .map_err(|e| NodeError::Raft(e.to_string()))?;
        if initialized {
            return Ok(false);
        }
        let members = BTreeMap::from([(self.id, BasicNode::new(rpc_addr))]);
        self.raft
            .initialize(members)
            .await
            .map_err(|e| NodeError::Raft(e.to_string()))?;
        persisted_id(&self.dir.join("cluster-id"))?;
        info!(node_id = self.id, "bootstrapped a new cluster");
        Ok(true)
    }

    /// Stops Raft and closes both logs.
    pub async fn shutdown(&self) -> Result<(), LogError> {
        self.stop.cancel();
        let _ = self.raft.shutdown().await;
        self.log.close()?;
        self.sm.close().await
    }
}

/// Waits (bounded) until node `id` leads.
async fn wait_leader(raft: &Raft<TypeConfig>, id: u64) -> Result<(), CommitError> {
    let led = raft
        .wait(Some(LEADER_WAIT))
        .metrics(|m| m.current_leader.is_some(), "a leader")
        .await
        .map_err(|_| CommitError::Unavailable("no leader elected".into()))?;
    match led.current_leader {
        Some(leader) if leader == id => Ok(()),
        Some(leader) => Err(CommitError::Unavailable(format!(
            "node {leader} leads; forwarding arrives with the cluster"
        ))),
        None => Err(CommitError::Unavailable("no leader elected".into())),
    }
}

/// Group commit at the Raft level. openraft 0.9 writes and flushes one
/// append at a time, so one entry per request would cost one fsync per
/// request. Instead, one entry is in flight at a time and every request
/// that arrives meanwhile goes into the next entry, as a `Request::Batch`.
async fn propose_loop(raft: Raft<TypeConfig>, id: u64, mut queue: mpsc::Receiver<Pending>) {
    while let Some(first) = queue.recv().await {
        let mut bytes = request_bytes(&first.0);
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
            match queue.try_recv() {
                Ok(next) => {
                    bytes += request_bytes(&next.0);
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        let (requests, replies): (Vec<Request>, Vec<_>) = batch.into_iter().unzip();
        let written = match wait_leader(&raft, id).await {
            Ok(()) => raft
                .client_write(Request::Batch(requests))
                .await
                .map_err(|e| CommitError::Unavailable(e.to_string())),
            Err(e) => Err(e),
        };
        match written.map(|w| w.data) {
            Ok(Response::Batch(answers)) if answers.len() == replies.len() => {
                for (reply, answer) in replies.into_iter().zip(answers) {
                    let _ = reply.send(Ok(answer));
                }
            }
            Ok(other) => {
                for reply in replies {
                    let _ = reply.send(Err(CommitError::Unavailable(format!(
                        "unexpected reply {other:?}"
                    ))));
                }
            }
            Err(e) => {
                let message = e.to_string();
                for reply in replies {
                    let _ = reply.send(Err(CommitError::Unavailable(message.clone())));
                }
            }
        }
    }
}

/// How often the leader checks retention.
const RETENTION_CHECK: Duration = Duration::from_secs(1);

/// On the leader, proposes a new lowest offset when segments exceed the
/// retention limits; every node applies the same `Retain` command.
async fn retention_loop(
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
        let segments = sm.data().segments();
        let lowest = retention_point(&segments, max_bytes, max_age, std::time::SystemTime::now());
        if lowest > sm.lowest_offset() {
            match raft.client_write(Request::Retain { lowest }).await {
                Ok(_) => info!(
                    lowest,
                    "retention: dropped records below the new lowest offset"
                ),
                Err(e) => tracing::warn!(error = %e, "retention proposal failed"),
            }
        }
    }
}

fn request_bytes(req: &Request) -> usize {
    match req {
        Request::Append { records, .. } => records.iter().map(Vec::len).sum(),
        _ => 0,
    }
}

impl CommitLog for RaftNode {
    fn append(&self, records: Vec<Vec<u8>>, producer: Producer) -> Ordered {
        let proposals = self.proposals.clone();
        Box::pin(async move {
            let named = producer.clone();
            let req = Request::Append {
                records,
                producer,
                at_ms: now_ms(),
            };
            let (reply_tx, reply_rx) = oneshot::channel();
            proposals
                .send((req, reply_tx))
                .await
                .map_err(|_| CommitError::Unavailable("raft stopped".into()))?;
            Ok(Box::pin(async move {
                let reply = reply_rx
                    .await
                    .map_err(|_| CommitError::Unavailable("raft stopped".into()))??;
                match reply {
                    Response::Appended {
                        first_offset,
                        count,
                    } => Ok((first_offset, count)),
                    Response::StaleSequence { oldest } => {
                        let (producer, sequence) = named.unwrap_or_default();
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
            }) as Durable)
        })
    }

    /// Reads an applied record without waiting for applies or snapshot
    /// installs (see [`StateMachine::read`]).
    fn read(&self, offset: u64) -> Result<Vec<u8>, CommitError> {
        if offset < self.sm.lowest_offset() {
            return Err(LogError::OffsetOutOfRange { offset }.into());
        }
        match self.sm.read(offset) {
            Err(LogError::OffsetOutOfRange { .. }) if !self.caught_up.load(Ordering::Acquire) => {
                Err(CommitError::Unavailable(
                    "replaying the raft log after a restart".into(),
                ))
            }
            other => Ok(other?),
        }
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
                id: if *id == self.id {
                    self.name.clone()
                } else {
                    id.to_string()
                },
                rpc_addr: node.addr.clone(),
                is_leader: metrics.current_leader == Some(*id),
            })
            .collect()
    }
}

/// Reads a random id persisted in `path`, creating it on first use.
fn persisted_id(path: &Path) -> Result<u64, NodeError> {
    let err = |source| NodeError::Identity {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => text.trim().parse().map_err(|_| {
            err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "not a number",
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // RandomState is seeded from the OS; zero is kept free.
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(now_ms());
            let id = h.finish().max(1) >> 1;
            super::log_store::write_durably(path, id.to_string().as_bytes()).map_err(err)?;
            Ok(id)
        }
        Err(e) => Err(err(e)),
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The network of a node with no peers yet: the Raft transport over the
/// shared port (first byte 0x01) arrives with the cluster. A one-member
/// cluster never calls it; calls fail as unreachable.
struct NoNetwork;

fn unreachable<E: std::error::Error>() -> RPCError<u64, BasicNode, E> {
    RPCError::Network(NetworkError::new(&std::io::Error::other(
        "no raft transport on this node yet",
    )))
}

impl RaftNetworkFactory<TypeConfig> for NoNetwork {
    type Network = NoNetwork;

    async fn new_client(&mut self, _target: u64, _node: &BasicNode) -> NoNetwork {
        NoNetwork
    }
}

impl RaftNetwork<TypeConfig> for NoNetwork {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        Err(unreachable())
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>,
    > {
        Err(unreachable())
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<u64>,
        _option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        Err(unreachable())
    }
}
