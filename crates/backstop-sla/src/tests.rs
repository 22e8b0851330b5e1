use std::convert::Infallible;
use std::future::{Future, pending};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use backstop_core::{BoxError, Context, ErrorKind, MAX_DURATION, SlaExpired, classify};
use static_assertions::assert_impl_all;
use tokio::time::{Duration, Instant, advance};
use tokio_test::{assert_pending, assert_ready_err, assert_ready_ok, task};
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_test::{assert_request_eq, mock};

use crate::{SlaTimeout, SlaTimeoutLayer, future::ResponseFuture};

const SLA: Duration = Duration::from_secs(10);
const MS: Duration = Duration::from_millis(1);
const SLA_MINUS_MS: Duration = Duration::from_millis(9_999);

fn layer() -> SlaTimeoutLayer {
    SlaTimeoutLayer::new(SLA).unwrap()
}

fn assert_sla_expired(err: &BoxError) {
    assert!(err.is::<SlaExpired>(), "expected SlaExpired, got {err}");
    assert_eq!(classify(&**err), ErrorKind::Timeout);
}

/// Records the SLA deadline seen in `call` and after an await inside the
/// inner future, then answers with the request.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<Sighting>>>);

type Sighting = (&'static str, Option<Instant>);

impl Seen {
    fn push(&self, at: &'static str) {
        self.0
            .lock()
            .unwrap()
            .push((at, Context::current().sla_deadline()));
    }

    fn take(&self) -> Vec<Sighting> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

fn recording(
    seen: Seen,
) -> impl Service<
    u32,
    Response = u32,
    Error = Infallible,
    Future = impl Future<Output = Result<u32, Infallible>> + Send,
> + Clone {
    service_fn(move |n: u32| {
        seen.push("call");
        let seen = seen.clone();
        async move {
            tokio::task::yield_now().await;
            seen.push("poll");
            Ok::<_, Infallible>(n)
        }
    })
}

// === construction ===

#[test]
fn bad_timeouts_are_rejected_naming_the_setting() {
    for bad in [
        Duration::ZERO,
        MAX_DURATION + Duration::from_nanos(1),
        Duration::MAX,
    ] {
        let err = SlaTimeoutLayer::new(bad).unwrap_err();
        assert_eq!(err.setting(), "timeout", "{bad:?}");
    }
    assert_eq!(
        SlaTimeoutLayer::new(MAX_DURATION).unwrap().timeout(),
        MAX_DURATION
    );
    assert_eq!(
        SlaTimeoutLayer::new(Duration::from_nanos(1))
            .unwrap()
            .timeout(),
        Duration::from_nanos(1)
    );
}

#[test]
fn default_is_sixty_seconds() {
    assert_eq!(
        SlaTimeoutLayer::default().timeout(),
        Duration::from_secs(60)
    );
    let svc = SlaTimeoutLayer::default().layer(());
    assert_eq!(svc.timeout(), Duration::from_secs(60));
}

#[tokio::test(start_paused = true)]
async fn the_longest_timeout_does_not_overflow() {
    // 24 h from "now" is always representable: no panic in `call`.
    let svc = SlaTimeoutLayer::new(MAX_DURATION)
        .unwrap()
        .layer(service_fn(|n: u32| async move { Ok::<_, Infallible>(n) }));
    assert_eq!(svc.oneshot(3).await.unwrap(), 3);
}

// === deadlines ===

#[tokio::test(start_paused = true)]
async fn expires_at_the_first_tick_at_or_after_the_deadline() {
    let (mut svc, mut handle) = mock::spawn_layer::<u32, u32, _>(layer());
    assert_ready_ok!(svc.poll_ready());
    let mut fut = task::spawn(svc.call(1));
    // The inner service was called; its response never comes.
    let _pending = assert_request_eq!(handle, 1);

    advance(SLA_MINUS_MS).await;
    assert_pending!(fut.poll());
    advance(MS).await;
    assert!(fut.is_woken());
    let err = assert_ready_err!(fut.poll());
    assert_sla_expired(&err);
}

#[tokio::test(start_paused = true)]
async fn a_deadline_between_ticks_expires_at_the_next_tick() {
    // Timers tick every millisecond: a deadline half-way between two ticks
    // expires at the later one, never before the deadline.
    let sla = Duration::from_micros(10_000_500);
    let (mut svc, mut handle) =
        mock::spawn_layer::<u32, u32, _>(SlaTimeoutLayer::new(sla).unwrap());
    assert_ready_ok!(svc.poll_ready());
    let mut fut = task::spawn(svc.call(1));
    let _pending = assert_request_eq!(handle, 1);

    advance(SLA).await; // 10.000 s: before the deadline
    assert_pending!(fut.poll());
    advance(MS).await; // 10.001 s: the first tick after it
    assert_sla_expired(&assert_ready_err!(fut.poll()));
}

#[tokio::test(start_paused = true)]
async fn a_shorter_outer_deadline_wins() {
    let seen = Seen::default();
    let mut svc = layer().layer(service_fn({
        let seen = seen.clone();
        move |_: u32| {
            seen.push("call");
            pending::<Result<u32, Infallible>>()
        }
    }));
    let outer = Instant::now() + Duration::from_secs(2);
    let mut fut = task::spawn(
        Context::new()
            .with_sla_deadline(outer)
            .sync_scope(|| svc.call(1)),
    );
    assert_eq!(seen.take(), [("call", Some(outer))]);

    advance(Duration::from_millis(1_999)).await;
    assert_pending!(fut.poll());
    advance(MS).await;
    assert_sla_expired(&assert_ready_err!(fut.poll()));
}

#[tokio::test(start_paused = true)]
async fn a_longer_outer_deadline_is_shortened() {
    let seen = Seen::default();
    let svc = layer().layer(recording(seen.clone()));
    let start = Instant::now();
    Context::new()
        .with_sla_deadline(start + Duration::from_secs(3600))
        .scope(svc.oneshot(1))
        .await
        .unwrap();
    let own = Some(start + SLA);
    assert_eq!(seen.take(), [("call", own), ("poll", own)]);
}

#[tokio::test(start_paused = true)]
async fn the_inner_service_sees_the_deadline_in_call_and_poll() {
    let seen = Seen::default();
    let svc = layer().layer(recording(seen.clone()));
    let start = Instant::now();
    assert_eq!(svc.oneshot(5).await.unwrap(), 5);
    let want = Some(start + SLA);
    assert_eq!(seen.take(), [("call", want), ("poll", want)]);
    // Nothing leaks outside the call.
    assert!(Context::try_current().is_none());
}

#[tokio::test(start_paused = true)]
async fn an_expired_outer_deadline_fails_without_calling_inner() {
    let calls = Arc::new(AtomicUsize::new(0));
    let mut svc = layer().layer(service_fn({
        let calls = Arc::clone(&calls);
        move |n: u32| {
            calls.fetch_add(1, Ordering::SeqCst);
            async move { Ok::<_, Infallible>(n) }
        }
    }));
    let past = Instant::now();
    advance(Duration::from_secs(1)).await;

    for outer in [past, Instant::now()] {
        let ctx = Context::new().with_sla_deadline(outer);
        let mut fut = task::spawn(ctx.sync_scope(|| svc.call(1)));
        assert_sla_expired(&assert_ready_err!(fut.poll()));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    // One nanosecond left is enough to call the inner service.
    let ctx = Context::new().with_sla_deadline(Instant::now() + Duration::from_nanos(1));
    let mut fut = task::spawn(ctx.sync_scope(|| svc.call(1)));
    assert_eq!(assert_ready_ok!(fut.poll()), 1);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn the_response_wins_when_both_are_ready() {
    let (mut svc, mut handle) = mock::spawn_layer::<u32, u32, _>(layer());
    assert_ready_ok!(svc.poll_ready());
    let mut fut = task::spawn(svc.call(1));
    assert_pending!(fut.poll()); // the timer is registered
    advance(SLA).await;
    assert!(fut.is_woken()); // the timer fired
    assert_request_eq!(handle, 1).send_response(7);
    assert_eq!(assert_ready_ok!(fut.poll()), 7);
}

#[tokio::test(start_paused = true)]
async fn inner_errors_pass_through_boxed() {
    let (mut svc, mut handle) = mock::spawn_layer::<u32, u32, _>(layer());
    assert_ready_ok!(svc.poll_ready());
    let mut fut = task::spawn(svc.call(1));
    assert_request_eq!(handle, 1).send_error("upstream broke");
    let err = assert_ready_err!(fut.poll());
    assert!(!err.is::<SlaExpired>());
    assert_eq!(err.to_string(), "upstream broke");
    assert_eq!(classify(&*err), ErrorKind::UpstreamFailure);
}

#[tokio::test(start_paused = true)]
async fn poll_ready_passes_readiness_and_errors_through() {
    let (mut svc, mut handle) = mock::spawn_layer::<u32, u32, _>(layer());
    handle.allow(0);
    assert_pending!(svc.poll_ready());
    handle.allow(1);
    assert_ready_ok!(svc.poll_ready());
    handle.send_error("not ready");
    let err = assert_ready_err!(svc.poll_ready());
    assert_eq!(err.to_string(), "not ready");
}

// === cancellation ===

/// Records, when dropped, that it was dropped and the SLA deadline in scope
/// at that moment.
struct DropProbe(Arc<Mutex<Option<Sighting>>>);

impl Drop for DropProbe {
    fn drop(&mut self) {
        *self.0.lock().unwrap() = Some(("drop", Context::current().sla_deadline()));
    }
}

#[tokio::test(start_paused = true)]
async fn dropping_the_future_releases_the_inner_future() {
    let dropped = Arc::new(Mutex::new(None));
    let mut svc = layer().layer(service_fn({
        let dropped = Arc::clone(&dropped);
        move |_: u32| {
            let probe = DropProbe(Arc::clone(&dropped));
            async move {
                let _probe = probe;
                pending::<Result<u32, Infallible>>().await
            }
        }
    }));
    let start = Instant::now();
    let mut fut = task::spawn(svc.call(1));
    assert_pending!(fut.poll());
    advance(Duration::from_secs(1)).await;
    assert_pending!(fut.poll());
    assert!(dropped.lock().unwrap().is_none());
    drop(fut);
    // Dropped, and dropped inside the request's context scope.
    assert_eq!(*dropped.lock().unwrap(), Some(("drop", Some(start + SLA))));
}

#[tokio::test(start_paused = true)]
async fn dropping_before_the_first_poll_releases_the_inner_future() {
    let (mut svc, mut handle) = mock::spawn_layer::<u32, u32, _>(layer());
    assert_ready_ok!(svc.poll_ready());
    let fut = svc.call(1);
    let send = assert_request_eq!(handle, 1);
    drop(fut);
    // The mock's response channel is closed once the future is gone: the
    // response goes nowhere, and nothing panics.
    send.send_response(1);
}

// === clones ===

#[tokio::test(start_paused = true)]
async fn clones_behave_the_same() {
    let seen = Seen::default();
    let svc = layer().layer(recording(seen.clone()));
    let mut a = svc.clone();
    let mut b = svc;
    assert_eq!(a.timeout(), b.timeout());

    let t0 = Instant::now();
    let mut fa = task::spawn(a.call(1));
    advance(Duration::from_secs(4)).await;
    let t1 = Instant::now();
    let mut fb = task::spawn(b.call(2));
    // Each call takes its own deadline: clones share no timer or state.
    assert_eq!(
        seen.take(),
        [("call", Some(t0 + SLA)), ("call", Some(t1 + SLA))]
    );
    assert_pending!(fa.poll()); // the inner future yields once
    assert_pending!(fb.poll());
    assert_eq!(assert_ready_ok!(fa.poll()), 1);
    assert_eq!(assert_ready_ok!(fb.poll()), 2);

    let mut a = layer().layer(service_fn(|_: u32| pending::<Result<u32, Infallible>>()));
    let mut b = a.clone();
    let mut fa = task::spawn(a.call(1));
    let mut fb = task::spawn(b.call(2));
    assert_pending!(fa.poll());
    assert_pending!(fb.poll());
    advance(SLA).await;
    assert_sla_expired(&assert_ready_err!(fa.poll()));
    assert_sla_expired(&assert_ready_err!(fb.poll()));
}

#[tokio::test(start_paused = true)]
async fn accessors_reach_the_inner_service() {
    let mut svc = layer().layer(7_u32);
    assert_eq!(*svc.get_ref(), 7);
    *svc.get_mut() = 8;
    assert_eq!(svc.into_inner(), 8);
    let fut = layer()
        .layer(service_fn(|n: u32| async move { Ok::<_, Infallible>(n) }))
        .call(1);
    assert!(format!("{fut:?}").contains("deadline"), "{fut:?}");
}

// === compile-time ===

type Inner = tower::util::BoxCloneSyncService<u32, u32, BoxError>;
assert_impl_all!(SlaTimeoutLayer: Send, Sync, Clone, Copy, std::fmt::Debug);
assert_impl_all!(SlaTimeout<Inner>: Send, Sync, Clone, std::fmt::Debug);
assert_impl_all!(ResponseFuture<std::future::Ready<Result<u32, BoxError>>>: Send, Sync);
assert_impl_all!(
    <SlaTimeout<Inner> as Service<u32>>::Future: Send,
    Future<Output = Result<u32, BoxError>>
);
