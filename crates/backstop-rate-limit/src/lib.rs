//! GCRA rate limiting for tower services: shared across clones, weighted,
//! keyed, waiting transparently within the admission deadline.
//!
//! # Example
//!
//! ```
//! use backstop_rate_limit::RateLimitLayer;
//! use tokio::time::{Duration, Instant};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), tower::BoxError> {
//! // 600 requests a minute, 2 at once from idle.
//! let rpm = RateLimitLayer::per_minute(600).burst(2).name("rpm").build()?;
//! let svc = ServiceBuilder::new()
//!     .layer(rpm)
//!     .service(service_fn(|n: u32| async move { Ok::<_, tower::BoxError>(n * 2) }));
//!
//! let start = Instant::now();
//! for n in 0..3 {
//!     // Each clone shares the one limiter, as axum's per-request clones do.
//!     assert_eq!(svc.clone().oneshot(n).await?, n * 2);
//! }
//! // The third request waited for its token: 600/min is one per 100 ms.
//! assert_eq!(Instant::now() - start, Duration::from_millis(100));
//! # Ok(())
//! # }
//! ```
//!
//! Two quotas are two layers, e.g. requests and tokens per minute, each
//! weighed and keyed as it needs:
//!
//! ```
//! use backstop_rate_limit::RateLimitLayer;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! struct Completion { client: String, max_tokens: u64 }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower::BoxError> {
//! let per_client_rpm = RateLimitLayer::per_minute(60)
//!     .keyed_by(|req: &Completion| req.client.clone())
//!     .name("client_rpm")
//!     .build()?;
//! let tpm = RateLimitLayer::per_minute(90_000)
//!     .burst(20_000)
//!     .cost_fn(|req: &Completion| req.max_tokens)
//!     .name("tpm")
//!     .build()?;
//! let svc = ServiceBuilder::new()
//!     .layer(per_client_rpm)
//!     .layer(tpm)
//!     .service(service_fn(|req: Completion| async move {
//!         Ok::<_, tower::BoxError>(req.max_tokens)
//!     }));
//! let req = Completion { client: "acme".into(), max_tokens: 512 };
//! assert_eq!(svc.oneshot(req).await?, 512);
//! # Ok(())
//! # }
//! ```
//!
//! # Behaviour
//!
//! The limiter is GCRA, the generic cell rate algorithm: a token bucket
//! kept as one number. A quota of `rate` units per `period` gives each unit an
//! emission interval `T = period / rate`, and a burst of `b` units gives a
//! tolerance `τ = b × T`. The state is the theoretical arrival time `TAT`: the
//! instant at which the limiter would be idle again. A request of cost `c`
//! arriving at `now` moves it to `TAT' = max(TAT, now) + c × T` and conforms
//! at `TAT' − τ`. From idle, `b` units conform at once; after that one unit
//! per `T`. Over any window of length `w` the admitted cost is at most
//! `rate × w + b` units, and a saturated limiter admits at least `rate × w`
//! less one request's cost. Increments are whole nanoseconds rounded up, so
//! rounding never admits more than the rate. Time is tokio time, so tests on
//! paused time are exact.
//!
//! - **Waiting.** `poll_ready` is always ready and reserves nothing. `call`
//!   reads the request's [`Context`](backstop_core::Context) and asks the
//!   store, which commits the reservation (a store that can only answer
//!   with a future is asked on the future's first poll). A request that
//!   conforms now, over an inner service that is ready now, is called right
//!   there in `call()`, and its future holds only the inner future. Any
//!   other response future sleeps until the conforming instant, then drives
//!   `ready()` and `call()` on its own clone of the inner service (so
//!   `S: Clone`).
//! - **Deadlines.** The wait is bounded by the wait deadline: the admission
//!   ticket's deadline when `QueueAdmission` offered one, else the context's
//!   SLA deadline, else unbounded. The limiter never sleeps to fail: when the
//!   conforming instant lies past that deadline, the request fails at once
//!   (its future's first poll) with `Overloaded(RateLimited)`, `retry_after` = time to the
//!   conforming instant, and nothing is reserved. This holds whichever bound
//!   the deadline stands for: a request that cannot fit its SLA because of the
//!   rate is rate limited (429, retryable), not timed out. A conforming
//!   instant exactly at the deadline is admitted.
//! - **Weighted.** [`RateLimitBuilder::cost_fn`] weighs a request. Cost 0
//!   passes without touching the store; a cost above the burst fails at once
//!   with [`CostOverBurst`] and is never queued.
//! - **Keyed.** [`RateLimitBuilder::keyed_by`] gives each key its own limit in
//!   a [`KeyedGcraStore`]: idle keys are evicted first when `max_keys`
//!   (default 100,000) is reached; a known key is never rejected; a new key
//!   arriving while every tracked key is busy is rejected as
//!   `Overloaded(RateLimited)` until the first one idles (forgetting a busy
//!   key would let it burst again).
//! - **Admission tickets.** When `QueueAdmission` (or a limiter outside)
//!   offers a ticket, `call` takes it synchronously (cost 0 included) and
//!   offers it on around its own inner `call()` (in `call()` itself, or
//!   later from the future): a limiter inside takes it in turn, else the
//!   request leaves the queue right then. So `QueueAdmission` counts the
//!   request while it waits here.
//!
//! # Reserve and settle
//!
//! Once the inner service is called the reserved cost is spent. When the true
//! cost is only known from the response (tokens used), the reservation can be
//! settled: [`RateLimitLayer::attach_reservation`] hands each response's
//! [`Reservation`] to a closure, and with the `http` feature
//! [`RateLimitLayer::reservation_in_extensions`] puts it in the response
//! extensions. [`Reservation::settle`] refunds or charges the difference,
//! [`Reservation::refund`] gives it all back (e.g. no 2xx arrived). If nobody
//! settles, the reserved cost stands.
//!
//! Refunds (settle below the reservation, a dropped waiter, an inner
//! `Overloaded`) give back the part of the reservation that still lies ahead:
//! a reservation occupies a stretch of the limiter's schedule, and the refund
//! frees as much of it as has not yet passed, moving every later reservation
//! up to fill the gap. So refunds stay exact under load, whatever was reserved
//! after them, and a refund that comes after its reservation's stretch has
//! passed gives nothing back (that time is spent either way: handing it to a
//! new request would admit it alongside requests that already conformed and
//! break the burst bound). With the default burst of a tokens-per-minute
//! limit (a full minute), a request refunds in full whenever it settles
//! within a minute of a busy limiter's schedule. The bound
//! `rate × window + burst` holds for settled costs, and a proptest checks
//! it. Charges always apply.
//!
//! # Stores
//!
//! The state sits behind [`RateStore`], an async trait that speaks in costs
//! and durations, never in local instants: `reserve` answers
//! [`Decision::Admit`] after a wait or [`Decision::Reject`] with a
//! retry-after; `cancel` and `settle` correct it later. [`GcraStore`] (one
//! global limit) and [`KeyedGcraStore`] (per key) answer without awaiting,
//! with a [`std::future::Ready`]. A shared store (Redis) implements the same
//! trait and plugs in with [`RateLimitBuilder::build_with_store`]; when it
//! fails, [`StoreErrorPolicy`] lets requests through (`FailOpen`, the
//! default) or fails them with [`StoreError`] (`FailClosed`).
//!
//! # Errors
//!
//! Errors are `tower::BoxError`; the inner service's errors pass through.
//!
//! | error | when | [`ErrorKind`](backstop_core::ErrorKind) | status |
//! |---|---|---|---|
//! | [`Overloaded`] (`RateLimited`) | conforming instant past the wait deadline; new key while all busy | `Overloaded` | 429 |
//! | [`CostOverBurst`] | cost above the burst | `InvalidRequest` | 400 |
//! | [`StoreError`] | store failed, `FailClosed` | `UpstreamFailure` | 502 |
//!
//! Bad settings fail [`RateLimitBuilder::build`] with a
//! [`ConfigError`] naming the setting (`rate`, `per`, `burst`, `max_keys`,
//! `name`); nothing panics on input.
//!
//! # Cancellation
//!
//! Dropping the response future before the inner `call()` gives the
//! reservation back (as much of it as lies ahead, see above) and leaves the
//! admission ticket (freeing its queue slot). A future whose inner service
//! was called in `call()` has spent its cost, like any future dropped after
//! the inner `call()`.
//! When the inner service answers an error that is (or wraps) `Overloaded`,
//! the reservation is given back too: the upstream did not take the request.
//!
//! # Clone and shared state
//!
//! One layer value is one limiter: the layer owns the store and settings
//! behind `Arc`s, and every service it makes, and every clone of those,
//! shares them. Cloning the layer shares too; two layers built separately are
//! two limits. No `Buffer` is needed.
//!
//! # Allocation and locks
//!
//! On the un-keyed path a request that need not wait takes no lock and
//! allocates nothing: the store is one `AtomicU64` updated by
//! compare-and-swap, and the service clones the inner service and one `Arc`
//! (the future clones the store's `Arc` once more, to give the reservation
//! back if it is dropped). A request that must wait boxes its
//! `tokio::time::Sleep` (one allocation, on the path that sleeps anyway),
//! which keeps the future small for the common case. The keyed store takes
//! one short lock on a shard of a `HashMap` per reservation and allocates
//! when a key is first seen (DESIGN's documented exception). A
//! [`Reservation`] handed to a response costs one `Arc` allocation; the
//! default discards it unbuilt.
//!
//! # Differences from `tower::limit::RateLimit`
//!
//! - tower keeps its window per service instance and is not `Clone`, so axum
//!   (which clones per request) needs a `Buffer`, which adds a task and a
//!   channel hop, loses the request context and erases error types. Here
//!   clones share one limit.
//! - tower waits in `poll_ready` with a timer held by the service; here
//!   `poll_ready` reserves nothing and the wait lives in the response future,
//!   bounded by the admission or SLA deadline and failing early when it
//!   cannot fit.
//! - tower counts fixed windows (up to twice the rate across a window edge);
//!   GCRA bounds every window.
//! - tower's `Rate::new` panics on a zero rate or period; here `build()`
//!   returns a [`ConfigError`].
//! - Weighted costs, keys, reservations with settle, and a pluggable store
//!   have no tower equivalent.
//!
//! # Observability
//!
//! `tracing` debug events with the context's request id and attempt, and
//! the limiter's name: `acquiring rate limit` (cost) in `call`, `waiting for
//! a rate limit token` (wait) when the store admits after a wait, and `rate
//! limit wait would pass the admission deadline` when it refuses.
//!
//! With the `metrics` feature: `llm_rate_limit_wait_seconds{limiter=<name>}`
//! (name from `backstop_core::metrics`, label from
//! [`RateLimitBuilder::name`], static), one sample per request this limiter
//! admits (calls its inner service for), a zero when it did not wait (cost
//! 0 included). A refused, failed or dropped wait records nothing. The
//! handle is resolved in `build()`: install the recorder first. Each sample
//! is one atomic operation on the handle the future carries.
//!
//! # Feature flags
//!
//! - `http`: [`RateLimitLayer::reservation_in_extensions`] and
//!   [`InExtensions`], which put each response's [`Reservation`] into
//!   `http::Response::extensions_mut()`.
//! - `metrics`: emits the metric above; behaviour is unchanged.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod gcra;
mod key;
mod keyed;
mod layer;
mod obs;
mod reservation;
mod service;
mod store;

pub mod future;

pub use backstop_core::{BoxError, ConfigError, CostOverBurst, OverloadReason, Overloaded};

pub use crate::gcra::{GcraStore, Quota};
pub use crate::key::{CostFn, Global, KeyFn, KeyedBy, UnitCost, Weighted};
pub use crate::keyed::KeyedGcraStore;
pub use crate::layer::{DEFAULT_MAX_KEYS, RateLimitBuilder, RateLimitLayer};
#[cfg(feature = "http")]
pub use crate::reservation::InExtensions;
pub use crate::reservation::{Attach, AttachWith, Discard, Reservation};
pub use crate::service::RateLimit;
pub use crate::store::{Decision, RateStore, Receipt, StoreError, StoreErrorPolicy};

#[cfg(all(test, feature = "metrics"))]
mod metrics_tests;
#[cfg(test)]
mod tests;
