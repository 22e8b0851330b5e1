//! Deadline-aware retries with a budget for tower services.
//!
//! backstop's one retry layer. It sits between `SlaTimeout` and
//! `QueueAdmission` (see the workspace's DESIGN.md), so each attempt gets a
//! fresh admission window, pays for its own tokens and permit, and a backoff
//! sleep holds no permit.
//!
//! # Example
//!
//! ```
//! use backstop_core::{BoxError, Context};
//! use backstop_retry::RetryLayer;
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use std::sync::Arc;
//! use tokio::time::Duration;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let calls = Arc::new(AtomicU32::new(0));
//! let c = Arc::clone(&calls);
//! // An upstream that fails once (a connect error), then answers.
//! let upstream = service_fn(move |n: u32| {
//!     let first = c.fetch_add(1, Ordering::Relaxed) == 0;
//!     async move {
//!         if first {
//!             Err::<u32, BoxError>("connection refused".into())
//!         } else {
//!             Ok(n * 2)
//!         }
//!     }
//! });
//!
//! let retry = RetryLayer::builder()
//!     .max_attempts(3)
//!     .backoff_base(Duration::from_millis(10))
//!     .backoff_max(Duration::from_millis(100))
//!     .build()?;
//! let stats = retry.stats();
//! let svc = ServiceBuilder::new().layer(retry).service(upstream);
//!
//! assert_eq!(svc.oneshot(21).await?, 42);
//! assert_eq!(calls.load(Ordering::Relaxed), 2);
//! assert_eq!(stats.retries(), 1);
//! # Ok(())
//! # }
//! ```
//!
//! # Behaviour
//!
//! - **Attempts.** At most `max_attempts` (default 3) in all. Each attempt
//!   publishes `Context::current().with_attempt(Attempt(n))` around the inner
//!   `poll_ready`/`call` and every poll of the inner future (which also clears
//!   the previous attempt's deadline: inner layers start afresh, and each
//!   attempt takes its own admission slot).
//! - **Backoff.** The n-th retry (n = 1, 2, …) sleeps
//!   `min(base × 2^(n−1), max) + U[0, base)` ([`Jitter::Additive`], the
//!   default: the source's `min(2^n, 32) s + uniform(0, 1) s` generalised to
//!   any base; the total can exceed `max` by less than `base`), or
//!   `U[0, min(base × 2^(n−1), max))` ([`Jitter::Full`]). Defaults: base 1 s,
//!   max 32 s. The jitter comes from an in-crate SplitMix64 shared by the
//!   layer's clones, randomly seeded per layer or fixed with
//!   [`RetryLayerBuilder::seed`]. tokio's timer fires on whole milliseconds,
//!   so a sleep ends up to 1 ms after its computed instant.
//! - **Upstream waits.** A policy may ask for an exact wait
//!   ([`Action::RetryAfter`], e.g. from `Retry-After`): it replaces the
//!   backoff, without jitter, when it is at most `retry_after_max` (default =
//!   `backoff_max`) and fits before the deadline (below); otherwise the
//!   outcome goes back at once.
//! - **Deadlines.** The first attempt always starts (the inner layers cap it by
//!   the SLA). Before each retry, if `now + wait > SLA deadline −
//!   min_attempt_time` (default 250 ms), the last outcome goes back at once,
//!   without sleeping. An SLA expiry ([`SlaExpired`] anywhere in the error's
//!   `source()` chain) is never retried.
//! - **Budget.** Every original request deposits `ratio` retries (default 0.2),
//!   every retry withdraws 1, plus a floor of `min_per_second` (default 10)
//!   retries per second; deposits and withdrawals count for `window` (default
//!   10 s). When the budget is empty the last outcome goes back and
//!   [`RetryStats::budget_exhausted`] counts it. See "Budget" below.
//! - **Policy.** A replaceable [`Policy`] decides per outcome:
//!   [`DefaultPolicy`] retries upstream failures (connect errors,
//!   `AttemptTimedOut`, any error backstop does not own), never an SLA expiry
//!   or a `StreamTimedOut`, never `CostOverBurst`, and stops on `Overloaded`
//!   (an attempt refused locally): the caller then gets the **previous**
//!   attempt's outcome if there was one, else the overload.
//! - **Outcome.** Retry returns the last outcome unchanged; the core's mapping
//!   turns it into what the client sees.
//!
//! Counters ([`RetryStats`], from [`RetryLayer::stats`] or
//! [`Retry::stats`]): retries started, budget exhausted, and the budget's
//! balance. This crate does not depend on `tracing` or `metrics`; the
//! observability layer reads the counters.
//!
//! # Budget
//!
//! In the manner of Finagle's `RetryBudget` and linkerd: a windowed token
//! bucket. The window is split into 10 slots; each slot is one `AtomicU64`
//! holding its epoch (which `window / 10` period it belongs to) and its
//! balance in thousandths of a retry, so a slot is reset and updated in one
//! compare-and-swap: no lock. The balance is the reserve
//! (`min_per_second × window`) plus every slot of the window. A withdrawal is
//! made first and checked after (undone if the balance went negative), so
//! concurrent callers may be refused spuriously for an instant but never
//! over-granted. A retry dropped during its backoff refunds its withdrawal
//! into the slot it came from, unless that slot has expired (then the
//! withdrawal no longer counts anyway). `ratio` has a resolution of 0.001;
//! a deposit counts for between 9/10 of the window and the whole window (the
//! slot granularity); a slot saturates at about 2 million retries.
//!
//! Why not `tower::retry::budget::TpsBudget`: it takes a `Mutex` on every
//! deposit and withdrawal (contract 8 wants no lock on the uncontended path),
//! panics on bad input, and (tower#857) turns the ratio into an integer
//! withdrawal cost `(1.0 / ratio) as isize`, which over-grants whenever
//! `1 / ratio` is not an integer. Measured in this crate's tests (200
//! requests/s for 300 s of paused time against an always-failing upstream,
//! attempts per request; a naive 3-attempt loop gives 3.0):
//!
//! | ratio | floor | bound | ours | `TpsBudget` |
//! |---|---|---|---|---|
//! | 0.2 | 10/s | 1.2517 | 1.2500 | 1.2467 |
//! | 0.1 | 10/s | 1.1517 | 1.1500 | 1.1466 |
//! | 0.05 | 10/s | 1.1017 | 1.1000 | 1.0966 |
//! | 0.2 / 0.1 / 0.05 | 0 | 1 + ratio | 1 + ratio | 1 + ratio |
//! | 0.3 | 0 | 1.3 | 1.3000 | 1.3332 |
//! | 0.7 | 0 | 1.7 | 1.7000 | 2.0000 |
//!
//! (0.2, 0.1 and 0.05 happen to have integer reciprocals in `f32`, so
//! `TpsBudget` is exact for them.)
//!
//! # Errors
//!
//! None of its own: `Retry` returns the inner service's outcome
//! (`S::Error`), unchanged. Configuration errors are [`ConfigError`]s from
//! [`RetryLayerBuilder::build`], naming the setting: `max_attempts` 0, a zero
//! or over-24-hour `backoff_base`, a `backoff_max` below `backoff_base` or
//! over 24 h, `min_attempt_time`/`retry_after_max` over 24 h, a `ratio`
//! outside [0, 1000] or NaN, a `window` outside [1 s, 60 s] (as Finagle), and
//! a `min_per_second × window` over 10^9.
//!
//! # Cancellation
//!
//! Dropping the response future is safe at every point: during an attempt the
//! inner future is dropped (inside the attempt's context), and the inner
//! layers release what they hold; during a backoff the budget withdrawal is
//! refunded. See [`future::ResponseFuture`].
//!
//! # Clone and shared state
//!
//! `poll_ready` is always ready and reserves nothing. `call()` asks the
//! inner service for readiness once, with a waker that does nothing:
//! - ready: `call()` calls the first attempt on it;
//! - not ready: the response future takes that instance (and any place it
//!   queued for) and drives `ready()` and `call()` on it with its own
//!   waker; the retry service keeps a clone (`S: Clone`);
//! - failed: the policy judges the error as it would a failed call, and
//!   the failed instance is not asked again.
//!
//! Every retry clones its service from a copy taken when the layer was
//! applied, shared by the service's clones; a retry whose readiness fails
//! clones a fresh one for the next. So a change made through `get_mut`
//! reaches first attempts only. One layer value is one budget, one RNG and
//! one set of counters: every service it builds, and every clone of those,
//! shares them (an `Arc`). Two layers, two budgets.
//!
//! # Allocation
//!
//! None of its own on the success path: the response future holds one
//! `Arc` (the budget, the counters and the copy of the inner service that
//! retries clone from), the context (reference-counted) and a clone of the
//! policy; the inner service is cloned only for a retry, when it was not
//! ready at once, when it failed readiness, or (HTTP) when the request
//! body has to be waited for. When `max_attempts > 1` the request is
//! cloned once up front for replay ([`Policy::clone_request`]), and once
//! more per retry; for HTTP
//! that clones the head (method, URI, headers, extensions) and a buffered
//! body (reference-counted `Bytes`, plus one copy when the body came in
//! several frames). A backoff's `tokio::time::Sleep` is boxed, once per
//! retry, and so is the outcome kept while the retry runs.
//!
//! # HTTP (feature `http`)
//!
//! `RetryLayer::builder().for_http()` switches to [`HttpRetryLayer`] /
//! [`HttpRetry`] for `Service<http::Request<B>>`, with [`HttpPolicy`]:
//! retry 5xx, 408, 409, 429 and 529, never other 4xx, never a billing stop;
//! honour `x-should-retry`; on 429/503/529 a `retry-after-ms` (else
//! `Retry-After`, delta-seconds or IMF-fixdate; the obsolete RFC 850 and
//! asctime date forms are ignored) replaces the backoff as above. Errors go
//! through the [`DefaultPolicy`] rules. See [`HttpPolicy`] for exactly what a
//! billing stop matches.
//!
//! - Request bodies up to `max_replay_bytes` (default 2 MiB) are buffered
//!   before the first attempt and replayed ([`body::ReplayBody`]); a body
//!   over the limit (by its size hint, or found while reading) is sent once
//!   and never retried, with no error of its own.
//! - A 408/409/429 body is buffered up to 64 KiB for inspection and passed on
//!   byte for byte ([`body::ResponseBody`]); others are not touched. That
//!   read happens inside the attempt but after its head arrived, so only the
//!   SLA timeout outside bounds a stalled 4xx body.
//! - Decisions are made on the head and that buffered body only; no response
//!   body byte is handed to the caller before the decision, so a response the
//!   caller started reading is never retried.
//! - While a retry runs after a 5xx, the 5xx's body is dropped (so no
//!   connection or concurrency permit is held across the backoff); if that
//!   retry is refused locally, the caller gets the 5xx head with an empty
//!   body. A buffered 4xx is kept whole.
//! - Both bodies must be `Unpin` (hyper's `Incoming`, axum's `Body` and the
//!   `http-body-util` bodies are); the inner error must implement
//!   [`AsError`] (e.g. `BoxError`).
//!
//! # SDK retries
//!
//! Retries multiply: this layer's attempts × an SDK's retries × the vendor's
//! own make a retry storm under exactly the load that caused the failures.
//! Keep one retry layer, this one:
//!
//! - Turn retries off in vendor SDKs that call the upstream through backstop
//!   or that call backstop: OpenAI's Python and Node SDKs take
//!   `max_retries=0` / `maxRetries: 0`, Anthropic's likewise; most HTTP
//!   clients retry only when asked. If you cannot, account for them: with k
//!   SDK attempts, the vendor sees up to `k × max_attempts` per request, and
//!   the budget only bounds the second factor.
//! - For clients you do not control, backstop's error mapping sets
//!   `x-should-retry: false` on every non-2xx answer it generates or passes
//!   through (except local overload and internal errors): the OpenAI and
//!   Anthropic SDKs honour that header and do not retry, so the client's
//!   retries stop where backstop's retries already ran. Upstream, a vendor's
//!   own `x-should-retry: false` stops this layer's retries; `true` only
//!   re-enables what the policy already retries.
//!
//! # Differences from `tower::retry`
//!
//! - The budget, backoff and deadline rules are built in, not assembled from
//!   a `Policy` future: `tower::retry::Policy::retry` returns a future to
//!   await (e.g. a backoff); here a policy only decides ([`Action`]) and the
//!   layer sleeps, checks the SLA deadline and pays from the budget.
//! - Lock-free budget, exact for fractional ratios (see "Budget"); tower's
//!   `TpsBudget` is a separate value you must share yourself.
//! - `poll_ready` is always ready; each attempt drives readiness on its own
//!   clone, inside the attempt's context. tower's `Retry` forwards
//!   `poll_ready` and calls the first attempt from `call`.
//! - A locally refused attempt returns the previous attempt's outcome.
//! - Validated configuration ([`ConfigError`]), never a panic.
//!
//! # Observability
//!
//! `tracing` debug events with the request id and the attempt that ended:
//! `attempt failed, retrying after backoff` (backoff), `retry started` (the
//! new attempt's number), `retry refused: budget exhausted`.
//!
//! With the `metrics` feature (names from `backstop_core::metrics`):
//! `llm_retries_total`, each retry started (after its backoff, as
//! [`RetryStats::retries`] counts), and `llm_retry_budget_exhausted_total`,
//! each retry the budget refused (as [`RetryStats::budget_exhausted`]). The
//! handles are resolved in `build()`: install the recorder first.
//!
//! # Feature flags
//!
//! - `http`: [`HttpRetryLayer`], [`HttpRetry`], [`HttpPolicy`] and [`body`].
//! - `metrics`: emits the metrics above; behaviour is unchanged.
#![cfg_attr(docsrs, feature(doc_cfg))]
// The crate docs link to the `http` items; without the feature they are absent.
#![cfg_attr(not(feature = "http"), allow(rustdoc::broken_intra_doc_links))]

mod backoff;
mod budget;
mod layer;
mod obs;
mod policy;
mod service;

pub mod future;

#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub mod body;
#[cfg(feature = "http")]
mod http;

pub use crate::backoff::Jitter;
pub use crate::layer::{Generic, RetryLayer, RetryLayerBuilder, RetryStats};
pub use crate::policy::{Action, AsError, DefaultPolicy, Policy};
pub use crate::service::Retry;
pub use backstop_core::{BoxError, ConfigError, SlaExpired};

#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub use crate::http::{
    DEFAULT_MAX_REPLAY_BYTES, Http, HttpPolicy, HttpRetry, HttpRetryLayer, Inspect,
    MAX_INSPECT_BYTES,
};

#[cfg(all(test, feature = "http"))]
mod http_tests;
#[cfg(all(test, feature = "metrics"))]
mod metrics_tests;
#[cfg(test)]
mod tests;
