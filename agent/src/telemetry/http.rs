//! The metrics port (`--metrics-addr`): a small HTTP/1 server (hyper)
//! with three paths.
//!
//! - `/metrics`: every metric in the Prometheus text format, rendered on a
//!   blocking thread (the gauges stat files).
//! - `/health`: 200 while the process runs and the server accepts.
//! - `/ready`: 200 once the agent serves and knows a leader; 503 with a
//!   one-line reason otherwise (see [`Readiness`]).
//!
//! Anything else is 404. The server stops accepting, and drops its open
//! connections, when the agent's shutdown token is cancelled.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use ::http::{header, Method, Request, Response, StatusCode};
use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::metrics::Metrics;

/// Whether the agent is ready: `Ok` when it serves and knows a leader,
/// else why not (one line, the body of the 503).
pub type Readiness = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// The metrics port's server, bound and not yet serving.
pub struct MetricsServer {
    listener: TcpListener,
    metrics: Metrics,
    ready: Readiness,
}

impl MetricsServer {
    /// Binds `addr` (port 0 picks one; see [`MetricsServer::local_addr`]).
    pub async fn bind(
        addr: SocketAddr,
        metrics: Metrics,
        ready: Readiness,
    ) -> std::io::Result<MetricsServer> {
        Ok(MetricsServer {
            listener: TcpListener::bind(addr).await?,
            metrics,
            ready,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `cancel`: accepts connections and answers each on
    /// its own task; on cancel, stops accepting and drops the connections.
    pub async fn serve(self, cancel: CancellationToken) {
        let mut connections = JoinSet::new();
        loop {
            let accepted = tokio::select! {
                _ = cancel.cancelled() => break,
                accepted = self.listener.accept() => accepted,
                Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of fds and the like: the next accept may work.
                    warn!(error = %e, "metrics port: accept failed");
                    continue;
                }
            };
            let (metrics, ready) = (self.metrics.clone(), Arc::clone(&self.ready));
            connections.spawn(async move {
                let service = service_fn(move |request| {
                    let (metrics, ready) = (metrics.clone(), Arc::clone(&ready));
                    async move { Ok::<_, Infallible>(answer(&request, metrics, &ready).await) }
                });
                let served = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                if let Err(e) = served {
                    debug!(error = %e, "metrics port: connection ended with an error");
                }
            });
        }
        connections.shutdown().await;
    }
}

/// The answer to one request.
async fn answer<B>(
    request: &Request<B>,
    metrics: Metrics,
    ready: &Readiness,
) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET or HEAD only\n".into());
    }
    match request.uri().path() {
        "/metrics" => {
            let rendered = tokio::task::spawn_blocking(move || metrics.render()).await;
            match rendered {
                Ok(Ok(body)) => Response::builder()
                    .header(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)
                    .body(Full::new(Bytes::from(body)))
                    .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, String::new())),
                Ok(Err(e)) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
            }
        }
        "/health" => text(StatusCode::OK, "ok\n".into()),
        "/ready" => match ready() {
            Ok(()) => text(StatusCode::OK, "ready\n".into()),
            Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
        },
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests;
