//! The error taxonomy shared by every backstop layer.

use std::error::Error;
use std::fmt;

use tokio::time::Duration;

/// The boxed error every failing backstop layer returns (tower's alias).
pub type BoxError = Box<dyn Error + Send + Sync>;

/// The end-to-end (SLA) deadline passed before the request finished.
///
/// Kind [`ErrorKind::Timeout`]; HTTP 504. Never retried.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SlaExpired {
    _priv: (),
}

impl SlaExpired {
    /// Creates the error.
    pub fn new() -> Self {
        Self { _priv: () }
    }
}

impl fmt::Display for SlaExpired {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sla deadline exceeded")
    }
}

impl Error for SlaExpired {}

/// One attempt ran past its own timeout (the SLA deadline was still later).
///
/// Kind [`ErrorKind::UpstreamFailure`]; HTTP 502. Retried by the default
/// policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttemptTimedOut {
    timeout: Duration,
    phase: AttemptPhase,
}

/// Which part of an attempt ran out of time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AttemptPhase {
    /// Waiting for the response (for HTTP, the response head).
    Response,
    /// Waiting for the first body frame (HTTP only).
    FirstByte,
}

impl AttemptTimedOut {
    /// An attempt that waited `timeout` for its response.
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            phase: AttemptPhase::Response,
        }
    }

    /// An attempt that waited `timeout` (from its start) for the first body
    /// frame.
    pub fn first_byte(timeout: Duration) -> Self {
        Self {
            timeout,
            phase: AttemptPhase::FirstByte,
        }
    }

    /// The timeout that ran out.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Which part of the attempt ran out of time.
    pub fn phase(&self) -> AttemptPhase {
        self.phase
    }
}

impl fmt::Display for AttemptTimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.phase {
            AttemptPhase::Response => write!(f, "attempt timed out after {:?}", self.timeout),
            AttemptPhase::FirstByte => {
                write!(f, "no response body byte within {:?}", self.timeout)
            }
        }
    }
}

impl Error for AttemptTimedOut {}

/// Why a request was refused locally.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OverloadReason {
    /// `max_waiting` requests were already waiting for admission.
    QueueFull,
    /// The request waited its whole admission window (max wait).
    WaitExceeded,
    /// The rate limiter's next conforming instant lies past the admission
    /// deadline.
    RateLimited,
}

impl OverloadReason {
    /// A stable snake-case name, fit for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::QueueFull => "queue_full",
            Self::WaitExceeded => "wait_exceeded",
            Self::RateLimited => "rate_limited",
        }
    }
}

impl fmt::Display for OverloadReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::QueueFull => "admission queue full",
            Self::WaitExceeded => "admission wait exceeded",
            Self::RateLimited => "rate limit cannot admit in time",
        })
    }
}

/// The request was refused locally, before reaching the upstream.
///
/// Kind [`ErrorKind::Overloaded`]; HTTP 429 (or 503, configurable) with
/// `Retry-After`. Stops retries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Overloaded {
    reason: OverloadReason,
    retry_after: Duration,
}

impl Overloaded {
    /// A refusal for `reason`, suggesting the client retry after
    /// `retry_after`.
    pub fn new(reason: OverloadReason, retry_after: Duration) -> Self {
        Self {
            reason,
            retry_after,
        }
    }

    /// Why the request was refused.
    pub fn reason(&self) -> OverloadReason {
        self.reason
    }

    /// When the client may try again.
    pub fn retry_after(&self) -> Duration {
        self.retry_after
    }
}

impl fmt::Display for Overloaded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "overloaded: {}", self.reason)
    }
}

impl Error for Overloaded {}

/// A request costs more than a limiter's burst, so it could never be admitted.
///
/// Kind [`ErrorKind::InvalidRequest`]; HTTP 400. Never queued.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CostOverBurst {
    needed: u64,
    limit: u64,
}

impl CostOverBurst {
    /// A request that needs `needed` units from a limiter whose burst is
    /// `limit`.
    pub fn new(needed: u64, limit: u64) -> Self {
        Self { needed, limit }
    }

    /// What the request costs.
    pub fn needed(&self) -> u64 {
        self.needed
    }

    /// The burst it exceeds.
    pub fn limit(&self) -> u64 {
        self.limit
    }
}

impl fmt::Display for CostOverBurst {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "request needs {} units, limit {}",
            self.needed, self.limit
        )
    }
}

impl Error for CostOverBurst {}

/// A streaming response body stopped in time: too long between frames, past
/// its maximum duration, or cut by shutdown.
///
/// Kind [`ErrorKind::Timeout`]. Raised from a body after the response head was
/// sent, so the client sees the SSE error event or an aborted connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamTimedOut {
    reason: StreamTimeout,
    after: Duration,
}

/// Which stream bound ran out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StreamTimeout {
    /// No frame within the idle timeout.
    Idle,
    /// The stream ran past its maximum duration.
    MaxDuration,
    /// The server is shutting down.
    Shutdown,
}

impl StreamTimedOut {
    /// A stream stopped for `reason` after `after`.
    pub fn new(reason: StreamTimeout, after: Duration) -> Self {
        Self { reason, after }
    }

    /// Which bound ran out.
    pub fn reason(&self) -> StreamTimeout {
        self.reason
    }

    /// The bound's duration.
    pub fn after(&self) -> Duration {
        self.after
    }
}

impl fmt::Display for StreamTimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.reason {
            StreamTimeout::Idle => write!(f, "no body frame for {:?}", self.after),
            StreamTimeout::MaxDuration => {
                write!(
                    f,
                    "stream exceeded its maximum duration of {:?}",
                    self.after
                )
            }
            StreamTimeout::Shutdown => f.write_str("stream cut by shutdown"),
        }
    }
}

impl Error for StreamTimedOut {}

/// What kind of failure an error is, for the client and for metrics.
///
/// [`as_str`](Self::as_str) is both the body's `error.type` and the metrics
/// `kind` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Refused locally: queue full, wait exceeded, rate limit (429/503).
    Overloaded,
    /// The SLA deadline passed, or a stream ran out of time (504).
    Timeout,
    /// The upstream failed: 5xx, connect error, attempt timeout, body error
    /// (502).
    UpstreamFailure,
    /// The request can never succeed as sent (400, 404, 405, 413).
    InvalidRequest,
    /// Missing or wrong client credentials (401).
    Unauthorized,
    /// A bug: a caught panic or a broken invariant (500).
    Internal,
}

impl ErrorKind {
    /// Every kind, in a stable order (for registering metrics).
    pub const ALL: [Self; 6] = [
        Self::Overloaded,
        Self::Timeout,
        Self::UpstreamFailure,
        Self::InvalidRequest,
        Self::Unauthorized,
        Self::Internal,
    ];

    /// The body's `error.type` and the metrics `kind` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Overloaded => "overloaded",
            Self::Timeout => "timeout",
            Self::UpstreamFailure => "upstream_failure",
            Self::InvalidRequest => "invalid_request",
            Self::Unauthorized => "unauthorized",
            Self::Internal => "internal",
        }
    }

    /// Whether this is [`ErrorKind::Overloaded`].
    pub fn is_overloaded(self) -> bool {
        self == Self::Overloaded
    }

    /// Whether this is [`ErrorKind::Timeout`].
    pub fn is_timeout(self) -> bool {
        self == Self::Timeout
    }

    /// Whether this is [`ErrorKind::UpstreamFailure`].
    pub fn is_upstream_failure(self) -> bool {
        self == Self::UpstreamFailure
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Classifies an error by walking its `source()` chain for backstop's own
/// error types.
///
/// Anything that is not one of them (hyper, hyper-util, body or user errors)
/// is an upstream failure, not a bug.
///
/// | found | kind |
/// |---|---|
/// | [`SlaExpired`], [`StreamTimedOut`] | `Timeout` |
/// | [`Overloaded`] | `Overloaded` |
/// | [`CostOverBurst`] | `InvalidRequest` |
/// | [`AttemptTimedOut`], anything else | `UpstreamFailure` |
pub fn classify(err: &(dyn Error + 'static)) -> ErrorKind {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if e.is::<SlaExpired>() || e.is::<StreamTimedOut>() {
            return ErrorKind::Timeout;
        }
        if e.is::<Overloaded>() {
            return ErrorKind::Overloaded;
        }
        if e.is::<CostOverBurst>() {
            return ErrorKind::InvalidRequest;
        }
        if e.is::<AttemptTimedOut>() {
            return ErrorKind::UpstreamFailure;
        }
        cur = e.source();
    }
    ErrorKind::UpstreamFailure
}

/// Finds the first error of type `E` in `err`'s `source()` chain, `err`
/// included.
pub fn find<'a, E: Error + 'static>(err: &'a (dyn Error + 'static)) -> Option<&'a E> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(found) = e.downcast_ref::<E>() {
            return Some(found);
        }
        cur = e.source();
    }
    None
}

/// A layer was configured with a value it cannot use.
///
/// Names the setting and the reason, e.g. ``invalid `timeout`: must be above
/// zero``.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    setting: &'static str,
    reason: String,
}

impl ConfigError {
    /// An error for `setting`, saying why its value is wrong.
    pub fn new(setting: &'static str, reason: impl Into<String>) -> Self {
        Self {
            setting,
            reason: reason.into(),
        }
    }

    /// The setting's name.
    pub fn setting(&self) -> &'static str {
        self.setting
    }

    /// Why its value is wrong.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid `{}`: {}", self.setting, self.reason)
    }
}

impl Error for ConfigError {}

/// The longest duration any backstop setting accepts: 24 hours.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

/// Checks a duration setting: above zero (unless `allow_zero`) and at most
/// [`MAX_DURATION`], so adding it to any instant cannot overflow.
pub fn check_duration(
    setting: &'static str,
    value: Duration,
    allow_zero: bool,
) -> Result<Duration, ConfigError> {
    if value.is_zero() && !allow_zero {
        return Err(ConfigError::new(setting, "must be above zero"));
    }
    if value > MAX_DURATION {
        return Err(ConfigError::new(
            setting,
            format!("{value:?} is longer than the 24h maximum"),
        ));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Wrap(BoxError);
    impl fmt::Display for Wrap {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("wrapped")
        }
    }
    impl Error for Wrap {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&*self.0)
        }
    }

    #[test]
    fn classify_walks_the_chain() {
        let cases: Vec<(BoxError, ErrorKind)> = vec![
            (SlaExpired::new().into(), ErrorKind::Timeout),
            (
                StreamTimedOut::new(StreamTimeout::Idle, Duration::from_secs(1)).into(),
                ErrorKind::Timeout,
            ),
            (
                AttemptTimedOut::new(Duration::from_secs(1)).into(),
                ErrorKind::UpstreamFailure,
            ),
            (
                Overloaded::new(OverloadReason::QueueFull, Duration::from_secs(1)).into(),
                ErrorKind::Overloaded,
            ),
            (CostOverBurst::new(5, 4).into(), ErrorKind::InvalidRequest),
            ("connection refused".into(), ErrorKind::UpstreamFailure),
        ];
        for (err, kind) in cases {
            assert_eq!(classify(&*err), kind, "{err}");
            let wrapped: BoxError = Box::new(Wrap(Box::new(Wrap(err))));
            assert_eq!(classify(&*wrapped), kind, "wrapped twice");
        }
    }

    #[test]
    fn find_reaches_wrapped_errors() {
        let err: BoxError = Box::new(Wrap(
            Overloaded::new(OverloadReason::RateLimited, Duration::from_millis(1500)).into(),
        ));
        let o = find::<Overloaded>(&*err).unwrap();
        assert_eq!(o.reason(), OverloadReason::RateLimited);
        assert!(find::<SlaExpired>(&*err).is_none());
    }

    #[test]
    fn displays_are_lowercase_without_period() {
        let all: Vec<BoxError> = vec![
            SlaExpired::new().into(),
            AttemptTimedOut::new(Duration::from_secs(30)).into(),
            AttemptTimedOut::first_byte(Duration::from_secs(30)).into(),
            Overloaded::new(OverloadReason::WaitExceeded, Duration::ZERO).into(),
            CostOverBurst::new(5000, 4096).into(),
            StreamTimedOut::new(StreamTimeout::MaxDuration, Duration::from_secs(600)).into(),
            ConfigError::new("timeout", "must be above zero").into(),
        ];
        for e in all {
            let s = e.to_string();
            assert!(s.starts_with(|c: char| c.is_lowercase()), "{s}");
            assert!(!s.ends_with('.'), "{s}");
        }
        assert_eq!(
            CostOverBurst::new(5000, 4096).to_string(),
            "request needs 5000 units, limit 4096"
        );
    }

    #[test]
    fn durations_are_checked() {
        assert!(check_duration("timeout", Duration::ZERO, false).is_err());
        assert!(check_duration("max_wait", Duration::ZERO, true).is_ok());
        let err =
            check_duration("timeout", MAX_DURATION + Duration::from_nanos(1), false).unwrap_err();
        assert_eq!(err.setting(), "timeout");
        assert!(err.to_string().contains("24h"), "{err}");
        assert!(check_duration("timeout", Duration::MAX, false).is_err());
        assert!(check_duration("timeout", MAX_DURATION, false).is_ok());
    }

    #[test]
    fn kinds_have_stable_names() {
        let names: Vec<_> = ErrorKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "overloaded",
                "timeout",
                "upstream_failure",
                "invalid_request",
                "unauthorized",
                "internal"
            ]
        );
    }
}
