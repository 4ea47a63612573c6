//! The one place where WAL and membership errors become gRPC statuses.

use proglog_proto::admin::{LEADER_ADDR_METADATA, LEADER_NAME_METADATA};
use proglog_proto::{LOWEST_OFFSET_METADATA, NEXT_OFFSET_METADATA};
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::Status;

use super::admin::AdminError;
use super::CommitError;
use crate::log::LogError;
use crate::raft::node::MembershipError;

impl From<CommitError> for Status {
    fn from(e: CommitError) -> Status {
        match e {
            CommitError::Log(e) => e.into(),
            CommitError::StaleSequence { .. } => Status::failed_precondition(e.to_string()),
            CommitError::Unavailable(_) => Status::unavailable(e.to_string()),
            CommitError::Leader(status) => status,
            CommitError::OutOfRange { lowest, next, .. } => {
                // Decimal digits are always valid metadata.
                let mut metadata = MetadataMap::new();
                metadata.insert(LOWEST_OFFSET_METADATA, MetadataValue::from(lowest));
                metadata.insert(NEXT_OFFSET_METADATA, MetadataValue::from(next));
                Status::with_metadata(tonic::Code::OutOfRange, e.to_string(), metadata)
            }
        }
    }
}

impl From<LogError> for Status {
    fn from(e: LogError) -> Status {
        match e {
            LogError::OffsetOutOfRange { .. } => Status::out_of_range(e.to_string()),
            LogError::RecordTooLarge { .. } => Status::resource_exhausted(e.to_string()),
            LogError::Closed => Status::unavailable("the log is shutting down"),
            LogError::SyncFailed | LogError::Corrupt { .. } | LogError::Io { .. } => {
                tracing::error!(error = %e, "storage failure");
                Status::internal("storage failure")
            }
        }
    }
}

impl From<AdminError> for Status {
    fn from(e: AdminError) -> Status {
        match e {
            AdminError::InvalidArgument(_) => Status::invalid_argument(e.to_string()),
            AdminError::UnknownName(_) => Status::not_found(e.to_string()),
            AdminError::NameTaken { .. } => Status::already_exists(e.to_string()),
            AdminError::Membership(e) => e.into(),
        }
    }
}

/// Not the leader -> FAILED_PRECONDITION naming the leader in the message
/// and in metadata (so a client can retry there), or UNAVAILABLE while no
/// leader is known; not a member -> NOT_FOUND; a transfer with no voter
/// to hand over to -> FAILED_PRECONDITION, one that ran out of time ->
/// DEADLINE_EXCEEDED; Raft refused or failed -> UNAVAILABLE.
impl From<MembershipError> for Status {
    fn from(e: MembershipError) -> Status {
        match &e {
            MembershipError::NotLeader { leader: None } => {
                Status::unavailable(format!("{e}, and no leader is known yet"))
            }
            MembershipError::NotLeader {
                leader: Some((_, member)),
            } => {
                let mut metadata = MetadataMap::new();
                // A name or address that is not valid metadata stays in
                // the message only.
                for (key, value) in [
                    (LEADER_NAME_METADATA, &member.name),
                    (LEADER_ADDR_METADATA, &member.rpc_addr),
                ] {
                    if let Ok(value) = MetadataValue::try_from(value.as_str()) {
                        metadata.insert(key, value);
                    }
                }
                Status::with_metadata(
                    tonic::Code::FailedPrecondition,
                    format!("{e}; send this call to the leader"),
                    metadata,
                )
            }
            MembershipError::UnknownNode(_) => Status::not_found(e.to_string()),
            MembershipError::NotVoter(_) | MembershipError::NoOtherVoter => {
                Status::failed_precondition(e.to_string())
            }
            MembershipError::Timeout(_) => Status::deadline_exceeded(e.to_string()),
            MembershipError::Raft(_) => Status::unavailable(e.to_string()),
        }
    }
}
