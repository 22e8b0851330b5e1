//! The HTTP variant: the outcome is decided when the response body ends.
#![cfg(feature = "http")]

mod support;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::fmt;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use backstop_core::{ErrorKind, SlaExpired, StreamTimedOut, StreamTimeout};
use backstop_shield::body::ResponseBody;
use backstop_shield::future::HttpResponseFuture;
use backstop_shield::{BoxError, HttpShieldedOnCancel, Outcome, ShieldedOnCancelLayer};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Empty, Full};
use static_assertions::assert_impl_all;
use support::Recorder;
use tokio::time::Duration;
use tokio_test::{assert_pending, assert_ready_err, assert_ready_ok, task};
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_test::mock;

/// A body that yields the given frames in order and reports its end as soon
/// as none are left.
#[derive(Debug, Default)]
struct Frames(VecDeque<Result<Frame<Bytes>, BoxError>>);

impl Frames {
    fn data(chunks: &[&'static str]) -> Self {
        Self(
            chunks
                .iter()
                .map(|c| Ok(Frame::data(Bytes::from_static(c.as_bytes()))))
                .collect(),
        )
    }

    fn then_error(mut self, err: impl Into<BoxError>) -> Self {
        self.0.push_back(Err(err.into()));
        self
    }
}

impl Body for Frames {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Poll::Ready(self.0.pop_front())
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }
}

type HttpMock = mock::Mock<Request<()>, Response<Frames>>;

assert_impl_all!(HttpShieldedOnCancel<HttpMock, Recorder>: Send, Sync, Clone, fmt::Debug);
assert_impl_all!(
    HttpResponseFuture<mock::future::ResponseFuture<Response<Frames>>, Recorder>: Send,
    Sync,
    fmt::Debug
);
assert_impl_all!(ResponseBody<Frames, Recorder>: Send, Sync, fmt::Debug);

/// A shielded HTTP service answering `status` with `body`.
fn answering(
    status: StatusCode,
    body: fn() -> Frames,
) -> (
    impl Service<Request<()>, Response = Response<ResponseBody<Frames, Recorder>>, Error = Infallible>,
    Recorder,
) {
    let rec = Recorder::default();
    let svc = ShieldedOnCancelLayer::new(rec.clone())
        .for_http()
        .layer(service_fn(move |_: Request<()>| async move {
            Ok::<_, Infallible>(Response::builder().status(status).body(body()).unwrap())
        }));
    (svc, rec)
}

async fn respond(
    svc: impl Service<
        Request<()>,
        Response = Response<ResponseBody<Frames, Recorder>>,
        Error = Infallible,
    >,
) -> ResponseBody<Frames, Recorder> {
    svc.oneshot(Request::new(())).await.unwrap().into_body()
}

#[tokio::test(start_paused = true)]
async fn success_fires_on_the_frame_that_ends_the_stream() {
    let (svc, rec) = answering(StatusCode::OK, || Frames::data(&["a", "b"]));
    let mut body = respond(svc).await;
    assert_eq!(rec.count(), 0, "the head alone is not the end");
    body.frame().await.unwrap().unwrap();
    assert_eq!(rec.count(), 0, "more frames to come");
    tokio::time::advance(Duration::from_millis(700)).await;
    body.frame().await.unwrap().unwrap();
    // Fired on the last frame, before the end of frames was polled.
    let done = rec.only();
    assert_eq!(done.outcome(), Outcome::Success);
    assert_eq!(done.status(), Some(StatusCode::OK));
    assert_eq!(done.elapsed(), Duration::from_millis(700));
    assert!(body.frame().await.is_none());
    drop(body);
    assert_eq!(rec.count(), 1, "one hook, however the body ends");
}

#[tokio::test(start_paused = true)]
async fn end_of_frames_without_early_end_signal_is_success() {
    // `Full` reports its end only after its one frame; `Frames` after the
    // last. A body that reports nothing early ends at `None`.
    #[derive(Debug)]
    struct Late(bool);
    impl Body for Late {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut TaskContext<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            if self.0 {
                return Poll::Ready(None);
            }
            self.0 = true;
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"x")))))
        }
    }
    let rec = Recorder::default();
    let svc = ShieldedOnCancelLayer::new(rec.clone())
        .for_http()
        .layer(service_fn(|_: Request<()>| async {
            Ok::<_, Infallible>(Response::new(Late(false)))
        }));
    let mut body = svc.oneshot(Request::new(())).await.unwrap().into_body();
    body.frame().await.unwrap().unwrap();
    assert_eq!(rec.count(), 0);
    assert!(body.frame().await.is_none());
    assert_eq!(rec.only().outcome(), Outcome::Success);
}

#[tokio::test(start_paused = true)]
async fn error_status_is_an_error_at_end_or_drop() {
    for (status, kind) in [
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorKind::UpstreamFailure,
        ),
        (StatusCode::TOO_MANY_REQUESTS, ErrorKind::Overloaded),
        (StatusCode::UNAUTHORIZED, ErrorKind::Unauthorized),
        (StatusCode::BAD_REQUEST, ErrorKind::InvalidRequest),
        (StatusCode::REQUEST_TIMEOUT, ErrorKind::UpstreamFailure),
    ] {
        // Read to the end.
        let (svc, rec) = answering(status, || Frames::data(&["{\"error\":1}"]));
        let mut body = respond(svc).await;
        body.frame().await.unwrap().unwrap();
        let done = rec.only();
        assert_eq!(done.outcome(), Outcome::Error(kind), "{status}");
        assert_eq!(done.status(), Some(status));

        // Dropped unread.
        let (svc, rec) = answering(status, || Frames::data(&["x", "y"]));
        drop(respond(svc).await);
        assert_eq!(rec.only().outcome(), Outcome::Error(kind), "{status}");
    }
}

#[tokio::test(start_paused = true)]
async fn body_error_is_an_error() {
    let (svc, rec) = answering(StatusCode::OK, || {
        Frames::data(&["a"]).then_error(StreamTimedOut::new(
            StreamTimeout::Idle,
            Duration::from_secs(30),
        ))
    });
    let mut body = respond(svc).await;
    body.frame().await.unwrap().unwrap();
    let err = body.frame().await.unwrap().unwrap_err();
    assert!(err.is::<StreamTimedOut>());
    assert_eq!(rec.only().outcome(), Outcome::Error(ErrorKind::Timeout));

    let (svc, rec) = answering(StatusCode::OK, || Frames::default().then_error("reset"));
    let mut body = respond(svc).await;
    body.frame().await.unwrap().unwrap_err();
    drop(body);
    assert_eq!(
        rec.only().outcome(),
        Outcome::Error(ErrorKind::UpstreamFailure)
    );
}

#[tokio::test(start_paused = true)]
async fn body_dropped_mid_stream_is_cancelled() {
    let (svc, rec) = answering(StatusCode::OK, || Frames::data(&["a", "b", "c"]));
    let mut body = respond(svc).await;
    body.frame().await.unwrap().unwrap();
    tokio::time::advance(Duration::from_secs(1)).await;
    drop(body);
    let done = rec.only();
    assert_eq!(done.outcome(), Outcome::Cancelled);
    assert_eq!(done.elapsed(), Duration::from_secs(1));
    assert_eq!(done.status(), Some(StatusCode::OK));

    // Dropped before its first frame.
    let (svc, rec) = answering(StatusCode::OK, || Frames::data(&["a"]));
    drop(respond(svc).await);
    assert_eq!(rec.only().outcome(), Outcome::Cancelled);
}

#[tokio::test(start_paused = true)]
async fn empty_body_completes_with_the_head() {
    let rec = Recorder::default();
    let svc = ShieldedOnCancelLayer::new(rec.clone())
        .for_http()
        .layer(service_fn(|_: Request<()>| async {
            Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
        }));
    let body = svc.oneshot(Request::new(())).await.unwrap().into_body();
    // hyper would drop this body without polling it.
    assert!(body.is_end_stream());
    assert_eq!(rec.only().outcome(), Outcome::Success);
    drop(body);
    assert_eq!(rec.count(), 1);
}

#[tokio::test(start_paused = true)]
async fn size_hint_and_end_of_stream_are_forwarded() {
    let svc = ShieldedOnCancelLayer::new(Recorder::default())
        .for_http()
        .layer(service_fn(|_: Request<()>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"hello"))))
        }));
    let mut body = svc.oneshot(Request::new(())).await.unwrap().into_body();
    assert_eq!(body.size_hint().exact(), Some(5));
    assert!(!body.is_end_stream());
    body.frame().await.unwrap().unwrap();
    assert!(body.is_end_stream());
    assert_eq!(body.size_hint().exact(), SizeHint::with_exact(0).exact());
}

#[tokio::test(start_paused = true)]
async fn service_error_and_early_future_drop() {
    let rec = Recorder::default();
    let layer = ShieldedOnCancelLayer::new(rec.clone()).for_http();
    let tracker = layer.tracker();
    let (mut svc, mut handle) = mock::spawn_layer::<Request<()>, Response<Frames>, _>(layer);

    // Err from the service: an error, no status.
    assert_ready_ok!(svc.poll_ready());
    let mut fut = task::spawn(svc.call(Request::new(())));
    assert_pending!(fut.poll());
    let (_, send) = handle.next_request().await.unwrap();
    send.send_error(SlaExpired::new());
    let err = assert_ready_err!(fut.poll());
    assert!(err.is::<SlaExpired>());
    let done = rec.only();
    assert_eq!(done.outcome(), Outcome::Error(ErrorKind::Timeout));
    assert_eq!(done.status(), None);

    // The future dropped before the response: cancelled.
    assert_ready_ok!(svc.poll_ready());
    let mut fut = task::spawn(svc.call(Request::new(())));
    assert_pending!(fut.poll());
    let _req = handle.next_request().await.unwrap();
    drop(fut);
    assert_eq!(rec.outcomes()[1], Outcome::Cancelled);

    // The response arrived but the future was dropped before it saw it.
    assert_ready_ok!(svc.poll_ready());
    let fut = task::spawn(svc.call(Request::new(())));
    let (_, send) = handle.next_request().await.unwrap();
    send.send_response(Response::new(Frames::data(&["a"])));
    drop(fut);
    assert_eq!(rec.outcomes()[2], Outcome::Cancelled);
    assert_eq!(rec.count(), 3);
    assert_eq!(tracker.stats().inline, 3);
}
