//! Completion hooks that run exactly once per request, even when the caller
//! drops the future.
//!
//! [`ShieldedOnCancelLayer`] sits outermost in a backstop stack (DESIGN's
//! stack order). It tells a [`Hook`] how each request ended: [`Outcome`]
//! `Success`, `Error(kind)` or `Cancelled`, with the elapsed time, the request
//! id and the attempt number ([`Completion`]). Cleanup that must not be lost
//! when a client disconnects (releasing a reservation, writing an audit or
//! billing record, recording an SLA violation) goes in the hook.
//!
//! # Example
//!
//! ```
//! use std::sync::{Arc, Mutex};
//!
//! use backstop_shield::{hook_fn, Outcome, ShieldedOnCancelLayer};
//! use tokio::time::Duration;
//! use tower::{service_fn, BoxError, Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let seen = Arc::new(Mutex::new(Vec::new()));
//! let record = Arc::clone(&seen);
//! let layer = ShieldedOnCancelLayer::builder(hook_fn(move |done| {
//!     let record = Arc::clone(&record);
//!     async move { record.lock().unwrap().push(done.outcome()) }
//! }))
//! .hook_timeout(Duration::from_secs(2))
//! .build()?;
//! let tracker = layer.tracker();
//!
//! let mut svc = ServiceBuilder::new()
//!     .layer(layer)
//!     .service(service_fn(|n: u32| async move {
//!         if n == 0 {
//!             return Err::<u32, BoxError>("zero".into());
//!         }
//!         Ok(n * 2)
//!     }));
//!
//! assert_eq!(svc.ready().await?.call(21).await?, 42);
//! assert!(svc.ready().await?.call(0).await.is_err());
//! // The caller gives up before the response: the hook still runs.
//! let fut = svc.ready().await?.call(7);
//! drop(fut);
//!
//! // At shutdown: wait (bounded) for hooks still running as tasks.
//! assert!(tracker.drain(Duration::from_secs(5)).await);
//! let seen = seen.lock().unwrap();
//! assert!(seen[0].is_success());
//! assert!(seen[1].is_error());
//! assert_eq!(seen[2], Outcome::Cancelled);
//! # Ok(())
//! # }
//! ```
//!
//! # Behaviour
//!
//! The clock starts, and the request id and attempt are read from the
//! [`Context`](backstop_core::Context), when the layer's `call` runs. The
//! outcome is decided when the response finishes:
//!
//! - the inner future returns `Ok`: `Success`;
//! - it returns `Err(e)`: `Error(kind)`, the kind found by
//!   [`classify`](backstop_core::classify) (an SLA expiry inside, a
//!   [`SlaExpired`](backstop_core::SlaExpired), reaches the hook as
//!   `Error(ErrorKind::Timeout)`: the place to record an SLA violation);
//! - the future is dropped first: `Cancelled`.
//!
//! The hook fires exactly once per request: the guard that fires it lives in
//! an `Option` in the response future and fires from its `Drop`. A
//! `poll_ready` error is not a request and fires nothing.
//!
//! The request id is the one in the context when `call` runs, so place the
//! request-id layer ([`SetRequestIdLayer`](backstop_core::SetRequestIdLayer))
//! outside this one.
//!
//! # Hooks
//!
//! A hook is an async closure ([`hook_fn`] helps inference), a plain closure
//! wrapped by [`sync_hook`], or any type implementing [`Hook`].
//!
//! - **Inline first.** The hook is called, and its future polled once, right
//!   where the request finishes (in the poll that completes the response, or
//!   in the drop that cancels it), with a waker that does nothing. A hook
//!   that finishes without awaiting is done there ("inline").
//! - **Pending work is spawned.** A future still pending after that poll is
//!   spawned through the tokio runtime handle captured when `call` ran (or
//!   the current one if none was captured), wrapped in
//!   `tokio::time::timeout(hook_timeout)` (default 5 s), onto the layer's
//!   [`HookTracker`], so shutdown can wait for it.
//! - **No runtime, no panic.** An async hook is only polled in place on a
//!   thread inside a tokio runtime. When the request finishes on a thread
//!   outside any runtime (a future dropped on a plain thread, or after its
//!   runtime was shut down), the whole hook, its `call` included, is handed
//!   to the captured handle as a task instead: a tokio handle cannot tell
//!   whether its runtime still runs, and polling a timer of a runtime that
//!   is gone panics (this is why the hook is not polled inside
//!   `Handle::enter`). A runtime that has shut down drops that task unrun,
//!   and the hook counts as skipped; with no handle captured either, the
//!   hook is skipped at once. A [`sync_hook`] (see [`Hook::SYNC`]) needs no
//!   runtime and always runs in place.
//!
//! [`HookTracker::stats`] counts hooks run inline, spawned, timed out and
//! skipped. Hooks must not panic.
//!
//! # Errors
//!
//! The layer adds no error: the service's `Error` type and values pass
//! through unchanged (no boxing). The only bound is `S::Error: 'static`: the
//! error is inspected through [`Any`](std::any::Any), because no trait bound
//! reaches `&dyn Error` for both a `BoxError` (which is not itself an
//! `Error`) and a concrete error type. `BoxError` (`Box<dyn Error + Send +
//! Sync>`, the error of every backstop layer, also without `Sync` or
//! `Send`), `std::io::Error` and the core's own error types are classified by
//! walking their `source()` chain; any other error type is reported as
//! `ErrorKind::UpstreamFailure`, which is what `classify` says of foreign
//! errors anyway.
//!
//! Building with a zero `hook_timeout`, or one over 24 h, fails with a
//! [`ConfigError`](backstop_core::ConfigError) naming `hook_timeout`.
//!
//! # Cancellation
//!
//! Dropping the response future at any point before it completed (before
//! its first poll, while the inner service works, or after the inner service
//! answered but before the future saw it) fires the hook once as
//! `Cancelled`. The inner future is dropped as usual; the hook does not keep
//! it alive. With `http`, the same holds for the response body (see
//! [HTTP](#http)).
//!
//! # Clone and shared state
//!
//! One layer value holds one `Arc`: the hook, the hook timeout, the task
//! tracker and the counters. Every service the layer makes, and every clone
//! of those, shares it: one layer, one tracker, one set of counters (axum
//! cloning the service per request changes nothing). Two layers, two.
//!
//! # Shutdown
//!
//! Keep a [`HookTracker`] from [`ShieldedOnCancelLayer::tracker`] and, once
//! the server stopped accepting requests, await
//! [`drain(timeout)`](HookTracker::drain): it closes the tracker and waits
//! for the spawned hooks, at most `timeout`, returning whether they all
//! finished. Each hook is already bounded by the hook timeout.
//!
//! ```
//! # use backstop_shield::{sync_hook, ShieldedOnCancelLayer};
//! # use tokio::time::Duration;
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let layer = ShieldedOnCancelLayer::new(sync_hook(|_| {}));
//! let tracker = layer.tracker();
//! // ... serve with `layer` ...
//! if !tracker.drain(Duration::from_secs(10)).await {
//!     // some hooks did not finish in time
//! }
//! let stats = tracker.stats();
//! assert_eq!(stats.pending, 0);
//! # }
//! ```
//!
//! # Allocation
//!
//! Per request, the layer reads the context and the clock, clones its state's
//! `Arc` and the request id (and, for an async hook, the runtime handle), and
//! allocates nothing. When the request finishes, a [`sync_hook`] allocates
//! nothing; an async hook's future is boxed once, so that if it is still
//! pending after the inline poll it can move into a task (a polled future
//! cannot move unless it is `Unpin`, and there is no way to ask); spawning
//! that task allocates as tokio does. No lock is taken: the counters are
//! atomics.
//!
//! # HTTP
//!
//! With the `http` feature, `ShieldedOnCancelLayer::for_http` gives
//! `HttpShieldedOnCancelLayer`, whose service moves the guard from the
//! future into the `body::ResponseBody`; the outcome is decided when the
//! response finishes (DESIGN, "Deadlines and their errors"):
//!
//! - **success**: the body ended (the frame after which the body reports
//!   `is_end_stream`, the end of frames, or a body empty from the start)
//!   and the status is below 400;
//! - **error**: an `Err` from the service (classified as above), a status of
//!   400 or more (whether the body then ends or is dropped), or a body error
//!   (classified, so a stream timeout is `Timeout`);
//! - **cancelled**: the future, or the body before its end, dropped with a
//!   status below 400.
//!
//! A status of 400 or more maps to a kind as follows: 401 and 403
//! `Unauthorized`, 429 `Overloaded`, 408 and every 5xx `UpstreamFailure`,
//! other 4xx `InvalidRequest`. `Completion::status` carries the status
//! itself. The body forwards `size_hint` and `is_end_stream`.
//!
//! A stream that a layer inside this one ends with an SSE error event after
//! a body error looks, from here, like a stream that ended; place that
//! conversion outside this layer (as the gateway does with its error
//! mapping) so the hook sees the body error.
//!
//! # Differences from `tower::util::MapResult` and `tower_http::trace`
//!
//! tower's `MapResult`/`Then` and tower-http's `Trace` callbacks run only
//! when the future (or body) is polled to its end; a dropped future runs
//! nothing. Here the drop is an outcome of its own, and async cleanup
//! outlives the request, bounded and drained at shutdown.
//!
//! # Observability
//!
//! A hook that timed out or was skipped logs a `tracing` debug event,
//! `completion hook did not finish`. With the `metrics` feature,
//! `llm_hooks_total{hook}` (name and values from `backstop_core::metrics`)
//! counts what [`HookStats`] counts: `inline`, `spawned`, `timed_out`,
//! `skipped`. The handles are resolved when the layer is built: install the
//! recorder first.
//!
//! # Feature flags
//!
//! - `http`: `HttpShieldedOnCancelLayer`, `HttpShieldedOnCancel`,
//!   `body::ResponseBody` and `Completion::status`.
//! - `metrics`: emits the metric above; behaviour is unchanged.
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub mod body;
pub mod future;
mod guard;
mod hook;
mod layer;
mod obs;
mod service;

#[cfg(all(test, feature = "metrics"))]
mod metrics_tests;

pub use crate::guard::{HookStats, HookTracker};
pub use crate::hook::{Completion, Hook, Outcome, SyncHook, hook_fn, sync_hook};
pub use crate::layer::{ShieldedOnCancelBuilder, ShieldedOnCancelLayer};
pub use crate::service::ShieldedOnCancel;

#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub use crate::layer::HttpShieldedOnCancelLayer;
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub use crate::service::HttpShieldedOnCancel;

pub use backstop_core::{BoxError, ErrorKind};
