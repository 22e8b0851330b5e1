//! DESIGN contract 4: one context, seen the same way by a generic service
//! (through the task-local) and by an axum handler (through extensions).

use std::convert::Infallible;

use axum::Router;
use axum::body::Body;
use axum::routing::post;
use backstop::ServiceBuilderExt;
use backstop::attempt_timeout::AttemptTimeoutLayer;
use backstop::http::{ErrorResponseLayer, PropagateContextLayer};
use backstop::retry::RetryLayer;
use backstop::sla::SlaTimeoutLayer;
use backstop::{Attempt, BoxError, Context, SetRequestIdLayer};
use backstop_tests::{assert_mounts_on_axum, ms, secs, seen};
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use tokio::time::Instant;
use tower::{ServiceBuilder, ServiceExt, service_fn};

/// A `service_fn` over `u32` sees its attempt deadline = min(attempt
/// timeout, remaining SLA) through the core context, on every attempt.
#[tokio::test(start_paused = true)]
async fn generic_service_sees_min_of_attempt_and_remaining_sla() {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    let svc = ServiceBuilder::new()
        .sla_timeout(SlaTimeoutLayer::new(secs(10)).unwrap())
        .retrying(
            RetryLayer::builder()
                .max_attempts(3)
                .backoff_base(secs(4))
                .backoff_max(secs(4))
                .min_attempt_time(ms(0))
                .seed(7)
                .build()
                .unwrap(),
        )
        .attempt_timeout(AttemptTimeoutLayer::new(secs(3)).unwrap())
        .service(service_fn(move |n: u32| {
            let ctx = Context::current();
            record.lock().unwrap().push((
                Instant::now(),
                ctx.attempt(),
                ctx.attempt_deadline(),
                ctx.sla_deadline(),
            ));
            async move { Err::<u32, BoxError>(format!("fail {n}").into()) }
        }));

    let start = Instant::now();
    let err = svc.oneshot(1).await.unwrap_err();
    let seen = seen.lock().unwrap();
    assert!(seen.len() >= 2, "at least one retry ran: {seen:?}");
    let sla = start + secs(10);
    for (at, attempt, attempt_deadline, sla_deadline) in seen.iter().copied() {
        assert_eq!(sla_deadline, Some(sla));
        assert_eq!(
            attempt_deadline,
            Some((at + secs(3)).min(sla)),
            "{attempt:?}"
        );
    }
    assert_eq!(seen[0].1, Some(Attempt(1)));
    assert_eq!(seen[1].1, Some(Attempt(2)));
    // A late attempt is capped by the SLA, not by its own 3 s.
    if let Some(last) = seen.get(2) {
        assert!(
            last.0 + secs(3) > sla,
            "third attempt starts within 3 s of the SLA"
        );
        assert_eq!(last.2, Some(sla));
    }
    drop(err);
}

/// An axum handler behind the stack reads the same values from its request
/// extensions, and the stack mounts with `Error = Infallible`.
#[tokio::test(start_paused = true)]
async fn axum_handler_sees_context_in_extensions() {
    let handler = Router::new().route(
        "/v1/echo",
        post(|req: Request<Body>| async move {
            let s = seen(&req);
            // Task-local and extensions agree.
            assert_eq!(s.ctx_attempt, s.ext_attempt);
            assert_eq!(s.ctx_sla, s.ext_sla);
            let body = format!(
                "{}|{}|{}",
                s.ext_attempt_no.map_or(0, Attempt::get),
                s.ext_sla.map_or(0, |d| d
                    .saturating_duration_since(Instant::now())
                    .as_millis()),
                s.ext_attempt.map_or(0, |d| d
                    .saturating_duration_since(Instant::now())
                    .as_millis()),
            );
            Ok::<_, Infallible>(body)
        }),
    );
    let stack = ServiceBuilder::new()
        .layer(SetRequestIdLayer::new().http())
        .layer(ErrorResponseLayer::new())
        .sla_timeout(SlaTimeoutLayer::new(secs(2)).unwrap())
        .attempt_timeout(AttemptTimeoutLayer::new(secs(30)).unwrap().for_http())
        .layer(PropagateContextLayer::new())
        .service(handler);
    assert_mounts_on_axum(&stack);
    let app = Router::new().route_service("/v1/echo", stack);

    let res = app
        .oneshot(Request::post("/v1/echo").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.headers().contains_key("x-request-id"));
    let body = res.into_body().collect().await.unwrap().to_bytes();
    // No Retry layer: no attempt number; the attempt deadline is capped at
    // the 2 s SLA, not its own 30 s.
    assert_eq!(std::str::from_utf8(&body).unwrap(), "0|2000|2000");
}
