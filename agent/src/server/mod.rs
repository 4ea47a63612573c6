//! The `log.v1.Log` gRPC service over a [`CommitLog`], and the operator
//! service `proglog.admin.v1.Admin` over the Raft node (`admin.rs`).
//!
//! The service sees storage only through [`CommitLog`] (the agent gives it
//! the Raft node, `crate::raft::RaftNode`), so the service does not change
//! as the cluster grows. Errors map to statuses in `status.rs`;
//! authorization is in `auth.rs`.

pub mod admin;
pub mod auth;
mod status;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use proglog_proto::log_server::Log as LogRpc;
use proglog_proto::{
    ConsumeRequest, ConsumeResponse, GetServersRequest, GetServersResponse, ProduceBatchRequest,
    ProduceBatchResponse, ProduceRequest, ProduceResponse, Record, Server,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::log::LogError;
pub use admin::AdminService;
use auth::{Authorizer, CONSUME, PRODUCE};

/// Replies a ProduceStream keeps in flight before it stops reading.
const STREAM_WINDOW: usize = 256;

/// Why an append or read through a [`CommitLog`] failed.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// The storage refused or failed.
    #[error(transparent)]
    Log(#[from] LogError),
    /// An idempotent producer's sequence is older than the remembered
    /// window: it can't be told from a retry, so it is refused.
    #[error("sequence {sequence} of producer {producer:?} is older than the remembered window (oldest {oldest})")]
    StaleSequence {
        /// The producer id.
        producer: String,
        /// The refused sequence.
        sequence: u64,
        /// The oldest sequence still remembered.
        oldest: u64,
    },
    /// No leader, or the node is shutting down.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The leader's answer to an append this follower forwarded, or why
    /// the leader could not be reached: the client gets it as it is.
    #[error("leader: {}", .0.message())]
    Leader(Status),
    /// A read outside the records held, `lowest..next`: below the lowest
    /// offset retention kept, or at or past the next offset. The bounds
    /// are those the read was checked against; the status carries them as
    /// metadata, so clients need not parse the message.
    #[error("{}", out_of_range(*.offset, *.lowest, *.next))]
    OutOfRange {
        /// The offset asked for.
        offset: u64,
        /// The lowest offset held (retention removed those below).
        lowest: u64,
        /// The offset the next record gets (the end of the log).
        next: u64,
    },
}

/// The message of [`CommitError::OutOfRange`]: which side of the range
/// `offset` fell off.
fn out_of_range(offset: u64, lowest: u64, next: u64) -> String {
    if offset < lowest {
        format!("offset {offset} was removed by retention: the log starts at offset {lowest}")
    } else {
        format!("offset {offset} is past the end of the log (next offset {next})")
    }
}

/// An idempotent producer's identity and the sequence of one request.
pub type Producer = Option<(String, u64)>;

/// Resolves to (first offset, count) of an appended batch once it is
/// durable.
pub type Durable = Pin<Box<dyn Future<Output = Result<(u64, u64), CommitError>> + Send>>;

/// Resolves once a batch has its place in the log (see [`CommitLog::append`]).
pub type Ordered = Pin<Box<dyn Future<Output = Result<Durable, CommitError>> + Send>>;

/// Resolves to records read from the log (see [`CommitLog::read`]).
pub type Reading = Pin<Box<dyn Future<Output = Result<Vec<Bytes>, CommitError>> + Send>>;

/// What the gRPC service needs from storage.
pub trait CommitLog: Send + Sync + 'static {
    /// Appends `records` contiguously, in two steps: the returned future
    /// resolves once the batch is ordered after every batch whose `Ordered`
    /// resolved before (it may wait for the disk to catch up first); the
    /// `Durable` it yields resolves to the first offset and the count once
    /// the batch is durable (the next offset and 0 for an empty batch). Awaiting `Ordered`
    /// before appending the next batch, and `Durable` later, pipelines a
    /// stream of appends without reordering it. With a `producer`, a
    /// sequence already applied answers with its original offsets.
    fn append(&self, records: Vec<Bytes>, producer: Producer) -> Ordered;
    /// Reads committed records from `offset` on: the one at `offset` (or
    /// the error that it cannot be read: [`CommitError::OutOfRange`] with
    /// the bounds when it is not held) and those after it, up to `max`
    /// records, the last one committed, and about [`READ_BATCH_BYTES`].
    /// The reads run on a blocking thread (they may wait for the disk,
    /// never for writes or applies).
    fn read(&self, offset: u64, max: usize) -> Reading;
    /// The visible high watermark (next offset), updated as records commit.
    fn subscribe(&self) -> watch::Receiver<u64>;
    /// The servers of the cluster, for `GetServers`.
    fn servers(&self) -> Vec<Server>;
}

/// Bytes of records a read gathers before it returns (at least one record).
pub const READ_BATCH_BYTES: usize = 1 << 20;
/// Records a ConsumeStream reads per trip to the blocking pool.
const STREAM_READ_BATCH: usize = 256;

/// The `log.v1.Log` service. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct LogService {
    log: Arc<dyn CommitLog>,
    auth: Arc<Authorizer>,
    max_record_bytes: Arc<AtomicU64>,
    shutdown: CancellationToken,
}

impl LogService {
    /// A service over `log`, checking callers with `auth`. Records larger
    /// than `max_record_bytes` (live-adjustable) are refused; streams end
    /// when `shutdown` fires.
    pub fn new(
        log: Arc<dyn CommitLog>,
        auth: Arc<Authorizer>,
        max_record_bytes: Arc<AtomicU64>,
        shutdown: CancellationToken,
    ) -> LogService {
        LogService {
            log,
            auth,
            max_record_bytes,
            shutdown,
        }
    }

    fn check_size(&self, records: &[Record]) -> Result<(), Status> {
        let max = self.max_record_bytes.load(Ordering::Relaxed);
        match records.iter().find(|r| r.value.len() as u64 > max) {
            Some(r) => Err(Status::resource_exhausted(format!(
                "record of {} bytes exceeds max_record_bytes = {max}",
                r.value.len()
            ))),
            None => Ok(()),
        }
    }

    /// Validates a ProduceRequest; returns its record's value and producer.
    fn check_produce(&self, req: ProduceRequest) -> Result<(Bytes, Producer), Status> {
        let record = req
            .record
            .ok_or_else(|| Status::invalid_argument("ProduceRequest.record is missing"))?;
        self.check_size(std::slice::from_ref(&record))?;
        Ok((record.value, producer(req.producer_id, req.sequence)))
    }

    async fn produce_one(&self, req: ProduceRequest) -> Result<ProduceResponse, Status> {
        let (value, producer) = self.check_produce(req)?;
        let durable = self.log.append(vec![value], producer).await?;
        Ok(ProduceResponse {
            offset: durable.await?.0,
        })
    }
}

#[tonic::async_trait]
impl LogRpc for LogService {
    async fn produce(
        &self,
        req: Request<ProduceRequest>,
    ) -> Result<Response<ProduceResponse>, Status> {
        self.auth.authorize(&req, PRODUCE)?;
        self.produce_one(req.into_inner()).await.map(Response::new)
    }

    async fn consume(
        &self,
        req: Request<ConsumeRequest>,
    ) -> Result<Response<ConsumeResponse>, Status> {
        self.auth.authorize(&req, CONSUME)?;
        let offset = req.into_inner().offset;
        let value = self.log.read(offset, 1).await?.into_iter().next();
        let value = value.ok_or_else(|| Status::internal("storage returned no record"))?;
        Ok(Response::new(ConsumeResponse {
            record: Some(Record {
                value,
                offset,
                ..Record::default()
            }),
        }))
    }

    type ConsumeStreamStream = ReceiverStream<Result<ConsumeResponse, Status>>;

    async fn consume_stream(
        &self,
        req: Request<ConsumeRequest>,
    ) -> Result<Response<Self::ConsumeStreamStream>, Status> {
        self.auth.authorize(&req, CONSUME)?;
        let mut offset = req.into_inner().offset;
        let (tx, rx) = mpsc::channel(64);
        let (log, shutdown) = (Arc::clone(&self.log), self.shutdown.clone());
        let mut watermark = log.subscribe();
        tokio::spawn(async move {
            loop {
                // At the end of the log: wait for an append, the client
                // leaving, or shutdown. No polling.
                while offset >= *watermark.borrow_and_update() {
                    tokio::select! {
                        _ = tx.closed() => return,
                        _ = shutdown.cancelled() => return,
                        changed = watermark.changed() => if changed.is_err() { return },
                    }
                }
                // A batch per trip to the blocking pool: reads run off the
                // async threads without a hop per record.
                let batch = tokio::select! {
                    batch = log.read(offset, STREAM_READ_BATCH) => batch,
                    _ = shutdown.cancelled() => return,
                };
                let records = match batch {
                    Ok(records) => records,
                    Err(e) => {
                        let _ = tx.send(Err(Status::from(e))).await;
                        return;
                    }
                };
                for value in records {
                    let item = Ok(ConsumeResponse {
                        record: Some(Record {
                            value,
                            offset,
                            ..Record::default()
                        }),
                    });
                    tokio::select! {
                        sent = tx.send(item) => if sent.is_err() { return },
                        _ = shutdown.cancelled() => return,
                    }
                    offset += 1;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    type ProduceStreamStream = ReceiverStream<Result<ProduceResponse, Status>>;

    /// Pipelined: each request is ordered in the log as it arrives, and the
    /// replies follow in request order as the records become durable, so a
    /// stream is not limited to one sync per record.
    async fn produce_stream(
        &self,
        req: Request<Streaming<ProduceRequest>>,
    ) -> Result<Response<Self::ProduceStreamStream>, Status> {
        self.auth.authorize(&req, PRODUCE)?;
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(STREAM_WINDOW);
        let (pending_tx, mut pending_rx) = mpsc::channel::<Result<Durable, Status>>(STREAM_WINDOW);
        let this = self.clone();
        let appends = async move {
            loop {
                let next = tokio::select! {
                    _ = this.shutdown.cancelled() => return,
                    _ = pending_tx.closed() => return,
                    next = inbound.message() => next,
                };
                let req = match next {
                    Ok(Some(req)) => req,
                    Ok(None) => return,
                    // A message that could not be read (malformed: the
                    // codec's INVALID_ARGUMENT) ends the stream with its
                    // status after the replies before it, not a silent OK.
                    Err(status) => {
                        let _ = pending_tx.send(Err(status)).await;
                        return;
                    }
                };
                let ordered = match this.check_produce(req) {
                    Ok((value, producer)) => this
                        .log
                        .append(vec![value], producer)
                        .await
                        .map_err(Status::from),
                    Err(status) => Err(status),
                };
                if pending_tx.send(ordered).await.is_err() {
                    return;
                }
            }
        };
        // The call's span (and trace) covers the appends and forwards.
        tokio::spawn(appends.in_current_span());
        tokio::spawn(async move {
            while let Some(pending) = pending_rx.recv().await {
                let reply = match pending {
                    Ok(durable) => durable
                        .await
                        .map(|(offset, _)| ProduceResponse { offset })
                        .map_err(Status::from),
                    Err(status) => Err(status),
                };
                if tx.send(reply).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn get_servers(
        &self,
        _req: Request<GetServersRequest>,
    ) -> Result<Response<GetServersResponse>, Status> {
        Ok(Response::new(GetServersResponse {
            servers: self.log.servers(),
        }))
    }

    async fn produce_batch(
        &self,
        req: Request<ProduceBatchRequest>,
    ) -> Result<Response<ProduceBatchResponse>, Status> {
        self.auth.authorize(&req, PRODUCE)?;
        let batch = req.into_inner();
        self.check_size(&batch.records)?;
        let values = batch.records.into_iter().map(|r| r.value).collect();
        let producer = producer(batch.producer_id, batch.sequence);
        let (first_offset, count) = self.log.append(values, producer).await?.await?;
        Ok(Response::new(ProduceBatchResponse {
            first_offset,
            count,
        }))
    }
}

/// The producer of a request: none when `producer_id` is empty.
fn producer(id: String, sequence: u64) -> Producer {
    (!id.is_empty()).then_some((id, sequence))
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_admin;
#[cfg(test)]
mod tests_bad_input;
