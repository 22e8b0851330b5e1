//! The response future of [`QueueAdmission`](crate::QueueAdmission).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use backstop_core::{AdmissionTicket, BoxError, OverloadReason, Overloaded, Scoped, find};
use pin_project_lite::pin_project;

use crate::layer::Shared;

pin_project! {
    /// The response future of [`QueueAdmission`](crate::QueueAdmission).
    ///
    /// Either refused (`Overloaded(QueueFull)`, ready on the first poll) or
    /// admitted to the queue: it then polls the inner future with the
    /// admission ticket in the request context, and counts
    /// `Overloaded(WaitExceeded)` errors coming out of it.
    ///
    /// # Cancellation
    ///
    /// Dropping the future at any point frees the queue slot if it was not
    /// freed yet (the inner limiters' holds no longer matter: the slot is
    /// freed exactly once). Dropping it after the request was admitted changes
    /// nothing in the queue. The inner future is dropped with the ticket's
    /// context in scope.
    ///
    /// See the [crate docs](crate) for an example.
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Admitted {
            #[pin]
            future: Scoped<F>,
            slot: Option<SlotGuard>,
            shared: Arc<Shared>,
        },
        Rejected {
            error: Option<BoxError>,
        },
    }
}

/// Frees the queue slot (once, whoever else holds the ticket) when dropped.
struct SlotGuard(AdmissionTicket);

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.0.release();
    }
}

// === impl ResponseFuture ===

impl<F> ResponseFuture<F> {
    pub(crate) fn admitted(
        future: Scoped<F>,
        ticket: AdmissionTicket,
        shared: Arc<Shared>,
    ) -> Self {
        Self {
            kind: Kind::Admitted {
                future,
                slot: Some(SlotGuard(ticket)),
                shared,
            },
        }
    }

    pub(crate) fn rejected(error: BoxError) -> Self {
        Self {
            kind: Kind::Rejected { error: Some(error) },
        }
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Admitted {
                future,
                slot,
                shared,
            } => {
                let out = match future.poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(out) => out,
                };
                // Done: the slot is freed now if no limiter freed it yet.
                drop(slot.take());
                Poll::Ready(out.map_err(|e| {
                    let e: BoxError = e.into();
                    if find::<Overloaded>(&*e)
                        .is_some_and(|o| o.reason() == OverloadReason::WaitExceeded)
                    {
                        shared.count_wait_timeout();
                    }
                    e
                }))
            }
            KindProj::Rejected { error } => match error.take() {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Ready(Err("`QueueAdmission` future polled after completion".into())),
            },
        }
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.kind {
            Kind::Admitted { slot, .. } => {
                if slot.as_ref().is_some_and(|s| !s.0.is_released()) {
                    "waiting"
                } else {
                    "admitted"
                }
            }
            Kind::Rejected { .. } => "rejected",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}
