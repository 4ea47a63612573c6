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

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proglog_proto::{ProduceBatchRequest, ProduceRequest, Record, Server};
use tokio::time::Instant;
use tonic::Code;

use crate::{Client, Error, Result, Target, Tls};

/// How to reach a cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Addresses (`host:port`) of any agents; one reachable is enough.
    pub seeds: Vec<String>,
    /// Client TLS; `None` speaks plaintext (`--dev` agents).
    pub tls: Option<Tls>,
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
            deadline: Duration::from_secs(10),
            refresh: Duration::from_secs(5),
        }
    }
}

/// The first and the longest wait between retries.
const BACKOFF_FIRST: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

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
        Error::File { .. } | Error::Address(_) => false,
    }
}

impl ClusterClient {
    /// Learns the cluster's servers from the first seed that answers.
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
        client.refresh().await?;
        Ok(client)
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

    /// Asks the known servers, then the seeds, for the server list; keeps
    /// the first non-empty answer.
    pub async fn refresh(&self) -> Result<Vec<Server>> {
        let mut candidates: Vec<String> = self.servers().into_iter().map(|s| s.rpc_addr).collect();
        candidates.extend(self.inner.config.seeds.iter().cloned());
        let mut last = Error::Address("no seed addresses".into());
        for addr in candidates {
            let answer = match self.conn(&addr).await {
                Ok(mut c) => c.servers().await,
                Err(e) => Err(e),
            };
            match answer {
                Ok(servers) if !servers.is_empty() => {
                    let mut state = self.inner.state.lock().expect("not poisoned");
                    state.servers = servers.clone();
                    state.refreshed = Some(Instant::now());
                    return Ok(servers);
                }
                Ok(_) => {}
                Err(e) => {
                    self.forget(&addr);
                    last = e;
                }
            }
        }
        Err(last)
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
        let client = Client::connect(Target::Tcp {
            addr: addr.to_string(),
            tls: self.inner.config.tls.clone(),
        })
        .await?;
        let mut state = self.inner.state.lock().expect("not poisoned");
        Ok(state
            .conns
            .entry(addr.to_string())
            .or_insert(client)
            .clone())
    }

    fn forget(&self, addr: &str) {
        self.inner
            .state
            .lock()
            .expect("not poisoned")
            .conns
            .remove(addr);
    }

    /// Runs `call` against the address `pick` chooses, refreshing the list
    /// and retrying with backoff on retryable errors until the deadline.
    async fn with_retries<T, P, C, F>(&self, pick: P, mut call: C) -> Result<T>
    where
        P: Fn(&[Server]) -> Option<String>,
        C: FnMut(Client) -> F,
        F: std::future::Future<Output = Result<T>>,
    {
        let deadline = Instant::now() + self.inner.config.deadline;
        let mut wait = BACKOFF_FIRST;
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
            let target = pick(&self.servers());
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
                    let _ = self.refresh().await;
                }
                other => return other,
            }
        }
    }

    /// Appends `value` through the leader, exactly once (see the module
    /// docs); returns its offset.
    pub async fn produce(&self, value: impl Into<Vec<u8>>) -> Result<u64> {
        let sequence = self.inner.sequence.fetch_add(1, Ordering::Relaxed);
        let value = value.into();
        let producer_id = self.inner.producer_id.clone();
        self.with_retries(
            |s| pick_leader(s).map(str::to_string),
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
    pub async fn produce_batch(&self, values: Vec<Vec<u8>>) -> Result<u64> {
        let sequence = self.inner.sequence.fetch_add(1, Ordering::Relaxed);
        let producer_id = self.inner.producer_id.clone();
        self.with_retries(
            |s| pick_leader(s).map(str::to_string),
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
    pub async fn consume(&self, offset: u64) -> Result<Vec<u8>> {
        let turn = self.inner.turn.fetch_add(1, Ordering::Relaxed);
        self.with_retries(
            |s| pick_reader(s, turn).map(str::to_string),
            |mut c| async move { c.consume(offset).await },
        )
        .await
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
