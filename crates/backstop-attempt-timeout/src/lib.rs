//! Per-attempt timeout for tower services, capped by the SLA deadline:
//! [`AttemptTimeoutLayer`] bounds each attempt by min(now + timeout, SLA
//! deadline), publishes the attempt deadline to the service inside, and fails
//! with [`AttemptTimedOut`] (HTTP 502, retried) or, when the SLA is the
//! earlier bound, [`SlaExpired`] (HTTP 504, never retried).
//!
//! It sits innermost in the stack, right around the upstream service, so each
//! retry attempt gets a fresh timeout (DESIGN, "The stack").
//!
//! # Example
//!
//! ```
//! use backstop_attempt_timeout::AttemptTimeoutLayer;
//! use backstop_core::Context;
//! use std::time::Duration;
//! use tokio::time::Instant;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower::BoxError> {
//! let svc = ServiceBuilder::new()
//!     .layer(AttemptTimeoutLayer::new(Duration::from_secs(30))?)
//!     .service(service_fn(|n: u32| async move {
//!         // The upstream sees min(attempt timeout, what is left of the SLA).
//!         let deadline = Context::current().attempt_deadline();
//!         Ok::<_, tower::BoxError>((n, deadline))
//!     }));
//!
//! // An outer layer (SlaTimeout, the gateway) left 2 s of SLA.
//! let sla = Instant::now() + Duration::from_secs(2);
//! let (_, deadline) = Context::new()
//!     .with_sla_deadline(sla)
//!     .scope(svc.oneshot(1))
//!     .await?;
//! assert_eq!(deadline, Some(sla));
//! # Ok(())
//! # }
//! ```
//!
//! # Behaviour
//!
//! When [`AttemptTimeout::call`](tower_service::Service::call) runs, it
//! takes `now`, its own deadline `now + timeout` and the SLA deadline from the
//! [`Context`](backstop_core::Context), and arms a timer at the earlier one:
//!
//! - own deadline earlier: expiry fails with [`AttemptTimedOut::new`]`(timeout)`;
//! - SLA deadline at or before its own: expiry fails with [`SlaExpired`],
//!   never an attempt timeout (which would read as a 502 and be retried);
//! - armed deadline already at or before `now` (the SLA has passed): the
//!   future fails at once with [`SlaExpired`] and the inner service is
//!   **not** called.
//!
//! It publishes `now + timeout` with
//! [`Context::with_attempt_deadline`](backstop_core::Context::with_attempt_deadline)
//! around the inner `call()` and every poll (and the drop) of the inner
//! future; [`Context::attempt_deadline`](backstop_core::Context::attempt_deadline)
//! reads it back capped by the SLA, so the upstream sees exactly the instant
//! the timer is armed at. The future polls the inner future first, then the
//! timer: a response ready at the deadline wins.
//!
//! ## HTTP (feature `http`)
//!
//! [`AttemptTimeoutLayer::for_http`] changes the type to
//! [`HttpAttemptTimeoutLayer`], for services from `http::Request<B>` to
//! `http::Response<ResB>` (with `ResB: Body + Unpin`). Following DESIGN,
//! "Deadlines and their errors", an attempt is complete when the response
//! head **and** the first body frame have arrived:
//!
//! 1. the head is bounded by the armed deadline above;
//! 2. then the future polls the body for its first frame, bounded by
//!    min(attempt start + `first_byte_timeout`, SLA deadline); expiry is
//!    [`AttemptTimedOut::first_byte`] or, SLA-capped, [`SlaExpired`]. A body
//!    that ends before any frame resolves at once (empty body); a body error
//!    before the first frame fails the attempt (`Err`), so `Retry` sees it;
//! 3. the response's body is a [`body::ResponseBody`]: the buffered first
//!    frame, then the inner frames byte for byte, with an idle timeout
//!    between frames and a maximum stream duration from the attempt's start,
//!    both failing with
//!    [`StreamTimedOut`](backstop_core::StreamTimedOut) and **not** bounded
//!    by the SLA.
//!
//! The maximum stream duration only fires while the body is polled: a client
//! that stops reading stops the polls. The server must enforce the maximum
//! itself for such clients (a timer outside the body that drops the
//! connection; the gateway's job).
//!
//! # Errors
//!
//! The error type is [`BoxError`]: the inner service's error, converted, or
//!
//! | error | [`ErrorKind`](backstop_core::ErrorKind) | HTTP | when |
//! |---|---|---|---|
//! | [`AttemptTimedOut`] | `UpstreamFailure` | 502 | own deadline first (head, or first byte with `http`) |
//! | [`SlaExpired`] | `Timeout` | 504 | SLA deadline at or before own deadline |
//! | [`StreamTimedOut`](backstop_core::StreamTimedOut) | `Timeout` | (body error) | idle or maximum duration, from the body |
//!
//! `poll_ready` passes the inner readiness through.
//!
//! # Cancellation
//!
//! Dropping a response future drops the inner future (inside its context
//! scope), or for HTTP the response head and body awaiting the first frame,
//! and the timer. Dropping a [`body::ResponseBody`] drops the inner body and
//! its timers. Nothing else is held.
//!
//! # Clone and shared state
//!
//! The services hold only the inner service and their timeouts; every
//! deadline is per call. Clones behave the same and share nothing.
//!
//! # Hot path
//!
//! No spawn, no lock, and no allocation on the success path: the timers are
//! pinned `Sleep`s inside the future and the body, and the first frame is
//! buffered inline. [`SlaExpired`] is zero-sized; an [`AttemptTimedOut`] or
//! [`StreamTimedOut`](backstop_core::StreamTimedOut) error is boxed (one
//! small allocation, on the failure path only).
//!
//! # Observability
//!
//! `tracing` events at debug level, with the context's request id and
//! attempt: `calling upstream` (timeout, capped by SLA), then one of
//! `upstream attempt succeeded`, `upstream answered with an http error`
//! (status), `upstream attempt timed out`, `upstream attempt failed`,
//! `upstream attempt cancelled` (duration). No header, body or error
//! payload is logged.
//!
//! With the `metrics` feature, per attempt that reached the inner service
//! (an already-passed SLA counts nothing), names from
//! `backstop_core::metrics`:
//!
//! - `llm_calls_total{outcome}`: `success`; `http_error` (with `http`, a
//!   status of 400 or more); `timeout` (an attempt timeout, or an expiry
//!   capped by the SLA); `connect_error` (the inner service or the body
//!   before its first frame failed); `cancelled` (the future was dropped
//!   first);
//! - `llm_call_duration_seconds`: one sample per attempt counted above, to
//!   the end of the attempt (the head, or the first frame with `http`);
//! - `llm_call_timeout_total`: attempt timeouts only, not SLA-capped ones.
//!
//! The handles are resolved when the layer wraps a service
//! (`Layer::layer`), on the recorder installed then: install the recorder
//! before building the stack. Each event is then one atomic operation (a
//! no-op with no recorder); the future holds one `Arc` to the handles.
//!
//! # Panics
//!
//! Like `tower::timeout::Timeout`, `call` creates a tokio timer, so it must
//! run inside a tokio runtime with the time driver enabled.
//!
//! # Differences from `tower::timeout`
//!
//! - The timer is capped by the SLA deadline from the
//!   [`Context`](backstop_core::Context), and an SLA-capped expiry is
//!   [`SlaExpired`] (504), not an attempt timeout; an already-passed SLA
//!   fails without calling the inner service.
//! - The attempt deadline is published to the inner service through the
//!   context.
//! - Errors are backstop's, classified by [`backstop_core::classify`],
//!   instead of `tower::timeout::error::Elapsed`.
//! - With `http`, the attempt includes the first body frame, and the body is
//!   bounded by idle and maximum-duration timeouts; `Timeout` stops at the
//!   response head.
//! - Construction is fallible: zero or over 24 h is a
//!   [`ConfigError`](backstop_core::ConfigError) naming the setting.
//!
//! # Feature flags
//!
//! - `http`: [`AttemptTimeoutLayer::for_http`], [`HttpAttemptTimeoutLayer`],
//!   [`HttpAttemptTimeout`], [`future::HttpResponseFuture`] and
//!   [`body::ResponseBody`]. It adds types; [`AttemptTimeout`] behaves the
//!   same with or without it.
//! - `metrics`: emits the metrics above; behaviour is unchanged.
#![cfg_attr(docsrs, feature(doc_cfg))]
// The docs link the `http` items, which exist only with the feature.
#![cfg_attr(not(feature = "http"), allow(rustdoc::broken_intra_doc_links))]

pub mod future;
mod layer;
mod obs;
mod service;

#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub mod body;
#[cfg(feature = "http")]
mod http;

pub use crate::layer::AttemptTimeoutLayer;
pub use crate::service::AttemptTimeout;
pub use backstop_core::{AttemptTimedOut, BoxError, SlaExpired};

#[cfg(feature = "http")]
pub use crate::http::{HttpAttemptTimeout, HttpAttemptTimeoutLayer};

#[cfg(all(test, feature = "http"))]
mod http_tests;
#[cfg(all(test, feature = "metrics"))]
mod metrics_tests;
#[cfg(test)]
mod tests;
