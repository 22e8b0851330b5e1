//! Exact metric counts per scripted attempt (feature `metrics`).

use std::future::pending;

use backstop_core::metrics::{self as m, outcome};
use backstop_core::{BoxError, Context};
use tokio::time::{Duration, Instant, sleep};
use tokio_test::{assert_pending, task};
use tower::{Layer, Service, ServiceExt, service_fn};

use crate::AttemptTimeoutLayer;
use backstop_test_util::metrics::{Recorded, recorded};

fn calls(r: &Recorded, outcome: &str) -> u64 {
    r.counter(m::CALLS_TOTAL, &[(m::OUTCOME, outcome)])
}

/// Every outcome count, in `outcome::ALL` order.
fn all_calls(r: &Recorded) -> Vec<u64> {
    outcome::ALL.iter().map(|o| calls(r, o)).collect()
}

fn layer(secs: u64) -> AttemptTimeoutLayer {
    AttemptTimeoutLayer::new(Duration::from_secs(secs)).unwrap()
}

#[test]
fn success_counts_one_call_and_its_duration() {
    let (res, r) = recorded(|| async {
        let svc = layer(30).layer(service_fn(|()| async {
            sleep(Duration::from_millis(250)).await;
            Ok::<_, BoxError>(7)
        }));
        svc.oneshot(()).await
    });
    assert_eq!(res.unwrap(), 7);
    assert_eq!(all_calls(&r), [1, 0, 0, 0, 0]);
    assert_eq!(r.samples(m::CALL_DURATION_SECONDS, &[]), [0.25]);
    assert_eq!(r.counter(m::CALL_TIMEOUT_TOTAL, &[]), 0);
}

#[test]
fn inner_error_is_a_connect_error() {
    let (res, r) = recorded(|| async {
        let svc = layer(30).layer(service_fn(|()| async {
            Err::<(), BoxError>("connection refused".into())
        }));
        svc.oneshot(()).await
    });
    assert!(res.is_err());
    assert_eq!(all_calls(&r), [0, 0, 0, 1, 0]);
    assert_eq!(r.samples(m::CALL_DURATION_SECONDS, &[]), [0.0]);
}

#[test]
fn attempt_timeout_counts_timeout_and_call_timeout() {
    let (res, r) = recorded(|| async {
        let svc = layer(2).layer(service_fn(|()| pending::<Result<(), BoxError>>()));
        svc.oneshot(()).await
    });
    assert!(res.unwrap_err().is::<backstop_core::AttemptTimedOut>());
    assert_eq!(all_calls(&r), [0, 0, 1, 0, 0]);
    assert_eq!(r.counter(m::CALL_TIMEOUT_TOTAL, &[]), 1);
    assert_eq!(r.samples(m::CALL_DURATION_SECONDS, &[]), [2.0]);
}

#[test]
fn sla_capped_expiry_is_a_timeout_but_not_a_call_timeout() {
    let (res, r) = recorded(|| async {
        let svc = layer(30).layer(service_fn(|()| pending::<Result<(), BoxError>>()));
        let sla = Instant::now() + Duration::from_secs(1);
        Context::new()
            .with_sla_deadline(sla)
            .scope(svc.oneshot(()))
            .await
    });
    assert!(res.unwrap_err().is::<backstop_core::SlaExpired>());
    assert_eq!(all_calls(&r), [0, 0, 1, 0, 0]);
    assert_eq!(r.counter(m::CALL_TIMEOUT_TOTAL, &[]), 0);
    assert_eq!(r.samples(m::CALL_DURATION_SECONDS, &[]), [1.0]);
}

#[test]
fn sla_already_passed_reaches_no_upstream_and_counts_nothing() {
    let (res, r) = recorded(|| async {
        let svc = layer(30).layer(service_fn(|()| async { Ok::<_, BoxError>(()) }));
        let sla = Instant::now();
        Context::new()
            .with_sla_deadline(sla)
            .scope(svc.oneshot(()))
            .await
    });
    assert!(res.is_err());
    assert_eq!(all_calls(&r), [0, 0, 0, 0, 0]);
    assert!(r.samples(m::CALL_DURATION_SECONDS, &[]).is_empty());
}

#[test]
fn dropped_attempt_counts_cancelled_once() {
    let ((), r) = recorded(|| async {
        let mut svc = layer(30).layer(service_fn(|()| pending::<Result<(), BoxError>>()));
        let mut fut = task::spawn(svc.ready().await.unwrap().call(()));
        assert_pending!(fut.poll());
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_pending!(fut.poll());
        drop(fut);
    });
    assert_eq!(all_calls(&r), [0, 0, 0, 0, 1]);
    assert_eq!(r.samples(m::CALL_DURATION_SECONDS, &[]), [0.5]);
    assert_eq!(r.counter(m::CALL_TIMEOUT_TOTAL, &[]), 0);
}

#[test]
fn clones_share_the_handles_and_each_attempt_counts_once() {
    let ((), r) = recorded(|| async {
        let svc = layer(30).layer(service_fn(|()| async { Ok::<_, BoxError>(()) }));
        for _ in 0..3 {
            svc.clone().oneshot(()).await.unwrap();
        }
    });
    assert_eq!(all_calls(&r), [3, 0, 0, 0, 0]);
    assert_eq!(r.samples(m::CALL_DURATION_SECONDS, &[]).len(), 3);
}

#[cfg(feature = "http")]
mod http_metrics {
    use ::http::{Request, Response};
    use bytes::Bytes;
    use http_body_util::{Empty, Full};

    use super::*;

    fn upstream(status: u16) -> (Result<u16, BoxError>, Recorded) {
        let (res, r) = recorded(|| async move {
            let svc = layer(30).for_http().layer(service_fn(
                move |_: Request<Empty<Bytes>>| async move {
                    sleep(Duration::from_millis(100)).await;
                    Ok::<_, BoxError>(
                        Response::builder()
                            .status(status)
                            .body(Full::new(Bytes::from_static(b"hi")))
                            .unwrap(),
                    )
                },
            ));
            svc.oneshot(Request::new(Empty::new()))
                .await
                .map(|res| res.status().as_u16())
        });
        (res, r)
    }

    #[test]
    fn status_below_400_is_success() {
        let (res, r) = upstream(200);
        assert_eq!(res.unwrap(), 200);
        assert_eq!(all_calls(&r), [1, 0, 0, 0, 0]);
        assert_eq!(r.samples(m::CALL_DURATION_SECONDS, &[]), [0.1]);
    }

    #[test]
    fn status_400_or_more_is_an_http_error() {
        for status in [400, 429, 503] {
            let (res, r) = upstream(status);
            assert_eq!(res.unwrap(), status);
            assert_eq!(all_calls(&r), [0, 1, 0, 0, 0], "{status}");
            assert_eq!(r.samples(m::CALL_DURATION_SECONDS, &[]).len(), 1);
        }
    }

    #[test]
    fn head_timeout_counts_an_attempt_timeout() {
        let (res, r) = recorded(|| async {
            let svc = layer(3)
                .for_http()
                .layer(service_fn(|_: Request<Empty<Bytes>>| {
                    pending::<Result<Response<Full<Bytes>>, BoxError>>()
                }));
            svc.oneshot(Request::new(Empty::new())).await.map(|_| ())
        });
        assert!(res.is_err());
        assert_eq!(all_calls(&r), [0, 0, 1, 0, 0]);
        assert_eq!(r.counter(m::CALL_TIMEOUT_TOTAL, &[]), 1);
        assert_eq!(r.samples(m::CALL_DURATION_SECONDS, &[]), [3.0]);
    }
}

#[test]
fn a_retried_attempt_counts_each_attempt_once() {
    use backstop_core::Attempt;

    let (res, r) = recorded(|| async {
        let mut calls = 0;
        let mut svc = layer(30).layer(service_fn(move |()| {
            calls += 1;
            let first = calls == 1;
            async move {
                sleep(Duration::from_millis(100)).await;
                if first {
                    Err::<u32, BoxError>("connection reset".into())
                } else {
                    Ok(2)
                }
            }
        }));
        // What Retry does: each attempt under its own context.
        for n in 1..=2 {
            let ctx = Context::new().with_attempt(Attempt(n));
            let fut = ctx.clone().sync_scope(|| svc.call(()));
            if let Ok(v) = ctx.scope(fut).await {
                return Ok(v);
            }
        }
        Err(())
    });
    assert_eq!(res.unwrap(), 2);
    assert_eq!(all_calls(&r), [1, 0, 0, 1, 0]);
    assert_eq!(r.samples(m::CALL_DURATION_SECONDS, &[]), [0.1, 0.1]);
}
