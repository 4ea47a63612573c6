//! The one place where WAL errors become gRPC statuses.

use tonic::Status;

use super::CommitError;
use crate::log::LogError;

impl From<CommitError> for Status {
    fn from(e: CommitError) -> Status {
        match e {
            CommitError::Log(e) => e.into(),
            CommitError::StaleSequence { .. } => Status::failed_precondition(e.to_string()),
            CommitError::Unavailable(_) => Status::unavailable(e.to_string()),
            CommitError::Leader(status) => status,
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
