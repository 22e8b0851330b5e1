//! The request-id layer: every request gets an id in the [`Context`].

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::context::{Context, RequestId, Scoped};

/// Marker for [`SetRequestIdLayer`]'s generic mode: keep an id already in the
/// context, else generate a UUIDv7. Works for any request type.
#[derive(Clone, Copy, Debug, Default)]
pub struct Generate {
    _priv: (),
}

/// Puts a request id into the [`Context`] for the layers inside.
///
/// The generic mode ([`SetRequestIdLayer::new`]) works for any request type:
/// it keeps an id an outer layer already published, else generates a UUIDv7.
/// With the `http` feature, [`SetRequestIdLayer::http`] changes the type to
/// one that reads and writes the `X-Request-ID` header (see
/// [`crate::http`]).
///
/// # Example
///
/// ```
/// use backstop_core::{Context, SetRequestIdLayer};
/// use tower::{service_fn, ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower::BoxError> {
/// let svc = ServiceBuilder::new()
///     .layer(SetRequestIdLayer::new())
///     .service(service_fn(|n: u32| async move {
///         let id = Context::current().request_id().cloned();
///         Ok::<_, tower::BoxError>((n, id))
///     }));
/// let (_, id) = svc.oneshot(7).await?;
/// assert_eq!(id.unwrap().as_str().len(), 36); // a UUIDv7
/// # Ok(())
/// # }
/// ```
pub struct SetRequestIdLayer<M = Generate> {
    pub(crate) _mode: PhantomData<fn() -> M>,
}

impl SetRequestIdLayer<Generate> {
    /// The generic mode: keep the context's id, else generate one.
    pub fn new() -> Self {
        Self { _mode: PhantomData }
    }
}

impl Default for SetRequestIdLayer<Generate> {
    fn default() -> Self {
        Self::new()
    }
}

impl<M> Clone for SetRequestIdLayer<M> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<M> Copy for SetRequestIdLayer<M> {}

impl<M> fmt::Debug for SetRequestIdLayer<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SetRequestIdLayer")
            .field("mode", &std::any::type_name::<M>())
            .finish()
    }
}

impl<S, M> Layer<S> for SetRequestIdLayer<M> {
    type Service = SetRequestId<S, M>;

    fn layer(&self, inner: S) -> Self::Service {
        SetRequestId {
            inner,
            _mode: PhantomData,
        }
    }
}

/// The service made by [`SetRequestIdLayer`].
///
/// See the [crate docs](crate) for an example.
pub struct SetRequestId<S, M = Generate> {
    pub(crate) inner: S,
    pub(crate) _mode: PhantomData<fn() -> M>,
}

impl<S, M> SetRequestId<S, M> {
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

impl<S: Clone, M> Clone for SetRequestId<S, M> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            _mode: PhantomData,
        }
    }
}

impl<S: fmt::Debug, M> fmt::Debug for SetRequestId<S, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SetRequestId")
            .field("inner", &self.inner)
            .field("mode", &std::any::type_name::<M>())
            .finish()
    }
}

impl<S, Req> Service<Req> for SetRequestId<S, Generate>
where
    S: Service<Req>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let ctx = Context::current();
        let ctx = if ctx.request_id().is_some() {
            ctx
        } else {
            ctx.with_request_id(RequestId::generate())
        };
        let fut = ctx.sync_scope_in_place(|| self.inner.call(req));
        ResponseFuture {
            inner: ctx.scope(fut),
        }
    }
}

pin_project! {
    /// Response future of [`SetRequestId`] in its generic mode.
    ///
    /// # Cancellation
    ///
    /// Holds nothing but the inner future and the context; dropping it drops
    /// the inner future inside the context's scope.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: Scoped<F>,
    }
}

impl<F: Future> Future for ResponseFuture<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        self.project().inner.poll(cx)
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{ServiceExt, service_fn};

    #[tokio::test]
    async fn keeps_an_outer_id() {
        let svc = SetRequestIdLayer::new().layer(service_fn(|()| async {
            Ok::<_, std::convert::Infallible>(Context::current().request_id().cloned())
        }));
        let id = RequestId::parse(b"outer-1").unwrap();
        let seen = Context::new()
            .with_request_id(id.clone())
            .scope(svc.oneshot(()))
            .await
            .unwrap();
        assert_eq!(seen, Some(id));
    }
}
