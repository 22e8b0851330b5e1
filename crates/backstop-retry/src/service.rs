//! `Retry`: the service.

use std::fmt;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use backstop_core::{Context, clock};
use tower_service::Service;

use crate::future::ResponseFuture;
use crate::layer::{RetryStats, Shared};
use crate::policy::Policy;

/// Retries a service's failed attempts per a [`Policy`], with backoff and
/// jitter, paid from a shared budget, within the request's SLA deadline.
///
/// `poll_ready` is always ready and reserves nothing; the response future
/// drives `ready()` and `call()` on its own clone of the inner service for
/// every attempt (so `S: Clone`).
///
/// See the [crate docs](crate) for an example.
pub struct Retry<P, S> {
    inner: S,
    policy: P,
    shared: Arc<Shared>,
}

impl<P, S> Retry<P, S> {
    pub(crate) fn new(inner: S, policy: P, shared: Arc<Shared>) -> Self {
        Self {
            inner,
            policy,
            shared,
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

    /// The inner service, consuming this one.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// The counters of the layer that built this service.
    pub fn stats(&self) -> RetryStats {
        RetryStats::from_shared(&self.shared)
    }
}

impl<P: Clone, S: Clone> Clone for Retry<P, S> {
    /// Shares the budget and counters with the original.
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            policy: self.policy.clone(),
            shared: Arc::clone(&self.shared),
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
        // Contract 2: nothing reserved here; the future drives its own clone.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        self.shared.budget.deposit(clock::now());
        ResponseFuture::new(
            req,
            self.inner.clone(),
            self.policy.clone(),
            Arc::clone(&self.shared),
            Context::current(),
        )
    }
}

impl<P: fmt::Debug, S: fmt::Debug> fmt::Debug for Retry<P, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retry")
            .field("inner", &self.inner)
            .field("policy", &self.policy)
            .field("shared", &*self.shared)
            .finish()
    }
}
