//! Raft on the WAL, with openraft.
//!
//! Version: openraft `=0.9.25` (with `storage-v2`), not a 0.10 alpha. 0.9
//! is the stable line whose API no longer moves (bug fixes only) and whose
//! storage, state machine and network traits match ours; 0.10 brings leader
//! transfer and streamed append, but changed its API in every alpha. Only
//! this module names openraft: the server and the agent see the
//! `CommitLog` trait and plain types, so moving to 0.10 later
//! (`truncate_after`, io::Error, stream `apply`, `RaftNetworkV2`) stays
//! local.
//!
//! Storage: the Raft log is a WAL of its own ([`log_store`]; one thread,
//! [`log_writer`], writes and syncs it with group commit, and acknowledges
//! an entry to openraft through its flush callback once a sync covers
//! it). The state machine ([`state_machine`]) applies record entries to a
//! second WAL, the data log, assigning dense offsets at apply time (one
//! thread, [`data_writer`], writes them behind the apply). The data log does not fsync: after a restart it
//! is cut back to the last snapshot and the committed entries after it are
//! applied again from the durable Raft log, which appends the same records
//! at the same offsets (replay is idempotent). Each record is thus fsynced
//! once, in the Raft log.
//!
//! Snapshots ([`snapshot`]) are hard links to the data log's store files
//! with their lengths frozen at build time; openraft's `SnapshotData`
//! ([`transfer`]) streams them lazily up to those lengths, so serving a
//! snapshot (openraft asks for it at every start) copies nothing. Sent to
//! a lagging follower, a snapshot's bytes that the follower's own store
//! files already hold travel as references ([`net::delta`]).

// openraft's trait methods return its `StorageError` (over 200 bytes); our
// helpers return it too rather than boxing and unboxing at every call.
#![allow(clippy::result_large_err)]

pub mod codec;
mod data_writer;
pub mod hops;
pub mod log_store;
mod log_writer;
pub mod net;
pub mod node;
pub mod producers;
mod recent;
pub mod snapshot;
pub mod state_machine;
pub mod transfer;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_storage;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub use log_store::LogStore;
pub use node::{Forward, NodeError, NodeSettings, RaftNode};
pub use state_machine::StateMachine;

/// A command replicated through Raft.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Append records contiguously (Produce, ProduceBatch).
    Append {
        /// The record values.
        records: Vec<Bytes>,
        /// Idempotent producer identity and sequence, if any.
        producer: Option<(String, u64)>,
        /// The leader's wall clock when it proposed the entry, in ms. The
        /// producer table's clock is the largest value applied (monotonic,
        /// the same on every node); it measures producer idleness.
        at_ms: u64,
    },
    /// Several client appends in one entry, applied in order (the node
    /// batches requests that arrive while an entry is being committed:
    /// group commit at the Raft level). Each element is an `Append`.
    Batch(Vec<Request>),
    /// Drop records below `lowest` on every node (retention).
    Retain {
        /// The new lowest offset.
        lowest: u64,
    },
    /// Bound the producer table to `max` producers on every node (the
    /// leader proposes its `max_producers` when it takes office), least
    /// recently used out. A command rather than local config, so that
    /// every node evicts the same producers. Appended last: entries are
    /// bincode, which numbers variants.
    ProducerLimit {
        /// The most producers remembered.
        max: u64,
    },
}

impl Request {
    /// Bytes of the records it carries (what it costs in memory and on
    /// disk beyond a small overhead).
    pub fn record_bytes(&self) -> usize {
        match self {
            Request::Append { records, .. } => records.iter().map(Bytes::len).sum(),
            Request::Batch(requests) => requests.iter().map(Request::record_bytes).sum(),
            Request::Retain { .. } | Request::ProducerLimit { .. } => 0,
        }
    }
}

/// Below this many record bytes, a request's records are copied into one
/// buffer of their own as they enter the Raft path (a copy of up to 64 KiB
/// costs a few microseconds; the buffer it frees can be twice as large).
const OWN_BELOW: usize = 64 << 10;

/// The records of a request as the Raft path keeps them (queued, in the
/// recent entries, until applied and replicated). Records arrive as slices
/// of the buffer their request was received in (no copy), and each keeps
/// that whole buffer alive: at least 8 KiB per request, whatever its size,
/// and up to about twice the request's size for larger ones (the buffer
/// grows by doubling). Requests up to [`OWN_BELOW`] are therefore copied
/// into one allocation sized to them; larger ones keep their slices, whose
/// copy would cost more than the memory it saves.
fn own_records(records: Vec<Bytes>) -> Vec<Bytes> {
    let total: usize = records.iter().map(Bytes::len).sum();
    if total >= OWN_BELOW {
        return records;
    }
    let mut own = bytes::BytesMut::with_capacity(total);
    for record in &records {
        own.extend_from_slice(record);
    }
    let mut own = own.freeze();
    records
        .iter()
        .map(|record| own.split_to(record.len()))
        .collect()
}

/// A permit for `bytes` (at most `max`) of a writer queue's room: at once
/// when there is room (no await, so no yield to tokio's task budget),
/// else once the writer has made room.
async fn queue_room(
    room: &std::sync::Arc<tokio::sync::Semaphore>,
    bytes: usize,
    max: u32,
) -> Result<tokio::sync::OwnedSemaphorePermit, tokio::sync::AcquireError> {
    let want = bytes.clamp(1, max as usize) as u32;
    match std::sync::Arc::clone(room).try_acquire_many_owned(want) {
        Ok(permit) => Ok(permit),
        Err(_) => std::sync::Arc::clone(room).acquire_many_owned(want).await,
    }
}

/// Bytes of the records an entry carries.
fn entry_bytes(payload: &openraft::EntryPayload<TypeConfig>) -> usize {
    match payload {
        openraft::EntryPayload::Normal(req) => req.record_bytes(),
        _ => 0,
    }
}

/// What applying a [`Request`] answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Records are at `first_offset..first_offset + count` (for a retried
    /// producer sequence: where the first attempt put them).
    Appended {
        /// Offset of the first record.
        first_offset: u64,
        /// Number of records.
        count: u64,
    },
    /// The producer sequence is older than the remembered window.
    StaleSequence {
        /// The oldest sequence still remembered for the producer.
        oldest: u64,
    },
    /// Retention applied; records from `lowest` on remain.
    Retained {
        /// The new lowest offset.
        lowest: u64,
    },
    /// One response per request of a `Batch`, in order.
    Batch(Vec<Response>),
    /// Blank and membership entries answer nothing.
    Empty,
}

/// A member of the cluster as Raft's membership records it: the name
/// operators and GetServers see, and the address peers and clients dial.
/// It is part of every membership entry and snapshot, so fields are only
/// ever added behind a new codec version (see [`codec`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The node's name (`--node-name`).
    pub name: String,
    /// The advertised RPC address (`host:port`), gRPC and Raft alike.
    pub rpc_addr: String,
}

impl Member {
    /// A member named `name` reachable at `rpc_addr`.
    pub fn new(name: impl Into<String>, rpc_addr: impl Into<String>) -> Member {
        Member {
            name: name.into(),
            rpc_addr: rpc_addr.into(),
        }
    }
}

impl std::fmt::Display for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.name, self.rpc_addr)
    }
}

openraft::declare_raft_types!(
    /// proglog's openraft type configuration.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = u64,
        Node = Member,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = transfer::SnapshotData,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A Raft log id of this configuration.
pub type LogId = openraft::LogId<u64>;
/// A Raft vote of this configuration.
pub type Vote = openraft::Vote<u64>;
/// A storage error of this configuration.
pub type StorageError = openraft::StorageError<u64>;
/// An entry of this configuration.
pub type Entry = openraft::Entry<TypeConfig>;

/// Wraps any error as an openraft storage error on `subject`.
fn io_error(
    subject: openraft::ErrorSubject<u64>,
    verb: openraft::ErrorVerb,
    e: impl std::error::Error + 'static,
) -> StorageError {
    openraft::StorageIOError::new(subject, verb, openraft::AnyError::new(&e)).into()
}
