//! The response future of [`RateLimit`](crate::RateLimit).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll, ready};

use backstop_core::{AdmissionTicket, BoxError, Context, OverloadReason, Overloaded, clock, find};
use pin_project_lite::pin_project;
use tokio::time::{Duration, Instant, Sleep, sleep_until};
use tower_service::Service;

use crate::obs::{self, Wait};
use crate::reservation::{Attach, CancelOnDrop, Parts, Reservation};
use crate::store::{Decision, RateStore, StoreError, StoreErrorPolicy};

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
    /// Response future of [`RateLimit`](crate::RateLimit).
    ///
    /// When the store answers at once (the in-process stores), the
    /// reservation conforms now and the inner service is ready, `call()`
    /// already called the inner service: the future then holds only the
    /// inner future and the reservation to settle. Otherwise it is the
    /// waiting machine, boxed (so a request that does not wait carries none
    /// of it): it asks the store, waits until the reservation conforms, then
    /// drives `ready()` and `call()` on its own clone of the inner service.
    ///
    /// # Cancellation
    ///
    /// - Dropped before the store was asked (a store that answers with a
    ///   future is asked on the first poll): nothing was reserved; the
    ///   admission ticket is dropped (its queue slot freed).
    /// - Dropped while the store answers, while waiting for the reservation
    ///   to conform, or while the inner service is not ready: the
    ///   reservation is given back ([`RateStore::cancel`]) and the admission
    ///   ticket is dropped (its queue slot freed).
    /// - Dropped after the inner `call()` (which may have been made in
    ///   `call()` itself): the cost is spent; nothing else is held (the
    ///   admission ticket was handed on, or dropped, at the inner `call()`).
    pub struct ResponseFuture<S, Req, St, A>
    where
        S: Service<Req>,
        St: RateStore,
    {
        #[pin]
        state: Outer<S, Req, St, A>,
    }
}

pin_project! {
    #[project = OuterProj]
    enum Outer<S, Req, St, A>
    where
        S: Service<Req>,
        St: RateStore,
    {
        // Admitted and called in `call()`.
        Called {
            #[pin]
            fut: S::Future,
            spent: Option<Parts<St>>,
            attach: Option<A>,
        },
        // Everything else.
        Slow { machine: Pin<Box<Machine<S, Req, St, A>>> },
        Failed { err: Option<BoxError> },
        Done,
    }
}

pin_project! {
    // The waiting machine: asks the store (unless `call()` did), waits until
    // the reservation conforms, then drives `ready()` and `call()` on its
    // own clone of the inner service.
    struct Machine<S, Req, St, A>
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
        // The timer is made on the first poll (`call()` may run outside a
        // runtime), and boxed: only a request that must wait pays for it.
        Waiting { due: Instant, sleep: Option<Pin<Box<Sleep>>> },
        Ready,
        Calling { #[pin] fut: F },
        Done,
    }
}

/// What a store's decision leads to.
pub(crate) enum Next<St: RateStore> {
    /// Conforms now (with the reservation, or without one: fail-open).
    Ready(Option<Parts<St>>),
    /// Conforms at `due`.
    Wait(Parts<St>, Instant, Duration),
    /// Refused, or the store failed closed.
    Fail(BoxError),
}

/// Turns the store's answer to `pending`, asked at `asked_at`, into what
/// happens next; a refusal is logged as `limiter`'s.
pub(crate) fn decide<St: RateStore>(
    decision: Result<Decision, StoreError>,
    pending: Pending<St>,
    asked_at: Instant,
    limiter: &'static str,
) -> Next<St> {
    match decision {
        Ok(Decision::Admit { after, receipt }) => {
            let parts = Parts {
                store: pending.store,
                key: pending.key,
                cost: pending.cost,
                receipt,
            };
            if after.is_zero() {
                return Next::Ready(Some(parts));
            }
            let due = asked_at + after;
            if pending.deadline.is_some_and(|at| due > at) {
                // A store that admitted past the deadline (a remote clock,
                // say): never sleep to fail.
                obs::refused(limiter, after);
                parts.cancel();
                return Next::Fail(Overloaded::new(OverloadReason::RateLimited, after).into());
            }
            Next::Wait(parts, due, after)
        }
        Ok(Decision::Reject { retry_after }) => {
            obs::refused(limiter, retry_after);
            Next::Fail(Overloaded::new(OverloadReason::RateLimited, retry_after).into())
        }
        Err(err) => match pending.policy {
            StoreErrorPolicy::FailOpen => Next::Ready(None),
            StoreErrorPolicy::FailClosed => Next::Fail(err.into()),
        },
    }
}

impl<S, Req, St, A> ResponseFuture<S, Req, St, A>
where
    S: Service<Req>,
    St: RateStore,
{
    #[cold]
    pub(crate) fn failed(err: BoxError) -> Self {
        Self {
            state: Outer::Failed { err: Some(err) },
        }
    }

    /// Admitted and called in `call()`.
    pub(crate) fn called(fut: S::Future, spent: Option<Parts<St>>, attach: A) -> Self {
        Self {
            state: Outer::Called {
                fut,
                spent,
                attach: Some(attach),
            },
        }
    }

    /// The store is still to be asked (it answers with a future).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn reserving(
        pending: Pending<St>,
        inner: S,
        req: Req,
        ctx: Option<Context>,
        ticket: Option<AdmissionTicket>,
        attach: A,
        wait: Wait,
    ) -> Self {
        Self::slow(
            State::Start,
            Some(pending),
            None,
            inner,
            req,
            ctx,
            ticket,
            attach,
            wait,
        )
    }

    /// Admitted (with `reserved`, if anything was reserved), once `sleep`
    /// (if any) fires and the inner service is ready.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn admitted(
        reserved: Option<Parts<St>>,
        sleep: Option<Instant>,
        inner: S,
        req: Req,
        ctx: Option<Context>,
        ticket: Option<AdmissionTicket>,
        attach: A,
        wait: Wait,
    ) -> Self {
        let state = match sleep {
            Some(due) => State::Waiting { due, sleep: None },
            None => State::Ready,
        };
        Self::slow(state, None, reserved, inner, req, ctx, ticket, attach, wait)
    }

    #[allow(clippy::too_many_arguments)]
    fn slow(
        state: State<St::ReserveFuture, S::Future>,
        pending: Option<Pending<St>>,
        reserved: Option<Parts<St>>,
        inner: S,
        req: Req,
        ctx: Option<Context>,
        ticket: Option<AdmissionTicket>,
        attach: A,
        wait: Wait,
    ) -> Self {
        Self {
            state: Outer::Slow {
                machine: Box::pin(Machine {
                    state,
                    inner: Some(inner),
                    req: Some(req),
                    ctx,
                    ticket,
                    pending,
                    reserved: CancelOnDrop(reserved),
                    spent: None,
                    attach: Some(attach),
                    wait: Some(wait),
                }),
            },
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

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let out = match this.state.as_mut().project() {
            OuterProj::Called { fut, spent, attach } => {
                let out = ready!(fut.poll(cx));
                finish(out, spent.take(), attach.as_ref())
            }
            OuterProj::Slow { machine } => ready!(machine.as_mut().poll(cx)),
            OuterProj::Failed { err } => match err.take() {
                Some(err) => Err(err),
                None => panic!("rate limit future polled after completion"),
            },
            OuterProj::Done => panic!("rate limit future polled after completion"),
        };
        this.state.set(Outer::Done);
        Poll::Ready(out)
    }
}

/// The inner service's answer: a response carries its reservation (when
/// asked to); an error that says the upstream turned the request away, or
/// any error when no response will ever settle it, gives the cost back.
fn finish<R, E, St, A>(
    out: Result<R, E>,
    spent: Option<Parts<St>>,
    attach: Option<&A>,
) -> Result<R, BoxError>
where
    E: Into<BoxError>,
    St: RateStore,
    A: Attach<R, St>,
{
    match out {
        Ok(mut response) => {
            if let (Some(parts), Some(attach)) = (spent, attach) {
                attach.attach(&mut response, || Reservation::new(parts));
            }
            Ok(response)
        }
        Err(err) => {
            let err: BoxError = err.into();
            let refund = attach.is_some_and(Attach::refund_on_error);
            if refund || find::<Overloaded>(&*err).is_some() {
                if let Some(parts) = spent {
                    parts.cancel();
                }
            }
            Err(err)
        }
    }
}

impl<S, Req, St, A> Future for Machine<S, Req, St, A>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    St: RateStore,
    A: Attach<S::Response, St>,
{
    type Output = Result<S::Response, BoxError>;

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
                    let asked_at = pending.asked_at.unwrap_or_else(Instant::now);
                    let Some(wait) = this.wait.as_mut() else {
                        panic!("reservation polled after completion");
                    };
                    match decide(decision, pending, asked_at, wait.limiter()) {
                        Next::Ready(parts) => {
                            this.reserved.0 = parts;
                            this.state.set(State::Ready);
                        }
                        Next::Wait(parts, due, after) => {
                            this.reserved.0 = Some(parts);
                            wait.sleeping(after);
                            this.state.set(State::Waiting { due, sleep: None });
                        }
                        Next::Fail(err) => {
                            this.state.set(State::Done);
                            *this.ticket = None;
                            return Poll::Ready(Err(err));
                        }
                    }
                }
                StateProj::Waiting { due, sleep } => {
                    let due = *due;
                    let sleep = sleep.get_or_insert_with(|| Box::pin(sleep_until(due)));
                    ready!(sleep.as_mut().poll(cx));
                    this.state.set(State::Ready);
                }
                StateProj::Ready => {
                    let (Some(inner), Some(_)) = (this.inner.as_mut(), this.req.as_ref()) else {
                        panic!("rate limit future polled after completion");
                    };
                    let ready = scoped(this.ctx.as_ref(), || inner.poll_ready(cx));
                    if let Err(err) = ready!(ready) {
                        // Not called: the reservation goes back.
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
                    return Poll::Ready(finish(out, this.spent.take(), this.attach.as_ref()));
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
        // No clone: the captured context is scoped by reference.
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
        let mut d = f.debug_struct("ResponseFuture");
        match &self.state {
            Outer::Called { spent, .. } => d
                .field("state", &"calling")
                .field("holds_admission", &false)
                .field("reserved", &spent.as_ref().map(|p| p.cost)),
            Outer::Slow { machine } => {
                let state = match &machine.state {
                    State::Start => "start",
                    State::Reserving { .. } => "reserving",
                    State::Waiting { .. } => "waiting",
                    State::Ready => "ready",
                    State::Calling { .. } => "calling",
                    State::Done => "done",
                };
                let reserved = machine.reserved.0.as_ref().or(machine.spent.as_ref());
                d.field("state", &state)
                    .field("holds_admission", &machine.ticket.is_some())
                    .field("reserved", &reserved.map(|p| p.cost))
            }
            Outer::Failed { .. } => d.field("state", &"failed"),
            Outer::Done => d.field("state", &"done"),
        };
        d.finish_non_exhaustive()
    }
}
