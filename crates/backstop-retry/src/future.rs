//! Response futures.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context as TaskContext, Poll, Waker, ready};

use backstop_core::{Attempt, Context, Scoped};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep, sleep_until};
use tower_service::Service;

use crate::backoff::backoff;
use crate::budget::Withdrawal;
use crate::layer::Shared;
use crate::obs::debug_event;
use crate::policy::{Action, Policy};

#[cfg(feature = "http")]
pub use crate::http::{HttpResponseFuture, InspectFuture};

pin_project! {
    /// Response future of [`Retry`](crate::Retry): runs the attempts.
    ///
    /// # Cancellation
    ///
    /// Dropping it at any point is safe and leaves nothing behind:
    /// - during an attempt (waiting for readiness or for the inner future):
    ///   the inner future is dropped inside the attempt's context scope, so
    ///   the inner layers release their queue slots, tokens and permits as
    ///   their own futures document; the budget withdrawal of that retry is
    ///   already spent (the attempt ran);
    /// - during a backoff sleep: the retry's budget withdrawal is refunded
    ///   (into the window slot it was taken from, unless that slot has
    ///   expired, in which case it no longer counts anyway), and the kept
    ///   previous outcome is dropped. Nothing is held across a backoff but that
    ///   outcome (for HTTP, a 5xx keeps its head only).
    pub struct ResponseFuture<P, S, Req>
    where
        S: Service<Req>,
    {
        #[pin]
        state: State<S::Future, Req, S::Error>,
        // The budget and counters, and the copy of the inner service that a
        // retry clones from: one `Arc` for the two.
        source: Source<S>,
        ctx: Context,
        policy: P,
        // The service the next attempt is called on: the future's own
        // clone. `None` when the first attempt was called in `call()`; a
        // retry then clones one from `source`.
        svc: Option<S>,
        // The copy to replay, if the policy could make one.
        template: Option<Req>,
        // The previous attempt's outcome, kept while the next one runs
        // (boxed: only a retried request has one, and the future stays
        // small for the layers that move it).
        last: Option<Box<Result<S::Response, S::Error>>>,
        attempt: u32,
        withdrawal: Option<Withdrawal>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, Req, E> {
        // About to call the inner service with this request (here, not in
        // a field of its own: it shares space with the attempt's future).
        Ready { next: Option<Req> },
        // The first attempt's readiness failed in `call()`: its outcome,
        // for the policy to judge on the first poll.
        Failed { err: Option<E> },
        Calling { #[pin] fut: Scoped<F> },
        // Boxed for the same reason as `last`.
        Backoff { sleep: Pin<Box<Sleep>> },
        Done,
    }
}

/// A retry service's inner service, shared by its clones and by the futures
/// they made: what a retry clones its own service from.
///
/// Each request used to clone the inner service into its future, so that
/// every attempt could be called from the future: for a stack of layers, a
/// few dozen `Arc` counts up and down per request, on counts every thread
/// shares. Now the first attempt is called in `call()` on the caller's own
/// service (when it is ready at once, which a stack of backstop layers is
/// whenever its upstream is), and a future clones a service from here only
/// when it actually retries.
///
/// It also holds the layer's shared state, so that a future holds one `Arc`
/// for both.
pub(crate) struct Source<S>(Arc<SourceInner<S>>);

struct SourceInner<S> {
    shared: Arc<Shared>,
    svc: Mutex<S>,
}

impl<S> Source<S> {
    pub(crate) fn new(svc: S, shared: Arc<Shared>) -> Self {
        Self(Arc::new(SourceInner {
            shared,
            svc: Mutex::new(svc),
        }))
    }

    /// The layer's budget, counters and settings.
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.0.shared
    }

    /// A clone of the service, for a future's attempts.
    fn clone_service(&self) -> S
    where
        S: Clone,
    {
        // Held only to clone: no panic can leave it half-changed.
        self.0
            .svc
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl<S> Clone for Source<S> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<P, S, Req> ResponseFuture<P, S, Req>
where
    P: Policy<Req, S::Response, S::Error>,
    S: Service<Req> + Clone,
{
    /// Starts a request on `svc` (the retry service's own inner service):
    /// the first attempt is called now, inside its attempt scope, if `svc`
    /// is ready at once; if it is not, the future takes `svc` and drives
    /// its readiness (a clone takes its place); if it failed, the error is
    /// the first attempt's outcome.
    pub(crate) fn start(
        req: Req,
        svc: &mut S,
        source: &Source<S>,
        policy: P,
        ctx: Context,
    ) -> Self {
        let template = if source.shared().config.max_attempts > 1 {
            policy.clone_request(&req)
        } else {
            None
        };
        let actx = ctx.clone().with_attempt(Attempt(1));
        let mut noop = TaskContext::from_waker(Waker::noop());
        // One scope around readiness and the call, as for later attempts.
        let called = actx.sync_scope_in_place(|| match svc.poll_ready(&mut noop) {
            Poll::Ready(Ok(())) => Ok(Ok(svc.call(req))),
            Poll::Ready(Err(e)) => Ok(Err(e)),
            // Not ready: the future asks again, with a waker that wakes it.
            Poll::Pending => Err(req),
        });
        let (state, svc) = match called {
            Ok(Ok(fut)) => (
                State::Calling {
                    fut: actx.scope(fut),
                },
                None,
            ),
            Ok(Err(e)) => {
                // The first attempt failed before its call: the policy
                // judges the error as it would a failed call. An instance
                // that failed readiness is not asked again (tower's
                // contract): a clone of the pristine copy takes its place,
                // and a retry clones its own.
                *svc = source.clone_service();
                (State::Failed { err: Some(e) }, None)
            }
            Err(req) => {
                // The future takes the instance that was asked (a service
                // may have queued for capacity in `poll_ready`: its place
                // in that queue goes with it), and a clone takes its place
                // (tower's `Buffer` and `Retry` idiom).
                let fresh = svc.clone();
                let asked = std::mem::replace(svc, fresh);
                (State::Ready { next: Some(req) }, Some(asked))
            }
        };
        Self {
            state,
            source: source.clone(),
            ctx,
            policy,
            svc,
            template,
            last: None,
            attempt: 1,
            withdrawal: None,
        }
    }
}

impl<P, S, Req> Future for ResponseFuture<P, S, Req>
where
    P: Policy<Req, S::Response, S::Error>,
    S: Service<Req> + Clone,
{
    type Output = Result<S::Response, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            let outcome = match this.state.as_mut().project() {
                StateProj::Ready { next } => {
                    let actx = this.ctx.clone().with_attempt(Attempt(*this.attempt));
                    let svc = this.svc.get_or_insert_with(|| this.source.clone_service());
                    // One scope around readiness and the call.
                    let called = actx.sync_scope_in_place(|| match svc.poll_ready(cx) {
                        Poll::Pending => None,
                        Poll::Ready(Err(e)) => Some(Err(e)),
                        Poll::Ready(Ok(())) => Some(Ok(next.take().map(|req| svc.call(req)))),
                    });
                    match called {
                        None => return Poll::Pending,
                        Some(Err(e)) => {
                            // Not asked again: a retry clones a fresh one.
                            *this.svc = None;
                            Err(e)
                        }
                        Some(Ok(called)) => {
                            // `next` is set before each Ready: never `None`.
                            this.state
                                .set(called.map_or(State::Done, |fut| State::Calling {
                                    fut: actx.scope(fut),
                                }));
                            continue;
                        }
                    }
                }
                // Taken once: the state changes before the next poll.
                StateProj::Failed { err } => Err(err.take().expect("polled after completion")),
                StateProj::Calling { fut } => ready!(fut.poll(cx)),
                StateProj::Backoff { sleep } => {
                    ready!(sleep.as_mut().poll(cx));
                    if let Some(w) = this.withdrawal.take() {
                        w.commit();
                    }
                    *this.attempt += 1;
                    let shared = this.source.shared();
                    shared.retries.fetch_add(1, Ordering::Relaxed);
                    shared.metrics.retry();
                    debug_event!(this.ctx, attempt = *this.attempt, "retry started");
                    // The last attempt takes the copy itself.
                    let next = match &mut *this.template {
                        t if *this.attempt >= shared.config.max_attempts => t.take(),
                        t => t.as_ref().and_then(|t| this.policy.clone_request(t)),
                    };
                    if next.is_none() {
                        // The policy could not copy the request this time:
                        // the previous outcome stands.
                        if let Some(out) = this.last.take() {
                            this.state.set(State::Done);
                            return Poll::Ready(*out);
                        }
                    }
                    this.state.set(State::Ready { next });
                    continue;
                }
                StateProj::Done => panic!("retry ResponseFuture polled after completion"),
            };

            // An attempt finished: decide.
            let action = this.policy.decide(&outcome);
            let wait = match action {
                Action::Retry | Action::RetryAfter(_) => retry_wait(
                    this.source.shared(),
                    this.ctx,
                    *this.attempt,
                    action,
                    this.template.is_some(),
                ),
                _ => None,
            };
            let Some((now, wait)) = wait else {
                this.state.set(State::Done);
                let out = if action == Action::Refused {
                    this.last.take().map_or(outcome, |last| *last)
                } else {
                    outcome
                };
                *this.last = None;
                return Poll::Ready(out);
            };
            let shared = this.source.shared();
            let Some(withdrawal) = shared.budget.withdraw(shared, now) else {
                shared.budget_exhausted.fetch_add(1, Ordering::Relaxed);
                shared.metrics.budget_exhausted();
                debug_event!(
                    this.ctx,
                    attempt = *this.attempt,
                    "retry refused: budget exhausted"
                );
                this.state.set(State::Done);
                *this.last = None;
                return Poll::Ready(outcome);
            };
            *this.withdrawal = Some(withdrawal);
            debug_event!(
                this.ctx,
                attempt = *this.attempt,
                backoff_ms = wait.as_millis() as u64,
                "attempt failed, retrying after backoff"
            );
            *this.last = Some(Box::new(this.policy.retain(outcome)));
            this.state.set(State::Backoff {
                sleep: Box::pin(sleep_until(now + wait)),
            });
        }
    }
}

/// The wait before the next retry, or `None` when there is none: attempts
/// spent, nothing to replay, an upstream wait over `retry_after_max`, or a
/// retry that would start later than the SLA deadline minus
/// `min_attempt_time`.
fn retry_wait(
    shared: &Shared,
    ctx: &Context,
    attempt: u32,
    action: Action,
    replayable: bool,
) -> Option<(Instant, tokio::time::Duration)> {
    let cfg = &shared.config;
    if !replayable || attempt >= cfg.max_attempts {
        return None;
    }
    let wait = match action {
        Action::RetryAfter(d) if d <= cfg.retry_after_max => d,
        Action::RetryAfter(_) => return None,
        _ => backoff(
            cfg.backoff_base,
            cfg.backoff_max,
            cfg.jitter,
            attempt,
            shared.rng.next_u64(),
        ),
    };
    let now = Instant::now();
    if let Some(sla) = ctx.sla_deadline() {
        let start_by = sla.checked_sub(cfg.min_attempt_time)?;
        if now.checked_add(wait)? > start_by {
            return None;
        }
    }
    Some((now, wait))
}

impl<P, S, Req> fmt::Debug for ResponseFuture<P, S, Req>
where
    S: Service<Req>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Ready { .. } => "ready",
            State::Failed { .. } => "failed",
            State::Calling { .. } => "calling",
            State::Backoff { .. } => "backoff",
            State::Done => "done",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .field("attempt", &self.attempt)
            .field("withdrawal", &self.withdrawal)
            .finish_non_exhaustive()
    }
}
