//! Exact semaphore wait samples and the in-flight gauge (feature `metrics`).

use backstop_core::metrics as m;
use backstop_core::{Context, WaitBound, WaitDeadline};
use tokio::time::{Duration, Instant, advance};
use tokio_test::{assert_pending, assert_ready_err, assert_ready_ok, task};
use tower::{Layer, Service};
use tower_test::{assert_request_eq, mock};

use crate::ConcurrencyLimitLayer;
use backstop_test_util::metrics::recorded;

#[test]
fn one_sample_per_permit_zero_waits_included_and_gauge_follows_permits() {
    let (gauges, r) = recorded(|| async {
        let c = ConcurrencyLimitLayer::new(1).unwrap();
        let (mock, mut handle) = mock::pair::<&str, &str>();
        let mut svc = c.layer(mock);
        let mut gauges = Vec::new();

        let mut r1 = task::spawn(svc.call("r1"));
        assert_pending!(r1.poll());
        let mut r2 = task::spawn(svc.call("r2"));
        assert_pending!(r2.poll());
        advance(Duration::from_millis(1500)).await;
        assert_pending!(r2.poll());

        assert_request_eq!(handle, "r1").send_response("ok");
        assert_ready_ok!(r1.poll());
        // r2 takes the released permit, 1.5 s after it started waiting.
        assert_pending!(r2.poll());
        gauges.push(c.handle().in_flight());
        assert_request_eq!(handle, "r2").send_response("ok");
        assert_ready_ok!(r2.poll());
        gauges.push(c.handle().in_flight());
        gauges
    });
    assert_eq!(gauges, [1, 0]);
    assert_eq!(r.samples(m::SEMAPHORE_WAIT_SECONDS, &[]), [0.0, 1.5]);
    assert_eq!(r.gauge(m::CONCURRENT_CALLS), Some(0.0));
}

#[test]
fn gauge_counts_permits_held_now() {
    let ((), r) = recorded(|| async {
        let c = ConcurrencyLimitLayer::new(3).unwrap();
        let (mock, _handle) = mock::pair::<&str, &str>();
        let mut svc = c.layer(mock);
        let mut r1 = task::spawn(svc.call("r1"));
        let mut r2 = task::spawn(svc.call("r2"));
        assert_pending!(r1.poll());
        assert_pending!(r2.poll());
        // Keep both in flight past the snapshot.
        std::mem::forget(r1);
        std::mem::forget(r2);
    });
    assert_eq!(r.gauge(m::CONCURRENT_CALLS), Some(2.0));
    assert_eq!(r.samples(m::SEMAPHORE_WAIT_SECONDS, &[]), [0.0, 0.0]);
}

#[test]
fn a_wait_that_fails_or_is_dropped_records_no_sample() {
    let ((), r) = recorded(|| async {
        let c = ConcurrencyLimitLayer::new(1).unwrap();
        let (mock, mut handle) = mock::pair::<&str, &str>();
        let mut svc = c.layer(mock);
        let mut r1 = task::spawn(svc.call("r1"));
        assert_pending!(r1.poll());

        // Bounded by a 1 s deadline: fails without admission.
        let at = Instant::now() + Duration::from_secs(1);
        let deadline = WaitDeadline::new(at, WaitBound::Sla, Duration::ZERO);
        let ctx = Context::new().with_sla_deadline(deadline.at());
        let mut r2 = task::spawn(ctx.sync_scope(|| svc.call("r2")));
        assert_pending!(r2.poll());
        advance(Duration::from_secs(1)).await;
        assert_ready_err!(r2.poll());

        // Dropped while queued.
        let mut r3 = task::spawn(svc.call("r3"));
        assert_pending!(r3.poll());
        drop(r3);

        assert_request_eq!(handle, "r1").send_response("ok");
        assert_ready_ok!(r1.poll());
    });
    assert_eq!(r.samples(m::SEMAPHORE_WAIT_SECONDS, &[]), [0.0]);
    assert_eq!(r.gauge(m::CONCURRENT_CALLS), Some(0.0));
}
