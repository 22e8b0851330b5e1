//! `QueueAdmission<S>`: takes a queue slot in `call` and publishes the ticket.

use std::fmt;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use backstop_core::{BoxError, Context, OverloadReason, Overloaded, WaitBound, clock};
use tower_service::Service;

use crate::future::ResponseFuture;
use crate::layer::{QueueHandle, Shared};

/// Bounds the number of requests waiting for admission and how long each may
/// wait; built by [`QueueAdmissionLayer`](crate::QueueAdmissionLayer).
///
/// Cloning shares the queue (a reference count), so clones made by axum per
/// request count against the one `max_waiting`.
///
/// See the [crate docs](crate) for an example.
pub struct QueueAdmission<S> {
    inner: S,
    shared: Arc<Shared>,
}

// === impl QueueAdmission ===

impl<S> QueueAdmission<S> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>) -> Self {
        Self { inner, shared }
    }

    /// A handle on the queue this service shares with its layer.
    pub fn queue(&self) -> QueueHandle {
        QueueHandle::new(Arc::clone(&self.shared))
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

impl<S: Clone> Clone for QueueAdmission<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for QueueAdmission<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueAdmission")
            .field("inner", &self.inner)
            .field("depth", &self.shared.slots.depth())
            .field("max_waiting", &self.shared.slots.max())
            .finish()
    }
}

impl<S, Req> Service<Req> for QueueAdmission<S>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        // Admission waits nowhere itself: the limiters inside wait in their
        // futures, so their `poll_ready` is ready at once.
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let shared = &self.shared;
        let max_wait_at = clock::now() + shared.max_wait;
        let (deadline, bound) = match Context::with_current(Context::sla_deadline) {
            Some(sla) if sla <= max_wait_at => (sla, WaitBound::Sla),
            _ => (max_wait_at, WaitBound::MaxWait),
        };
        let Some(ticket) = shared.slots.try_acquire(deadline, bound) else {
            shared.count_rejected();
            let err = Overloaded::new(OverloadReason::QueueFull, shared.retry_after);
            return ResponseFuture::rejected(err.into());
        };
        // Offered to the limiters inside: the first takes it and hands it on,
        // and the last to admit the request frees the slot. Untaken, it is
        // freed when the inner call returns: the request leaves the queue.
        ResponseFuture::admitted(ticket.offer(|| self.inner.call(req)))
    }
}
