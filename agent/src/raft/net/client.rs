//! The dialing side: [`PeerNetwork`], openraft's network factory and the
//! node's [`Forward`], over one HTTP/2 connection per peer address.

use std::collections::HashMap;
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
use proglog_proto::raft::{CampaignRequest, ForwardRequest, JoinRequest, JoinResponse, Payload};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Code, Status};

use super::{MAX_MESSAGE_BYTES, RAFT_RPC};
use crate::raft::codec;
use crate::raft::node::{Forward, Forwarded};
use crate::raft::{Member, Request, Response, TypeConfig};
use crate::server::CommitError;
use crate::transport::tls::PeerTls;

/// How long dialing a peer (TCP and TLS) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The first and the longest wait before retrying an unreachable peer.
const BACKOFF_FIRST: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The Raft network of a node: openraft's RPCs, forwarded appends, joins
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
}

impl PeerNetwork {
    /// A network dialing peers with the (reloadable) peer TLS.
    pub fn new(tls: Arc<ArcSwap<PeerTls>>) -> PeerNetwork {
        PeerNetwork {
            inner: Arc::new(Inner {
                tls,
                channels: Mutex::default(),
            }),
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

    /// Asks the member at `addr` to add this node to its cluster.
    pub async fn join(
        &self,
        addr: &str,
        req: JoinRequest,
        timeout: Duration,
    ) -> Result<JoinResponse, Status> {
        let mut request = tonic::Request::new(req);
        request.set_timeout(timeout);
        let answer = tokio::time::timeout(timeout, self.client(addr)?.join(request)).await;
        Ok(answer
            .map_err(|_| Status::deadline_exceeded("join timed out"))??
            .into_inner())
    }

    /// Asks the voter at `addr` to start an election now.
    pub async fn campaign(&self, addr: &str, deadline: Instant) -> Result<(), Status> {
        let mut request = tonic::Request::new(CampaignRequest {});
        request.set_timeout(deadline.saturating_duration_since(Instant::now()));
        let answer = tokio::time::timeout_at(deadline, self.client(addr)?.campaign(request)).await;
        answer.map_err(|_| Status::deadline_exceeded("campaign request timed out"))??;
        Ok(())
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
        Box::pin(async move {
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
            let answer = tokio::time::timeout_at(
                deadline,
                client.map_err(CommitError::Leader)?.forward(request),
            )
            .await
            .map_err(|_| {
                CommitError::Leader(Status::unavailable("forwarding to the leader timed out"))
            })?
            .map_err(CommitError::Leader)?
            .into_inner();
            Ok(Response::Appended {
                first_offset: answer.first_offset,
                count: answer.count,
            })
        })
    }
}

/// openraft's client of one peer.
pub struct PeerClient {
    target: u64,
    /// The peer's client, or why its address is unusable.
    client: Result<RaftClient<Channel>, Status>,
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
            data: codec::encode_msg(req),
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
        let result: Result<Resp, RaftError<u64, E>> =
            codec::decode_msg(&reply.data).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
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
        self.call(
            RPCTypes::InstallSnapshot,
            &rpc,
            &option,
            |mut c, r| async move { c.install_snapshot(r).await },
        )
        .await
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
