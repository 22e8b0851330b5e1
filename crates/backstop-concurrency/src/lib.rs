//! Concurrency limit for tower services: shared across clones, FIFO, permit
//! held until the response (or, with `http`, its body) ends.
//!
//! # Example
//!
//! ```
//! use backstop_concurrency::ConcurrencyLimitLayer;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower::BoxError> {
//! let limit = ConcurrencyLimitLayer::new(16)?;
//! let handle = limit.handle(); // for readiness and metrics
//!
//! let svc = ServiceBuilder::new()
//!     .layer(limit)
//!     .service(service_fn(|n: u32| async move { Ok::<_, tower::BoxError>(n * 2) }));
//!
//! // Clones (axum makes one per request) share the one limit.
//! let other = svc.clone();
//! assert_eq!(svc.oneshot(21).await?, 42);
//! assert_eq!(other.oneshot(1).await?, 2);
//! assert_eq!(handle.in_flight(), 0);
//! assert_eq!(handle.available_permits(), 16);
//! # Ok(())
//! # }
//! ```
//!
//! # Behaviour
//!
//! [`ConcurrencyLimit`] owns no permit and reserves nothing in `poll_ready`,
//! which is always ready. Its `call` takes the request's admission ticket
//! (if a `QueueAdmission` layer outside offers one).
//!
//! - **Fast path:** when a permit is free and nobody waits (one
//!   compare-and-swap: no allocation, no lock, no timer, no clock read) and
//!   the inner service answers `poll_ready` with `Ready` at once (asked with
//!   a waker that does nothing), `call` calls the inner service itself, with
//!   the ticket offered on, and the [`future::ResponseFuture`] only drives
//!   the inner future, holding the permit. No clone of the inner service is
//!   made.
//! - **Otherwise** (holding the permit already if one was free), `call`
//!   clones the inner service and returns a [`future::ResponseFuture`] that:
//!
//!    1. takes a permit at once if one is free and nobody waits (one
//!       compare-and-swap: no allocation, no lock, no timer, no clock read),
//!       else queues for one, first come first served,
//!       until the wait deadline: the admission ticket's deadline, else the SLA
//!       deadline, else no bound. A deadline already reached fails at once
//!       without waiting (a `max_wait` of 0 never waits).
//!    2. drives `ready()` and `call()` on its own clone of the inner service
//!       (bounded by the same deadline while not ready), with the request
//!       context captured at `call` time in scope, and the admission ticket
//!       offered on to the limiters inside: if none takes it, the request leaves
//!       the admission queue right after the inner `call()` returns.
//!    3. polls the inner future to completion, holding the permit. The wait
//!       deadline never bounds the call itself.
//!
//! By default the permit is released when the response future completes. With
//! the `http` feature,
//! [`ConcurrencyLimitLayer::release_at_body_end`] changes the service's
//! response to `http::Response<body::ResponseBody<B>>`, and the permit is
//! released on the frame that ends the body, on a body error, or when the
//! body is dropped: a streaming (SSE) response keeps its permit while it
//! streams.
//!
//! [`ConcurrencyHandle`] (from [`ConcurrencyLimitLayer::handle`] or
//! [`ConcurrencyLimit::handle`]) reads the available permits, the in-flight
//! count and the maximum.
//!
//! # Errors
//!
//! The error type is [`BoxError`]. Waiting past the deadline fails with
//! [`WaitDeadline::expired`](backstop_core::WaitDeadline::expired):
//!
//! | error | when | `ErrorKind` | status |
//! |---|---|---|---|
//! | `Overloaded` (`WaitExceeded`) with the queue's `retry_after` | the admission `max_wait` was reached | `Overloaded` | 429 |
//! | [`SlaExpired`](backstop_core::SlaExpired) | the wait reached the SLA deadline (also when it is the admission deadline) | `Timeout` | 504 |
//!
//! Errors of the inner service pass through, boxed.
//!
//! # Cancellation
//!
//! Dropping a response future at any point (queued, waiting for readiness,
//! calling) releases what it holds: its place in the wait list, the permit,
//! the timer and its admission ticket (freeing the queue slot); no other waiter is
//! skipped. Dropping a [`body::ResponseBody`] releases its permit.
//!
//! # Clone and shared state
//!
//! One layer value is one limit: the layer creates one shared semaphore
//! (fair, FIFO) and every service it builds, and every clone of those,
//! shares it. Two layer values are two limits. The
//! inner service must be `Clone` (DESIGN contract 2): each response future
//! that has to wait drives its own clone.
//!
//! # Allocation
//!
//! Uncontended: none beyond the inner call (reference-count increments for
//! the permit and the context). Contended: one box per waiting request,
//! holding its wait-list entry, the instant the wait started (for the wait
//! metric) and, when a deadline applies, its timer ([`tokio::time::Sleep`]),
//! boxed so that the uncontended future carries none of it; plus the
//! growth of the shared wait list. No spawn.
//!
//! The semaphore is the crate's own, not tokio's: one atomic word holds the
//! free permits and a "someone waits" bit, and a mutex guards a FIFO wait
//! list used only while requests wait. Taking a free permit is one
//! compare-and-swap that fails while anyone waits (so a newcomer never
//! barges past a queued request), and releasing one is one compare-and-swap
//! when nobody waits, without the lock tokio's semaphore (and so tower's
//! `ConcurrencyLimit`) takes on every release. A permit released while
//! requests wait goes straight to the first of them. A request dropped
//! while queued is marked in the list and skipped (O(1)); one dropped after
//! a permit was handed to it, but before it took it, passes the permit on
//! to the next waiter.
//!
//! The wait deadline is read from the context captured at `call` time only
//! once the future must wait (no permit free, or the inner service not
//! ready), so the uncontended future does not carry it.
//!
//! When `call` runs outside any context scope, there is nothing to restore,
//! so the response future skips the scope (a thread-local set and reset per
//! poll).
//!
//! # Differences from `tower::limit::ConcurrencyLimit`
//!
//! - **No reservation in `poll_ready`.** tower's takes the permit in
//!   `poll_ready` and its `call` panics if `poll_ready` was not called; a
//!   service that was made ready and then not called holds a permit. Ours
//!   waits in the response future, bounded by the admission deadline, and
//!   `call` never panics.
//! - **Shared across clones.** tower's `ConcurrencyLimit` shares its
//!   semaphore across clones too, but each clone may hold a permit reserved
//!   by `poll_ready`, and its wait cannot be bounded or counted. No `Buffer`
//!   is needed in front of ours for axum (a `Buffer` would also erase error
//!   types and lose the request context).
//! - **Per-body release.** tower releases the permit when the response head
//!   arrives, while an SSE body may stream for minutes; with `http`, ours
//!   holds it until the body ends.
//! - **Admission aware.** The wait counts against a `QueueAdmission` slot
//!   and fails with `WaitExceeded` or `SlaExpired`, never hangs past it.
//!
//! # Observability
//!
//! `tracing` debug events with the context's request id and attempt:
//! `acquiring concurrency permit` (free permits) in `call`, and on the
//! contended path `waiting for a concurrency permit` and `concurrency permit
//! acquired after waiting` (wait).
//!
//! With the `metrics` feature (names from `backstop_core::metrics`):
//! `llm_semaphore_wait_seconds`, one sample per permit acquired, a zero for
//! each permit taken without waiting (the fast path reads no clock); and the
//! `llm_concurrent_calls` gauge, incremented when a permit is taken and
//! decremented when it is released (so with `http`, at body end). A wait
//! that ends without a permit (deadline, drop) records no sample. The
//! handles are resolved in [`ConcurrencyLimitLayer::new`]: install the
//! recorder first. Each event is one atomic operation; the handles live in
//! the limit's shared semaphore, so neither a request nor a permit holds a
//! reference count of its own for them.
//!
//! # Feature flags
//!
//! - `http`: [`ConcurrencyLimitLayer::release_at_body_end`],
//!   [`body::ResponseBody`] and [`body::ReleaseAtBodyEnd`].
//! - `metrics`: emits the metrics above; behaviour is unchanged.
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub mod body;
pub mod future;
mod layer;
mod obs;
mod sem;
mod service;

#[cfg(all(test, feature = "metrics"))]
mod metrics_tests;

pub use crate::layer::{
    ConcurrencyHandle, ConcurrencyLimitLayer, Permit, ReleaseOnCompletion, ReleasePolicy,
};
pub use crate::service::ConcurrencyLimit;
pub use backstop_core::{BoxError, ConfigError};
