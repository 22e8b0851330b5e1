//! The app as one service: [`HttpApp`], and the bodies it passes.
//!
//! # Why
//!
//! Behind an axum `Router` with layers, every proxied request paid for
//! routing it does not need: the route and the method router each clone a
//! boxed service and box its future, the handler boxes its own, the panic
//! catcher boxes the response body and the route boxes it again, and the
//! per-client stack, itself boxed, boxes its future and its body. That was
//! about a dozen allocations per request, each box also a copy of a future
//! of several KiB.
//!
//! [`HttpApp`] erases the app's type once: the outer layers (request id,
//! trace, a panic catcher), the router of the `/v1` routes and the
//! per-client stacks are one concrete type, whose future the app boxes
//! once per request. A response body is boxed twice: where the per-client
//! stack ends (its body, a wrapper per layer, is several hundred bytes, and
//! the handler and the outer layers move the response several times: one
//! allocation costs less than those copies), and once more at the end, with
//! the trace layer's wrapper. The four `/v1` routes
//! with their methods are matched by hand; every other request (`/health`,
//! `/ready`, `/metrics`, other methods on the `/v1` paths, unknown routes)
//! goes to the same axum router as before, inside the same outer layers.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use axum::body::Body;
use backstop::{BoxError, ErrorKind};
use backstop_core::http::json_error;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Either;
use hyper::body::Incoming;
use tower::{Service, ServiceExt};

/// The future of one request through an [`HttpApp`].
pub type AppFuture = Pin<Box<dyn Future<Output = Response<Body>> + Send>>;

/// The whole app as one cheaply cloned service (see the [module docs](self)):
/// the server calls it with hyper's bodies, the axum [`Router`] of
/// [`App`](crate::App) with axum's.
///
/// [`Router`]: axum::Router
#[derive(Clone)]
pub struct HttpApp(Arc<dyn Serve>);

impl fmt::Debug for HttpApp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpApp").finish_non_exhaustive()
    }
}

impl HttpApp {
    /// Erases `svc`, the composed app.
    pub(crate) fn new<T>(svc: T) -> Self
    where
        T: Service<Request<RequestBody>, Error = std::convert::Infallible>
            + Clone
            + Send
            + Sync
            + 'static,
        T::Response: IntoBody,
        T::Future: Send + 'static,
    {
        Self(Arc::new(Erased(svc)))
    }

    /// Serves one request.
    pub fn call(&self, req: Request<RequestBody>) -> AppFuture {
        self.0.serve(req)
    }
}

/// For the axum [`Router`](axum::Router) (a fallback service).
impl Service<Request<Body>> for HttpApp {
    type Response = Response<Body>;
    type Error = std::convert::Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> ResponseFuture {
        ResponseFuture(HttpApp::call(self, req.map(Either::Right)))
    }
}

/// [`HttpApp`]'s future as a tower service's.
#[allow(missing_debug_implementations)]
pub struct ResponseFuture(AppFuture);

impl Future for ResponseFuture {
    type Output = Result<Response<Body>, std::convert::Infallible>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.0.as_mut().poll(cx).map(Ok)
    }
}

/// A response whose body [`HttpApp`] boxes into axum's [`Body`].
pub trait IntoBody {
    /// The response with its body boxed.
    fn into_body(self) -> Response<Body>;
}

impl<B> IntoBody for Response<B>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    fn into_body(self) -> Response<Body> {
        self.map(Body::new)
    }
}

trait Serve: Send + Sync + 'static {
    fn serve(&self, req: Request<RequestBody>) -> AppFuture;
}

struct Erased<T>(T);

impl<T> Serve for Erased<T>
where
    T: Service<Request<RequestBody>, Error = std::convert::Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    T::Response: IntoBody,
    T::Future: Send + 'static,
{
    fn serve(&self, req: Request<RequestBody>) -> AppFuture {
        let mut svc = self.0.clone();
        // The app's outer layers are ready at once (they pass readiness
        // through to a `service_fn`); the general path is kept for form.
        let ready = svc.poll_ready(&mut Context::from_waker(Waker::noop()));
        match ready {
            Poll::Ready(Ok(())) => Box::pin(CatchPanic::new(move || svc.call(req))),
            Poll::Ready(Err(never)) => match never {},
            Poll::Pending => Box::pin(CatchPanic::new(move || svc.oneshot(req))),
        }
    }
}

pin_project_lite::pin_project! {
    /// Turns a panic in the app's `call` or in a poll of its future into a
    /// logged 500 `internal` error (what tower-http's `CatchPanicLayer` did
    /// outside the router). Panics below the trace layer are caught there,
    /// with the request id.
    struct CatchPanic<F> {
        // `None` once it panicked.
        #[pin]
        fut: Option<F>,
    }
}

impl<F> CatchPanic<F> {
    fn new(call: impl FnOnce() -> F) -> Self {
        Self {
            fut: std::panic::catch_unwind(AssertUnwindSafe(call)).ok(),
        }
    }
}

impl<F, R> Future for CatchPanic<F>
where
    F: Future<Output = Result<R, std::convert::Infallible>>,
    R: IntoBody,
{
    type Output = Response<Body>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Some(fut) = this.fut.as_mut().as_pin_mut() {
            match std::panic::catch_unwind(AssertUnwindSafe(|| fut.poll(cx))) {
                Ok(Poll::Pending) => return Poll::Pending,
                Ok(Poll::Ready(Ok(res))) => return Poll::Ready(res.into_body()),
                Ok(Poll::Ready(Err(never))) => match never {},
                Err(panic) => drop::<Box<dyn Any + Send>>(panic),
            }
        }
        this.fut.set(None);
        tracing::error!("handler panicked");
        Poll::Ready(
            json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorKind::Internal,
                "internal error",
                None,
            )
            .map(Body::from),
        )
    }
}

/// A request body: hyper's, from the server (`Left`), or axum's, from the
/// [`Router`](axum::Router) (`Right`: in-process use and tests). An enum
/// rather than a box: no allocation, one branch per poll.
pub type RequestBody = Either<Incoming, Body>;
