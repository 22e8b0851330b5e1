//! [`SlaTimeout`]: the service.

use std::task::{Context as TaskContext, Poll};

use backstop_core::{BoxError, Context, clock};
use tokio::time::Duration;
use tower_service::Service;

use crate::future::ResponseFuture;
use crate::obs::{Metrics, sla_expired};

/// The service made by [`SlaTimeoutLayer`](crate::SlaTimeoutLayer).
///
/// Each call takes the deadline min(outer SLA deadline, now + timeout),
/// publishes it in the [`Context`] around the inner `call()` and every poll of
/// the inner future, and fails with [`SlaExpired`](backstop_core::SlaExpired)
/// when it passes. The service holds no timer and no shared state, so the
/// derived `Clone` is correct: a clone is an equal, independent value.
///
/// See the [crate docs](crate) for an example.
#[derive(Clone, Debug)]
pub struct SlaTimeout<S> {
    inner: S,
    timeout: Duration,
    metrics: Metrics,
}

impl<S> SlaTimeout<S> {
    pub(crate) fn new(inner: S, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            metrics: Metrics::resolve(),
        }
    }

    /// The SLA applied to each request.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

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

impl<S, Req> Service<Req> for SlaTimeout<S>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        // One clock stretch for the call chain (backstop_core::clock), in
        // case no outer layer opened one.
        clock::stretch(|| self.call_in_stretch(req))
    }
}

impl<S> SlaTimeout<S> {
    fn call_in_stretch<Req>(&mut self, req: Req) -> ResponseFuture<S::Future>
    where
        S: Service<Req>,
    {
        let now = clock::now();
        let outer = Context::current();
        // `timeout` is at most 24 h (checked at construction), so the sum
        // cannot overflow an `Instant`.
        let own = now + self.timeout;
        let deadline = outer.sla_deadline().map_or(own, |outer| outer.min(own));
        if deadline <= now {
            // The outer deadline has already passed: the inner service is
            // not called at all.
            sla_expired(&self.metrics);
            return ResponseFuture::expired();
        }
        let ctx = outer.with_sla_deadline(deadline);
        let fut = ctx.sync_scope_in_place(|| self.inner.call(req));
        ResponseFuture::new(ctx.scope(fut), deadline, self.metrics.clone())
    }
}
