//! The HTTP retry (feature `http`): status rules, `Retry-After`, billing
//! stops, request body replay, 4xx body inspection.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll, ready};
use std::time::{SystemTime, UNIX_EPOCH};

use backstop_core::{ConfigError, Context, clock};
use http::header::RETRY_AFTER;
use http::{HeaderMap, Request, Response, request};
use http_body::Body;
use pin_project_lite::pin_project;
use tokio::time::Duration;
use tower_layer::Layer;
use tower_service::Service;

use crate::body::{Collected, Collector, ReplayBody, ResponseBody, Spliced};
use crate::future::{ResponseFuture, Source};
use crate::layer::{Generic, RetryLayerBuilder, RetryStats, Shared};
use crate::policy::{Action, AsError, Policy, decide_error};

/// The largest 4xx body buffered to look for a billing stop: 64 KiB.
pub const MAX_INSPECT_BYTES: usize = 64 * 1024;

/// Default of [`RetryLayerBuilder::max_replay_bytes`]: 2 MiB.
pub const DEFAULT_MAX_REPLAY_BYTES: usize = 2 * 1024 * 1024;

/// Marker for a builder that builds an [`HttpRetryLayer`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Http;

/// The HTTP retry policy (what [`HttpRetry`] applies).
///
/// | outcome | action |
/// |---|---|
/// | 1xx, 2xx, 3xx | return it |
/// | `x-should-retry: false` (any status) | return it |
/// | 4xx other than 408, 409, 429 | return it (never retried) |
/// | 408, 409, 429 with a billing stop in the body | return it |
/// | 429, 503, 529 with `retry-after-ms` or `Retry-After` | retry after exactly that wait, if it is at most `retry_after_max` and fits before the SLA deadline; else return it at once |
/// | 408, 409, 429, 529, other 5xx | retry after the backoff |
/// | an error | as [`DefaultPolicy`](crate::DefaultPolicy) (`SlaExpired` returned, `Overloaded` refused, upstream failures retried) |
///
/// `x-should-retry: true` changes nothing: it only re-enables what the
/// policy already retries.
///
/// A **billing stop** is a 408/409/429 whose body (at most 64 KiB, buffered)
/// is JSON with an `error` object whose `code` or `type` is the string
/// `insufficient_quota` (OpenAI) or `billing_error` (Anthropic), or whose
/// `message` contains `spend limit` (ASCII case-insensitive; Anthropic's
/// spend-limit wording). A body over 64 KiB, or not JSON, is no billing stop.
#[derive(Clone, Copy, Debug, Default)]
pub struct HttpPolicy {
    _priv: (),
}

/// Applies [`HttpRetry`]: [`RetryLayer`](crate::RetryLayer)'s retries with
/// the HTTP rules of [`HttpPolicy`] and request body replay.
///
/// Built by `RetryLayer::builder().for_http()...build()`. One layer value is
/// one budget.
///
/// ```
/// use backstop_retry::{RetryLayer, body::ReplayBody};
/// use bytes::Bytes;
/// use http::{Request, Response};
/// use http_body_util::{BodyExt, Full};
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use std::sync::Arc;
/// use tokio::time::Duration;
/// use tower::{service_fn, BoxError, ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), BoxError> {
/// let calls = Arc::new(AtomicU32::new(0));
/// let c = Arc::clone(&calls);
/// // A vendor that answers 529 with `retry-after-ms: 20` once, then 200.
/// let vendor = service_fn(move |req: Request<ReplayBody<Full<Bytes>>>| {
///     let first = c.fetch_add(1, Ordering::Relaxed) == 0;
///     async move {
///         let prompt = req.into_body().collect().await?.to_bytes();
///         let resp = if first {
///             Response::builder().status(529).header("retry-after-ms", "20")
///         } else {
///             Response::builder().status(200)
///         };
///         Ok::<_, BoxError>(resp.body(Full::new(prompt))?)
///     }
/// });
///
/// let svc = ServiceBuilder::new()
///     .layer(RetryLayer::builder().for_http().max_replay_bytes(64 * 1024).build()?)
///     .service(vendor);
///
/// let resp = svc.oneshot(Request::new(Full::new(Bytes::from("hi")))).await?;
/// assert_eq!(resp.status(), 200);
/// // The body was replayed on the second attempt.
/// assert_eq!(resp.into_body().collect().await?.to_bytes(), "hi");
/// assert_eq!(calls.load(Ordering::Relaxed), 2);
/// # Ok(())
/// # }
/// ```
pub struct HttpRetryLayer {
    shared: Arc<Shared>,
    max_replay_bytes: usize,
}

/// [`Retry`](crate::Retry) for `http::Request<B>`: buffers the request body
/// (up to `max_replay_bytes`) to replay it, inspects retryable 4xx bodies,
/// and applies [`HttpPolicy`].
///
/// The inner service receives `Request<ReplayBody<B>>` and the caller gets
/// `Response<ResponseBody<RB>>`. Both bodies must be `Unpin` (hyper's
/// `Incoming`, axum's `Body` and `http-body-util`'s bodies are; box others).
///
/// See the [crate docs](crate) for an example.
pub struct HttpRetry<S> {
    inner: Inspect<S>,
    max_replay_bytes: usize,
    // With the layer's shared state: one `Arc` to clone.
    source: Source<Inspect<S>>,
}

/// Wraps the inner service: buffers the body of a 408/409/429 (up to 64 KiB)
/// so the policy can look for a billing stop.
#[derive(Clone, Debug)]
pub struct Inspect<S> {
    inner: S,
}

/// Response future of [`Inspect`].
///
/// The inner future is boxed: it is the whole stack below the retry (an HTTP
/// stack's runs to kilobytes), and unboxed every layer above would copy it as
/// it builds its own future. One allocation per attempt, on the path that
/// already clones the request head for replay.
///
/// # Cancellation
///
/// Dropping it drops the inner future, or the partly read response.
pub struct InspectFuture<F, RB> {
    state: InspectState<F, RB>,
}

enum InspectState<F, RB> {
    Waiting(Pin<Box<F>>),
    // A 408/409/429: its body is buffered for the policy.
    Reading {
        parts: Option<http::response::Parts>,
        body: Option<RB>,
        collector: Collector,
    },
}

pin_project! {
    /// Response future of [`HttpRetry`].
    ///
    /// # Cancellation
    ///
    /// While the request body is being buffered, dropping it drops the body
    /// and nothing else (the budget deposit of the request stands). After
    /// that, as [`ResponseFuture`].
    pub struct HttpResponseFuture<S, B, RB>
    where
        S: Service<Request<ReplayBody<B>>, Response = Response<RB>>,
        B: Body,
        RB: Body,
        RB: Unpin,
    {
        #[pin]
        state: HttpState<S, B, RB>,
    }
}

pin_project! {
    // One or the other: the buffering state and the attempts share space.
    #[project = HttpStateProj]
    enum HttpState<S, B, RB>
    where
        S: Service<Request<ReplayBody<B>>, Response = Response<RB>>,
        B: Body,
        RB: Body,
        RB: Unpin,
    {
        Buffering { pending: Option<Pending<S, B>> },
        Running {
            #[pin]
            fut: ResponseFuture<HttpPolicy, Inspect<S>, Request<ReplayBody<B>>>,
        },
    }
}

/// A request whose body is being buffered.
struct Pending<S, B> {
    parts: request::Parts,
    body: Option<B>,
    collector: Collector,
    svc: Inspect<S>,
    source: Source<Inspect<S>>,
    ctx: Context,
}

// === impl RetryLayerBuilder ===

impl<P> RetryLayerBuilder<P, Generic> {
    /// Switches to the HTTP retry: builds an [`HttpRetryLayer`] with
    /// [`HttpPolicy`] (any policy set before is replaced).
    pub fn for_http(self) -> RetryLayerBuilder<HttpPolicy, Http> {
        self.with(HttpPolicy::default())
            .max_replay_bytes(DEFAULT_MAX_REPLAY_BYTES)
    }
}

impl RetryLayerBuilder<HttpPolicy, Http> {
    /// Request bodies up to this size are buffered and replayed on retries;
    /// a larger body is sent once and never retried (default 2 MiB; 0 means
    /// only empty bodies are replayed).
    pub fn max_replay_bytes(mut self, n: usize) -> Self {
        self.max_replay_bytes = n;
        self
    }

    /// Validates the settings and builds the layer (errors as
    /// [`RetryLayerBuilder::build`]).
    pub fn build(self) -> Result<HttpRetryLayer, ConfigError> {
        Ok(HttpRetryLayer {
            shared: self.shared()?,
            max_replay_bytes: self.max_replay_bytes,
        })
    }
}

// === impl HttpRetryLayer ===

impl HttpRetryLayer {
    /// The layer's counters (shared with every service it built).
    pub fn stats(&self) -> RetryStats {
        RetryStats::from_shared(&self.shared)
    }
}

impl Clone for HttpRetryLayer {
    /// Shares the budget: a clone of the layer is the same layer.
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            max_replay_bytes: self.max_replay_bytes,
        }
    }
}

/// `S: Clone`: a retry calls a clone of the inner service.
impl<S: Clone> Layer<S> for HttpRetryLayer {
    type Service = HttpRetry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        let inner = Inspect { inner };
        HttpRetry {
            source: Source::new(inner.clone(), Arc::clone(&self.shared)),
            inner,
            max_replay_bytes: self.max_replay_bytes,
        }
    }
}

impl fmt::Debug for HttpRetryLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpRetryLayer")
            .field("shared", &*self.shared)
            .field("max_replay_bytes", &self.max_replay_bytes)
            .finish()
    }
}

// === impl HttpRetry ===

impl<S> HttpRetry<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner.inner
    }

    /// The inner service, mutably.
    ///
    /// A change made through it reaches the first attempt of later
    /// requests only: retries clone the copy taken when the layer was
    /// applied.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner.inner
    }

    /// The inner service, consuming this one.
    pub fn into_inner(self) -> S {
        self.inner.inner
    }

    /// The counters of the layer that built this service.
    pub fn stats(&self) -> RetryStats {
        RetryStats::from_shared(self.source.shared())
    }
}

impl<S: Clone> Clone for HttpRetry<S> {
    /// Shares the budget and counters with the original.
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            max_replay_bytes: self.max_replay_bytes,
            source: self.source.clone(),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for HttpRetry<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpRetry")
            .field("inner", &self.inner.inner)
            .field("shared", &**self.source.shared())
            .field("max_replay_bytes", &self.max_replay_bytes)
            // `source` is a copy of `inner`, for retries.
            .finish_non_exhaustive()
    }
}

impl<S, B, RB> Service<Request<B>> for HttpRetry<S>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<RB>> + Clone,
    S::Error: AsError,
    B: Body + Unpin,
    RB: Body + Unpin,
{
    type Response = Response<ResponseBody<RB>>;
    type Error = S::Error;
    type Future = HttpResponseFuture<S, B, RB>;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let shared = self.source.shared();
        shared.budget.deposit(clock::now());
        let ctx = Context::current();
        let (parts, body) = req.into_parts();
        let no_replay = shared.config.max_attempts == 1
            || body.size_hint().lower() > self.max_replay_bytes as u64;
        let body = if no_replay {
            Spliced::streaming(body)
        } else if body.is_end_stream() {
            Spliced::full(bytes::Bytes::new(), None)
        } else {
            // A body that is all there (a buffered one) is collected now,
            // so the first attempt can be called now too; one that has to
            // be waited for is collected by the future.
            let mut collector = Collector::new(self.max_replay_bytes);
            let mut body = Some(body);
            let mut noop = TaskContext::from_waker(std::task::Waker::noop());
            match collector.poll(&mut body, &mut noop) {
                Poll::Ready(collected) => collected.into_spliced(),
                Poll::Pending => {
                    return HttpResponseFuture {
                        state: HttpState::Buffering {
                            pending: Some(Pending {
                                parts,
                                body,
                                collector,
                                svc: self.inner.clone(),
                                source: self.source.clone(),
                                ctx,
                            }),
                        },
                    };
                }
            }
        };
        let req = Request::from_parts(parts, ReplayBody::new(body));
        HttpResponseFuture {
            state: HttpState::Running {
                fut: ResponseFuture::start(
                    req,
                    &mut self.inner,
                    &self.source,
                    HttpPolicy::default(),
                    ctx,
                ),
            },
        }
    }
}

// === impl HttpResponseFuture ===

impl<S, B, RB> Future for HttpResponseFuture<S, B, RB>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<RB>> + Clone,
    S::Error: AsError,
    B: Body + Unpin,
    RB: Body + Unpin,
{
    type Output = Result<Response<ResponseBody<RB>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                HttpStateProj::Running { fut } => return fut.poll(cx),
                HttpStateProj::Buffering { pending } => {
                    let Some(p) = pending.as_mut() else {
                        unreachable!("taken only when the state changes")
                    };
                    let collected = ready!(p.collector.poll(&mut p.body, cx));
                    let Some(mut p) = pending.take() else {
                        unreachable!("checked above")
                    };
                    let req =
                        Request::from_parts(p.parts, ReplayBody::new(collected.into_spliced()));
                    this.state.set(HttpState::Running {
                        fut: ResponseFuture::start(
                            req,
                            &mut p.svc,
                            &p.source,
                            HttpPolicy::default(),
                            p.ctx,
                        ),
                    });
                }
            }
        }
    }
}

impl<S, B, RB> fmt::Debug for HttpResponseFuture<S, B, RB>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<RB>>,
    B: Body,
    RB: Body + Unpin,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("HttpResponseFuture");
        match &self.state {
            HttpState::Buffering { .. } => d.field("buffering", &true),
            HttpState::Running { fut } => d.field("fut", fut),
        };
        d.finish()
    }
}

// === impl Inspect ===

impl<S, B, RB> Service<Request<ReplayBody<B>>> for Inspect<S>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<RB>>,
    B: Body,
    RB: Body + Unpin,
{
    type Response = Response<ResponseBody<RB>>;
    type Error = S::Error;
    type Future = InspectFuture<S::Future, RB>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReplayBody<B>>) -> Self::Future {
        InspectFuture {
            state: InspectState::Waiting(Box::pin(self.inner.call(req))),
        }
    }
}

impl<F, RB, E> Future for InspectFuture<F, RB>
where
    F: Future<Output = Result<Response<RB>, E>>,
    RB: Body + Unpin,
{
    type Output = Result<Response<ResponseBody<RB>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let state = &mut self.get_mut().state;
        if let InspectState::Waiting(fut) = state {
            let resp = ready!(fut.as_mut().poll(cx))?;
            let status = resp.status().as_u16();
            if !matches!(status, 408 | 409 | 429) || should_retry(resp.headers()) == Some(false) {
                return Poll::Ready(Ok(resp.map(|b| ResponseBody::new(Spliced::streaming(b)))));
            }
            let (parts, body) = resp.into_parts();
            *state = InspectState::Reading {
                parts: Some(parts),
                body: Some(body),
                collector: Collector::new(MAX_INSPECT_BYTES),
            };
        }
        let InspectState::Reading {
            parts,
            body,
            collector,
        } = state
        else {
            unreachable!("set above")
        };
        let collected = ready!(collector.poll(body, cx));
        let body = match collected {
            Collected::Full(data, trailers) => Spliced::full(data, trailers),
            Collected::Over(data, rest) => Spliced::partial(data, Some(rest), None),
            Collected::Failed(data, e) => Spliced::partial(data, None, Some(e)),
        };
        let Some(parts) = parts.take() else {
            panic!("`InspectFuture` polled after completion");
        };
        Poll::Ready(Ok(Response::from_parts(parts, ResponseBody::new(body))))
    }
}

impl<F, RB> fmt::Debug for InspectFuture<F, RB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InspectFuture")
            .field(
                "reading_body",
                &matches!(self.state, InspectState::Reading { .. }),
            )
            .finish_non_exhaustive()
    }
}

// === impl HttpPolicy ===

impl<B, RB, E> Policy<Request<ReplayBody<B>>, Response<ResponseBody<RB>>, E> for HttpPolicy
where
    B: Body,
    RB: Body,
    E: AsError,
{
    fn clone_request(&self, req: &Request<ReplayBody<B>>) -> Option<Request<ReplayBody<B>>> {
        let body = req.body().try_clone()?;
        let mut out = Request::new(body);
        *out.method_mut() = req.method().clone();
        *out.uri_mut() = req.uri().clone();
        *out.version_mut() = req.version();
        *out.headers_mut() = req.headers().clone();
        *out.extensions_mut() = req.extensions().clone();
        Some(out)
    }

    fn decide(&self, outcome: &Result<Response<ResponseBody<RB>>, E>) -> Action {
        match outcome {
            Ok(resp) => decide_response(
                resp.status().as_u16(),
                resp.headers(),
                resp.body().spliced().buffered(),
                now_unix(),
            ),
            Err(e) => e.as_error().map_or(Action::Return, decide_error),
        }
    }

    fn retain(
        &self,
        outcome: Result<Response<ResponseBody<RB>>, E>,
    ) -> Result<Response<ResponseBody<RB>>, E> {
        outcome.map(|resp| {
            if resp.body().spliced().is_buffered() {
                resp
            } else {
                // Drop the upstream body (and its connection and permit)
                // before the backoff; keep the head.
                resp.map(|_| ResponseBody::empty())
            }
        })
    }
}

/// The HTTP decision for a response head (and its buffered 4xx body).
pub(crate) fn decide_response(
    status: u16,
    headers: &HeaderMap,
    body: &[u8],
    now_unix: u64,
) -> Action {
    let retryable = matches!(status, 408 | 409 | 429 | 529) || (500..=599).contains(&status);
    if !retryable || should_retry(headers) == Some(false) {
        return Action::Return;
    }
    if matches!(status, 408 | 409 | 429) && is_billing_stop(body) {
        return Action::Return;
    }
    if matches!(status, 429 | 503 | 529) {
        if let Some(wait) = retry_after(headers, now_unix) {
            return Action::RetryAfter(wait);
        }
    }
    Action::Retry
}

/// `x-should-retry`: `Some(true)`, `Some(false)`, or `None` if absent or
/// neither.
pub(crate) fn should_retry(headers: &HeaderMap) -> Option<bool> {
    let v = headers.get("x-should-retry")?.to_str().ok()?.trim();
    if v.eq_ignore_ascii_case("true") {
        Some(true)
    } else if v.eq_ignore_ascii_case("false") {
        Some(false)
    } else {
        None
    }
}

/// The upstream's requested wait: `retry-after-ms` (milliseconds, decimals
/// allowed), else `Retry-After` (delta-seconds or an IMF-fixdate). `None`
/// when absent or unparsable.
pub(crate) fn retry_after(headers: &HeaderMap, now_unix: u64) -> Option<Duration> {
    if let Some(ms) = headers
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|ms| ms.is_finite() && *ms >= 0.0)
    {
        return Duration::try_from_secs_f64(ms / 1000.0).ok();
    }
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        return v.parse::<u64>().ok().map(Duration::from_secs);
    }
    let at = parse_imf_fixdate(v)?;
    Some(Duration::from_secs(at.saturating_sub(now_unix)))
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Parses an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) into Unix
/// seconds. The obsolete RFC 850 and asctime forms are not accepted.
pub(crate) fn parse_imf_fixdate(text: &str) -> Option<u64> {
    let bytes = text.as_bytes();
    if bytes.len() != 29 || &bytes[3..5] != b", " || &bytes[25..] != b" GMT" {
        return None;
    }
    if [7, 11, 16].iter().any(|&i| bytes[i] != b' ') || bytes[19] != b':' || bytes[22] != b':' {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<u64> {
        let part = &bytes[range];
        if part.iter().all(u8::is_ascii_digit) {
            std::str::from_utf8(part).ok()?.parse().ok()
        } else {
            None
        }
    };
    let day = num(5..7)?;
    let month = MONTHS.iter().position(|m| *m == &bytes[8..11])? as u64 + 1;
    let year = num(12..16)?;
    let (hour, minute, second) = (num(17..19)?, num(20..22)?, num(23..25)?);
    if !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 || year < 1970 {
        return None;
    }
    // Days from 1970-01-01 (Howard Hinnant's days_from_civil).
    let shifted_year = if month <= 2 { year - 1 } else { year };
    let era = shifted_year / 400;
    let year_of_era = shifted_year - era * 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = (era * 146_097 + day_of_era).checked_sub(719_468)?;
    Some(days * 86_400 + hour * 3600 + minute * 60 + second)
}

const MONTHS: [&[u8]; 12] = [
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
];

/// Whether a 4xx body is a billing stop (see [`HttpPolicy`]).
pub(crate) fn is_billing_stop(body: &[u8]) -> bool {
    if body.is_empty() || body.len() > MAX_INSPECT_BYTES {
        return false;
    }
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(body) else {
        return false;
    };
    let Some(err) = json.get("error") else {
        return false;
    };
    let is_stop = |key: &str| {
        err.get(key)
            .and_then(serde_json::Value::as_str)
            .is_some_and(|v| v == "insufficient_quota" || v == "billing_error")
    };
    let spend_limit = err
        .get("message")
        .and_then(serde_json::Value::as_str)
        .is_some_and(|m| m.to_ascii_lowercase().contains("spend limit"));
    is_stop("code") || is_stop("type") || spend_limit
}
