//! Agent configuration: defaults < TOML file < `PROGLOG_*` environment <
//! command-line flags, merged with figment, then validated before anything
//! binds a port. Errors name the key, the value and the reason.

mod flags;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

pub use flags::AgentFlags;

use crate::log::{LogConfig, SyncPolicy};

/// How appends are synced (the agent's `--sync`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    /// fdatasync before acknowledging (group commit).
    Always,
    /// fdatasync every `--sync-interval-ms`.
    Interval,
    /// Leave write-back to the OS.
    Never,
}

impl SyncMode {
    /// The WAL policy for this mode.
    pub fn policy(self, interval: Duration) -> SyncPolicy {
        match self {
            SyncMode::Always => SyncPolicy::Always,
            SyncMode::Interval => SyncPolicy::Interval(interval),
            SyncMode::Never => SyncPolicy::Never,
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable text.
    Text,
}

/// The agent's settings, snake_case names as in the TOML file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where records, Raft state and the lock file live.
    pub data_dir: PathBuf,
    /// This node's name (default: the hostname).
    pub node_name: String,
    /// Gossip address; its host with `rpc_port` is the advertised RPC address.
    pub bind_addr: SocketAddr,
    /// Port of gRPC (and Raft) on the host of `bind_addr`.
    pub rpc_port: u16,
    /// The RPC address (`host:port`) peers and clients are told to dial.
    /// Unset: the bound RPC address, or for a wildcard bind (`0.0.0.0`)
    /// the address of the interface that routes outward.
    pub advertise_addr: Option<String>,
    /// Initialize a new cluster with this node (no-op when state exists).
    pub bootstrap: bool,
    /// Gossip addresses (`host:port`, another member's `bind_addr`) to
    /// join the cluster's gossip through at start, retried until one
    /// answers. The leader then adds this node to Raft.
    pub start_join_addrs: Vec<String>,
    /// No TLS, no ACL, 127.0.0.1 only: for development.
    pub dev: bool,
    /// On SIGTERM, leave the Raft membership (after handing leadership
    /// on) instead of staying a member that a restart brings back.
    pub leave_on_terminate: bool,
    /// Casbin model file.
    pub acl_model_file: Option<PathBuf>,
    /// Casbin policy file.
    pub acl_policy_file: Option<PathBuf>,
    /// Server certificate chain (PEM).
    pub server_tls_cert_file: Option<PathBuf>,
    /// Server private key (PEM).
    pub server_tls_key_file: Option<PathBuf>,
    /// CA bundle that signs client certificates (PEM).
    pub server_tls_ca_file: Option<PathBuf>,
    /// Peer certificate chain (PEM) for Raft connections on the 0x01 path.
    pub peer_tls_cert_file: Option<PathBuf>,
    /// Peer private key (PEM).
    pub peer_tls_key_file: Option<PathBuf>,
    /// CA bundle that signs peer certificates (PEM).
    pub peer_tls_ca_file: Option<PathBuf>,
    /// Extra Common Names accepted from peers besides our own peer CN.
    pub peer_names: Vec<String>,
    /// Unix socket for the co-located app (no TLS; file mode guards it).
    pub unix_socket: Option<PathBuf>,
    /// ACL subject of clients on the Unix socket.
    pub unix_socket_subject: Option<String>,
    /// File mode of the Unix socket, octal text such as "0660".
    pub unix_socket_mode: String,
    /// Log filter: a level for proglog's own crates, with dependencies at
    /// `warn` (`info`), or a full directive used as given
    /// (`info,openraft=debug`).
    pub log_level: String,
    /// `json` or `text`.
    pub log_format: LogFormat,
    /// When appends are synced: `always`, `interval` or `never`.
    pub sync: SyncMode,
    /// Sync period with `sync = "interval"`.
    pub sync_interval_ms: u64,
    /// Largest record value accepted, in bytes.
    #[serde(deserialize_with = "crate::units::deserialize_bytes")]
    pub max_record_bytes: u64,
    /// Segment store size limit, in bytes.
    #[serde(deserialize_with = "crate::units::deserialize_bytes")]
    pub segment_max_store_bytes: u64,
    /// Segment index size limit, in bytes.
    #[serde(deserialize_with = "crate::units::deserialize_bytes")]
    pub segment_max_index_bytes: u64,
    /// Raft entries applied since the last snapshot that trigger a new one.
    pub snapshot_threshold: u64,
    /// Record bytes applied since the last snapshot that trigger a new one
    /// (0: only `snapshot_threshold` counts).
    #[serde(deserialize_with = "crate::units::deserialize_bytes")]
    pub snapshot_threshold_bytes: u64,
    /// How long a produce may wait (queue and commit) before UNAVAILABLE,
    /// e.g. "5s".
    pub produce_timeout: String,
    /// Idempotent producers remembered, least recently used out. The
    /// leader replicates its value, so every node keeps the same ones.
    pub max_producers: u64,
    /// Keep at most this many bytes of records (0: no limit); the leader
    /// drops the oldest whole segments on every node.
    #[serde(deserialize_with = "crate::units::deserialize_bytes")]
    pub retention_bytes: u64,
    /// Drop segments last written longer ago than this, e.g. "168h"
    /// ("0s": no limit).
    pub retention_age: String,
    /// A member that gossip has seen failed for this long is removed from
    /// Raft by the leader, e.g. "72h" (positive).
    pub reap_timeout: String,
    /// File holding the gossip encryption key: base64 of 32 bytes. Unset:
    /// gossip is not encrypted.
    pub gossip_key_file: Option<PathBuf>,
    /// HTTP address serving `/metrics` (Prometheus text), `/health` and
    /// `/ready`. Unset: no metrics endpoint.
    pub metrics_addr: Option<SocketAddr>,
    /// OTLP gRPC endpoint traces are exported to, e.g.
    /// `http://127.0.0.1:4317` (Jaeger's OTLP port). Unset: no traces.
    /// Plain `http://` only: an `https://` one is refused at validation.
    pub otlp_endpoint: Option<String>,
    /// Fraction of new traces sampled, 0.0 to 1.0; a trace started
    /// elsewhere keeps its caller's decision.
    pub trace_sample_ratio: f64,
    /// Most TCP connections open at once on the RPC port (client and peer
    /// together, handshakes included); one more is closed at once. The
    /// Unix socket has as many places again, of its own.
    pub max_connections: u64,
    /// Most HTTP/2 streams (calls) open at once on one connection; the
    /// client is told so in the HTTP/2 settings and queues the rest.
    pub max_concurrent_streams: u32,
    /// Most calls one connection may have in progress at once; one more is
    /// refused with RESOURCE_EXHAUSTED (streams count until they start).
    pub max_in_flight_per_connection: u64,
    /// How long a new TCP connection may stay silent before its first
    /// byte, e.g. "5s"; then it is closed.
    pub first_byte_timeout: String,
    /// How long a new connection may take from accept to a finished TLS
    /// handshake (first byte included), e.g. "10s"; then it is closed.
    pub handshake_timeout: String,
}

impl Default for Config {
    fn default() -> Self {
        let log = LogConfig::default();
        Config {
            data_dir: PathBuf::from("/var/lib/proglog"),
            node_name: hostname(),
            bind_addr: SocketAddr::from(([127, 0, 0, 1], 8401)),
            rpc_port: 8400,
            advertise_addr: None,
            bootstrap: false,
            start_join_addrs: Vec::new(),
            dev: false,
            leave_on_terminate: false,
            acl_model_file: None,
            acl_policy_file: None,
            server_tls_cert_file: None,
            server_tls_key_file: None,
            server_tls_ca_file: None,
            peer_tls_cert_file: None,
            peer_tls_key_file: None,
            peer_tls_ca_file: None,
            peer_names: Vec::new(),
            unix_socket: None,
            unix_socket_subject: None,
            unix_socket_mode: "0660".into(),
            log_level: "info".into(),
            log_format: LogFormat::Text,
            sync: SyncMode::Always,
            sync_interval_ms: 10,
            max_record_bytes: 1 << 20,
            segment_max_store_bytes: log.max_store_bytes,
            segment_max_index_bytes: log.max_index_bytes,
            snapshot_threshold: 100_000,
            snapshot_threshold_bytes: 512 << 20,
            produce_timeout: "5s".into(),
            max_producers: crate::raft::producers::DEFAULT_MAX_PRODUCERS,
            retention_bytes: 0,
            retention_age: "0s".into(),
            reap_timeout: "72h".into(),
            gossip_key_file: None,
            metrics_addr: None,
            otlp_endpoint: None,
            trace_sample_ratio: 1.0,
            max_connections: 4096,
            max_concurrent_streams: 1024,
            max_in_flight_per_connection: 1024,
            first_byte_timeout: "5s".into(),
            handshake_timeout: "10s".into(),
        }
    }
}

/// A configuration problem: which key, which value, why.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn invalid(key: &str, value: impl std::fmt::Display, reason: &str) -> ConfigError {
    ConfigError(format!("invalid {key} = {value}: {reason}"))
}

/// Checks that `value` is `host:port` with a non-zero port.
fn check_host_port(key: &str, value: &str) -> Result<(), ConfigError> {
    let port = value
        .rsplit_once(':')
        .map(|(host, port)| (host, port.parse::<u16>()));
    match port {
        Some((host, Ok(port))) if !host.is_empty() && port != 0 => Ok(()),
        _ => Err(invalid(
            key,
            value,
            "expected host:port with a non-zero port",
        )),
    }
}

/// The local address of the interface that routes outward: connecting a
/// UDP socket only picks a route, it sends nothing.
fn outward_ip() -> Option<std::net::IpAddr> {
    let socket = std::net::UdpSocket::bind(("0.0.0.0", 0)).ok()?;
    socket.connect(("192.0.2.1", 9)).ok()?;
    Some(socket.local_addr().ok()?.ip())
}

impl Config {
    /// Merges defaults, the TOML file (flag `--config-file` or env
    /// `PROGLOG_CONFIG_FILE`), `PROGLOG_*` variables and the flags, then
    /// validates the result. An unknown key in the file is an error; an
    /// unknown `PROGLOG_*` variable is ignored (see [`ignored_env_vars`]).
    pub fn load(flags: &AgentFlags) -> Result<Config, ConfigError> {
        let file = flags
            .config_file
            .clone()
            .or_else(|| std::env::var_os("PROGLOG_CONFIG_FILE").map(PathBuf::from));
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = &file {
            if !file.is_file() {
                return Err(invalid("config_file", file.display(), "no such file"));
            }
            figment = figment.merge(Toml::file_exact(file));
        }
        // Only variables that name a key: scripts and the CLI have
        // `PROGLOG_*` variables of their own (see [`ignored_env_vars`]).
        let keys = keys();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let figment = figment
            .merge(Env::prefixed(ENV_PREFIX).only(&keys))
            .merge(Serialized::defaults(flags));
        let config: Config = figment
            .extract()
            .map_err(|e| describe(e, file.as_deref()))?;
        config.validate()?;
        Ok(config)
    }

    /// Parses the text of a TOML config file over the defaults, as
    /// [`Config::load`] merges a file (no environment, no flags, not
    /// validated); the config fuzz target's entry point.
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string(text))
            .extract()
            .map_err(|e| describe(e, None))
    }

    /// Checks values the types alone can't: ranges, pairs that go together,
    /// files that must exist.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.node_name.is_empty() {
            return Err(invalid("node_name", "\"\"", "must not be empty"));
        }
        if self.unix_socket.is_some() != self.unix_socket_subject.is_some() {
            return Err(invalid(
                "unix_socket",
                self.unix_socket
                    .as_deref()
                    .map_or("(unset)".into(), |p| p.display().to_string()),
                "unix_socket and unix_socket_subject go together: set both or neither",
            ));
        }
        self.unix_mode()?;
        if self.max_record_bytes == 0 || self.max_record_bytes > crate::log::store::MAX_RECORD_LEN {
            return Err(invalid(
                "max_record_bytes",
                self.max_record_bytes,
                "must be between 1 and 4294967295",
            ));
        }
        if self.segment_max_store_bytes < 1024 {
            return Err(invalid(
                "segment_max_store_bytes",
                self.segment_max_store_bytes,
                "must be at least 1024",
            ));
        }
        if self.segment_max_index_bytes < 1024 {
            return Err(invalid(
                "segment_max_index_bytes",
                self.segment_max_index_bytes,
                "must be at least 1024",
            ));
        }
        self.retention_age()?;
        if self.snapshot_threshold == 0 {
            return Err(invalid("snapshot_threshold", 0, "must be at least 1"));
        }
        self.produce_timeout()?;
        self.reap_timeout()?;
        if let Some(path) = &self.gossip_key_file {
            crate::discovery::GossipKey::from_file(path)
                .map_err(|e| invalid("gossip_key_file", path.display(), &e.to_string()))?;
        }
        if !(0.0..=1.0).contains(&self.trace_sample_ratio) {
            return Err(invalid(
                "trace_sample_ratio",
                self.trace_sample_ratio,
                "must be between 0.0 and 1.0",
            ));
        }
        if let Some(endpoint) = &self.otlp_endpoint {
            if endpoint.starts_with("https://") {
                return Err(invalid(
                    "otlp_endpoint",
                    endpoint,
                    "TLS to the trace sink is not supported (the exporter has no trust roots); \
                     point it at a local collector over plain gRPC, e.g. http://127.0.0.1:4317 \
                     (an OpenTelemetry Collector there can forward over TLS)",
                ));
            }
            if !endpoint.starts_with("http://") {
                return Err(invalid(
                    "otlp_endpoint",
                    endpoint,
                    "expected a URL such as http://127.0.0.1:4317",
                ));
            }
        }
        self.connection_limits()?;
        if self.max_producers == 0 {
            return Err(invalid("max_producers", 0, "must be at least 1"));
        }
        if self.sync == SyncMode::Interval && self.sync_interval_ms == 0 {
            return Err(invalid(
                "sync_interval_ms",
                0,
                "must be positive with sync = interval",
            ));
        }
        if let Some(addr) = &self.advertise_addr {
            check_host_port("advertise_addr", addr)?;
        }
        for addr in &self.start_join_addrs {
            check_host_port("start_join_addrs", addr)?;
        }
        let peer = [
            ("peer_tls_cert_file", &self.peer_tls_cert_file),
            ("peer_tls_key_file", &self.peer_tls_key_file),
            ("peer_tls_ca_file", &self.peer_tls_ca_file),
        ];
        let set = peer.iter().filter(|(_, v)| v.is_some()).count();
        for (key, value) in peer {
            match value {
                None if set > 0 => {
                    return Err(invalid(
                        key,
                        "(unset)",
                        "the three peer_tls_* files go together",
                    ))
                }
                Some(path) if !path.is_file() => {
                    return Err(invalid(key, path.display(), "no such file"))
                }
                _ => {}
            }
        }
        tracing_subscriber::EnvFilter::try_new(&self.log_level)
            .map_err(|e| invalid("log_level", &self.log_level, &e.to_string()))?;
        if !self.dev {
            let required = [
                ("server_tls_cert_file", &self.server_tls_cert_file),
                ("server_tls_key_file", &self.server_tls_key_file),
                ("server_tls_ca_file", &self.server_tls_ca_file),
                ("acl_model_file", &self.acl_model_file),
                ("acl_policy_file", &self.acl_policy_file),
            ];
            for (key, value) in required {
                match value {
                    None => return Err(invalid(key, "(unset)", "required unless --dev")),
                    Some(path) if !path.is_file() => {
                        return Err(invalid(key, path.display(), "no such file"))
                    }
                    Some(_) => {}
                }
            }
        }
        Ok(())
    }

    /// The retention age, `None` when unlimited.
    pub fn retention_age(&self) -> Result<Option<Duration>, ConfigError> {
        let age = crate::units::parse_duration(&self.retention_age)
            .map_err(|e| invalid("retention_age", &self.retention_age, &e))?;
        Ok((!age.is_zero()).then_some(age))
    }

    /// How long a produce may take before UNAVAILABLE (positive).
    pub fn produce_timeout(&self) -> Result<Duration, ConfigError> {
        let timeout = crate::units::parse_duration(&self.produce_timeout)
            .map_err(|e| invalid("produce_timeout", &self.produce_timeout, &e))?;
        if timeout.is_zero() {
            return Err(invalid(
                "produce_timeout",
                &self.produce_timeout,
                "must be positive",
            ));
        }
        Ok(timeout)
    }

    /// How long a member may be failed before the leader removes it.
    pub fn reap_timeout(&self) -> Result<Duration, ConfigError> {
        let timeout = crate::units::parse_duration(&self.reap_timeout)
            .map_err(|e| invalid("reap_timeout", &self.reap_timeout, &e))?;
        if timeout.is_zero() {
            return Err(invalid(
                "reap_timeout",
                &self.reap_timeout,
                "must be positive",
            ));
        }
        Ok(timeout)
    }

    /// The limits of the RPC port's connections (validated: every count
    /// at least 1, timeouts positive).
    pub fn connection_limits(&self) -> Result<crate::transport::Limits, ConfigError> {
        let positive = |key: &str, value: &str| {
            let d = crate::units::parse_duration(value).map_err(|e| invalid(key, value, &e))?;
            if d.is_zero() {
                return Err(invalid(key, value, "must be positive"));
            }
            Ok(d)
        };
        for (key, value) in [
            ("max_connections", self.max_connections),
            (
                "max_concurrent_streams",
                u64::from(self.max_concurrent_streams),
            ),
            (
                "max_in_flight_per_connection",
                self.max_in_flight_per_connection,
            ),
        ] {
            if value == 0 {
                return Err(invalid(key, 0, "must be at least 1"));
            }
        }
        let first_byte = positive("first_byte_timeout", &self.first_byte_timeout)?;
        let handshake = positive("handshake_timeout", &self.handshake_timeout)?;
        Ok(crate::transport::Limits {
            max_connections: usize::try_from(self.max_connections).unwrap_or(usize::MAX),
            max_concurrent_streams: self.max_concurrent_streams,
            max_in_flight_per_connection: usize::try_from(self.max_in_flight_per_connection)
                .unwrap_or(usize::MAX),
            first_byte_timeout: first_byte,
            handshake_timeout: handshake,
        })
    }

    /// The Unix socket's file mode.
    pub fn unix_mode(&self) -> Result<u32, ConfigError> {
        u32::from_str_radix(self.unix_socket_mode.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or_else(|| {
                invalid(
                    "unix_socket_mode",
                    &self.unix_socket_mode,
                    "expected an octal mode such as 0660",
                )
            })
    }

    /// The address gRPC listens on: the host of `bind_addr` (127.0.0.1
    /// with `dev`) and `rpc_port`.
    pub fn rpc_addr(&self) -> SocketAddr {
        let ip = if self.dev {
            [127, 0, 0, 1].into()
        } else {
            self.bind_addr.ip()
        };
        SocketAddr::new(ip, self.rpc_port)
    }

    /// The RPC address this node advertises (see `advertise_addr`), given
    /// the address its RPC listener is bound to.
    pub fn advertise_addr(&self, bound: SocketAddr) -> String {
        if let Some(addr) = &self.advertise_addr {
            return addr.clone();
        }
        if !bound.ip().is_unspecified() {
            return bound.to_string();
        }
        SocketAddr::new(outward_ip().unwrap_or(bound.ip()), bound.port()).to_string()
    }

    /// WAL settings derived from this config.
    pub fn log_config(&self) -> LogConfig {
        LogConfig {
            max_store_bytes: self.segment_max_store_bytes,
            max_index_bytes: self.segment_max_index_bytes,
            sync: self
                .sync
                .policy(Duration::from_millis(self.sync_interval_ms)),
            ..LogConfig::default()
        }
    }
}

/// Prefix of the environment variables that set config keys.
const ENV_PREFIX: &str = "PROGLOG_";

/// The config keys, snake_case, as the TOML file and `PROGLOG_*` name them.
fn keys() -> Vec<String> {
    match serde_json::to_value(Config::default()) {
        Ok(serde_json::Value::Object(map)) => map.keys().cloned().collect(),
        _ => Vec::new(),
    }
}

/// `PROGLOG_*` environment variables that name no config key (such as a
/// wrapper's `PROGLOG_BIN`): [`Config::load`] ignores them rather than
/// failing, and the agent warns about each at start, since a misspelt key
/// would otherwise go unnoticed. `PROGLOG_CONFIG_FILE` is known.
pub fn ignored_env_vars() -> Vec<String> {
    let keys = keys();
    let mut ignored: Vec<String> = Env::prefixed(ENV_PREFIX)
        .iter()
        .map(|(key, _)| key.as_str().to_string())
        .filter(|key| key != "config_file" && !keys.iter().any(|k| k == key))
        .map(|key| format!("{ENV_PREFIX}{}", key.to_ascii_uppercase()))
        .collect();
    ignored.sort();
    ignored
}

/// Turns a figment error into one line naming the key, the value and where
/// it came from.
fn describe(e: figment::Error, file: Option<&Path>) -> ConfigError {
    let mut lines = Vec::new();
    for err in e {
        let key = if err.path.is_empty() {
            "config".to_string()
        } else {
            err.path.join(".")
        };
        let source = match (&err.metadata, file) {
            (Some(m), _) => match &m.source {
                Some(figment::Source::File(path)) => format!(" (in {})", path.display()),
                _ => format!(" (from {})", m.name),
            },
            (None, Some(f)) => format!(" (in {})", f.display()),
            _ => String::new(),
        };
        lines.push(format!("invalid {key}: {}{source}", err.kind));
    }
    ConfigError(lines.join("; "))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "proglog".into())
}

#[cfg(test)]
mod tests;
