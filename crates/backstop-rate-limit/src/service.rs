//! `RateLimit<S>`: the service.

use std::fmt;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll, Waker};

use backstop_core::{AdmissionTicket, BoxError, Context, CostOverBurst, clock};
use tokio::time::{Duration, Instant};
use tower_service::Service;

use crate::future::{Next, ResponseFuture};
use crate::gcra::Quota;
use crate::key::{CostFn, Global, KeyFn, UnitCost};
use crate::layer::Shared;
use crate::obs::{Wait, debug_event};
use crate::reservation::{Attach, Discard, Parts};
use crate::store::RateStore;
use crate::{GcraStore, future};

/// A service limited by a GCRA rate limit shared with every clone.
///
/// `poll_ready` is always ready and reserves nothing; the response future
/// waits for the reservation to conform, then drives `ready()` and `call()` on
/// its own clone of the inner service.
///
/// See the [crate docs](crate) for an example.
pub struct RateLimit<S, C = UnitCost, Kf = Global, St = GcraStore, A = Discard> {
    inner: S,
    shared: Arc<Shared<C, Kf, St>>,
    attach: A,
}

impl<S, C, Kf, St, A> RateLimit<S, C, Kf, St, A> {
    pub(crate) fn new(inner: S, shared: Arc<Shared<C, Kf, St>>, attach: A) -> Self {
        Self {
            inner,
            shared,
            attach,
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes the limiter, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// The quota enforced.
    pub fn quota(&self) -> &Quota {
        &self.shared.quota
    }

    /// The store shared with every clone and with the layer.
    pub fn store(&self) -> &Arc<St> {
        &self.shared.store
    }
}

impl<S, Req, C, Kf, St, A> Service<Req> for RateLimit<S, C, Kf, St, A>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    C: CostFn<Req>,
    Kf: KeyFn<Req, St::Key>,
    St: RateStore,
    A: Attach<S::Response, St> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, Req, St, A>;

    /// Always ready: nothing is reserved here (DESIGN contract 2).
    fn poll_ready(&mut self, _cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let cost = self.shared.cost.cost(&req);
        let burst = self.shared.quota.burst();
        if cost > burst {
            return ResponseFuture::failed(CostOverBurst::new(cost, burst).into());
        }
        // Take the admission ticket now, synchronously: this request stays
        // counted as waiting until we admit it and hand the ticket on (cost
        // 0 too: the inner limiters still have to take it).
        let ticket = AdmissionTicket::take_offered();
        debug_event!(limiter = self.shared.name, cost, "acquiring rate limit");
        let deadline = match &ticket {
            Some(ticket) => Some(ticket.deadline()),
            None => Context::with_current(Context::sla_deadline),
        };
        if cost == 0 {
            return self.admit(None, None, req, ticket);
        }
        let key = self.shared.key.key(&req);
        let store = &self.shared.store;
        // Fast path: a store that answers at once is asked here. Before any
        // inner work, so the stretch's instant will do (backstop_core::clock).
        let answer = clock::stretch(|| {
            let now = clock::now();
            let max_wait = deadline.map(|at| at.saturating_duration_since(now));
            store.reserve_now(&key, cost, max_wait).map(|d| (d, now))
        });
        let pending = future::Pending {
            store: Arc::clone(store),
            key,
            cost,
            policy: self.shared.policy,
            deadline,
            asked_at: None,
        };
        let Some((decision, asked_at)) = answer else {
            let (inner, attach, wait) = (self.take_inner(), self.attach.clone(), self.wait());
            return ResponseFuture::reserving(pending, inner, req, context(), ticket, attach, wait);
        };
        match future::decide(decision, pending, asked_at, self.shared.name) {
            Next::Ready(parts) => self.admit(parts, None, req, ticket),
            Next::Wait(parts, due, after) => {
                self.admit(Some(parts), Some((due, after)), req, ticket)
            }
            // The ticket is dropped here: the request leaves admission.
            Next::Fail(err) => ResponseFuture::failed(err),
        }
    }
}

impl<S, C, Kf, St, A> RateLimit<S, C, Kf, St, A>
where
    St: RateStore,
    A: Clone,
{
    /// The service that was here, for a future to drive; a clone takes its
    /// place (tower's `Buffer`/`Retry` idiom).
    fn take_inner(&mut self) -> S
    where
        S: Clone,
    {
        let clone = self.inner.clone();
        std::mem::replace(&mut self.inner, clone)
    }

    /// The wait's observer, for a future that may wait.
    fn wait(&self) -> Wait {
        Wait::new(self.shared.metrics.clone(), self.shared.name)
    }

    /// Admitted, with `reserved` (if anything was): at `due` (if set, a wait
    /// of `after`), and once the inner service is ready. When there is
    /// nothing to wait for and the inner service is ready now (asked with a
    /// waker that does nothing: if it is not, the future asks again with its
    /// own), it is called here, in the caller's scope.
    fn admit<Req>(
        &mut self,
        reserved: Option<Parts<St>>,
        due: Option<(Instant, Duration)>,
        req: Req,
        ticket: Option<AdmissionTicket>,
    ) -> ResponseFuture<S, Req, St, A>
    where
        S: Service<Req> + Clone,
        S::Error: Into<BoxError>,
    {
        if due.is_none() {
            let mut noop = TaskContext::from_waker(Waker::noop());
            match self.inner.poll_ready(&mut noop) {
                Poll::Ready(Ok(())) => {
                    // The ticket goes on to the limiters inside; if none
                    // takes it the request leaves admission now. The cost is
                    // spent.
                    let fut = AdmissionTicket::offer_if_any(ticket, || self.inner.call(req));
                    self.shared.metrics.admitted(0.0);
                    return ResponseFuture::called(fut, reserved, self.attach.clone());
                }
                Poll::Ready(Err(err)) => {
                    // Not called: the reservation goes back, the ticket is
                    // dropped.
                    if let Some(parts) = reserved {
                        parts.cancel();
                    }
                    return ResponseFuture::failed(err.into());
                }
                Poll::Pending => {}
            }
        }
        let mut wait = self.wait();
        if let Some((_, after)) = due {
            wait.sleeping(after);
        }
        let (inner, attach) = (self.take_inner(), self.attach.clone());
        let due = due.map(|(at, _)| at);
        ResponseFuture::admitted(reserved, due, inner, req, context(), ticket, attach, wait)
    }
}

/// The context a waiting future scopes the inner service's `ready()` and
/// `call()` in: the caller's, if it carries anything. Cloned only for a
/// future that waits.
fn context() -> Option<Context> {
    Context::try_current().filter(|ctx| !ctx.is_empty())
}

/// Clones share the limiter (the store and settings sit behind `Arc`s); only
/// the inner service is cloned.
impl<S: Clone, C, Kf, St, A: Clone> Clone for RateLimit<S, C, Kf, St, A> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
            attach: self.attach.clone(),
        }
    }
}

impl<S: fmt::Debug, C, Kf, St: fmt::Debug, A> fmt::Debug for RateLimit<S, C, Kf, St, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .field("name", &self.shared.name)
            .field("quota", &self.shared.quota)
            .field("store", &self.shared.store)
            .finish_non_exhaustive()
    }
}
