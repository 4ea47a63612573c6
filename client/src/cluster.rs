//! [`ClusterClient`]: a client of a whole cluster, not of one agent. It
//! learns the servers from any reachable seed (GetServers), sends writes
//! to the leader and spreads reads over the followers, and rides out a
//! leader change by refreshing the list and retrying within a deadline.
//!
//! Delivery: every write carries this client's producer id and a fresh
//! sequence number, and a retry repeats both, so a write the old leader
//! committed before it died is answered with its original offset instead
//! of being appended again. `produce` and `produce_batch` are therefore
//! exactly-once as long as they return `Ok`; an `Err` after the deadline
//! means the record may or may not be in the log (retrying the same call
//! is not possible, a new call is a new record). The servers remember the
//! last 32 sequences of a producer: keep fewer calls than that in flight
//! on one client, or a late retry can be refused as too old.
//!
//! ```no_run
//! use proglog_client::{ClusterClient, ClusterConfig, Tls};
//! use tokio_stream::StreamExt;
//!
//! # async fn example() -> proglog_client::Result<()> {
//! let tls = Tls::from_files(
//!     "certs/ca.pem".as_ref(),
//!     "certs/root-client.pem".as_ref(),
//!     "certs/root-client-key.pem".as_ref(),
//! )?;
//! let seeds = vec!["10.0.0.1:8400".to_string()];
//! let client = ClusterClient::connect(ClusterConfig::new(seeds, Some(tls))).await?;
//! let offset = client.produce("hello").await?; // to the leader, exactly once
//! assert_eq!(client.consume(offset).await?, "hello"); // from a follower
//! let mut records = client.consume_stream(0); // resumes across failovers
//! while let Some((offset, value)) = records.next().await.transpose()? {
//!     println!("{offset}: {}", String::from_utf8_lossy(&value));
//! }
//! # Ok(())
//! # }
//! ```

use std::collections::{BTreeSet, HashMap};
use std::hash::{BuildHasher, Hasher};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proglog_proto::{ProduceBatchRequest, ProduceRequest, Record, Server};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::channel::Change;
use tonic::transport::Channel;
use tonic::Code;

use crate::{endpoint, unix_channel, Bytes, Client, Error, Result, Target, Tls};

/// How to reach a cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Addresses (`host:port`) of any agents; one reachable is enough.
    pub seeds: Vec<String>,
    /// Client TLS; `None` speaks plaintext (`--dev` agents).
    pub tls: Option<Tls>,
    /// The co-located agent's Unix socket: when set, every call goes to
    /// that agent (which forwards writes to the leader) and `seeds` and
    /// `tls` are not used.
    pub unix_socket: Option<PathBuf>,
    /// How long one call may take, retries across a leader change
    /// included.
    pub deadline: Duration,
    /// How often the server list is refreshed while calls succeed.
    pub refresh: Duration,
}

impl ClusterConfig {
    /// A config with `seeds` and `tls`, a 10 s deadline and a 5 s refresh.
    pub fn new(seeds: Vec<String>, tls: Option<Tls>) -> ClusterConfig {
        ClusterConfig {
            seeds,
            tls,
            unix_socket: None,
            deadline: Duration::from_secs(10),
            refresh: Duration::from_secs(5),
        }
    }

    /// A config for the co-located agent's Unix socket at `path`.
    pub fn unix(path: impl Into<PathBuf>) -> ClusterConfig {
        ClusterConfig {
            unix_socket: Some(path.into()),
            ..ClusterConfig::new(Vec::new(), None)
        }
    }
}

/// The first and the longest wait between retries.
const BACKOFF_FIRST: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// The connection key of the Unix socket (never a `host:port`).
const UNIX_KEY: &str = "unix socket";
/// How long a server may take to answer GetServers (a refresh's question,
/// or a balanced channel's check) before it counts as unreachable.
const REACHABLE_TIMEOUT: Duration = Duration::from_secs(1);

/// A leader-aware client of a cluster. Cheap to clone; clones share the
/// server list, the connections and the producer identity.
#[derive(Debug, Clone)]
pub struct ClusterClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: ClusterConfig,
    producer_id: String,
    sequence: AtomicU64,
    /// Round-robin position over the readers.
    turn: AtomicUsize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    servers: Vec<Server>,
    refreshed: Option<Instant>,
    conns: HashMap<String, Client>,
}

/// The address writes go to: the leader's.
pub fn pick_leader(servers: &[Server]) -> Option<&str> {
    servers
        .iter()
        .find(|s| s.is_leader)
        .map(|s| s.rpc_addr.as_str())
}

/// The address read number `turn` goes to: the followers in turn, the
/// leader only when there is no follower.
pub fn pick_reader(servers: &[Server], turn: usize) -> Option<&str> {
    let followers: Vec<&Server> = servers.iter().filter(|s| !s.is_leader).collect();
    match followers.len() {
        0 => pick_leader(servers),
        n => Some(followers[turn % n].rpc_addr.as_str()),
    }
}

/// Whether a failed call may succeed elsewhere or later: the server was
/// unreachable, not the leader, or lost its leader meanwhile.
fn retryable(e: &Error) -> bool {
    match e {
        Error::Transport(_) => true,
        Error::Status(s) => matches!(
            s.code(),
            Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded
        ),
        Error::File { .. } | Error::Address(_) | Error::Unreachable { .. } => false,
    }
}

impl ClusterClient {
    /// Learns the cluster's servers from the first seed that answers with
    /// some (an agent that knows none yet is asked again, within the
    /// deadline).
    pub async fn connect(config: ClusterConfig) -> Result<ClusterClient> {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        let client = ClusterClient {
            inner: Arc::new(Inner {
                producer_id: format!("client-{:016x}", h.finish()),
                config,
                sequence: AtomicU64::new(0),
                turn: AtomicUsize::new(0),
                state: Mutex::default(),
            }),
        };
        // An agent that answers with no servers is starting (no leader
        // yet) or has not joined: ask again until the deadline. An
        // unreachable seed fails at once.
        let deadline = Instant::now() + client.inner.config.deadline;
        let mut wait = BACKOFF_FIRST;
        loop {
            match client.refresh().await {
                Ok(_) => return Ok(client),
                Err(Error::Status(s))
                    if s.code() == Code::Unavailable
                        && std::error::Error::source(&s).is_none()
                        && Instant::now() + wait < deadline =>
                {
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(BACKOFF_MAX);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// This client's idempotent producer id.
    pub fn producer_id(&self) -> &str {
        &self.inner.producer_id
    }

    /// The servers as last learned.
    pub fn servers(&self) -> Vec<Server> {
        self.inner
            .state
            .lock()
            .expect("not poisoned")
            .servers
            .clone()
    }

    /// Asks the known servers, then the seeds, for the server list, each
    /// within a second; keeps the first answer that names a leader, else
    /// the first non-empty one. A node cut off from its peers still
    /// answers, with no leader (it is campaigning): taking its word would
    /// hold every write until the partition heals.
    pub async fn refresh(&self) -> Result<Vec<Server>> {
        let mut candidates: Vec<String> = match self.inner.config.unix_socket {
            Some(_) => vec![UNIX_KEY.to_string()],
            None => self.servers().into_iter().map(|s| s.rpc_addr).collect(),
        };
        for seed in &self.inner.config.seeds {
            if !candidates.contains(seed) {
                candidates.push(seed.clone());
            }
        }
        let mut last = Error::Status(tonic::Status::invalid_argument("no seed addresses"));
        let mut leaderless = None;
        for addr in candidates {
            // Bounded: an agent whose packets vanish (a dead host, a cut
            // link) would otherwise hold the refresh, and every call
            // waiting on it, until TCP gives up minutes later.
            let ask = async {
                let mut c = self.conn(&addr).await?;
                c.servers().await
            };
            let answer = match tokio::time::timeout(REACHABLE_TIMEOUT, ask).await {
                Ok(answer) => answer,
                Err(_) => Err(tonic::Status::unavailable(format!(
                    "the agent at {addr} did not answer GetServers within {REACHABLE_TIMEOUT:?}"
                ))
                .into()),
            };
            match answer {
                Ok(servers) if pick_leader(&servers).is_some() => return Ok(self.keep(servers)),
                Ok(servers) if !servers.is_empty() => {
                    leaderless.get_or_insert(servers);
                }
                Ok(_) => {
                    last = tonic::Status::unavailable(format!(
                        "the agent at {addr} knows no servers yet (starting, no leader \
                         elected, or not joined to a cluster)"
                    ))
                    .into();
                }
                Err(e) => {
                    self.forget(&addr);
                    last = e;
                }
            }
        }
        match leaderless {
            Some(servers) => Ok(self.keep(servers)),
            None => Err(last),
        }
    }

    /// Makes `servers` the list calls are routed by.
    fn keep(&self, servers: Vec<Server>) -> Vec<Server> {
        let mut state = self.inner.state.lock().expect("not poisoned");
        state.servers = servers.clone();
        state.refreshed = Some(Instant::now());
        servers
    }

    /// A connection to `addr`, made on first use.
    async fn conn(&self, addr: &str) -> Result<Client> {
        if let Some(c) = self
            .inner
            .state
            .lock()
            .expect("not poisoned")
            .conns
            .get(addr)
        {
            return Ok(c.clone());
        }
        let target = match &self.inner.config.unix_socket {
            Some(path) => Target::Unix(path.clone()),
            None => Target::Tcp {
                addr: addr.to_string(),
                tls: self.inner.config.tls.clone(),
            },
        };
        let client = Client::connect(target).await?;
        let mut state = self.inner.state.lock().expect("not poisoned");
        Ok(state
            .conns
            .entry(addr.to_string())
            .or_insert(client)
            .clone())
    }

    /// Whether the agent at `addr` answers GetServers within a second.
    async fn reachable(&self, addr: &str) -> bool {
        let answered = match self.conn(addr).await {
            Ok(mut c) => tokio::time::timeout(REACHABLE_TIMEOUT, c.servers())
                .await
                .is_ok_and(|r| r.is_ok()),
            Err(_) => false,
        };
        if !answered {
            self.forget(addr);
        }
        answered
    }

    fn forget(&self, addr: &str) {
        self.inner
            .state
            .lock()
            .expect("not poisoned")
            .conns
            .remove(addr);
    }

    /// Runs `call` against the address `pick` chooses for each attempt
    /// (numbered from 0, so a reader that fails is not picked again at
    /// once), refreshing the list and retrying with backoff on retryable
    /// errors until the deadline.
    async fn with_retries<T, P, C, F>(&self, pick: P, mut call: C) -> Result<T>
    where
        P: Fn(&[Server], usize) -> Option<String>,
        C: FnMut(Client) -> F,
        F: std::future::Future<Output = Result<T>>,
    {
        let deadline = Instant::now() + self.inner.config.deadline;
        let mut wait = BACKOFF_FIRST;
        let mut attempt = 0;
        loop {
            let stale = {
                let state = self.inner.state.lock().expect("not poisoned");
                state
                    .refreshed
                    .is_none_or(|at| at.elapsed() >= self.inner.config.refresh)
            };
            if stale {
                let _ = self.refresh().await;
            }
            let target = match self.inner.config.unix_socket {
                Some(_) => Some(UNIX_KEY.to_string()),
                None => pick(&self.servers(), attempt),
            };
            let result = match target.clone() {
                Some(addr) => match self.conn(&addr).await {
                    Ok(client) => {
                        let left = deadline.saturating_duration_since(Instant::now());
                        match tokio::time::timeout(left, call(client)).await {
                            Ok(result) => result,
                            Err(_) => Err(tonic::Status::deadline_exceeded(
                                "no answer within the client's deadline",
                            )
                            .into()),
                        }
                    }
                    Err(e) => Err(e),
                },
                None => Err(tonic::Status::unavailable("no leader known").into()),
            };
            match result {
                Err(e) if retryable(&e) && Instant::now() + wait < deadline => {
                    if let Some(addr) = &target {
                        if matches!(e, Error::Transport(_)) {
                            self.forget(addr);
                        }
                    }
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(BACKOFF_MAX);
                    attempt += 1;
                    let _ = self.refresh().await;
                }
                other => return other,
            }
        }
    }

    /// Appends `value` through the leader, exactly once (see the module
    /// docs); returns its offset.
    pub async fn produce(&self, value: impl Into<Bytes>) -> Result<u64> {
        let sequence = self.inner.sequence.fetch_add(1, Ordering::Relaxed);
        let value = value.into();
        let producer_id = self.inner.producer_id.clone();
        self.with_retries(
            |s, _| pick_leader(s).map(str::to_string),
            |mut c| {
                let request = ProduceRequest {
                    record: Some(Record {
                        value: value.clone(),
                        ..Record::default()
                    }),
                    producer_id: producer_id.clone(),
                    sequence,
                };
                async move { Ok(c.rpc().produce(request).await?.into_inner().offset) }
            },
        )
        .await
    }

    /// Appends `values` contiguously through the leader, exactly once;
    /// returns the first offset.
    pub async fn produce_batch<V: Into<Bytes>>(
        &self,
        values: impl IntoIterator<Item = V>,
    ) -> Result<u64> {
        let values: Vec<Bytes> = values.into_iter().map(Into::into).collect();
        let sequence = self.inner.sequence.fetch_add(1, Ordering::Relaxed);
        let producer_id = self.inner.producer_id.clone();
        self.with_retries(
            |s, _| pick_leader(s).map(str::to_string),
            |mut c| {
                let request = ProduceBatchRequest {
                    records: values
                        .iter()
                        .map(|v| Record {
                            value: v.clone(),
                            ..Record::default()
                        })
                        .collect(),
                    producer_id: producer_id.clone(),
                    sequence,
                };
                async move {
                    Ok(c.rpc()
                        .produce_batch(request)
                        .await?
                        .into_inner()
                        .first_offset)
                }
            },
        )
        .await
    }

    /// Reads the record at `offset` from a follower (round robin; the
    /// leader when there is none). A follower may lag: a record just
    /// written can be `OUT_OF_RANGE` there for a moment.
    pub async fn consume(&self, offset: u64) -> Result<Bytes> {
        let turn = self.inner.turn.fetch_add(1, Ordering::Relaxed);
        self.with_retries(
            |s, attempt| pick_reader(s, turn + attempt).map(str::to_string),
            |mut c| async move { c.consume(offset).await },
        )
        .await
    }
}

/// Which servers a [`ClusterClient::channel`] balances over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The leader only (writes).
    Leader,
    /// The followers, or the leader when there is none (reads).
    Readers,
}

/// The addresses of the servers that play `role`.
pub fn addresses(servers: &[Server], role: Role) -> BTreeSet<String> {
    let leader = pick_leader(servers).map(str::to_string);
    match role {
        Role::Leader => leader.into_iter().collect(),
        Role::Readers => {
            let followers: BTreeSet<String> = servers
                .iter()
                .filter(|s| !s.is_leader)
                .map(|s| s.rpc_addr.clone())
                .collect();
            if followers.is_empty() {
                leader.into_iter().collect()
            } else {
                followers
            }
        }
    }
}

impl ClusterClient {
    /// Streams records from `offset` on from a reader (a follower, or the
    /// leader alone), following new ones. When the server goes away or
    /// loses its leader the stream moves to another reader and resumes at
    /// the next offset, so no record is skipped or repeated; it ends with
    /// the first error that is not such a change (or one that outlasts the
    /// deadline), or when dropped.
    pub fn consume_stream(
        &self,
        offset: u64,
    ) -> impl Stream<Item = Result<(u64, Bytes)>> + Send + Unpin + use<> {
        let (tx, rx) = mpsc::channel(256);
        let this = self.clone();
        tokio::spawn(async move {
            let mut next = offset;
            let mut wait = BACKOFF_FIRST;
            let mut failing_since: Option<Instant> = None;
            loop {
                let turn = this.inner.turn.fetch_add(1, Ordering::Relaxed);
                let target = match this.inner.config.unix_socket {
                    Some(_) => Some(UNIX_KEY.to_string()),
                    None => pick_reader(&this.servers(), turn).map(str::to_string),
                };
                let opened = match target {
                    Some(addr) => match this.conn(&addr).await {
                        Ok(mut c) => c.consume_stream(next).await,
                        Err(e) => Err(e),
                    },
                    None => Err(tonic::Status::unavailable("no server known").into()),
                };
                let failure = match opened {
                    Ok(mut stream) => loop {
                        tokio::select! {
                            _ = tx.closed() => return,
                            item = stream.next() => match item {
                                Some(Ok((o, value))) => {
                                    failing_since = None;
                                    wait = BACKOFF_FIRST;
                                    next = o + 1;
                                    if tx.send(Ok((o, value))).await.is_err() {
                                        return;
                                    }
                                }
                                Some(Err(e)) => break e,
                                None => break tonic::Status::unavailable("the server ended the stream").into(),
                            },
                        }
                    },
                    Err(e) => e,
                };
                let since = *failing_since.get_or_insert_with(Instant::now);
                if !retryable(&failure) || since.elapsed() >= this.inner.config.deadline {
                    let _ = tx.send(Err(failure)).await;
                    return;
                }
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
                wait = (wait * 2).min(BACKOFF_MAX);
                let _ = this.refresh().await;
            }
        });
        ReceiverStream::new(rx)
    }

    /// A plain tonic `Channel` balanced over the servers that play `role`,
    /// kept current from GetServers every `refresh` interval (it feeds the
    /// channel tonic's discovery changes, inserts and removals; a server
    /// that does not answer is left out until it does): for apps that call
    /// the generated clients directly. The list task ends when the channel is dropped.
    pub fn channel(&self, role: Role) -> Channel {
        if let Some(path) = self.inner.config.unix_socket.clone() {
            // One agent, which forwards writes: its socket.
            return unix_channel(path);
        }
        let (channel, changes) = Channel::balance_channel::<String>(64);
        let this = self.clone();
        tokio::spawn(async move {
            let mut current: BTreeSet<String> = BTreeSet::new();
            loop {
                let servers = match this.refresh().await {
                    Ok(servers) => servers,
                    Err(_) => this.servers(),
                };
                // A member that is down (still listed until removed) would
                // fail the calls balanced onto it: only reachable ones go in.
                let mut wanted = BTreeSet::new();
                for addr in addresses(&servers, role) {
                    if this.reachable(&addr).await {
                        wanted.insert(addr);
                    }
                }
                for gone in current.difference(&wanted) {
                    if changes.send(Change::Remove(gone.clone())).await.is_err() {
                        return;
                    }
                }
                for new in wanted.difference(&current) {
                    let Ok(endpoint) = endpoint(new, this.inner.config.tls.as_ref()) else {
                        continue;
                    };
                    if changes
                        .send(Change::Insert(new.clone(), endpoint))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                current = wanted;
                tokio::select! {
                    _ = changes.closed() => return,
                    _ = tokio::time::sleep(this.inner.config.refresh) => {}
                }
            }
        });
        channel
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn servers(leader: Option<usize>, n: usize) -> Vec<Server> {
        (0..n)
            .map(|i| Server {
                id: format!("n{i}"),
                rpc_addr: format!("10.0.0.{i}:8400"),
                is_leader: leader == Some(i),
            })
            .collect()
    }

    #[test]
    fn writes_go_to_the_leader() {
        assert_eq!(pick_leader(&servers(Some(1), 3)), Some("10.0.0.1:8400"));
        assert_eq!(pick_leader(&servers(None, 3)), None, "no ready server");
        assert_eq!(pick_leader(&[]), None);
    }

    #[test]
    fn reads_go_round_robin_to_followers_and_to_the_leader_only_alone() {
        let three = servers(Some(0), 3);
        let picked: Vec<&str> = (0..4).map(|t| pick_reader(&three, t).unwrap()).collect();
        assert_eq!(
            picked,
            [
                "10.0.0.1:8400",
                "10.0.0.2:8400",
                "10.0.0.1:8400",
                "10.0.0.2:8400"
            ]
        );
        assert_eq!(pick_reader(&servers(Some(0), 1), 7), Some("10.0.0.0:8400"));
        assert_eq!(pick_reader(&[], 0), None);
    }

    #[test]
    fn balanced_channels_track_the_leader_or_the_readers() {
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        let three = servers(Some(0), 3);
        assert_eq!(addresses(&three, Role::Leader), set(&["10.0.0.0:8400"]));
        assert_eq!(
            addresses(&three, Role::Readers),
            set(&["10.0.0.1:8400", "10.0.0.2:8400"])
        );
        let alone = servers(Some(0), 1);
        assert_eq!(addresses(&alone, Role::Readers), set(&["10.0.0.0:8400"]));
        assert!(addresses(&servers(None, 3), Role::Leader).is_empty());
    }

    /// An agent that only answers GetServers, with a fixed list.
    struct Fake(Vec<Server>);

    #[tonic::async_trait]
    impl proglog_proto::log_server::Log for Fake {
        type ConsumeStreamStream =
            tokio_stream::Empty<Result<proglog_proto::ConsumeResponse, tonic::Status>>;
        type ProduceStreamStream =
            tokio_stream::Empty<Result<proglog_proto::ProduceResponse, tonic::Status>>;

        async fn get_servers(
            &self,
            _: tonic::Request<proglog_proto::GetServersRequest>,
        ) -> Result<tonic::Response<proglog_proto::GetServersResponse>, tonic::Status> {
            Ok(tonic::Response::new(proglog_proto::GetServersResponse {
                servers: self.0.clone(),
            }))
        }
        async fn produce(
            &self,
            _: tonic::Request<ProduceRequest>,
        ) -> Result<tonic::Response<proglog_proto::ProduceResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented("fake"))
        }
        async fn produce_batch(
            &self,
            _: tonic::Request<ProduceBatchRequest>,
        ) -> Result<tonic::Response<proglog_proto::ProduceBatchResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented("fake"))
        }
        async fn consume(
            &self,
            _: tonic::Request<proglog_proto::ConsumeRequest>,
        ) -> Result<tonic::Response<proglog_proto::ConsumeResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented("fake"))
        }
        async fn consume_stream(
            &self,
            _: tonic::Request<proglog_proto::ConsumeRequest>,
        ) -> Result<tonic::Response<Self::ConsumeStreamStream>, tonic::Status> {
            Err(tonic::Status::unimplemented("fake"))
        }
        async fn produce_stream(
            &self,
            _: tonic::Request<tonic::Streaming<ProduceRequest>>,
        ) -> Result<tonic::Response<Self::ProduceStreamStream>, tonic::Status> {
            Err(tonic::Status::unimplemented("fake"))
        }
    }

    /// Serves `n` fakes on loopback; `answer(addresses)` gives each one's
    /// list. Returns the addresses.
    async fn fakes(n: usize, answer: impl Fn(usize, &[String]) -> Vec<Server>) -> Vec<String> {
        let mut listeners = Vec::new();
        for _ in 0..n {
            listeners.push(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap());
        }
        let addrs: Vec<String> = listeners
            .iter()
            .map(|l| l.local_addr().unwrap().to_string())
            .collect();
        for (i, listener) in listeners.into_iter().enumerate() {
            let service = proglog_proto::log_server::LogServer::new(Fake(answer(i, &addrs)));
            tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(service)
                    .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
            );
        }
        addrs
    }

    fn listed(addrs: &[String], leader: Option<usize>) -> Vec<Server> {
        let mut list = servers(leader, addrs.len());
        for (server, addr) in list.iter_mut().zip(addrs) {
            server.rpc_addr = addr.clone();
        }
        list
    }

    #[tokio::test]
    async fn a_node_that_knows_no_leader_does_not_hide_the_one_the_others_know() {
        // Node 0 is cut off from its peers and campaigning: it lists the
        // cluster but no leader. Nodes 1 and 2 follow node 2. Node 0 is
        // asked first, both as a seed and as the first known server.
        let addrs = fakes(3, |i, addrs| listed(addrs, (i != 0).then_some(2))).await;
        let client = ClusterClient::connect(ClusterConfig::new(addrs.clone(), None))
            .await
            .unwrap();
        assert_eq!(pick_leader(&client.servers()), Some(addrs[2].as_str()));
        let again = client.refresh().await.unwrap();
        assert_eq!(pick_leader(&again), Some(addrs[2].as_str()));

        // While nobody knows a leader the list is still learned (reads can
        // go on), and writes find none.
        let addrs = fakes(2, |_, addrs| listed(addrs, None)).await;
        let client = ClusterClient::connect(ClusterConfig::new(addrs.clone(), None))
            .await
            .unwrap();
        assert_eq!(client.servers().len(), 2);
        assert_eq!(pick_leader(&client.servers()), None);
    }

    #[test]
    fn only_errors_a_leader_change_explains_are_retried() {
        for code in [Code::Unavailable, Code::Unknown, Code::DeadlineExceeded] {
            assert!(retryable(&tonic::Status::new(code, "x").into()), "{code:?}");
        }
        for code in [
            Code::PermissionDenied,
            Code::FailedPrecondition,
            Code::OutOfRange,
            Code::ResourceExhausted,
            Code::InvalidArgument,
        ] {
            assert!(
                !retryable(&tonic::Status::new(code, "x").into()),
                "{code:?}"
            );
        }
    }
}
