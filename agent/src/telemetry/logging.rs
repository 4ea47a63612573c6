//! The process's tracing subscriber, installed once by [`init`]: log
//! output (journald under systemd, else JSON or text on stderr) behind a
//! level filter that a config reload can change, and, with an OTLP
//! endpoint, the layer that exports our spans (see [`super::traces`]).
//!
//! Installed with `tracing::subscriber::set_global_default`, never
//! `.init()`: `init()` also makes `tracing-log`'s `LogTracer` the global
//! `log` logger, which then panics or fails against any other `log`
//! backend, and we do not want the `log` bridge at all (below).

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::level_filters::LevelFilter;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{reload, EnvFilter, Layer, Registry};

use crate::agent::LogLevelHook;
use crate::config::{Config, LogFormat};

/// The crates whose level `log_level = "info"` (a bare level) sets; every
/// other crate stays at `warn` (or quieter, if the level is).
const OWN_CRATES: [&str; 3] = ["proglog", "proglog_agent", "proglog_client"];

/// What the subscriber is made of.
#[derive(Debug, Clone)]
pub struct TelemetrySettings {
    /// A level (`info`: our crates at info, dependencies at warn) or a full
    /// `EnvFilter` directive (`info,openraft=debug`), used as given.
    pub level: String,
    /// The stderr format when not writing to journald.
    pub format: LogFormat,
    /// Put on every log line (`node` in JSON, a prefix in text, `NODE` in
    /// journald) and on exported spans (`service.instance.id`).
    pub node: Option<String>,
    /// OTLP gRPC endpoint (`http://host:4317`); no trace export without.
    pub otlp_endpoint: Option<String>,
    /// Share of root traces sampled (parent-based below a root).
    pub trace_sample_ratio: f64,
}

impl TelemetrySettings {
    /// The agent's settings from its config.
    pub fn agent(config: &Config) -> TelemetrySettings {
        TelemetrySettings {
            level: config.log_level.clone(),
            format: config.log_format,
            node: Some(config.node_name.clone()),
            otlp_endpoint: config.otlp_endpoint.clone(),
            trace_sample_ratio: config.trace_sample_ratio,
        }
    }

    /// Logs at `level` to stderr, no node name, no traces (tools).
    pub fn stderr(level: &str, format: LogFormat) -> TelemetrySettings {
        TelemetrySettings {
            level: level.to_string(),
            format,
            node: None,
            otlp_endpoint: None,
            trace_sample_ratio: 1.0,
        }
    }
}

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// `log_level` is neither a level nor a filter directive.
    #[error("log_level {level:?}: {reason}")]
    Filter {
        /// The value given.
        level: String,
        /// The parser's complaint.
        reason: String,
    },
    /// The OTLP exporter could not be built.
    #[error("otlp_endpoint {endpoint}: {source}")]
    Exporter {
        /// The endpoint given.
        endpoint: String,
        /// The exporter's error.
        source: opentelemetry_otlp::ExporterBuildError,
    },
    /// A global subscriber was installed already (init ran twice).
    #[error(transparent)]
    AlreadyInstalled(#[from] tracing::subscriber::SetGlobalDefaultError),
}

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogOutput {
    /// journald's native protocol (stderr is the journal's stream).
    Journald,
    /// Lines on stderr in the configured format.
    Stderr,
}

/// The installed telemetry: changes the log level, and flushes traces at
/// exit ([`Telemetry::shutdown`]).
pub struct Telemetry {
    level: LogLevelHook,
    tracer: Option<SdkTracerProvider>,
    output: LogOutput,
}

impl Telemetry {
    /// A hook that replaces the log filter (same syntax as
    /// [`TelemetrySettings::level`]); the agent calls it on reload.
    pub fn level_hook(&self) -> LogLevelHook {
        Arc::clone(&self.level)
    }

    /// Where log lines go.
    pub fn output(&self) -> LogOutput {
        self.output
    }

    /// Whether spans are exported.
    pub fn exports_traces(&self) -> bool {
        self.tracer.is_some()
    }

    /// Exports the spans still queued and stops the exporter, waiting at
    /// most `deadline`. Call it while the tokio runtime the exporter was
    /// built in still runs, and not on one of its worker threads (it
    /// blocks). A failure is reported on stderr, never fatal.
    pub fn shutdown(self, deadline: Duration) {
        if let Some(provider) = self.tracer {
            if let Err(e) = provider.shutdown_with_timeout(deadline) {
                tracing::warn!(error = %e, "flushing traces at exit failed");
            }
        }
    }
}

/// The filter for `level`: a bare level applies to our crates, and
/// dependencies stay at `warn` unless that is more verbose than asked
/// (openraft's INFO lines would flood a first start); anything else is a
/// full directive, used as given.
pub fn filter_directives(level: &str) -> String {
    let level = level.trim();
    match level.parse::<LevelFilter>() {
        Ok(own) => {
            let deps = own.min(LevelFilter::WARN);
            let mut directive = deps.to_string().to_lowercase();
            for krate in OWN_CRATES {
                let _ = write!(directive, ",{krate}={}", own.to_string().to_lowercase());
            }
            directive
        }
        Err(_) => level.to_string(),
    }
}

/// Installs the process's subscriber. With an OTLP endpoint this must run
/// inside a tokio runtime (see [`super::traces::provider`]). Under systemd
/// with stderr connected to the journal, lines go to journald as native
/// entries; if journald does not answer, to stderr.
pub fn init(settings: TelemetrySettings) -> Result<Telemetry, TelemetryError> {
    let filter = env_filter(&settings.level)?;
    let (filter, handle) = reload::Layer::new(filter);
    let journald = if stderr_is_journal() {
        Some(journald_layer(settings.node.as_deref()))
    } else {
        None
    };
    let (output, kind, journald_error) = match journald {
        Some(Ok(layer)) => (layer.boxed(), LogOutput::Journald, None),
        Some(Err(e)) => (
            stderr_layer(&settings),
            LogOutput::Stderr,
            Some(e.to_string()),
        ),
        None => (stderr_layer(&settings), LogOutput::Stderr, None),
    };
    let mut layers = vec![output.with_filter(filter).boxed()];
    let tracer = match &settings.otlp_endpoint {
        Some(endpoint) => {
            let provider = super::traces::provider(
                endpoint,
                settings.trace_sample_ratio,
                settings.node.as_deref(),
            )
            .map_err(|source| TelemetryError::Exporter {
                endpoint: endpoint.clone(),
                source,
            })?;
            // Our spans only, whatever the log level: traces do not go
            // dark when the log is quiet, and dependencies' spans stay out.
            let spans = OWN_CRATES.iter().fold(Targets::new(), |t, krate| {
                t.with_target(*krate, Level::INFO)
            });
            layers.push(
                tracing_opentelemetry::layer()
                    .with_tracer(provider.tracer(super::traces::SERVICE_NAME))
                    .with_filter(spans)
                    .boxed(),
            );
            Some(provider)
        }
        None => None,
    };
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layers))?;
    if let Some(e) = journald_error {
        tracing::warn!(error = %e, "JOURNAL_STREAM names stderr but journald does not answer; logging to stderr");
    }
    let level: LogLevelHook = Arc::new(move |level: &str| {
        let filter = env_filter(level).map_err(|e| e.to_string())?;
        handle.reload(filter).map_err(|e| e.to_string())
    });
    Ok(Telemetry {
        level,
        tracer,
        output: kind,
    })
}

fn env_filter(level: &str) -> Result<EnvFilter, TelemetryError> {
    EnvFilter::try_new(filter_directives(level)).map_err(|e| TelemetryError::Filter {
        level: level.to_string(),
        reason: e.to_string(),
    })
}

type BoxedLayer = Box<dyn Layer<Registry> + Send + Sync>;

/// JSON or text on stderr, each line carrying the node name; colours only
/// on a terminal.
fn stderr_layer(settings: &TelemetrySettings) -> BoxedLayer {
    let node = settings.node.clone();
    match settings.format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .event_format(WithNode {
                inner: format::format().json(),
                node,
                json: true,
            })
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .event_format(WithNode {
                inner: format::format(),
                node,
                json: false,
            })
            .boxed(),
    }
}

/// Native journald entries through `tracing-journald`, a `tracing` layer:
/// it sees each event with its spans, so the entry carries the span names
/// and fields as well as the event's own (upper-cased, no prefix: `NODE`,
/// `ERROR`, `TERM`), and `PRIORITY` from the level. A `log`-crate backend
/// such as systemd-journal-logger would only see what the `log` bridge
/// passes on, which drops the span context, and bridging needs `tracing`'s
/// `log-always` feature, which writes every event twice.
fn journald_layer(node: Option<&str>) -> std::io::Result<BoxedLayer> {
    let mut layer = tracing_journald::layer()?
        .with_field_prefix(None)
        .with_syslog_identifier(super::traces::SERVICE_NAME.to_string());
    if let Some(node) = node {
        layer = layer.with_custom_fields([("NODE", node)]);
    }
    Ok(layer.boxed())
}

/// Whether systemd connected stderr to the journal: `JOURNAL_STREAM` is
/// `device:inode` of that stream, and it must still be stderr (a child
/// whose stderr was redirected inherits the variable too).
fn stderr_is_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    match std::fs::File::from(fd).metadata() {
        Ok(meta) => meta.dev() == dev && meta.ino() == ino,
        Err(_) => false,
    }
}

/// An event format that puts the node name on every line: a leading
/// `"node"` key in JSON, a leading word in text.
struct WithNode<F> {
    inner: F,
    node: Option<String>,
    json: bool,
}

impl<S, N, F> FormatEvent<S, N> for WithNode<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: format::Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let Some(node) = &self.node else {
            return self.inner.format_event(ctx, writer, event);
        };
        if !self.json {
            write!(writer, "{node} ")?;
            return self.inner.format_event(ctx, writer, event);
        }
        let mut line = String::new();
        self.inner
            .format_event(ctx, format::Writer::new(&mut line), event)?;
        match line.strip_prefix('{') {
            Some(rest) => {
                let node = serde_json::to_string(node).map_err(|_| std::fmt::Error)?;
                write!(writer, "{{\"node\":{node},{rest}")
            }
            None => writer.write_str(&line),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_level_keeps_dependencies_at_warn() {
        assert_eq!(
            filter_directives("info"),
            "warn,proglog=info,proglog_agent=info,proglog_client=info"
        );
        assert_eq!(
            filter_directives(" debug "),
            "warn,proglog=debug,proglog_agent=debug,proglog_client=debug"
        );
    }

    #[test]
    fn a_quieter_level_quiets_dependencies_too() {
        assert_eq!(
            filter_directives("error"),
            "error,proglog=error,proglog_agent=error,proglog_client=error"
        );
        assert!(filter_directives("off").starts_with("off,"));
    }

    #[test]
    fn a_full_directive_is_used_as_given() {
        assert_eq!(
            filter_directives("info,openraft=debug"),
            "info,openraft=debug"
        );
        assert_eq!(filter_directives("openraft=trace"), "openraft=trace");
    }

    #[test]
    fn every_expansion_parses_as_a_filter() {
        for level in ["trace", "debug", "info", "warn", "error", "off", "INFO"] {
            EnvFilter::try_new(filter_directives(level)).unwrap();
        }
    }
}
