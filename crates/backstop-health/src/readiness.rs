//! [`Readiness`]: the draining flag, the saturation probe and the upstream
//! error window, and the answer they give together.

use std::error::Error;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use backstop_core::{AttemptTimedOut, ErrorKind, Overloaded, SlaExpired, classify, find};
use tokio::time::Instant;

use crate::window::{Counts, Window};

/// Attempts needed in the window before the upstream-error rule can trip.
pub const MIN_ATTEMPTS: u32 = 10;

type QueueFull = dyn Fn() -> bool + Send + Sync;
type FreePermits = dyn Fn() -> usize + Send + Sync;

/// Whether this instance should receive traffic, from the layers' own state.
///
/// Not ready, in this order of precedence:
/// 1. [`Reason::Draining`] once [`set_draining`](Self::set_draining) ran;
/// 2. [`Reason::Saturated`] while the saturation probe reports the admission
///    queue full *and* no concurrency permit free;
/// 3. [`Reason::UpstreamErrors`] while, over the last 10 s, at least
///    [`MIN_ATTEMPTS`] attempts were [recorded](Self::record) and at least
///    half of them failed (unless switched off with
///    [`ReadinessBuilder::upstream_errors`]).
///
/// # Clone and shared state
///
/// A `Readiness` is an `Arc`: every clone reads and writes the same flag and
/// window, so hand one clone to the shutdown path, one to the attempt
/// recorder and one to the `/ready` route.
///
/// See the [crate docs](crate) for an example.
#[derive(Clone)]
pub struct Readiness {
    inner: Arc<Inner>,
}

struct Inner {
    draining: AtomicBool,
    upstream_errors: bool,
    queue_full: Option<Box<QueueFull>>,
    free_permits: Option<Box<FreePermits>>,
    window: Window,
}

/// Builds a [`Readiness`]. See [`Readiness::builder`].
#[must_use]
pub struct ReadinessBuilder {
    upstream_errors: bool,
    queue_full: Option<Box<QueueFull>>,
    free_permits: Option<Box<FreePermits>>,
}

/// The answer of [`Readiness::check`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    /// Ready for traffic.
    Ready,
    /// Not ready, and why.
    NotReady(Reason),
}

/// Why an instance is not ready.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reason {
    /// Shutting down: finishing what it has, taking nothing new.
    Draining,
    /// The admission queue is full and no concurrency permit is free.
    Saturated,
    /// At least half of at least 10 attempts failed over the last 10 s.
    UpstreamErrors,
}

/// One attempt's outcome, as the upstream error window counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The upstream answered, with anything but a failure status.
    Success,
    /// A connect error, an attempt timeout, or a 5xx, 529 or 408.
    Failure,
}

// === impl Readiness ===

impl Readiness {
    /// A readiness with no saturation probe and the upstream-error rule on.
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// A builder: saturation probe, upstream-error rule.
    pub fn builder() -> ReadinessBuilder {
        ReadinessBuilder {
            upstream_errors: true,
            queue_full: None,
            free_permits: None,
        }
    }

    /// Marks the instance as draining: not ready from now on, for good.
    pub fn set_draining(&self) {
        self.inner.draining.store(true, Ordering::Release);
    }

    /// Whether [`set_draining`](Self::set_draining) ran.
    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::Acquire)
    }

    /// Records one attempt's outcome in the upstream error window, at the
    /// current tokio instant. One compare-and-swap, no lock.
    pub fn record(&self, outcome: Outcome) {
        self.inner
            .window
            .record(Instant::now(), outcome == Outcome::Failure);
    }

    /// Records an attempt's error, if it is one the window counts (see
    /// [`Outcome::of_error`]); other errors are ignored.
    pub fn record_error(&self, err: &(dyn Error + 'static)) {
        if let Some(outcome) = Outcome::of_error(err) {
            self.record(outcome);
        }
    }

    /// Records an HTTP attempt's result: the status of a response (see
    /// [`Outcome::of_status`]), or the error (see
    /// [`record_error`](Self::record_error)).
    #[cfg(feature = "http")]
    #[cfg_attr(docsrs, doc(cfg(feature = "http")))]
    pub fn record_http<B>(&self, result: &Result<http::Response<B>, backstop_core::BoxError>) {
        match result {
            Ok(response) => self.record(Outcome::of_status(response.status())),
            Err(err) => self.record_error(&**err),
        }
    }

    /// Whether the instance is ready now, and if not, why.
    pub fn check(&self) -> Status {
        let inner = &*self.inner;
        if self.is_draining() {
            return Status::NotReady(Reason::Draining);
        }
        if inner.is_saturated() {
            return Status::NotReady(Reason::Saturated);
        }
        if inner.upstream_errors {
            let Counts { attempts, failures } = inner.window.counts(Instant::now());
            if attempts >= MIN_ATTEMPTS && failures.saturating_mul(2) >= attempts {
                return Status::NotReady(Reason::UpstreamErrors);
            }
        }
        Status::Ready
    }
}

impl Inner {
    /// Queue full and no free permit. With one probe only, that probe
    /// decides; with none, never saturated.
    fn is_saturated(&self) -> bool {
        match (&self.queue_full, &self.free_permits) {
            (None, None) => false,
            (queue_full, free_permits) => {
                queue_full.as_ref().is_none_or(|full| full())
                    && free_permits.as_ref().is_none_or(|free| free() == 0)
            }
        }
    }
}

impl Default for Readiness {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Readiness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &*self.inner;
        f.debug_struct("Readiness")
            .field("draining", &self.is_draining())
            .field("upstream_errors", &inner.upstream_errors)
            .field("queue_probe", &inner.queue_full.is_some())
            .field("permit_probe", &inner.free_permits.is_some())
            .field("window", &inner.window.counts(Instant::now()))
            .finish()
    }
}

// === impl ReadinessBuilder ===

impl ReadinessBuilder {
    /// The saturation probe: `queue_full` (e.g.
    /// `move || queue.is_full()` on a `backstop_admission::QueueHandle`) and
    /// `free_permits` (e.g. `move || permits.available_permits()` on a
    /// `backstop_concurrency::ConcurrencyHandle`). Saturated while the queue
    /// is full and no permit is free. Both are called on each
    /// [`check`](Readiness::check), never on the request path.
    pub fn saturation(
        self,
        queue_full: impl Fn() -> bool + Send + Sync + 'static,
        free_permits: impl Fn() -> usize + Send + Sync + 'static,
    ) -> Self {
        self.queue_full(queue_full).free_permits(free_permits)
    }

    /// Only the queue half of the probe, for a stack without a concurrency
    /// limit: saturated while the queue is full.
    pub fn queue_full(mut self, probe: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        self.queue_full = Some(Box::new(probe));
        self
    }

    /// Only the permit half of the probe, for a stack without a queue:
    /// saturated while no permit is free.
    pub fn free_permits(mut self, probe: impl Fn() -> usize + Send + Sync + 'static) -> Self {
        self.free_permits = Some(Box::new(probe));
        self
    }

    /// Switches the upstream-error rule on (the default) or off. On, a
    /// vendor outage takes every replica out of the load balancer at once.
    pub fn upstream_errors(mut self, enabled: bool) -> Self {
        self.upstream_errors = enabled;
        self
    }

    /// The readiness. Its window starts at the current tokio instant.
    pub fn build(self) -> Readiness {
        Readiness {
            inner: Arc::new(Inner {
                draining: AtomicBool::new(false),
                upstream_errors: self.upstream_errors,
                queue_full: self.queue_full,
                free_permits: self.free_permits,
                window: Window::new(Instant::now()),
            }),
        }
    }
}

impl fmt::Debug for ReadinessBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadinessBuilder")
            .field("upstream_errors", &self.upstream_errors)
            .field("queue_probe", &self.queue_full.is_some())
            .field("permit_probe", &self.free_permits.is_some())
            .finish()
    }
}

// === impl Status, Reason, Outcome ===

impl Status {
    /// Whether this is [`Status::Ready`].
    pub fn is_ready(self) -> bool {
        self == Self::Ready
    }

    /// The reason, when not ready.
    pub fn reason(self) -> Option<Reason> {
        match self {
            Self::Ready => None,
            Self::NotReady(reason) => Some(reason),
        }
    }
}

impl Reason {
    /// `"draining"`, `"saturated"` or `"upstream_errors"`: the `reason` of
    /// the `/ready` body.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Draining => "draining",
            Self::Saturated => "saturated",
            Self::UpstreamErrors => "upstream_errors",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Outcome {
    /// The outcome of an attempt that failed with `err`, walking its
    /// `source()` chain: an [`AttemptTimedOut`] or an upstream failure
    /// (connect and I/O errors, anything [`classify`] calls
    /// [`ErrorKind::UpstreamFailure`]) is a [`Failure`](Self::Failure).
    /// `None` for errors that say nothing about the upstream: an
    /// [`SlaExpired`] (the request's own deadline), an [`Overloaded`] (a
    /// local refusal), anything else.
    pub fn of_error(err: &(dyn Error + 'static)) -> Option<Self> {
        if find::<AttemptTimedOut>(err).is_some() {
            return Some(Self::Failure);
        }
        if find::<SlaExpired>(err).is_some() || find::<Overloaded>(err).is_some() {
            return None;
        }
        (classify(err) == ErrorKind::UpstreamFailure).then_some(Self::Failure)
    }

    /// The outcome of an upstream response with `status`: 5xx (529
    /// included) and 408 are failures, anything else (other 4xx, 429) a
    /// success, per `StatusClass::is_upstream_failure`.
    #[cfg(feature = "http")]
    #[cfg_attr(docsrs, doc(cfg(feature = "http")))]
    pub fn of_status(status: http::StatusCode) -> Self {
        if backstop_core::http::StatusClass::of(status).is_upstream_failure() {
            Self::Failure
        } else {
            Self::Success
        }
    }
}
