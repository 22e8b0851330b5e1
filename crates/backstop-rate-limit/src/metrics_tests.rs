//! Exact rate-limit wait samples (feature `metrics`).

use backstop_core::metrics as m;
use backstop_core::{AdmissionTicket, QueueSlots, WaitBound};
use tokio::time::{Duration, Instant, advance};
use tokio_test::{assert_pending, assert_ready_err, assert_ready_ok, task};
use tower::{BoxError, Layer, Service, ServiceExt, service_fn};

use crate::RateLimitLayer;
use backstop_test_util::metrics::recorded;

fn ok_svc() -> impl Service<u32, Response = u32, Error = BoxError, Future: Send> + Clone {
    service_fn(|n: u32| async move { Ok::<_, BoxError>(n) })
}

#[test]
fn one_sample_per_limiter_per_admission_with_its_static_label() {
    let ((), r) = recorded(|| async {
        let rpm = RateLimitLayer::per_second(1)
            .burst(1)
            .name("rpm")
            .build()
            .unwrap();
        let tpm = RateLimitLayer::per_second(100)
            .burst(100)
            .name("tpm")
            .build()
            .unwrap();
        let mut svc = rpm.layer(tpm.layer(ok_svc()));
        svc.ready().await.unwrap().call(1).await.unwrap();
        let mut r2 = task::spawn(svc.call(2));
        assert_pending!(r2.poll());
        advance(Duration::from_secs(1)).await;
        assert_eq!(assert_ready_ok!(r2.poll()), 2);
    });
    let rpm = [(m::LIMITER, "rpm")];
    let tpm = [(m::LIMITER, "tpm")];
    assert_eq!(r.samples(m::RATE_LIMIT_WAIT_SECONDS, &rpm), [0.0, 1.0]);
    assert_eq!(r.samples(m::RATE_LIMIT_WAIT_SECONDS, &tpm), [0.0, 0.0]);
}

#[test]
fn zero_cost_passes_and_counts_a_zero_wait() {
    let ((), r) = recorded(|| async {
        let layer = RateLimitLayer::per_second(1)
            .cost_fn(|_: &u32| 0)
            .build()
            .unwrap();
        layer.layer(ok_svc()).oneshot(1).await.unwrap();
    });
    let label = [(m::LIMITER, "rate_limit")];
    assert_eq!(r.samples(m::RATE_LIMIT_WAIT_SECONDS, &label), [0.0]);
}

#[test]
fn refused_or_dropped_waits_record_no_sample() {
    let ((), r) = recorded(|| async {
        let layer = RateLimitLayer::per_second(1).burst(1).build().unwrap();
        let mut svc = layer.layer(ok_svc());
        svc.ready().await.unwrap().call(1).await.unwrap();

        // The next token is 1 s away, the admission deadline 0.5 s.
        let slots = QueueSlots::new(4, Duration::from_secs(1));
        let at = Instant::now() + Duration::from_millis(500);
        let ticket: AdmissionTicket = slots.try_acquire(at, WaitBound::MaxWait).unwrap();
        let mut refused = task::spawn(ticket.offer(|| svc.call(2)));
        assert_ready_err!(refused.poll());

        // Dropped while sleeping for its token.
        let mut dropped = task::spawn(svc.call(3));
        assert_pending!(dropped.poll());
        drop(dropped);
    });
    let label = [(m::LIMITER, "rate_limit")];
    assert_eq!(r.samples(m::RATE_LIMIT_WAIT_SECONDS, &label), [0.0]);
}
