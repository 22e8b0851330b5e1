//! The response future of [`ConcurrencyLimit`](crate::ConcurrencyLimit).

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll, ready};

use backstop_core::{AdmissionTicket, BoxError, Context, Rescoped, WaitDeadline};
use pin_project_lite::pin_project;
use tokio::time::{Duration, Instant, Sleep, sleep_until};
use tower_service::Service;

use crate::layer::{Permit, ReleaseOnCompletion, ReleasePolicy};
use crate::obs::debug_event;
use crate::sem::{Semaphore, Waiter};

pin_project! {
    /// The response future of [`ConcurrencyLimit`](crate::ConcurrencyLimit).
    ///
    /// It waits for a permit, then for its own clone of the inner service to
    /// be ready, then calls it and drives the inner future, all with the
    /// request context captured at `call` time in scope.
    ///
    /// - Uncontended, `call` took the permit (one compare-and-swap: no
    ///   allocation, no lock, no timer, no clock read) and, the inner
    ///   service being ready, called it: the future only drives the inner
    ///   future.
    /// - Contended, it queues on the semaphore's FIFO wait list and arms a
    ///   [`Sleep`] at the wait deadline (the admission ticket's, else the SLA
    ///   deadline, else none), both in one allocation made only on this
    ///   path. The deadline is read from the context captured at `call`
    ///   time, only once the future must wait.
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
    ///   timer and its admission ticket (freeing the queue slot). No other
    ///   waiter is skipped.
    /// - Dropped while waiting for the inner service's readiness: releases
    ///   the permit and the admission ticket.
    /// - Dropped after the inner call: releases the permit and drops the
    ///   inner future (the admission ticket was handed on, or dropped, at the
    ///   inner `call()`).
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
        inner: Inner<S, Req, R>,
    }
}

pin_project! {
    // With a context at call time, it is scoped around every poll (and the
    // drop) of the inner service's future; without one there is nothing to
    // restore, so the scope (a thread-local set and reset per poll) is skipped.
    #[project = InnerProj]
    enum Inner<S, Req, R>
    where
        S: Service<Req>,
    {
        Scoped {
            #[pin]
            future: Rescoped<Admit<S, Req, R>>,
        },
        Bare {
            #[pin]
            future: Admit<S, Req, R>,
        },
    }
}

pin_project! {
    // Waits for a permit and the inner service, calls it, polls its future.
    #[project = AdmitProj]
    struct Admit<S, Req, R>
    where
        S: Service<Req>,
    {
        #[pin]
        state: State<S, Req, S::Future>,
        // The semaphore until the permit is taken, then the permit.
        permit: PermitSlot,
        // Created (one allocation) only once this future must wait: no permit
        // free, or the inner service not ready with a deadline.
        slow: SlowSlot,
        // The admission ticket, from `call` until the inner `call()`.
        ticket: Option<AdmissionTicket>,
        // Whether the context captured at `call` is in scope when polled (so
        // the wait deadline is read from it); without one there is none.
        scoped: bool,
        _release: PhantomData<fn() -> R>,
    }
}

/// Where the permit is.
pub(crate) enum PermitSlot {
    /// Not taken yet.
    Wanted(Arc<Semaphore>),
    Held(Permit),
    /// Handed out with the response, or released on failure.
    Gone,
}

/// The boxed wait state, if any. Its drop is out of line and only reached
/// when there is something to drop: the uncontended future never calls it.
struct SlowSlot(Option<Pin<Box<Slow>>>);

pin_project! {
    // What only a waiting future needs, boxed together.
    struct Slow {
        // The wait deadline, read from the context when this was created.
        deadline: Option<WaitDeadline>,
        // On the semaphore's wait list, once the fast path found no permit.
        waiter: Option<Waiter>,
        // When the wait for a permit started: read only for the wait metric
        // (feature `metrics`) or the debug event.
        since: Option<Instant>,
        // Armed at the deadline on the first wait.
        #[pin]
        sleep: Option<Sleep>,
    }
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
        // The inner service failed its readiness in `call`.
        Failed {
            error: Option<BoxError>,
        },
    }
}

// === impl ResponseFuture ===

impl<S, Req, R> ResponseFuture<S, Req, R>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    R: ReleasePolicy<S::Response>,
{
    /// Waits for the permit (or, holding it, for the service), then calls.
    pub(crate) fn new(
        ctx: Option<Context>,
        service: S,
        request: Req,
        permit: PermitSlot,
        ticket: Option<AdmissionTicket>,
    ) -> Self {
        let state = State::Waiting {
            service,
            request: Some(request),
        };
        Self::with(ctx, state, permit, ticket)
    }

    /// Already admitted and called (the fast path in `call`).
    pub(crate) fn called(ctx: Option<Context>, future: S::Future, permit: Permit) -> Self {
        Self::with(
            ctx,
            State::Called { future },
            PermitSlot::Held(permit),
            None,
        )
    }

    /// The inner service failed its readiness in `call`: nothing is held.
    #[cold]
    pub(crate) fn failed(error: BoxError) -> Self {
        Self::with(
            None,
            State::Failed { error: Some(error) },
            PermitSlot::Gone,
            None,
        )
    }

    #[inline]
    fn with(
        ctx: Option<Context>,
        state: State<S, Req, S::Future>,
        permit: PermitSlot,
        ticket: Option<AdmissionTicket>,
    ) -> Self {
        let admit = Admit {
            state,
            permit,
            slow: SlowSlot(None),
            ticket,
            scoped: ctx.is_some(),
            _release: PhantomData,
        };
        let inner = match ctx {
            Some(ctx) => Inner::Scoped {
                future: ctx.rescope_future(admit),
            },
            None => Inner::Bare { future: admit },
        };
        Self { inner }
    }
}

impl<S, Req, R> Future for ResponseFuture<S, Req, R>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    R: ReleasePolicy<S::Response>,
{
    type Output = Result<R::Response, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        match self.project().inner.project() {
            InnerProj::Scoped { future } => future.poll(cx),
            InnerProj::Bare { future } => future.poll(cx),
        }
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

impl<S, Req, R> Future for Admit<S, Req, R>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    R: ReleasePolicy<S::Response>,
{
    type Output = Result<R::Response, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Waiting { service, request } => {
                    if let PermitSlot::Wanted(semaphore) = this.permit {
                        // Fast path, only before queueing. Never ahead of a
                        // queued waiter: the semaphore refuses while anyone
                        // waits.
                        let waited = if this.slow.0.is_none() && semaphore.try_acquire() {
                            Duration::ZERO
                        } else {
                            let ticket = this.ticket.as_ref();
                            match poll_permit_slow(
                                semaphore,
                                &mut this.slow.0,
                                ticket,
                                *this.scoped,
                                cx,
                            ) {
                                Poll::Ready(Ok(waited)) => waited,
                                Poll::Ready(Err(e)) => return Poll::Ready(Err(this.fail(e))),
                                Poll::Pending => return Poll::Pending,
                            }
                        };
                        semaphore.metrics().acquired(waited.as_secs_f64());
                        if let PermitSlot::Wanted(semaphore) =
                            std::mem::replace(this.permit, PermitSlot::Gone)
                        {
                            *this.permit = PermitSlot::Held(Permit::taken(semaphore));
                        }
                    }
                    match service.poll_ready(cx) {
                        Poll::Ready(Ok(())) => {}
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(this.fail(e.into()))),
                        Poll::Pending => {
                            let ticket = this.ticket.as_ref();
                            return match poll_deadline(&mut this.slow.0, ticket, *this.scoped, cx) {
                                Poll::Ready(e) => Poll::Ready(Err(this.fail(e))),
                                Poll::Pending => Poll::Pending,
                            };
                        }
                    }
                    let Some(request) = request.take() else {
                        return Poll::Ready(Err(polled_after_completion()));
                    };
                    // Admitted here: the ticket goes on to the limiters
                    // inside; if none takes it the request leaves the queue
                    // right after the inner `call()`. Stop the timer.
                    let future =
                        AdmissionTicket::offer_if_any(this.ticket.take(), || service.call(request));
                    this.slow.clear();
                    this.state.set(State::Called { future });
                }
                StateProj::Failed { error } => {
                    return Poll::Ready(Err(error.take().unwrap_or_else(polled_after_completion)));
                }
                StateProj::Called { future } => {
                    let result = ready!(future.poll(cx));
                    let permit = std::mem::replace(this.permit, PermitSlot::Gone);
                    return Poll::Ready(match (result, permit) {
                        (Ok(response), PermitSlot::Held(permit)) => Ok(R::attach(response, permit)),
                        (Err(e), _) => Err(e.into()),
                        (Ok(_), _) => Err(polled_after_completion()),
                    });
                }
            }
        }
    }
}

impl<S, Req, R> AdmitProj<'_, S, Req, R>
where
    S: Service<Req>,
{
    /// Fails before the inner call: releases the permit, the wait-list
    /// entry, the timer and the admission ticket.
    #[cold]
    fn fail(&mut self, e: BoxError) -> BoxError {
        *self.permit = PermitSlot::Gone;
        self.slow.clear();
        *self.ticket = None;
        e
    }
}

// === impl Slow ===

impl SlowSlot {
    #[inline]
    fn clear(&mut self) {
        if let Some(slow) = self.0.take() {
            drop_slow(slow);
        }
    }
}

impl Drop for SlowSlot {
    #[inline]
    fn drop(&mut self) {
        self.clear();
    }
}

#[cold]
#[inline(never)]
fn drop_slow(slow: Pin<Box<Slow>>) {
    drop(slow);
}

impl Slow {
    fn new(deadline: Option<WaitDeadline>) -> Pin<Box<Self>> {
        Box::pin(Self {
            deadline,
            waiter: None,
            since: None,
            sleep: None,
        })
    }
}

/// The wait deadline: the admission ticket's, else the SLA deadline of the
/// context captured at `call` (in scope while `scoped`).
fn wait_deadline(ticket: Option<&AdmissionTicket>, scoped: bool) -> Option<WaitDeadline> {
    match ticket {
        Some(ticket) => Some(ticket.wait_deadline()),
        None if scoped => Context::with_current(Context::sla_deadline).map(WaitDeadline::sla),
        None => None,
    }
}

/// The error for a wait that reached `deadline`: counted on the ticket's
/// queue when it is the ticket's.
fn expired(ticket: Option<&AdmissionTicket>, deadline: &WaitDeadline) -> BoxError {
    match ticket {
        Some(ticket) => ticket.expired(),
        None => deadline.expired(),
    }
}

/// Takes a permit once the fast path failed: through the (lazily created)
/// FIFO waiter, bounded by the deadline. `Ready(Ok(waited))`: the caller now
/// owns one permit of `semaphore`.
#[cold]
#[inline(never)]
fn poll_permit_slow(
    semaphore: &Arc<Semaphore>,
    slow: &mut Option<Pin<Box<Slow>>>,
    ticket: Option<&AdmissionTicket>,
    scoped: bool,
    cx: &mut TaskContext<'_>,
) -> Poll<Result<Duration, BoxError>> {
    let slow = match slow {
        Some(slow) => slow,
        None => {
            // Must wait. A deadline already reached fails without queueing.
            let deadline = wait_deadline(ticket, scoped);
            if let Some(deadline) = deadline.filter(|d| Instant::now() >= d.at()) {
                return Poll::Ready(Err(expired(ticket, &deadline)));
            }
            debug_event!("waiting for a concurrency permit");
            let slow = slow.insert(Slow::new(deadline));
            let s = slow.as_mut().project();
            *s.waiter = Some(Waiter::new(Arc::clone(semaphore)));
            // The clock is read only for the wait metric or the debug event.
            if cfg!(feature = "metrics") || tracing::enabled!(tracing::Level::DEBUG) {
                *s.since = Some(Instant::now());
            }
            slow
        }
    };
    let mut s = slow.as_mut().project();
    let Some(waiter) = s.waiter.as_mut() else {
        return Poll::Ready(Err(polled_after_completion()));
    };
    if waiter.poll_acquire(cx).is_ready() {
        // The permit is ours: leave the wait list for good.
        *s.waiter = None;
        let wait = s.since.take().map_or(Duration::ZERO, |since| {
            Instant::now().saturating_duration_since(since)
        });
        debug_event!(
            wait_ms = wait.as_millis() as u64,
            "concurrency permit acquired after waiting"
        );
        return Poll::Ready(Ok(wait));
    }
    poll_sleep(s.deadline.as_ref(), ticket, s.sleep.as_mut(), cx).map(Err)
}

/// Bounds waiting for the inner service's readiness by the wait deadline.
#[cold]
#[inline(never)]
fn poll_deadline(
    slow: &mut Option<Pin<Box<Slow>>>,
    ticket: Option<&AdmissionTicket>,
    scoped: bool,
    cx: &mut TaskContext<'_>,
) -> Poll<BoxError> {
    let slow = match slow {
        Some(slow) => slow,
        None => match wait_deadline(ticket, scoped) {
            // Allocate only when there is a deadline to arm.
            Some(deadline) => slow.insert(Slow::new(Some(deadline))),
            None => return Poll::Pending,
        },
    };
    let s = slow.as_mut().project();
    poll_sleep(s.deadline.as_ref(), ticket, s.sleep, cx)
}

/// Arms the timer on first use (or fails at once if the deadline has passed)
/// and polls it. Pending forever without a deadline.
fn poll_sleep(
    deadline: Option<&WaitDeadline>,
    ticket: Option<&AdmissionTicket>,
    mut sleep: Pin<&mut Option<Sleep>>,
    cx: &mut TaskContext<'_>,
) -> Poll<BoxError> {
    let Some(deadline) = deadline else {
        return Poll::Pending;
    };
    if sleep.is_none() {
        if Instant::now() >= deadline.at() {
            return Poll::Ready(expired(ticket, deadline));
        }
        sleep.set(Some(sleep_until(deadline.at())));
    }
    match sleep.as_pin_mut() {
        Some(sleep) => sleep.poll(cx).map(|()| expired(ticket, deadline)),
        None => Poll::Pending,
    }
}

fn polled_after_completion() -> BoxError {
    "`ConcurrencyLimit` future polled after completion".into()
}
