use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

/// `GET path` over a fresh HTTP/1.0 connection: (status, body).
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await.unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, body.to_string())
}

/// A server on a free loopback port whose readiness is `ready`, and the
/// token that stops it.
async fn server(metrics: Metrics, ready: Arc<AtomicBool>) -> (SocketAddr, CancellationToken) {
    let readiness: Readiness = Arc::new(move || match ready.load(Ordering::SeqCst) {
        true => Ok(()),
        false => Err("no leader known".into()),
    });
    let server = MetricsServer::bind("127.0.0.1:0".parse().unwrap(), metrics, readiness)
        .await
        .unwrap();
    let addr = server.local_addr().unwrap();
    let cancel = CancellationToken::new();
    tokio::spawn(server.serve(cancel.clone()));
    (addr, cancel)
}

#[tokio::test]
async fn health_is_ok_ready_follows_readiness_and_other_paths_are_404() {
    let ready = Arc::new(AtomicBool::new(false));
    let (addr, cancel) = server(Metrics::new().unwrap(), Arc::clone(&ready)).await;

    assert_eq!(get(addr, "/health").await, (200, "ok\n".to_string()));
    assert_eq!(
        get(addr, "/ready").await,
        (503, "no leader known\n".to_string())
    );
    ready.store(true, Ordering::SeqCst);
    assert_eq!(get(addr, "/ready").await, (200, "ready\n".to_string()));
    assert_eq!(get(addr, "/nope").await.0, 404);
    assert_eq!(get(addr, "/").await.0, 404);
    cancel.cancel();
}

#[tokio::test]
async fn metrics_serves_recorded_values_in_prometheus_text() {
    let metrics = Metrics::new().unwrap();
    metrics.sync_observer().synced(Duration::from_millis(3));
    let (addr, cancel) = server(metrics, Arc::new(AtomicBool::new(true))).await;

    let (status, body) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        body.contains("# TYPE proglog_wal_fsync_duration_seconds histogram"),
        "{body}"
    );
    assert!(
        body.contains("proglog_wal_fsync_duration_seconds_count 1"),
        "{body}"
    );
    assert!(
        body.contains("proglog_wal_fsync_duration_seconds_bucket{le=\"0.005\"} 1"),
        "{body}"
    );
    cancel.cancel();
}

#[tokio::test]
async fn the_server_stops_accepting_once_cancelled() {
    let (addr, cancel) = server(Metrics::new().unwrap(), Arc::new(AtomicBool::new(true))).await;
    assert_eq!(get(addr, "/health").await.0, 200);
    cancel.cancel();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still accepting after cancel"
        );
        tokio::task::yield_now().await;
    }
}
