//! The response future of [`SlaTimeout`](crate::SlaTimeout).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll, ready};

use backstop_core::clock::LazySleep;
use backstop_core::{BoxError, Scoped, SlaExpired, find};
use pin_project_lite::pin_project;
use tokio::time::Instant;

use crate::obs::{Metrics, sla_expired};

pin_project! {
    /// Response future of [`SlaTimeout`](crate::SlaTimeout).
    ///
    /// Polls the inner future first, then a timer armed at the SLA deadline;
    /// a response that is ready at the deadline wins over the expiry.
    ///
    /// # Cancellation
    ///
    /// The future holds the inner future (inside the request's context
    /// scope) and one timer (created only if the inner future is pending),
    /// nothing else. Dropping it at any point drops the
    /// inner future, within the context scope, and deregisters the timer; a
    /// future that failed at once (outer deadline already passed) holds
    /// nothing.
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Running {
            #[pin]
            inner: Scoped<F>,
            #[pin]
            sleep: LazySleep,
            metrics: Metrics,
        },
        Expired,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(inner: Scoped<F>, deadline: Instant, metrics: Metrics) -> Self {
        Self {
            state: State::Running {
                inner,
                sleep: LazySleep::new(deadline),
                metrics,
            },
        }
    }

    pub(crate) fn expired() -> Self {
        Self {
            state: State::Expired,
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
        match self.project().state.project() {
            StateProj::Running {
                inner,
                sleep,
                metrics,
            } => {
                if let Poll::Ready(res) = inner.poll(cx) {
                    return Poll::Ready(res.map_err(|e| {
                        let e: BoxError = e.into();
                        // An inner wait or attempt cut by this deadline.
                        if find::<SlaExpired>(&*e).is_some() {
                            sla_expired(metrics);
                        }
                        e
                    }));
                }
                ready!(sleep.poll(cx));
                sla_expired(metrics);
                Poll::Ready(Err(SlaExpired::new().into()))
            }
            // `SlaExpired` is zero-sized: boxing it does not allocate.
            StateProj::Expired => Poll::Ready(Err(SlaExpired::new().into())),
        }
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("ResponseFuture");
        match &self.state {
            State::Running { sleep, .. } => d.field("deadline", &sleep.deadline()),
            State::Expired => d.field("expired", &true),
        };
        d.finish_non_exhaustive()
    }
}
