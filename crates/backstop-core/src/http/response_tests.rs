use std::collections::VecDeque;

use http_body_util::{BodyExt, Full};
use tower::{Layer, ServiceExt, service_fn};

use super::*;
use crate::error::{OverloadReason, StreamTimeout};

type TestBody = Full<Bytes>;

fn rid() -> RequestId {
    RequestId::parse(b"req-1").unwrap()
}

async fn map(outcome: Result<Response<TestBody>, BoxError>) -> (Response<()>, serde_json::Value) {
    map_with(ErrorResponseLayer::new(), outcome).await
}

async fn map_with(
    layer: ErrorResponseLayer,
    outcome: Result<Response<TestBody>, BoxError>,
) -> (Response<()>, serde_json::Value) {
    let mut outcome = Some(outcome);
    let svc = layer.layer(service_fn(move |_req: Request<()>| {
        let out = outcome.take().unwrap();
        async move { out }
    }));
    let mut req = Request::new(());
    req.extensions_mut().insert(rid());
    let res = svc.oneshot(req).await.unwrap();
    let (parts, body) = res.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (Response::from_parts(parts, ()), json)
}

fn upstream(status: u16, body: &'static str) -> Response<TestBody> {
    Response::builder()
        .status(status)
        .header("x-request-id", "vendor-7")
        .header("retry-after", "3")
        .header("x-should-retry", "true")
        .header("x-vendor-thing", "kept?")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

fn assert_generated(res: &Response<()>, json: &serde_json::Value, status: u16, kind: &str) {
    assert_eq!(res.status().as_u16(), status);
    assert_eq!(json["error"]["type"], kind, "{json}");
    assert_eq!(json["error"]["request_id"], "req-1");
    assert!(json["error"]["message"].is_string());
    assert_eq!(res.headers()["x-request-id"], "req-1");
    assert_eq!(res.headers()["content-type"], "application/json");
}

#[tokio::test]
async fn healthy_passes_through_byte_for_byte() {
    let (res, _) = map(Ok(upstream(200, "{\"ok\":true}"))).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-upstream-request-id"], "vendor-7");
    assert_eq!(res.headers()["x-request-id"], "req-1");
    assert_eq!(res.headers()["x-vendor-thing"], "kept?");
    // A 2xx keeps the vendor's own x-should-retry untouched.
    assert_eq!(res.headers()["x-should-retry"], "true");
}

#[tokio::test]
async fn vendor_4xx_and_throttles_pass_through_with_should_retry_false() {
    for status in [400, 401, 404, 409, 422, 429] {
        let (res, json) = map(Ok(upstream(status, "{\"error\":{\"type\":\"vendor\"}}"))).await;
        assert_eq!(res.status().as_u16(), status);
        assert_eq!(json["error"]["type"], "vendor", "vendor body kept");
        assert_eq!(
            res.headers()["x-should-retry"],
            "false",
            "replaces vendor's true"
        );
        assert_eq!(res.headers()["retry-after"], "3", "vendor Retry-After kept");
        assert_eq!(res.headers()["x-upstream-request-id"], "vendor-7");
    }
}

#[tokio::test]
async fn vendor_5xx_529_408_become_502() {
    for status in [500, 502, 503, 529, 408] {
        let (res, json) = map(Ok(upstream(status, "secret vendor detail"))).await;
        assert_generated(&res, &json, 502, "upstream_failure");
        assert_eq!(res.headers()["x-should-retry"], "false");
        assert_eq!(res.headers()["retry-after"], "3");
        assert_eq!(res.headers()["x-upstream-request-id"], "vendor-7");
        assert!(
            !res.headers().contains_key("x-vendor-thing"),
            "only listed headers kept"
        );
    }
}

#[tokio::test]
async fn errors_follow_the_table() {
    let (res, json) = map(Err(SlaExpired::new().into())).await;
    assert_generated(&res, &json, 504, "timeout");
    assert_eq!(res.headers()["x-should-retry"], "false");

    let (res, json) = map(Err(AttemptTimedOut::new(Duration::from_secs(30)).into())).await;
    assert_generated(&res, &json, 502, "upstream_failure");
    assert_eq!(json["error"]["message"], "attempt timed out after 30s");

    let (res, json) = map(Err("tcp connect error 10.0.0.1:443".into())).await;
    assert_generated(&res, &json, 502, "upstream_failure");
    assert_eq!(
        json["error"]["message"], "upstream request failed",
        "no detail leaks"
    );

    let (res, json) = map(Err(CostOverBurst::new(5000, 4096).into())).await;
    assert_generated(&res, &json, 400, "invalid_request");
    assert_eq!(
        json["error"]["message"],
        "request needs 5000 units, limit 4096"
    );
}

#[tokio::test]
async fn overload_has_retry_after_and_no_should_retry() {
    let err = Overloaded::new(OverloadReason::QueueFull, Duration::from_millis(1500));
    let (res, json) = map(Err(err.clone().into())).await;
    assert_generated(&res, &json, 429, "overloaded");
    assert_eq!(res.headers()["retry-after"], "2");
    assert_eq!(res.headers()["retry-after-ms"], "1500");
    assert!(!res.headers().contains_key("x-should-retry"));

    let layer = ErrorResponseLayer::new()
        .overload_status(StatusCode::SERVICE_UNAVAILABLE)
        .unwrap();
    let (res, _) = map_with(layer, Err(err.into())).await;
    assert_eq!(res.status(), 503);

    let bad = ErrorResponseLayer::new().overload_status(StatusCode::IM_A_TEAPOT);
    assert_eq!(bad.unwrap_err().setting(), "overload_status");
}

#[test]
fn retry_after_rounds_up() {
    let cases = [
        (Duration::ZERO, "1", "0"),
        (Duration::from_nanos(1), "1", "1"),
        (Duration::from_millis(999), "1", "999"),
        (Duration::from_secs(1), "1", "1000"),
        (Duration::from_nanos(1_000_000_001), "2", "1001"),
        (Duration::from_secs(61), "61", "61000"),
    ];
    for (after, secs, ms) in cases {
        let mut h = HeaderMap::new();
        retry_after_headers(&mut h, after);
        assert_eq!(h[RETRY_AFTER], secs, "{after:?}");
        assert_eq!(h[RETRY_AFTER_MS], ms, "{after:?}");
    }
}

#[test]
fn messages_are_json_escaped() {
    let body = error_body(ErrorKind::InvalidRequest, "bad \"quote\"\n", None);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["message"], "bad \"quote\"\n");
    assert!(v["error"]["request_id"].is_null());
    let body = error_body(ErrorKind::Timeout, "late", Some(&rid()));
    assert_eq!(
        &body[..],
        br#"{"error":{"type":"timeout","message":"late","request_id":"req-1"}}"#,
        "keys in the documented order"
    );
}

type Chunks = VecDeque<Result<Frame<Bytes>, BoxError>>;

/// A body that yields a scripted queue of frames and errors.
struct QueueBody(Chunks);

impl Body for QueueBody {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Poll::Ready(self.0.pop_front())
    }
}

async fn collect_stream(content_type: &str, chunks: Chunks) -> (Vec<Bytes>, Option<BoxError>) {
    let ct = content_type.to_owned();
    let mut chunks = Some(chunks);
    let svc = ErrorResponseLayer::new().layer(service_fn(move |_req: Request<()>| {
        let body = QueueBody(chunks.take().unwrap());
        let res = Response::builder()
            .header("content-type", ct.clone())
            .body(body)
            .unwrap();
        async move { Ok::<_, BoxError>(res) }
    }));
    let mut req = Request::new(());
    req.extensions_mut().insert(rid());
    let mut body = svc.oneshot(req).await.unwrap().into_body();
    let mut frames = Vec::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => frames.push(f.into_data().unwrap()),
            Err(e) => return (frames, Some(e)),
        }
    }
    assert!(body.is_end_stream());
    (frames, None)
}

#[tokio::test]
async fn sse_error_after_bytes_becomes_one_error_event() {
    let chunks: Chunks = [
        Ok(Frame::data(Bytes::from_static(b"data: {\"x\":1}\n\n"))),
        Err(StreamTimedOut::new(StreamTimeout::Idle, Duration::from_secs(30)).into()),
        Ok(Frame::data(Bytes::from_static(b"data: [DONE]\n\n"))),
    ]
    .into();
    let (frames, err) = collect_stream("text/event-stream; charset=utf-8", chunks).await;
    assert!(err.is_none());
    assert_eq!(frames.len(), 2, "nothing after the error event, no [DONE]");
    assert_eq!(&frames[0][..], b"data: {\"x\":1}\n\n");
    let event = std::str::from_utf8(&frames[1]).unwrap();
    assert!(event.starts_with("event: error\ndata: {"), "{event}");
    assert!(event.ends_with("}\n\n"), "{event}");
    let json: serde_json::Value =
        serde_json::from_str(&event["event: error\ndata: ".len()..event.len() - 2]).unwrap();
    assert_eq!(json["error"]["type"], "timeout");
    assert_eq!(json["error"]["request_id"], "req-1");

    let chunks: Chunks = [
        Ok(Frame::data(Bytes::from_static(b"data: 1\n\n"))),
        Err("connection reset".into()),
    ]
    .into();
    let (frames, _) = collect_stream("text/event-stream", chunks).await;
    assert!(
        std::str::from_utf8(&frames[1])
            .unwrap()
            .contains("\"upstream_failure\"")
    );
}

#[tokio::test]
async fn other_bodies_pass_the_error_on() {
    let chunks: Chunks = [
        Ok(Frame::data(Bytes::from_static(b"{\"partial\""))),
        Err("connection reset".into()),
    ]
    .into();
    let (frames, err) = collect_stream("application/json", chunks).await;
    assert_eq!(frames.len(), 1);
    assert!(err.is_some(), "the server aborts the connection");
}

#[tokio::test]
async fn poll_ready_errors_fail_the_request_not_the_service() {
    struct Broken;
    impl Service<Request<()>> for Broken {
        type Response = Response<TestBody>;
        type Error = BoxError;
        type Future = std::future::Ready<Result<Response<TestBody>, BoxError>>;
        fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), BoxError>> {
            Poll::Ready(Err("broken".into()))
        }
        fn call(&mut self, _: Request<()>) -> Self::Future {
            unreachable!("never ready")
        }
    }
    let res = ErrorResponseLayer::new()
        .layer(Broken)
        .oneshot(Request::new(()))
        .await
        .unwrap();
    assert_eq!(res.status(), 502);
}

#[test]
fn stack_is_send_and_infallible() {
    fn assert_send<T: Send>() {}
    fn assert_infallible<S: Service<Request<()>, Error = Infallible>>() {}
    type Svc =
        ErrorResponse<tower::util::BoxCloneSyncService<Request<()>, Response<TestBody>, BoxError>>;
    assert_send::<Svc>();
    assert_send::<ResponseFuture<std::future::Ready<Result<Response<TestBody>, BoxError>>>>();
    assert_send::<ResponseBody<TestBody>>();
    assert_infallible::<Svc>();
}
