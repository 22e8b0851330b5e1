//! End-to-end SLA deadline for tower services: [`SlaTimeoutLayer`] gives every
//! request a deadline, publishes it to the layers inside, and fails the request
//! with [`SlaExpired`] (HTTP 504) when it passes.
//!
//! # Example
//!
//! ```
//! use backstop_core::Context;
//! use backstop_sla::SlaTimeoutLayer;
//! use std::time::Duration;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower::BoxError> {
//! let svc = ServiceBuilder::new()
//!     .layer(SlaTimeoutLayer::new(Duration::from_secs(5))?)
//!     .service(service_fn(|n: u32| async move {
//!         // Layers and services inside see the deadline.
//!         let deadline = Context::current().sla_deadline();
//!         Ok::<_, tower::BoxError>((n * 2, deadline.is_some()))
//!     }));
//!
//! assert_eq!(svc.oneshot(21).await?, (42, true));
//! # Ok(())
//! # }
//! ```
//!
//! # Behaviour
//!
//! When [`SlaTimeout::call`](tower_service::Service::call) runs, it takes
//! `now` and the deadline min(outer SLA deadline, now + timeout): an outer
//! layer (the gateway, which starts the clock when the request head arrives,
//! or another `SlaTimeout`) can only shorten it. Then:
//!
//! - if the deadline is already at or before `now`, the returned future fails
//!   with [`SlaExpired`] on its first poll and the inner service is **not**
//!   called;
//! - otherwise the deadline is published with
//!   [`Context::with_sla_deadline`](backstop_core::Context::with_sla_deadline),
//!   scoped around the inner `call()` and every poll (and the drop) of the
//!   inner future, so `Retry`, `QueueAdmission`, the limiters and
//!   `AttemptTimeout` inside see it.
//!
//! The future polls the inner future first, then a timer armed at the
//! deadline: it fails at the first timer tick at or after the deadline, and a
//! response that is ready at the same poll wins.
//!
//! The SLA bounds the response future only. For HTTP, that is the response
//! head (and, with `AttemptTimeout`'s `http` mode inside, the first body
//! frame); the rest of a streaming body is bounded by `AttemptTimeout`'s idle
//! and maximum-duration timeouts, not by the SLA (DESIGN, "Deadlines and
//! their errors").
//!
//! # Errors
//!
//! The service's error is [`BoxError`]: the inner service's error, converted,
//! or [`SlaExpired`] ([`ErrorKind::Timeout`](backstop_core::ErrorKind),
//! HTTP 504, never retried). `poll_ready` passes the inner readiness through.
//!
//! # Cancellation
//!
//! Dropping the response future at any point drops the inner future (inside
//! the context scope) and the timer; nothing else is held.
//!
//! # Clone and shared state
//!
//! `SlaTimeout` holds only its inner service and the timeout; the deadline is
//! per request, taken in `call`. Clones behave the same and share nothing.
//!
//! # Hot path
//!
//! No spawn, no lock, no allocation: the timer lives inline in the response
//! future (pinned `Sleep`), and reading the context clones two reference
//! counts at most. [`SlaExpired`] is zero-sized, so boxing it allocates
//! nothing either.
//!
//! # Observability
//!
//! Each request failed by its SLA deadline (this layer's timer, a deadline
//! already passed at `call`, or an inner layer's [`SlaExpired`]) logs a
//! `tracing` warning, `sla deadline exceeded`, with the context's request
//! id, and with the `metrics` feature counts `llm_sla_expired_total` (name
//! from `backstop_core::metrics`). The handle is resolved when the layer
//! wraps a service: install the recorder before building the stack.
//!
//! # Panics
//!
//! Like `tower::timeout::Timeout`, `call` creates a tokio timer, so it must
//! run inside a tokio runtime with the time driver enabled.
//!
//! # Differences from `tower::timeout`
//!
//! - The deadline is end to end: it combines with an outer deadline (the
//!   minimum wins) and is published through the
//!   [`Context`](backstop_core::Context) so inner layers can cap their own
//!   waits and attempts by it; `tower::timeout::Timeout` knows nothing outside
//!   itself.
//! - An already-expired deadline fails at once without calling the inner
//!   service; `Timeout` always calls it.
//! - The error is [`SlaExpired`], classified as a timeout (504) by
//!   [`backstop_core::classify`], instead of `tower::timeout::error::Elapsed`.
//! - Construction is fallible: a zero timeout or one over 24 h is a
//!   [`ConfigError`](backstop_core::ConfigError) naming `timeout`; [`Default`]
//!   gives 60 s.
//!
//! # Feature flags
//!
//! - `http`: reserved for symmetry with the other layer crates; it adds no
//!   behaviour today (the SLA bounds the response future for any request
//!   type).
//! - `metrics`: counts SLA expiries; behaviour is unchanged.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod future;
mod layer;
mod obs;
mod service;

pub use crate::layer::SlaTimeoutLayer;
pub use crate::service::SlaTimeout;
pub use backstop_core::{BoxError, SlaExpired};

#[cfg(all(test, feature = "metrics"))]
mod metrics_tests;
#[cfg(test)]
mod tests;
