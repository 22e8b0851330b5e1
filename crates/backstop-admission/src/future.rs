//! The response future of [`QueueAdmission`](crate::QueueAdmission).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use backstop_core::BoxError;
use pin_project_lite::pin_project;

pin_project! {
    /// The response future of [`QueueAdmission`](crate::QueueAdmission).
    ///
    /// Either refused (`Overloaded(QueueFull)`, ready on the first poll) or
    /// admitted to the queue: it is then the inner future, errors boxed. The
    /// queue slot is not here: it moved with the admission ticket into the
    /// first limiter inside, or was freed when the inner `call()` returned.
    ///
    /// # Cancellation
    ///
    /// Dropping the future drops the inner future, and with it the limiter
    /// that holds the ticket, if one still waits: the slot is freed then,
    /// exactly once. Dropping it after the request was admitted changes
    /// nothing in the queue.
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
            future: F,
        },
        Rejected {
            error: Option<BoxError>,
        },
    }
}

// === impl ResponseFuture ===

impl<F> ResponseFuture<F> {
    pub(crate) fn admitted(future: F) -> Self {
        Self {
            kind: Kind::Admitted { future },
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

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Admitted { future } => future.poll(cx).map_err(Into::into),
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
            Kind::Admitted { .. } => "admitted",
            Kind::Rejected { .. } => "rejected",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}
