//! The `tracing` events of an attempt: fields from the context, and no
//! header or body value at any level.
//!
//! In a test binary of their own: `tracing` caches each callsite's interest
//! process-wide, so a test on another thread that hits a callsite with no
//! subscriber could make a scoped subscriber miss events. Every test here
//! installs one.
#![allow(missing_docs)]

use std::fmt::{self, Write as _};
use std::sync::{Arc, Mutex};

use backstop_attempt_timeout::AttemptTimeoutLayer;
use backstop_core::{Attempt, BoxError, Context, RequestId};
use tokio::time::Duration;
use tower::{Layer, ServiceExt, service_fn};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

/// Every event at every level, as one `key=value` line each.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<String>>>);

struct Line(String);

impl Visit for Line {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let _ = write!(self.0, " {}={:?}", field.name(), value);
    }
}

impl Subscriber for Lines {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut line = Line(event.metadata().level().to_string());
        event.record(&mut line);
        self.0.lock().unwrap().push(line.0);
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

fn traced<T>(scenario: impl AsyncFnOnce() -> T) -> (T, Vec<String>) {
    let lines = Lines::default();
    let out = tracing::subscriber::with_default(lines.clone(), || {
        tracing::callsite::rebuild_interest_cache();
        let rt = backstop_test_util::paused_runtime();
        rt.block_on(scenario())
    });
    let lines = lines.0.lock().unwrap().clone();
    (out, lines)
}

fn ctx() -> Context {
    Context::new()
        .with_request_id(RequestId::parse(b"req-42").unwrap())
        .with_attempt(Attempt(2))
}

#[test]
fn call_and_outcome_carry_request_id_and_attempt() {
    let (res, lines) = traced(async || {
        let svc = AttemptTimeoutLayer::new(Duration::from_secs(30))
            .unwrap()
            .layer(service_fn(|()| async { Ok::<_, BoxError>(()) }));
        let ctx = ctx();
        let fut = ctx.clone().sync_scope(|| svc.oneshot(()));
        ctx.scope(fut).await
    });
    res.unwrap();
    let call = lines
        .iter()
        .find(|l| l.contains("calling upstream"))
        .expect("call event");
    assert!(call.starts_with("DEBUG"), "{call}");
    assert!(call.contains("request_id=req-42"), "{call}");
    assert!(call.contains("attempt=2"), "{call}");
    assert!(call.contains("timeout_ms=30000"), "{call}");
    let done = lines
        .iter()
        .find(|l| l.contains("upstream attempt succeeded"))
        .expect("outcome event");
    assert!(
        done.contains("request_id=req-42") && done.contains("attempt=2"),
        "{done}"
    );
}

#[cfg(feature = "http")]
#[test]
fn no_header_or_body_value_is_logged() {
    use bytes::Bytes;
    use http::{Request, Response};
    use http_body_util::{BodyExt, Full};

    const SECRETS: [&str; 4] = [
        "sk-upstream-secret",
        "client-key-secret",
        "request-body-secret",
        "response-body-secret",
    ];
    let (res, lines) = traced(async || {
        let svc = AttemptTimeoutLayer::new(Duration::from_secs(30))
            .unwrap()
            .for_http()
            .layer(service_fn(|req: Request<Full<Bytes>>| async move {
                let body = req.into_body().collect().await?.to_bytes();
                assert_eq!(&body[..], b"request-body-secret");
                let res = Response::builder()
                    .status(500)
                    .header("authorization", "Bearer sk-upstream-secret")
                    .body(Full::new(Bytes::from_static(b"response-body-secret")))?;
                Ok::<_, BoxError>(res)
            }));
        let req = Request::post("/v1/chat/completions")
            .header("authorization", "Bearer client-key-secret")
            .header("x-api-key", "sk-upstream-secret")
            .body(Full::new(Bytes::from_static(b"request-body-secret")))
            .unwrap();
        let ctx = ctx();
        let fut = ctx.clone().sync_scope(|| svc.oneshot(req));
        let res = ctx.scope(fut).await?;
        res.into_body().collect().await.map(|_| ())
    });
    res.unwrap();
    assert!(
        lines.iter().any(|l| l.contains("request_id=req-42")),
        "events were captured: {lines:?}"
    );
    for line in &lines {
        for secret in SECRETS {
            assert!(!line.contains(secret), "{secret} leaked: {line}");
        }
    }
}
