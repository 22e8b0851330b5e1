//! Shared pieces of the cross-crate benchmarks: the services, the layers with
//! limits that do not bind, the full backstop stack and the same stack built
//! from tower's built-ins.
//!
//! Every bench target in `benches/benches/` builds its services from here, so
//! the in-process figures (`stack`, `saturation`, `memory`, `profile`) all
//! measure the same configurations. See `RESULTS.md` for the commands.

use std::future::{Ready, ready};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backstop::ServiceBuilderExt;
use backstop::admission::QueueAdmissionLayer;
use backstop::attempt_timeout::AttemptTimeoutLayer;
use backstop::concurrency::ConcurrencyLimitLayer;
use backstop::rate_limit::RateLimitLayer;
use backstop::retry::{RetryLayer, RetryStats};
use backstop::shield::{Completion, ShieldedOnCancelLayer, SyncHook, sync_hook};
use backstop::sla::SlaTimeoutLayer;
use tower::retry::budget::{Budget, TpsBudget};
use tower::{BoxError, Service, ServiceBuilder, service_fn};

/// The request every fast-path bench sends.
pub type Req = u64;

/// The SLA of the stacks (never reached by a no-op call).
pub const SLA: Duration = Duration::from_secs(60);
/// The per-attempt timeout of the stacks.
pub const ATTEMPT: Duration = Duration::from_secs(30);
/// The concurrency limit that does not bind.
pub const WIDE_CONCURRENCY: usize = 100_000;
/// The rate that does not bind (per second, and its burst).
pub const WIDE_RATE: u64 = 1_000_000_000;
/// The queue bound of `QueueAdmission` and of tower's `Buffer`.
pub const QUEUE: usize = 1024;

/// A no-op service: answers with the request, at once.
pub fn noop()
-> impl Service<Req, Response = Req, Error = BoxError, Future = Ready<Result<Req, BoxError>>>
+ Clone
+ Send
+ Sync
+ 'static {
    service_fn(|n: Req| ready(Ok::<_, BoxError>(n)))
}

/// The shield's hook used everywhere: a synchronous no-op.
pub type NoopHook = SyncHook<fn(Completion)>;

fn ignore(_: Completion) {}

/// `ShieldedOnCancelLayer` with a synchronous no-op hook.
pub fn shield() -> ShieldedOnCancelLayer<NoopHook> {
    ShieldedOnCancelLayer::new(sync_hook(ignore as fn(Completion)))
}

/// `SlaTimeoutLayer` of [`SLA`].
pub fn sla() -> SlaTimeoutLayer {
    SlaTimeoutLayer::new(SLA).expect("valid SLA")
}

static OUR_RETRY_STATS: Mutex<Vec<RetryStats>> = Mutex::new(Vec::new());

/// `RetryLayer` with three attempts and the default budget; its counters are
/// summed by [`our_retries`].
pub fn retry() -> RetryLayer {
    let layer = RetryLayer::builder()
        .max_attempts(3)
        .build()
        .expect("valid retry");
    OUR_RETRY_STATS.lock().unwrap().push(layer.stats());
    layer
}

/// Retries made by every [`retry`] layer built so far (a non-zero count on
/// the fast path means a spurious error was hidden by a retry).
pub fn our_retries() -> u64 {
    OUR_RETRY_STATS
        .lock()
        .unwrap()
        .iter()
        .map(RetryStats::retries)
        .sum()
}

/// `QueueAdmissionLayer` of [`QUEUE`] waiting, 5 s max wait.
pub fn admission() -> QueueAdmissionLayer {
    QueueAdmissionLayer::builder()
        .max_waiting(QUEUE)
        .max_wait(Duration::from_secs(5))
        .build()
        .expect("valid admission")
}

/// `RateLimitLayer` far above what any bench reaches.
pub fn rate_limit() -> RateLimitLayer {
    RateLimitLayer::per_second(WIDE_RATE)
        .burst(WIDE_RATE)
        .build()
        .expect("valid rate")
}

/// `ConcurrencyLimitLayer` of [`WIDE_CONCURRENCY`].
pub fn concurrency() -> ConcurrencyLimitLayer {
    ConcurrencyLimitLayer::new(WIDE_CONCURRENCY).expect("valid limit")
}

/// `AttemptTimeoutLayer` of [`ATTEMPT`].
pub fn attempt_timeout() -> AttemptTimeoutLayer {
    AttemptTimeoutLayer::new(ATTEMPT).expect("valid attempt timeout")
}

/// The full seven-layer backstop stack, in DESIGN order, with limits that do
/// not bind.
pub fn backstop_stack<S>(
    inner: S,
) -> impl Service<Req, Response = Req, Error = BoxError, Future: Send> + Clone + Send + Sync + 'static
where
    S: Service<Req, Response = Req, Error = BoxError> + Clone + Send + Sync + 'static,
    S::Future: Send,
{
    // `retry`, `rate_limit` and `concurrency_limit` are also inherent methods
    // of `ServiceBuilder` when tower's `retry` / `limit` features are on (as
    // here): inherent methods win, so the extension trait is named.
    ServiceBuilder::new()
        .shielded_on_cancel(shield())
        .sla_timeout(sla())
        .retrying(retry())
        .queue_admission(admission())
        .rate_limited(rate_limit())
        .concurrency_limited(concurrency())
        .attempt_timeout(attempt_timeout())
        .service(inner)
}

/// Retries made by [`TowerPolicy`] since the start (a non-zero count on the
/// fast path means a spurious error was hidden by a retry).
pub static TOWER_RETRIES: AtomicU64 = AtomicU64::new(0);

/// tower's retry policy closest to ours: retry any error while the
/// `TpsBudget` allows, up to three attempts.
#[derive(Clone, Debug)]
pub struct TowerPolicy {
    budget: Arc<TpsBudget>,
    left: u32,
}

impl TowerPolicy {
    /// Three attempts, paid from a default `TpsBudget`.
    pub fn new() -> Self {
        Self {
            budget: Arc::new(TpsBudget::default()),
            left: 2,
        }
    }
}

impl Default for TowerPolicy {
    fn default() -> Self {
        Self::new()
    }
}

impl tower::retry::Policy<Req, Req, BoxError> for TowerPolicy {
    type Future = Ready<()>;

    fn retry(&mut self, _: &mut Req, result: &mut Result<Req, BoxError>) -> Option<Self::Future> {
        if result.is_err() && self.left > 0 && self.budget.withdraw() {
            self.left -= 1;
            TOWER_RETRIES.fetch_add(1, Ordering::Relaxed);
            Some(ready(()))
        } else {
            None
        }
    }

    fn clone_request(&mut self, req: &Req) -> Option<Req> {
        self.budget.deposit();
        Some(*req)
    }
}

/// tower's `RateLimit` rate that does not bind.
pub fn tower_rate() -> tower::limit::rate::Rate {
    tower::limit::rate::Rate::new(u64::MAX / 2, Duration::from_secs(1))
}

/// `Buffer(QUEUE)` over tower's `RateLimit` over `inner`: tower's `RateLimit`
/// is not `Clone`, so sharing it takes a `Buffer`. Must be called inside a
/// runtime (the buffer spawns its worker).
pub fn tower_buffered_rate_limit<S>(
    inner: S,
) -> impl Service<Req, Response = Req, Error = BoxError, Future: Send> + Clone + Send + Sync + 'static
where
    S: Service<Req, Response = Req, Error = BoxError> + Send + 'static,
    S::Future: Send,
{
    ServiceBuilder::new()
        .buffer(QUEUE)
        .layer(tower::limit::RateLimitLayer::new(
            u64::MAX / 2,
            Duration::from_secs(1),
        ))
        .service(inner)
}

/// The same stack from tower's built-ins, outermost first: `Timeout(SLA)`,
/// `Retry` with a `TpsBudget`, `LoadShed`, `Buffer(QUEUE)`, `RateLimit`,
/// `ConcurrencyLimit`, `Timeout(ATTEMPT)`. Must be called inside a runtime.
pub fn tower_stack<S>(
    inner: S,
) -> impl Service<Req, Response = Req, Error = BoxError, Future: Send> + Clone + Send + Sync + 'static
where
    S: Service<Req, Response = Req, Error = BoxError> + Send + 'static,
    S::Future: Send,
{
    ServiceBuilder::new()
        .timeout(SLA)
        .retry(TowerPolicy::new())
        .load_shed()
        .buffer(QUEUE)
        .layer(tower::limit::RateLimitLayer::new(
            u64::MAX / 2,
            Duration::from_secs(1),
        ))
        .concurrency_limit(WIDE_CONCURRENCY)
        .timeout(ATTEMPT)
        .service(inner)
}

/// A request of the HTTP stack benches: what a gateway hands the stack once
/// it has read a small JSON body.
pub type HttpReq = http::Request<http_body_util::Full<bytes::Bytes>>;

/// A response of the HTTP stack benches.
pub type HttpRes<B> = http::Response<B>;

/// A small JSON chat request, as the HTTP stack benches send it.
pub fn http_request() -> HttpReq {
    http::Request::post("/v1/chat/completions")
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#,
        )))
        .expect("a valid request")
}

/// An upstream that answers every request at once with a small JSON body.
pub fn http_upstream<B>() -> impl Service<
    http::Request<B>,
    Response = http::Response<http_body_util::Full<bytes::Bytes>>,
    Error = std::convert::Infallible,
    Future: Send,
> + Clone
+ Send
+ Sync
+ 'static
where
    B: Send + 'static,
{
    service_fn(|_req: http::Request<B>| {
        ready(Ok(http::Response::new(http_body_util::Full::new(
            bytes::Bytes::from_static(br#"{"ok":true,"usage":{"total_tokens":3}}"#),
        ))))
    })
}

/// Every backstop layer with its HTTP behaviour, as the gateway stacks them
/// (request id, error mapping, shield, SLA, HTTP retry with body replay,
/// admission, two rate limits, the concurrency limit held to body end, the
/// HTTP attempt timeout, the context copied into the extensions), over
/// [`http_upstream`], with limits that do not bind.
pub fn http_stack() -> impl Service<
    HttpReq,
    Response = http::Response<
        impl http_body::Body<Data = bytes::Bytes, Error: std::fmt::Debug> + Send,
    >,
    Error = std::convert::Infallible,
    Future: Send,
> + Clone
+ Send
+ Sync
+ 'static {
    ServiceBuilder::new()
        .layer(backstop::SetRequestIdLayer::new().http())
        .layer(backstop::http::ErrorResponseLayer::new())
        .shielded_on_cancel(shield().for_http())
        .sla_timeout(sla())
        .retrying(
            RetryLayer::builder()
                .for_http()
                .build()
                .expect("valid retry"),
        )
        .queue_admission(admission())
        .rate_limited(rate_limit())
        .rate_limited(rate_limit())
        .concurrency_limited(concurrency().release_at_body_end())
        .attempt_timeout(attempt_timeout().for_http())
        .layer(backstop::http::PropagateContextLayer::new())
        .service(http_upstream())
}
