//! Tests of the HTTP retry (paused time).
#![allow(clippy::unnecessary_wraps, clippy::too_many_lines)]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use backstop_core::{BoxError, Context, OverloadReason, Overloaded};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::time::{Duration, Instant};
use tower::{Layer, Service, ServiceExt, service_fn};

use crate::body::{ReplayBody, ResponseBody};
use crate::http::{decide_response, is_billing_stop, parse_imf_fixdate, retry_after};
use crate::{Action, HttpRetry, HttpRetryLayer, RetryLayer};

type Up = Result<Response<Full<Bytes>>, BoxError>;

fn resp(status: u16, headers: &[(&str, &str)], body: &'static str) -> Up {
    let mut b = Response::builder().status(status);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    Ok(b.body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap())
}

#[derive(Clone, Default)]
struct Upstream {
    script: Arc<Mutex<VecDeque<Up>>>,
    seen: Arc<Mutex<Vec<(Instant, Bytes)>>>,
}

impl Upstream {
    fn new(script: Vec<Up>) -> Self {
        Self {
            script: Arc::new(Mutex::new(script.into())),
            seen: Arc::default(),
        }
    }

    fn attempts(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    fn gaps(&self) -> Vec<Duration> {
        let seen = self.seen.lock().unwrap();
        seen.windows(2)
            .map(|w| w[1].0.saturating_duration_since(w[0].0))
            .collect()
    }

    fn bodies(&self) -> Vec<Bytes> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|s| s.1.clone())
            .collect()
    }

    fn service<B>(
        &self,
    ) -> impl Service<Request<ReplayBody<B>>, Response = Response<Full<Bytes>>, Error = BoxError>
    + Clone
    + Send
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let this = self.clone();
        service_fn(move |req: Request<ReplayBody<B>>| {
            let this = this.clone();
            async move {
                let body = req
                    .into_body()
                    .collect()
                    .await
                    .map_err(Into::into)?
                    .to_bytes();
                this.seen.lock().unwrap().push((Instant::now(), body));
                let next = this.script.lock().unwrap().pop_front();
                next.unwrap_or_else(|| resp(503, &[], "down"))
            }
        })
    }
}

fn http_layer() -> HttpRetryLayer {
    RetryLayer::builder().for_http().seed(5).build().unwrap()
}

fn get() -> Request<Full<Bytes>> {
    Request::post("/v1/chat")
        .header("x-test", "1")
        .body(Full::new(Bytes::from_static(b"{\"prompt\":1}")))
        .unwrap()
}

async fn text<B>(r: Response<ResponseBody<B>>) -> (StatusCode, String)
where
    B: http_body::Body + Unpin,
    B::Error: std::fmt::Debug,
{
    let status = r.status();
    let body = r.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

fn boxed(b: Full<Bytes>) -> http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError> {
    b.map_err(|e| match e {}).boxed_unsync()
}

fn boxed_req(
    r: Request<Full<Bytes>>,
) -> Request<http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>> {
    r.map(boxed)
}

#[tokio::test(start_paused = true)]
async fn retries_a_5xx_then_succeeds_replaying_the_body() {
    let up = Upstream::new(vec![resp(500, &[], "oops"), resp(200, &[], "ok")]);
    let layer = http_layer();
    let svc = layer.layer(up.service());
    let out = svc.oneshot(boxed_req(get())).await.unwrap();
    assert_eq!(text(out).await, (StatusCode::OK, "ok".into()));
    assert_eq!(up.attempts(), 2);
    assert_eq!(up.bodies(), vec![Bytes::from_static(b"{\"prompt\":1}"); 2]);
    assert_eq!(layer.stats().retries(), 1);
}

#[tokio::test(start_paused = true)]
async fn never_retries_other_4xx() {
    for status in [400, 401, 403, 404, 413, 422] {
        let up = Upstream::new(vec![resp(status, &[], "bad")]);
        let out = http_layer()
            .layer(up.service())
            .oneshot(boxed_req(get()))
            .await
            .unwrap();
        assert_eq!(
            text(out).await,
            (StatusCode::from_u16(status).unwrap(), "bad".into())
        );
        assert_eq!(up.attempts(), 1, "{status}");
    }
    // x-should-retry: true does not make a 400 retryable.
    let up = Upstream::new(vec![resp(400, &[("x-should-retry", "true")], "bad")]);
    http_layer()
        .layer(up.service())
        .oneshot(boxed_req(get()))
        .await
        .unwrap();
    assert_eq!(up.attempts(), 1);
}

#[tokio::test(start_paused = true)]
async fn retries_408_409_429_529_and_stops_on_should_retry_false() {
    for status in [408, 409, 429, 529, 502, 503] {
        let up = Upstream::new(vec![resp(status, &[], "x"), resp(200, &[], "ok")]);
        let out = http_layer()
            .layer(up.service())
            .oneshot(boxed_req(get()))
            .await
            .unwrap();
        assert_eq!(out.status(), 200, "{status}");
        assert_eq!(up.attempts(), 2);
    }
    let up = Upstream::new(vec![resp(503, &[("x-should-retry", "false")], "no")]);
    let out = http_layer()
        .layer(up.service())
        .oneshot(boxed_req(get()))
        .await
        .unwrap();
    assert_eq!(
        text(out).await,
        (StatusCode::SERVICE_UNAVAILABLE, "no".into())
    );
    assert_eq!(up.attempts(), 1);
}

#[tokio::test(start_paused = true)]
async fn retry_after_2_sleeps_exactly_2s() {
    let up = Upstream::new(vec![
        resp(429, &[("retry-after", "2")], "slow"),
        resp(200, &[], "ok"),
    ]);
    let out = http_layer()
        .layer(up.service())
        .oneshot(boxed_req(get()))
        .await
        .unwrap();
    assert_eq!(out.status(), 200);
    assert_eq!(up.gaps(), vec![Duration::from_secs(2)]);
}

#[tokio::test(start_paused = true)]
async fn retry_after_ms_wins_over_retry_after() {
    let up = Upstream::new(vec![
        resp(
            529,
            &[("retry-after", "5"), ("retry-after-ms", "1500")],
            "busy",
        ),
        resp(200, &[], "ok"),
    ]);
    http_layer()
        .layer(up.service())
        .oneshot(boxed_req(get()))
        .await
        .unwrap();
    assert_eq!(up.gaps(), vec![Duration::from_millis(1500)]);
}

#[tokio::test(start_paused = true)]
async fn retry_after_past_the_deadline_gives_up_at_once_with_the_429() {
    let t0 = Instant::now();
    let up = Upstream::new(vec![resp(429, &[("retry-after", "5")], "{\"error\":{}}")]);
    let layer = http_layer();
    let svc = layer.layer(up.service());
    let out = Context::new()
        .with_sla_deadline(t0 + Duration::from_secs(5))
        .scope(svc.oneshot(boxed_req(get())))
        .await
        .unwrap();
    assert_eq!(Instant::now(), t0, "no sleep");
    assert_eq!(
        out.headers()["retry-after"],
        "5",
        "the vendor's header is kept"
    );
    assert_eq!(
        text(out).await,
        (StatusCode::TOO_MANY_REQUESTS, "{\"error\":{}}".into())
    );
    assert_eq!(up.attempts(), 1);

    // Fits: 5 s + 250 ms before a 6 s deadline.
    let up = Upstream::new(vec![
        resp(429, &[("retry-after", "5")], ""),
        resp(200, &[], ""),
    ]);
    let out = Context::new()
        .with_sla_deadline(Instant::now() + Duration::from_secs(6))
        .scope(http_layer().layer(up.service()).oneshot(boxed_req(get())))
        .await
        .unwrap();
    assert_eq!(out.status(), 200);
    assert_eq!(up.gaps(), vec![Duration::from_secs(5)]);

    // Over retry_after_max: stop at once, whatever the deadline.
    let up = Upstream::new(vec![resp(503, &[("retry-after", "60")], "")]);
    let t1 = Instant::now();
    let out = http_layer()
        .layer(up.service())
        .oneshot(boxed_req(get()))
        .await
        .unwrap();
    assert_eq!((out.status().as_u16(), up.attempts()), (503, 1));
    assert_eq!(Instant::now(), t1);
}

#[tokio::test(start_paused = true)]
async fn billing_stop_429_is_not_retried_and_passed_byte_for_byte() {
    let bodies = [
        r#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","code":"insufficient_quota"}}"#,
        r#"{"error":{"code":"insufficient_quota"}}"#,
        r#"{"type":"error","error":{"type":"billing_error","message":"x"}}"#,
        r#"{"type":"error","error":{"type":"rate_limit_error","message":"You have reached your Spend Limit"}}"#,
    ];
    for body in bodies {
        let up = Upstream::new(vec![resp(429, &[], body)]);
        let out = http_layer()
            .layer(up.service())
            .oneshot(boxed_req(get()))
            .await
            .unwrap();
        assert_eq!(
            text(out).await,
            (StatusCode::TOO_MANY_REQUESTS, body.to_string())
        );
        assert_eq!(up.attempts(), 1, "{body}");
    }
    // An ordinary rate-limit 429 is retried.
    let up = Upstream::new(vec![
        resp(429, &[], r#"{"error":{"type":"rate_limit_error"}}"#),
        resp(200, &[], ""),
    ]);
    http_layer()
        .layer(up.service())
        .oneshot(boxed_req(get()))
        .await
        .unwrap();
    assert_eq!(up.attempts(), 2);
}

/// A body of scripted frames.
struct Frames(VecDeque<Bytes>);

impl http_body::Body for Frames {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        std::task::Poll::Ready(self.0.pop_front().map(|b| Ok(http_body::Frame::data(b))))
    }
}

#[tokio::test(start_paused = true)]
async fn a_large_429_body_streams_through_unchanged() {
    let big = Bytes::from(vec![b'x'; 100 * 1024]);
    // Three frames: 40 KiB, 40 KiB, 20 KiB; the inspection stops after 80.
    let frames = Frames(
        [
            big.slice(..40 * 1024),
            big.slice(40 * 1024..80 * 1024),
            big.slice(80 * 1024..),
        ]
        .into(),
    );
    let slot = Arc::new(Mutex::new(Some(frames)));
    let layer = RetryLayer::builder()
        .for_http()
        .max_attempts(1)
        .build()
        .unwrap();
    let svc = layer.layer(service_fn(move |_req: Request<ReplayBody<Full<Bytes>>>| {
        let body = slot.lock().unwrap().take();
        async move {
            let body = body.ok_or("called twice")?;
            Ok::<_, BoxError>(Response::builder().status(429).body(body).unwrap())
        }
    }));
    let out = svc.oneshot(get()).await.unwrap();
    assert_eq!(out.status(), 429);
    assert_eq!(http_body::Body::size_hint(out.body()).lower(), 80 * 1024);
    let got = out.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(got, big);
}

#[tokio::test(start_paused = true)]
async fn a_body_over_max_replay_bytes_is_sent_once() {
    let up = Upstream::new(vec![resp(503, &[], "down"), resp(200, &[], "ok")]);
    let layer = RetryLayer::builder()
        .for_http()
        .max_replay_bytes(4)
        .build()
        .unwrap();
    // Streamed in two frames so the size is not known up front.
    let body = Frames([Bytes::from_static(b"0123"), Bytes::from_static(b"456789")].into());
    let req = Request::post("/").body(body).unwrap();
    let out = layer.layer(up.service()).oneshot(req).await.unwrap();
    assert_eq!(out.status(), 503);
    assert_eq!(up.bodies(), vec![Bytes::from_static(b"0123456789")]);

    // A body whose size hint is over the limit is not even buffered.
    let up = Upstream::new(vec![resp(503, &[], "down")]);
    let big = Full::new(Bytes::from_static(b"0123456789"));
    let out = layer
        .layer(up.service())
        .oneshot(Request::new(boxed(big)))
        .await
        .unwrap();
    assert_eq!((out.status().as_u16(), up.attempts()), (503, 1));
    assert_eq!(up.bodies(), vec![Bytes::from_static(b"0123456789")]);

    // Within the limit (and empty bodies): replayed.
    let up = Upstream::new(vec![resp(503, &[], ""), resp(200, &[], "")]);
    let req = Request::new(Frames(
        [Bytes::from_static(b"ab"), Bytes::from_static(b"cd")].into(),
    ));
    layer.layer(up.service()).oneshot(req).await.unwrap();
    assert_eq!(up.bodies(), vec![Bytes::from_static(b"abcd"); 2]);
}

#[tokio::test(start_paused = true)]
async fn a_refused_retry_returns_the_previous_response_head() {
    let up = Upstream::new(vec![resp(
        502,
        &[("x-upstream-request-id", "v1")],
        "bad gateway",
    )]);
    let calls = Arc::new(Mutex::new(0));
    let inner = up.service::<Full<Bytes>>();
    let svc = http_layer().layer(service_fn(move |req: Request<ReplayBody<Full<Bytes>>>| {
        let n = {
            let mut c = calls.lock().unwrap();
            *c += 1;
            *c
        };
        let mut inner = inner.clone();
        async move {
            if n == 1 {
                inner.ready().await?.call(req).await
            } else {
                Err(Overloaded::new(OverloadReason::QueueFull, Duration::from_secs(1)).into())
            }
        }
    }));
    let out = svc.oneshot(get()).await.unwrap();
    assert_eq!(out.status(), 502);
    assert_eq!(out.headers()["x-upstream-request-id"], "v1");
    // The 5xx body was dropped before the backoff (no connection held).
    assert_eq!(text(out).await.1, "");

    // A retried 429 keeps its buffered body.
    let up = Upstream::new(vec![resp(429, &[], "{\"error\":{}}")]);
    let calls = Arc::new(Mutex::new(0));
    let inner = up.service::<Full<Bytes>>();
    let svc = http_layer().layer(service_fn(move |req: Request<ReplayBody<Full<Bytes>>>| {
        let n = {
            let mut c = calls.lock().unwrap();
            *c += 1;
            *c
        };
        let mut inner = inner.clone();
        async move {
            if n == 1 {
                inner.ready().await?.call(req).await
            } else {
                Err(Overloaded::new(OverloadReason::RateLimited, Duration::from_secs(1)).into())
            }
        }
    }));
    let out = svc.oneshot(get()).await.unwrap();
    assert_eq!(
        text(out).await,
        (StatusCode::TOO_MANY_REQUESTS, "{\"error\":{}}".into())
    );
}

#[tokio::test(start_paused = true)]
async fn dropping_while_the_request_body_is_buffered_holds_nothing() {
    struct Stalled;
    impl http_body::Body for Stalled {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
            std::task::Poll::Pending
        }
    }
    let up = Upstream::new(vec![]);
    let layer = http_layer();
    let mut svc = layer.layer(up.service());
    let mut fut = tokio_test::task::spawn(svc.call(Request::new(Stalled)));
    tokio_test::assert_pending!(fut.poll());
    drop(fut);
    assert_eq!(up.attempts(), 0);
    assert_eq!(layer.stats().retries(), 0);
}

#[test]
fn decisions() {
    let h = |pairs: &[(&'static str, &'static str)]| {
        let mut m = http::HeaderMap::new();
        for (k, v) in pairs {
            m.insert(*k, http::HeaderValue::from_static(v));
        }
        m
    };
    let none = h(&[]);
    assert_eq!(decide_response(200, &none, b"", 0), Action::Return);
    assert_eq!(decide_response(404, &none, b"", 0), Action::Return);
    assert_eq!(decide_response(500, &none, b"", 0), Action::Retry);
    assert_eq!(decide_response(599, &none, b"", 0), Action::Retry);
    assert_eq!(decide_response(529, &none, b"", 0), Action::Retry);
    // Retry-After counts only on 429/503/529.
    let ra = h(&[("retry-after", "3")]);
    assert_eq!(decide_response(500, &ra, b"", 0), Action::Retry);
    assert_eq!(
        decide_response(503, &ra, b"", 0),
        Action::RetryAfter(Duration::from_secs(3))
    );
    assert_eq!(
        decide_response(429, &h(&[("retry-after-ms", "12.5")]), b"", 0),
        Action::RetryAfter(Duration::from_micros(12_500))
    );
    // Unparsable values fall back to the backoff.
    assert_eq!(
        decide_response(429, &h(&[("retry-after", "soon")]), b"", 0),
        Action::Retry
    );
    assert_eq!(
        decide_response(429, &h(&[("retry-after-ms", "-1")]), b"", 0),
        Action::Retry
    );
    assert_eq!(
        decide_response(500, &h(&[("x-should-retry", "FALSE")]), b"", 0),
        Action::Return
    );
    assert_eq!(
        decide_response(500, &h(&[("x-should-retry", "true")]), b"", 0),
        Action::Retry
    );
    // HTTP-date.
    let at = parse_imf_fixdate("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
    assert_eq!(at, 784_111_777);
    assert_eq!(parse_imf_fixdate("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
    assert_eq!(
        parse_imf_fixdate("Tue, 29 Feb 2028 12:00:00 GMT"),
        Some(1_835_438_400)
    );
    assert_eq!(parse_imf_fixdate("Sunday, 06-Nov-94 08:49:37 GMT"), None);
    assert_eq!(parse_imf_fixdate("Sun, 06 Foo 1994 08:49:37 GMT"), None);
    let date = h(&[("retry-after", "Sun, 06 Nov 1994 08:49:37 GMT")]);
    assert_eq!(retry_after(&date, at - 7), Some(Duration::from_secs(7)));
    assert_eq!(retry_after(&date, at + 7), Some(Duration::ZERO));
    // Billing stops.
    assert!(is_billing_stop(
        br#"{"error":{"code":"insufficient_quota"}}"#
    ));
    assert!(!is_billing_stop(
        br#"{"error":{"code":"rate_limit_exceeded"}}"#
    ));
    assert!(!is_billing_stop(b"insufficient_quota"));
    assert!(!is_billing_stop(br#"{"code":"insufficient_quota"}"#));
}

#[test]
fn bad_input_and_defaults() {
    let err = RetryLayer::builder()
        .for_http()
        .max_attempts(0)
        .build()
        .unwrap_err();
    assert_eq!(err.setting(), "max_attempts");
    let err = RetryLayer::builder()
        .for_http()
        .ratio(2000.0)
        .build()
        .unwrap_err();
    assert_eq!(err.setting(), "ratio");
    RetryLayer::builder()
        .for_http()
        .max_replay_bytes(0)
        .build()
        .unwrap();
}

type Inner = tower::util::BoxCloneSyncService<
    Request<ReplayBody<Full<Bytes>>>,
    Response<Full<Bytes>>,
    BoxError,
>;
static_assertions::assert_impl_all!(HttpRetryLayer: Send, Sync, Clone);
static_assertions::assert_impl_all!(HttpRetry<Inner>: Send, Sync, Clone);
static_assertions::assert_impl_all!(
    crate::future::HttpResponseFuture<Inner, Full<Bytes>, Full<Bytes>>: Send
);
static_assertions::assert_impl_all!(ResponseBody<Full<Bytes>>: Send, Sync, Unpin);
static_assertions::assert_impl_all!(ReplayBody<Full<Bytes>>: Send, Sync, Unpin);
