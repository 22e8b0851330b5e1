//! The response future of [`RateLimit`](crate::RateLimit).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll, ready};

use backstop_core::{AdmissionTicket, BoxError, Context, OverloadReason, Overloaded, clock, find};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep, sleep_until};
use tower_service::Service;

use crate::obs::Wait;
use crate::reservation::{Attach, CancelOnDrop, Parts, Reservation};
use crate::store::{Decision, RateStore, StoreErrorPolicy};

/// What a request asks of the store, before the store answers.
pub(crate) struct Pending<St: RateStore> {
    pub(crate) store: Arc<St>,
    pub(crate) key: St::Key,
    pub(crate) cost: u64,
    pub(crate) policy: StoreErrorPolicy,
    /// The wait deadline: `reserve` is asked to admit no later.
    pub(crate) deadline: Option<Instant>,
    /// When the store was asked: its answer counts from then.
    pub(crate) asked_at: Option<Instant>,
}

pin_project! {
    /// Response future of [`RateLimit`](crate::RateLimit): asks the store,
    /// waits until the reservation conforms, then drives `ready()` and
    /// `call()` on its own clone of the inner service.
    ///
    /// # Cancellation
    ///
    /// - Dropped before its first poll: nothing was reserved (the store is
    ///   asked on the first poll); the admission ticket is dropped (its queue slot freed).
    /// - Dropped while the store answers, or while waiting for the
    ///   reservation to conform: the reservation is given back
    ///   ([`RateStore::cancel`]) and the admission ticket is dropped (its queue slot freed).
    /// - Dropped while the inner service is not ready: the same.
    /// - Dropped after the inner `call()`: the cost is spent; nothing else
    ///   is held (the admission ticket was handed on, or dropped, at the inner
    ///   `call()`).
    pub struct ResponseFuture<S, Req, St, A>
    where
        S: Service<Req>,
        St: RateStore,
    {
        #[pin]
        state: State<St::ReserveFuture, S::Future>,
        inner: Option<S>,
        req: Option<Req>,
        ctx: Option<Context>,
        ticket: Option<AdmissionTicket>,
        pending: Option<Pending<St>>,
        reserved: CancelOnDrop<St>,
        spent: Option<Parts<St>>,
        attach: Option<A>,
        wait: Option<Wait>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<R, F> {
        Start,
        Reserving { #[pin] fut: R },
        // Boxed: only a request that must wait pays for the timer, and the
        // future stays small on the path that does not.
        Waiting { sleep: Pin<Box<Sleep>> },
        Ready,
        Calling { #[pin] fut: F },
        Failed { err: Option<BoxError> },
        Done,
    }
}

impl<S, Req, St, A> ResponseFuture<S, Req, St, A>
where
    S: Service<Req>,
    St: RateStore,
{
    pub(crate) fn failed(err: BoxError) -> Self {
        Self {
            state: State::Failed { err: Some(err) },
            inner: None,
            req: None,
            ctx: None,
            ticket: None,
            pending: None,
            reserved: CancelOnDrop(None),
            spent: None,
            attach: None,
            wait: None,
        }
    }

    pub(crate) fn bypass(
        inner: S,
        req: Req,
        ctx: Option<Context>,
        ticket: Option<AdmissionTicket>,
        attach: A,
        wait: Wait,
    ) -> Self {
        Self {
            state: State::Ready,
            inner: Some(inner),
            req: Some(req),
            ctx,
            ticket,
            pending: None,
            reserved: CancelOnDrop(None),
            spent: None,
            attach: Some(attach),
            wait: Some(wait),
        }
    }

    pub(crate) fn reserving(
        pending: Pending<St>,
        inner: S,
        req: Req,
        ctx: Option<Context>,
        ticket: Option<AdmissionTicket>,
        attach: A,
        wait: Wait,
    ) -> Self {
        Self {
            state: State::Start,
            inner: Some(inner),
            req: Some(req),
            ctx,
            ticket,
            pending: Some(pending),
            reserved: CancelOnDrop(None),
            spent: None,
            attach: Some(attach),
            wait: Some(wait),
        }
    }
}

impl<S, Req, St, A> Future for ResponseFuture<S, Req, St, A>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    St: RateStore,
    A: Attach<S::Response, St>,
{
    type Output = Result<S::Response, BoxError>;

    // One state machine reads best in one place.
    #[allow(clippy::too_many_lines)]
    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Start => {
                    // Asked on the first poll, so that a future dropped
                    // unpolled never reserved anything.
                    let Some(p) = this.pending.as_mut() else {
                        panic!("rate limit future polled after completion");
                    };
                    // Before any inner work: the stretch's instant will do,
                    // and an in-process store's own clock read (made in
                    // `reserve`) shares it (backstop_core::clock).
                    let fut = clock::stretch(|| {
                        let now = clock::now();
                        p.asked_at = Some(now);
                        let max_wait = p.deadline.map(|at| at.saturating_duration_since(now));
                        p.store.reserve(&p.key, p.cost, max_wait)
                    });
                    this.state.set(State::Reserving { fut });
                }
                StateProj::Reserving { fut } => {
                    let decision = ready!(fut.poll(cx));
                    let Some(pending) = this.pending.take() else {
                        panic!("reservation polled after completion");
                    };
                    match decision {
                        Ok(Decision::Admit { after, receipt }) => {
                            let parts = Parts {
                                store: pending.store,
                                key: pending.key,
                                cost: pending.cost,
                                receipt,
                            };
                            if after.is_zero() {
                                this.reserved.0 = Some(parts);
                                this.state.set(State::Ready);
                                continue;
                            }
                            let due = pending.asked_at.unwrap_or_else(Instant::now) + after;
                            if pending.deadline.is_some_and(|at| due > at) {
                                // A store that admitted past the deadline
                                // (a remote clock, say): never sleep to fail.
                                if let Some(wait) = this.wait.as_ref() {
                                    wait.refused(after);
                                }
                                parts.cancel();
                                this.state.set(State::Done);
                                *this.ticket = None;
                                let err = Overloaded::new(OverloadReason::RateLimited, after);
                                return Poll::Ready(Err(err.into()));
                            }
                            this.reserved.0 = Some(parts);
                            if let Some(wait) = this.wait.as_mut() {
                                wait.sleeping(after);
                            }
                            this.state.set(State::Waiting {
                                sleep: Box::pin(sleep_until(due)),
                            });
                        }
                        Ok(Decision::Reject { retry_after }) => {
                            if let Some(wait) = this.wait.as_ref() {
                                wait.refused(retry_after);
                            }
                            this.state.set(State::Done);
                            *this.ticket = None;
                            let err = Overloaded::new(OverloadReason::RateLimited, retry_after);
                            return Poll::Ready(Err(err.into()));
                        }
                        Err(err) => match pending.policy {
                            StoreErrorPolicy::FailOpen => this.state.set(State::Ready),
                            StoreErrorPolicy::FailClosed => {
                                this.state.set(State::Done);
                                *this.ticket = None;
                                return Poll::Ready(Err(err.into()));
                            }
                        },
                    }
                }
                StateProj::Waiting { sleep } => {
                    ready!(sleep.as_mut().poll(cx));
                    this.state.set(State::Ready);
                }
                StateProj::Ready => {
                    let (Some(inner), Some(_)) = (this.inner.as_mut(), this.req.as_ref()) else {
                        panic!("rate limit future polled after completion");
                    };
                    let ready = scoped(this.ctx.as_ref(), || inner.poll_ready(cx));
                    if let Err(err) = ready!(ready) {
                        // Not called: the reservation goes back on drop.
                        this.state.set(State::Done);
                        *this.ticket = None;
                        if let Some(parts) = this.reserved.0.take() {
                            parts.cancel();
                        }
                        return Poll::Ready(Err(err.into()));
                    }
                    let req = this.req.take().expect("checked above");
                    // Admitted: the ticket goes on to the limiters inside;
                    // if none takes it the request leaves admission now. The
                    // cost is spent.
                    let ticket = this.ticket.take();
                    let fut = scoped(this.ctx.as_ref(), || {
                        AdmissionTicket::offer_if_any(ticket, || inner.call(req))
                    });
                    *this.inner = None;
                    if let Some(wait) = this.wait.take() {
                        wait.admitted();
                    }
                    *this.spent = this.reserved.0.take();
                    this.state.set(State::Calling { fut });
                }
                StateProj::Calling { fut } => {
                    let out = ready!(fut.poll(cx));
                    this.state.set(State::Done);
                    return Poll::Ready(match out {
                        Ok(mut response) => {
                            if let (Some(parts), Some(attach)) = (this.spent.take(), this.attach) {
                                attach.attach(&mut response, || Reservation::new(parts));
                            }
                            Ok(response)
                        }
                        Err(err) => {
                            let err: BoxError = err.into();
                            let refund = this.attach.as_ref().is_some_and(Attach::refund_on_error);
                            if refund || find::<Overloaded>(&*err).is_some() {
                                // The upstream turned it away, or no response
                                // will ever settle it: give it back.
                                if let Some(parts) = this.spent.take() {
                                    parts.cancel();
                                }
                            }
                            Err(err)
                        }
                    });
                }
                StateProj::Failed { err } => {
                    let err = err.take();
                    this.state.set(State::Done);
                    if let Some(err) = err {
                        return Poll::Ready(Err(err));
                    }
                }
                StateProj::Done => panic!("rate limit future polled after completion"),
            }
        }
    }
}

/// Runs `f` in the captured context, if there is one. Outer layers already
/// scope our polls (DESIGN contract 4); this keeps the inner service's view
/// right even when this future is polled elsewhere.
fn scoped<R>(ctx: Option<&Context>, f: impl FnOnce() -> R) -> R {
    match ctx {
        // No clone and no new scope when it is already current.
        Some(ctx) => ctx.rescope(f),
        None => f(),
    }
}

impl<S, Req, St, A> fmt::Debug for ResponseFuture<S, Req, St, A>
where
    S: Service<Req>,
    St: RateStore,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Start => "start",
            State::Reserving { .. } => "reserving",
            State::Waiting { .. } => "waiting",
            State::Ready => "ready",
            State::Calling { .. } => "calling",
            State::Failed { .. } => "failed",
            State::Done => "done",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .field("holds_admission", &self.ticket.is_some())
            .field("reserved", &self.reserved.0.as_ref().map(|p| p.cost))
            .finish_non_exhaustive()
    }
}
