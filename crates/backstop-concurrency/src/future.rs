//! The response future of [`ConcurrencyLimit`](crate::ConcurrencyLimit).

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll, ready};

use backstop_core::{BoxError, Context, Rescoped, TicketHold, WaitDeadline};
use pin_project_lite::pin_project;
use tokio::sync::{Semaphore, TryAcquireError};
use tokio::time::{Instant, Sleep, sleep_until};
use tokio_util::sync::PollSemaphore;
use tower_service::Service;

use crate::layer::{Permit, ReleaseOnCompletion, ReleasePolicy};
use crate::obs::{Metrics, debug_event};

pin_project! {
    /// The response future of [`ConcurrencyLimit`](crate::ConcurrencyLimit).
    ///
    /// It waits for a permit, then for its own clone of the inner service to
    /// be ready, then calls it and drives the inner future, all with the
    /// request context captured at `call` time in scope.
    ///
    /// - Uncontended, the first poll takes a permit with `try_acquire`:
    ///   no allocation, no timer, no clock read.
    /// - Contended, it queues on the semaphore (FIFO) through a
    ///   [`PollSemaphore`], which boxes tokio's `acquire_owned` future (one
    ///   allocation, only on this path), and arms one boxed [`Sleep`] at the
    ///   wait deadline (the admission ticket's, else the SLA deadline, else
    ///   none).
    ///   A deadline already reached fails at once without queueing or
    ///   sleeping (so a `max_wait` of 0 never waits). The same deadline also
    ///   bounds waiting for the inner service's `poll_ready`.
    /// - At the deadline it fails with
    ///   [`WaitDeadline::expired`]: `Overloaded(WaitExceeded)` with the
    ///   queue's retry-after, or `SlaExpired` when the deadline is the SLA's.
    ///   The deadline never bounds the inner call itself.
    ///
    /// # Cancellation
    ///
    /// - Dropped while queued: leaves the semaphore's wait list (a permit
    ///   assigned to it in the meantime goes to the next waiter), drops its
    ///   timer and its admission-ticket hold. No other waiter is skipped.
    /// - Dropped while waiting for the inner service's readiness: releases
    ///   the permit and the ticket hold.
    /// - Dropped after the inner call: releases the permit and drops the
    ///   inner future (the ticket hold was already dropped right after the
    ///   inner `call()` returned).
    ///
    /// With [`ReleaseOnCompletion`] the permit is released when this future
    /// completes; with `ReleaseAtBodyEnd` it moves into the response body.
    ///
    /// See the [crate docs](crate) for an example.
    pub struct ResponseFuture<S, Req, R = ReleaseOnCompletion>
    where
        S: Service<Req>,
    {
        #[pin]
        inner: Inner<S, Req>,
        _release: PhantomData<fn() -> R>,
    }
}

pin_project! {
    // With a context at call time, it is scoped around every poll (and the
    // drop) of the inner service's future; without one there is nothing to
    // restore, so the scope (two task-local swaps per poll) is skipped.
    #[project = InnerProj]
    enum Inner<S, Req>
    where
        S: Service<Req>,
    {
        Scoped {
            #[pin]
            future: Rescoped<Admit<S, Req>>,
        },
        Bare {
            #[pin]
            future: Admit<S, Req>,
        },
    }
}

pin_project! {
    // Waits for a permit and the inner service, calls it, polls its future.
    struct Admit<S, Req>
    where
        S: Service<Req>,
    {
        #[pin]
        state: State<S, Req, S::Future>,
        // Moved into the permit once taken.
        semaphore: Option<Arc<Semaphore>>,
        // Created only once the fast path found no permit free.
        waiter: Option<Box<Waiter>>,
        deadline: Option<WaitDeadline>,
        // Armed (and boxed, to keep the future small) only once this future
        // must wait with a deadline.
        sleep: Option<Pin<Box<Sleep>>>,
        permit: Option<Permit>,
        hold: Option<TicketHold>,
        metrics: Metrics,
    }
}

/// A request on the semaphore's wait list, and since when.
struct Waiter {
    semaphore: PollSemaphore,
    since: Instant,
}

pin_project! {
    #[project = StateProj]
    enum State<S, Req, F> {
        Waiting {
            service: S,
            request: Option<Req>,
        },
        Called {
            #[pin]
            future: F,
        },
    }
}

// === impl ResponseFuture ===

impl<S, Req, R> ResponseFuture<S, Req, R>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    pub(crate) fn new(
        ctx: Option<Context>,
        service: S,
        request: Req,
        semaphore: Arc<Semaphore>,
        deadline: Option<WaitDeadline>,
        hold: Option<TicketHold>,
        metrics: Metrics,
    ) -> Self {
        let admit = Admit {
            state: State::Waiting {
                service,
                request: Some(request),
            },
            semaphore: Some(semaphore),
            waiter: None,
            deadline,
            sleep: None,
            permit: None,
            hold,
            metrics,
        };
        let inner = match ctx {
            Some(ctx) => Inner::Scoped {
                future: ctx.rescope_future(admit),
            },
            None => Inner::Bare { future: admit },
        };
        Self {
            inner,
            _release: PhantomData,
        }
    }
}

impl<S, Req, R> Future for ResponseFuture<S, Req, R>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    R: ReleasePolicy<S::Response>,
{
    type Output = Result<R::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let (response, permit) = match self.project().inner.project() {
            InnerProj::Scoped { future } => ready!(future.poll(cx))?,
            InnerProj::Bare { future } => ready!(future.poll(cx))?,
        };
        Poll::Ready(Ok(R::attach(response, permit)))
    }
}

impl<S, Req, R> fmt::Debug for ResponseFuture<S, Req, R>
where
    S: Service<Req>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

// === impl Admit ===

impl<S, Req> Future for Admit<S, Req>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Output = Result<(S::Response, Permit), BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Waiting { service, request } => {
                    if this.permit.is_none() {
                        let permit = match poll_permit(
                            this.semaphore,
                            this.waiter,
                            this.deadline.as_ref(),
                            this.sleep,
                            this.metrics,
                            cx,
                        ) {
                            Poll::Ready(Ok(permit)) => permit,
                            Poll::Ready(Err(e)) => {
                                *this.waiter = None;
                                *this.sleep = None;
                                *this.hold = None;
                                return Poll::Ready(Err(e));
                            }
                            Poll::Pending => return Poll::Pending,
                        };
                        *this.permit = Some(permit);
                        // The permit is ours: leave the wait list for good.
                        *this.waiter = None;
                    }
                    match service.poll_ready(cx) {
                        Poll::Ready(Ok(())) => {}
                        Poll::Ready(Err(e)) => {
                            *this.permit = None;
                            *this.sleep = None;
                            *this.hold = None;
                            return Poll::Ready(Err(e.into()));
                        }
                        Poll::Pending => {
                            if let Poll::Ready(e) =
                                poll_deadline(this.deadline.as_ref(), this.sleep, cx)
                            {
                                *this.permit = None;
                                *this.sleep = None;
                                *this.hold = None;
                                return Poll::Ready(Err(e));
                            }
                            return Poll::Pending;
                        }
                    }
                    let Some(request) = request.take() else {
                        return Poll::Ready(Err(polled_after_completion()));
                    };
                    let future = service.call(request);
                    // Admitted here: leave the admission queue right after
                    // the inner `call()` returned, and stop the timer.
                    *this.hold = None;
                    *this.sleep = None;
                    this.state.set(State::Called { future });
                }
                StateProj::Called { future } => {
                    let result = ready!(future.poll(cx));
                    let permit = this.permit.take();
                    return Poll::Ready(match (result, permit) {
                        (Ok(response), Some(permit)) => Ok((response, permit)),
                        (Err(e), _) => Err(e.into()),
                        (Ok(_), None) => Err(polled_after_completion()),
                    });
                }
            }
        }
    }
}

/// Takes a permit: without allocating when one is free, else through the
/// (lazily created) FIFO waiter, bounded by the deadline.
fn poll_permit(
    semaphore: &mut Option<Arc<Semaphore>>,
    waiter: &mut Option<Box<Waiter>>,
    deadline: Option<&WaitDeadline>,
    sleep: &mut Option<Pin<Box<Sleep>>>,
    metrics: &Metrics,
    cx: &mut TaskContext<'_>,
) -> Poll<Result<Permit, BoxError>> {
    let Some(sem) = semaphore.as_ref() else {
        return Poll::Ready(Err(polled_after_completion()));
    };
    let waiter = match waiter {
        Some(waiter) => waiter,
        None => {
            // Fast path. A free permit is never taken ahead of a queued
            // waiter: tokio hands released permits to waiters first.
            let fast = match sem.try_acquire() {
                Ok(permit) => {
                    permit.forget();
                    true
                }
                Err(TryAcquireError::Closed) => return Poll::Ready(Err(closed())),
                Err(TryAcquireError::NoPermits) => false,
            };
            if fast {
                metrics.acquired(0.0);
                return Poll::Ready(into_permit(semaphore, metrics));
            }
            // Must wait. A deadline already reached fails without queueing.
            if let Poll::Ready(e) = poll_deadline(deadline, sleep, cx) {
                return Poll::Ready(Err(e));
            }
            debug_event!("waiting for a concurrency permit");
            waiter.insert(Box::new(Waiter {
                semaphore: PollSemaphore::new(Arc::clone(sem)),
                since: Instant::now(),
            }))
        }
    };
    match waiter.semaphore.poll_acquire(cx) {
        Poll::Ready(Some(permit)) => {
            permit.forget();
            let wait = Instant::now().saturating_duration_since(waiter.since);
            metrics.acquired(wait.as_secs_f64());
            debug_event!(
                wait_ms = wait.as_millis() as u64,
                "concurrency permit acquired after waiting"
            );
            Poll::Ready(into_permit(semaphore, metrics))
        }
        Poll::Ready(None) => Poll::Ready(Err(closed())),
        Poll::Pending => poll_deadline(deadline, sleep, cx).map(Err),
    }
}

/// Wraps a slot already taken (and forgotten) from the semaphore.
fn into_permit(
    semaphore: &mut Option<Arc<Semaphore>>,
    metrics: &Metrics,
) -> Result<Permit, BoxError> {
    semaphore
        .take()
        .map(|semaphore| Permit::taken(semaphore, metrics))
        .ok_or_else(polled_after_completion)
}

/// Arms the timer on first use (or fails at once if the deadline has passed)
/// and polls it. Pending forever without a deadline.
fn poll_deadline(
    deadline: Option<&WaitDeadline>,
    sleep: &mut Option<Pin<Box<Sleep>>>,
    cx: &mut TaskContext<'_>,
) -> Poll<BoxError> {
    let Some(deadline) = deadline else {
        return Poll::Pending;
    };
    let sleep = match sleep {
        Some(sleep) => sleep,
        None => {
            if Instant::now() >= deadline.at() {
                return Poll::Ready(deadline.expired());
            }
            sleep.insert(Box::pin(sleep_until(deadline.at())))
        }
    };
    sleep.as_mut().poll(cx).map(|()| deadline.expired())
}

fn closed() -> BoxError {
    // Never happens: the semaphore is private and never closed.
    "concurrency limit semaphore closed".into()
}

fn polled_after_completion() -> BoxError {
    "`ConcurrencyLimit` future polled after completion".into()
}
