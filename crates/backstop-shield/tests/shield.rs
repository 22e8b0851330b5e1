//! The generic layer: outcomes, exactly-once, cancellation at every await
//! point, hook timeout, drain, no runtime, shared state, Send/Sync.
// Futures are created inside a runtime and dropped outside it on purpose.
#![allow(clippy::async_yields_async)]

mod support;

use std::convert::Infallible;
use std::error::Error;
use std::fmt;
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context as TaskContext, Poll, Waker};

use backstop_core::{
    Attempt, Context, ErrorKind, OverloadReason, Overloaded, RequestId, SlaExpired,
};
use backstop_shield::future::ResponseFuture;
use backstop_shield::{
    BoxError, Completion, HookStats, HookTracker, Outcome, ShieldedOnCancel, ShieldedOnCancelLayer,
    hook_fn, sync_hook,
};
use static_assertions::assert_impl_all;
use support::Recorder;
use tokio::time::{Duration, Instant};
use tokio_test::{assert_pending, assert_ready_err, assert_ready_ok, task};
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_test::{assert_request_eq, mock};

type Mock = mock::Mock<u32, u32>;

assert_impl_all!(ShieldedOnCancelLayer<Recorder>: Send, Sync, Clone, fmt::Debug);
assert_impl_all!(ShieldedOnCancel<Mock, Recorder>: Send, Sync, Clone, fmt::Debug);
assert_impl_all!(ResponseFuture<mock::future::ResponseFuture<u32>, Recorder>: Send, Sync, fmt::Debug);
assert_impl_all!(HookTracker: Send, Sync, Clone, fmt::Debug);
assert_impl_all!(Completion: Send, Sync, Clone, fmt::Debug);

fn stats(tracker: &HookTracker) -> (u64, u64, u64, u64, usize) {
    let HookStats {
        inline,
        spawned,
        timed_out,
        skipped,
        pending,
        ..
    } = tracker.stats();
    (inline, spawned, timed_out, skipped, pending)
}

type Setup = (
    mock::Spawn<ShieldedOnCancel<Mock, Recorder>>,
    mock::Handle<u32, u32>,
    Recorder,
    HookTracker,
);

fn setup() -> Setup {
    let rec = Recorder::default();
    let layer = ShieldedOnCancelLayer::new(rec.clone());
    let tracker = layer.tracker();
    let (svc, handle) = mock::spawn_layer(layer);
    (svc, handle, rec, tracker)
}

#[tokio::test(start_paused = true)]
async fn success_fires_once_with_elapsed_id_and_attempt() {
    let (mut svc, mut handle, rec, tracker) = setup();
    assert_ready_ok!(svc.poll_ready());
    let id = RequestId::parse(b"req-1").unwrap();
    let ctx = Context::new()
        .with_request_id(id.clone())
        .with_attempt(Attempt(2));
    let mut fut = task::spawn(ctx.sync_scope(|| svc.call(1)));
    assert_pending!(fut.poll());

    tokio::time::advance(Duration::from_millis(1500)).await;
    assert_request_eq!(handle, 1).send_response(2);
    assert_eq!(rec.count(), 0, "nothing fires before the future completes");
    assert_eq!(assert_ready_ok!(fut.poll()), 2);

    let done = rec.only();
    assert_eq!(done.outcome(), Outcome::Success);
    assert_eq!(done.elapsed(), Duration::from_millis(1500));
    assert_eq!(done.request_id(), Some(&id));
    assert_eq!(done.attempt(), Some(Attempt(2)));
    drop(fut);
    assert_eq!(rec.count(), 1, "dropping a finished future fires nothing");
    assert_eq!(
        stats(&tracker),
        (1, 0, 0, 0, 0),
        "ran inline, nothing spawned"
    );
}

#[tokio::test(start_paused = true)]
async fn error_fires_once_and_passes_through_unchanged() {
    let (mut svc, mut handle, rec, _) = setup();
    assert_ready_ok!(svc.poll_ready());
    let mut fut = task::spawn(svc.call(1));
    assert_pending!(fut.poll());
    assert_request_eq!(handle, 1).send_error(Overloaded::new(
        OverloadReason::QueueFull,
        Duration::from_secs(1),
    ));
    let err = assert_ready_err!(fut.poll());
    assert!(err.is::<Overloaded>(), "the error is not wrapped: {err}");
    assert_eq!(rec.only().outcome(), Outcome::Error(ErrorKind::Overloaded));
    assert!(rec.only().request_id().is_none());
}

#[derive(Debug)]
struct Wrapped(BoxError);

impl fmt::Display for Wrapped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("wrapped")
    }
}

impl Error for Wrapped {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.0)
    }
}

#[tokio::test(start_paused = true)]
async fn sla_expiry_inside_reaches_the_hook_as_a_timeout() {
    for err in [
        BoxError::from(SlaExpired::new()),
        Box::new(Wrapped(SlaExpired::new().into())),
    ] {
        let (mut svc, mut handle, rec, _) = setup();
        assert_ready_ok!(svc.poll_ready());
        let mut fut = task::spawn(svc.call(1));
        assert_pending!(fut.poll());
        assert_request_eq!(handle, 1).send_error(err);
        let err = assert_ready_err!(fut.poll());
        assert!(backstop_core::find::<SlaExpired>(&*err).is_some());
        assert_eq!(rec.only().outcome(), Outcome::Error(ErrorKind::Timeout));
        assert!(rec.only().outcome().error_kind().unwrap().is_timeout());
    }
}

#[tokio::test(start_paused = true)]
async fn foreign_errors_are_upstream_failures() {
    let (mut svc, mut handle, rec, _) = setup();
    assert_ready_ok!(svc.poll_ready());
    let mut fut = task::spawn(svc.call(1));
    assert_pending!(fut.poll());
    assert_request_eq!(handle, 1).send_error("connection reset");
    assert_ready_err!(fut.poll());
    assert_eq!(
        rec.only().outcome(),
        Outcome::Error(ErrorKind::UpstreamFailure)
    );
}

#[tokio::test(start_paused = true)]
async fn concrete_error_types_pass_through() {
    #[derive(Debug, PartialEq)]
    struct MyError;
    let rec = Recorder::default();
    let mut svc = ShieldedOnCancelLayer::new(rec.clone()).layer(service_fn(|n: u32| async move {
        if n == 0 { Err(MyError) } else { Ok(n) }
    }));
    let err = svc.ready().await.unwrap().call(0).await.unwrap_err();
    assert_eq!(err, MyError);
    // An io::Error is looked into.
    let mut io = ShieldedOnCancelLayer::new(rec.clone()).layer(service_fn(|_: u32| async {
        Err::<u32, _>(std::io::Error::other(SlaExpired::new()))
    }));
    io.ready().await.unwrap().call(1).await.unwrap_err();
    assert_eq!(
        rec.outcomes(),
        [
            Outcome::Error(ErrorKind::UpstreamFailure),
            Outcome::Error(ErrorKind::Timeout)
        ]
    );
}

/// Drop the future at each await point; each drop fires exactly one
/// `Cancelled`, and never anything else.
#[tokio::test(start_paused = true)]
async fn cancel_at_each_await_point_fires_once() {
    for point in 0..3 {
        let (mut svc, mut handle, rec, tracker) = setup();
        assert_ready_ok!(svc.poll_ready());
        let mut fut = task::spawn(svc.call(1));
        tokio::time::advance(Duration::from_secs(2)).await;
        match point {
            // Never polled.
            0 => {}
            // Polled: the inner service holds the request and works.
            1 => {
                assert_pending!(fut.poll());
                let _req = handle.next_request().await.unwrap();
            }
            // The inner service answered, but the caller left before
            // seeing the answer.
            _ => {
                assert_pending!(fut.poll());
                assert_request_eq!(handle, 1).send_response(2);
            }
        }
        assert_eq!(rec.count(), 0, "point {point}: nothing before the drop");
        drop(fut);
        let done = rec.only();
        assert_eq!(done.outcome(), Outcome::Cancelled, "point {point}");
        assert_eq!(done.elapsed(), Duration::from_secs(2), "point {point}");
        assert_eq!(stats(&tracker), (1, 0, 0, 0, 0), "point {point}");
    }
}

/// A seeded walk over random sequences of polls, responses and drops:
/// always exactly one hook, and its outcome matches what happened.
#[tokio::test(start_paused = true)]
async fn random_drop_points_fire_exactly_once() {
    let mut state: u64 = 0x5eed_1234;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..200 {
        let (mut svc, mut handle, rec, _) = setup();
        assert_ready_ok!(svc.poll_ready());
        let mut fut = task::spawn(svc.call(1));
        let mut answered = false;
        let mut finished = None;
        for _ in 0..(next() % 5) {
            match next() % 3 {
                0 if finished.is_none() => {
                    if let Poll::Ready(r) = fut.poll() {
                        finished = Some(r.is_ok());
                    }
                }
                1 if !answered => {
                    // The mock receives the request in `call`.
                    let (_, send) = handle.next_request().await.unwrap();
                    if next() % 2 == 0 {
                        send.send_response(2);
                    } else {
                        send.send_error("boom");
                    }
                    answered = true;
                }
                _ => tokio::time::advance(Duration::from_millis(next() % 100)).await,
            }
            assert_eq!(rec.count(), usize::from(finished.is_some()));
        }
        drop(fut);
        let expected = match finished {
            Some(true) => Outcome::Success,
            Some(false) => Outcome::Error(ErrorKind::UpstreamFailure),
            None => Outcome::Cancelled,
        };
        assert_eq!(rec.only().outcome(), expected);
    }
}

#[tokio::test(start_paused = true)]
async fn pending_hooks_are_spawned_and_bounded_by_the_hook_timeout() {
    let finished = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&finished);
    let layer = ShieldedOnCancelLayer::builder(hook_fn(move |_| {
        let flag = Arc::clone(&flag);
        async move {
            tokio::time::sleep(Duration::from_secs(10)).await;
            flag.store(true, Ordering::SeqCst);
        }
    }))
    .hook_timeout(Duration::from_secs(2))
    .build()
    .unwrap();
    let tracker = layer.tracker();
    let mut svc = layer.layer(service_fn(|n: u32| async move { Ok::<_, Infallible>(n) }));
    svc.ready().await.unwrap().call(1).await.unwrap();
    assert_eq!(stats(&tracker), (0, 1, 0, 0, 1), "spawned, pending");

    let start = Instant::now();
    assert!(tracker.drain(Duration::from_secs(60)).await);
    assert_eq!(Instant::now() - start, Duration::from_secs(2), "cut at 2 s");
    assert_eq!(stats(&tracker), (0, 1, 1, 0, 0), "counted as timed out");
    assert!(!finished.load(Ordering::SeqCst), "the hook was cut");
}

fn sleepy_layer(
    sleep: Duration,
) -> (
    ShieldedOnCancelLayer<impl backstop_shield::Hook>,
    Arc<AtomicUsize>,
) {
    let finished = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&finished);
    let layer = ShieldedOnCancelLayer::new(hook_fn(move |_| {
        let count = Arc::clone(&count);
        async move {
            tokio::time::sleep(sleep).await;
            count.fetch_add(1, Ordering::SeqCst);
        }
    }));
    (layer, finished)
}

#[tokio::test(start_paused = true)]
async fn drain_waits_for_pending_hooks() {
    let (layer, finished) = sleepy_layer(Duration::from_secs(3));
    let tracker = layer.tracker();
    let mut svc = layer.layer(service_fn(|n: u32| async move { Ok::<_, Infallible>(n) }));
    svc.ready().await.unwrap().call(1).await.unwrap();
    // A cancelled request's hook is tracked too.
    drop(svc.ready().await.unwrap().call(2));
    assert_eq!(tracker.stats().pending, 2);
    assert!(!tracker.is_draining());

    let start = Instant::now();
    assert!(tracker.drain(Duration::from_secs(10)).await);
    assert!(tracker.is_draining());
    assert_eq!(Instant::now() - start, Duration::from_secs(3));
    assert_eq!(finished.load(Ordering::SeqCst), 2);
    assert_eq!(stats(&tracker), (0, 2, 0, 0, 0));
}

#[tokio::test(start_paused = true)]
async fn drain_returns_false_at_its_timeout() {
    let (layer, finished) = sleepy_layer(Duration::from_secs(4));
    let tracker = layer.tracker();
    let mut svc = layer.layer(service_fn(|n: u32| async move { Ok::<_, Infallible>(n) }));
    svc.ready().await.unwrap().call(1).await.unwrap();

    let start = Instant::now();
    assert!(!tracker.drain(Duration::from_secs(1)).await);
    assert_eq!(Instant::now() - start, Duration::from_secs(1));
    assert_eq!(tracker.stats().pending, 1);
    assert_eq!(finished.load(Ordering::SeqCst), 0);
    // The hook keeps running; a second drain sees it finish.
    assert!(tracker.drain(Duration::from_secs(10)).await);
    assert_eq!(finished.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn clones_share_one_tracker_and_counters() {
    let rec = Recorder::default();
    let layer = ShieldedOnCancelLayer::new(rec.clone());
    let tracker = layer.tracker();
    let echo = service_fn(|n: u32| async move { Ok::<_, Infallible>(n) });
    let mut a = layer.layer(echo);
    let mut b = a.clone();
    let mut c = layer.clone().layer(echo);
    a.ready().await.unwrap().call(1).await.unwrap();
    b.ready().await.unwrap().call(2).await.unwrap();
    drop(c.ready().await.unwrap().call(3));
    assert_eq!(rec.count(), 3);
    assert_eq!(tracker.stats().inline, 3);
    assert_eq!(a.tracker().stats(), b.tracker().stats());
    assert_eq!(c.tracker().stats().inline, 3);

    // Another layer has its own counters.
    let other = ShieldedOnCancelLayer::new(Recorder::default());
    let mut d = other.layer(echo);
    d.ready().await.unwrap().call(4).await.unwrap();
    assert_eq!(other.tracker().stats().inline, 1);
    assert_eq!(tracker.stats().inline, 3);
}

#[tokio::test(start_paused = true)]
async fn hooks_that_await_once_are_spawned_and_finish() {
    let runs = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&runs);
    let layer = ShieldedOnCancelLayer::new(hook_fn(move |done: Completion| {
        let count = Arc::clone(&count);
        async move {
            tokio::task::yield_now().await;
            assert!(done.outcome().is_success());
            count.fetch_add(1, Ordering::SeqCst);
        }
    }));
    let tracker = layer.tracker();
    let mut svc = layer.layer(service_fn(|n: u32| async move { Ok::<_, Infallible>(n) }));
    svc.ready().await.unwrap().call(1).await.unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 0, "not finished inline");
    assert!(tracker.drain(Duration::from_secs(1)).await);
    assert_eq!(runs.load(Ordering::SeqCst), 1, "ran exactly once");
    assert_eq!(stats(&tracker), (0, 1, 0, 0, 0));
}

// === no runtime ===

fn async_flag_layer() -> (
    ShieldedOnCancelLayer<impl backstop_shield::Hook>,
    Arc<AtomicUsize>,
) {
    let runs = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&runs);
    let layer = ShieldedOnCancelLayer::new(hook_fn(move |_| {
        let count = Arc::clone(&count);
        async move {
            // Would panic if polled without a live runtime.
            tokio::time::sleep(Duration::from_millis(1)).await;
            count.fetch_add(1, Ordering::SeqCst);
        }
    }));
    (layer, runs)
}

fn pending_service() -> impl Service<
    u32,
    Response = u32,
    Error = BoxError,
    Future = impl Future<Output = Result<u32, BoxError>> + Send,
> + Clone {
    service_fn(|_: u32| std::future::pending::<Result<u32, BoxError>>())
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

/// Created and polled inside a runtime, dropped on a plain thread after the
/// runtime is gone: no panic, the skip is counted.
#[test]
fn dropped_after_the_runtime_is_gone_counts_a_skip() {
    let (layer, runs) = async_flag_layer();
    let tracker = layer.tracker();
    let mut svc = layer.layer(pending_service());
    let rt = current_thread();
    let fut = rt.block_on(async {
        let mut fut = Box::pin(svc.ready().await.unwrap().call(1));
        assert!(futures_poll_once(fut.as_mut()).is_pending());
        fut
    });
    drop(rt);
    std::thread::spawn(move || drop(fut))
        .join()
        .expect("no panic");
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    let s = tracker.stats();
    assert_eq!((s.inline, s.skipped, s.pending), (0, 1, 0));
}

/// The same with a sync hook: it needs no runtime and runs in place.
#[test]
fn sync_hooks_run_without_a_runtime() {
    let runs = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&runs);
    let layer = ShieldedOnCancelLayer::new(sync_hook(move |done| {
        assert!(done.outcome().is_cancelled());
        count.fetch_add(1, Ordering::SeqCst);
    }));
    let tracker = layer.tracker();
    let mut svc = layer.layer(pending_service());
    let rt = current_thread();
    let fut = rt.block_on(async { svc.ready().await.unwrap().call(1) });
    drop(rt);
    std::thread::spawn(move || drop(fut))
        .join()
        .expect("no panic");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(stats(&tracker), (1, 0, 0, 0, 0));
}

/// Called and completed with no runtime anywhere: an async hook is skipped
/// (and counted), a sync hook runs.
#[test]
fn called_outside_any_runtime() {
    let (layer, runs) = async_flag_layer();
    let tracker = layer.tracker();
    let mut svc = layer.layer(service_fn(|n: u32| async move { Ok::<_, Infallible>(n) }));
    let mut fut = pin!(svc.call(1));
    assert_eq!(futures_poll_once(fut.as_mut()), Poll::Ready(Ok(1)));
    drop(svc.call(2));
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    assert_eq!(stats(&tracker), (0, 0, 0, 2, 0));

    let rec = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&rec);
    let layer = ShieldedOnCancelLayer::new(sync_hook(move |_| {
        count.fetch_add(1, Ordering::SeqCst);
    }));
    let mut svc = layer.layer(service_fn(|n: u32| async move { Ok::<_, Infallible>(n) }));
    let fut = pin!(svc.call(1));
    assert!(futures_poll_once(fut).is_ready());
    assert_eq!(rec.load(Ordering::SeqCst), 1);
    assert_eq!(layer.tracker().stats().inline, 1);
}

/// Dropped on a plain thread while its runtime still runs: the hook is
/// handed to that runtime and runs there.
#[test]
fn dropped_off_runtime_while_it_lives_runs_on_the_runtime() {
    let (layer, runs) = async_flag_layer();
    let tracker = layer.tracker();
    let mut svc = layer.layer(pending_service());
    let rt = current_thread();
    let fut = rt.block_on(async { svc.ready().await.unwrap().call(1) });
    std::thread::spawn(move || drop(fut))
        .join()
        .expect("no panic");
    assert_eq!(tracker.stats().spawned, 1);
    assert!(rt.block_on(tracker.drain(Duration::from_secs(5))));
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(stats(&tracker), (0, 1, 0, 0, 0));
}

/// A future dropped while its runtime shuts down (the runtime drops its
/// tasks): the hook polls inline, cannot be spawned, and is counted.
#[test]
fn dropped_by_runtime_shutdown_does_not_panic() {
    let (layer, runs) = async_flag_layer();
    let tracker = layer.tracker();
    let mut svc = layer.layer(pending_service());
    let rt = current_thread();
    rt.block_on(async {
        let fut = svc.ready().await.unwrap().call(1);
        tokio::spawn(fut);
        tokio::task::yield_now().await;
    });
    drop(rt);
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    let s = tracker.stats();
    assert_eq!((s.spawned, s.skipped, s.pending), (1, 1, 0));
}

fn futures_poll_once<F: Future>(fut: std::pin::Pin<&mut F>) -> Poll<F::Output> {
    fut.poll(&mut TaskContext::from_waker(Waker::noop()))
}

// === configuration ===

#[test]
fn hook_timeout_is_validated() {
    let err = ShieldedOnCancelLayer::builder(Recorder::default())
        .hook_timeout(Duration::ZERO)
        .build()
        .unwrap_err();
    assert_eq!(err.setting(), "hook_timeout");
    let err = ShieldedOnCancelLayer::builder(Recorder::default())
        .hook_timeout(Duration::from_secs(25 * 3600))
        .build()
        .unwrap_err();
    assert_eq!(err.setting(), "hook_timeout");
    let err = ShieldedOnCancelLayer::builder(Recorder::default())
        .hook_timeout(Duration::MAX)
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("hook_timeout"), "{err}");
    let layer = ShieldedOnCancelLayer::new(Recorder::default());
    assert_eq!(layer.tracker().hook_timeout(), Duration::from_secs(5));
    let layer = ShieldedOnCancelLayer::builder(Recorder::default())
        .hook_timeout(Duration::from_millis(250))
        .build()
        .unwrap();
    assert_eq!(layer.tracker().hook_timeout(), Duration::from_millis(250));
}

#[test]
fn outcome_names() {
    assert_eq!(Outcome::Success.as_str(), "success");
    assert_eq!(Outcome::Error(ErrorKind::Timeout).as_str(), "error");
    assert_eq!(Outcome::Cancelled.as_str(), "cancelled");
    assert_eq!(
        Outcome::Error(ErrorKind::Timeout).to_string(),
        "error (timeout)"
    );
    assert_eq!(
        Outcome::Error(ErrorKind::Overloaded).error_kind(),
        Some(ErrorKind::Overloaded)
    );
    assert_eq!(Outcome::Success.error_kind(), None);
}
