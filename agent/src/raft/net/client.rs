//! The dialing side: [`PeerNetwork`], openraft's network factory and the
//! node's [`Forward`], over one HTTP/2 connection per peer address.
//! Snapshot chunks go out as delta chunks ([`super::delta`]) to peers that
//! serve them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use proglog_proto::raft::raft_client::RaftClient;
use proglog_proto::raft::{
    snapshot_chunk_reply, CampaignRequest, ClusterInfoRequest, ClusterInfoResponse, ForwardRequest,
    LeaveRequest, LeaveResponse, Payload, SnapshotChunk, SnapshotInventoryRequest,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Code, Status};
use tracing::Instrument;

use super::delta::{self, Layout};
use super::{MAX_MESSAGE_BYTES, RAFT_RPC};
use crate::raft::codec;
use crate::raft::node::{Campaigned, Forward, Forwarded};
use crate::raft::{Member, Request, Response, TypeConfig};
use crate::server::CommitError;
use crate::transport::tls::PeerTls;

/// How long dialing a peer (TCP and TLS) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The first and the longest wait before retrying an unreachable peer.
const BACKOFF_FIRST: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The Raft network of a node: openraft's RPCs, forwarded appends, leaves
/// and campaign requests, each over the peer's one long-lived connection
/// (tonic reconnects it when it breaks; openraft backs off an unreachable
/// peer, see [`PeerClient::backoff`]). Cheap to clone; clones share the
/// connections.
#[derive(Clone)]
pub struct PeerNetwork {
    inner: Arc<Inner>,
}

struct Inner {
    tls: Arc<ArcSwap<PeerTls>>,
    /// One channel per peer address.
    channels: Mutex<HashMap<String, RaftClient<Channel>>>,
    /// What snapshot chunks sent so far carried.
    snapshots: Arc<SendCounters>,
}

/// How the snapshot chunks a node sent traveled, summed over peers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SnapshotSendStats {
    /// Chunks openraft handed to the network.
    pub chunks: u64,
    /// Bytes of those chunks (pack bytes, retries counted once).
    pub pack_bytes: u64,
    /// Bytes that traveled as they are (every attempt counted).
    pub literal_bytes: u64,
    /// Bytes that traveled as references to the receiver's own files.
    pub referenced_bytes: u64,
    /// Chunks sent again because the receiver found a referenced file
    /// stale.
    pub stale: u64,
}

#[derive(Debug, Default)]
struct SendCounters {
    chunks: AtomicU64,
    pack_bytes: AtomicU64,
    literal_bytes: AtomicU64,
    referenced_bytes: AtomicU64,
    stale: AtomicU64,
}

impl SendCounters {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

impl PeerNetwork {
    /// A network dialing peers with the (reloadable) peer TLS.
    pub fn new(tls: Arc<ArcSwap<PeerTls>>) -> PeerNetwork {
        PeerNetwork {
            inner: Arc::new(Inner {
                tls,
                channels: Mutex::default(),
                snapshots: Arc::default(),
            }),
        }
    }

    /// How the snapshot chunks sent so far traveled (for tests and
    /// operators: literal against referenced bytes).
    pub fn snapshot_stats(&self) -> SnapshotSendStats {
        let c = &self.inner.snapshots;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        SnapshotSendStats {
            chunks: get(&c.chunks),
            pack_bytes: get(&c.pack_bytes),
            literal_bytes: get(&c.literal_bytes),
            referenced_bytes: get(&c.referenced_bytes),
            stale: get(&c.stale),
        }
    }

    /// The client of the peer at `addr`, connecting lazily on first use.
    pub fn client(&self, addr: &str) -> Result<RaftClient<Channel>, Status> {
        let mut channels = self.inner.channels.lock().expect("not poisoned");
        if let Some(client) = channels.get(addr) {
            return Ok(client.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| Status::invalid_argument(format!("peer address {addr:?}: {e}")))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5));
        let tls = Arc::clone(&self.inner.tls);
        let channel = endpoint.connect_with_connector_lazy(tower::service_fn(move |uri: Uri| {
            dial(uri, tls.load_full())
        }));
        let client = RaftClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        channels.insert(addr.to_string(), client.clone());
        Ok(client)
    }

    /// Asks the member at `addr` (the leader, or a node that passes it on)
    /// to remove node `req.node_id` from the cluster.
    pub async fn leave(
        &self,
        addr: &str,
        req: LeaveRequest,
        timeout: Duration,
    ) -> Result<LeaveResponse, Status> {
        let mut client = self.client(addr)?;
        bounded("leave", req, Instant::now() + timeout, |r| client.leave(r)).await
    }

    /// Asks the node at `addr` which cluster it belongs to.
    pub async fn cluster_info(
        &self,
        addr: &str,
        timeout: Duration,
    ) -> Result<ClusterInfoResponse, Status> {
        let mut client = self.client(addr)?;
        let deadline = Instant::now() + timeout;
        bounded("cluster info", ClusterInfoRequest {}, deadline, |r| {
            client.cluster_info(r)
        })
        .await
    }

    /// Asks the voter at `addr` to start an election now.
    pub async fn campaign(&self, addr: &str, deadline: Instant) -> Result<(), Status> {
        let mut client = self.client(addr)?;
        bounded("campaign request", CampaignRequest {}, deadline, |r| {
            client.campaign(r)
        })
        .await?;
        Ok(())
    }
}

/// Makes one peer call of `req` by `deadline`: the deadline travels with
/// the request (`grpc-timeout`) and bounds the wait here too, so a peer
/// that never answers costs no more than it. `what` names the call in the
/// DEADLINE_EXCEEDED status.
async fn bounded<T, R, F>(
    what: &str,
    req: T,
    deadline: Instant,
    call: impl FnOnce(tonic::Request<T>) -> F,
) -> Result<R, Status>
where
    F: std::future::Future<Output = Result<tonic::Response<R>, Status>>,
{
    let mut request = tonic::Request::new(req);
    request.set_timeout(deadline.saturating_duration_since(Instant::now()));
    match tokio::time::timeout_at(deadline, call(request)).await {
        Ok(answer) => Ok(answer?.into_inner()),
        Err(_) => Err(Status::deadline_exceeded(format!("{what} timed out"))),
    }
}

/// What a client is told when a forwarded append fails. The leader's own
/// answers (PERMISSION_DENIED, RESOURCE_EXHAUSTED, ...) pass unchanged. A
/// call that ran out of time on the way (tonic answers CANCELLED "Timeout
/// expired" once the grpc-timeout passes) or never reached the leader is
/// UNAVAILABLE, the code that tells a client to retry, naming the leader
/// that was tried.
fn forward_failure(status: Status, leader: &str) -> Status {
    use std::error::Error as _;
    let transport = status.source().is_some()
        && matches!(
            status.code(),
            Code::Unknown | Code::Unavailable | Code::Internal
        );
    match status.code() {
        Code::Cancelled | Code::DeadlineExceeded => Status::unavailable(format!(
            "the leader at {leader} did not answer in time ({}); retry",
            status.message()
        )),
        _ if transport => Status::unavailable(format!(
            "the leader at {leader} could not be reached ({}); retry",
            status.message()
        )),
        _ => status,
    }
}

/// Dials a peer: TCP, the Raft byte, TLS with the peer certificates, and
/// the same CN check the accepting side makes.
async fn dial(
    uri: Uri,
    tls: Arc<PeerTls>,
) -> std::io::Result<hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<TcpStream>>> {
    let invalid =
        |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, what.to_string());
    let host = uri
        .host()
        .ok_or_else(|| invalid("peer address has no host"))?;
    let port = uri
        .port_u16()
        .ok_or_else(|| invalid("peer address has no port"))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let mut sock = TcpStream::connect((host.as_str(), port)).await?;
    sock.set_nodelay(true)?;
    sock.write_all(&[RAFT_RPC]).await?;
    let name = rustls::pki_types::ServerName::try_from(host)
        .map_err(|e| invalid(&format!("peer host: {e}")))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::clone(&tls.client));
    let stream = connector.connect(name, sock).await?;
    let leaf = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first());
    tls.admit(leaf.map(|c| c.as_ref()))
        .map_err(|why| std::io::Error::new(std::io::ErrorKind::PermissionDenied, why))?;
    Ok(hyper_util::rt::TokioIo::new(stream))
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &Member) -> PeerClient {
        PeerClient {
            target,
            client: self.client(&node.rpc_addr),
            counters: Arc::clone(&self.inner.snapshots),
            session: None,
        }
    }
}

impl Forward for PeerNetwork {
    fn forward(
        &self,
        _leader: u64,
        member: &Member,
        request: Request,
        deadline: Instant,
    ) -> Forwarded {
        let client = self.client(&member.rpc_addr);
        let leader_addr = member.rpc_addr.clone();
        let forward = async move {
            let Request::Append {
                records, producer, ..
            } = request
            else {
                return Err(CommitError::Unavailable(
                    "only appends are forwarded".into(),
                ));
            };
            let (producer_id, sequence) = producer.unwrap_or_default();
            let mut request = tonic::Request::new(ForwardRequest {
                records,
                producer_id,
                sequence,
            });
            request.set_timeout(deadline.saturating_duration_since(Instant::now()));
            // The leader's span joins this trace (W3C traceparent).
            crate::telemetry::traces::inject(&tracing::Span::current(), request.metadata_mut());
            let answer = tokio::time::timeout_at(
                deadline,
                client.map_err(CommitError::Leader)?.forward(request),
            )
            .await
            .map_err(|_| {
                CommitError::Leader(Status::unavailable(format!(
                    "forwarding to the leader at {leader_addr} timed out"
                )))
            })?
            .map_err(|status| CommitError::Leader(forward_failure(status, &leader_addr)))?
            .into_inner();
            Ok(Response::Appended {
                first_offset: answer.first_offset,
                count: answer.count,
            })
        };
        let span = tracing::info_span!(
            "forward",
            otel.name = crate::telemetry::traces::FORWARD_METHOD,
            otel.kind = "client",
            peer = %member.rpc_addr,
        );
        Box::pin(forward.instrument(span))
    }

    fn campaign(&self, _target: u64, member: &Member, deadline: Instant) -> Campaigned {
        let (network, addr) = (self.clone(), member.rpc_addr.clone());
        Box::pin(async move {
            network
                .campaign(&addr, deadline)
                .await
                .map_err(CommitError::Leader)
        })
    }
}

/// openraft's client of one peer.
pub struct PeerClient {
    target: u64,
    /// The peer's client, or why its address is unusable.
    client: Result<RaftClient<Channel>, Status>,
    counters: Arc<SendCounters>,
    /// The snapshot being sent to the peer, if any.
    session: Option<Session>,
}

/// The sending state of one snapshot to one peer.
struct Session {
    snapshot_id: String,
    /// The pack's leading bytes, kept until its layout is known.
    prefix: Vec<u8>,
    /// The pack's layout, once known; `None` for good if the prefix was
    /// not a pack (then every chunk is literal).
    layout: Option<Layout>,
    /// Whether the prefix can still yield a layout.
    parsing: bool,
    /// Bytes of each store file the peer offered (`[0, n)` may be
    /// referenced); files found stale are dropped.
    have: HashMap<String, u64>,
    /// The peer lacks the delta RPCs: plain chunks.
    plain: bool,
}

impl Session {
    /// Feeds the chunk at `offset` to the layout parser.
    fn learn(&mut self, offset: u64, data: &[u8]) {
        if !self.parsing || self.layout.is_some() || offset != self.prefix.len() as u64 {
            return;
        }
        self.prefix.extend_from_slice(data);
        match Layout::parse(&self.prefix) {
            Ok(Some(layout)) => {
                self.layout = Some(layout);
                self.parsing = false;
                self.prefix = Vec::new();
            }
            Ok(None) if self.prefix.len() <= Layout::max_prefix() => {}
            Ok(None) | Err(_) => {
                self.parsing = false;
                self.prefix = Vec::new();
            }
        }
    }
}

type RpcResult<T, E> = Result<T, RPCError<u64, Member, RaftError<u64, E>>>;

impl PeerClient {
    /// Sends one openraft message through `call` and decodes the remote
    /// result: openraft's own errors come back as remote errors,
    /// transport failures as unreachable (openraft then backs off).
    async fn call<Req, Resp, E, F, Fut>(
        &self,
        kind: RPCTypes,
        req: &Req,
        option: &RPCOption,
        call: F,
    ) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
        F: FnOnce(RaftClient<Channel>, tonic::Request<Payload>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<Payload>, Status>>,
    {
        let client = self
            .client
            .clone()
            .map_err(|s| RPCError::Unreachable(Unreachable::new(&s)))?;
        let ttl = option.hard_ttl();
        let mut request = tonic::Request::new(Payload {
            data: codec::encode_msg(req).into(),
        });
        request.set_timeout(ttl);
        let timeout = || {
            RPCError::Timeout(Timeout {
                action: kind,
                id: 0,
                target: self.target,
                timeout: ttl,
            })
        };
        let reply = match tokio::time::timeout(ttl, call(client, request)).await {
            Err(_) => return Err(timeout()),
            Ok(Err(s)) if s.code() == Code::DeadlineExceeded => return Err(timeout()),
            Ok(Err(s)) => return Err(RPCError::Unreachable(Unreachable::new(&s))),
            Ok(Ok(reply)) => reply.into_inner(),
        };
        self.decode(&reply.data)
    }

    /// Decodes a remote result: openraft's own errors come back as remote
    /// errors.
    fn decode<Resp, E>(&self, data: &[u8]) -> RpcResult<Resp, E>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let result: Result<Resp, RaftError<u64, E>> =
            codec::decode_msg(data).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    /// Sends one snapshot chunk, as a delta chunk unless the peer lacks
    /// the RPCs (see [`super::delta`]). A new snapshot (or offset 0)
    /// starts a session: the peer's inventory is asked first.
    async fn send_chunk(
        &mut self,
        mut rpc: InstallSnapshotRequest<TypeConfig>,
        option: &RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<u64>, InstallSnapshotError> {
        let ttl = option.hard_ttl();
        let deadline = Instant::now() + ttl;
        let timeout = |target| {
            RPCError::Timeout(Timeout {
                action: RPCTypes::InstallSnapshot,
                id: 0,
                target,
                timeout: ttl,
            })
        };
        let transport = |target, s: Status| {
            if s.code() == Code::DeadlineExceeded {
                timeout(target)
            } else {
                RPCError::Unreachable(Unreachable::new(&s))
            }
        };
        let mut client = self
            .client
            .clone()
            .map_err(|s| RPCError::Unreachable(Unreachable::new(&s)))?;
        let new_session = rpc.offset == 0
            || self
                .session
                .as_ref()
                .is_none_or(|s| s.snapshot_id != rpc.meta.snapshot_id);
        if new_session {
            let mut request = tonic::Request::new(SnapshotInventoryRequest {});
            request.set_timeout(ttl);
            let inventory =
                tokio::time::timeout_at(deadline, client.snapshot_inventory(request)).await;
            let (have, plain) = match inventory {
                Err(_) => return Err(timeout(self.target)),
                Ok(Ok(answer)) => (
                    answer
                        .into_inner()
                        .files
                        .into_iter()
                        .map(|f| (f.name, f.len))
                        .collect(),
                    false,
                ),
                Ok(Err(s)) if s.code() == Code::Unimplemented => (HashMap::new(), true),
                Ok(Err(s)) => return Err(transport(self.target, s)),
            };
            self.session = Some(Session {
                snapshot_id: rpc.meta.snapshot_id.clone(),
                prefix: Vec::new(),
                layout: None,
                // A session joined past offset 0 (a new client) never
                // learns the layout: its chunks go literal.
                parsing: rpc.offset == 0,
                have,
                plain,
            });
        }
        let session = self.session.as_mut().expect("set above");
        session.learn(rpc.offset, &rpc.data);
        let counters = Arc::clone(&self.counters);
        SendCounters::add(&counters.chunks, 1);
        SendCounters::add(&counters.pack_bytes, rpc.data.len() as u64);
        if session.plain {
            SendCounters::add(&counters.literal_bytes, rpc.data.len() as u64);
            return self
                .call(
                    RPCTypes::InstallSnapshot,
                    &rpc,
                    option,
                    |mut c, r| async move { c.install_snapshot(r).await },
                )
                .await;
        }
        let data = std::mem::take(&mut rpc.data);
        let request = codec::encode_msg(&rpc);
        let no_layout = Layout::default();
        loop {
            let session = self.session.as_mut().expect("set above");
            let layout = session.layout.as_ref().unwrap_or(&no_layout);
            let encoded = delta::encode(layout, &session.have, rpc.offset, &data);
            SendCounters::add(&counters.literal_bytes, encoded.literal);
            let mut message = tonic::Request::new(SnapshotChunk {
                request: request.clone(),
                parts: encoded.parts,
            });
            message.set_timeout(deadline.saturating_duration_since(Instant::now()));
            let reply =
                tokio::time::timeout_at(deadline, client.install_snapshot_chunk(message)).await;
            let reply = match reply {
                Err(_) => return Err(timeout(self.target)),
                Ok(Err(s)) => return Err(transport(self.target, s)),
                Ok(Ok(reply)) => reply.into_inner(),
            };
            match reply.result {
                Some(snapshot_chunk_reply::Result::Reply(data)) => {
                    SendCounters::add(&counters.referenced_bytes, encoded.referenced);
                    return self.decode(&data);
                }
                Some(snapshot_chunk_reply::Result::StaleFile(name)) => {
                    SendCounters::add(&counters.stale, 1);
                    tracing::info!(peer = self.target, file = %name, "peer's store file is stale; sending its bytes");
                    // Dropping a file the chunk did not use would loop:
                    // then nothing is referenced any more.
                    if session.have.remove(&name).is_none() || encoded.referenced == 0 {
                        session.have.clear();
                    }
                    if encoded.referenced == 0 {
                        return Err(RPCError::Network(NetworkError::new(
                            &std::io::Error::other("peer found a literal chunk stale"),
                        )));
                    }
                }
                None => {
                    return Err(RPCError::Network(NetworkError::new(
                        &std::io::Error::other("peer sent an empty snapshot chunk reply"),
                    )))
                }
            }
        }
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<u64>, openraft::error::Infallible> {
        self.call(
            RPCTypes::AppendEntries,
            &rpc,
            &option,
            |mut c, r| async move { c.append_entries(r).await },
        )
        .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<u64>, InstallSnapshotError> {
        self.send_chunk(rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<u64>, openraft::error::Infallible> {
        self.call(RPCTypes::Vote, &rpc, &option, |mut c, r| async move {
            c.vote(r).await
        })
        .await
    }

    /// Exponential from [`BACKOFF_FIRST`] to [`BACKOFF_MAX`], rather than
    /// openraft's constant 500 ms: a restarted peer is back quickly.
    fn backoff(&self) -> Backoff {
        let steps = std::iter::successors(Some(BACKOFF_FIRST), |d| Some((*d * 2).min(BACKOFF_MAX)));
        Backoff::new(steps)
    }
}

#[cfg(test)]
mod forward_failure_tests {
    use super::*;

    #[test]
    fn timeouts_and_transport_failures_become_unavailable_and_the_leaders_answers_pass() {
        let timed_out = forward_failure(Status::cancelled("Timeout expired"), "10.0.0.1:8400");
        assert_eq!(timed_out.code(), Code::Unavailable);
        assert!(
            timed_out.message().contains("10.0.0.1:8400") && timed_out.message().contains("retry"),
            "{timed_out:?}"
        );
        let deadline = forward_failure(Status::deadline_exceeded("late"), "l:1");
        assert_eq!(deadline.code(), Code::Unavailable);
        let broken = Status::from_error(Box::new(std::io::Error::other("h2 protocol error")));
        assert_eq!(
            forward_failure(broken, "l:1").code(),
            Code::Unavailable,
            "a transport error is UNAVAILABLE"
        );
        for code in [
            Code::PermissionDenied,
            Code::ResourceExhausted,
            Code::FailedPrecondition,
            Code::InvalidArgument,
        ] {
            let answer = forward_failure(Status::new(code, "the leader says no"), "l:1");
            assert_eq!(answer.code(), code);
            assert_eq!(answer.message(), "the leader says no");
        }
    }
}
