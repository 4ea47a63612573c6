//! `proglog agent` flags, named as in the book. Every flag is optional so
//! that only the flags given override the file and the environment.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Serialize;

use super::{LogFormat, SyncMode};
use crate::units::parse_bytes;

/// Flags of `proglog agent`; unset flags leave lower layers in force.
#[derive(Debug, Default, Clone, clap::Args, Serialize)]
pub struct AgentFlags {
    /// TOML config file (same keys as the flags, in snake_case).
    #[arg(long)]
    #[serde(skip)]
    pub config_file: Option<PathBuf>,
    /// Directory for records and state.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// Node name (default: hostname).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// Gossip address host:port (default 127.0.0.1:8401).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bind_addr: Option<SocketAddr>,
    /// gRPC port on the host of --bind-addr (default 8400).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rpc_port: Option<u16>,
    /// RPC address host:port to advertise to peers and clients (default:
    /// the bound address; for 0.0.0.0, the outward interface's).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advertise_addr: Option<String>,
    /// Gossip addresses (host:port, another member's --bind-addr) to join
    /// the cluster through, comma-separated.
    #[arg(long, value_delimiter = ',')]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_join_addrs: Option<Vec<String>>,
    /// Initialize a new cluster with this node (a no-op on existing state).
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub bootstrap: bool,
    /// Development mode: no TLS, no ACL, 127.0.0.1 only; implies --bootstrap.
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dev: bool,
    /// On SIGTERM, leave the cluster's membership (default: stay a member,
    /// so a restart rejoins at once).
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub leave_on_terminate: bool,
    /// Casbin model file.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acl_model_file: Option<PathBuf>,
    /// Casbin policy file.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acl_policy_file: Option<PathBuf>,
    /// Server certificate (PEM).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_tls_cert_file: Option<PathBuf>,
    /// Server key (PEM).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_tls_key_file: Option<PathBuf>,
    /// CA that signs client certificates (PEM).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_tls_ca_file: Option<PathBuf>,
    /// Peer certificate (PEM), for Raft connections.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_tls_cert_file: Option<PathBuf>,
    /// Peer key (PEM).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_tls_key_file: Option<PathBuf>,
    /// CA that signs peer certificates (PEM).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_tls_ca_file: Option<PathBuf>,
    /// Extra peer certificate CNs to accept, comma-separated.
    #[arg(long, value_delimiter = ',')]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_names: Option<Vec<String>>,
    /// Unix socket path for the co-located app.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unix_socket: Option<PathBuf>,
    /// ACL subject of Unix socket clients.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unix_socket_subject: Option<String>,
    /// Unix socket file mode, octal (default 0660).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unix_socket_mode: Option<String>,
    /// Log level of proglog's crates, dependencies at warn (default info);
    /// a full filter directive such as `info,openraft=debug` is used as given.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,
    /// Log format on stderr (default text); under systemd, with stderr
    /// going to the journal, native journald entries instead.
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,
    /// When appends are synced (default always).
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sync: Option<SyncMode>,
    /// Sync period with --sync interval (default 10).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sync_interval_ms: Option<u64>,
    /// Largest record value in bytes (default 1MiB).
    #[arg(long, value_parser = parse_bytes)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_record_bytes: Option<u64>,
    /// Segment store size limit (default 64MiB).
    #[arg(long, value_parser = parse_bytes)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub segment_max_store_bytes: Option<u64>,
    /// Segment index size limit (default 8MiB).
    #[arg(long, value_parser = parse_bytes)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub segment_max_index_bytes: Option<u64>,
    /// Raft entries since the last snapshot that trigger a new one
    /// (default 100000).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot_threshold: Option<u64>,
    /// Record bytes since the last snapshot that trigger a new one, e.g.
    /// 512MiB (default 512MiB; 0: only --snapshot-threshold counts).
    #[arg(long, value_parser = parse_bytes)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot_threshold_bytes: Option<u64>,
    /// How long a produce may wait for its commit before UNAVAILABLE, e.g.
    /// 5s (default 5s).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub produce_timeout: Option<String>,
    /// Idempotent producers remembered, least recently used out (default
    /// 100000).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_producers: Option<u64>,
    /// Keep at most this many bytes of records, e.g. 10GiB (default 0: no
    /// limit).
    #[arg(long, value_parser = parse_bytes)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retention_bytes: Option<u64>,
    /// Drop records older than this, e.g. 168h (default 0s: no limit).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retention_age: Option<String>,
    /// Remove a member from Raft once gossip has seen it failed this long,
    /// e.g. 30m (default 72h).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reap_timeout: Option<String>,
    /// File with the gossip encryption key (base64 of 32 bytes; e.g.
    /// `head -c32 /dev/urandom | base64`).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gossip_key_file: Option<PathBuf>,
    /// HTTP address for /metrics, /health and /ready, e.g.
    /// 127.0.0.1:8402 (default: none).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_addr: Option<SocketAddr>,
    /// OTLP gRPC endpoint for traces, e.g. http://127.0.0.1:4317 (default:
    /// none, no traces). Plain http only: for TLS, a local collector
    /// forwards.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<String>,
    /// Fraction of new traces sampled, 0.0 to 1.0 (default 1.0).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_sample_ratio: Option<f64>,
    /// Most TCP connections open at once on the RPC port, and as many on
    /// the Unix socket (default 4096).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u64>,
    /// Most HTTP/2 streams open at once per connection (default 1024).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_concurrent_streams: Option<u32>,
    /// Most calls in progress at once per connection; more get
    /// RESOURCE_EXHAUSTED (default 1024).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_in_flight_per_connection: Option<u64>,
    /// Close a new connection that sends nothing for this long (default 5s).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_byte_timeout: Option<String>,
    /// Close a new connection whose TLS handshake is not done in this long
    /// (default 10s).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handshake_timeout: Option<String>,
}
