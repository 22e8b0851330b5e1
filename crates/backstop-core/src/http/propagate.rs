use std::task::{Context as TaskContext, Poll};

use http::Request;
use tower_layer::Layer;
use tower_service::Service;

use crate::context::Context;

/// Copies the current [`Context`] into the request extensions.
///
/// Place it innermost, right above the upstream service, so handlers and
/// clients that only see the request (an axum handler, a hyper client
/// wrapper) read the same values inner layers read from the task-local: one
/// [`Context`], whose accessors give the SLA deadline, the attempt deadline
/// (already capped by the SLA), the attempt number and the request id. In an
/// axum handler, take it as `Extension<Context>`. It is the only backstop
/// layer that writes extensions (the request-id layer aside, which also
/// puts the [`RequestId`](crate::RequestId) there).
///
/// The response future is the inner service's own: the layer costs one
/// context clone and one map insert per call (one value, not one per field:
/// each extension is its own allocation).
#[derive(Clone, Copy, Debug, Default)]
pub struct PropagateContextLayer {
    _priv: (),
}

impl PropagateContextLayer {
    /// Creates the layer.
    pub fn new() -> Self {
        Self { _priv: () }
    }
}

impl<S> Layer<S> for PropagateContextLayer {
    type Service = PropagateContext<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PropagateContext { inner }
    }
}

/// The service made by [`PropagateContextLayer`].
#[derive(Clone, Debug)]
pub struct PropagateContext<S> {
    inner: S,
}

impl<S> PropagateContext<S> {
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

impl<S, B> Service<Request<B>> for PropagateContext<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        req.extensions_mut().insert(Context::current());
        self.inner.call(req)
    }
}
