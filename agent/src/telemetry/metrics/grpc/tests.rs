use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tower::ServiceExt;

use super::super::Metrics;

type Frames = mpsc::Sender<Result<http_body::Frame<Bytes>, Infallible>>;
type TestBody = StreamBody<ReceiverStream<Result<http_body::Frame<Bytes>, Infallible>>>;

/// Calls `path` through the layer around a handler that answers with
/// `headers` and a body fed by the returned sender.
async fn call(
    metrics: &Metrics,
    path: &str,
    headers: &[(&'static str, &'static str)],
) -> (http::Response<super::MeteredBody<TestBody>>, Frames) {
    let (frames, rx) = mpsc::channel(4);
    let mut rx = Some(rx);
    let headers = headers.to_vec();
    let handler = tower::service_fn(move |_req: http::Request<()>| {
        let body = StreamBody::new(ReceiverStream::new(rx.take().expect("one call")));
        let mut response = http::Response::new(body);
        for (k, v) in &headers {
            response
                .headers_mut()
                .insert(*k, http::HeaderValue::from_static(v));
        }
        std::future::ready(Ok::<_, Infallible>(response))
    });
    let service = tower::Layer::layer(&metrics.grpc_layer(), handler);
    let request = http::Request::builder().uri(path).body(()).unwrap();
    (service.oneshot(request).await.unwrap(), frames)
}

fn trailers(code: &'static str) -> http_body::Frame<Bytes> {
    let mut map = http::HeaderMap::new();
    map.insert("grpc-status", http::HeaderValue::from_static(code));
    http_body::Frame::trailers(map)
}

fn scrape(metrics: &Metrics) -> String {
    String::from_utf8(metrics.render().unwrap()).unwrap()
}

fn has(text: &str, line: &str) -> bool {
    text.lines().any(|l| l == line)
}

#[tokio::test]
async fn a_trailers_only_error_is_counted_under_its_code_at_once() {
    let metrics = Metrics::new().unwrap();
    let (response, _frames) = call(&metrics, "/log.v1.Log/Produce", &[("grpc-status", "7")]).await;
    let text = scrape(&metrics);
    let labels = r#"method="Produce",service="log.v1.Log""#;
    assert!(
        has(&text, &format!("proglog_grpc_requests_total{{{labels}}} 1")),
        "{text}"
    );
    assert!(
        has(
            &text,
            &format!(r#"proglog_grpc_errors_total{{code="PERMISSION_DENIED",{labels}}} 1"#)
        ),
        "{text}"
    );
    assert!(
        has(
            &text,
            &format!("proglog_grpc_requests_in_flight{{{labels}}} 0")
        ),
        "{text}"
    );
    drop(response);
    // Ended once: dropping the body afterwards counts nothing more.
    assert!(!scrape(&metrics).contains("CANCELLED"));
}

#[tokio::test]
async fn a_stream_is_in_flight_until_its_trailers_which_carry_the_code() {
    let metrics = Metrics::new().unwrap();
    let (response, frames) = call(&metrics, "/log.v1.Log/ConsumeStream", &[]).await;
    let labels = r#"method="ConsumeStream",service="log.v1.Log""#;
    let in_flight = |n| format!("proglog_grpc_requests_in_flight{{{labels}}} {n}");
    assert!(has(&scrape(&metrics), &in_flight(1)));
    frames
        .send(Ok(http_body::Frame::data(Bytes::from_static(b"x"))))
        .await
        .unwrap();
    frames.send(Ok(trailers("14"))).await.unwrap();
    drop(frames);
    let collected = response.into_body().collect().await.unwrap();
    assert!(collected.trailers().is_some());
    let text = scrape(&metrics);
    assert!(has(&text, &in_flight(0)), "{text}");
    assert!(
        has(
            &text,
            &format!(r#"proglog_grpc_errors_total{{code="UNAVAILABLE",{labels}}} 1"#)
        ),
        "{text}"
    );
    assert!(
        has(
            &text,
            &format!("proglog_grpc_request_duration_seconds_count{{{labels}}} 1")
        ),
        "{text}"
    );
}

#[tokio::test]
async fn an_ok_call_is_timed_but_not_an_error_and_a_dropped_one_is_cancelled() {
    let metrics = Metrics::new().unwrap();
    let (response, frames) = call(&metrics, "/log.v1.Log/Consume", &[]).await;
    frames.send(Ok(trailers("0"))).await.unwrap();
    drop(frames);
    response.into_body().collect().await.unwrap();
    let (abandoned, _frames) = call(&metrics, "/log.v1.Log/Consume", &[]).await;
    drop(abandoned);
    let text = scrape(&metrics);
    let labels = r#"method="Consume",service="log.v1.Log""#;
    assert!(
        has(&text, &format!("proglog_grpc_requests_total{{{labels}}} 2")),
        "{text}"
    );
    assert!(
        has(
            &text,
            &format!("proglog_grpc_request_duration_seconds_count{{{labels}}} 2")
        ),
        "{text}"
    );
    assert!(
        has(
            &text,
            &format!(r#"proglog_grpc_errors_total{{code="CANCELLED",{labels}}} 1"#)
        ),
        "{text}"
    );
    assert!(!text.contains(r#"code="OK""#), "{text}");
}

#[test]
fn distinct_paths_past_the_cap_share_the_unknown_labels() {
    let metrics = Metrics::new().unwrap();
    let grpc = &metrics.inner.grpc;
    for i in 0..super::MAX_METHODS {
        grpc.method(&format!("/s/m{i}"));
    }
    let extra = grpc.method("/s/one-too-many");
    assert_eq!(extra[0].value.as_str(), "unknown");
    assert_eq!(grpc.method("/s/m0")[1].value.as_str(), "m0");
}
