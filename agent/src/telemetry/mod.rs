//! Telemetry: the process's one tracing subscriber (`logging`: log output
//! to stderr or journald; `traces`: OTLP trace export and the trace context
//! carried across gRPC hops), and Prometheus metrics (`metrics`: the
//! instruments and what records them) served by a small HTTP server
//! (`http`: `/metrics`, `/health`, `/ready` on `--metrics-addr`). Nothing
//! here knows the log, Raft or the service beyond what they report; they
//! emit `tracing` spans and events and record into `Metrics`, and
//! `agent.rs`/`main.rs` install this.

pub mod http;
pub mod logging;
pub mod metrics;
pub mod traces;

pub use logging::{init, Telemetry, TelemetryError, TelemetrySettings};
