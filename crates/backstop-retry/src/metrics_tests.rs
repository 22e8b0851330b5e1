//! Exact retry counts (feature `metrics`).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use backstop_core::metrics as m;
use backstop_core::{BoxError, SlaExpired};
use tower::{Layer, Service, ServiceExt, service_fn};

use crate::RetryLayer;
use backstop_test_util::metrics::recorded;

type Outcome = Result<&'static str, BoxError>;

fn scripted(
    script: Vec<Outcome>,
) -> impl Service<u32, Response = &'static str, Error = BoxError, Future: Send> + Clone {
    let script = Arc::new(Mutex::new(VecDeque::from(script)));
    service_fn(move |_: u32| {
        let next = script.lock().unwrap().pop_front();
        async move { next.unwrap_or_else(|| Err("connection refused".into())) }
    })
}

fn refused() -> Outcome {
    Err("connection refused".into())
}

#[test]
fn success_counts_no_retry() {
    let (res, r) = recorded(|| async {
        let retry = RetryLayer::builder().seed(1).build().unwrap();
        retry.layer(scripted(vec![Ok("ok")])).oneshot(1).await
    });
    assert_eq!(res.unwrap(), "ok");
    assert_eq!(r.counter(m::RETRIES_TOTAL, &[]), 0);
    assert_eq!(r.counter(m::RETRY_BUDGET_EXHAUSTED_TOTAL, &[]), 0);
}

#[test]
fn retry_then_success_counts_one_retry() {
    let ((res, stats), r) = recorded(|| async {
        let retry = RetryLayer::builder().seed(1).build().unwrap();
        let stats = retry.stats();
        let res = retry
            .layer(scripted(vec![refused(), Ok("ok")]))
            .oneshot(1)
            .await;
        (res, stats.retries())
    });
    assert_eq!(res.unwrap(), "ok");
    assert_eq!(stats, 1);
    assert_eq!(r.counter(m::RETRIES_TOTAL, &[]), 1);
}

#[test]
fn attempts_running_out_count_each_retry() {
    let (res, r) = recorded(|| async {
        let retry = RetryLayer::builder()
            .max_attempts(3)
            .seed(1)
            .build()
            .unwrap();
        retry.layer(scripted(vec![])).oneshot(1).await
    });
    assert!(res.is_err());
    assert_eq!(r.counter(m::RETRIES_TOTAL, &[]), 2);
}

#[test]
fn an_sla_expiry_is_never_retried() {
    let (res, r) = recorded(|| async {
        let retry = RetryLayer::builder().seed(1).build().unwrap();
        retry
            .layer(scripted(vec![Err(SlaExpired::new().into())]))
            .oneshot(1)
            .await
    });
    assert!(res.unwrap_err().is::<SlaExpired>());
    assert_eq!(r.counter(m::RETRIES_TOTAL, &[]), 0);
}

#[test]
fn budget_refusals_are_counted() {
    let ((res, exhausted), r) = recorded(|| async {
        let retry = RetryLayer::builder()
            .ratio(0.0)
            .min_per_second(0)
            .seed(1)
            .build()
            .unwrap();
        let stats = retry.stats();
        let res = retry.layer(scripted(vec![])).oneshot(1).await;
        (res, stats.budget_exhausted())
    });
    assert!(res.is_err());
    assert_eq!(exhausted, 1);
    assert_eq!(r.counter(m::RETRY_BUDGET_EXHAUSTED_TOTAL, &[]), 1);
    assert_eq!(r.counter(m::RETRIES_TOTAL, &[]), 0);
}
