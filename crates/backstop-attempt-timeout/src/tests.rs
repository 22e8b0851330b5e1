use std::convert::Infallible;
use std::future::{Future, pending};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use backstop_core::{
    AttemptPhase, AttemptTimedOut, BoxError, Context, ErrorKind, MAX_DURATION, SlaExpired, classify,
};
use backstop_sla::SlaTimeoutLayer;
use static_assertions::assert_impl_all;
use tokio::time::{Duration, Instant, advance};
use tokio_test::{assert_pending, assert_ready_err, assert_ready_ok, task};
use tower::{Layer, Service, ServiceBuilder, ServiceExt, service_fn};
use tower_test::{assert_request_eq, mock};

use crate::{AttemptTimeout, AttemptTimeoutLayer, future::ResponseFuture};

const TIMEOUT: Duration = Duration::from_secs(3);
const MS: Duration = Duration::from_millis(1);

fn layer() -> AttemptTimeoutLayer {
    AttemptTimeoutLayer::new(TIMEOUT).unwrap()
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// `d` minus one millisecond (the last tick before a deadline).
fn before(d: Duration) -> Duration {
    d.saturating_sub(MS)
}

pub(crate) fn assert_sla_expired(err: &BoxError) {
    assert!(err.is::<SlaExpired>(), "expected SlaExpired, got {err}");
    assert_eq!(classify(&**err), ErrorKind::Timeout);
}

pub(crate) fn assert_attempt_timed_out(err: &BoxError, timeout: Duration, phase: AttemptPhase) {
    let Some(e) = err.downcast_ref::<AttemptTimedOut>() else {
        panic!("expected AttemptTimedOut, got {err}");
    };
    assert_eq!((e.timeout(), e.phase()), (timeout, phase));
    assert_eq!(classify(&**err), ErrorKind::UpstreamFailure);
}

/// The attempt deadline seen in `call` and in the inner future.
type Seen = (Option<Instant>, Option<Instant>);

/// A `u32` service that answers with the attempt deadline it saw in `call`
/// and, after an await, in its future.
fn deadline_probe() -> impl Service<
    u32,
    Response = Seen,
    Error = Infallible,
    Future = impl Future<Output = Result<Seen, Infallible>> + Send,
> + Clone {
    service_fn(|_: u32| {
        let in_call = Context::current().attempt_deadline();
        async move {
            tokio::task::yield_now().await;
            Ok((in_call, Context::current().attempt_deadline()))
        }
    })
}

// === construction ===

#[test]
fn bad_timeouts_are_rejected_naming_the_setting() {
    for bad in [Duration::ZERO, MAX_DURATION + MS, Duration::MAX] {
        let err = AttemptTimeoutLayer::new(bad).unwrap_err();
        assert_eq!(err.setting(), "timeout", "{bad:?}");
    }
    assert_eq!(
        AttemptTimeoutLayer::new(MAX_DURATION).unwrap().timeout(),
        MAX_DURATION
    );
}

#[test]
fn default_is_thirty_seconds() {
    assert_eq!(AttemptTimeoutLayer::default().timeout(), secs(30));
    assert_eq!(AttemptTimeoutLayer::default().layer(()).timeout(), secs(30));
}

// === the must-show: the upstream sees min(attempt timeout, remaining SLA) ===

#[tokio::test(start_paused = true)]
async fn a_u32_service_sees_min_of_attempt_timeout_and_remaining_sla() {
    let svc = ServiceBuilder::new()
        .layer(SlaTimeoutLayer::new(secs(10)).unwrap())
        .layer(layer())
        .service(deadline_probe());
    let t0 = Instant::now();

    // Plenty of SLA left: the attempt timeout decides.
    let want = Some(t0 + TIMEOUT);
    assert_eq!(svc.clone().oneshot(1).await.unwrap(), (want, want));

    // Outer SLA set at t0 for 10 s; 8 s later only 2 s remain, less than the
    // 3 s attempt timeout: the SLA decides.
    let outer = Context::new().with_sla_deadline(t0 + secs(10));
    advance(secs(8)).await;
    let want = Some(t0 + secs(10));
    assert_eq!(
        outer.scope(svc.clone().oneshot(2)).await.unwrap(),
        (want, want)
    );

    // Exactly equal: both read the same instant.
    let t1 = Instant::now();
    let outer = Context::new().with_sla_deadline(t1 + TIMEOUT);
    let want = Some(t1 + TIMEOUT);
    assert_eq!(outer.scope(svc.oneshot(3)).await.unwrap(), (want, want));
}

// === deadlines and their errors ===

#[tokio::test(start_paused = true)]
async fn expires_at_its_own_deadline_as_an_attempt_timeout() {
    let (mut svc, mut handle) = mock::spawn_layer::<u32, u32, _>(layer());
    assert_ready_ok!(svc.poll_ready());
    let mut fut = task::spawn(svc.call(1));
    let _pending = assert_request_eq!(handle, 1);

    advance(before(TIMEOUT)).await;
    assert_pending!(fut.poll());
    advance(MS).await;
    assert!(fut.is_woken());
    let err = assert_ready_err!(fut.poll());
    assert_attempt_timed_out(&err, TIMEOUT, AttemptPhase::Response);
}

#[tokio::test(start_paused = true)]
async fn an_attempt_capped_by_the_sla_fails_as_the_sla_error() {
    // SLA earlier than the attempt deadline, and SLA equal to it: both are
    // the SLA's (504), never an attempt timeout (502).
    for sla_in in [secs(2), TIMEOUT] {
        let (mut svc, mut handle) = mock::spawn_layer::<u32, u32, _>(layer());
        assert_ready_ok!(svc.poll_ready());
        let ctx = Context::new().with_sla_deadline(Instant::now() + sla_in);
        let mut fut = task::spawn(ctx.sync_scope(|| svc.call(1)));
        let _pending = assert_request_eq!(handle, 1);

        advance(before(sla_in)).await;
        assert_pending!(fut.poll());
        advance(MS).await;
        let err = assert_ready_err!(fut.poll());
        assert_sla_expired(&err);
        assert!(!err.is::<AttemptTimedOut>());
    }
}

#[tokio::test(start_paused = true)]
async fn a_passed_sla_fails_at_once_without_calling_inner() {
    let calls = Arc::new(AtomicUsize::new(0));
    let mut svc = layer().layer(service_fn({
        let calls = Arc::clone(&calls);
        move |n: u32| {
            calls.fetch_add(1, Ordering::SeqCst);
            async move { Ok::<_, Infallible>(n) }
        }
    }));
    let past = Instant::now();
    advance(secs(1)).await;
    for sla in [past, Instant::now()] {
        let ctx = Context::new().with_sla_deadline(sla);
        let mut fut = task::spawn(ctx.sync_scope(|| svc.call(1)));
        assert_sla_expired(&assert_ready_err!(fut.poll()));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn the_response_wins_when_both_are_ready() {
    let (mut svc, mut handle) = mock::spawn_layer::<u32, u32, _>(layer());
    assert_ready_ok!(svc.poll_ready());
    let mut fut = task::spawn(svc.call(1));
    assert_pending!(fut.poll());
    advance(TIMEOUT).await;
    assert!(fut.is_woken());
    assert_request_eq!(handle, 1).send_response(9);
    assert_eq!(assert_ready_ok!(fut.poll()), 9);
}

#[tokio::test(start_paused = true)]
async fn inner_errors_and_readiness_pass_through() {
    let (mut svc, mut handle) = mock::spawn_layer::<u32, u32, _>(layer());
    handle.allow(0);
    assert_pending!(svc.poll_ready());
    handle.allow(1);
    assert_ready_ok!(svc.poll_ready());
    let mut fut = task::spawn(svc.call(1));
    assert_request_eq!(handle, 1).send_error("connection refused");
    let err = assert_ready_err!(fut.poll());
    assert_eq!(err.to_string(), "connection refused");
    assert_eq!(classify(&*err), ErrorKind::UpstreamFailure);
    handle.send_error("broken");
    assert_eq!(assert_ready_err!(svc.poll_ready()).to_string(), "broken");
}

// === cancellation ===

type Sighting = (&'static str, Option<Instant>);

/// Records, when dropped, the attempt deadline in scope at that moment.
struct DropProbe(Arc<Mutex<Option<Sighting>>>);

impl Drop for DropProbe {
    fn drop(&mut self) {
        *self.0.lock().unwrap() = Some(("drop", Context::current().attempt_deadline()));
    }
}

#[tokio::test(start_paused = true)]
async fn dropping_the_future_releases_the_inner_future_in_scope() {
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
    advance(secs(1)).await;
    assert_pending!(fut.poll());
    assert!(dropped.lock().unwrap().is_none());
    drop(fut);
    assert_eq!(
        *dropped.lock().unwrap(),
        Some(("drop", Some(start + TIMEOUT)))
    );
}

// === clones ===

#[tokio::test(start_paused = true)]
async fn clones_behave_the_same() {
    let svc = layer().layer(deadline_probe());
    let t0 = Instant::now();
    let a = svc.clone().oneshot(1).await.unwrap();
    advance(secs(1)).await;
    let b = svc.oneshot(2).await.unwrap();
    // Each call takes its own deadline; clones share no timer.
    assert_eq!(a, (Some(t0 + TIMEOUT), Some(t0 + TIMEOUT)));
    assert_eq!(b, (Some(t0 + secs(4)), Some(t0 + secs(4))));

    let mut a = layer().layer(service_fn(|_: u32| pending::<Result<u32, Infallible>>()));
    let mut b = a.clone();
    let mut fa = task::spawn(a.call(1));
    let mut fb = task::spawn(b.call(2));
    assert_pending!(fa.poll());
    assert_pending!(fb.poll());
    advance(TIMEOUT).await;
    assert_attempt_timed_out(
        &assert_ready_err!(fa.poll()),
        TIMEOUT,
        AttemptPhase::Response,
    );
    assert_attempt_timed_out(
        &assert_ready_err!(fb.poll()),
        TIMEOUT,
        AttemptPhase::Response,
    );
}

#[tokio::test(start_paused = true)]
async fn accessors_and_debug() {
    let mut svc = layer().layer(7_u32);
    assert_eq!(*svc.get_ref(), 7);
    *svc.get_mut() = 8;
    assert_eq!(svc.into_inner(), 8);
    let fut = layer()
        .layer(service_fn(|n: u32| async move { Ok::<_, Infallible>(n) }))
        .call(1);
    let dbg = format!("{fut:?}");
    assert!(dbg.contains("capped_by_sla: false"), "{dbg}");
}

// === compile-time ===

type Inner = tower::util::BoxCloneSyncService<u32, u32, BoxError>;
assert_impl_all!(AttemptTimeoutLayer: Send, Sync, Clone, Copy, std::fmt::Debug);
assert_impl_all!(AttemptTimeout<Inner>: Send, Sync, Clone, std::fmt::Debug);
assert_impl_all!(ResponseFuture<std::future::Ready<Result<u32, BoxError>>>: Send, Sync);
assert_impl_all!(
    <AttemptTimeout<Inner> as Service<u32>>::Future: Send,
    Future<Output = Result<u32, BoxError>>
);
