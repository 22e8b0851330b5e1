//! Bounded admission queue for tower services: bounds the wait, not the call.
//!
//! [`QueueAdmissionLayer`] sits outside the limiters (rate limits, a
//! concurrency limit) and bounds two things: how many requests may wait for
//! admission at once (`max_waiting`, default 80) and how long each may wait
//! (`max_wait`, default 5 s). It does not wait itself: the limiters inside
//! wait in their response futures, bounded by the admission deadline of the
//! ticket it hands them. Once the
//! last limiter admits a request, the request leaves the queue and its call is
//! bounded by nothing here (use an attempt timeout or an SLA timeout for that).
//!
//! # Example
//!
//! ```
//! use backstop_admission::QueueAdmissionLayer;
//! use tokio::time::Duration;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower::BoxError> {
//! let admission = QueueAdmissionLayer::builder()
//!     .max_waiting(256)
//!     .max_wait(Duration::from_secs(5))
//!     .retry_after(Duration::from_secs(1))
//!     .build()?;
//! let queue = admission.queue(); // for readiness and metrics
//!
//! let svc = ServiceBuilder::new()
//!     .layer(admission)
//!     // ... rate limits and a concurrency limit go here ...
//!     .service(service_fn(|n: u32| async move { Ok::<_, tower::BoxError>(n * 2) }));
//!
//! assert_eq!(svc.oneshot(21).await?, 42);
//! assert_eq!(queue.depth(), 0);
//! assert!(!queue.is_full());
//! # Ok(())
//! # }
//! ```
//!
//! # Behaviour
//!
//! In `call`, [`QueueAdmission`] takes a queue slot. If all `max_waiting`
//! slots are taken, the future fails on its first poll with
//! `Overloaded(QueueFull)` and the inner service is not called. Otherwise the
//! slot becomes an [`AdmissionTicket`](backstop_core::AdmissionTicket) whose
//! deadline is `min(now + max_wait, SLA deadline)`, offered to the limiters
//! inside for the length of the inner `call()`.
//! `poll_ready` is the inner service's: the backstop limiters are always
//! ready (they wait in their futures); a limiter that waits in `poll_ready`
//! instead (tower's own) would wait there unbounded and uncounted.
//!
//! ## The ticket protocol
//!
//! The ticket *is* the slot, held by one owner at a time and moved inward. A
//! ticket-aware limiter (`backstop-rate-limit`, `backstop-concurrency`)
//! takes the offered ticket synchronously in its `call()`, keeps it in its
//! future while it waits, and offers it on around its own inner `call()`
//! once it admits the request; a limiter inside takes it in turn. Whoever
//! holds it when nobody inside takes it frees the slot by dropping it: right
//! after the last limiter's inner `call()`, or right after this layer's inner
//! `call()` if no ticket-aware limiter sits inside. A dropped future drops
//! the ticket it holds. So the slot is freed exactly once, and `max_waiting`
//! counts each request once, from entering admission until the last limiter
//! admits it, however many limiters are composed and in whatever order
//! (limiters run one inside the other, so at most one waits at a time).
//!
//! The offer lasts for the inner `call()` only: a limiter that some layer in
//! between calls later (from a poll) sees no ticket, waits bounded by the SLA
//! deadline alone and is not counted here.
//!
//! Only the waiting limiter enforces the admission deadline; it counts each
//! `Overloaded(WaitExceeded)` on the ticket's queue, which this layer reports
//! ([`QueueHandle::wait_timeouts`]). When the SLA deadline is at or before
//! `now + max_wait`, the ticket's deadline *is* the SLA deadline and a wait
//! that reaches it fails with `SlaExpired` (504), never `WaitExceeded`. A
//! `max_wait` of zero means never wait: a limiter that finds no capacity free
//! fails at once.
//!
//! [`QueueHandle`] (from [`QueueAdmissionLayer::queue`] or
//! [`QueueAdmission::queue`]) reads the live depth, the capacity, whether the
//! queue is full, and the two counters.
//!
//! # Errors
//!
//! The error type is [`BoxError`]. This layer adds:
//!
//! | error | when | `ErrorKind` | status |
//! |---|---|---|---|
//! | [`Overloaded`] (`QueueFull`) with `retry_after` | over `max_waiting`, at once | `Overloaded` | 429 |
//!
//! and counts each `Overloaded` (`WaitExceeded`, with `retry_after`) that a
//! limiter inside produces on its ticket; a wait that reaches an admission
//! deadline equal to the SLA deadline is
//! [`SlaExpired`](backstop_core::SlaExpired) instead, uncounted. Inner errors
//! pass through unchanged (boxed).
//!
//! # Cancellation
//!
//! Dropping the response future drops the limiter future inside that still
//! holds the ticket, if any, which frees the queue slot, exactly once. See
//! [`future::ResponseFuture`].
//!
//! # Clone and shared state
//!
//! One layer value is one queue: the layer creates one shared counter
//! ([`QueueSlots`](backstop_core::QueueSlots)) and every service it builds,
//! and every clone of those (axum clones per request), counts against it. Two
//! layer values are two queues; clone the layer to share one.
//!
//! # Allocation
//!
//! None per admitted request: the ticket is the slot counter's `Arc` and a
//! deadline, moved by value; the fast path costs one compare-and-swap to take
//! the slot, one subtraction to free it, and one reference-count increment
//! and decrement. A refused request allocates its boxed error. No lock, no
//! spawn.
//!
//! # Differences from tower
//!
//! tower has no admission queue. Its nearest pieces are
//! `tower::buffer::Buffer`, whose bounded channel makes callers wait in
//! `poll_ready` (unbounded in time, one worker task, the request context and
//! error types lost), and `tower::load_shed::LoadShed`, which refuses at once
//! whenever the inner service is not ready (no waiting at all). QueueAdmission
//! bounds both the number of waiters and their wait, waits in the limiters'
//! response futures (no task, no channel), keeps error types and the context,
//! and counts each waiting request once however many limiters it passes.
//!
//! # Observability
//!
//! `tracing` debug events with the context's request id and attempt:
//! `admission queue full` and `admission wait exceeded`. With the `metrics`
//! feature (names from `backstop_core::metrics`): `llm_queue_timeout_total`
//! counts each `WaitExceeded` a limiter inside returned, and
//! `llm_queue_full_total` each request refused with `QueueFull`. The
//! handles are resolved when the layer is built ([`QueueAdmissionBuilder::build`]
//! or `Default`): install the recorder first. The queue depth is
//! [`QueueHandle::depth`], for a gauge read at scrape time.
//!
//! # Feature flags
//!
//! - `http`: nothing of this crate changes; it enables `backstop-core/http`
//!   for users who build their stack with the HTTP error mapping.
//! - `metrics`: emits the metrics above; behaviour is unchanged.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod future;
mod layer;
mod obs;
mod service;

#[cfg(all(test, feature = "metrics"))]
mod metrics_tests;

pub use crate::layer::{
    DEFAULT_MAX_WAIT, DEFAULT_MAX_WAITING, DEFAULT_RETRY_AFTER, QueueAdmissionBuilder,
    QueueAdmissionLayer, QueueHandle,
};
pub use crate::service::QueueAdmission;
pub use backstop_core::{BoxError, ConfigError, OverloadReason, Overloaded};
