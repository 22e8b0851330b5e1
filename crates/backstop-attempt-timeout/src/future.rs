//! The response futures of [`AttemptTimeout`](crate::AttemptTimeout) and,
//! with the `http` feature, `HttpAttemptTimeout`.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll, ready};

use backstop_core::clock::LazySleep;
use backstop_core::{AttemptTimedOut, BoxError, Scoped, SlaExpired};
use pin_project_lite::pin_project;
use tokio::time::Duration;

use crate::obs::{Outcome, Recording};
use crate::service::Bound;

#[cfg(feature = "http")]
pub use crate::http::HttpResponseFuture;

pin_project! {
    /// Response future of [`AttemptTimeout`](crate::AttemptTimeout).
    ///
    /// Polls the inner future first, then a timer armed at min(attempt
    /// deadline, SLA deadline); a response ready at the deadline wins.
    ///
    /// # Cancellation
    ///
    /// Holds the inner future (inside the request's context scope) and one
    /// timer (created only if the inner future is pending), nothing else. Dropping it at any point drops the inner future,
    /// within the context scope, and deregisters the timer; a future that
    /// failed at once (SLA already passed) holds nothing. With the `metrics`
    /// feature, a drop before the attempt ended counts it as `cancelled`.
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
            by_sla: bool,
            timeout: Duration,
            recording: Recording,
        },
        Expired,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(
        inner: Scoped<F>,
        armed: Bound,
        timeout: Duration,
        recording: Recording,
    ) -> Self {
        Self {
            state: State::Running {
                inner,
                sleep: LazySleep::new(armed.at),
                by_sla: armed.by_sla,
                timeout,
                recording,
            },
        }
    }

    pub(crate) fn expired() -> Self {
        Self {
            state: State::Expired,
        }
    }
}

/// The error of an expired bound: the SLA's (504) when the SLA set it, else
/// the attempt's (502).
pub(crate) fn expiry(by_sla: bool, attempt: impl FnOnce() -> AttemptTimedOut) -> BoxError {
    if by_sla {
        // Zero-sized: boxing it does not allocate.
        SlaExpired::new().into()
    } else {
        attempt().into()
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
                by_sla,
                timeout,
                recording,
            } => {
                if let Poll::Ready(res) = inner.poll(cx) {
                    recording.finish(match res {
                        Ok(_) => Outcome::Success,
                        Err(_) => Outcome::Error,
                    });
                    return Poll::Ready(res.map_err(Into::into));
                }
                ready!(sleep.poll(cx));
                recording.finish(Outcome::Timeout { by_sla: *by_sla });
                Poll::Ready(Err(expiry(*by_sla, || AttemptTimedOut::new(*timeout))))
            }
            StateProj::Expired => Poll::Ready(Err(SlaExpired::new().into())),
        }
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("ResponseFuture");
        match &self.state {
            State::Running {
                sleep,
                by_sla,
                timeout,
                ..
            } => d
                .field("deadline", &sleep.deadline())
                .field("capped_by_sla", by_sla)
                .field("timeout", timeout),
            State::Expired => d.field("expired", &true),
        };
        d.finish_non_exhaustive()
    }
}
