use std::convert::Infallible;
use std::error::Error;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::Duration;
use tower_layer::Layer;
use tower_service::Service;

use super::header::{RETRY_AFTER_MS, X_REQUEST_ID, X_SHOULD_RETRY, X_UPSTREAM_REQUEST_ID};
use super::status::StatusClass;
use crate::context::{Context, RequestId};
use crate::error::{
    AttemptTimedOut, BoxError, ConfigError, CostOverBurst, ErrorKind, Overloaded, SlaExpired,
    StreamTimedOut, classify, find,
};

const APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");
const FALSE: HeaderValue = HeaderValue::from_static("false");

/// Turns errors and upstream responses into what the client sees, and makes
/// the stack `Infallible`.
///
/// The one HTTP mapping of DESIGN's table (see the [module docs](super)).
/// Install it once, outside the layers whose errors it maps (in the gateway:
/// right inside authentication, outside `ShieldedOnCancel`, so the hooks see
/// errors as errors).
///
/// # Example
///
/// ```
/// use std::convert::Infallible;
/// use backstop_core::http::ErrorResponseLayer;
/// use backstop_core::SlaExpired;
/// use http::{Request, Response, StatusCode};
/// use http_body_util::{BodyExt, Full};
/// use tower::{service_fn, ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let svc = ServiceBuilder::new()
///     .layer(ErrorResponseLayer::new())
///     .service(service_fn(|_req: Request<()>| async {
///         Err::<Response<Full<bytes::Bytes>>, _>(tower::BoxError::from(SlaExpired::new()))
///     }));
/// let res = svc.oneshot(Request::new(())).await.unwrap(); // Infallible
/// assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
/// assert_eq!(res.headers()["x-should-retry"], "false");
/// let body = res.into_body().collect().await.unwrap().to_bytes();
/// assert!(body.starts_with(br#"{"error":{"type":"timeout""#));
/// # }
/// ```
#[derive(Clone, Copy, Debug)]
pub struct ErrorResponseLayer {
    overload_status: StatusCode,
}

impl ErrorResponseLayer {
    /// The mapping with overload answered as 429.
    pub fn new() -> Self {
        Self {
            overload_status: StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// Answers overload with `status`: 429 (the default) or 503.
    pub fn overload_status(mut self, status: StatusCode) -> Result<Self, ConfigError> {
        if status != StatusCode::TOO_MANY_REQUESTS && status != StatusCode::SERVICE_UNAVAILABLE {
            return Err(ConfigError::new(
                "overload_status",
                format!("must be 429 or 503, not {}", status.as_u16()),
            ));
        }
        self.overload_status = status;
        Ok(self)
    }

    /// The status overload is answered with.
    pub fn overload_status_code(&self) -> StatusCode {
        self.overload_status
    }
}

impl Default for ErrorResponseLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> Layer<S> for ErrorResponseLayer {
    type Service = ErrorResponse<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ErrorResponse {
            inner,
            overload_status: self.overload_status,
            ready_error: None,
        }
    }
}

/// The service made by [`ErrorResponseLayer`].
///
/// An error from the inner `poll_ready` is kept and answered (as an upstream
/// failure) by the next call, so one broken inner service fails requests, not
/// the connection.
pub struct ErrorResponse<S> {
    inner: S,
    overload_status: StatusCode,
    ready_error: Option<BoxError>,
}

impl<S: Clone> Clone for ErrorResponse<S> {
    fn clone(&self) -> Self {
        // A kept readiness error belongs to the service value that saw it.
        Self {
            inner: self.inner.clone(),
            overload_status: self.overload_status,
            ready_error: None,
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for ErrorResponse<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ErrorResponse")
            .field("inner", &self.inner)
            .field("overload_status", &self.overload_status)
            .finish_non_exhaustive()
    }
}

impl<S> ErrorResponse<S> {
    /// A reference to the inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// A mutable reference to the inner service.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B, ResB> Service<Request<B>> for ErrorResponse<S>
where
    S: Service<Request<B>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
    ResB: Body<Data = Bytes>,
    ResB::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<ResB>>;
    type Error = Infallible;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        // An inner service that cannot become ready fails the request, not the
        // connection; the error is reported from the response future.
        match self.inner.poll_ready(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Ready(Err(e)) => {
                let err: BoxError = e.into();
                tracing::error!(error = %err, "inner service failed to become ready");
                self.ready_error = Some(err);
                Poll::Ready(Ok(()))
            }
        }
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let request_id = req
            .extensions()
            .get::<RequestId>()
            .cloned()
            .or_else(|| Context::current().request_id().cloned());
        let state = match self.ready_error.take() {
            Some(err) => State::Failed { err: Some(err) },
            None => State::Pending {
                fut: self.inner.call(req),
            },
        };
        ResponseFuture {
            state,
            request_id,
            overload_status: self.overload_status,
        }
    }
}

pin_project! {
    /// Response future of [`ErrorResponse`].
    ///
    /// # Cancellation
    ///
    /// Holds only the inner future; dropping it drops the inner future.
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
        request_id: Option<RequestId>,
        overload_status: StatusCode,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Pending { #[pin] fut: F },
        Failed { err: Option<BoxError> },
    }
}

impl<F, ResB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResB>, E>>,
    E: Into<BoxError>,
    ResB: Body<Data = Bytes>,
    ResB::Error: Into<BoxError>,
{
    type Output = Result<Response<ResponseBody<ResB>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let outcome = match this.state.project() {
            StateProj::Pending { fut } => std::task::ready!(fut.poll(cx)).map_err(Into::into),
            StateProj::Failed { err } => Err(err
                .take()
                .unwrap_or_else(|| "response future polled after completion".into())),
        };
        let res = match outcome {
            Ok(res) => map_upstream(res, this.request_id.as_ref()),
            Err(err) => map_error(&*err, this.request_id.as_ref(), *this.overload_status)
                .map(ResponseBody::generated),
        };
        Poll::Ready(Ok(res))
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("request_id", &self.request_id)
            .finish_non_exhaustive()
    }
}

/// Applies the table to an upstream response.
fn map_upstream<B>(res: Response<B>, request_id: Option<&RequestId>) -> Response<ResponseBody<B>>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let class = StatusClass::of(res.status());
    let (mut parts, body) = res.into_parts();
    rename_upstream_id(&mut parts.headers, request_id);
    match class {
        StatusClass::Success => {
            let sse = is_event_stream(&parts.headers);
            Response::from_parts(
                parts,
                ResponseBody::upstream(body, sse, request_id.cloned()),
            )
        }
        StatusClass::Redirect | StatusClass::ClientError | StatusClass::Throttled => {
            parts.headers.insert(X_SHOULD_RETRY, FALSE);
            Response::from_parts(
                parts,
                ResponseBody::upstream(body, false, request_id.cloned()),
            )
        }
        // 5xx, 529, 408 (and any class added later): a generated 502.
        _ => {
            tracing::warn!(
                upstream_status = parts.status.as_u16(),
                request_id = request_id.map(RequestId::as_str),
                "upstream failed",
            );
            let message = format!("upstream answered {}", parts.status.as_u16());
            let mut res = json_error(
                StatusCode::BAD_GATEWAY,
                ErrorKind::UpstreamFailure,
                &message,
                request_id,
            );
            for name in [RETRY_AFTER, RETRY_AFTER_MS, X_UPSTREAM_REQUEST_ID] {
                if let Some(v) = parts.headers.get(&name) {
                    res.headers_mut().insert(name, v.clone());
                }
            }
            res.map(ResponseBody::generated)
        }
    }
}

/// The upstream's own `x-request-id` becomes `x-upstream-request-id`; ours is
/// set by the request-id layer (or here, on generated errors).
fn rename_upstream_id(headers: &mut HeaderMap, ours: Option<&RequestId>) {
    if let Some(theirs) = headers.remove(X_REQUEST_ID) {
        let is_ours = ours.is_some_and(|id| theirs.as_bytes() == id.as_str().as_bytes());
        if !is_ours && !headers.contains_key(X_UPSTREAM_REQUEST_ID) {
            headers.insert(X_UPSTREAM_REQUEST_ID, theirs);
        }
    }
    if let Some(id) = ours.and_then(|id| HeaderValue::from_str(id.as_str()).ok()) {
        headers.insert(X_REQUEST_ID, id);
    }
}

fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .get(..17)
                .is_some_and(|t| t.eq_ignore_ascii_case("text/event-stream"))
        })
}

/// Applies the table to an error.
fn map_error(
    err: &(dyn Error + 'static),
    request_id: Option<&RequestId>,
    overload_status: StatusCode,
) -> Response<Bytes> {
    let kind = classify(err);
    let message = client_message(err, kind);
    let status = match kind {
        ErrorKind::Overloaded => overload_status,
        ErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
        ErrorKind::InvalidRequest => StatusCode::BAD_REQUEST,
        ErrorKind::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_GATEWAY,
    };
    if kind == ErrorKind::UpstreamFailure {
        tracing::warn!(
            error = %ErrorChain(err),
            request_id = request_id.map(RequestId::as_str),
            "upstream call failed",
        );
    }
    let mut res = json_error(status, kind, &message, request_id);
    if let Some(o) = find::<Overloaded>(err) {
        retry_after_headers(res.headers_mut(), o.retry_after());
    }
    res
}

/// What the client reads in `error.message`: our own errors say what
/// happened; foreign errors (hyper, connectors, bodies) are summarised, and
/// logged in full instead, so no internal address or detail leaks.
fn client_message(err: &(dyn Error + 'static), kind: ErrorKind) -> String {
    if let Some(e) = find::<SlaExpired>(err) {
        return e.to_string();
    }
    if let Some(e) = find::<Overloaded>(err) {
        return e.to_string();
    }
    if let Some(e) = find::<CostOverBurst>(err) {
        return e.to_string();
    }
    if let Some(e) = find::<AttemptTimedOut>(err) {
        return e.to_string();
    }
    if let Some(e) = find::<StreamTimedOut>(err) {
        return e.to_string();
    }
    match kind {
        ErrorKind::UpstreamFailure => "upstream request failed".to_owned(),
        other => other.as_str().replace('_', " "),
    }
}

struct ErrorChain<'a>(&'a (dyn Error + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cur = self.0.source();
        while let Some(e) = cur {
            write!(f, ": {e}")?;
            cur = e.source();
        }
        Ok(())
    }
}

/// Sets `Retry-After` (whole seconds, rounded up, at least 1) and
/// `retry-after-ms` (the exact wait, rounded up) for a wait of `after`.
pub fn retry_after_headers(headers: &mut HeaderMap, after: Duration) {
    let nanos = after.as_nanos();
    let ms = nanos.div_ceil(1_000_000);
    let secs = nanos.div_ceil(1_000_000_000).max(1);
    headers.insert(
        RETRY_AFTER,
        HeaderValue::from(u64::try_from(secs).unwrap_or(u64::MAX)),
    );
    headers.insert(
        RETRY_AFTER_MS,
        HeaderValue::from(u64::try_from(ms).unwrap_or(u64::MAX)),
    );
}

/// The OpenAI-shaped error body:
/// `{"error":{"type":KIND,"message":MESSAGE,"request_id":ID}}`.
///
/// `request_id` is `null` when unknown.
pub fn error_body(kind: ErrorKind, message: &str, request_id: Option<&RequestId>) -> Bytes {
    // Written by hand, not through a `serde_json::Value`, so the keys keep
    // the documented order (`type`, `message`, `request_id`); serde_json
    // escapes the strings.
    let quote = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned());
    let id = request_id.map_or_else(|| "null".to_owned(), |id| quote(id.as_str()));
    let body = format!(
        "{{\"error\":{{\"type\":\"{}\",\"message\":{},\"request_id\":{}}}}}",
        kind.as_str(),
        quote(message),
        id,
    );
    Bytes::from(body)
}

/// A generated error response: `status`, the JSON body of [`error_body`],
/// `content-type: application/json`, `X-Request-ID`, and `x-should-retry:
/// false` unless the kind is `overloaded` or `internal`.
///
/// For errors the gateway answers itself (401, 404, 405, 413, …); convert the
/// body with `Response::map`.
pub fn json_error(
    status: StatusCode,
    kind: ErrorKind,
    message: &str,
    request_id: Option<&RequestId>,
) -> Response<Bytes> {
    let mut res = Response::new(error_body(kind, message, request_id));
    *res.status_mut() = status;
    let headers = res.headers_mut();
    headers.insert(CONTENT_TYPE, APPLICATION_JSON);
    if let Some(id) = request_id.and_then(|id| HeaderValue::from_str(id.as_str()).ok()) {
        headers.insert(X_REQUEST_ID, id);
    }
    if !matches!(kind, ErrorKind::Overloaded | ErrorKind::Internal) {
        headers.insert(X_SHOULD_RETRY, FALSE);
    }
    res
}

pin_project! {
    /// Body of [`ErrorResponse`]: the upstream's body passed through frame by
    /// frame, or a generated JSON error.
    ///
    /// On a server-sent-events response (`text/event-stream`), an error from
    /// the upstream body ends the stream with exactly one event,
    /// `event: error\ndata: {"error":{...}}\n\n` (type `timeout` for a
    /// [`StreamTimedOut`], else `upstream_failure`), and no `[DONE]`. Any other
    /// body passes the error on, and the server aborts the connection.
    pub struct ResponseBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Upstream {
            #[pin]
            body: B,
            sse: bool,
            request_id: Option<RequestId>,
            done: bool,
        },
        Generated { data: Option<Bytes> },
    }
}

impl<B> ResponseBody<B> {
    fn upstream(body: B, sse: bool, request_id: Option<RequestId>) -> Self {
        Self {
            kind: Kind::Upstream {
                body,
                sse,
                request_id,
                done: false,
            },
        }
    }

    fn generated(data: Bytes) -> Self {
        Self {
            kind: Kind::Generated {
                data: (!data.is_empty()).then_some(data),
            },
        }
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().kind.project() {
            KindProj::Generated { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            KindProj::Upstream {
                body,
                sse,
                request_id,
                done,
            } => {
                if *done {
                    return Poll::Ready(None);
                }
                match std::task::ready!(body.poll_frame(cx)) {
                    Some(Ok(frame)) => Poll::Ready(Some(Ok(frame))),
                    None => {
                        *done = true;
                        Poll::Ready(None)
                    }
                    Some(Err(e)) => {
                        let err: BoxError = e.into();
                        if !*sse {
                            *done = true;
                            return Poll::Ready(Some(Err(err)));
                        }
                        *done = true;
                        let kind = match classify(&*err) {
                            ErrorKind::Timeout => ErrorKind::Timeout,
                            _ => ErrorKind::UpstreamFailure,
                        };
                        tracing::warn!(
                            error = %ErrorChain(&*err),
                            request_id = request_id.as_ref().map(RequestId::as_str),
                            "stream ended by an error event",
                        );
                        let message = client_message(&*err, kind);
                        Poll::Ready(Some(Ok(Frame::data(sse_error_event(
                            kind,
                            &message,
                            request_id.as_ref(),
                        )))))
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Generated { data } => data.is_none(),
            Kind::Upstream { body, done, .. } => *done || body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Generated { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Kind::Upstream { body, done, .. } => {
                if *done {
                    SizeHint::with_exact(0)
                } else {
                    body.size_hint()
                }
            }
        }
    }
}

impl<B> fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Upstream { sse, done, .. } => f
                .debug_struct("ResponseBody::Upstream")
                .field("sse", sse)
                .field("done", done)
                .finish_non_exhaustive(),
            Kind::Generated { data } => f
                .debug_struct("ResponseBody::Generated")
                .field("len", &data.as_ref().map_or(0, Bytes::len))
                .finish(),
        }
    }
}

fn sse_error_event(kind: ErrorKind, message: &str, request_id: Option<&RequestId>) -> Bytes {
    let json = error_body(kind, message, request_id);
    let mut out = Vec::with_capacity(json.len() + 24);
    out.extend_from_slice(b"event: error\ndata: ");
    out.extend_from_slice(&json);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

#[cfg(test)]
#[path = "response_tests.rs"]
mod tests;
