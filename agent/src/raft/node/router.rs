//! An in-process network for node tests: every node's Raft RPCs, forwarded
//! appends and campaign requests are calls on the target [`RaftNode`] in
//! the same process, through a shared table. Links can be cut
//! ([`Router::isolate`]) to partition a cluster. [`Cluster`] starts N
//! nodes in temporary directories on one router and forms a cluster.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use openraft::error::{InstallSnapshotError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::ServerState;
use tokio::time::Instant;

use super::super::{Member, Request, Response, TypeConfig};
use super::{Campaigned, Forward, Forwarded, NodeSettings, RaftNode, MAX_IN_SNAPSHOT_LOG_TO_KEEP};
use crate::log::LogConfig;
use crate::server::{CommitError, CommitLog};

/// The router's shared state: the running nodes and the cut links.
#[derive(Default)]
struct Table {
    nodes: HashMap<u64, RaftNode>,
    isolated: HashSet<u64>,
}

/// The in-process network. One shared table; each node gets its own
/// endpoint ([`Router::endpoint`]), which knows who is calling, so that
/// calls from an isolated node fail too.
#[derive(Clone, Default)]
pub(super) struct Router {
    table: Arc<Mutex<Table>>,
    /// The node this endpoint belongs to (0 for the router itself).
    from: u64,
}

fn unreachable(why: String) -> Unreachable {
    Unreachable::new(&std::io::Error::other(why))
}

impl Router {
    /// The endpoint of node `from`: what that node's Raft is given.
    pub(super) fn endpoint(&self, from: u64) -> Router {
        Router {
            table: Arc::clone(&self.table),
            from,
        }
    }

    /// Makes a started node reachable.
    pub(super) fn register(&self, node: RaftNode) {
        self.table.lock().unwrap().nodes.insert(node.id(), node);
    }

    /// Makes a node unreachable (it was shut down).
    pub(super) fn unregister(&self, id: u64) {
        self.table.lock().unwrap().nodes.remove(&id);
    }

    /// Cuts every link to and from node `id`.
    pub(super) fn isolate(&self, id: u64) {
        self.table.lock().unwrap().isolated.insert(id);
    }

    /// Restores the links of node `id`.
    pub(super) fn heal(&self, id: u64) {
        self.table.lock().unwrap().isolated.remove(&id);
    }

    /// The target node, if this endpoint can reach it now.
    fn reach(&self, target: u64) -> Result<RaftNode, Unreachable> {
        let table = self.table.lock().unwrap();
        if table.isolated.contains(&self.from) || table.isolated.contains(&target) {
            return Err(unreachable(format!(
                "the link {} -> {target} is cut",
                self.from
            )));
        }
        table
            .nodes
            .get(&target)
            .cloned()
            .ok_or_else(|| unreachable(format!("node {target} is not running")))
    }
}

/// One node's client to one target.
pub(super) struct Client {
    router: Router,
    target: u64,
}

impl RaftNetworkFactory<TypeConfig> for Router {
    type Network = Client;

    async fn new_client(&mut self, target: u64, _node: &Member) -> Client {
        Client {
            router: self.clone(),
            target,
        }
    }
}

impl RaftNetwork<TypeConfig> for Client {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, Member, RaftError<u64>>> {
        let node = self.router.reach(self.target)?;
        let answer = node.raft.append_entries(rpc).await;
        // The link may have been cut while the call ran: its answer is lost.
        self.router.reach(self.target)?;
        answer.map_err(|e| RemoteError::new(self.target, e).into())
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, Member, RaftError<u64, InstallSnapshotError>>,
    > {
        let node = self.router.reach(self.target)?;
        let answer = node.raft.install_snapshot(rpc).await;
        self.router.reach(self.target)?;
        answer.map_err(|e| RemoteError::new(self.target, e).into())
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        _option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, Member, RaftError<u64>>> {
        let node = self.router.reach(self.target)?;
        let answer = node.raft.vote(rpc).await;
        self.router.reach(self.target)?;
        answer.map_err(|e| RemoteError::new(self.target, e).into())
    }
}

impl Forward for Router {
    /// Calls the leader's `append_local` and answers as the socket
    /// network's remote side would: the leader's offsets, or its stale
    /// sequence refusal, as a [`Response`].
    fn forward(&self, leader: u64, _: &Member, request: Request, deadline: Instant) -> Forwarded {
        let reached = self.reach(leader);
        Box::pin(async move {
            let node = reached.map_err(|e| CommitError::Unavailable(e.to_string()))?;
            let Request::Append {
                records, producer, ..
            } = request
            else {
                return Err(CommitError::Unavailable("not an append".into()));
            };
            let ordered = node.append_local(records, producer, deadline).await?;
            match ordered.await {
                Ok((first_offset, count)) => Ok(Response::Appended {
                    first_offset,
                    count,
                }),
                Err(CommitError::StaleSequence { oldest, .. }) => {
                    Ok(Response::StaleSequence { oldest })
                }
                Err(e) => Err(e),
            }
        })
    }

    /// Calls the target's [`RaftNode::campaign`].
    fn campaign(&self, target: u64, _: &Member, _: Instant) -> Campaigned {
        let reached = self.reach(target);
        Box::pin(async move {
            let node = reached.map_err(|e| CommitError::Unavailable(e.to_string()))?;
            node.campaign().await
        })
    }
}

/// Settings of a test node in `dir`, named `name`.
pub(super) fn node_settings(dir: &Path, name: &str) -> NodeSettings {
    NodeSettings {
        dir: dir.to_path_buf(),
        member: Member::new(name, format!("{name}:1")),
        log: LogConfig {
            prealloc_bytes: 0,
            ..LogConfig::default()
        },
        snapshot_threshold: 100_000,
        snapshot_threshold_bytes: 0,
        retention_bytes: 0,
        retention_age: None,
        produce_timeout: Duration::from_secs(5),
        max_producers: 100,
        max_in_snapshot_log_to_keep: MAX_IN_SNAPSHOT_LOG_TO_KEEP,
        hop_observer: None,
    }
}

/// How long cluster helpers wait for a leader, a catch-up or a membership.
pub(super) const WAIT: Duration = Duration::from_secs(30);

/// Polls `check` every 20 ms until it holds, failing after [`WAIT`].
pub(super) async fn eventually(what: &str, check: impl FnMut() -> bool) {
    eventually_within(WAIT, what, check).await
}

/// Polls `check` every 20 ms until it holds, failing after `limit`.
pub(super) async fn eventually_within(
    limit: Duration,
    what: &str,
    mut check: impl FnMut() -> bool,
) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Nodes with ids 1..=N on one [`Router`], each in its own directory.
pub(super) struct Cluster {
    pub(super) router: Router,
    /// The running nodes.
    pub(super) nodes: BTreeMap<u64, RaftNode>,
    /// Settings per node id (changed before a restart if need be).
    pub(super) settings: BTreeMap<u64, NodeSettings>,
    _root: tempfile::TempDir,
}

impl Cluster {
    /// Starts `n` nodes, `tune` adjusting their settings; bootstraps node 1,
    /// adds the others as voters and waits until all agree on node 1 as
    /// the leader.
    pub(super) async fn start(n: u64, tune: impl Fn(NodeSettings) -> NodeSettings) -> Cluster {
        let root = tempfile::tempdir().unwrap();
        let settings = (1..=n)
            .map(|id| {
                let dir = root.path().join(format!("n{id}"));
                (id, tune(node_settings(&dir, &format!("n{id}"))))
            })
            .collect();
        let mut cluster = Cluster {
            router: Router::default(),
            nodes: BTreeMap::new(),
            settings,
            _root: root,
        };
        for id in 1..=n {
            cluster.start_node(id).await;
        }
        assert!(cluster.nodes[&1].bootstrap().await.unwrap());
        cluster.wait_leader(&[1]).await;
        for id in 2..=n {
            cluster.add(id).await;
        }
        cluster.wait_agreed_leader().await;
        cluster
    }

    /// Adds a settings entry for a new node `id` (not started), like the
    /// others' but in its own directory.
    pub(super) fn prepare(&mut self, id: u64) {
        let base = self.settings.values().next().unwrap().clone();
        let dir = self._root.path().join(format!("n{id}"));
        let name = format!("n{id}");
        self.settings.insert(
            id,
            NodeSettings {
                member: Member::new(&name, format!("{name}:1")),
                dir,
                ..base
            },
        );
    }

    /// Starts (or restarts) node `id` on its directory and registers it.
    /// Its id is written into the directory first, so ids are 1..=N.
    pub(super) async fn start_node(&mut self, id: u64) -> RaftNode {
        let settings = self.settings[&id].clone();
        std::fs::create_dir_all(&settings.dir).unwrap();
        let id_file = settings.dir.join("node-id");
        if !id_file.exists() {
            std::fs::write(&id_file, id.to_string()).unwrap();
        }
        let node = RaftNode::start(settings, self.router.endpoint(id))
            .await
            .unwrap();
        assert_eq!(node.id(), id);
        self.router.register(node.clone());
        self.nodes.insert(id, node.clone());
        node
    }

    /// Shuts node `id` down and makes it unreachable.
    pub(super) async fn stop_node(&mut self, id: u64) {
        let node = self.nodes.remove(&id).unwrap();
        self.router.unregister(id);
        node.shutdown().await.unwrap();
    }

    /// Adds started node `id` as a voter through the current leader.
    pub(super) async fn add(&self, id: u64) {
        let leader = self.leader_node();
        let member = self.settings[&id].member.clone();
        leader.add_voter(id, member).await.unwrap();
    }

    /// The node every running node names as leader (after
    /// [`Cluster::wait_agreed_leader`]).
    pub(super) fn leader_node(&self) -> RaftNode {
        let id = self
            .nodes
            .values()
            .find_map(|n| n.leader().filter(|(l, _)| l == &n.id()))
            .map(|(l, _)| l)
            .expect("a running node leads");
        self.nodes[&id].clone()
    }

    /// Waits until one of `ids` leads (in its own view); returns it.
    pub(super) async fn wait_leader(&self, ids: &[u64]) -> u64 {
        let mut found = 0;
        eventually("a leader", || {
            found = ids
                .iter()
                .copied()
                .find(|id| {
                    self.nodes.get(id).is_some_and(|n| {
                        let m = n.raft.metrics().borrow().clone();
                        m.state == ServerState::Leader && m.current_leader == Some(*id)
                    })
                })
                .unwrap_or(0);
            found != 0
        })
        .await;
        found
    }

    /// Waits until every running node names the same leader, which leads
    /// in its own view and is running; returns it.
    pub(super) async fn wait_agreed_leader(&self) -> u64 {
        let mut agreed = 0;
        eventually("every node to agree on a leader", || {
            let leaders: BTreeSet<Option<u64>> = self
                .nodes
                .values()
                .map(|n| n.raft.metrics().borrow().current_leader)
                .collect();
            let Some(&Some(leader)) = leaders.first().filter(|_| leaders.len() == 1) else {
                return false;
            };
            let leads = self
                .nodes
                .get(&leader)
                .is_some_and(|n| n.raft.metrics().borrow().state == ServerState::Leader);
            agreed = leader;
            leads
        })
        .await;
        agreed
    }

    /// Shuts every running node down.
    pub(super) async fn shutdown(mut self) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            self.stop_node(id).await;
        }
    }
}

#[tokio::test]
async fn three_nodes_form_a_cluster_and_a_cut_off_node_loses_its_links() {
    let cluster = tokio::time::timeout(WAIT, Cluster::start(3, |s| s))
        .await
        .expect("a cluster forms in time");
    let leader = cluster.wait_agreed_leader().await;
    assert_eq!(leader, 1);
    let voters: BTreeSet<u64> = cluster.nodes[&1]
        .raft
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .voter_ids()
        .collect();
    assert_eq!(voters, BTreeSet::from([1, 2, 3]));
    cluster.router.isolate(2);
    let cut = cluster.router.endpoint(1).reach(2);
    assert!(cut.is_err());
    assert!(cluster.router.endpoint(2).reach(3).is_err());
    assert!(cluster.router.endpoint(1).reach(3).is_ok());
    cluster.router.heal(2);
    assert!(cluster.router.endpoint(1).reach(2).is_ok());
    cluster.shutdown().await;
}

/// Waits until `node` has applied records up to `next` (its watermark).
pub(super) async fn wait_applied(node: &RaftNode, next: u64) {
    let mut watermark = node.subscribe();
    tokio::time::timeout(WAIT, watermark.wait_for(|w| *w >= next))
        .await
        .unwrap_or_else(|_| panic!("node {} did not apply up to {next}", node.id()))
        .unwrap();
}

/// Reads records `from..to` from `node`, in as many reads as it takes.
pub(super) async fn read_range(node: &RaftNode, from: u64, to: u64) -> Vec<Bytes> {
    let mut records = Vec::new();
    while from + (records.len() as u64) < to {
        let at = from + records.len() as u64;
        let got = node.read(at, (to - at) as usize).await.unwrap();
        assert!(!got.is_empty(), "an empty read at {at}");
        records.extend(got);
    }
    records.truncate((to - from) as usize);
    records
}

/// A producer named `name` appending `"{name}-{sequence}"` for each
/// sequence of `sequences` through `via`, retrying a failed request with
/// the same sequence until it is acknowledged; resolves to (offset, record)
/// per sequence.
pub(super) fn retrying_producer(
    via: RaftNode,
    name: String,
    sequences: std::ops::Range<u64>,
) -> tokio::task::JoinHandle<Vec<(u64, Bytes)>> {
    tokio::spawn(async move {
        let mut acked = Vec::new();
        for sequence in sequences {
            let record = Bytes::from(format!("{name}-{sequence}"));
            let producer = Some((name.clone(), sequence));
            loop {
                let tried = async {
                    via.append(vec![record.clone()], producer.clone())
                        .await?
                        .await
                };
                match tried.await {
                    Ok((first, 1)) => break acked.push((first, record)),
                    Ok(other) => panic!("{other:?}"),
                    // Retry backoff, not synchronisation.
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        }
        acked
    })
}
