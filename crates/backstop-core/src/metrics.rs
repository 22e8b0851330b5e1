//! Metric names, label values and histogram buckets shared by every backstop
//! layer (feature `metrics`), so the layers, the gateway and the readiness
//! crate never disagree on a name.
//!
//! Each constant below is a name *without* its prefix; the prefix is
//! process-wide, [`DEFAULT_PREFIX`] (`llm_`, the source's names) unless
//! [`set_prefix`] ran first. [`name`] joins them.
//!
//! | name | type | labels | emitted by |
//! |---|---|---|---|
//! | [`CALLS_TOTAL`] | counter | [`OUTCOME`] = one of [`outcome::ALL`] | AttemptTimeout, per attempt |
//! | [`CALL_DURATION_SECONDS`] | histogram | | AttemptTimeout, per attempt |
//! | [`ERRORS_TOTAL`] | counter | [`KIND`] = `ErrorKind::as_str()` | the HTTP mapping / gateway, via [`ErrorCounters`] |
//! | [`RETRIES_TOTAL`] | counter | | Retry, per retry started |
//! | [`RETRY_BUDGET_EXHAUSTED_TOTAL`] | counter | | Retry, per retry refused by the budget |
//! | [`QUEUE_TIMEOUT_TOTAL`] | counter | | QueueAdmission, per `WaitExceeded` |
//! | [`QUEUE_FULL_TOTAL`] | counter | | QueueAdmission, per `QueueFull` |
//! | [`CALL_TIMEOUT_TOTAL`] | counter | | AttemptTimeout, per attempt timeout (not SLA-capped) |
//! | [`SEMAPHORE_WAIT_SECONDS`] | histogram | | ConcurrencyLimit, per attempt admitted |
//! | [`RATE_LIMIT_WAIT_SECONDS`] | histogram | [`LIMITER`] = a static name | RateLimit, per attempt admitted |
//! | [`CONCURRENT_CALLS`] | gauge | | ConcurrencyLimit, permits held now |
//! | [`SLA_EXPIRED_TOTAL`] | counter | | SlaTimeout, per request failed by its own deadline |
//! | [`HOOKS_TOTAL`] | counter | [`HOOK`] = one of [`hook::ALL`] | ShieldedOnCancel |
//!
//! # Install the recorder first
//!
//! Layers resolve their metric handles once, when they are built (a layer's
//! `build()`/`new()` or `Layer::layer`), so the hot path is one atomic
//! operation per event. Install the recorder (and call [`set_prefix`], if
//! at all) *before* building the layers: handles resolved earlier stay
//! no-ops. Call [`describe_all`] at start-up so that a first scrape shows
//! every family.

use std::sync::OnceLock;

use metrics::{Counter, Gauge, Histogram, Unit};

use crate::ErrorKind;

/// The default prefix: the source's metric names (`llm_calls_total`, ...).
pub const DEFAULT_PREFIX: &str = "llm_";

/// Counter, label [`OUTCOME`]: attempts that reached the upstream service.
/// An SLA-capped expiry counts as [`outcome::TIMEOUT`].
pub const CALLS_TOTAL: &str = "calls_total";
/// Histogram, seconds: duration of each attempt, to the end of the attempt
/// (the head, or the first body frame with `http`).
pub const CALL_DURATION_SECONDS: &str = "call_duration_seconds";
/// Counter, label [`KIND`]: requests answered with a generated error.
pub const ERRORS_TOTAL: &str = "errors_total";
/// Counter: retries started.
pub const RETRIES_TOTAL: &str = "retries_total";
/// Counter: retries the policy wanted but the retry budget refused.
pub const RETRY_BUDGET_EXHAUSTED_TOTAL: &str = "retry_budget_exhausted_total";
/// Counter: admission waits that hit the max wait (`WaitExceeded`).
pub const QUEUE_TIMEOUT_TOTAL: &str = "queue_timeout_total";
/// Counter: requests refused at once because the queue was full.
pub const QUEUE_FULL_TOTAL: &str = "queue_full_total";
/// Counter: attempt timeouts (not expiries capped by the SLA).
pub const CALL_TIMEOUT_TOTAL: &str = "call_timeout_total";
/// Histogram, seconds: wait for a concurrency permit, per attempt admitted
/// (zero waits included).
pub const SEMAPHORE_WAIT_SECONDS: &str = "semaphore_wait_seconds";
/// Histogram, seconds, label [`LIMITER`]: wait for a rate-limit token, per
/// limiter and attempt admitted (zero waits included).
pub const RATE_LIMIT_WAIT_SECONDS: &str = "rate_limit_wait_seconds";
/// Gauge: concurrency permits held now.
pub const CONCURRENT_CALLS: &str = "concurrent_calls";
/// Counter: requests failed by SlaTimeout's own deadline.
pub const SLA_EXPIRED_TOTAL: &str = "sla_expired_total";
/// Counter, label [`HOOK`]: completion hooks run inline, spawned, timed out
/// or skipped (no runtime).
pub const HOOKS_TOTAL: &str = "hooks_total";

/// Label key of [`CALLS_TOTAL`].
pub const OUTCOME: &str = "outcome";
/// Label key of [`ERRORS_TOTAL`]; values are [`ErrorKind::as_str`].
pub const KIND: &str = "kind";
/// Label key of [`RATE_LIMIT_WAIT_SECONDS`]; values are static limiter names.
pub const LIMITER: &str = "limiter";
/// Label key of [`HOOKS_TOTAL`].
pub const HOOK: &str = "hook";

/// Values of the [`OUTCOME`] label.
pub mod outcome {
    /// The attempt returned a response (below 400 with `http`).
    pub const SUCCESS: &str = "success";
    /// With `http`: the attempt returned a status of 400 or more.
    pub const HTTP_ERROR: &str = "http_error";
    /// The attempt timed out, by its own timeout or capped by the SLA.
    pub const TIMEOUT: &str = "timeout";
    /// The upstream service failed (connect error, I/O error, any error).
    pub const CONNECT_ERROR: &str = "connect_error";
    /// The attempt was dropped before it finished.
    pub const CANCELLED: &str = "cancelled";
    /// Every value, for registration.
    pub const ALL: [&str; 5] = [SUCCESS, HTTP_ERROR, TIMEOUT, CONNECT_ERROR, CANCELLED];
}

/// Values of the [`HOOK`] label, as ShieldedOnCancel's `HookStats` counts.
pub mod hook {
    /// The hook finished on its first poll, where the request finished.
    pub const INLINE: &str = "inline";
    /// The hook was handed to the runtime as a task.
    pub const SPAWNED: &str = "spawned";
    /// A spawned hook was cut by the hook timeout.
    pub const TIMED_OUT: &str = "timed_out";
    /// The hook could not run to the end for lack of a runtime.
    pub const SKIPPED: &str = "skipped";
    /// Every value, for registration.
    pub const ALL: [&str; 4] = [INLINE, SPAWNED, TIMED_OUT, SKIPPED];
}

/// Histogram buckets in seconds, 5 ms to 60 s, for every `_seconds` metric.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0,
];

static PREFIX: OnceLock<Box<str>> = OnceLock::new();

/// The prefix was already fixed, by an earlier [`set_prefix`] or by a first
/// use of [`prefix`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrefixAlreadySet {
    current: &'static str,
}

impl PrefixAlreadySet {
    /// The prefix in force.
    pub fn current(&self) -> &'static str {
        self.current
    }
}

impl std::fmt::Display for PrefixAlreadySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "metric prefix already set to {:?}", self.current)
    }
}

impl std::error::Error for PrefixAlreadySet {}

/// Sets the process-wide prefix, once, before any layer is built.
///
/// # Errors
///
/// [`PrefixAlreadySet`] when a prefix is already in force (set before, or
/// the default fixed by a first [`prefix`] call, which building a layer
/// makes).
pub fn set_prefix(prefix: &str) -> Result<(), PrefixAlreadySet> {
    let mut fresh = false;
    let current = PREFIX.get_or_init(|| {
        fresh = true;
        prefix.into()
    });
    if fresh {
        Ok(())
    } else {
        Err(PrefixAlreadySet { current })
    }
}

/// The prefix in force: [`DEFAULT_PREFIX`] unless [`set_prefix`] ran first.
/// The first call fixes it.
pub fn prefix() -> &'static str {
    PREFIX.get_or_init(|| DEFAULT_PREFIX.into())
}

/// The full name of a metric: [`prefix`] followed by `suffix`.
pub fn name(suffix: &str) -> String {
    let prefix = prefix();
    let mut name = String::with_capacity(prefix.len() + suffix.len());
    name.push_str(prefix);
    name.push_str(suffix);
    name
}

/// Resolves a counter handle on the current recorder.
pub fn counter(suffix: &str) -> Counter {
    metrics::counter!(name(suffix))
}

/// Resolves a counter handle with one label.
pub fn counter_with(suffix: &str, key: &'static str, value: &'static str) -> Counter {
    metrics::counter!(name(suffix), key => value)
}

/// Resolves a histogram handle on the current recorder.
pub fn histogram(suffix: &str) -> Histogram {
    metrics::histogram!(name(suffix))
}

/// Resolves a histogram handle with one label.
pub fn histogram_with(suffix: &str, key: &'static str, value: &'static str) -> Histogram {
    metrics::histogram!(name(suffix), key => value)
}

/// Resolves a gauge handle on the current recorder.
pub fn gauge(suffix: &str) -> Gauge {
    metrics::gauge!(name(suffix))
}

/// Describes every family (help text and unit) and registers every series
/// with a fixed label set (each outcome, each error kind, each hook result),
/// so a first scrape shows them all. Call once at start-up, after the
/// recorder is installed. Rate-limit series, labelled by limiter, register
/// when their layer is built.
pub fn describe_all() {
    let counters: [(&str, &'static str); 9] = [
        (
            CALLS_TOTAL,
            "Attempts that reached the upstream service, by outcome",
        ),
        (
            ERRORS_TOTAL,
            "Requests answered with a generated error, by kind",
        ),
        (RETRIES_TOTAL, "Retries started"),
        (
            RETRY_BUDGET_EXHAUSTED_TOTAL,
            "Retries refused by the retry budget",
        ),
        (
            QUEUE_TIMEOUT_TOTAL,
            "Admission waits that exceeded the max wait",
        ),
        (
            QUEUE_FULL_TOTAL,
            "Requests refused because the admission queue was full",
        ),
        (
            CALL_TIMEOUT_TOTAL,
            "Attempt timeouts (not capped by the SLA)",
        ),
        (SLA_EXPIRED_TOTAL, "Requests failed by their SLA deadline"),
        (
            HOOKS_TOTAL,
            "Completion hooks run inline, spawned, timed out or skipped",
        ),
    ];
    for (suffix, help) in counters {
        metrics::describe_counter!(name(suffix), Unit::Count, help);
    }
    let histograms: [(&str, &'static str); 3] = [
        (CALL_DURATION_SECONDS, "Duration of each attempt"),
        (
            SEMAPHORE_WAIT_SECONDS,
            "Wait for a concurrency permit, per attempt admitted",
        ),
        (
            RATE_LIMIT_WAIT_SECONDS,
            "Wait for a rate-limit token, per limiter and attempt admitted",
        ),
    ];
    for (suffix, help) in histograms {
        metrics::describe_histogram!(name(suffix), Unit::Seconds, help);
    }
    metrics::describe_gauge!(
        name(CONCURRENT_CALLS),
        Unit::Count,
        "Concurrency permits held now"
    );
    for value in outcome::ALL {
        let _ = counter_with(CALLS_TOTAL, OUTCOME, value);
    }
    for kind in ErrorCounters::KINDS {
        let _ = counter_with(ERRORS_TOTAL, KIND, kind.as_str());
    }
    for value in hook::ALL {
        let _ = counter_with(HOOKS_TOTAL, HOOK, value);
    }
    for suffix in [
        RETRIES_TOTAL,
        RETRY_BUDGET_EXHAUSTED_TOTAL,
        QUEUE_TIMEOUT_TOTAL,
        QUEUE_FULL_TOTAL,
        CALL_TIMEOUT_TOTAL,
        SLA_EXPIRED_TOTAL,
    ] {
        let _ = counter(suffix);
    }
    let _ = histogram(CALL_DURATION_SECONDS);
    let _ = histogram(SEMAPHORE_WAIT_SECONDS);
    let _ = gauge(CONCURRENT_CALLS);
}

/// [`ERRORS_TOTAL`] handles, one per [`ErrorKind`], resolved once: the
/// helper the HTTP mapping or the gateway uses to count each request it
/// answers with a generated error.
#[derive(Clone, Debug)]
pub struct ErrorCounters {
    counters: [Counter; 6],
}

impl ErrorCounters {
    const KINDS: [ErrorKind; 6] = [
        ErrorKind::Overloaded,
        ErrorKind::Timeout,
        ErrorKind::UpstreamFailure,
        ErrorKind::InvalidRequest,
        ErrorKind::Unauthorized,
        ErrorKind::Internal,
    ];

    /// Resolves the handles on the current recorder.
    pub fn new() -> Self {
        Self {
            counters: Self::KINDS.map(|kind| counter_with(ERRORS_TOTAL, KIND, kind.as_str())),
        }
    }

    /// Counts one request answered with a generated error of `kind`.
    pub fn record(&self, kind: ErrorKind) {
        let i = Self::KINDS.iter().position(|k| *k == kind).unwrap_or(5);
        self.counters[i].increment(1);
    }
}

impl Default for ErrorCounters {
    fn default() -> Self {
        Self::new()
    }
}
