use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::pending;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll, Waker};

use backstop_core::{
    AttemptPhase, BoxError, Context, ErrorKind, MAX_DURATION, StreamTimedOut, StreamTimeout,
    classify,
};
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Empty, Full};
use static_assertions::assert_impl_all;
use tokio::time::{Duration, Instant, advance};
use tokio_test::{assert_pending, assert_ready, assert_ready_err, assert_ready_ok, task};
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_test::mock;

use crate::body::ResponseBody;
use crate::future::HttpResponseFuture;
use crate::tests::{assert_attempt_timed_out, assert_sla_expired};
use crate::{AttemptTimeoutLayer, HttpAttemptTimeout, HttpAttemptTimeoutLayer};

const TIMEOUT: Duration = Duration::from_secs(3);
const FIRST_BYTE: Duration = Duration::from_secs(5);
const IDLE: Duration = Duration::from_secs(2);
const MAX: Duration = Duration::from_secs(20);
const MS: Duration = Duration::from_millis(1);

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn before(d: Duration) -> Duration {
    d.saturating_sub(MS)
}

fn layer() -> HttpAttemptTimeoutLayer {
    AttemptTimeoutLayer::new(TIMEOUT)
        .unwrap()
        .for_http()
        .first_byte_timeout(FIRST_BYTE)
        .unwrap()
        .idle_timeout(IDLE)
        .unwrap()
        .max_stream_duration(MAX)
        .unwrap()
}

// === a body the test drives frame by frame ===

#[derive(Default)]
struct Shared {
    frames: VecDeque<Result<Frame<Bytes>, BoxError>>,
    ended: bool,
    dropped: bool,
    waker: Option<Waker>,
}

/// The test's end of a [`TestBody`].
#[derive(Clone, Default)]
struct Upstream(Arc<Mutex<Shared>>);

impl Upstream {
    fn body(&self) -> TestBody {
        TestBody(Arc::clone(&self.0))
    }

    fn with(&self, f: impl FnOnce(&mut Shared)) {
        let mut s = self.0.lock().unwrap();
        f(&mut s);
        if let Some(w) = s.waker.take() {
            w.wake();
        }
    }

    fn send(&self, data: &'static str) {
        self.with(|s| {
            s.frames
                .push_back(Ok(Frame::data(Bytes::from_static(data.as_bytes()))));
        });
    }

    fn trailers(&self, trailers: HeaderMap) {
        self.with(|s| s.frames.push_back(Ok(Frame::trailers(trailers))));
    }

    fn fail(&self, msg: &'static str) {
        self.with(|s| s.frames.push_back(Err(msg.into())));
    }

    fn end(&self) {
        self.with(|s| s.ended = true);
    }

    fn dropped(&self) -> bool {
        self.0.lock().unwrap().dropped
    }
}

/// An `Unpin` body fed by an [`Upstream`]; records its drop.
struct TestBody(Arc<Mutex<Shared>>);

impl std::fmt::Debug for TestBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TestBody")
    }
}

impl Drop for TestBody {
    fn drop(&mut self) {
        self.0.lock().unwrap().dropped = true;
    }
}

impl Body for TestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut s = self.0.lock().unwrap();
        match s.frames.pop_front() {
            Some(frame) => Poll::Ready(Some(frame)),
            None if s.ended => Poll::Ready(None),
            None => {
                s.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let s = self.0.lock().unwrap();
        s.ended && s.frames.is_empty()
    }
}

type Mock = mock::Mock<Request<()>, Response<TestBody>>;
type Handle = mock::Handle<Request<()>, Response<TestBody>>;
type Fut = HttpResponseFuture<<Mock as Service<Request<()>>>::Future, TestBody>;

/// Calls the layered mock (inside `ctx`), returning the spawned future and
/// the upstream's handle with the request already taken.
fn start(ctx: Context) -> (task::Spawn<Fut>, Handle, SendBack) {
    let (mut svc, mut handle) = mock::spawn_layer::<Request<()>, Response<TestBody>, _>(layer());
    assert_ready_ok!(svc.poll_ready());
    let fut = task::spawn(ctx.sync_scope(|| svc.call(Request::new(()))));
    let send = take_request(&mut handle);
    (fut, handle, send)
}

type SendBack = tower_test::mock::SendResponse<Response<TestBody>>;

/// The request the upstream has received (there must be one).
fn take_request(handle: &mut Handle) -> SendBack {
    let (_req, send) = assert_ready!(task::spawn(handle.next_request()).poll()).expect("request");
    send
}

type FramePoll<B> = Poll<Option<Result<Frame<<B as Body>::Data>, <B as Body>::Error>>>;

/// Polls one frame of a pinned body.
fn poll_frame<B: Body>(t: &mut task::Spawn<()>, body: &mut Pin<Box<B>>) -> FramePoll<B> {
    t.enter(|cx, _| body.as_mut().poll_frame(cx))
}

fn data<E: std::fmt::Debug>(p: Poll<Option<Result<Frame<Bytes>, E>>>) -> Bytes {
    match p {
        Poll::Ready(Some(Ok(frame))) => frame.into_data().expect("a data frame"),
        other => panic!("expected a data frame, got {other:?}"),
    }
}

fn stream_err(p: Poll<Option<Result<Frame<Bytes>, BoxError>>>) -> BoxError {
    match p {
        Poll::Ready(Some(Err(err))) => err,
        other => panic!("expected an error, got {other:?}"),
    }
}

fn assert_stream_timed_out(err: &BoxError, reason: StreamTimeout, after: Duration) {
    let Some(e) = err.downcast_ref::<StreamTimedOut>() else {
        panic!("expected StreamTimedOut, got {err}");
    };
    assert_eq!((e.reason(), e.after()), (reason, after));
    assert_eq!(classify(&**err), ErrorKind::Timeout);
}

// === construction ===

#[test]
fn setters_reject_bad_values_naming_the_setting() {
    let base = AttemptTimeoutLayer::default().for_http();
    for bad in [Duration::ZERO, MAX_DURATION + MS] {
        assert_eq!(
            base.first_byte_timeout(bad).unwrap_err().setting(),
            "first_byte_timeout"
        );
        assert_eq!(
            base.idle_timeout(bad).unwrap_err().setting(),
            "idle_timeout"
        );
        assert_eq!(
            base.max_stream_duration(bad).unwrap_err().setting(),
            "max_stream_duration"
        );
    }
    assert!(base.max_stream_duration(MAX_DURATION).is_ok());
    assert_eq!(base, HttpAttemptTimeoutLayer::default());
    assert_eq!(base.timeout(), secs(30));
    let dbg = format!("{base:?}");
    assert!(dbg.contains("idle_timeout: 30s"), "{dbg}");
    assert!(dbg.contains("max_stream_duration: 600s"), "{dbg}");
    assert!(dbg.contains("first_byte_timeout: 30s"), "{dbg}");
}

// === head ===

#[tokio::test(start_paused = true)]
async fn head_times_out_at_the_attempt_deadline() {
    let (mut fut, _handle, _send) = start(Context::new());
    advance(before(TIMEOUT)).await;
    assert_pending!(fut.poll());
    advance(MS).await;
    let err = assert_ready_err!(fut.poll());
    assert_attempt_timed_out(&err, TIMEOUT, AttemptPhase::Response);
}

#[tokio::test(start_paused = true)]
async fn head_capped_by_the_sla_fails_as_the_sla_error() {
    let ctx = Context::new().with_sla_deadline(Instant::now() + secs(2));
    let (mut fut, _handle, _send) = start(ctx);
    advance(before(secs(2))).await;
    assert_pending!(fut.poll());
    advance(MS).await;
    assert_sla_expired(&assert_ready_err!(fut.poll()));
}

#[tokio::test(start_paused = true)]
async fn a_passed_sla_fails_without_calling_inner() {
    let (mut svc, mut handle) = mock::spawn_layer::<Request<()>, Response<TestBody>, _>(layer());
    assert_ready_ok!(svc.poll_ready());
    let ctx = Context::new().with_sla_deadline(Instant::now());
    let mut fut = task::spawn(ctx.sync_scope(|| svc.call(Request::new(()))));
    assert_sla_expired(&assert_ready_err!(fut.poll()));
    assert_pending!(task::spawn(handle.next_request()).poll());
}

#[tokio::test(start_paused = true)]
async fn the_inner_service_sees_the_attempt_deadline() {
    let svc = layer().layer(service_fn(|_: Request<()>| async {
        let seen = Context::current().attempt_deadline();
        let mut res = Response::new(Full::new(Bytes::from_static(b"x")));
        res.extensions_mut().insert(seen);
        Ok::<_, Infallible>(res)
    }));
    let t0 = Instant::now();
    let ctx = Context::new().with_sla_deadline(t0 + secs(1));
    let res = ctx.scope(svc.oneshot(Request::new(()))).await.unwrap();
    assert_eq!(
        res.extensions().get::<Option<Instant>>(),
        Some(&Some(t0 + secs(1)))
    );
}

// === first byte ===

#[tokio::test(start_paused = true)]
async fn a_first_byte_stall_is_an_attempt_timeout() {
    let up = Upstream::default();
    let (mut fut, _handle, send) = start(Context::new());
    advance(secs(1)).await;
    send.send_response(Response::new(up.body()));
    // Head arrived; the first frame is awaited from the attempt's start.
    assert_pending!(fut.poll());
    advance(before(secs(4))).await;
    assert_pending!(fut.poll());
    advance(MS).await;
    assert!(fut.is_woken());
    let err = assert_ready_err!(fut.poll());
    assert_attempt_timed_out(&err, FIRST_BYTE, AttemptPhase::FirstByte);
    // The failed attempt released the upstream body at once.
    assert!(up.dropped());
}

#[tokio::test(start_paused = true)]
async fn a_first_byte_stall_capped_by_the_sla_is_the_sla_error() {
    let up = Upstream::default();
    // SLA 4 s: after the head (3 s cap), before the first byte (5 s).
    let ctx = Context::new().with_sla_deadline(Instant::now() + secs(4));
    let (mut fut, _handle, send) = start(ctx);
    send.send_response(Response::new(up.body()));
    assert_pending!(fut.poll());
    advance(before(secs(4))).await;
    assert_pending!(fut.poll());
    advance(MS).await;
    assert_sla_expired(&assert_ready_err!(fut.poll()));
}

#[tokio::test(start_paused = true)]
async fn the_first_frame_completes_the_attempt() {
    let up = Upstream::default();
    let (mut fut, _handle, send) = start(Context::new());
    let mut res = Response::new(up.body());
    *res.status_mut() = StatusCode::CREATED;
    send.send_response(res);
    assert_pending!(fut.poll());
    advance(secs(4)).await; // past the head timeout, within first-byte
    up.send("hello");
    assert!(fut.is_woken());
    let res = assert_ready_ok!(fut.poll());
    assert_eq!(res.status(), StatusCode::CREATED);
    assert!(!up.dropped());
}

#[tokio::test(start_paused = true)]
async fn a_body_error_before_the_first_frame_fails_the_attempt() {
    let up = Upstream::default();
    let (mut fut, _handle, send) = start(Context::new());
    send.send_response(Response::new(up.body()));
    assert_pending!(fut.poll());
    up.fail("connection reset");
    let err = assert_ready_err!(fut.poll());
    assert_eq!(err.to_string(), "connection reset");
    assert_eq!(classify(&*err), ErrorKind::UpstreamFailure);
    assert!(up.dropped());
}

#[tokio::test(start_paused = true)]
async fn the_default_first_byte_timeout_is_the_attempt_timeout() {
    let (mut svc, mut handle) = mock::spawn_layer::<Request<()>, Response<TestBody>, _>(
        AttemptTimeoutLayer::new(TIMEOUT).unwrap().for_http(),
    );
    assert_ready_ok!(svc.poll_ready());
    let mut fut = task::spawn(svc.call(Request::new(())));
    let up = Upstream::default();
    advance(secs(1)).await;
    take_request(&mut handle).send_response(Response::new(up.body()));
    assert_pending!(fut.poll());
    advance(before(secs(2))).await;
    assert_pending!(fut.poll());
    advance(MS).await;
    assert_attempt_timed_out(
        &assert_ready_err!(fut.poll()),
        TIMEOUT,
        AttemptPhase::FirstByte,
    );
}

// === empty bodies ===

#[tokio::test(start_paused = true)]
async fn an_empty_body_returns_at_once() {
    // Known empty from the head.
    let svc = layer().layer(service_fn(|_: Request<()>| async {
        Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
    }));
    let mut fut = task::spawn(svc.oneshot(Request::new(())));
    let res = assert_ready_ok!(fut.poll());
    let body = res.into_body();
    assert!(body.is_end_stream());
    assert_eq!(body.size_hint().exact(), Some(0));
    let mut body = Box::pin(body);
    assert!(matches!(
        poll_frame(&mut task::spawn(()), &mut body),
        Poll::Ready(None)
    ));

    // Ends without a frame after the head.
    let up = Upstream::default();
    let (mut fut, _handle, send) = start(Context::new());
    send.send_response(Response::new(up.body()));
    assert_pending!(fut.poll());
    up.end();
    let body = assert_ready_ok!(fut.poll()).into_body();
    assert!(up.dropped());
    assert!(body.is_end_stream());
    let mut body = Box::pin(body);
    assert!(matches!(
        poll_frame(&mut task::spawn(()), &mut body),
        Poll::Ready(None)
    ));
}

// === the stream ===

#[tokio::test(start_paused = true)]
async fn frames_pass_through_byte_for_byte() {
    let up = Upstream::default();
    let (mut fut, _handle, send) = start(Context::new());
    send.send_response(Response::new(up.body()));
    up.send("data: {\"a\":1}\n\n");
    let body = assert_ready_ok!(fut.poll()).into_body();
    up.send("");
    up.send("data: [DONE]\n\n");
    let mut trailers = HeaderMap::new();
    trailers.insert("x-t", "1".parse().unwrap());
    up.trailers(trailers.clone());
    up.end();
    let collected = body.collect().await.unwrap();
    assert_eq!(collected.trailers(), Some(&trailers));
    assert_eq!(
        collected.to_bytes(),
        Bytes::from_static(b"data: {\"a\":1}\n\ndata: [DONE]\n\n")
    );
    assert!(up.dropped());
}

/// One frame, then pending; a size hint of 10 to 100 bytes.
struct Hinted(Option<Bytes>);
impl Body for Hinted {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.0.take() {
            Some(b) => Poll::Ready(Some(Ok(Frame::data(b)))),
            None => Poll::Pending,
        }
    }
    fn size_hint(&self) -> SizeHint {
        let mut h = SizeHint::new();
        h.set_lower(10);
        h.set_upper(100);
        h
    }
}

#[tokio::test(start_paused = true)]
async fn size_hint_and_end_of_stream_count_the_buffered_frame() {
    let svc = layer().layer(service_fn(|_: Request<()>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"hello"))))
    }));
    let body = svc.oneshot(Request::new(())).await.unwrap().into_body();
    // Full yielded its only frame into the buffer: the inner body is done.
    assert!(!body.is_end_stream());
    assert_eq!(body.size_hint().exact(), Some(5));
    let mut body = Box::pin(body);
    let mut t = task::spawn(());
    assert_eq!(data(poll_frame(&mut t, &mut body)), "hello");
    assert!(body.is_end_stream());
    assert_eq!(body.size_hint().exact(), Some(0));
    assert!(matches!(poll_frame(&mut t, &mut body), Poll::Ready(None)));

    // An inner hint with bounds: the buffered bytes are added to both.
    let svc = layer().layer(service_fn(|_: Request<()>| async {
        Ok::<_, Infallible>(Response::new(Hinted(Some(Bytes::from_static(b"abc")))))
    }));
    let body = svc.oneshot(Request::new(())).await.unwrap().into_body();
    let hint = body.size_hint();
    assert_eq!((hint.lower(), hint.upper()), (13, Some(103)));
    assert!(!body.is_end_stream());
}

#[tokio::test(start_paused = true)]
async fn idle_timeout_between_frames() {
    let up = Upstream::default();
    let (mut fut, _handle, send) = start(Context::new());
    send.send_response(Response::new(up.body()));
    up.send("one");
    let mut body = Box::pin(assert_ready_ok!(fut.poll()).into_body());
    let mut t = task::spawn(());
    assert_eq!(data(poll_frame(&mut t, &mut body)), "one");

    // Frames just inside the idle timeout keep the stream going.
    for _ in 0..3 {
        assert_pending!(poll_frame(&mut t, &mut body));
        advance(before(IDLE)).await;
        assert_pending!(poll_frame(&mut t, &mut body));
        up.send("tick");
        assert_eq!(data(poll_frame(&mut t, &mut body)), "tick");
    }
    // Then a stall.
    assert_pending!(poll_frame(&mut t, &mut body));
    advance(before(IDLE)).await;
    assert_pending!(poll_frame(&mut t, &mut body));
    advance(MS).await;
    assert!(t.is_woken());
    let err = stream_err(poll_frame(&mut t, &mut body));
    assert_stream_timed_out(&err, StreamTimeout::Idle, IDLE);
    // The inner body is released at once, and the body reports its end.
    assert!(up.dropped());
    assert!(body.is_end_stream());
    assert!(matches!(poll_frame(&mut t, &mut body), Poll::Ready(None)));
}

#[tokio::test(start_paused = true)]
async fn max_stream_duration_from_the_attempt_start_not_bounded_by_the_sla() {
    let up = Upstream::default();
    let t0 = Instant::now();
    // An SLA of 4 s: the stream outlives it.
    let ctx = Context::new().with_sla_deadline(t0 + secs(4));
    let (mut fut, _handle, send) = start(ctx);
    advance(secs(1)).await;
    send.send_response(Response::new(up.body()));
    up.send("first");
    let mut body = Box::pin(assert_ready_ok!(fut.poll()).into_body());
    let mut t = task::spawn(());
    assert_eq!(data(poll_frame(&mut t, &mut body)), "first");

    // A frame every second (within the idle timeout) until just before the
    // maximum, measured from t0.
    while Instant::now() + secs(1) < t0 + MAX {
        assert_pending!(poll_frame(&mut t, &mut body));
        advance(secs(1)).await;
        up.send("x");
        assert_eq!(data(poll_frame(&mut t, &mut body)), "x");
    }
    assert_eq!(Instant::now(), t0 + secs(19));
    assert_pending!(poll_frame(&mut t, &mut body));
    advance(before(secs(1))).await;
    assert_pending!(poll_frame(&mut t, &mut body));
    advance(MS).await;
    // A frame ready at the same instant does not extend the stream.
    up.send("late");
    let err = stream_err(poll_frame(&mut t, &mut body));
    assert_stream_timed_out(&err, StreamTimeout::MaxDuration, MAX);
    assert!(up.dropped());
}

#[tokio::test(start_paused = true)]
async fn max_duration_cuts_a_body_that_always_has_a_frame_ready() {
    let up = Upstream::default();
    let t0 = Instant::now();
    let (mut fut, _handle, send) = start(Context::new());
    send.send_response(Response::new(up.body()));
    up.send("first");
    let mut body = Box::pin(assert_ready_ok!(fut.poll()).into_body());
    let mut t = task::spawn(());
    assert_eq!(data(poll_frame(&mut t, &mut body)), "first");
    assert_pending!(poll_frame(&mut t, &mut body)); // registers both timers
    // The consumer stops polling; frames pile up; time passes the maximum.
    for _ in 0..5 {
        up.send("x");
    }
    advance(MAX).await;
    assert_eq!(Instant::now(), t0 + MAX);
    let err = stream_err(poll_frame(&mut t, &mut body));
    assert_stream_timed_out(&err, StreamTimeout::MaxDuration, MAX);
}

#[tokio::test(start_paused = true)]
async fn an_inner_body_error_ends_the_stream() {
    let up = Upstream::default();
    let (mut fut, _handle, send) = start(Context::new());
    send.send_response(Response::new(up.body()));
    up.send("first");
    let mut body = Box::pin(assert_ready_ok!(fut.poll()).into_body());
    let mut t = task::spawn(());
    assert_eq!(data(poll_frame(&mut t, &mut body)), "first");
    up.fail("reset by peer");
    let err = stream_err(poll_frame(&mut t, &mut body));
    assert_eq!(err.to_string(), "reset by peer");
    assert_eq!(classify(&*err), ErrorKind::UpstreamFailure);
    assert!(up.dropped());
    assert!(matches!(poll_frame(&mut t, &mut body), Poll::Ready(None)));
}

// === cancellation ===

/// Sets its flag when dropped.
struct Flag(Arc<Mutex<bool>>);
impl Drop for Flag {
    fn drop(&mut self) {
        *self.0.lock().unwrap() = true;
    }
}

#[tokio::test(start_paused = true)]
async fn dropping_at_every_point_releases() {
    // While waiting for the head: the inner future is dropped.
    let dropped = Arc::new(Mutex::new(false));
    let mut svc = layer().layer(service_fn({
        let dropped = Arc::clone(&dropped);
        move |_: Request<()>| {
            let flag = Flag(Arc::clone(&dropped));
            async move {
                let _flag = flag;
                pending::<Result<Response<Empty<Bytes>>, Infallible>>().await
            }
        }
    }));
    let mut fut = task::spawn(svc.call(Request::new(())));
    assert_pending!(fut.poll());
    assert!(!*dropped.lock().unwrap());
    drop(fut);
    assert!(*dropped.lock().unwrap());

    // While waiting for the first frame: the upstream body is dropped.
    let up = Upstream::default();
    let (mut fut, _handle, send) = start(Context::new());
    send.send_response(Response::new(up.body()));
    assert_pending!(fut.poll());
    assert!(!up.dropped());
    drop(fut);
    assert!(up.dropped());

    // Mid-stream, with the first frame still buffered, and after it.
    for polls in [0, 1, 2] {
        let up = Upstream::default();
        let (mut fut, _handle, send) = start(Context::new());
        send.send_response(Response::new(up.body()));
        up.send("first");
        let mut body = Box::pin(assert_ready_ok!(fut.poll()).into_body());
        let mut t = task::spawn(());
        for _ in 0..polls {
            let _ = poll_frame(&mut t, &mut body);
        }
        assert!(!up.dropped());
        drop(body);
        assert!(up.dropped(), "after {polls} polls");
    }
}

// === clones and compile-time ===

#[tokio::test(start_paused = true)]
async fn clones_behave_the_same() {
    let svc = layer().layer(service_fn(|_: Request<()>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
    }));
    let mut a = svc.clone();
    let mut b = svc;
    assert_eq!(
        format!("{:?}", a.get_ref()).len(),
        format!("{:?}", b.get_mut()).len()
    );
    let ra = a
        .ready()
        .await
        .unwrap()
        .call(Request::new(()))
        .await
        .unwrap();
    let rb = b
        .ready()
        .await
        .unwrap()
        .call(Request::new(()))
        .await
        .unwrap();
    assert_eq!(ra.into_body().collect().await.unwrap().to_bytes(), "ok");
    assert_eq!(rb.into_body().collect().await.unwrap().to_bytes(), "ok");
    let _inner = b.into_inner();
}

type HttpInner = tower::util::BoxCloneSyncService<Request<()>, Response<Full<Bytes>>, BoxError>;
assert_impl_all!(HttpAttemptTimeoutLayer: Send, Sync, Clone, Copy, std::fmt::Debug);
assert_impl_all!(HttpAttemptTimeout<HttpInner>: Send, Sync, Clone);
assert_impl_all!(
    <HttpAttemptTimeout<HttpInner> as Service<Request<()>>>::Future: Send
);
// Unpin so the HTTP retry (which moves bodies) composes outside it.
assert_impl_all!(ResponseBody<Full<Bytes>>: Send, Sync, Unpin, Body, std::fmt::Debug);
assert_impl_all!(
    HttpResponseFuture<std::future::Ready<Result<Response<Full<Bytes>>, BoxError>>, Full<Bytes>>: Send,
    Sync
);
