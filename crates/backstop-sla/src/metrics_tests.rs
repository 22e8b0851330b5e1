//! Exact SLA expiry counts (feature `metrics`).

use std::future::pending;

use backstop_core::metrics as m;
use backstop_core::{BoxError, Context, SlaExpired};
use tokio::time::{Duration, Instant};
use tokio_test::{assert_pending, task};
use tower::{Layer, Service, ServiceExt, service_fn};

use crate::SlaTimeoutLayer;
use backstop_test_util::metrics::recorded;

fn layer(secs: u64) -> SlaTimeoutLayer {
    SlaTimeoutLayer::new(Duration::from_secs(secs)).unwrap()
}

#[test]
fn success_counts_nothing() {
    let (res, r) = recorded(|| async {
        let svc = layer(60).layer(service_fn(|()| async { Ok::<_, BoxError>(()) }));
        svc.oneshot(()).await
    });
    res.unwrap();
    assert_eq!(r.counter(m::SLA_EXPIRED_TOTAL, &[]), 0);
}

#[test]
fn own_deadline_counts_one() {
    let (res, r) = recorded(|| async {
        let svc = layer(2).layer(service_fn(|()| pending::<Result<(), BoxError>>()));
        svc.oneshot(()).await
    });
    assert!(res.unwrap_err().is::<SlaExpired>());
    assert_eq!(r.counter(m::SLA_EXPIRED_TOTAL, &[]), 1);
}

#[test]
fn passed_outer_deadline_and_inner_sla_error_count_one_each() {
    let ((a, b), r) = recorded(|| async {
        let svc = layer(60).layer(service_fn(|()| async {
            Err::<(), BoxError>(SlaExpired::new().into())
        }));
        let a = Context::new()
            .with_sla_deadline(Instant::now())
            .scope(svc.clone().oneshot(()))
            .await;
        let b = svc.oneshot(()).await;
        (a, b)
    });
    assert!(a.unwrap_err().is::<SlaExpired>());
    assert!(b.unwrap_err().is::<SlaExpired>());
    assert_eq!(r.counter(m::SLA_EXPIRED_TOTAL, &[]), 2);
}

#[test]
fn other_errors_and_cancellation_count_nothing() {
    let ((), r) = recorded(|| async {
        let mut svc = layer(60).layer(service_fn(|n: u32| async move {
            if n == 0 {
                Err::<(), BoxError>("refused".into())
            } else {
                pending().await
            }
        }));
        assert!(svc.ready().await.unwrap().call(0).await.is_err());
        let mut fut = task::spawn(svc.call(1));
        assert_pending!(fut.poll());
        drop(fut);
    });
    assert_eq!(r.counter(m::SLA_EXPIRED_TOTAL, &[]), 0);
}
