//! The router: the whole stack in DESIGN's order.

use std::cell::RefCell;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Poll, Waker};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use backstop::admission::{QueueAdmissionLayer, QueueHandle};
use backstop::attempt_timeout::AttemptTimeoutLayer;
use backstop::concurrency::{ConcurrencyHandle, ConcurrencyLimitLayer};
use backstop::rate_limit::RateLimitLayer;
use backstop::retry::{Jitter as RetryJitter, RetryLayer, RetryStats};
use backstop::shield::{Completion, HookTracker, ShieldedOnCancelLayer, sync_hook};
use backstop::sla::SlaTimeoutLayer;
use backstop::{Context, CostOverBurst, ErrorKind, RequestId, SetRequestIdLayer};
use backstop_core::http::header::X_REQUEST_TIMEOUT_MS;
use backstop_core::http::{
    ErrorResponseLayer, PropagateContextLayer, json_error, retry_after_headers,
};
use backstop_core::metrics::ErrorCounters;
use backstop_health::Readiness;
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method, StatusCode};
use http_body_util::{Either, Full};
use thread_local::ThreadLocal;
use tokio::time::{Instant, Sleep, sleep_until};
use tower::{Service, ServiceBuilder, ServiceExt};

use crate::config::{Config, Jitter};
use crate::service::{HttpApp, RequestBody};
use crate::tokens::{GatherReservations, SettleLayer, TokenEstimate, estimate};
use crate::trace::{CountErrorsLayer, RequestMeta, TraceLayer};
use crate::upstream::{AnyUpstream, ForwardLayer};

/// An error building the app: the setting (as a config key) and why.
pub type BuildError = crate::config::ConfigError;

/// Live handles into the stack, for readiness, shutdown, the demo and tests.
#[derive(Debug, Clone)]
pub struct Handles {
    /// The admission queue.
    pub queue: QueueHandle,
    /// The concurrency limit.
    pub concurrency: ConcurrencyHandle,
    /// Cancel hooks still running, drained at shutdown.
    pub hooks: HookTracker,
    /// Retry counters.
    pub retries: RetryStats,
    /// Readiness (backstop-health): draining, saturation, upstream errors.
    pub readiness: Readiness,
    /// Requests the shield saw cancelled (client went away).
    pub cancelled: Arc<AtomicU64>,
    /// Requests the shield saw end, whatever the outcome.
    pub completed: Arc<AtomicU64>,
}

/// What [`build`] makes: the app, as a router and as the server's service,
/// and its handles.
#[derive(Debug, Clone)]
pub struct App {
    /// The full app, outer layers included, as an axum router (in-process
    /// use and tests); it hands every request to [`http`](Self::http).
    pub router: Router,
    /// The full app as the server drives it (see [`HttpApp`]).
    pub http: HttpApp,
    /// Handles into the stack.
    pub handles: Handles,
}

/// Optional pieces of the app.
#[derive(Default)]
#[allow(missing_debug_implementations)]
pub struct AppOptions {
    /// Renders `/metrics` (the Prometheus recorder's handle), if installed.
    pub metrics: Option<Arc<dyn Fn() -> String + Send + Sync>>,
    /// Fires at the shutdown timeout: open SSE streams end with the error
    /// event.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// Write the access line straight to the log buffer (see
    /// [`TraceLayer::direct_log`]): for a process whose subscriber is
    /// [`JsonLines`](crate::logfmt::JsonLines) over
    /// [`StderrLines`](crate::logwriter::StderrLines), as the binary's.
    pub direct_log: bool,
}

/// What every route shares.
struct Gateway {
    client_keys: Vec<Vec<u8>>,
    client_tpm: Vec<Option<u64>>,
    tokens_burst: Option<u64>,
    sla: Duration,
    max_body: usize,
    max_buffered: usize,
    buffered: AtomicUsize,
    default_completion: u64,
    overload_status: StatusCode,
    retry_after: Duration,
    handles: Handles,
    errors: Arc<ErrorCounters>,
    metrics: Option<Arc<dyn Fn() -> String + Send + Sync>>,
}

/// The router for a configuration, in front of `upstream`.
pub fn app(config: &Config, upstream: impl Into<AnyUpstream>) -> Result<Router, BuildError> {
    build(config, upstream, AppOptions::default()).map(|a| a.router)
}

fn key(prefix: &'static str) -> impl Fn(backstop::ConfigError) -> BuildError {
    move |e| BuildError::new(format!("{prefix}.{}", e.setting()), e.reason().to_owned())
}

/// Builds the app: the stack of DESIGN's "The gateway's stack".
#[allow(clippy::too_many_lines, clippy::needless_pass_by_value)]
///
/// `upstream` is any [`Upstream`](crate::upstream::Upstream) or the HTTP/1
/// pool itself (see [`AnyUpstream`]).
pub fn build(
    config: &Config,
    upstream: impl Into<AnyUpstream>,
    options: AppOptions,
) -> Result<App, BuildError> {
    let upstream: AnyUpstream = upstream.into();
    let overload_status = StatusCode::from_u16(config.admission.overload_status)
        .map_err(|_| BuildError::new("admission.overload_status", "not a status"))?;
    let cancelled = Arc::new(AtomicU64::new(0));
    let completed = Arc::new(AtomicU64::new(0));
    let (c1, c2) = (Arc::clone(&cancelled), Arc::clone(&completed));
    let shield = ShieldedOnCancelLayer::builder(sync_hook(move |done: Completion| {
        c2.fetch_add(1, Ordering::Relaxed);
        if done.outcome().is_cancelled() {
            c1.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                request_id = done.request_id().map(RequestId::as_str),
                elapsed_ms = done.elapsed().as_millis() as u64,
                "request cancelled by the client"
            );
        }
    }))
    .hook_timeout(config.hook_timeout)
    .build()
    .map_err(key("shield"))?
    .for_http();
    let sla = SlaTimeoutLayer::new(config.sla_timeout).map_err(key("sla"))?;
    let r = &config.retry;
    let retry = RetryLayer::builder()
        .max_attempts(r.max_attempts)
        .backoff_base(r.backoff_base)
        .backoff_max(r.backoff_max)
        .jitter(match r.jitter {
            Jitter::Additive => RetryJitter::Additive,
            Jitter::Full => RetryJitter::Full,
        })
        .retry_after_max(r.retry_after_max)
        .ratio(r.budget_ratio)
        .min_per_second(r.budget_min_per_second)
        .window(r.budget_window)
        .min_attempt_time(r.min_attempt_time)
        .for_http()
        .max_replay_bytes(r.max_replay_bytes)
        .build()
        .map_err(|e| {
            let k = match e.setting() {
                "ratio" => "budget_ratio",
                "min_per_second" => "budget_min_per_second",
                "window" => "budget_window",
                other => other,
            };
            BuildError::new(format!("retry.{k}"), e.reason().to_owned())
        })?;
    let admission = QueueAdmissionLayer::builder()
        .max_waiting(config.admission.max_waiting)
        .max_wait(config.admission.queue_timeout)
        .retry_after(config.admission.retry_after)
        .build()
        .map_err(|e| {
            BuildError::new(format!("admission.{}", e.setting()), e.reason().to_owned())
        })?;
    let rl = &config.rate_limit;
    let rpm = RateLimitLayer::per_minute(rl.requests_per_minute)
        .burst(rl.requests_burst)
        .name("rpm")
        .build()
        .map_err(key("rate_limit"))?;
    let tpm = match rl.tokens_per_minute {
        None => None,
        Some(n) => Some(
            RateLimitLayer::per_minute(n)
                .burst(rl.tokens_burst.unwrap_or(n))
                .cost_fn(
                    crate::tokens::token_cost::<backstop::retry::body::ReplayBody<Full<Bytes>>>,
                )
                .name("tpm")
                .build()
                .map_err(key("rate_limit"))?
                .attach(GatherReservations),
        ),
    };
    let concurrency = ConcurrencyLimitLayer::new(config.max_in_flight)
        .map_err(key("concurrency"))?
        .release_at_body_end();
    let a = &config.attempt;
    let attempt = AttemptTimeoutLayer::new(a.timeout)
        .map_err(key("attempt"))?
        .for_http()
        .first_byte_timeout(a.first_byte_timeout)
        .map_err(key("attempt"))?
        .idle_timeout(a.idle_timeout)
        .map_err(key("attempt"))?
        .max_stream_duration(a.max_stream_duration)
        .map_err(key("attempt"))?;
    let base = config
        .upstream
        .url
        .as_deref()
        .unwrap_or("http://simulated-vendor");
    let forward = ForwardLayer::new(
        base,
        config.upstream.api_key.as_ref().map(|s| s.0.as_str()),
        config.upstream.api_key.is_none() && config.clients.is_empty(),
    )
    .map_err(|e| BuildError::new("upstream.api_key_env", e))?;
    let error_layer = ErrorResponseLayer::new()
        .overload_status(overload_status)
        .map_err(key("admission"))?;

    let (queue, permits) = (admission.queue(), concurrency.handle());
    let readiness = Readiness::builder()
        .saturation(move || queue.is_full(), move || permits.available_permits())
        .upstream_errors(config.ready_upstream_errors)
        .build();
    let handles = Handles {
        queue: admission.queue(),
        concurrency: concurrency.handle(),
        hooks: shield.tracker(),
        retries: retry.stats(),
        readiness: readiness.clone(),
        cancelled,
        completed,
    };

    // One stack per client (its own limits), sharing every global layer:
    // a clone of a layer value is the same limiter, queue and budget.
    let mut client_limits: Vec<(Option<u64>, Option<u64>, Option<u64>)> = config
        .clients
        .iter()
        .map(|c| (c.requests_per_minute, c.requests_burst, c.tokens_per_minute))
        .collect();
    if client_limits.is_empty() {
        client_limits.push((None, None, None));
    }
    // Six metric handles: shared, not cloned per request.
    let errors = Arc::new(ErrorCounters::new());
    let mut stacks = Vec::with_capacity(client_limits.len());
    for (i, (c_rpm, c_burst, c_tpm)) in client_limits.iter().copied().enumerate() {
        let client_key = |k: &str, e: backstop::ConfigError| {
            BuildError::new(format!("clients[{i}].{k}"), e.reason().to_owned())
        };
        let per_client_requests = match c_rpm {
            None => None,
            Some(n) => Some(
                RateLimitLayer::per_minute(n)
                    .burst(c_burst.unwrap_or((n / 60).max(1)))
                    .name("client_rpm")
                    .build()
                    .map_err(|e| client_key("requests_per_minute", e))?,
            ),
        };
        let per_client_tokens = match c_tpm {
            None => None,
            Some(n) => Some(
                RateLimitLayer::per_minute(n)
                    .burst(n)
                    .cost_fn(
                        crate::tokens::token_cost::<backstop::retry::body::ReplayBody<Full<Bytes>>>,
                    )
                    .name("client_tpm")
                    .build()
                    .map_err(|e| client_key("tokens_per_minute", e))?
                    .attach(GatherReservations),
            ),
        };
        let stack = ServiceBuilder::new()
            // Boxed here, once: the handler and the outer layers move the
            // response several times, and the stack's body (a wrapper per
            // layer) is several hundred bytes.
            .map_response(|res: http::Response<_>| res.map(Body::new))
            .layer(error_layer)
            .layer(CountErrorsLayer::new(Arc::clone(&errors)))
            .layer(shield.clone())
            .layer(sla)
            .layer(retry.clone())
            .layer(SettleLayer)
            .layer(admission.clone())
            .option_layer(per_client_requests)
            .option_layer(per_client_tokens)
            .layer(rpm.clone())
            .option_layer(tpm.clone())
            .layer(concurrency.clone())
            // Every attempt's outcome feeds readiness, timeouts included.
            .map_result({
                let r = readiness.clone();
                move |res| {
                    r.record_http(&res);
                    res
                }
            })
            .layer(attempt)
            .layer(PropagateContextLayer::new())
            .layer(forward.clone())
            .service(upstream.clone());
        stacks.push(stack);
    }

    let gw = Arc::new(Gateway {
        client_keys: config
            .clients
            .iter()
            .map(|c| c.key.0.as_bytes().to_vec())
            .collect(),
        client_tpm: config.clients.iter().map(|c| c.tokens_per_minute).collect(),
        tokens_burst: rl.tokens_per_minute.map(|n| rl.tokens_burst.unwrap_or(n)),
        sla: config.sla_timeout,
        max_body: config.limits.max_body_bytes,
        max_buffered: config.limits.max_buffered_bytes,
        buffered: AtomicUsize::new(0),
        default_completion: rl.default_completion_tokens,
        overload_status,
        retry_after: config.admission.retry_after,
        handles: handles.clone(),
        errors,
        metrics: options.metrics,
    });

    let v1 = Routes(Arc::new(RoutesInner {
        gw: Arc::clone(&gw),
        stacks,
        local: ThreadLocal::new(),
    }));
    let others = router(gw, &v1);
    let http = HttpApp::new(
        ServiceBuilder::new()
            .layer(SetRequestIdLayer::new().http())
            .layer(TraceLayer::new(options.shutdown).direct_log(options.direct_log))
            .service_fn(move |req: http::Request<RequestBody>| {
                // One `Arc` taken per request: the one its route needs.
                let route = if is_v1(req.method(), req.uri().path()) {
                    Route::V1(v1.clone())
                } else {
                    Route::Other(others.clone())
                };
                dispatch(route, req)
            }),
    );
    let router = Router::new().fallback_service(http.clone());
    Ok(App {
        router,
        http,
        handles,
    })
}

/// The axum router behind [`Dispatch`]: every route, so that what the fast
/// path does not take (other methods, `HEAD`, unknown paths) is answered as
/// an axum router answers it.
fn router<S>(gw: Arc<Gateway>, v1_routes: &Routes<S>) -> Router
where
    S: Service<http::Request<Full<Bytes>>, Response = Response, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let v1 = {
        let v1_routes = v1_routes.clone();
        move |req: Request| {
            let v1_routes = v1_routes.clone();
            async move { v1_routes.v1(req.map(Either::Right)).await }
        }
    };
    Router::new()
        .route("/v1/chat/completions", post(v1.clone()))
        .route("/v1/completions", post(v1.clone()))
        .route("/v1/embeddings", post(v1.clone()))
        .route("/v1/models", get(v1))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(gw)
}

/// Whether a request is one of the `/v1` routes on its method: those go
/// straight to the per-client stacks.
fn is_v1(method: &Method, path: &str) -> bool {
    match path {
        "/v1/chat/completions" | "/v1/completions" | "/v1/embeddings" => method == Method::POST,
        "/v1/models" => method == Method::GET,
        _ => false,
    }
}

/// The innermost of the outer layers: the `/v1` routes by hand, the rest
/// through the axum router.
async fn dispatch<S>(
    route: Route<S>,
    req: http::Request<RequestBody>,
) -> Result<Response, Infallible>
where
    S: Service<http::Request<Full<Bytes>>, Response = Response, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    match route {
        // The stack's answer, or one the gateway made.
        Route::V1(v1) => Ok(v1.v1(req).await.unwrap_or_else(|generated| generated)),
        Route::Other(others) => others.oneshot(req).await,
    }
}

/// Where [`dispatch`] sends a request.
enum Route<S: Send> {
    /// A `/v1` route on its method.
    V1(Routes<S>),
    /// Everything else: the axum router.
    Other(Router),
}

/// The `/v1` routes: what they share and the per-client stacks.
struct Routes<S: Send>(Arc<RoutesInner<S>>);

impl<S: Send> Clone for Routes<S> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

struct RoutesInner<S: Send> {
    gw: Arc<Gateway>,
    stacks: Vec<S>,
    /// Each calling thread's copy of `stacks`, called in place: a clone of
    /// a stack per request counted some thirty shared `Arc`s up and down
    /// (see [`HttpApp`]'s module docs). A copy shares every limiter, queue
    /// and budget with the others.
    local: ThreadLocal<RefCell<Vec<S>>>,
}

fn request_id<B>(req: &http::Request<B>) -> Option<RequestId> {
    req.extensions().get::<RequestId>().cloned()
}

impl Gateway {
    /// A generated error the gateway answers itself, counted.
    fn error(
        &self,
        status: StatusCode,
        kind: ErrorKind,
        message: &str,
        id: Option<&RequestId>,
    ) -> Response {
        self.errors.record(kind);
        json_error(status, kind, message, id).map(Body::from)
    }

    /// The client a `/v1` request's key names and its SLA deadline, counted
    /// from the head's arrival (`head`); or the error to answer.
    // The error is the answer `v1` returns as its own error: built once, on
    // a cold path.
    #[allow(clippy::result_large_err)]
    fn admit_head(
        &self,
        headers: &http::HeaderMap,
        head: Instant,
        id: Option<&RequestId>,
    ) -> Result<(usize, Instant), Response> {
        let Some(client) = self.authenticate(headers) else {
            return Err(self.error(
                StatusCode::UNAUTHORIZED,
                ErrorKind::Unauthorized,
                "missing or wrong client key",
                id,
            ));
        };
        let budget = match client_deadline(headers) {
            Ok(Some(d)) => d.min(self.sla),
            Ok(None) => self.sla,
            Err(()) => {
                return Err(self.error(
                    StatusCode::BAD_REQUEST,
                    ErrorKind::InvalidRequest,
                    "x-request-timeout-ms must be one positive integer",
                    id,
                ));
            }
        };
        Ok((client, head + budget))
    }

    /// The tokens a buffered `/v1` request is estimated to cost, checked
    /// against every token burst it must fit; or the error to answer (a
    /// `POST` body that is not one JSON object, a cost over a burst).
    // The error is the answer `v1` returns as its own error: built once, on
    // a cold path.
    #[allow(clippy::result_large_err)]
    fn token_estimate(
        &self,
        client: usize,
        parts: &http::request::Parts,
        bytes: &[u8],
        id: Option<&RequestId>,
    ) -> Result<u64, Response> {
        let requested = if parts.method == Method::POST {
            match crate::json::request_fields(bytes) {
                Some(fields) => fields.completion(),
                None => {
                    return Err(self.error(
                        StatusCode::BAD_REQUEST,
                        ErrorKind::InvalidRequest,
                        "the request body must be a JSON object",
                        id,
                    ));
                }
            }
        } else {
            None
        };
        let est = estimate(
            parts.uri.path(),
            bytes.len(),
            requested,
            self.default_completion,
        );
        let limits = [
            self.tokens_burst,
            self.client_tpm.get(client).copied().flatten(),
        ];
        for limit in limits.into_iter().flatten() {
            if est > limit {
                let e = CostOverBurst::new(est, limit);
                return Err(self.error(
                    StatusCode::BAD_REQUEST,
                    ErrorKind::InvalidRequest,
                    &e.to_string(),
                    id,
                ));
            }
        }
        Ok(est)
    }
}

async fn not_found(State(gw): State<Arc<Gateway>>, req: Request) -> Response {
    let msg = format!("no route for {}", req.uri().path());
    gw.error(
        StatusCode::NOT_FOUND,
        ErrorKind::InvalidRequest,
        &msg,
        request_id(&req).as_ref(),
    )
}

async fn method_not_allowed(State(gw): State<Arc<Gateway>>, req: Request) -> Response {
    let msg = format!(
        "method {} not allowed on {}",
        req.method(),
        req.uri().path()
    );
    gw.error(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorKind::InvalidRequest,
        &msg,
        request_id(&req).as_ref(),
    )
}

async fn health() -> Response {
    axum::Json(serde_json::json!({"status": "ok"})).into_response()
}

async fn ready(State(gw): State<Arc<Gateway>>) -> Response {
    backstop_health::ready_response(&gw.handles.readiness)
}

async fn metrics(State(gw): State<Arc<Gateway>>) -> Response {
    let text = gw.metrics.as_ref().map(|f| f()).unwrap_or_default();
    (
        [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        text,
    )
        .into_response()
}

/// Constant-time equality (over the longer length).
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    let n = a.len().max(b.len());
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..n {
        diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

impl Gateway {
    /// The index of the authenticated client's stack.
    fn authenticate(&self, headers: &HeaderMap) -> Option<usize> {
        if self.client_keys.is_empty() {
            return Some(0);
        }
        let given = headers
            .get(http::header::AUTHORIZATION)
            .map(http::HeaderValue::as_bytes)
            .and_then(|v| {
                let (scheme, rest) = v.split_at_checked(7)?;
                scheme.eq_ignore_ascii_case(b"bearer ").then_some(rest)
            })?;
        // Compare against every key, so the time does not tell which matched.
        let mut found = None;
        for (i, k) in self.client_keys.iter().enumerate() {
            if ct_eq(given, k) && found.is_none() {
                found = Some(i);
            }
        }
        found
    }
}

/// Parses `x-request-timeout-ms`: a positive integer, or absent.
fn client_deadline(headers: &HeaderMap) -> Result<Option<Duration>, ()> {
    let mut values = headers.get_all(X_REQUEST_TIMEOUT_MS).iter();
    let Some(v) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(());
    }
    let s = v.to_str().map_err(|_| ())?;
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(());
    }
    match s.parse::<u64>() {
        Ok(0) | Err(_) => Err(()),
        Ok(n) => Ok(Some(Duration::from_millis(n))),
    }
}

/// Returns buffered bytes to the global count when dropped.
struct BufferedGuard<'a> {
    counter: &'a AtomicUsize,
    n: usize,
}

impl Drop for BufferedGuard<'_> {
    fn drop(&mut self) {
        self.counter.fetch_sub(self.n, Ordering::Relaxed);
    }
}

impl<S> Routes<S>
where
    S: Service<http::Request<Full<Bytes>>, Response = Response, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    /// Every `/v1/*` route: auth, the deadline from head arrival, body
    /// limit, buffer and parse, then the per-client stack; the errors the
    /// gateway answers itself as `Err`.
    async fn v1(&self, req: http::Request<RequestBody>) -> Result<Response, Response> {
        let gw = &*self.0.gw;
        let head = req
            .extensions()
            .get::<RequestMeta>()
            .map_or_else(Instant::now, |m| m.arrival);
        let id = request_id(&req);
        let id = id.as_ref();
        let (client, deadline) = gw.admit_head(req.headers(), head, id)?;
        let (mut parts, body) = req.into_parts();
        if let Some(len) = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        {
            if len > gw.max_body as u64 {
                return Err(too_large(gw, id));
            }
        }
        let bytes = match read_body(body, gw.max_body, deadline).await {
            Err(ReadError::TimedOut) => {
                return Err(gw.error(
                    StatusCode::GATEWAY_TIMEOUT,
                    ErrorKind::Timeout,
                    "SLA deadline expired while reading the request body",
                    id,
                ));
            }
            Err(ReadError::TooLarge) => return Err(too_large(gw, id)),
            Err(ReadError::Failed) => {
                return Err(gw.error(
                    StatusCode::BAD_REQUEST,
                    ErrorKind::InvalidRequest,
                    "could not read the request body",
                    id,
                ));
            }
            Ok(bytes) => bytes,
        };
        let now = gw.buffered.fetch_add(bytes.len(), Ordering::Relaxed) + bytes.len();
        let _guard = BufferedGuard {
            counter: &gw.buffered,
            n: bytes.len(),
        };
        if now > gw.max_buffered {
            let mut res = gw.error(
                gw.overload_status,
                ErrorKind::Overloaded,
                "too many request bytes buffered",
                id,
            );
            retry_after_headers(res.headers_mut(), gw.retry_after);
            return Err(res);
        }
        let est = gw.token_estimate(client, &parts, &bytes, id)?;
        // One extension entry per request (see `RequestMeta`); the trace
        // layer put it there.
        parts
            .extensions
            .get_or_insert_with(|| RequestMeta::new(Instant::now()))
            .tokens = TokenEstimate(est);
        let req = http::Request::from_parts(parts, Full::new(bytes));
        // The deadline counts from the head's arrival: the stack's SLA
        // layer reads it from the context in its `call()`, and every layer
        // that needs the context later captured it there and scopes its own
        // polls, so only the call is scoped here.
        let fut = match self.call_local(client, req, deadline) {
            Ok(fut) => fut,
            Err(req) => {
                // Not ready at once (no layer of the stack makes that
                // happen today): a clone of the stack, awaited.
                let mut stack = self.0.stacks[client].clone();
                if let Err(never) = stack.ready().await {
                    match never {}
                }
                call_stack(&mut stack, req, deadline)
            }
        };
        match fut.await {
            Ok(res) => Ok(res),
            Err(never) => match never {},
        }
    }

    /// Calls the client's stack, this thread's copy, if it is ready now;
    /// else gives the request back.
    #[allow(clippy::type_complexity, clippy::result_large_err)]
    fn call_local(
        &self,
        client: usize,
        req: http::Request<Full<Bytes>>,
        deadline: Instant,
    ) -> Result<Pin<Box<S::Future>>, http::Request<Full<Bytes>>> {
        let local = self.0.local.get_or(|| RefCell::new(self.0.stacks.clone()));
        // Busy only if the stack called the app again on this thread.
        let Ok(mut stacks) = local.try_borrow_mut() else {
            return Err(req);
        };
        let stack = &mut stacks[client];
        match stack.poll_ready(&mut std::task::Context::from_waker(Waker::noop())) {
            Poll::Ready(Ok(())) => Ok(call_stack(stack, req, deadline)),
            Poll::Ready(Err(never)) => match never {},
            Poll::Pending => Err(req),
        }
    }
}

/// Calls a ready per-client `stack` with the deadline counted from the
/// head's arrival in the context of the call.
///
/// The stack's future is several KiB: boxed where it is made, so the
/// futures of the handler and of the outer layers stay small (each of them
/// is moved as it is built).
fn call_stack<S>(
    stack: &mut S,
    req: http::Request<Full<Bytes>>,
    deadline: Instant,
) -> Pin<Box<S::Future>>
where
    S: Service<http::Request<Full<Bytes>>>,
{
    let ctx = Context::current().with_sla_deadline(deadline);
    Box::pin(ctx.sync_scope(|| stack.call(req)))
}

/// Why [`read_body`] gave up.
#[derive(Debug, PartialEq, Eq)]
enum ReadError {
    /// The deadline passed first.
    TimedOut,
    /// More than the limit.
    TooLarge,
    /// The body failed.
    Failed,
}

/// The whole request body, at most `max` bytes, read by `deadline`.
///
/// What `timeout_at(deadline, Limited::new(body, max).collect())` and
/// `to_bytes()` give (the body first, then the deadline, at each poll;
/// trailers ignored), without their cost on the common path: a body that is
/// there already (a small one comes with the head) is taken as its one
/// frame, with no list of chunks, and the timer is made only when the body
/// has to be waited for.
async fn read_body<B>(body: B, max: usize, deadline: Instant) -> Result<Bytes, ReadError>
where
    B: http_body::Body<Data = Bytes>,
{
    let mut body = std::pin::pin!(body);
    let mut len = 0;
    let mut first: Option<Bytes> = None;
    let mut joined = BytesMut::new();
    let mut sleep: Option<Pin<Box<Sleep>>> = None;
    std::future::poll_fn(|cx| {
        loop {
            match body.as_mut().poll_frame(cx) {
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Ready(Some(Err(_))) => return Poll::Ready(Err(ReadError::Failed)),
                Poll::Ready(Some(Ok(frame))) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    if data.len() > max - len {
                        return Poll::Ready(Err(ReadError::TooLarge));
                    }
                    len += data.len();
                    match first.take() {
                        None if joined.is_empty() => first = Some(data),
                        earlier => {
                            if let Some(earlier) = earlier {
                                joined.extend_from_slice(&earlier);
                            }
                            joined.extend_from_slice(&data);
                        }
                    }
                }
                Poll::Pending => {
                    let sleep = sleep.get_or_insert_with(|| Box::pin(sleep_until(deadline)));
                    return match sleep.as_mut().poll(cx) {
                        Poll::Ready(()) => Poll::Ready(Err(ReadError::TimedOut)),
                        Poll::Pending => Poll::Pending,
                    };
                }
            }
        }
    })
    .await?;
    Ok(first.unwrap_or_else(|| joined.freeze()))
}

fn too_large(gw: &Gateway, id: Option<&RequestId>) -> Response {
    let msg = format!("request body over {} bytes", gw.max_body);
    gw.error(
        StatusCode::PAYLOAD_TOO_LARGE,
        ErrorKind::InvalidRequest,
        &msg,
        id,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"abcd"));
        assert!(!ct_eq(b"", b"a"));
    }

    /// Frames in order, then (if `hang`) pending for ever.
    struct Frames {
        frames: std::collections::VecDeque<Result<http_body::Frame<Bytes>, &'static str>>,
        hang: bool,
    }

    impl http_body::Body for Frames {
        type Data = Bytes;
        type Error = &'static str;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Bytes>, &'static str>>> {
            match self.frames.pop_front() {
                Some(f) => Poll::Ready(Some(f)),
                None if self.hang => Poll::Pending,
                None => Poll::Ready(None),
            }
        }
    }

    fn frames(data: &[&'static str], hang: bool) -> Frames {
        Frames {
            frames: data
                .iter()
                .map(|d| Ok(http_body::Frame::data(Bytes::from_static(d.as_bytes()))))
                .collect(),
            hang,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn read_body_joins_limits_and_times_out() {
        let far = Instant::now() + Duration::from_secs(60);
        let read = |b, max| read_body(b, max, far);
        assert_eq!(read(frames(&["abc"], false), 3).await.unwrap(), "abc");
        assert_eq!(read(frames(&[], false), 3).await.unwrap(), "");
        assert_eq!(
            read(frames(&["ab", "", "cd", "e"], false), 5)
                .await
                .unwrap(),
            "abcde"
        );
        assert_eq!(
            read(frames(&["abc", "d"], false), 3).await,
            Err(ReadError::TooLarge)
        );
        assert_eq!(
            read(frames(&["abcd"], false), 3).await,
            Err(ReadError::TooLarge)
        );
        // Trailers are skipped.
        let mut b = frames(&["ab"], false);
        b.frames
            .push_back(Ok(http_body::Frame::trailers(HeaderMap::new())));
        b.frames
            .push_back(Ok(http_body::Frame::data(Bytes::from_static(b"c"))));
        assert_eq!(read(b, 10).await.unwrap(), "abc");
        let mut b = frames(&["ab"], false);
        b.frames.push_back(Err("reset"));
        assert_eq!(read(b, 10).await, Err(ReadError::Failed));
        // A body that stalls: the deadline, on time.
        let start = Instant::now();
        let deadline = start + Duration::from_millis(1500);
        assert_eq!(
            read_body(frames(&["ab"], true), 10, deadline).await,
            Err(ReadError::TimedOut)
        );
        assert_eq!(Instant::now(), deadline);
        // A body that is there is taken even past the deadline (the body is
        // asked first, as `timeout_at` does).
        assert_eq!(
            read_body(frames(&["ab"], false), 10, start).await.unwrap(),
            "ab"
        );
    }

    #[test]
    fn deadline_header() {
        let mut h = HeaderMap::new();
        assert_eq!(client_deadline(&h), Ok(None));
        h.insert(X_REQUEST_TIMEOUT_MS, "1500".parse().unwrap());
        assert_eq!(client_deadline(&h), Ok(Some(Duration::from_millis(1500))));
        for bad in ["0", "-1", "1.5", "abc", "", " 5"] {
            h.insert(X_REQUEST_TIMEOUT_MS, bad.parse().unwrap());
            assert_eq!(client_deadline(&h), Err(()), "{bad}");
        }
    }
}
