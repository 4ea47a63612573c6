//! Client library for proglog.
//!
//! [`Client`] talks `log.v1.Log`, and the operator API
//! `proglog.admin.v1.Admin`, to one agent over TCP (mutual TLS, or
//! plaintext for `--dev` agents) or over the agent's Unix socket.
//! [`ClusterClient`] (module [`cluster`]) is the leader-aware client of a
//! whole cluster: writes to the leader, reads spread over followers,
//! retries across a leader change without appending twice.
//! [`diagnose()`] explains a failed connection (address, cause, fix).

use std::path::{Path, PathBuf};

use proglog_proto::admin::admin_client::AdminClient;
use proglog_proto::admin::{
    AddVoterRequest, ClusterStatusRequest, ClusterStatusResponse, GossipMember, MembersRequest,
    RemoveServerRequest, TransferLeadershipRequest, LEADER_ADDR_METADATA,
};
use proglog_proto::log_client::LogClient;
use proglog_proto::{
    ConsumeRequest, GetServersRequest, ProduceBatchRequest, ProduceRequest, Record, Server,
    LOWEST_OFFSET_METADATA, NEXT_OFFSET_METADATA,
};
use tokio_stream::{Stream, StreamExt};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

pub mod cluster;
pub mod diagnose;

/// Record values: a cheaply cloned, shared byte buffer (`Vec<u8>`,
/// `&'static [u8]` and `String` convert into it without a copy).
pub use bytes::Bytes;
pub use cluster::{ClusterClient, ClusterConfig, Role};
pub use diagnose::diagnose;
pub use proglog_proto as proto;

/// Everything a client call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The agent answered with an error status (printed with its gRPC
    /// code name, `RESOURCE_EXHAUSTED: ...`).
    #[error("{}: {}", diagnose::code_name(.0.code()), .0.message())]
    Status(#[from] tonic::Status),
    /// The connection could not be made (printed with its causes).
    #[error("cannot connect: {}", diagnose::chain(.0))]
    Transport(#[from] tonic::transport::Error),
    /// The agent could not be reached, explained by [`diagnose::diagnose`]:
    /// what was dialled, what happened, the likely fix.
    #[error("cannot reach the agent at {addr}: {cause}; {hint}")]
    Unreachable {
        /// The address or socket path dialled.
        addr: String,
        /// What happened.
        cause: String,
        /// The likely fix.
        hint: String,
    },
    /// A TLS file could not be read.
    #[error("{}: {source}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// Why it could not be read.
        #[source]
        source: std::io::Error,
    },
    /// An address that is not `host:port`.
    #[error("invalid address {0:?}: expected host:port")]
    Address(String),
}

/// Result alias of the client.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Client TLS material: the CA that signs the agents' certificates and our
/// own certificate and key (its CN is our ACL subject).
#[derive(Debug, Clone)]
pub struct Tls {
    ca: Vec<u8>,
    cert: Vec<u8>,
    key: Vec<u8>,
    domain: Option<String>,
}

impl Tls {
    /// Reads the three PEM files.
    pub fn from_files(ca: &Path, cert: &Path, key: &Path) -> Result<Tls> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|source| Error::File {
                path: p.to_path_buf(),
                source,
            })
        };
        Ok(Tls {
            ca: read(ca)?,
            cert: read(cert)?,
            key: read(key)?,
            domain: None,
        })
    }

    /// Verifies the server certificate for `domain` instead of the host of
    /// the address dialed.
    pub fn with_domain(mut self, domain: impl Into<String>) -> Tls {
        self.domain = Some(domain.into());
        self
    }
}

/// The endpoint of the agent at `addr` (`host:port`), with TLS unless
/// `tls` is `None`.
pub fn endpoint(addr: &str, tls: Option<&Tls>) -> Result<Endpoint> {
    if addr.parse::<std::net::SocketAddr>().is_err() && !addr.contains(':') {
        return Err(Error::Address(addr.to_string()));
    }
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
        .map_err(|_| Error::Address(addr.to_string()))?
        .tcp_nodelay(true);
    if let Some(tls) = tls {
        let mut config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&tls.ca))
            .identity(Identity::from_pem(&tls.cert, &tls.key));
        if let Some(domain) = &tls.domain {
            config = config.domain_name(domain.clone());
        }
        endpoint = endpoint.tls_config(config)?;
    }
    Ok(endpoint)
}

/// A channel to the agent's Unix socket at `path`, connected on first use
/// (and again after the agent restarts).
pub(crate) fn unix_channel(path: PathBuf) -> Channel {
    let connector = tower::service_fn(move |_| {
        let path = path.clone();
        async move {
            let sock = tokio::net::UnixStream::connect(path).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(sock))
        }
    });
    Endpoint::from_static("http://unix.socket").connect_with_connector_lazy(connector)
}

/// Where an agent listens.
#[derive(Debug, Clone)]
pub enum Target {
    /// `host:port`, with TLS unless `None` (plaintext, for `--dev`).
    Tcp {
        /// host:port
        addr: String,
        /// Client TLS; `None` speaks plaintext.
        tls: Option<Tls>,
    },
    /// The agent's Unix socket (no TLS).
    Unix(PathBuf),
}

/// A connection to one agent.
#[derive(Debug, Clone)]
pub struct Client {
    rpc: LogClient<Channel>,
    admin: AdminClient<Channel>,
}

impl Client {
    /// Connects to `target`.
    pub async fn connect(target: Target) -> Result<Client> {
        let channel = match target {
            Target::Tcp { addr, tls } => endpoint(&addr, tls.as_ref())?.connect().await?,
            Target::Unix(path) => unix_channel(path),
        };
        Ok(Client {
            admin: AdminClient::new(channel.clone()),
            rpc: LogClient::new(channel)
                .max_decoding_message_size(usize::MAX)
                .max_encoding_message_size(usize::MAX),
        })
    }

    /// The generated gRPC client, for calls this type does not wrap.
    pub fn rpc(&mut self) -> &mut LogClient<Channel> {
        &mut self.rpc
    }

    /// The generated client of the admin service, for calls this type
    /// does not wrap.
    pub fn admin(&mut self) -> &mut AdminClient<Channel> {
        &mut self.admin
    }

    /// Appends one record; returns its offset once it is durable.
    pub async fn produce(&mut self, value: impl Into<Bytes>) -> Result<u64> {
        let req = ProduceRequest {
            record: Some(Record {
                value: value.into(),
                ..Record::default()
            }),
            ..ProduceRequest::default()
        };
        Ok(self.rpc.produce(req).await?.into_inner().offset)
    }

    /// Appends records contiguously; returns the first offset.
    pub async fn produce_batch<V: Into<Bytes>>(
        &mut self,
        values: impl IntoIterator<Item = V>,
    ) -> Result<u64> {
        let req = ProduceBatchRequest {
            records: values
                .into_iter()
                .map(|value| Record {
                    value: value.into(),
                    ..Record::default()
                })
                .collect(),
            ..ProduceBatchRequest::default()
        };
        Ok(self.rpc.produce_batch(req).await?.into_inner().first_offset)
    }

    /// Reads the record at `offset`.
    pub async fn consume(&mut self, offset: u64) -> Result<Bytes> {
        let resp = self.rpc.consume(ConsumeRequest { offset }).await?;
        Ok(resp.into_inner().record.unwrap_or_default().value)
    }

    /// Streams `(offset, value)` from `offset` on; at the end of the log the
    /// stream waits for new records.
    pub async fn consume_stream(
        &mut self,
        offset: u64,
    ) -> Result<impl Stream<Item = Result<(u64, Bytes)>> + Send + Unpin + use<>> {
        let stream = self
            .rpc
            .consume_stream(ConsumeRequest { offset })
            .await?
            .into_inner();
        Ok(stream.map(|item| {
            let record = item?.record.unwrap_or_default();
            Ok((record.offset, record.value))
        }))
    }

    /// The servers the agent knows, with the leader flagged.
    pub async fn servers(&mut self) -> Result<Vec<Server>> {
        Ok(self
            .rpc
            .get_servers(GetServersRequest {})
            .await?
            .into_inner()
            .servers)
    }

    /// The agent's Raft view of the cluster (ACL action `admin`).
    pub async fn cluster_status(&mut self) -> Result<ClusterStatusResponse> {
        Ok(self
            .admin
            .cluster_status(ClusterStatusRequest {})
            .await?
            .into_inner())
    }

    /// The agent's gossip view: every member with its status and tags
    /// (ACL action `admin`).
    pub async fn members(&mut self) -> Result<Vec<GossipMember>> {
        Ok(self
            .admin
            .members(MembersRequest {})
            .await?
            .into_inner()
            .members)
    }

    /// Adds node `id` (named `name`, reachable at `rpc_addr`) as a voter,
    /// through a learner that catches up first. Leader only: see
    /// [`leader_addr`].
    pub async fn add_voter(&mut self, id: u64, name: &str, rpc_addr: &str) -> Result<()> {
        let req = AddVoterRequest {
            id,
            name: name.into(),
            rpc_addr: rpc_addr.into(),
        };
        self.admin.add_voter(req).await?;
        Ok(())
    }

    /// Removes the member `node` names (its name or numeric id). Leader
    /// only: see [`leader_addr`].
    pub async fn remove_server(&mut self, node: &str) -> Result<()> {
        let req = RemoveServerRequest { node: node.into() };
        self.admin.remove_server(req).await?;
        Ok(())
    }

    /// Hands leadership to `node` (a name or numeric id), or with `None`
    /// to the most caught-up follower; returns the id of the node asked
    /// to take over. Leader only: see [`leader_addr`].
    pub async fn transfer_leadership(&mut self, node: Option<&str>) -> Result<u64> {
        let req = TransferLeadershipRequest {
            node: node.unwrap_or_default().into(),
        };
        Ok(self
            .admin
            .transfer_leadership(req)
            .await?
            .into_inner()
            .new_leader_id)
    }
}

/// The leader's address named by a follower that refused a leader-only
/// admin call (FAILED_PRECONDITION with `leader-addr` metadata): where to
/// send the call again.
pub fn leader_addr(error: &Error) -> Option<String> {
    let Error::Status(status) = error else {
        return None;
    };
    if status.code() != tonic::Code::FailedPrecondition {
        return None;
    }
    let addr = status.metadata().get(LEADER_ADDR_METADATA)?.to_str().ok()?;
    (!addr.is_empty()).then(|| addr.to_string())
}

/// The range of offsets the agent held, `(lowest, next)`, when `error` is
/// its OUT_OF_RANGE answer to a `consume` or a `consume_stream`: records
/// below `lowest` were removed by retention, `next` is the offset the next
/// record gets. Read from the status's `lowest-offset` and `next-offset`
/// metadata, so callers need not parse the message (which says the same
/// in words). `None` for any other error, or from an agent too old to
/// send them.
pub fn retained_range(error: &Error) -> Option<(u64, u64)> {
    let Error::Status(status) = error else {
        return None;
    };
    if status.code() != tonic::Code::OutOfRange {
        return None;
    }
    let number = |key| status.metadata().get(key)?.to_str().ok()?.parse().ok();
    Some((
        number(LOWEST_OFFSET_METADATA)?,
        number(NEXT_OFFSET_METADATA)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::{retained_range, Error};
    use tonic::metadata::MetadataMap;
    use tonic::{Code, Status};

    fn status(code: Code, pairs: &[(&'static str, &str)]) -> Error {
        let mut metadata = MetadataMap::new();
        for (key, value) in pairs {
            metadata.insert(*key, value.parse().unwrap());
        }
        Error::Status(Status::with_metadata(code, "m", metadata))
    }

    #[test]
    fn retained_range_reads_both_numbers_of_an_out_of_range_only() {
        let both = [("lowest-offset", "120"), ("next-offset", "500")];
        assert_eq!(
            retained_range(&status(Code::OutOfRange, &both)),
            Some((120, 500))
        );
        // Another code, a missing or non-numeric key, or no status at all.
        assert_eq!(retained_range(&status(Code::Unavailable, &both)), None);
        assert_eq!(retained_range(&status(Code::OutOfRange, &both[..1])), None);
        assert_eq!(
            retained_range(&status(
                Code::OutOfRange,
                &[("lowest-offset", "x"), ("next-offset", "500")]
            )),
            None
        );
        assert_eq!(retained_range(&Error::Address("nowhere".into())), None);
    }
}
