//! The core of backstop: one request context, admission tickets and one error
//! taxonomy, shared by every layer.
//!
//! - [`Context`]: a request's SLA deadline, attempt deadline, attempt number
//!   and id, carried as a task-local that each publishing layer scopes
//!   around its inner `call()` and every inner poll.
//! - [`admission`]: the ticket protocol between `QueueAdmission` and the
//!   limiters inside it: one queue slot per request, moved inward by value.
//! - [`SlaExpired`], [`AttemptTimedOut`], [`Overloaded`], [`CostOverBurst`],
//!   [`StreamTimedOut`] and [`classify`], which maps any error (walking its
//!   `source()` chain) to an [`ErrorKind`].
//! - [`SetRequestIdLayer`]: every request gets an id.
//! - With the `http` feature, [`http`]: the mapping of errors and upstream
//!   responses to what the client sees (`ErrorResponseLayer`), the
//!   `X-Request-ID` rules, and the layer that copies the context into request
//!   extensions.
//!
//! # Example
//!
//! A layer publishes a deadline; the service inside reads it.
//!
//! ```
//! use backstop_core::{Context, SetRequestIdLayer};
//! use tokio::time::{Duration, Instant};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower::BoxError> {
//! let svc = ServiceBuilder::new()
//!     .layer(SetRequestIdLayer::new())
//!     .service(service_fn(|n: u32| async move {
//!         let ctx = Context::current();
//!         Ok::<_, tower::BoxError>((n, ctx.sla_deadline()))
//!     }));
//!
//! let deadline = Instant::now() + Duration::from_secs(5);
//! let (_, seen) = Context::new()
//!     .with_sla_deadline(deadline)
//!     .scope(svc.oneshot(1))
//!     .await?;
//! assert_eq!(seen, Some(deadline));
//! # Ok(())
//! # }
//! ```
//!
//! # Limits
//!
//! The context is a task-local: it does not cross a `tokio::spawn` or a
//! `tower::buffer::Buffer`. hyper polls response bodies outside every scope,
//! so body wrappers capture what they need when `call` runs.
//!
//! # Feature flags
//!
//! - `http`: [`http`], the HTTP mapping and header rules.
//! - `metrics`: [`metrics`], the metric names, buckets and registration the
//!   layers share.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod admission;
pub mod clock;
mod context;
mod error;
mod obs;
mod request_id;

#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub mod http;

#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub mod metrics;

pub use crate::admission::{AdmissionTicket, QueueSlots, WaitBound, WaitDeadline};
pub use crate::context::{Attempt, Context, RequestId, Rescoped, Scoped};
pub use crate::error::{
    AttemptPhase, AttemptTimedOut, BoxError, ConfigError, CostOverBurst, ErrorKind, MAX_DURATION,
    OverloadReason, Overloaded, SlaExpired, StreamTimedOut, StreamTimeout, check_duration,
    classify, find,
};
pub use crate::request_id::{Generate, SetRequestId, SetRequestIdLayer};

/// Futures returned by the core's services.
pub mod future {
    pub use crate::request_id::ResponseFuture;
}
