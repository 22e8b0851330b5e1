//! QueueAdmission: fast fail, wait accounting, deadlines, composition with
//! ticket-aware limiters, cancel safety, shared state, bad input.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use backstop_admission::{
    QueueAdmission, QueueAdmissionLayer, QueueHandle, future::ResponseFuture,
};
use backstop_concurrency::{ConcurrencyLimit, ConcurrencyLimitLayer};
use backstop_core::{
    AdmissionTicket, BoxError, Context, ErrorKind, OverloadReason, Overloaded, SlaExpired,
    WaitBound, classify,
};
use static_assertions::assert_impl_all;
use tokio::time::{Duration, Instant};
use tokio_test::{assert_pending, assert_ready_err, assert_ready_ok, task};
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_test::{assert_request_eq, mock};

type Mock = mock::Mock<&'static str, &'static str>;
type Handle = mock::Handle<&'static str, &'static str>;
type Stack = QueueAdmission<ConcurrencyLimit<Mock>>;

assert_impl_all!(QueueAdmissionLayer: Send, Sync, Clone);
assert_impl_all!(QueueHandle: Send, Sync, Clone);
assert_impl_all!(Stack: Send, Sync, Clone);
assert_impl_all!(ResponseFuture<<ConcurrencyLimit<Mock> as Service<&'static str>>::Future>: Send, Sync);

fn layer(max_waiting: usize, max_wait_ms: u64) -> QueueAdmissionLayer {
    QueueAdmissionLayer::builder()
        .max_waiting(max_waiting)
        .max_wait(Duration::from_millis(max_wait_ms))
        .retry_after(Duration::from_secs(3))
        .build()
        .unwrap()
}

fn stack(q: &QueueAdmissionLayer, permits: usize) -> (Stack, Handle, ConcurrencyLimitLayer) {
    let c = ConcurrencyLimitLayer::new(permits).unwrap();
    let (mock, handle) = mock::pair();
    (q.layer(c.layer(mock)), handle, c)
}

fn overload_reason(err: &BoxError) -> Option<OverloadReason> {
    backstop_core::find::<Overloaded>(&**err).map(Overloaded::reason)
}

#[test]
fn defaults_and_bad_input() {
    let q = QueueAdmissionLayer::default();
    assert_eq!(q.queue().max_waiting(), 80);
    assert_eq!(q.max_wait(), Duration::from_secs(5));
    assert_eq!(q.retry_after(), Duration::from_secs(1));
    let b = QueueAdmissionLayer::builder().build().unwrap();
    assert_eq!(b.queue().max_waiting(), 80);

    let err = QueueAdmissionLayer::builder()
        .max_waiting(0)
        .build()
        .unwrap_err();
    assert_eq!(err.setting(), "max_waiting");
    let day = Duration::from_secs(24 * 3600);
    let err = QueueAdmissionLayer::builder()
        .max_wait(day + Duration::from_nanos(1))
        .build()
        .unwrap_err();
    assert_eq!(err.setting(), "max_wait");
    let err = QueueAdmissionLayer::builder()
        .retry_after(Duration::MAX)
        .build()
        .unwrap_err();
    assert_eq!(err.setting(), "retry_after");
    // Zero max wait is allowed: never wait.
    assert!(
        QueueAdmissionLayer::builder()
            .max_wait(Duration::ZERO)
            .build()
            .is_ok()
    );
    assert!(QueueAdmissionLayer::builder().max_wait(day).build().is_ok());
    assert!(format!("{q:?}").contains("max_waiting: 80"));
}

#[tokio::test(start_paused = true)]
async fn over_max_waiting_fails_on_the_first_poll_without_calling_inner() {
    let q = layer(1, 5_000);
    let queue = q.queue();
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&calls);
    // A ticket-aware stand-in limiter that never admits.
    let mut svc = q.layer(service_fn(move |()| {
        seen.fetch_add(1, Ordering::SeqCst);
        let ticket = AdmissionTicket::take_offered();
        async move {
            let _ticket = ticket;
            std::future::pending::<Result<(), BoxError>>().await
        }
    }));
    let mut first = task::spawn(svc.call(()));
    assert_eq!(queue.depth(), 1);
    assert!(queue.is_full());
    assert_pending!(first.poll());

    let mut second = task::spawn(svc.call(()));
    let err = assert_ready_err!(second.poll());
    let o = err.downcast_ref::<Overloaded>().expect("Overloaded");
    assert_eq!(o.reason(), OverloadReason::QueueFull);
    assert_eq!(o.retry_after(), Duration::from_secs(3));
    assert_eq!(classify(&*err), ErrorKind::Overloaded);
    assert_eq!(calls.load(Ordering::SeqCst), 1, "inner not called");
    assert_eq!(queue.rejected(), 1);
    assert_eq!(queue.wait_timeouts(), 0);

    drop(first);
    assert_eq!(queue.depth(), 0);
    assert!(!queue.is_full());
}

#[tokio::test(start_paused = true)]
async fn queue_full_with_a_concurrency_limit_inside() {
    let q = layer(1, 5_000);
    let queue = q.queue();
    let (svc, mut handle, c) = stack(&q, 1);

    let mut r1 = task::spawn(svc.clone().call("r1"));
    assert_pending!(r1.poll());
    assert_eq!(queue.depth(), 0, "admitted at once: not waiting");
    let mut r2 = task::spawn(svc.clone().call("r2"));
    assert_eq!(queue.depth(), 1, "the slot is taken in call");
    assert_pending!(r2.poll());
    let mut r3 = task::spawn(svc.clone().call("r3"));
    let err = assert_ready_err!(r3.poll());
    assert_eq!(overload_reason(&err), Some(OverloadReason::QueueFull));

    assert_request_eq!(handle, "r1").send_response("ok");
    assert_ready_ok!(r1.poll());
    assert_pending!(r2.poll());
    assert_eq!(queue.depth(), 0);
    assert_request_eq!(handle, "r2").send_response("ok");
    assert_ready_ok!(r2.poll());
    assert_eq!(c.handle().available_permits(), 1);
    assert_eq!(queue.rejected(), 1);
}

#[tokio::test(start_paused = true)]
async fn wait_exceeded_is_enforced_by_the_limiter_and_counted_here() {
    let q = layer(4, 2_000);
    let queue = q.queue();
    let (svc, mut handle, c) = stack(&q, 1);
    let mut r1 = task::spawn(svc.clone().call("r1"));
    assert_pending!(r1.poll());

    let start = Instant::now();
    let mut r2 = task::spawn(svc.clone().call("r2"));
    assert_pending!(r2.poll());
    tokio::time::advance(Duration::from_millis(1_999)).await;
    assert_pending!(r2.poll());
    assert_eq!(queue.wait_timeouts(), 0);
    tokio::time::advance(Duration::from_millis(1)).await;
    let err = assert_ready_err!(r2.poll());
    let o = err.downcast_ref::<Overloaded>().expect("Overloaded");
    assert_eq!(o.reason(), OverloadReason::WaitExceeded);
    assert_eq!(o.retry_after(), Duration::from_secs(3));
    assert_eq!(Instant::now() - start, Duration::from_secs(2));
    assert_eq!(queue.wait_timeouts(), 1);
    assert_eq!(queue.depth(), 0);

    assert_request_eq!(handle, "r1").send_response("ok");
    assert_ready_ok!(r1.poll());
    assert_eq!(c.handle().available_permits(), 1);
}

#[tokio::test(start_paused = true)]
async fn admission_deadline_equal_to_sla_fails_as_sla_expired() {
    for sla_ms in [1_000, 5_000] {
        // 1 s: SLA before now + max wait; 5 s: equal to it. Both are the SLA.
        let q = layer(4, 5_000);
        let queue = q.queue();
        let (svc, _handle, _c) = stack(&q, 1);
        let mut r1 = task::spawn(svc.clone().call("r1"));
        assert_pending!(r1.poll());

        let ctx = Context::new().with_sla_deadline(Instant::now() + Duration::from_millis(sla_ms));
        let mut r2 = task::spawn(ctx.sync_scope(|| svc.clone().call("r2")));
        assert_pending!(r2.poll());
        tokio::time::advance(Duration::from_millis(sla_ms)).await;
        let err = assert_ready_err!(r2.poll());
        assert!(err.is::<SlaExpired>(), "{err}");
        assert_eq!(classify(&*err), ErrorKind::Timeout);
        assert_eq!(queue.wait_timeouts(), 0, "not a WaitExceeded");
        assert_eq!(queue.depth(), 0);
    }
}

#[tokio::test(start_paused = true)]
async fn the_ticket_offered_in_call_carries_the_admission_deadline() {
    let q = layer(4, 5_000);
    let queue = q.queue();
    let svc = q.layer(service_fn(|()| {
        // Offered for the inner `call()` only, taken by value.
        let t = AdmissionTicket::take_offered().expect("a ticket");
        let seen = (
            t.deadline(),
            t.wait_deadline().bound(),
            t.wait_deadline().retry_after(),
        );
        assert!(AdmissionTicket::take_offered().is_none(), "one holder");
        async move {
            // Polls see no offer: a limiter called later waits unbounded by
            // this queue (and uncounted).
            assert!(AdmissionTicket::offered_deadline().is_none());
            drop(t);
            Ok::<_, BoxError>(seen)
        }
    }));
    let now = Instant::now();
    let mut fut = task::spawn(svc.clone().oneshot(()));
    let (at, bound, retry_after) = assert_ready_ok!(fut.poll());
    assert_eq!(at, now + Duration::from_secs(5));
    assert_eq!(bound, WaitBound::MaxWait);
    assert_eq!(retry_after, Duration::from_secs(3));
    assert_eq!(queue.depth(), 0);

    let sla = now + Duration::from_secs(2);
    let (at, bound, _) = Context::new()
        .with_sla_deadline(sla)
        .scope(svc.oneshot(()))
        .await
        .unwrap();
    assert_eq!((at, bound), (sla, WaitBound::Sla));
}

#[tokio::test(start_paused = true)]
async fn zero_max_wait_never_waits_and_never_rejects_with_capacity_free() {
    let q = layer(4, 0);
    let queue = q.queue();
    let (svc, mut handle, _c) = stack(&q, 1);
    for _ in 0..50 {
        let mut r = task::spawn(svc.clone().call("free"));
        assert_pending!(r.poll());
        assert_request_eq!(handle, "free").send_response("ok");
        assert_ready_ok!(r.poll());
    }
    assert_eq!(
        queue.rejected() + queue.wait_timeouts(),
        0,
        "no spurious rejection"
    );

    let mut r1 = task::spawn(svc.clone().call("r1"));
    assert_pending!(r1.poll());
    let now = Instant::now();
    let mut r2 = task::spawn(svc.clone().call("r2"));
    let err = assert_ready_err!(r2.poll());
    assert_eq!(overload_reason(&err), Some(OverloadReason::WaitExceeded));
    assert_eq!(Instant::now(), now, "failed without waiting");
    assert_eq!(queue.wait_timeouts(), 1);
    assert_eq!(queue.depth(), 0);
}

#[tokio::test(start_paused = true)]
async fn admission_deadline_never_bounds_the_call() {
    let q = layer(4, 1_000);
    let svc = q.layer(
        ConcurrencyLimitLayer::new(1)
            .unwrap()
            .layer(service_fn(|()| async {
                tokio::time::sleep(Duration::from_secs(10)).await;
                Ok::<_, BoxError>("slow but admitted")
            })),
    );
    assert_eq!(svc.oneshot(()).await.unwrap(), "slow but admitted");
}

/// QueueAdmission around two ticket-aware limiters (stand-ins for RateLimit
/// and ConcurrencyLimit), in both orders: each waiting request counts once,
/// and its slot is freed exactly when the last limiter admits it.
#[tokio::test(start_paused = true)]
async fn composition_counts_once_and_frees_at_the_last_limiter() {
    for outer_first in [true, false] {
        let q = layer(1, 60_000);
        let queue = q.queue();
        let a = ConcurrencyLimitLayer::new(1).unwrap();
        let b = ConcurrencyLimitLayer::new(1).unwrap();
        let (mock, mut handle) = mock::pair::<&'static str, &'static str>();
        let (first, second) = if outer_first { (&a, &b) } else { (&b, &a) };
        let svc = q.layer(first.layer(second.layer(mock)));

        // Occupy both limiters through other services of the same layers.
        let (ma, mut ha) = mock::pair::<&'static str, &'static str>();
        let (mb, mut hb) = mock::pair::<&'static str, &'static str>();
        let mut hold_first = task::spawn(first.layer(ma).call("x"));
        let mut hold_second = task::spawn(second.layer(mb).call("y"));
        assert_pending!(hold_first.poll());
        assert_pending!(hold_second.poll());

        let mut r = task::spawn(svc.clone().call("r"));
        assert_eq!(queue.depth(), 1, "entered admission");
        assert_pending!(r.poll());
        assert_eq!(queue.depth(), 1, "waiting on the first limiter");
        let err = assert_ready_err!(task::spawn(svc.clone().call("extra")).poll());
        assert_eq!(overload_reason(&err), Some(OverloadReason::QueueFull));

        // The first limiter admits; the second still makes it wait.
        assert_request_eq!(ha, "x").send_response("ok");
        assert_ready_ok!(hold_first.poll());
        assert!(r.is_woken());
        assert_pending!(r.poll());
        assert_eq!(
            queue.depth(),
            1,
            "counted once, still waiting on the second"
        );
        assert_eq!(first.handle().in_flight(), 1, "r holds the first permit");

        // The last limiter admits: the slot is freed right then.
        assert_request_eq!(hb, "y").send_response("ok");
        assert_ready_ok!(hold_second.poll());
        assert_pending!(r.poll());
        assert_eq!(queue.depth(), 0, "admitted by the last limiter");
        assert_request_eq!(handle, "r").send_response("done");
        assert_eq!(assert_ready_ok!(r.poll()), "done");
        assert_eq!(queue.depth(), 0);
        assert_eq!(a.handle().available_permits(), 1);
        assert_eq!(b.handle().available_permits(), 1);
        assert_eq!((queue.rejected(), queue.wait_timeouts()), (1, 0));
    }
}

#[tokio::test(start_paused = true)]
async fn wait_exceeded_at_the_second_limiter_is_counted_once() {
    let q = layer(4, 1_000);
    let queue = q.queue();
    let a = ConcurrencyLimitLayer::new(1).unwrap();
    let b = ConcurrencyLimitLayer::new(1).unwrap();
    let (mock, _handle) = mock::pair::<&'static str, &'static str>();
    let svc = q.layer(a.layer(b.layer(mock)));
    let (mb, _hb) = mock::pair::<&'static str, &'static str>();
    let mut hold_b = task::spawn(b.layer(mb).call("y"));
    assert_pending!(hold_b.poll());

    let mut r = task::spawn(svc.clone().call("r"));
    assert_pending!(r.poll());
    tokio::time::advance(Duration::from_secs(1)).await;
    let err = assert_ready_err!(r.poll());
    assert_eq!(overload_reason(&err), Some(OverloadReason::WaitExceeded));
    assert_eq!(queue.wait_timeouts(), 1);
    assert_eq!(queue.depth(), 0);
    assert_eq!(a.handle().available_permits(), 1, "first permit given back");
}

#[tokio::test(start_paused = true)]
async fn dropping_the_future_frees_the_slot_and_the_wait() {
    let q = layer(2, 60_000);
    let queue = q.queue();
    let (svc, mut handle, c) = stack(&q, 1);
    let mut r1 = task::spawn(svc.clone().call("r1"));
    assert_pending!(r1.poll());

    // Dropped before its first poll.
    drop(svc.clone().call("never"));
    assert_eq!(queue.depth(), 0);

    // Dropped while waiting: the next waiter is not skipped.
    let mut r2 = task::spawn(svc.clone().call("r2"));
    let mut r3 = task::spawn(svc.clone().call("r3"));
    assert_pending!(r2.poll());
    assert_pending!(r3.poll());
    assert_eq!(queue.depth(), 2);
    drop(r2);
    assert_eq!(queue.depth(), 1);
    assert_request_eq!(handle, "r1").send_response("ok");
    assert_ready_ok!(r1.poll());
    assert!(r3.is_woken());
    assert_pending!(r3.poll());
    assert_eq!(queue.depth(), 0);

    // Dropped after admission: nothing changes in the queue, permit back.
    let _req = assert_request_eq!(handle, "r3");
    drop(r3);
    assert_eq!(queue.depth(), 0);
    assert_eq!(c.handle().available_permits(), 1);
}

#[tokio::test(start_paused = true)]
async fn clones_share_one_queue_two_layers_are_two_queues() {
    let q = layer(1, 60_000);
    let other = layer(1, 60_000);
    let (svc, _h, _c) = stack(&q, 1);
    let (svc_shared_layer, _h2, _c2) = stack(&q.clone(), 1);
    let (svc_other, _h3, _c3) = stack(&other, 1);

    let mut busy = task::spawn(svc.clone().call("a"));
    assert_pending!(busy.poll());
    let mut waiting = task::spawn(svc.clone().call("b"));
    assert_pending!(waiting.poll());
    assert_eq!(q.queue().depth(), 1);

    let err = assert_ready_err!(task::spawn(svc.clone().call("c")).poll());
    assert_eq!(
        overload_reason(&err),
        Some(OverloadReason::QueueFull),
        "a clone"
    );
    let err = assert_ready_err!(task::spawn(svc_shared_layer.clone().call("d")).poll());
    assert_eq!(
        overload_reason(&err),
        Some(OverloadReason::QueueFull),
        "a cloned layer"
    );
    let mut fine = task::spawn(svc_other.clone().call("e"));
    assert_pending!(fine.poll(), "another layer value: another queue");
    assert_eq!(other.queue().rejected(), 0);
    assert_eq!(q.queue().rejected(), 2);
    assert_eq!(
        svc.queue().depth(),
        1,
        "the service's handle sees the same queue"
    );
}
