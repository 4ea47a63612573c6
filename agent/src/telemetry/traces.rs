//! Traces: the OTLP exporter (gRPC, to Jaeger's port 4317 or any OTLP
//! collector) and the W3C trace context (`traceparent`) carried in gRPC
//! metadata, so that one trace spans client -> follower -> leader.
//!
//! Spans are ordinary `tracing` spans; `tracing-opentelemetry` turns those
//! of our crates into OpenTelemetry spans when `--otlp-endpoint` is set
//! (see [`super::logging`]). Servers start a span per call with
//! [`grpc_span`] (client port) or [`peer_span`] (peer port, only the
//! forwarded appends), whose parent is the caller's `traceparent` if it
//! sent one; outgoing peer calls carry the current span's context with
//! [`inject`]. Without an exporter nothing is sampled, so [`inject`]
//! writes nothing.

use std::time::Duration;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry::KeyValue;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use tonic::codegen::http;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The `service.name` every node exports under; `service.instance.id`
/// carries the node name.
pub const SERVICE_NAME: &str = "proglog";

/// The peer method whose calls get a span (and a parent from the caller):
/// a follower's forwarded append. Raft's own RPCs (heartbeats every few
/// milliseconds) are not traced per call.
pub const FORWARD_METHOD: &str = "/raft.v1.Raft/Forward";

/// Bound on one export call, so a sink that hangs cannot hold spans (and
/// the shutdown flush) forever.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// Builds the tracer provider that batches spans to the OTLP gRPC
/// `endpoint` (`http://host:4317`), sampling root spans at `ratio` and
/// following the caller's decision otherwise (parent-based). Must run
/// inside a tokio runtime: the exporter's channel lives on it, and the
/// runtime must outlive [`SdkTracerProvider::shutdown_with_timeout`].
/// The batch delay follows `OTEL_BSP_SCHEDULE_DELAY` (default 5 s).
pub fn provider(
    endpoint: &str,
    ratio: f64,
    node: Option<&str>,
) -> Result<SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(EXPORT_TIMEOUT)
        .build()?;
    let mut resource = Resource::builder().with_service_name(SERVICE_NAME);
    if let Some(node) = node {
        resource = resource.with_attribute(KeyValue::new("service.instance.id", node.to_string()));
    }
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(sampler(ratio))
        .with_resource(resource.build())
        .build())
}

/// The sampler of `--trace-sample-ratio`: a root span (no parent) is
/// sampled for a share `ratio` of trace ids (0.0 none, 1.0 all); a span
/// with a parent, local or from a caller's `traceparent`, follows the
/// parent's sampled flag, so a trace is kept or dropped whole.
pub fn sampler(ratio: f64) -> Sampler {
    Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio)))
}

/// The span of one call on the client port (log.v1, admin, health): named
/// by the gRPC path, child of the caller's `traceparent` if any. For
/// tonic's `Server::trace_fn`, which runs the whole call in it.
pub fn grpc_span(req: &http::Request<()>) -> Span {
    let span = tracing::info_span!(
        "rpc",
        otel.name = req.uri().path(),
        otel.kind = "server",
        rpc.system = "grpc",
    );
    adopt_parent(&span, req.headers());
    span
}

/// The span of a forwarded append on the peer port (a child of the
/// follower's forward span); no span for any other peer call.
pub fn peer_span(req: &http::Request<()>) -> Span {
    if req.uri().path() != FORWARD_METHOD {
        return Span::none();
    }
    let span = tracing::info_span!(
        "forwarded",
        otel.name = FORWARD_METHOD,
        otel.kind = "server",
        rpc.system = "grpc",
    );
    adopt_parent(&span, req.headers());
    span
}

/// Writes `span`'s trace context into `metadata` as `traceparent` (and
/// `tracestate`), so the callee's span joins the trace. Writes nothing
/// when the span is not exported.
pub fn inject(span: &Span, metadata: &mut MetadataMap) {
    let cx = span.context();
    TraceContextPropagator::new().inject_context(&cx, &mut MetadataInjector(metadata));
}

/// Makes the remote context in `headers` the parent of `span`, if there is
/// a valid one.
fn adopt_parent(span: &Span, headers: &http::HeaderMap) {
    // Most calls carry none: skip the propagator's parsing for them.
    const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
    if !headers.contains_key(TRACEPARENT) {
        return;
    }
    let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    if parent.span().span_context().is_valid() {
        // Fails only without an OpenTelemetry layer, when there is no
        // trace to join anyway.
        let _ = span.set_parent(parent);
    }
}

/// Reads trace context from HTTP/2 headers (gRPC metadata).
struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Writes trace context into the metadata of an outgoing call.
struct MetadataInjector<'a>(&'a mut MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            MetadataKey::from_bytes(key.as_bytes()),
            MetadataValue::try_from(value),
        ) {
            self.0.insert(key, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{SpanContext, SpanId, SpanKind, TraceFlags, TraceId, TraceState};
    use opentelemetry::Context;
    use opentelemetry_sdk::trace::{SamplingDecision, ShouldSample};

    use super::*;
    use crate::config::Config;
    use crate::telemetry::logging::TelemetrySettings;

    /// The sampler the agent builds for a config with `ratio`.
    fn configured(ratio: f64) -> Sampler {
        let config = Config {
            dev: true,
            trace_sample_ratio: ratio,
            ..Config::default()
        };
        config.validate().unwrap();
        sampler(TelemetrySettings::agent(&config).trace_sample_ratio)
    }

    /// 1,000 trace ids spread evenly over the range the ratio divides.
    fn trace_ids() -> impl Iterator<Item = TraceId> {
        (0..1000u64).map(|i| TraceId::from_bytes(u128::from(i * (u64::MAX / 1000)).to_be_bytes()))
    }

    fn sampled(s: &Sampler, parent: Option<&Context>, id: TraceId) -> bool {
        let r = s.should_sample(parent, id, "rpc", &SpanKind::Server, &[], &[]);
        r.decision == SamplingDecision::RecordAndSample
    }

    /// A context whose (remote) parent span has the sampled flag `yes`.
    fn parent(id: TraceId, yes: bool) -> Context {
        let flags = if yes {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        Context::new().with_remote_span_context(SpanContext::new(
            id,
            SpanId::from_bytes([1; 8]),
            flags,
            true,
            TraceState::default(),
        ))
    }

    #[test]
    fn the_configured_ratio_samples_root_traces_and_a_parent_decides_for_its_children() {
        let roots = |ratio| {
            let s = configured(ratio);
            trace_ids().filter(|&id| sampled(&s, None, id)).count()
        };
        assert_eq!(roots(0.0), 0, "0.0 samples no root trace");
        assert_eq!(roots(1.0), 1000, "1.0 samples every root trace");
        let quarter = roots(0.25);
        assert!((240..=260).contains(&quarter), "0.25 sampled {quarter}");
        // Below a root, the parent's flag wins over the ratio both ways.
        for id in trace_ids().take(50) {
            assert!(sampled(&configured(0.0), Some(&parent(id, true)), id));
            assert!(!sampled(&configured(1.0), Some(&parent(id, false)), id));
        }
    }

    #[test]
    fn a_traceparent_header_round_trips_through_metadata() {
        let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let mut headers = http::HeaderMap::new();
        headers.insert("traceparent", traceparent.parse().unwrap());
        let cx = TraceContextPropagator::new().extract(&HeaderExtractor(&headers));
        assert!(cx.span().span_context().is_valid());
        let mut metadata = MetadataMap::new();
        TraceContextPropagator::new().inject_context(&cx, &mut MetadataInjector(&mut metadata));
        assert_eq!(
            metadata.get("traceparent").unwrap().to_str().unwrap(),
            traceparent
        );
    }
}
