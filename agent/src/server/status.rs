//! The one place where WAL errors become gRPC statuses.

use tonic::Status;

use crate::log::LogError;

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
