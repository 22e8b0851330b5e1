//! Readiness from the backstop layers' own state, and (feature `axum`) the
//! `/health`, `/ready` and `/metrics` routes.
//!
//! A [`Readiness`] answers [`Status::Ready`] or [`Status::NotReady`] with a
//! [`Reason`], from three inputs:
//!
//! - a draining flag: [`Readiness::set_draining`], from the shutdown path;
//! - a saturation probe: two closures reading the admission queue
//!   (`QueueHandle::is_full`) and the concurrency limit
//!   (`ConcurrencyHandle::available_permits`); saturated while the queue is
//!   full and no permit is free;
//! - the upstream error window: every attempt's [`Outcome`], recorded with
//!   [`Readiness::record`] (or [`record_error`](Readiness::record_error),
//!   or with `http`, [`record_http`](Readiness::record_http)); not ready
//!   while over the last 10 s at least [`MIN_ATTEMPTS`] attempts were made
//!   and at least half failed. Switch it off with
//!   [`ReadinessBuilder::upstream_errors`]`(false)`.
//!
//! # Example
//!
//! Record each attempt where it ends (here with `map_result`; in a full
//! stack, just outside `AttemptTimeout` so its timeouts count), and ask.
//!
//! ```
//! use backstop_health::{Outcome, Readiness, Reason, Status};
//! use tower::{service_fn, BoxError, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // The probes would read a QueueHandle and a ConcurrencyHandle.
//! let readiness = Readiness::builder()
//!     .saturation(|| false, || 4)
//!     .build();
//!
//! let recorder = readiness.clone();
//! let upstream = ServiceBuilder::new()
//!     .map_result(move |res: Result<u32, BoxError>| {
//!         match &res {
//!             Ok(_) => recorder.record(Outcome::Success),
//!             Err(err) => recorder.record_error(&**err),
//!         }
//!         res
//!     })
//!     .service(service_fn(|n: u32| async move {
//!         if n % 2 == 0 {
//!             Ok(n)
//!         } else {
//!             Err(BoxError::from("connection refused"))
//!         }
//!     }));
//!
//! assert_eq!(readiness.check(), Status::Ready);
//! for n in 0..10 {
//!     let _ = upstream.clone().oneshot(n).await;
//! }
//! // 5 of 10 attempts failed within 10 s.
//! assert_eq!(readiness.check(), Status::NotReady(Reason::UpstreamErrors));
//!
//! readiness.set_draining();
//! assert_eq!(readiness.check().reason().map(Reason::as_str), Some("draining"));
//! # }
//! ```
//!
//! With the `axum` feature, [`routes`] serves them:
//!
//! ```
//! # #[cfg(feature = "axum")]
//! # {
//! use backstop_health::{prometheus_builder, routes, Readiness};
//!
//! // In a binary: `let prometheus = backstop_health::install_prometheus()?;`
//! // before building the layers.
//! let prometheus = prometheus_builder().build_recorder().handle();
//! let app: axum::Router = axum::Router::new()
//!     // .route("/v1/chat/completions", ...)
//!     .merge(routes(Readiness::new(), prometheus));
//! # let _ = app;
//! # }
//! ```
//!
//! # Behaviour
//!
//! - Precedence: draining, then saturated, then upstream errors.
//! - Failures: connect and other upstream errors, attempt timeouts
//!   ([`AttemptTimedOut`](backstop_core::AttemptTimedOut)), 5xx (529
//!   included) and 408. Not failures: other 4xx and 429 (successes for the
//!   ratio). Not counted at all: SLA expiries, local `Overloaded` refusals.
//! - The window is 10 buckets of one second of tokio time, so it runs on
//!   paused time in tests; an attempt counts for between 9 and 10 s.
//! - Draining is one way: there is no "undrain".
//!
//! # Clone and shared state
//!
//! [`Readiness`] is an `Arc`; clones share the flag, the probes and the
//! window.
//!
//! # Cost
//!
//! [`Readiness::record`] is one compare-and-swap loop on one `AtomicU64`: no
//! lock, no allocation. [`Readiness::check`] reads ten atomics and calls the
//! probes. The builder boxes the two probe closures, once.
//!
//! # Feature flags
//!
//! - `http`: [`Outcome::of_status`] and [`Readiness::record_http`].
//! - `axum` (implies `http`): [`routes`], [`ready_response`],
//!   [`prometheus_builder`], [`install_prometheus`] and [`spawn_upkeep`].
#![cfg_attr(docsrs, feature(doc_cfg))]

mod readiness;
mod window;

#[cfg(feature = "axum")]
mod ops;

#[cfg(test)]
mod tests;

pub use crate::readiness::{MIN_ATTEMPTS, Outcome, Readiness, ReadinessBuilder, Reason, Status};

#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub use crate::ops::{
    UPKEEP_INTERVAL, install_prometheus, prometheus_builder, ready_response, routes, spawn_upkeep,
};
