#![doc = include_str!("../docs/overview.md")]
#![doc = include_str!("../docs/ordering.md")]
//!
//! # Feature flags
//!
//! | feature | adds |
//! |---|---|
//! | `sla` | [`sla`]: `SlaTimeoutLayer` |
//! | `attempt-timeout` | [`attempt_timeout`]: `AttemptTimeoutLayer` |
//! | `shield` | [`shield`]: `ShieldedOnCancelLayer` |
//! | `admission` | [`admission`]: `QueueAdmissionLayer` |
//! | `rate-limit` | [`rate_limit`]: `RateLimitLayer` |
//! | `concurrency` | [`concurrency`]: `ConcurrencyLimitLayer` |
//! | `retry` | [`retry`]: `RetryLayer` |
//! | `full` | all of the above |
//! | `metrics` | each enabled layer emits DESIGN's metrics through the `metrics` facade (install the recorder before building the layers) |
//! | `http` | the HTTP variants of each enabled layer, and [`http`] (error mapping, `X-Request-ID`, context into extensions) |
//!
//! Features only add: turning one on never changes what an existing type
//! does.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod builder;

pub use crate::builder::{ServiceBuilderExt, slot};

pub use backstop_core::{
    Attempt, AttemptTimedOut, BoxError, ConfigError, Context, CostOverBurst, ErrorKind,
    OverloadReason, Overloaded, RequestId, SetRequestId, SetRequestIdLayer, SlaExpired,
    StreamTimedOut, StreamTimeout, admission as ticket, classify, find,
};

/// The HTTP mapping, `X-Request-ID` rules and context propagation.
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub use backstop_core::http;

/// `SlaTimeoutLayer`: the end-to-end deadline.
#[cfg(feature = "sla")]
#[cfg_attr(docsrs, doc(cfg(feature = "sla")))]
pub use backstop_sla as sla;

/// `AttemptTimeoutLayer`: the per-attempt timeout, capped by the SLA.
#[cfg(feature = "attempt-timeout")]
#[cfg_attr(docsrs, doc(cfg(feature = "attempt-timeout")))]
pub use backstop_attempt_timeout as attempt_timeout;

/// `ShieldedOnCancelLayer`: completion hooks that survive cancellation.
#[cfg(feature = "shield")]
#[cfg_attr(docsrs, doc(cfg(feature = "shield")))]
pub use backstop_shield as shield;

/// `QueueAdmissionLayer`: bounded admission wait and queue.
#[cfg(feature = "admission")]
#[cfg_attr(docsrs, doc(cfg(feature = "admission")))]
pub use backstop_admission as admission;

/// `RateLimitLayer`: GCRA, weighted, keyed, behind a store trait.
#[cfg(feature = "rate-limit")]
#[cfg_attr(docsrs, doc(cfg(feature = "rate-limit")))]
pub use backstop_rate_limit as rate_limit;

/// `ConcurrencyLimitLayer`: a shared FIFO permit limit.
#[cfg(feature = "concurrency")]
#[cfg_attr(docsrs, doc(cfg(feature = "concurrency")))]
pub use backstop_concurrency as concurrency;

/// `RetryLayer`: deadline-aware retries paid from a budget.
#[cfg(feature = "retry")]
#[cfg_attr(docsrs, doc(cfg(feature = "retry")))]
pub use backstop_retry as retry;
