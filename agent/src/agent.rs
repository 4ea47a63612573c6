//! [`Agent`]: wires the Raft node, the gRPC service, the transports, gossip
//! discovery with the leader's reconcile loop, and hot reload; starts them
//! in order and shuts them down in reverse.
//!
//! A node started with `bootstrap` and no Raft state first gossips with its
//! `start_join_addrs` and asks the members it finds whether they belong to
//! a cluster, and refuses to found a second one
//! ([`AgentError::ClusterExists`]). The stop on SIGTERM is
//! [`Agent::terminate`]: hand leadership on, leave the membership if
//! `leave_on_terminate`, then [`Agent::shutdown`].
//!
//! With `metrics_addr`, the agent also serves `/metrics`, `/health` and
//! `/ready` there (`telemetry/`), and measures its gRPC calls, WAL fsyncs,
//! Raft, gossip and process.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use proglog_proto::admin::admin_server::AdminServer;
use proglog_proto::log_server::LogServer;
use proglog_proto::raft::raft_server::RaftServer;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::Server;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::discovery::reconcile::reconcile_loop;
use crate::discovery::{
    DiscoveryError, GossipKey, Membership, MembershipConfig, TAG_CLUSTER, TAG_ID, TAG_RPC_ADDR,
};
use crate::log::fs::{FileSystem, RealFs};
use crate::log::{LogConfig, LogError};
use crate::raft::net::{
    existing_cluster, leave_cluster, PeerNetwork, RaftService, MAX_MESSAGE_BYTES,
};
use crate::raft::node::NoNetwork;
use crate::raft::{Member, NodeError, NodeSettings, RaftNode};
use crate::server::auth::{AclError, Authorizer};
use crate::server::{AdminService, LogService};
use crate::telemetry::http::{MetricsServer, Readiness};
use crate::telemetry::metrics::{GrpcLayer, Metrics, MetricsError};
use crate::transport::tls::{self, PeerTls, TlsError};
use crate::transport::{PlainTcp, RaftRoute, TlsTcp, Transport, Unix};

/// Largest gRPC message beyond the record limit (batches, framing).
const MESSAGE_SLACK: usize = 64 << 20;
/// How long shutdown waits for streams and calls to finish.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

/// How long a stopping leader may take to hand leadership on (the
/// transfer's own bound is 10 s) before it stops anyway.
const HANDOFF_DEADLINE: Duration = Duration::from_secs(12);
/// How long a stopping node may take to leave the membership
/// (`leave_on_terminate`) before it stops anyway, still a member.
const LEAVE_DEADLINE: Duration = Duration::from_secs(10);
/// How long a node about to bootstrap waits for its `start_join_addrs` to
/// say whether they belong to a cluster.
const CLUSTER_PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Another agent holds the data dir.
    #[error("data dir {} is locked by another agent", .0.display())]
    Locked(PathBuf),
    /// The log failed to open or recover, or Raft failed to start.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// TLS material was unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The ACL files were unusable.
    #[error(transparent)]
    Acl(#[from] AclError),
    /// `bootstrap` on a node with no Raft state, while a node it lists in
    /// `start_join_addrs` belongs to a cluster: bootstrapping would found a
    /// second cluster. A usage error (exit code 2).
    #[error(
        "a cluster exists: {addr} is a member of cluster {cluster_id}{leader}; refusing \
         --bootstrap on a node with no Raft state, which would start a second cluster \
         (start this node without --bootstrap to join the existing one)"
    )]
    ClusterExists {
        /// The `start_join_addrs` entry that answered.
        addr: String,
        /// Its cluster id (0 if its join is still in progress).
        cluster_id: u64,
        /// ", led by NAME at ADDR", or empty if it knows no leader.
        leader: String,
    },
    /// Gossip could not start.
    #[error(transparent)]
    Discovery(#[from] DiscoveryError),
    /// Metrics could not be set up.
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    /// Binding or another I/O step failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> AgentError {
    let what = what.into();
    move |source| AgentError::Io { what, source }
}

/// Settings that change live on reload, applied by the embedding program
/// (the log level lives in `main`'s tracing subscriber).
pub type LogLevelHook = Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// A running agent.
pub struct Agent {
    config: ArcSwap<Config>,
    node: RaftNode,
    auth: Arc<Authorizer>,
    tls: Option<Arc<ArcSwap<ServerConfig>>>,
    peer_tls: Option<Arc<ArcSwap<PeerTls>>>,
    /// The Raft network (none in dev mode).
    network: Option<PeerNetwork>,
    /// Gossip membership, set once it has started (never in dev mode).
    membership: Arc<OnceLock<Membership>>,
    max_record_bytes: Arc<AtomicU64>,
    rpc_addr: SocketAddr,
    cancel: CancellationToken,
    tasks: TaskTracker,
    log_level: Option<LogLevelHook>,
    /// Metrics, when `metrics_addr` is set.
    metrics: Option<Metrics>,
    /// Set once the agent serves (`/ready` needs it and a leader).
    serving: Arc<AtomicBool>,
    _lock: File,
}

impl Agent {
    /// Starts serving with a validated `config`.
    pub async fn start(
        config: Config,
        log_level: Option<LogLevelHook>,
    ) -> Result<Agent, AgentError> {
        Agent::start_on(config, log_level, Arc::new(RealFs)).await
    }

    /// [`Agent::start`] with the WAL files (Raft log and data log) on `fs`:
    /// tests pass a simulated disk that fails writes or syncs on demand.
    pub(crate) async fn start_on(
        config: Config,
        log_level: Option<LogLevelHook>,
        fs: Arc<dyn FileSystem>,
    ) -> Result<Agent, AgentError> {
        tls::install_crypto_provider();
        let lock = lock_data_dir(&config.data_dir)?;
        let listener = TcpListener::bind(config.rpc_addr())
            .await
            .map_err(io_err(format!("binding rpc address {}", config.rpc_addr())))?;
        let rpc_addr = listener
            .local_addr()
            .map_err(io_err("reading the bound address"))?;
        let metrics = config.metrics_addr.map(|_| Metrics::new()).transpose()?;
        let advertise = config.advertise_addr(rpc_addr);
        let (auth, tls, peer_tls) = if config.dev {
            warn!(
                "dev mode: no TLS, no ACL, listening on {rpc_addr} only; reach it with \
                 `proglog produce --addr {rpc_addr} ...` (no TLS flags)"
            );
            (Authorizer::allow_all(), None, None)
        } else {
            let (model, policy) = (
                config.acl_model_file.as_ref(),
                config.acl_policy_file.as_ref(),
            );
            let auth = Authorizer::from_files(
                model.expect("validated"),
                policy.expect("validated"),
                config.unix_socket_subject.clone(),
            )
            .await?;
            let tls = Arc::new(ArcSwap::new(load_tls(&config)?));
            let peer = Arc::new(ArcSwap::from_pointee(load_peer_tls(&config)?));
            (auth, Some(tls), Some(peer))
        };
        let auth = Arc::new(auth);
        let settings = NodeSettings {
            dir: config.data_dir.clone(),
            member: Member::new(config.node_name.clone(), advertise.clone()),
            log: LogConfig {
                fs,
                sync_observer: metrics.as_ref().map(Metrics::sync_observer),
                ..config.log_config()
            },
            snapshot_threshold: config.snapshot_threshold,
            snapshot_threshold_bytes: config.snapshot_threshold_bytes,
            retention_bytes: config.retention_bytes,
            retention_age: config.retention_age().expect("validated"),
            produce_timeout: config.produce_timeout().expect("validated"),
            max_producers: config.max_producers,
            max_in_snapshot_log_to_keep: crate::raft::node::MAX_IN_SNAPSHOT_LOG_TO_KEEP,
            hop_observer: metrics.as_ref().map(Metrics::hop_observer),
        };
        // Dev mode is one node: no peer TLS, so no network.
        let network = peer_tls.clone().map(PeerNetwork::new);
        let node = match &network {
            Some(network) => RaftNode::start(settings, network.clone()).await?,
            None => RaftNode::start(settings, NoNetwork).await?,
        };
        let unix = match &config.unix_socket {
            Some(path) => Some(
                Unix::bind(
                    path,
                    config.unix_mode().expect("validated"),
                    config.connection_limits().expect("validated"),
                )
                .map_err(io_err(format!("binding unix socket {}", path.display())))?,
            ),
            None => None,
        };
        let serving = Arc::new(AtomicBool::new(false));
        let metrics_server = match (&metrics, config.metrics_addr) {
            (Some(metrics), Some(addr)) => {
                metrics.observe_node(node.clone());
                metrics.observe_process(config.data_dir.clone());
                let ready = readiness(node.clone(), Arc::clone(&serving));
                let server = MetricsServer::bind(addr, metrics.clone(), ready)
                    .await
                    .map_err(io_err(format!("binding metrics address {addr}")))?;
                if let Ok(addr) = server.local_addr() {
                    info!(%addr, "serving /metrics, /health and /ready");
                }
                Some(server)
            }
            _ => None,
        };
        let cancel = CancellationToken::new();
        let tasks = TaskTracker::new();
        let max_record_bytes = Arc::new(AtomicU64::new(config.max_record_bytes));
        let discovery = (!config.dev).then(|| discovery_config(&config, &node, &advertise));
        // A node about to found a cluster first gossips with the nodes it
        // lists, if any, and refuses when they already form one.
        let mut early = None;
        if let (true, Some(network), Some(discovery)) = (
            config.bootstrap && !config.start_join_addrs.is_empty(),
            &network,
            &discovery,
        ) {
            if !node.initialized().await? {
                let probe = async {
                    // Without the Raft id tag, so the leader of the cluster
                    // found (if any) does not add this node meanwhile.
                    let (mut untagged, key) = discovery.clone();
                    untagged.tags.remove(TAG_ID);
                    let membership = start_membership((untagged, key)).await?;
                    let refused = refuse_second_cluster(&node, network, &membership).await;
                    early = Some(membership);
                    refused
                };
                if let Err(e) = probe.await {
                    if let Some(membership) = early.take() {
                        let _ = membership.shutdown().await;
                    }
                    let _ = node.shutdown().await;
                    return Err(e);
                }
            }
        }
        if config.bootstrap || config.dev {
            node.bootstrap().await?;
        }
        let raft_route = match &peer_tls {
            Some(peer_tls) => {
                let (conns, incoming) = tokio::sync::mpsc::channel(128);
                let raft = RaftServer::new(RaftService::new(
                    node.clone(),
                    network
                        .clone()
                        .expect("a network wherever there is peer TLS"),
                ))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES);
                let stop = cancel.clone().cancelled_owned();
                // Peer calls are counted as client calls are, under
                // service="raft.v1.Raft".
                let measured = metrics
                    .as_ref()
                    .map_or_else(GrpcLayer::disabled, Metrics::grpc_layer);
                tasks.spawn(async move {
                    let served = Server::builder()
                        .trace_fn(crate::telemetry::traces::peer_span)
                        .layer(measured)
                        .add_service(raft)
                        .serve_with_incoming_shutdown(ReceiverStream::new(incoming), stop)
                        .await;
                    if let Err(e) = served {
                        error!(error = %e, "raft peer server failed");
                    }
                });
                Some(RaftRoute {
                    tls: Arc::clone(peer_tls),
                    conns,
                })
            }
            None => None,
        };
        let service = LogService::new(
            Arc::new(node.clone()),
            Arc::clone(&auth),
            Arc::clone(&max_record_bytes),
            cancel.clone(),
        );
        // One health service for every transport, so one reporter flips
        // them all when the node fails.
        let (reporter, health) = tonic_health::server::health_reporter();
        reporter.set_serving::<LogServer<LogService>>().await;
        let reap_timeout = config.reap_timeout().expect("validated");
        let limits = config.connection_limits().expect("validated");
        let agent = Agent {
            config: ArcSwap::from_pointee(config),
            node,
            membership: Arc::default(),
            auth,
            tls,
            peer_tls,
            network,
            max_record_bytes,
            rpc_addr,
            cancel,
            tasks,
            log_level,
            metrics,
            serving,
            _lock: lock,
        };
        if let Some(server) = metrics_server {
            agent.tasks.spawn(server.serve(agent.cancel.clone()));
        }
        agent.tasks.spawn(report_failure(
            agent.node.failure_watch(),
            reporter,
            agent.cancel.clone(),
        ));
        match &agent.tls {
            Some(tls) => agent.serve(
                TlsTcp {
                    listener,
                    tls: Arc::clone(tls),
                    raft: raft_route,
                    limits,
                },
                service.clone(),
                health.clone(),
            ),
            None => agent.serve(
                PlainTcp { listener, limits },
                service.clone(),
                health.clone(),
            ),
        }
        if let Some(unix) = unix {
            info!(path = %unix.path.display(), "serving on unix socket");
            agent.serve(unix, service, health);
        }
        // Gossip last, once this node serves: the leader may add it to
        // Raft as soon as it is seen.
        if let Some(discovery) = discovery {
            let membership = match early {
                Some(membership) => {
                    membership
                        .set_tag(TAG_ID, &agent.node.id().to_string())
                        .await?;
                    membership
                }
                None => start_membership(discovery).await?,
            };
            agent.tasks.spawn(reconcile_loop(
                agent.node.clone(),
                membership.clone(),
                reap_timeout,
                agent.cancel.clone(),
            ));
            if let Some(metrics) = &agent.metrics {
                agent.tasks.spawn(
                    metrics
                        .clone()
                        .watch_membership(membership.clone(), agent.cancel.clone()),
                );
            }
            let _ = agent.membership.set(membership);
        }
        agent.serving.store(true, Ordering::Release);
        info!(
            addr = %rpc_addr,
            node = %agent.config.load().node_name,
            cluster_id = ?agent.node.cluster_id(),
            "serving log.v1.Log"
        );
        Ok(agent)
    }

    fn serve<T: Transport, H: Health>(
        &self,
        transport: T,
        service: LogService,
        health: HealthServer<H>,
    ) {
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proglog_proto::FILE_DESCRIPTOR_SET)
            .build_v1()
            .expect("the descriptor set compiled from log.proto is valid");
        let limit = self.config.load().max_record_bytes as usize + MESSAGE_SLACK;
        let log = LogServer::new(service)
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit);
        let admin = AdminServer::new(
            AdminService::new(self.node.clone(), Arc::clone(&self.auth))
                .with_membership(Arc::clone(&self.membership)),
        );
        let incoming = transport.incoming(self.cancel.clone());
        let stop = self.cancel.clone().cancelled_owned();
        let measured = self
            .metrics
            .as_ref()
            .map_or_else(GrpcLayer::disabled, Metrics::grpc_layer);
        let limits = self.config.load().connection_limits().expect("validated");
        self.tasks.spawn(async move {
            let served = Server::builder()
                .max_concurrent_streams(limits.max_concurrent_streams)
                .concurrency_limit_per_connection(limits.max_in_flight_per_connection)
                .load_shed(true)
                .trace_fn(crate::telemetry::traces::grpc_span)
                .layer(measured)
                .add_service(health)
                .add_service(reflection)
                .add_service(log)
                .add_service(admin)
                .serve_with_incoming_shutdown(incoming, stop)
                .await;
            if let Err(e) = served {
                error!(error = %e, "gRPC server failed");
            }
        });
    }

    /// The bound gRPC address (useful with port 0).
    pub fn rpc_addr(&self) -> SocketAddr {
        self.rpc_addr
    }

    /// The Raft node (tests read its metrics and state machine).
    #[cfg(test)]
    pub(crate) fn node(&self) -> &RaftNode {
        &self.node
    }

    /// Gossip membership (none in dev mode).
    pub fn membership(&self) -> Option<&Membership> {
        self.membership.get()
    }

    /// The Raft network (none in dev mode), for what it measured.
    pub fn peer_network(&self) -> Option<&PeerNetwork> {
        self.network.as_ref()
    }

    /// The current configuration.
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// Re-reads what can change live: ACL policy, server TLS files, and
    /// from `new_config` (if given) the log level and record size limit.
    /// Each part that fails keeps its old state; the errors are returned.
    pub async fn reload(&self, new_config: Option<Config>) -> Vec<String> {
        let mut errors = Vec::new();
        if let Err(e) = self.auth.reload().await {
            errors.push(e.to_string());
        }
        if let Some(live) = new_config {
            self.apply_live(live, &mut errors);
        }
        if let Some(tls) = &self.tls {
            match load_tls(&self.config.load()) {
                Ok(config) => tls.store(config),
                Err(e) => errors.push(e.to_string()),
            }
        }
        if let Some(peer_tls) = &self.peer_tls {
            match load_peer_tls(&self.config.load()) {
                Ok(config) => peer_tls.store(Arc::new(config)),
                Err(e) => errors.push(e.to_string()),
            }
        }
        for e in &errors {
            warn!(error = %e, "reload failed; keeping the previous state");
        }
        if errors.is_empty() {
            info!("reloaded ACL, TLS and live settings");
        }
        errors
    }

    fn apply_live(&self, new: Config, errors: &mut Vec<String>) {
        let old = self.config.load_full();
        let mut applied = (*old).clone();
        if new.log_level != old.log_level {
            match self.log_level.as_ref().map(|set| set(&new.log_level)) {
                Some(Err(e)) => errors.push(format!("log_level = {}: {e}", new.log_level)),
                _ => applied.log_level = new.log_level.clone(),
            }
        }
        if new.max_record_bytes != old.max_record_bytes {
            self.max_record_bytes
                .store(new.max_record_bytes, Ordering::Relaxed);
            applied.max_record_bytes = new.max_record_bytes;
        }
        // TLS and ACL file paths may move too; the files are re-read after.
        applied.server_tls_cert_file = new.server_tls_cert_file.clone();
        applied.server_tls_key_file = new.server_tls_key_file.clone();
        applied.server_tls_ca_file = new.server_tls_ca_file.clone();
        applied.peer_tls_cert_file = new.peer_tls_cert_file.clone();
        applied.peer_tls_key_file = new.peer_tls_key_file.clone();
        applied.peer_tls_ca_file = new.peer_tls_ca_file.clone();
        applied.peer_names = new.peer_names.clone();
        applied.leave_on_terminate = new.leave_on_terminate;
        let restart_only = new.data_dir != old.data_dir
            || new.rpc_port != old.rpc_port
            || new.bind_addr != old.bind_addr
            || new.unix_socket != old.unix_socket
            || new.sync != old.sync
            || new.sync_interval_ms != old.sync_interval_ms
            || new.produce_timeout != old.produce_timeout
            || new.max_producers != old.max_producers
            || new.snapshot_threshold_bytes != old.snapshot_threshold_bytes
            || new.connection_limits().ok() != old.connection_limits().ok();
        if restart_only {
            warn!(
                "some changed settings (addresses, data dir, sync, produce_timeout, \
                 max_producers, snapshot_threshold_bytes, connection limits) take \
                 effect on restart"
            );
        }
        self.config.store(Arc::new(applied));
    }

    /// Files whose change should trigger a reload.
    pub fn watched_files(&self) -> Vec<PathBuf> {
        let c = self.config.load();
        [
            &c.acl_model_file,
            &c.acl_policy_file,
            &c.server_tls_cert_file,
            &c.server_tls_key_file,
            &c.server_tls_ca_file,
            &c.peer_tls_cert_file,
            &c.peer_tls_key_file,
            &c.peer_tls_ca_file,
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect()
    }

    /// The stop on SIGTERM (ARCHITECTURE.md, "Shutdown"): a leader first hands
    /// leadership to the most caught-up follower (bounded; a failure is
    /// logged and the stop goes on); with `leave_on_terminate` the node
    /// then has itself removed from the membership (else it stays a
    /// member, and a restart with the same command line rejoins at once);
    /// then [`Agent::shutdown`] drains, syncs and closes.
    pub async fn terminate(self) -> Result<(), LogError> {
        // `/ready` turns 503 first, so load balancers stop sending here
        // while leadership is handed on.
        self.serving.store(false, Ordering::Release);
        self.hand_off().await;
        if self.config.load().leave_on_terminate {
            self.leave().await;
        }
        self.shutdown().await
    }

    /// On the leader of a cluster with other voters: hands leadership to
    /// the most caught-up one, within [`HANDOFF_DEADLINE`].
    async fn hand_off(&self) {
        let status = self.node.status();
        let others = status.members.iter().any(|m| m.voter && m.id != status.id);
        if status.leader != Some(status.id) || !others {
            return;
        }
        info!("stopping the leader: handing leadership to the most caught-up follower");
        match tokio::time::timeout(HANDOFF_DEADLINE, self.node.transfer_leadership(None)).await {
            Ok(Ok(to)) => info!(node_id = to, "leadership handed over"),
            Ok(Err(e)) => warn!(error = %e, "leadership hand-off failed; stopping anyway"),
            Err(_) => warn!("leadership hand-off timed out; stopping anyway"),
        }
    }

    /// Has this node removed from the membership, within
    /// [`LEAVE_DEADLINE`]. The last voter stays (a cluster of none cannot
    /// be); a failure is logged and the node stops a member.
    async fn leave(&self) {
        let Some(network) = &self.network else {
            return;
        };
        let status = self.node.status();
        if !status.members.iter().any(|m| m.id == status.id) {
            info!("not a member; nothing to leave");
            return;
        }
        if !status.members.iter().any(|m| m.voter && m.id != status.id) {
            warn!("the only voter does not leave its cluster; stopping as a member");
            return;
        }
        info!("leaving the cluster (leave_on_terminate)");
        self.node.stop_campaigning();
        let deadline = tokio::time::Instant::now() + LEAVE_DEADLINE;
        match leave_cluster(&self.node, network, deadline).await {
            Ok(()) => info!("left the cluster"),
            Err(e) => warn!(error = %e, "leaving the cluster failed; stopping as a member"),
        }
        // Gossip says so too, so the others see it left, not failed.
        if let Some(membership) = self.membership.get() {
            if let Err(e) = membership.leave().await {
                warn!(error = %e, "leaving gossip");
            }
        }
    }

    /// Stops accepting, ends streams, waits for calls to drain (bounded),
    /// then syncs and closes the log.
    pub async fn shutdown(self) -> Result<(), LogError> {
        info!("shutting down");
        self.cancel.cancel();
        if let Some(membership) = self.membership.get() {
            // No leave: a stopped node stays a Raft member (ARCHITECTURE.md,
            // "Shutdown"); the others see it failed until it returns.
            if let Err(e) = membership.shutdown().await {
                warn!(error = %e, "stopping gossip");
            }
        }
        self.tasks.close();
        if tokio::time::timeout(DRAIN_DEADLINE, self.tasks.wait())
            .await
            .is_err()
        {
            warn!("calls still running after the drain deadline; closing anyway");
        }
        self.node.shutdown().await?;
        info!("raft stopped; log closed");
        Ok(())
    }
}

/// Before a node with no Raft state bootstraps: waits up to
/// [`CLUSTER_PROBE_TIMEOUT`] for gossip (joined to `start_join_addrs`) to
/// show other members, asks them over the peer service which cluster they
/// belong to, and refuses if one does (bootstrapping would found a second
/// cluster). No member seen, or none answering, counts as none: the first
/// start of a bootstrap node, before the others are up.
async fn refuse_second_cluster(
    node: &RaftNode,
    network: &PeerNetwork,
    membership: &Membership,
) -> Result<(), AgentError> {
    let deadline = tokio::time::Instant::now() + CLUSTER_PROBE_TIMEOUT;
    let own = node.member().rpc_addr.clone();
    let peers = loop {
        let peers: Vec<String> = membership
            .members()
            .await
            .into_iter()
            .filter(|m| m.name != node.member().name)
            .filter_map(|m| m.tags.get(TAG_RPC_ADDR).cloned())
            .collect();
        if !peers.is_empty() || tokio::time::Instant::now() >= deadline {
            break peers;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    let found = existing_cluster(network, &peers, &own, left.max(Duration::from_secs(1))).await;
    match found {
        None => Ok(()),
        Some((addr, info)) => {
            let leader = if info.leader_id == 0 {
                String::new()
            } else {
                format!(", led by {} at {}", info.leader_name, info.leader_addr)
            };
            error!(%addr, cluster_id = info.cluster_id, "refusing to bootstrap a second cluster");
            Err(AgentError::ClusterExists {
                addr,
                cluster_id: info.cluster_id,
                leader,
            })
        }
    }
}

/// What gossip starts with: this node's name, `bind_addr`, its tags (RPC
/// address, Raft id, cluster id when known), the join addresses and the
/// key file (read when gossip starts).
fn discovery_config(
    config: &Config,
    node: &RaftNode,
    advertise: &str,
) -> (MembershipConfig, Option<PathBuf>) {
    let mut tags = std::collections::BTreeMap::from([
        (TAG_RPC_ADDR.to_string(), advertise.to_string()),
        (TAG_ID.to_string(), node.id().to_string()),
    ]);
    if let Some(cluster) = node.cluster_id() {
        tags.insert(TAG_CLUSTER.to_string(), cluster.to_string());
    }
    let membership = MembershipConfig {
        node_name: config.node_name.clone(),
        bind_addr: config.bind_addr,
        tags,
        start_join_addrs: config.start_join_addrs.clone(),
        key: None,
    };
    (membership, config.gossip_key_file.clone())
}

/// Reads the gossip key (on a blocking thread) and starts gossip.
async fn start_membership(
    (mut config, key_file): (MembershipConfig, Option<PathBuf>),
) -> Result<Membership, AgentError> {
    if let Some(path) = key_file {
        let key = tokio::task::spawn_blocking(move || GossipKey::from_file(&path))
            .await
            .map_err(|e| DiscoveryError::Serf(format!("reading the gossip key: {e}")))??;
        config.key = Some(key);
    }
    Ok(Membership::start(config).await?)
}

/// `/ready`: the node has not failed, the agent serves, and a leader is
/// known, so that a load balancer sends writes only to a node that can
/// take them.
fn readiness(node: RaftNode, serving: Arc<AtomicBool>) -> Readiness {
    Arc::new(move || {
        if let Some(why) = node.failure() {
            return Err(format!("failed: {why}"));
        }
        if !serving.load(Ordering::Acquire) {
            return Err("not serving: starting or stopping".into());
        }
        match node.leader() {
            Some(_) => Ok(()),
            None => Err("no leader known".into()),
        }
    })
}

/// Turns health (the server as a whole and `log.v1.Log`) to NOT_SERVING
/// once the node fails for good: a failed write or sync, or openraft
/// stopping on a storage error. Only a restart brings it back.
async fn report_failure(
    mut failure: tokio::sync::watch::Receiver<Option<String>>,
    reporter: HealthReporter,
    cancel: CancellationToken,
) {
    let failed = tokio::select! {
        _ = cancel.cancelled() => return,
        failed = failure.wait_for(Option::is_some) => failed.map(|f| f.clone()),
    };
    if let Ok(Some(why)) = failed {
        error!(reason = %why, "health: NOT_SERVING until restarted");
        reporter.set_not_serving::<LogServer<LogService>>().await;
        reporter
            .set_service_status("", ServingStatus::NotServing)
            .await;
    }
}

fn load_tls(config: &Config) -> Result<Arc<ServerConfig>, TlsError> {
    let need = |p: &Option<PathBuf>| p.clone().expect("validated: TLS files set unless dev");
    tls::server_config(
        &need(&config.server_tls_cert_file),
        &need(&config.server_tls_key_file),
        &need(&config.server_tls_ca_file),
    )
}

/// The peer TLS: the `peer_tls_*` files, or the server's when those are
/// unset (`proglog certs` makes a server certificate for client auth too).
fn load_peer_tls(config: &Config) -> Result<PeerTls, TlsError> {
    let need = |p: &Option<PathBuf>| p.clone().expect("validated: TLS files set unless dev");
    let (cert, key, ca) = match &config.peer_tls_cert_file {
        Some(_) => (
            need(&config.peer_tls_cert_file),
            need(&config.peer_tls_key_file),
            need(&config.peer_tls_ca_file),
        ),
        None => (
            need(&config.server_tls_cert_file),
            need(&config.server_tls_key_file),
            need(&config.server_tls_ca_file),
        ),
    };
    tls::peer_tls(&cert, &key, &ca, &config.peer_names)
}

/// Creates the data dir and takes an exclusive lock on `LOCK` in it, held
/// for the life of the agent.
fn lock_data_dir(dir: &Path) -> Result<File, AgentError> {
    std::fs::create_dir_all(dir).map_err(io_err(format!("creating data dir {}", dir.display())))?;
    let path = dir.join("LOCK");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err(format!("opening {}", path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(AgentError::Locked(dir.to_path_buf())),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(io_err(format!("locking {}", path.display()))(e))
        }
    }
}
