//! ConcurrencyLimit on any service: shared state, FIFO, deadlines, release on
//! completion, cancellation at each await point, bad input.

use std::sync::Arc;

use backstop_concurrency::{ConcurrencyLimit, ConcurrencyLimitLayer, future::ResponseFuture};
use backstop_core::{
    AdmissionTicket, BoxError, Context, ErrorKind, OverloadReason, Overloaded, QueueSlots,
    SlaExpired, WaitBound, classify,
};
use backstop_test_util::call_with_ticket;
use static_assertions::assert_impl_all;
use tokio::time::{Duration, Instant};
use tokio_test::{assert_pending, assert_ready_err, assert_ready_ok, task};
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_test::{assert_request_eq, mock};

type Mock = mock::Mock<&'static str, &'static str>;
type Handle = mock::Handle<&'static str, &'static str>;

assert_impl_all!(ConcurrencyLimitLayer: Send, Sync, Clone);
assert_impl_all!(ConcurrencyLimit<Mock>: Send, Sync, Clone);
assert_impl_all!(ResponseFuture<Mock, &'static str>: Send, Sync);
assert_impl_all!(backstop_concurrency::ConcurrencyHandle: Send, Sync, Clone);

fn limited(max: usize) -> (ConcurrencyLimit<Mock>, Handle, ConcurrencyLimitLayer) {
    let layer = ConcurrencyLimitLayer::new(max).unwrap();
    let (mock, handle) = mock::pair();
    (layer.layer(mock), handle, layer)
}

fn ticket(slots: &Arc<QueueSlots>, at: Instant, bound: WaitBound) -> AdmissionTicket {
    slots.try_acquire(at, bound).expect("a free slot")
}

#[tokio::test(start_paused = true)]
async fn clones_share_one_limit() {
    let (svc, mut handle, layer) = limited(1);
    let mut a = svc.clone();
    let mut b = svc.clone();

    let mut fa = task::spawn(a.call("a"));
    let mut fb = task::spawn(b.call("b"));
    assert_pending!(fa.poll());
    assert_pending!(fb.poll(), "the clone waits: one limit");
    assert_eq!(layer.handle().in_flight(), 1);

    assert_request_eq!(handle, "a").send_response("A");
    assert_eq!(assert_ready_ok!(fa.poll()), "A");
    assert!(fb.is_woken());
    assert_pending!(fb.poll());
    assert_request_eq!(handle, "b").send_response("B");
    assert_eq!(assert_ready_ok!(fb.poll()), "B");
    assert_eq!(layer.handle().available_permits(), 1);
}

#[tokio::test(start_paused = true)]
async fn services_of_one_layer_share_it_two_layers_are_two_limits() {
    let layer = ConcurrencyLimitLayer::new(1).unwrap();
    let other_layer = ConcurrencyLimitLayer::new(1).unwrap();
    let (m1, mut h1) = mock::pair::<&'static str, &'static str>();
    let (m2, mut h2) = mock::pair::<&'static str, &'static str>();
    let (m3, _h3) = mock::pair::<&'static str, &'static str>();
    let mut s1 = layer.layer(m1);
    let mut s2 = layer.clone().layer(m3);
    let mut s3 = other_layer.layer(m2);

    let mut f1 = task::spawn(s1.call("1"));
    let mut f2 = task::spawn(s2.call("2"));
    let mut f3 = task::spawn(s3.call("3"));
    assert_pending!(f1.poll());
    assert_pending!(f2.poll(), "same layer (cloned): same limit");
    assert_pending!(f3.poll());
    assert_request_eq!(h2, "3").send_response("three");
    assert_eq!(
        assert_ready_ok!(f3.poll()),
        "three",
        "other layer: own limit"
    );
    assert_request_eq!(h1, "1").send_response("one");
    assert_ready_ok!(f1.poll());
    drop(f2);
    assert_eq!(layer.handle().available_permits(), 1);
}

#[tokio::test(start_paused = true)]
async fn poll_ready_reserves_nothing() {
    let (svc, _handle, layer) = limited(2);
    let mut clones: Vec<_> = (0..10).map(|_| svc.clone()).collect();
    for c in &mut clones {
        // Ready at once, every time, and no permit is taken.
        c.ready().await.unwrap();
    }
    assert_eq!(layer.handle().available_permits(), 2);
    assert_eq!(layer.handle().in_flight(), 0);
    assert_eq!(layer.handle().max(), 2);
}

#[tokio::test(start_paused = true)]
async fn waiters_are_served_first_come_first_served() {
    let (svc, mut handle, _layer) = limited(1);
    let mut holder = task::spawn(svc.clone().call("holder"));
    assert_pending!(holder.poll());
    let names = ["0", "1", "2"];
    let mut waiters: Vec<_> = names
        .iter()
        .map(|&r| task::spawn(svc.clone().call(r)))
        .collect();
    for w in &mut waiters {
        assert_pending!(w.poll());
    }
    assert_request_eq!(handle, "holder").send_response("ok");
    assert_ready_ok!(holder.poll());
    // A newcomer after the release does not jump the queue.
    let mut late = task::spawn(svc.clone().call("late"));
    assert_pending!(late.poll());
    for i in 0..names.len() {
        assert!(waiters[i].is_woken(), "waiter {i} is next");
        for (j, w) in waiters.iter().enumerate().skip(i + 1) {
            assert!(!w.is_woken(), "waiter {j} must wait for {i}");
        }
        assert!(!late.is_woken());
        assert_pending!(waiters[i].poll());
        assert_request_eq!(handle, names[i]).send_response("ok");
        assert_ready_ok!(waiters[i].poll());
    }
    assert!(late.is_woken());
    assert_pending!(late.poll());
    assert_request_eq!(handle, "late").send_response("ok");
    assert_ready_ok!(late.poll());
}

#[tokio::test(start_paused = true)]
async fn permit_held_until_the_future_completes() {
    let (mut svc, mut handle, layer) = limited(2);
    let h = layer.handle();
    let mut f = task::spawn(svc.call("a"));
    // A free permit and a ready service: taken and called in `call`.
    assert_eq!(h.in_flight(), 1, "taken in call on the fast path");
    let req = assert_request_eq!(handle, "a");
    assert_pending!(f.poll());
    assert_pending!(f.poll());
    assert_eq!(h.in_flight(), 1, "held while the inner future runs");
    req.send_response("A");
    assert_ready_ok!(f.poll());
    assert_eq!(h.in_flight(), 0);

    let mut f = task::spawn(svc.call("b"));
    assert_pending!(f.poll());
    assert_request_eq!(handle, "b").send_error("boom");
    let err = assert_ready_err!(f.poll());
    assert_eq!(err.to_string(), "boom");
    assert_eq!(classify(&*err), ErrorKind::UpstreamFailure);
    assert_eq!(h.in_flight(), 0, "released on error too");
}

#[tokio::test(start_paused = true)]
async fn sla_deadline_bounds_the_wait_without_a_ticket() {
    let (mut svc, mut handle, layer) = limited(1);
    let mut first = task::spawn(svc.call("first"));
    assert_pending!(first.poll());

    let deadline = Instant::now() + Duration::from_secs(2);
    let ctx = Context::new().with_sla_deadline(deadline);
    let mut waiter = task::spawn(ctx.sync_scope(|| svc.call("waiter")));
    assert_pending!(waiter.poll());
    tokio::time::advance(Duration::from_millis(1999)).await;
    assert_pending!(waiter.poll());
    tokio::time::advance(Duration::from_millis(1)).await;
    let err = assert_ready_err!(waiter.poll());
    assert!(err.is::<SlaExpired>(), "{err}");
    assert_eq!(classify(&*err), ErrorKind::Timeout);
    assert_eq!(Instant::now(), deadline);

    assert_request_eq!(handle, "first").send_response("ok");
    assert_ready_ok!(first.poll());
    assert_eq!(layer.handle().available_permits(), 1);
}

#[tokio::test(start_paused = true)]
async fn ticket_deadline_max_wait_gives_wait_exceeded() {
    let (mut svc, mut handle, layer) = limited(1);
    let slots = QueueSlots::new(4, Duration::from_secs(3));
    let mut first = task::spawn(svc.call("first"));
    assert_pending!(first.poll());

    let at = Instant::now() + Duration::from_secs(5);
    let t = ticket(&slots, at, WaitBound::MaxWait);
    let ctx = Context::new().with_sla_deadline(at + Duration::from_secs(60));
    let mut waiter = task::spawn(ctx.sync_scope(|| call_with_ticket(t, || svc.call("waiter"))));
    assert_eq!(slots.depth(), 1, "the limiter took the ticket in call");
    assert_pending!(waiter.poll());
    tokio::time::advance(Duration::from_secs(5)).await;
    let err = assert_ready_err!(waiter.poll());
    let o = err.downcast_ref::<Overloaded>().expect("Overloaded");
    assert_eq!(o.reason(), OverloadReason::WaitExceeded);
    assert_eq!(o.retry_after(), Duration::from_secs(3));
    assert_eq!(classify(&*err), ErrorKind::Overloaded);
    assert_eq!(slots.depth(), 0, "the failed waiter left the queue");

    assert_request_eq!(handle, "first").send_response("ok");
    assert_ready_ok!(first.poll());
    assert_eq!(layer.handle().available_permits(), 1);
}

#[tokio::test(start_paused = true)]
async fn ticket_deadline_equal_to_sla_gives_sla_expired() {
    let (mut svc, _handle, _layer) = limited(1);
    let slots = QueueSlots::new(4, Duration::from_secs(3));
    let mut first = task::spawn(svc.call("first"));
    assert_pending!(first.poll());

    let at = Instant::now() + Duration::from_secs(1);
    let t = ticket(&slots, at, WaitBound::Sla);
    let ctx = Context::new().with_sla_deadline(at);
    let mut waiter = task::spawn(ctx.sync_scope(|| call_with_ticket(t, || svc.call("waiter"))));
    assert_pending!(waiter.poll());
    tokio::time::advance(Duration::from_secs(1)).await;
    let err = assert_ready_err!(waiter.poll());
    assert!(err.is::<SlaExpired>(), "{err}");
    assert!(backstop_core::find::<Overloaded>(&*err).is_none());
    assert_eq!(slots.depth(), 0);
}

#[tokio::test(start_paused = true)]
async fn zero_max_wait_never_waits() {
    let (mut svc, mut handle, layer) = limited(1);
    let slots = QueueSlots::new(4, Duration::from_secs(3));
    let now = Instant::now();

    // Capacity free: admitted, no spurious rejection.
    let t = ticket(&slots, now, WaitBound::MaxWait);
    let mut first = task::spawn(call_with_ticket(t, || svc.call("first")));
    assert_pending!(first.poll());
    assert_request_eq!(handle, "first");
    assert_eq!(slots.depth(), 0, "admitted: left the queue");

    // No capacity: fails on the first poll, without time passing.
    let t = ticket(&slots, now, WaitBound::MaxWait);
    let mut second = task::spawn(call_with_ticket(t, || svc.call("second")));
    let err = assert_ready_err!(second.poll());
    assert_eq!(
        err.downcast_ref::<Overloaded>().map(Overloaded::reason),
        Some(OverloadReason::WaitExceeded)
    );
    assert_eq!(Instant::now(), now);
    assert_eq!(slots.depth(), 0);
    assert_eq!(layer.handle().in_flight(), 1);
}

#[tokio::test(start_paused = true)]
async fn deadline_never_bounds_the_call() {
    let (mut svc, mut handle, layer) = limited(1);
    let ctx = Context::new().with_sla_deadline(Instant::now() + Duration::from_secs(1));
    let mut f = task::spawn(ctx.sync_scope(|| svc.call("slow")));
    assert_pending!(f.poll());
    let req = assert_request_eq!(handle, "slow");
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_pending!(f.poll(), "admitted: the wait deadline no longer applies");
    req.send_response("done");
    assert_eq!(assert_ready_ok!(f.poll()), "done");
    assert_eq!(layer.handle().in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn inner_readiness_is_awaited_within_the_deadline() {
    let (mut svc, mut handle, layer) = limited(1);
    handle.allow(0);
    let deadline = Instant::now() + Duration::from_secs(1);
    let ctx = Context::new().with_sla_deadline(deadline);
    let mut f = task::spawn(ctx.clone().sync_scope(|| svc.call("a")));
    assert_pending!(f.poll());
    assert_eq!(layer.handle().in_flight(), 1, "permit held while not ready");
    handle.allow(1);
    assert!(f.is_woken());
    assert_pending!(f.poll());
    assert_request_eq!(handle, "a").send_response("A");
    assert_ready_ok!(f.poll());

    // Not ready until the deadline: SLA error, permit back.
    handle.allow(0);
    let mut f = task::spawn(ctx.sync_scope(|| svc.call("b")));
    assert_pending!(f.poll());
    tokio::time::advance(Duration::from_secs(1)).await;
    let err = assert_ready_err!(f.poll());
    assert!(err.is::<SlaExpired>());
    assert_eq!(layer.handle().in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn inner_readiness_error_passes_through_and_releases() {
    let (mut svc, mut handle, layer) = limited(1);
    handle.send_error("not ready");
    let mut f = task::spawn(svc.call("a"));
    let err = assert_ready_err!(f.poll());
    assert_eq!(err.to_string(), "not ready");
    assert_eq!(layer.handle().in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn context_captured_at_call_is_in_scope_for_the_inner_call() {
    let layer = ConcurrencyLimitLayer::new(1).unwrap();
    let mut svc = layer.layer(service_fn(|()| async {
        Ok::<_, BoxError>(Context::current().sla_deadline())
    }));
    let deadline = Instant::now() + Duration::from_secs(7);
    let fut = Context::new()
        .with_sla_deadline(deadline)
        .sync_scope(|| svc.call(()));
    // Polled outside any scope.
    assert_eq!(fut.await.unwrap(), Some(deadline));
}

#[tokio::test(start_paused = true)]
async fn dropping_at_each_await_point_releases() {
    let (svc, mut handle, layer) = limited(1);
    let h = layer.handle();
    let slots = QueueSlots::new(8, Duration::from_secs(3));

    // 1. Dropped before the first poll. The fast path took the permit and
    //    called the inner service in `call`: both come back at the drop.
    let unpolled = svc.clone().call("unpolled");
    assert_eq!(h.in_flight(), 1);
    drop(unpolled);
    assert_eq!(h.available_permits(), 1);
    drop(assert_request_eq!(handle, "unpolled"));

    // 2. Dropped while queued: the next waiter is not skipped.
    let mut holder = task::spawn(svc.clone().call("holder"));
    assert_pending!(holder.poll());
    let t = ticket(
        &slots,
        Instant::now() + Duration::from_secs(9),
        WaitBound::MaxWait,
    );
    let mut queued = task::spawn(call_with_ticket(t, || svc.clone().call("queued")));
    let mut next = task::spawn(svc.clone().call("next"));
    assert_pending!(queued.poll());
    assert_pending!(next.poll());
    assert_eq!(slots.depth(), 1);
    drop(queued);
    assert_eq!(slots.depth(), 0, "dropped waiter left the admission queue");
    assert_request_eq!(handle, "holder").send_response("ok");
    assert_ready_ok!(holder.poll());
    assert!(next.is_woken(), "the permit went to the next live waiter");
    assert_pending!(next.poll());
    assert_request_eq!(handle, "next").send_response("ok");
    assert_ready_ok!(next.poll());
    assert_eq!(h.available_permits(), 1);

    // 3. Dropped while waiting for the inner service's readiness.
    handle.allow(0);
    let mut f = task::spawn(svc.clone().call("unready"));
    assert_pending!(f.poll());
    assert_eq!(h.in_flight(), 1);
    drop(f);
    assert_eq!(h.in_flight(), 0);
    handle.allow(u64::MAX);

    // 4. Dropped after the inner call.
    let mut f = task::spawn(svc.clone().call("called"));
    assert_pending!(f.poll());
    let _req = assert_request_eq!(handle, "called");
    assert_eq!(h.in_flight(), 1);
    drop(f);
    assert_eq!(h.in_flight(), 0);
}

#[test]
fn bad_input_names_the_setting() {
    let err = ConcurrencyLimitLayer::new(0).unwrap_err();
    assert_eq!(err.setting(), "max_in_flight");
    assert_eq!(
        err.to_string(),
        "invalid `max_in_flight`: must be at least 1"
    );
    let err = ConcurrencyLimitLayer::new(usize::MAX).unwrap_err();
    assert_eq!(err.setting(), "max_in_flight");
    assert!(ConcurrencyLimitLayer::new(1).is_ok());
}

#[test]
fn debug_output_is_useful() {
    let layer = ConcurrencyLimitLayer::new(3).unwrap();
    assert!(format!("{layer:?}").contains("max: 3"));
    assert!(format!("{:?}", layer.handle()).contains("in_flight: 0"));
}

#[test]
fn the_future_stays_small() {
    // The timer and the wait-list entry are boxed only when a request must
    // wait; the uncontended future carries neither inline.
    type Noop = tower::util::ServiceFn<fn(u64) -> std::future::Ready<Result<u64, BoxError>>>;
    let size = std::mem::size_of::<ResponseFuture<Noop, u64>>();
    assert!(size <= 256, "ResponseFuture grew to {size} bytes");
    assert!(size < std::mem::size_of::<tokio::time::Sleep>() * 2);
}

/// An always-ready service that counts its clones and its calls.
#[derive(Default)]
struct Counting {
    clones: Arc<std::sync::atomic::AtomicUsize>,
    calls: Arc<std::sync::atomic::AtomicUsize>,
}

impl Clone for Counting {
    fn clone(&self) -> Self {
        self.clones
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self {
            clones: Arc::clone(&self.clones),
            calls: Arc::clone(&self.calls),
        }
    }
}

impl Service<u64> for Counting {
    type Response = u64;
    type Error = BoxError;
    type Future = std::future::Ready<Result<u64, BoxError>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: u64) -> Self::Future {
        self.calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        std::future::ready(Ok(req))
    }
}

#[tokio::test(start_paused = true)]
async fn a_free_permit_and_a_ready_service_are_called_in_call_without_a_clone() {
    use std::sync::atomic::Ordering::Relaxed;
    let inner = Counting::default();
    let (clones, calls) = (Arc::clone(&inner.clones), Arc::clone(&inner.calls));
    let layer = ConcurrencyLimitLayer::new(1).unwrap();
    let mut svc = layer.layer(inner);

    // Free permit, ready service: `call` takes the permit and calls.
    let mut first = task::spawn(svc.call(1));
    assert_eq!(calls.load(Relaxed), 1, "called from `call`");
    assert_eq!(clones.load(Relaxed), 0, "no clone on the fast path");
    assert_eq!(layer.handle().in_flight(), 1, "the future holds the permit");

    // No permit free: this one clones, waits, and calls only once admitted.
    let mut second = task::spawn(svc.call(2));
    assert_eq!(clones.load(Relaxed), 1);
    assert_eq!(calls.load(Relaxed), 1);
    assert_pending!(second.poll());

    assert_eq!(assert_ready_ok!(first.poll()), 1);
    assert!(second.is_woken());
    assert_eq!(assert_ready_ok!(second.poll()), 2);
    assert_eq!(calls.load(Relaxed), 2);
    assert_eq!(layer.handle().in_flight(), 0);

    // Dropped unpolled, after the fast path: the permit comes back.
    let unpolled = svc.call(3);
    assert_eq!(layer.handle().in_flight(), 1);
    drop(unpolled);
    assert_eq!(layer.handle().available_permits(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_fast_path_hands_the_ticket_on_and_frees_the_slot() {
    let slots = QueueSlots::new(4, Duration::from_secs(1));
    let layer = ConcurrencyLimitLayer::new(1).unwrap();
    let mut svc = layer.layer(Counting::default());
    let t = ticket(
        &slots,
        Instant::now() + Duration::from_secs(5),
        WaitBound::MaxWait,
    );
    let mut f = task::spawn(call_with_ticket(t, || svc.call(7)));
    // Admitted in `call`; no limiter inside took the ticket: slot free.
    assert_eq!(slots.depth(), 0);
    assert_eq!(assert_ready_ok!(f.poll()), 7);
}
