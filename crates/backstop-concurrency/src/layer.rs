//! `ConcurrencyLimitLayer`: the shared semaphore and how a permit is released.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use backstop_core::ConfigError;
use tower_layer::Layer;

use crate::obs::Metrics;
use crate::sem::Semaphore;
use crate::service::ConcurrencyLimit;

/// Limits how many requests run at once, with one semaphore shared by every
/// service the layer builds and every clone of those.
///
/// `R` says when a permit is released: [`ReleaseOnCompletion`] (the default,
/// any service) when the response future completes, or, with the `http`
/// feature, `ReleaseAtBodyEnd` (from
/// [`release_at_body_end`](ConcurrencyLimitLayer::release_at_body_end)) when
/// the response body ends, fails or is dropped.
///
/// See the [crate docs](crate) for an example.
pub struct ConcurrencyLimitLayer<R = ReleaseOnCompletion> {
    semaphore: Arc<Semaphore>,
    max: usize,
    _release: PhantomData<fn() -> R>,
}

/// A read-only view of a limit's semaphore, for readiness checks and metrics.
///
/// Cheap to clone; it observes the same semaphore as every service of the
/// layer.
///
/// See the [crate docs](crate) for an example.
#[derive(Clone)]
pub struct ConcurrencyHandle {
    semaphore: Arc<Semaphore>,
    max: usize,
}

/// Release policy: the permit is released when the response future completes
/// (with a response or an error), or when it is dropped.
///
/// The default of [`ConcurrencyLimitLayer`]; works for any service.
#[derive(Clone, Copy, Debug, Default)]
pub struct ReleaseOnCompletion;

/// When a permit is released, given the inner service's response type.
///
/// Implemented by [`ReleaseOnCompletion`] for every response, and with the
/// `http` feature by `ReleaseAtBodyEnd` for `http::Response<B>`. Sealed: it
/// cannot be implemented outside this crate.
pub trait ReleasePolicy<Resp>: sealed::Sealed {
    /// What the limited service returns.
    type Response;

    /// Turns the inner response and the permit into the limited response:
    /// either drops the permit now or moves it into the response.
    fn attach(response: Resp, permit: Permit) -> Self::Response;
}

/// One slot of a concurrency limit, given back to the semaphore when
/// dropped.
///
/// Held by the response future, or with `ReleaseAtBodyEnd` by the response
/// body. Like tokio's `OwnedSemaphorePermit`, but it moves the future's own
/// reference to the semaphore instead of taking another one (one atomic
/// reference-count pair less per request), and its release takes no lock
/// unless requests wait.
#[must_use = "dropping the permit releases it at once"]
pub struct Permit {
    // Counted in `llm_concurrent_calls` while held (feature `metrics`).
    semaphore: Arc<Semaphore>,
}

pub(crate) mod sealed {
    pub trait Sealed {}
    impl Sealed for super::ReleaseOnCompletion {}
    #[cfg(feature = "http")]
    impl Sealed for crate::body::ReleaseAtBodyEnd {}
}

// === impl ReleaseOnCompletion ===

impl<Resp> ReleasePolicy<Resp> for ReleaseOnCompletion {
    type Response = Resp;

    fn attach(response: Resp, permit: Permit) -> Resp {
        drop(permit);
        response
    }
}

// === impl Permit ===

impl Permit {
    /// A permit for one slot the caller already took from `semaphore` (and
    /// `forget()`-ed).
    #[inline]
    pub(crate) fn taken(semaphore: Arc<Semaphore>) -> Self {
        semaphore.metrics().hold();
        Self { semaphore }
    }
}

impl Drop for Permit {
    #[inline]
    fn drop(&mut self) {
        self.semaphore.metrics().unhold();
        // Waiters first, FIFO; no lock when nobody waits.
        self.semaphore.release();
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit").finish_non_exhaustive()
    }
}

// === impl ConcurrencyLimitLayer ===

impl ConcurrencyLimitLayer {
    /// A limit of `max_in_flight` requests at once, released when each
    /// response future completes.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming `max_in_flight` when it is 0 or above
    /// `usize::MAX >> 3` (the bound of tokio's semaphore, kept).
    pub fn new(max_in_flight: usize) -> Result<Self, ConfigError> {
        if max_in_flight == 0 {
            return Err(ConfigError::new("max_in_flight", "must be at least 1"));
        }
        if max_in_flight > Semaphore::MAX_PERMITS {
            return Err(ConfigError::new(
                "max_in_flight",
                format!("must be at most {}", Semaphore::MAX_PERMITS),
            ));
        }
        Ok(Self {
            semaphore: Arc::new(Semaphore::new(max_in_flight, Metrics::resolve())),
            max: max_in_flight,
            _release: PhantomData,
        })
    }
}

impl<R> ConcurrencyLimitLayer<R> {
    /// A handle on this limit: available permits, in-flight count, maximum.
    pub fn handle(&self) -> ConcurrencyHandle {
        ConcurrencyHandle {
            semaphore: Arc::clone(&self.semaphore),
            max: self.max,
        }
    }

    /// The most requests in flight at once.
    pub fn max(&self) -> usize {
        self.max
    }

    #[cfg(feature = "http")]
    pub(crate) fn with_policy<R2>(self) -> ConcurrencyLimitLayer<R2> {
        ConcurrencyLimitLayer {
            semaphore: self.semaphore,
            max: self.max,
            _release: PhantomData,
        }
    }
}

impl<R> Clone for ConcurrencyLimitLayer<R> {
    // Hand-written: a derive would require `R: Clone`. Clones share the
    // semaphore, so they are one limit.
    fn clone(&self) -> Self {
        Self {
            semaphore: Arc::clone(&self.semaphore),
            max: self.max,
            _release: PhantomData,
        }
    }
}

impl<S, R> Layer<S> for ConcurrencyLimitLayer<R> {
    type Service = ConcurrencyLimit<S, R>;

    fn layer(&self, inner: S) -> Self::Service {
        ConcurrencyLimit::new(inner, Arc::clone(&self.semaphore), self.max)
    }
}

// The metric handles say nothing about the limit.
#[allow(clippy::missing_fields_in_debug)]
impl<R> fmt::Debug for ConcurrencyLimitLayer<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConcurrencyLimitLayer")
            .field("max", &self.max)
            .field("available", &self.semaphore.available_permits())
            .field("release", &std::any::type_name::<R>())
            .finish()
    }
}

// === impl ConcurrencyHandle ===

impl ConcurrencyHandle {
    pub(crate) fn new(semaphore: Arc<Semaphore>, max: usize) -> Self {
        Self { semaphore, max }
    }

    /// Permits free now. Zero while requests wait (a released permit goes
    /// straight to the first waiter).
    pub fn available_permits(&self) -> usize {
        self.semaphore.available_permits()
    }

    /// Permits held now: requests running, or responses whose body still
    /// streams with `ReleaseAtBodyEnd`.
    pub fn in_flight(&self) -> usize {
        self.max.saturating_sub(self.semaphore.available_permits())
    }

    /// The most requests in flight at once.
    pub fn max(&self) -> usize {
        self.max
    }
}

impl fmt::Debug for ConcurrencyHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConcurrencyHandle")
            .field("max", &self.max)
            .field("in_flight", &self.in_flight())
            .field("available_permits", &self.available_permits())
            .finish_non_exhaustive()
    }
}
