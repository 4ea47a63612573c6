//! The gRPC golden signals: a tower layer around a tonic server that
//! counts each call once (a stream too) when it starts, and when it ends
//! records its latency and, unless OK, its gRPC code. The code comes from
//! the `grpc-status` header of a trailers-only response (how tonic answers
//! a handler's error, e.g. PERMISSION_DENIED) or else from the trailers at
//! the end of the body; a call whose response is dropped before its end
//! (the client went away) counts as CANCELLED.
//!
//! Per call it costs two counter adds, a histogram record and two
//! up-down adds; the label sets are built once per method (a read lock on
//! a small map), so no label allocates per call. At most [`MAX_METHODS`]
//! distinct paths get their own labels; further ones share `unknown`.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Instant;

use http_body::{Body, Frame, SizeHint};
use opentelemetry::metrics::{Counter, Histogram, Meter, UpDownCounter};
use opentelemetry::KeyValue;
use tonic::Code;
use tower::{Layer, Service};

/// Distinct request paths given their own labels.
const MAX_METHODS: usize = 128;

/// The instruments and the per-method label sets.
pub(super) struct GrpcMetrics {
    requests: Counter<u64>,
    errors: Counter<u64>,
    duration: Histogram<f64>,
    in_flight: UpDownCounter<i64>,
    methods: RwLock<HashMap<Box<str>, Arc<[KeyValue; 2]>>>,
    unknown: Arc<[KeyValue; 2]>,
}

impl GrpcMetrics {
    pub(super) fn new(meter: &Meter, buckets: Vec<f64>) -> GrpcMetrics {
        GrpcMetrics {
            requests: meter
                .u64_counter("proglog_grpc_requests_total")
                .with_description("gRPC calls started, by service and method")
                .build(),
            errors: meter
                .u64_counter("proglog_grpc_errors_total")
                .with_description("gRPC calls that ended with a status other than OK, by code")
                .build(),
            duration: meter
                .f64_histogram("proglog_grpc_request_duration_seconds")
                .with_description("Time from a gRPC call's start to its end (a stream's too)")
                .with_boundaries(buckets)
                .build(),
            in_flight: meter
                .i64_up_down_counter("proglog_grpc_requests_in_flight")
                .with_description("gRPC calls started and not yet ended")
                .build(),
            methods: RwLock::default(),
            unknown: Arc::new(labels("unknown", "unknown")),
        }
    }

    /// The label set of `path` (`/package.Service/Method`).
    fn method(&self, path: &str) -> Arc<[KeyValue; 2]> {
        if let Some(found) = self
            .methods
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(path)
        {
            return Arc::clone(found);
        }
        let mut methods = self.methods.write().unwrap_or_else(|e| e.into_inner());
        if methods.len() >= MAX_METHODS {
            return Arc::clone(&self.unknown);
        }
        let (service, method) = path
            .trim_start_matches('/')
            .split_once('/')
            .unwrap_or(("unknown", "unknown"));
        let set = Arc::new(labels(service, method));
        methods.insert(path.into(), Arc::clone(&set));
        set
    }
}

fn labels(service: &str, method: &str) -> [KeyValue; 2] {
    [
        KeyValue::new("service", service.to_string()),
        KeyValue::new("method", method.to_string()),
    ]
}

/// One call being measured; records its end exactly once (at the latest
/// when dropped: CANCELLED).
struct Call {
    metrics: Arc<GrpcMetrics>,
    labels: Arc<[KeyValue; 2]>,
    started: Instant,
    ended: bool,
}

impl Call {
    fn start(metrics: &Arc<GrpcMetrics>, path: &str) -> Call {
        let labels = metrics.method(path);
        metrics.requests.add(1, &labels[..]);
        metrics.in_flight.add(1, &labels[..]);
        Call {
            metrics: Arc::clone(metrics),
            labels,
            started: Instant::now(),
            ended: false,
        }
    }

    /// Records the end of the call with `code` (once; later calls do
    /// nothing).
    fn end(&mut self, code: Code) {
        if std::mem::replace(&mut self.ended, true) {
            return;
        }
        let m = &self.metrics;
        m.in_flight.add(-1, &self.labels[..]);
        m.duration
            .record(self.started.elapsed().as_secs_f64(), &self.labels[..]);
        if code != Code::Ok {
            let [service, method] = &*self.labels;
            m.errors.add(
                1,
                &[
                    service.clone(),
                    method.clone(),
                    KeyValue::new("code", proglog_client::diagnose::code_name(code)),
                ],
            );
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.end(Code::Cancelled);
    }
}

/// The gRPC code in `grpc-status` of `headers`, if there is one.
fn status_in(headers: &http::HeaderMap) -> Option<Code> {
    // A constant name: no parsing of the name on every call.
    const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");
    let value = headers.get(GRPC_STATUS)?.to_str().ok()?;
    Some(Code::from(value.trim().parse::<i32>().ok()?))
}

/// Wraps a gRPC server's routes in [`GrpcService`]; with no metrics (no
/// `--metrics-addr`) the wrapper only passes calls through.
#[derive(Clone, Default)]
pub struct GrpcLayer {
    metrics: Option<Arc<GrpcMetrics>>,
}

impl GrpcLayer {
    pub(super) fn new(metrics: Option<Arc<GrpcMetrics>>) -> GrpcLayer {
        GrpcLayer { metrics }
    }

    /// A layer that measures nothing (metrics off).
    pub fn disabled() -> GrpcLayer {
        GrpcLayer::default()
    }
}

impl<S> Layer<S> for GrpcLayer {
    type Service = GrpcService<S>;

    fn layer(&self, inner: S) -> GrpcService<S> {
        GrpcService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// A gRPC server measured by [`GrpcLayer`].
#[derive(Clone)]
pub struct GrpcService<S> {
    inner: S,
    metrics: Option<Arc<GrpcMetrics>>,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for GrpcService<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
{
    type Response = http::Response<MeteredBody<ResBody>>;
    type Error = S::Error;
    type Future = MeteredFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let call = self
            .metrics
            .as_ref()
            .map(|m| Call::start(m, request.uri().path()));
        MeteredFuture {
            inner: self.inner.call(request),
            call,
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of a measured call: a trailers-only response
    /// (an error answered at once) ends the call here; otherwise the call
    /// moves into the body.
    pub struct MeteredFuture<F> {
        #[pin]
        inner: F,
        call: Option<Call>,
    }
}

impl<F, ResBody, E> Future for MeteredFuture<F>
where
    F: Future<Output = Result<http::Response<ResBody>, E>>,
{
    type Output = Result<http::Response<MeteredBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = match this.inner.poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(e)) => {
                if let Some(mut call) = this.call.take() {
                    call.end(Code::Unknown);
                }
                return Poll::Ready(Err(e));
            }
            Poll::Ready(Ok(response)) => response,
        };
        let mut call = this.call.take();
        if let (Some(c), Some(code)) = (call.as_mut(), status_in(response.headers())) {
            c.end(code);
            call = None;
        }
        Poll::Ready(Ok(response.map(|inner| MeteredBody { inner, call })))
    }
}

pin_project_lite::pin_project! {
    /// A measured call's response body: the call ends with the trailers
    /// (their `grpc-status`), or when the body ends or is dropped.
    pub struct MeteredBody<B> {
        #[pin]
        inner: B,
        call: Option<Call>,
    }
}

impl<B: Body> Body for MeteredBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        let code = match &polled {
            Poll::Ready(Some(Ok(frame))) => frame
                .trailers_ref()
                .map(|t| status_in(t).unwrap_or(Code::Unknown)),
            Poll::Ready(Some(Err(_))) => Some(Code::Unknown),
            // The end without trailers: no status was ever sent.
            Poll::Ready(None) => Some(Code::Unknown),
            Poll::Pending => None,
        };
        // Take the call only once it ends: a data frame leaves it running.
        if let Some(code) = code {
            if let Some(mut call) = this.call.take() {
                call.end(code);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests;
