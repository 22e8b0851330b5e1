//! Exact admission counts (feature `metrics`).

use backstop_concurrency::ConcurrencyLimitLayer;
use backstop_core::metrics as m;
use backstop_core::{Context, OverloadReason, Overloaded, SlaExpired, find};
use tokio::time::{Duration, Instant, advance};
use tokio_test::{assert_pending, assert_ready_err, assert_ready_ok, task};
use tower::{Layer, Service};
use tower_test::{assert_request_eq, mock};

use crate::QueueAdmissionLayer;
use backstop_test_util::metrics::recorded;

fn layer(max_waiting: usize) -> QueueAdmissionLayer {
    QueueAdmissionLayer::builder()
        .max_waiting(max_waiting)
        .max_wait(Duration::from_secs(2))
        .build()
        .unwrap()
}

#[test]
fn queue_full_then_wait_exceeded_count_once_each() {
    let ((), r) = recorded(|| async {
        let q = layer(1);
        let c = ConcurrencyLimitLayer::new(1).unwrap();
        let (mock, mut handle) = mock::pair::<&str, &str>();
        let mut svc = q.layer(c.layer(mock));

        // r1 holds the only permit; r2 waits (the one queue slot); r3 is
        // refused at once.
        let mut r1 = task::spawn(svc.call("r1"));
        assert_pending!(r1.poll());
        let mut r2 = task::spawn(svc.call("r2"));
        assert_pending!(r2.poll());
        let mut r3 = task::spawn(svc.call("r3"));
        let err = assert_ready_err!(r3.poll());
        assert_eq!(
            find::<Overloaded>(&*err).map(Overloaded::reason),
            Some(OverloadReason::QueueFull)
        );

        advance(Duration::from_secs(2)).await;
        let err = assert_ready_err!(r2.poll());
        assert_eq!(
            find::<Overloaded>(&*err).map(Overloaded::reason),
            Some(OverloadReason::WaitExceeded)
        );
        assert_request_eq!(handle, "r1").send_response("ok");
        assert_ready_ok!(r1.poll());
    });
    assert_eq!(r.counter(m::QUEUE_TIMEOUT_TOTAL, &[]), 1);
    assert_eq!(r.counter(m::QUEUE_FULL_TOTAL, &[]), 1);
}

#[test]
fn success_and_sla_expiry_count_no_queue_timeout() {
    let ((), r) = recorded(|| async {
        let q = layer(4);
        let c = ConcurrencyLimitLayer::new(1).unwrap();
        let (mock, mut handle) = mock::pair::<&str, &str>();
        let mut svc = q.layer(c.layer(mock));

        let mut r1 = task::spawn(svc.call("r1"));
        assert_pending!(r1.poll());
        // The SLA (1 s) ends before the max wait (2 s): SlaExpired, which is
        // not a queue timeout.
        let sla = Instant::now() + Duration::from_secs(1);
        let ctx = Context::new().with_sla_deadline(sla);
        let mut r2 = task::spawn(ctx.clone().sync_scope(|| svc.call("r2")));
        assert_pending!(r2.poll());
        advance(Duration::from_secs(1)).await;
        let err = assert_ready_err!(r2.poll());
        assert!(find::<SlaExpired>(&*err).is_some());

        assert_request_eq!(handle, "r1").send_response("ok");
        assert_ready_ok!(r1.poll());
    });
    assert_eq!(r.counter(m::QUEUE_TIMEOUT_TOTAL, &[]), 0);
    assert_eq!(r.counter(m::QUEUE_FULL_TOTAL, &[]), 0);
}
