//! DESIGN's "What the client sees", row by row, through the whole HTTP stack
//! in front of a scripted upstream, on paused time.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use backstop::ServiceBuilderExt;
use backstop::admission::QueueAdmissionLayer;
use backstop::attempt_timeout::AttemptTimeoutLayer;
use backstop::concurrency::ConcurrencyLimitLayer;
use backstop::http::{ErrorResponseLayer, PropagateContextLayer};
use backstop::rate_limit::RateLimitLayer;
use backstop::retry::RetryLayer;
use backstop::shield::{Completion, Outcome, ShieldedOnCancelLayer, sync_hook};
use backstop::sla::SlaTimeoutLayer;
use backstop::{BoxError, ErrorKind, SetRequestIdLayer};
use backstop_test_util::{MockUpstream, Step};
use backstop_tests::{ms, secs};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use tokio::time::{Duration, Instant};
use tokio_test::{assert_pending, task};
use tower::util::BoxCloneService;
use tower::{ServiceBuilder, ServiceExt};

type Svc =
    BoxCloneService<Request<Full<Bytes>>, Response<UnsyncBoxBody<Bytes, BoxError>>, Infallible>;

struct Cfg {
    sla: Duration,
    attempt: Duration,
    attempts: u32,
    max_waiting: usize,
    max_wait: Duration,
    permits: usize,
    per_minute: u64,
}

impl Default for Cfg {
    fn default() -> Self {
        Self {
            sla: secs(10),
            attempt: secs(1),
            attempts: 3,
            max_waiting: 8,
            max_wait: secs(5),
            permits: 8,
            per_minute: 60_000,
        }
    }
}

struct Harness {
    svc: Svc,
    upstream: MockUpstream,
    outcomes: Arc<Mutex<Vec<Outcome>>>,
}

#[allow(clippy::needless_pass_by_value)] // reads as a literal at each call site
fn harness(upstream: MockUpstream, cfg: Cfg) -> Harness {
    let outcomes = Arc::new(Mutex::new(Vec::new()));
    let record = outcomes.clone();
    let svc = ServiceBuilder::new()
        .layer(SetRequestIdLayer::new().http())
        .layer(ErrorResponseLayer::new())
        .shielded_on_cancel(
            ShieldedOnCancelLayer::new(sync_hook(move |done: Completion| {
                record.lock().unwrap().push(done.outcome());
            }))
            .for_http(),
        )
        .sla_timeout(SlaTimeoutLayer::new(cfg.sla).unwrap())
        .retrying(
            RetryLayer::builder()
                .max_attempts(cfg.attempts)
                .backoff_base(ms(50))
                .backoff_max(ms(200))
                .seed(1)
                .for_http()
                .build()
                .unwrap(),
        )
        .queue_admission(
            QueueAdmissionLayer::builder()
                .max_waiting(cfg.max_waiting)
                .max_wait(cfg.max_wait)
                .build()
                .unwrap(),
        )
        .rate_limited(
            RateLimitLayer::per_minute(cfg.per_minute)
                .burst(1)
                .build()
                .unwrap(),
        )
        .concurrency_limited(
            ConcurrencyLimitLayer::new(cfg.permits)
                .unwrap()
                .release_at_body_end(),
        )
        .attempt_timeout(AttemptTimeoutLayer::new(cfg.attempt).unwrap().for_http())
        .layer(PropagateContextLayer::new())
        .service(upstream.clone());
    let svc = ServiceExt::<Request<Full<Bytes>>>::map_response(check(svc), |res| {
        res.map(|b| BodyExt::map_err(b, |e| -> BoxError { e }).boxed_unsync())
    })
    .boxed_clone();
    Harness {
        svc,
        upstream,
        outcomes,
    }
}

fn check<S, B>(s: S) -> S
where
    S: tower::Service<Request<Full<Bytes>>, Response = Response<B>, Error = Infallible>,
{
    s
}

fn post() -> Request<Full<Bytes>> {
    Request::post("/v1/chat/completions")
        .header("x-request-id", "client-req-1")
        .body(Full::new(Bytes::from_static(b"{\"model\":\"m\"}")))
        .unwrap()
}

struct Seen {
    status: u16,
    headers: http::HeaderMap,
    body: Bytes,
    json: serde_json_lite::Value,
}

/// A minimal view of the error JSON, without a serde dependency here.
mod serde_json_lite {
    #[derive(Debug, Default)]
    pub(super) struct Value {
        pub(super) error_type: Option<String>,
        pub(super) request_id: Option<String>,
    }

    fn field(body: &str, key: &str) -> Option<String> {
        let pat = format!("\"{key}\":\"");
        let start = body.find(&pat)? + pat.len();
        let end = body[start..].find('"')? + start;
        Some(body[start..end].to_owned())
    }

    pub(super) fn parse(body: &[u8]) -> Value {
        let s = std::str::from_utf8(body).unwrap_or("");
        Value {
            error_type: field(s, "type"),
            request_id: field(s, "request_id"),
        }
    }
}

async fn send(svc: &Svc) -> Seen {
    let res = svc.clone().oneshot(post()).await.unwrap();
    collect(res).await
}

async fn collect(res: Response<UnsyncBoxBody<Bytes, BoxError>>) -> Seen {
    let (parts, body) = res.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Seen {
        status: parts.status.as_u16(),
        headers: parts.headers,
        json: serde_json_lite::parse(&body),
        body,
    }
}

fn assert_generated(seen: &Seen, status: u16, kind: ErrorKind) {
    assert_eq!(seen.status, status, "{:?}", seen.body);
    assert_eq!(seen.json.error_type.as_deref(), Some(kind.as_str()));
    assert_eq!(seen.json.request_id.as_deref(), Some("client-req-1"));
    assert_eq!(seen.headers["x-request-id"], "client-req-1");
}

#[tokio::test(start_paused = true)]
async fn healthy_passes_through() {
    let h = harness(
        MockUpstream::script([Step::ok("{\"id\":\"x\"}").header("x-request-id", "v-1")]),
        Cfg::default(),
    );
    let seen = send(&h.svc).await;
    assert_eq!(seen.status, 200);
    assert_eq!(&seen.body[..], b"{\"id\":\"x\"}", "byte for byte");
    assert_eq!(seen.headers["x-request-id"], "client-req-1");
    assert_eq!(seen.headers["x-upstream-request-id"], "v-1");
    assert!(!seen.headers.contains_key("x-should-retry"));
    assert_eq!(h.upstream.calls(), 1);
    // Ours is forwarded upstream.
    assert_eq!(h.upstream.seen()[0].headers["x-request-id"], "client-req-1");
    assert_eq!(*h.outcomes.lock().unwrap(), [Outcome::Success]);
}

#[tokio::test(start_paused = true)]
async fn vendor_slow_then_a_retry_succeeds() {
    let h = harness(
        MockUpstream::script([Step::ok("slow").after(secs(5)), Step::ok("fast")]),
        Cfg::default(),
    );
    let seen = send(&h.svc).await;
    assert_eq!(seen.status, 200);
    assert_eq!(&seen.body[..], b"fast");
    assert_eq!(h.upstream.calls(), 2);
    assert_eq!(h.upstream.cancelled(), 1, "the slow attempt was cut");
}

#[tokio::test(start_paused = true)]
async fn vendor_down_is_502_after_every_attempt() {
    let up = MockUpstream::new();
    up.fallback(
        Step::status(503, "down")
            .header("retry-after", "0")
            .header("x-vendor", "y"),
    );
    let h = harness(up, Cfg::default());
    let seen = send(&h.svc).await;
    assert_generated(&seen, 502, ErrorKind::UpstreamFailure);
    assert_eq!(seen.headers["x-should-retry"], "false");
    assert!(!seen.headers.contains_key("x-vendor"));
    assert_eq!(h.upstream.calls(), 3);
    assert_eq!(
        *h.outcomes.lock().unwrap(),
        [Outcome::Error(ErrorKind::UpstreamFailure)]
    );

    let up = MockUpstream::new();
    up.fallback(Step::Fail { delay: ms(1) });
    let h = harness(up, Cfg::default());
    assert_generated(&send(&h.svc).await, 502, ErrorKind::UpstreamFailure);
    assert_eq!(h.upstream.calls(), 3, "connect errors are retried too");
}

#[tokio::test(start_paused = true)]
async fn vendor_4xx_passes_through_never_retried() {
    let h = harness(
        MockUpstream::script([Step::status(400, "{\"error\":{\"type\":\"vendor_bad\"}}")]),
        Cfg::default(),
    );
    let seen = send(&h.svc).await;
    assert_eq!(seen.status, 400);
    assert_eq!(seen.json.error_type.as_deref(), Some("vendor_bad"));
    assert_eq!(seen.headers["x-should-retry"], "false");
    assert_eq!(h.upstream.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn vendor_429_with_long_retry_after_passes_through_at_once() {
    let h = harness(
        MockUpstream::script([Step::status(429, "{\"error\":{\"type\":\"rate\"}}")
            .header("retry-after", "100")
            .header("x-should-retry", "true")]),
        Cfg::default(),
    );
    let start = Instant::now();
    let seen = send(&h.svc).await;
    assert_eq!(seen.status, 429);
    assert_eq!(
        seen.headers["retry-after"], "100",
        "vendor's Retry-After kept"
    );
    assert_eq!(seen.headers["x-should-retry"], "false");
    assert_eq!(h.upstream.calls(), 1);
    assert_eq!(
        Instant::now().saturating_duration_since(start),
        Duration::ZERO,
        "gave up at once"
    );
}

#[tokio::test(start_paused = true)]
async fn sla_deadline_is_504_at_the_deadline() {
    let up = MockUpstream::new();
    up.fallback(Step::Stall);
    let h = harness(
        up,
        Cfg {
            sla: secs(2),
            attempt: secs(30),
            ..Cfg::default()
        },
    );
    let start = Instant::now();
    let seen = send(&h.svc).await;
    assert_generated(&seen, 504, ErrorKind::Timeout);
    assert_eq!(seen.headers["x-should-retry"], "false");
    let took = Instant::now().saturating_duration_since(start);
    assert!(took >= secs(2) && took <= secs(2) + ms(2), "{took:?}");
    assert_eq!(h.upstream.calls(), 1, "an SLA expiry is never retried");
    assert_eq!(h.upstream.cancelled(), 1);
    assert_eq!(
        *h.outcomes.lock().unwrap(),
        [Outcome::Error(ErrorKind::Timeout)]
    );
}

#[tokio::test(start_paused = true)]
async fn local_rate_limit_waits_then_succeeds() {
    let h = harness(
        MockUpstream::new(),
        Cfg {
            per_minute: 60,
            ..Cfg::default()
        },
    );
    let start = Instant::now();
    assert_eq!(send(&h.svc).await.status, 200);
    assert_eq!(send(&h.svc).await.status, 200);
    assert_eq!(
        Instant::now().saturating_duration_since(start),
        secs(1),
        "the second waited for its token"
    );
}

#[tokio::test(start_paused = true)]
async fn queue_overload_is_429_with_retry_after() {
    let up = MockUpstream::new();
    up.fallback(Step::Stall);
    let h = harness(
        up,
        Cfg {
            permits: 1,
            max_waiting: 1,
            max_wait: secs(1),
            ..Cfg::default()
        },
    );
    let mut holder = task::spawn(h.svc.clone().oneshot(post()));
    assert_pending!(holder.poll());
    let mut waiter = task::spawn(h.svc.clone().oneshot(post()));
    assert_pending!(waiter.poll());

    // Queue full: answered at once.
    let seen = send(&h.svc).await;
    assert_generated(&seen, 429, ErrorKind::Overloaded);
    assert_eq!(seen.headers["retry-after"], "1");
    assert_eq!(seen.headers["retry-after-ms"], "1000");
    assert!(!seen.headers.contains_key("x-should-retry"));

    // The waiter's admission window ends: overloaded too, not retried.
    let seen = collect(waiter.await.unwrap()).await;
    assert_generated(&seen, 429, ErrorKind::Overloaded);
    assert_eq!(
        h.upstream.calls(),
        1,
        "neither refused request reached the upstream"
    );
}
