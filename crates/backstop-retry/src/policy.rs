//! What to do with each attempt's outcome.

use std::error::Error;

use backstop_core::{ErrorKind, SlaExpired, StreamTimedOut, classify, find};
use tokio::time::Duration;

/// What a [`Policy`] decides about one attempt's outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action {
    /// Give this outcome to the caller.
    Return,
    /// Retry after the configured backoff, if attempts, budget and deadline
    /// allow; otherwise give this outcome to the caller.
    Retry,
    /// Retry after exactly this wait (an upstream's `Retry-After`), without
    /// jitter, if it is at most `retry_after_max` and fits before the SLA
    /// deadline with `min_attempt_time` to spare; otherwise give this outcome
    /// to the caller at once.
    RetryAfter(Duration),
    /// The attempt was refused locally (overloaded): stop, and give the caller
    /// the previous attempt's outcome if there was one, else this one.
    Refused,
}

/// Decides, per outcome, whether `Retry` tries again.
///
/// Replaceable: pass your own to [`RetryLayerBuilder::policy`]. The layer
/// clones the policy into each response future. A policy should return
/// [`Action::Return`] for an SLA expiry ([`SlaExpired`]); the layer also never
/// starts a retry that cannot begin `min_attempt_time` before the SLA deadline.
///
/// [`RetryLayerBuilder::policy`]: crate::RetryLayerBuilder::policy
pub trait Policy<Req, Res, E> {
    /// A copy of `req` for a later attempt, or `None` if it cannot be
    /// replayed (it is then sent once and never retried). Called once per
    /// request, before its first attempt, and only when `max_attempts > 1`.
    fn clone_request(&self, req: &Req) -> Option<Req>;

    /// What to do with an attempt's outcome.
    fn decide(&self, outcome: &Result<Res, E>) -> Action;

    /// What to keep of an outcome that is being retried, in case the next
    /// attempt is refused ([`Action::Refused`]) and this one goes back to the
    /// caller. The default keeps all of it; the HTTP policy drops a 5xx body
    /// so no connection or permit is held across the backoff.
    fn retain(&self, outcome: Result<Res, E>) -> Result<Res, E> {
        outcome
    }
}

/// Errors the [`DefaultPolicy`] can look inside.
///
/// Implemented for `tower::BoxError` (what every backstop layer returns), the
/// other boxed `dyn Error`s, `std::io::Error` and `Infallible`.
pub trait AsError {
    /// The error as a `dyn Error`, to walk its `source()` chain.
    fn as_error(&self) -> Option<&(dyn Error + 'static)>;
}

impl AsError for Box<dyn Error + Send + Sync> {
    fn as_error(&self) -> Option<&(dyn Error + 'static)> {
        Some(&**self)
    }
}

impl AsError for Box<dyn Error + Send> {
    fn as_error(&self) -> Option<&(dyn Error + 'static)> {
        Some(&**self)
    }
}

impl AsError for Box<dyn Error> {
    fn as_error(&self) -> Option<&(dyn Error + 'static)> {
        Some(&**self)
    }
}

impl AsError for std::io::Error {
    fn as_error(&self) -> Option<&(dyn Error + 'static)> {
        Some(self)
    }
}

impl AsError for std::convert::Infallible {
    fn as_error(&self) -> Option<&(dyn Error + 'static)> {
        match *self {}
    }
}

/// The default policy for any service: retry upstream failures, never
/// anything else.
///
/// | error (anywhere in the `source()` chain) | action |
/// |---|---|
/// | `SlaExpired`, `StreamTimedOut` (kind `Timeout`) | return it |
/// | `Overloaded` (refused locally) | [`Action::Refused`]: the previous outcome, else this error |
/// | `CostOverBurst` (kind `InvalidRequest`) | return it |
/// | `AttemptTimedOut`, connect errors, anything else (kind `UpstreamFailure`) | retry |
///
/// Every `Ok` response is returned as is (for HTTP status rules use
/// [`RetryLayerBuilder::for_http`](crate::RetryLayerBuilder::for_http)).
/// The request must be `Clone`.
#[derive(Clone, Copy, Debug, Default)]
pub struct DefaultPolicy {
    _priv: (),
}

impl DefaultPolicy {
    /// The default policy.
    pub fn new() -> Self {
        Self::default()
    }
}

/// The default policy's decision for an error.
pub(crate) fn decide_error(err: &(dyn Error + 'static)) -> Action {
    if find::<SlaExpired>(err).is_some() || find::<StreamTimedOut>(err).is_some() {
        return Action::Return;
    }
    match classify(err) {
        ErrorKind::Overloaded => Action::Refused,
        ErrorKind::UpstreamFailure => Action::Retry,
        _ => Action::Return,
    }
}

impl<Req: Clone, Res, E: AsError> Policy<Req, Res, E> for DefaultPolicy {
    fn clone_request(&self, req: &Req) -> Option<Req> {
        Some(req.clone())
    }

    fn decide(&self, outcome: &Result<Res, E>) -> Action {
        match outcome {
            Ok(_) => Action::Return,
            Err(e) => e.as_error().map_or(Action::Return, decide_error),
        }
    }
}
