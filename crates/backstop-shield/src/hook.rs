//! What a hook is and what it is told: [`Hook`], [`Completion`], [`Outcome`].

use std::fmt;
use std::future::{Future, Ready};

use backstop_core::{Attempt, ErrorKind, RequestId};
use tokio::time::Duration;

/// A completion hook: told once per request how it ended.
///
/// Implemented for every `Fn(Completion) -> impl Future<Output = ()>` closure
/// that is `Send + Sync + 'static` (an async hook), and by [`SyncHook`] (see
/// [`sync_hook`]) for plain `Fn(Completion)` closures.
///
/// # Where a hook runs
///
/// [`call`](Hook::call) runs synchronously where the request finishes: in the
/// poll that completes the response future (or body), or in the drop that
/// cancels it, possibly on a thread without a tokio runtime when it belongs
/// to a [`SyncHook`]. The layer then polls the returned future once, in
/// place; if it is still pending, the rest runs as a task spawned through
/// the runtime handle captured when the request started, bounded by the
/// layer's hook timeout, tracked by its [`HookTracker`](crate::HookTracker).
/// See the [crate docs](crate#hooks) for the rules when no runtime is
/// around.
///
/// Hooks must not panic: a panic in a hook run from a drop during unwinding
/// aborts the process.
pub trait Hook: Send + Sync + 'static {
    /// The work left after `call` returns.
    type Future: Future<Output = ()> + Send + 'static;

    /// `true` when [`call`](Hook::call) does all the work and its future is
    /// ready at once without touching a runtime, as [`SyncHook`]'s is.
    ///
    /// The layer then polls that future once on the stack (no allocation),
    /// even on a thread without a runtime, and never spawns it: a future
    /// still pending after that one poll is dropped and counted as skipped.
    /// Leave it `false` (the default) for any future that may await.
    const SYNC: bool = false;

    /// Starts the hook for one finished request.
    fn call(&self, done: Completion) -> Self::Future;
}

impl<F, Fut> Hook for F
where
    F: Fn(Completion) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    type Future = Fut;

    fn call(&self, done: Completion) -> Fut {
        self(done)
    }
}

/// Returns an async closure as a [`Hook`], unchanged.
///
/// It only helps type inference: `hook_fn(|done| async move { .. })` needs
/// no annotation on `done`.
///
/// ```
/// use backstop_shield::{hook_fn, ShieldedOnCancelLayer};
///
/// let layer = ShieldedOnCancelLayer::new(hook_fn(|done| async move {
///     let _ = done.outcome();
/// }));
/// # let _ = layer;
/// ```
pub fn hook_fn<F, Fut>(f: F) -> F
where
    F: Fn(Completion) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    f
}

/// A [`Hook`] that runs a plain closure and never awaits.
///
/// It needs no runtime and allocates nothing: the closure runs where the
/// request finishes, even on a thread without a runtime. Made by
/// [`sync_hook`].
#[derive(Clone, Copy)]
pub struct SyncHook<F> {
    f: F,
}

/// Wraps a plain `Fn(Completion)` closure as a [`Hook`] that never awaits.
///
/// Use it for counters, metrics and logs: it is the cheapest hook (no
/// allocation, never spawned, runs even without a runtime).
///
/// ```
/// use backstop_shield::{sync_hook, ShieldedOnCancelLayer};
///
/// let layer = ShieldedOnCancelLayer::new(sync_hook(|done| {
///     let _ = (done.outcome().as_str(), done.elapsed());
/// }));
/// # let _ = layer;
/// ```
pub fn sync_hook<F>(f: F) -> SyncHook<F>
where
    F: Fn(Completion) + Send + Sync + 'static,
{
    SyncHook { f }
}

impl<F> Hook for SyncHook<F>
where
    F: Fn(Completion) + Send + Sync + 'static,
{
    type Future = Ready<()>;

    const SYNC: bool = true;

    fn call(&self, done: Completion) -> Ready<()> {
        (self.f)(done);
        std::future::ready(())
    }
}

impl<F> fmt::Debug for SyncHook<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SyncHook")
            .field("f", &std::any::type_name::<F>())
            .finish()
    }
}

/// How a request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// The response completed (for HTTP: the body ended and the status was
    /// below 400).
    Success,
    /// The service failed, with the error's [`ErrorKind`] (for HTTP also a
    /// status of 400 or more, or a body error).
    ///
    /// An SLA expiry inside the layer arrives as
    /// `Error(ErrorKind::Timeout)`.
    Error(ErrorKind),
    /// The caller dropped the future (for HTTP: or the body) before the
    /// response completed.
    Cancelled,
}

impl Outcome {
    /// A stable snake-case name, fit for logs and metric labels: `success`,
    /// `error` or `cancelled`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Error(_) => "error",
            Self::Cancelled => "cancelled",
        }
    }

    /// Whether this is [`Outcome::Success`].
    pub fn is_success(self) -> bool {
        self == Self::Success
    }

    /// Whether this is an [`Outcome::Error`].
    pub fn is_error(self) -> bool {
        matches!(self, Self::Error(_))
    }

    /// Whether this is [`Outcome::Cancelled`].
    pub fn is_cancelled(self) -> bool {
        self == Self::Cancelled
    }

    /// The error's kind, for [`Outcome::Error`].
    pub fn error_kind(self) -> Option<ErrorKind> {
        match self {
            Self::Error(kind) => Some(kind),
            _ => None,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Error(kind) => write!(f, "error ({kind})"),
            other => f.write_str(other.as_str()),
        }
    }
}

/// What a hook is told about one finished request.
///
/// The request id and attempt come from the
/// [`Context`](backstop_core::Context) current when the layer's `call` ran.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion {
    outcome: Outcome,
    elapsed: Duration,
    request_id: Option<RequestId>,
    attempt: Option<Attempt>,
    #[cfg(feature = "http")]
    status: Option<http::StatusCode>,
}

impl Completion {
    /// A completion with `outcome` after `elapsed`, no request id, attempt or
    /// status. Useful to test a hook on its own.
    pub fn new(outcome: Outcome, elapsed: Duration) -> Self {
        Self {
            outcome,
            elapsed,
            request_id: None,
            attempt: None,
            #[cfg(feature = "http")]
            status: None,
        }
    }

    /// Sets the request id.
    #[must_use]
    pub fn with_request_id(mut self, id: Option<RequestId>) -> Self {
        self.request_id = id;
        self
    }

    /// Sets the attempt number.
    #[must_use]
    pub fn with_attempt(mut self, attempt: Option<Attempt>) -> Self {
        self.attempt = attempt;
        self
    }

    /// Sets the response status.
    #[cfg(feature = "http")]
    #[cfg_attr(docsrs, doc(cfg(feature = "http")))]
    #[must_use]
    pub fn with_status(mut self, status: Option<http::StatusCode>) -> Self {
        self.status = status;
        self
    }

    /// How the request ended.
    pub fn outcome(&self) -> Outcome {
        self.outcome
    }

    /// Tokio time from the layer's `call` to the end of the request.
    pub fn elapsed(&self) -> Duration {
        self.elapsed
    }

    /// The request id in the context at call time, if any.
    pub fn request_id(&self) -> Option<&RequestId> {
        self.request_id.as_ref()
    }

    /// The attempt number in the context at call time, if any.
    pub fn attempt(&self) -> Option<Attempt> {
        self.attempt
    }

    /// The response status, when a response head arrived (HTTP variant
    /// only; the generic layer never sets it).
    #[cfg(feature = "http")]
    #[cfg_attr(docsrs, doc(cfg(feature = "http")))]
    pub fn status(&self) -> Option<http::StatusCode> {
        self.status
    }
}
