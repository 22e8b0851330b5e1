//! `Retry`: the service.

use std::fmt;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use backstop_core::{Context, clock};
use tower_service::Service;

use crate::future::{ResponseFuture, Source};
use crate::layer::{RetryStats, Shared};
use crate::policy::Policy;

/// Retries a service's failed attempts per a [`Policy`], with backoff and
/// jitter, paid from a shared budget, within the request's SLA deadline.
///
/// `poll_ready` is always ready and reserves nothing. `call()` calls the
/// first attempt on the inner service when it is ready at once; otherwise
/// the response future takes that instance and drives `ready()` and
/// `call()` on it, and every retry does so on a clone of the inner service
/// of its own (so `S: Clone`).
///
/// See the [crate docs](crate) for an example.
pub struct Retry<P, S> {
    inner: S,
    policy: P,
    // With the layer's shared state: one `Arc` to clone.
    source: Source<S>,
}

impl<P, S> Retry<P, S> {
    pub(crate) fn new(inner: S, policy: P, shared: Arc<Shared>) -> Self
    where
        S: Clone,
    {
        Self {
            source: Source::new(inner.clone(), shared),
            inner,
            policy,
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    ///
    /// A change made through it reaches the first attempt of later
    /// requests only: retries clone the copy taken when the layer was
    /// applied.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, consuming this one.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// The counters of the layer that built this service.
    pub fn stats(&self) -> RetryStats {
        RetryStats::from_shared(self.source.shared())
    }
}

impl<P: Clone, S: Clone> Clone for Retry<P, S> {
    /// Shares the budget and counters with the original.
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            policy: self.policy.clone(),
            source: self.source.clone(),
        }
    }
}

impl<P, S, Req> Service<Req> for Retry<P, S>
where
    P: Policy<Req, S::Response, S::Error> + Clone,
    S: Service<Req> + Clone,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<P, S, Req>;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        // Contract 2: nothing reserved here; `call()` asks the inner service.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        self.source.shared().budget.deposit(clock::now());
        ResponseFuture::start(
            req,
            &mut self.inner,
            &self.source,
            self.policy.clone(),
            Context::current(),
        )
    }
}

impl<P: fmt::Debug, S: fmt::Debug> fmt::Debug for Retry<P, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retry")
            .field("inner", &self.inner)
            .field("policy", &self.policy)
            .field("shared", &**self.source.shared())
            // `source` is a copy of `inner`, for retries.
            .finish_non_exhaustive()
    }
}
