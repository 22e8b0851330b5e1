//! `ConcurrencyLimit<S, R>`: takes the admission ticket in `call`; the future
//! waits for a permit.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll, Waker};

use backstop_core::{AdmissionTicket, BoxError, Context};
use tower_service::Service;

use crate::future::{PermitSlot, ResponseFuture};
use crate::layer::{ConcurrencyHandle, Permit, ReleaseOnCompletion, ReleasePolicy};
use crate::obs::debug_event;
use crate::sem::Semaphore;

/// Limits how many requests run at once; built by
/// [`ConcurrencyLimitLayer`](crate::ConcurrencyLimitLayer).
///
/// `poll_ready` is always ready and reserves nothing. When a permit is free
/// and the inner service is ready at once, `call` takes the permit and calls
/// the inner service itself; otherwise the response future waits for a
/// permit (FIFO, bounded by the admission deadline, else the SLA deadline),
/// then drives `ready()` and `call()` on its own clone of the inner service.
/// Cloning shares the semaphore.
///
/// See the [crate docs](crate) for an example.
pub struct ConcurrencyLimit<S, R = ReleaseOnCompletion> {
    inner: S,
    semaphore: Arc<Semaphore>,
    max: usize,
    _release: PhantomData<fn() -> R>,
}

// === impl ConcurrencyLimit ===

impl<S, R> ConcurrencyLimit<S, R> {
    pub(crate) fn new(inner: S, semaphore: Arc<Semaphore>, max: usize) -> Self {
        Self {
            inner,
            semaphore,
            max,
            _release: PhantomData,
        }
    }

    /// A handle on the limit this service shares with its layer.
    pub fn handle(&self) -> ConcurrencyHandle {
        ConcurrencyHandle::new(Arc::clone(&self.semaphore), self.max)
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, consuming this one.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, R> Clone for ConcurrencyLimit<S, R> {
    // Hand-written: a derive would require `R: Clone`. Clones share the
    // semaphore (one limit) and hold no permit of their own.
    fn clone(&self) -> Self {
        Self::new(self.inner.clone(), Arc::clone(&self.semaphore), self.max)
    }
}

// The metric handles say nothing about the limit.
#[allow(clippy::missing_fields_in_debug)]
impl<S: fmt::Debug, R> fmt::Debug for ConcurrencyLimit<S, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConcurrencyLimit")
            .field("inner", &self.inner)
            .field("max", &self.max)
            .field("available", &self.semaphore.available_permits())
            .finish()
    }
}

impl<S, Req, R> Service<Req> for ConcurrencyLimit<S, R>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    R: ReleasePolicy<S::Response>,
{
    type Response = R::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, Req, R>;

    fn poll_ready(&mut self, _cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        // Nothing is reserved here: the future waits for its permit and then
        // for its own clone of the inner service (DESIGN contract 2).
        Poll::Ready(Ok(()))
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        // Take the admission ticket now, synchronously: the request stays
        // counted as waiting while this limiter waits.
        let ticket = AdmissionTicket::take_offered();
        let ctx = Context::try_current();
        // Fast path: a free permit (never ahead of a queued waiter: the
        // semaphore refuses while anyone waits) and an inner service that is
        // ready now. Its readiness is asked with a waker that does nothing:
        // if it is not ready, the future asks again with its own.
        let permit = if self.semaphore.try_acquire() {
            self.semaphore.metrics().acquired(0.0);
            let permit = Permit::taken(Arc::clone(&self.semaphore));
            let mut noop = TaskContext::from_waker(Waker::noop());
            match self.inner.poll_ready(&mut noop) {
                Poll::Ready(Ok(())) => {
                    // Admitted: the ticket goes on to the limiters inside,
                    // and the inner future starts here, in the caller's
                    // scope.
                    let future = AdmissionTicket::offer_if_any(ticket, || self.inner.call(req));
                    return ResponseFuture::called(ctx, future, permit);
                }
                // The permit and the ticket are released here.
                Poll::Ready(Err(e)) => return ResponseFuture::failed(e.into()),
                Poll::Pending => PermitSlot::Held(permit),
            }
        } else {
            if tracing::enabled!(tracing::Level::DEBUG) {
                acquiring(&self.semaphore);
            }
            PermitSlot::Wanted(Arc::clone(&self.semaphore))
        };
        // The clone goes back into `self`; the future drives the service that
        // was here (tower's `Buffer`/`Retry` idiom).
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::new(ctx, inner, req, permit, ticket)
    }
}

/// The `acquiring` debug event, out of line so that `call` stays small.
#[cold]
#[inline(never)]
fn acquiring(semaphore: &Semaphore) {
    debug_event!(
        available_permits = semaphore.available_permits(),
        "acquiring concurrency permit"
    );
}
