//! One `request finished` log event per request, when its response body
//! ends (or is dropped).

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use backstop::{BoxError, ErrorKind, RequestId, classify};
use backstop_core::http::StatusClass;
use backstop_core::metrics::ErrorCounters;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tower::{Layer, Service};

use crate::logfmt::AccessLine;
use crate::tokens::TokenEstimate;
use crate::upstream::AttemptCounter;

/// What the gateway keeps in a request's extensions, as one entry: each
/// entry is an insert into the request's map (which grows and rehashes as
/// it fills) and one more allocation whenever Retry clones the request.
#[derive(Debug, Clone)]
pub struct RequestMeta {
    /// When the request head arrived: the trace, the SLA deadline and the
    /// connection's watchdog all count from it.
    pub arrival: Instant,
    /// Attempts that reached the upstream (shared by the request's retries).
    pub attempts: AttemptCounter,
    /// The token estimate, once the `/v1` handler has read the body.
    pub tokens: TokenEstimate,
}

impl RequestMeta {
    /// A request whose head arrived at `arrival`.
    pub fn new(arrival: Instant) -> Self {
        Self {
            arrival,
            attempts: AttemptCounter::default(),
            tokens: TokenEstimate(0),
        }
    }
}

/// Logs `request finished` for each request, and ends open SSE streams
/// with the SSE error event (type `timeout`) when `shutdown` fires.
#[derive(Debug, Clone, Default)]
pub struct TraceLayer {
    shutdown: Arc<CancellationToken>,
    direct: bool,
}

impl TraceLayer {
    /// The layer; `shutdown` fires when the shutdown timeout is reached.
    pub fn new(shutdown: CancellationToken) -> Self {
        Self {
            shutdown: Arc::new(shutdown),
            direct: false,
        }
    }

    /// Writes the `request finished` line straight to the log buffer
    /// ([`logwriter::append_line`](crate::logwriter::append_line)) in the
    /// format [`JsonLines`](crate::logfmt::JsonLines) gives it, instead of
    /// as a `tracing` event, when the filter enables this module's `INFO`
    /// events. The same bytes reach stderr at about a quarter of the cost
    /// (no dispatch, no field visitor, no staging); only for a process whose
    /// subscriber is `JsonLines` over [`StderrLines`](crate::logwriter::StderrLines),
    /// as the gateway's binary installs it. Off by default: other
    /// subscribers see the event.
    #[must_use]
    pub fn direct_log(mut self, direct: bool) -> Self {
        self.direct = direct;
        self
    }
}

impl<S> Layer<S> for TraceLayer {
    type Service = Trace<S>;
    fn layer(&self, inner: S) -> Trace<S> {
        Trace {
            inner,
            shutdown: Arc::clone(&self.shutdown),
            direct: self.direct,
        }
    }
}

/// See [`TraceLayer`].
///
/// The token sits behind an `Arc`: each request holds a reference until its
/// head is out (a clone of the token itself takes its tree's lock), and
/// only an SSE stream takes a token of its own.
#[derive(Debug, Clone)]
pub struct Trace<S> {
    inner: S,
    shutdown: Arc<CancellationToken>,
    direct: bool,
}

/// What the log line needs.
#[derive(Debug)]
struct Info {
    start: Instant,
    request_id: Option<RequestId>,
    method: http::Method,
    path: Arc<str>,
    attempts: AttemptCounter,
    status: Option<StatusCode>,
    logged: bool,
    /// Write the line straight to the log (see [`TraceLayer::direct_log`]).
    direct: bool,
}

impl Info {
    fn log(&mut self, outcome: &str) {
        if self.logged {
            return;
        }
        self.logged = true;
        let duration_ms = Instant::now()
            .saturating_duration_since(self.start)
            .as_millis() as u64;
        if self.direct {
            // The filter's verdict for this module's INFO events, as the
            // event below would get it (cached per call site).
            if tracing::enabled!(tracing::Level::INFO) {
                let line = AccessLine {
                    request_id: self.request_id.as_ref().map(RequestId::as_str),
                    method: self.method.as_str(),
                    path: &self.path,
                    status: self.status.map(|s| s.as_u16()),
                    attempts: self.attempts.get(),
                    duration_ms,
                    outcome,
                };
                crate::logwriter::append_line(false, |out| line.format(out));
            }
            return;
        }
        // The message as a `&str` field, first: the same line as a format
        // string gives (a test in `logfmt` pins it), without formatting
        // `fmt::Arguments` per request.
        tracing::info!(
            message = "request finished",
            request_id = self.request_id.as_ref().map(RequestId::as_str),
            method = self.method.as_str(),
            path = &*self.path,
            status = self.status.map(|s| s.as_u16()),
            attempts = self.attempts.get(),
            duration_ms,
            outcome,
        );
    }
}

impl Drop for Info {
    fn drop(&mut self) {
        self.log("cancelled");
    }
}

/// The outcome of a finished response, from its status.
fn outcome(status: StatusCode, headers: &http::HeaderMap) -> &'static str {
    match status.as_u16() {
        200..=299 => "success",
        401 => "unauthorized",
        400 | 404 | 405 | 413 => "invalid_request",
        429 | 503
            if headers.contains_key("retry-after-ms")
                && !headers.contains_key("x-should-retry") =>
        {
            "overloaded"
        }
        502 => "upstream_failure",
        504 => "timeout",
        500 => "internal",
        _ => "upstream_status",
    }
}

// The app's responses carry axum's body (the stack boxes its own where it
// ends), so the 500 for a panicked handler is one of them.
impl<S, B> Service<Request<B>> for Trace<S>
where
    S: Service<Request<B>, Response = Response<axum::body::Body>>,
{
    type Response = Response<TraceBody<axum::body::Body>>;
    type Error = S::Error;
    type Future = TraceFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        // The server records the head's arrival once (its watchdog deadline
        // counts from it); without it (in-process use) it is now.
        let meta = req
            .extensions_mut()
            .get_or_insert_with(|| RequestMeta::new(Instant::now()));
        let (start, attempts) = (meta.arrival, meta.attempts.clone());
        let info = Info {
            start,
            request_id: req.extensions().get::<RequestId>().cloned(),
            method: req.method().clone(),
            path: Arc::from(req.uri().path()),
            attempts,
            status: None,
            logged: false,
            direct: self.direct,
        };
        // A panic in the handler becomes a 500 with the request id, logged.
        let fut = std::panic::catch_unwind(AssertUnwindSafe(|| self.inner.call(req))).ok();
        TraceFuture {
            fut,
            info: Some(info),
            shutdown: Some(Arc::clone(&self.shutdown)),
        }
    }
}

pin_project_lite::pin_project! {
    /// Future of [`Trace`].
    ///
    /// # Cancellation
    ///
    /// Dropped before the head: logs outcome `cancelled`.
    #[allow(missing_debug_implementations)]
    pub struct TraceFuture<F> {
        // `None` once the inner service panicked.
        #[pin]
        fut: Option<F>,
        info: Option<Info>,
        shutdown: Option<Arc<CancellationToken>>,
    }
}

impl<F, E> Future for TraceFuture<F>
where
    F: Future<Output = Result<Response<axum::body::Body>, E>>,
{
    type Output = Result<Response<TraceBody<axum::body::Body>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let polled = match this.fut.as_mut().as_pin_mut() {
            Some(fut) => std::panic::catch_unwind(AssertUnwindSafe(|| fut.poll(cx))).ok(),
            None => None,
        };
        let res = match polled {
            Some(Poll::Pending) => return Poll::Pending,
            Some(Poll::Ready(res)) => res,
            None => {
                this.fut.set(None);
                let id = this.info.as_ref().and_then(|i| i.request_id.clone());
                tracing::error!(
                    request_id = id.as_ref().map(RequestId::as_str),
                    "bug: the handler panicked"
                );
                Ok(backstop_core::http::json_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    ErrorKind::Internal,
                    "internal error",
                    id.as_ref(),
                )
                .map(axum::body::Body::from))
            }
        };
        let mut info = this.info.take();
        let shutdown = this.shutdown.take();
        Poll::Ready(res.map(|res| {
            let outcome = outcome(res.status(), res.headers());
            if let Some(i) = info.as_mut() {
                i.status = Some(res.status());
            }
            let sse = res.status().is_success()
                && res
                    .headers()
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.starts_with("text/event-stream"));
            let shutdown = if sse {
                shutdown.map(|t| Box::pin(CancellationToken::clone(&t).cancelled_owned()))
            } else {
                None
            };
            res.map(|inner| TraceBody::new(inner, info, outcome, shutdown))
        }))
    }
}

pin_project_lite::pin_project! {
    /// The response body: logs when it ends, fails or is dropped.
    #[allow(missing_debug_implementations)]
    pub struct TraceBody<B> {
        #[pin]
        inner: B,
        info: Option<Info>,
        outcome: &'static str,
        shutdown: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
        ended: bool,
    }
}

impl<B: Body> TraceBody<B> {
    fn new(
        inner: B,
        mut info: Option<Info>,
        outcome: &'static str,
        shutdown: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
    ) -> Self {
        if inner.is_end_stream() {
            if let Some(mut i) = info.take() {
                i.log(outcome);
            }
        }
        Self {
            inner,
            info,
            outcome,
            shutdown,
            ended: false,
        }
    }
}

impl<B> Body for TraceBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut this = self.project();
        if *this.ended {
            return Poll::Ready(None);
        }
        if let Some(s) = this.shutdown.as_mut() {
            if s.as_mut().poll(cx).is_ready() {
                // The shutdown timeout: end the stream with the error event.
                *this.ended = true;
                *this.shutdown = None;
                let id = this.info.as_ref().and_then(|i| i.request_id.clone());
                let body = backstop_core::http::error_body(
                    backstop::ErrorKind::Timeout,
                    "the gateway is shutting down",
                    id.as_ref(),
                );
                let mut event = Vec::with_capacity(body.len() + 22);
                event.extend_from_slice(b"event: error\ndata: ");
                event.extend_from_slice(&body);
                event.extend_from_slice(b"\n\n");
                if let Some(mut i) = this.info.take() {
                    i.log("shutdown");
                }
                return Poll::Ready(Some(Ok(Frame::data(Bytes::from(event)))));
            }
        }
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        match &frame {
            None => {
                if let Some(mut i) = this.info.take() {
                    i.log(this.outcome);
                }
            }
            Some(Err(_)) => {
                if let Some(mut i) = this.info.take() {
                    i.log("stream_error");
                }
            }
            Some(Ok(_)) => {
                if this.inner.is_end_stream() {
                    if let Some(mut i) = this.info.take() {
                        i.log(this.outcome);
                    }
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Counts each request the HTTP mapping outside will answer with a
/// generated error (`llm_errors_total{kind}`): placed right inside
/// `ErrorResponseLayer`, it sees the errors and the upstream statuses the
/// mapping turns into 502.
///
/// The counters (six metric handles) are shared: a request's future holds
/// one reference to them.
#[derive(Debug, Clone)]
pub struct CountErrorsLayer {
    errors: Arc<ErrorCounters>,
}

impl CountErrorsLayer {
    /// Counts into `errors`.
    pub fn new(errors: Arc<ErrorCounters>) -> Self {
        Self { errors }
    }
}

impl<S> Layer<S> for CountErrorsLayer {
    type Service = CountErrors<S>;
    fn layer(&self, inner: S) -> CountErrors<S> {
        CountErrors {
            inner,
            errors: Arc::clone(&self.errors),
        }
    }
}

/// See [`CountErrorsLayer`].
#[derive(Debug, Clone)]
pub struct CountErrors<S> {
    inner: S,
    errors: Arc<ErrorCounters>,
}

impl<S, B, RB> Service<Request<B>> for CountErrors<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<RB>;
    type Error = BoxError;
    type Future = CountErrorsFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        CountErrorsFuture {
            fut: self.inner.call(req),
            errors: Arc::clone(&self.errors),
        }
    }
}

pin_project_lite::pin_project! {
    /// Future of [`CountErrors`].
    ///
    /// # Cancellation
    ///
    /// Holds only the inner future; a dropped request counts nothing.
    #[allow(missing_debug_implementations)]
    pub struct CountErrorsFuture<F> {
        #[pin]
        fut: F,
        errors: Arc<ErrorCounters>,
    }
}

impl<F, RB, E> Future for CountErrorsFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<RB>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = ready!(this.fut.poll(cx)).map_err(Into::into);
        match &out {
            Err(e) => this.errors.record(classify(&**e)),
            Ok(res) if StatusClass::of(res.status()) == StatusClass::ServerError => {
                this.errors.record(ErrorKind::UpstreamFailure);
            }
            Ok(_) => {}
        }
        Poll::Ready(out)
    }
}
