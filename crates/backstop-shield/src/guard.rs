//! The shared state of one layer, the per-request guard that fires the hook
//! exactly once, and the tracker handle the server drains at shutdown.

use std::any::Any;
use std::error::Error;
use std::fmt;
use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context as TaskContext, Waker};

use backstop_core::{
    Attempt, AttemptTimedOut, BoxError, Context, CostOverBurst, ErrorKind, Overloaded, RequestId,
    SlaExpired, StreamTimedOut, classify, clock,
};
use tokio::runtime::Handle;
use tokio::time::{Duration, Instant};
use tokio_util::task::TaskTracker;

use crate::hook::{Completion, Hook, Outcome};
use crate::obs::Metrics;

/// The state every service and clone made by one layer shares.
pub(crate) struct Shared<H> {
    pub(crate) core: Core,
    pub(crate) hook: H,
}

/// The hook-independent part of [`Shared`]: what [`HookTracker`] reads.
pub(crate) struct Core {
    pub(crate) hook_timeout: Duration,
    tracker: TaskTracker,
    inline: AtomicU64,
    spawned: AtomicU64,
    timed_out: AtomicU64,
    skipped: AtomicU64,
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    metrics: Metrics,
}

impl<H> Shared<H> {
    #[inline]
    pub(crate) fn new(hook: H, hook_timeout: Duration) -> Self {
        Self {
            core: Core {
                hook_timeout,
                tracker: TaskTracker::new(),
                inline: AtomicU64::new(0),
                spawned: AtomicU64::new(0),
                timed_out: AtomicU64::new(0),
                skipped: AtomicU64::new(0),
                metrics: Metrics::resolve(),
            },
            hook,
        }
    }
}

#[inline]
fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Which count to bump, in the stats and (feature `metrics`) the metric.
#[derive(Clone, Copy)]
enum Count {
    Inline,
    Spawned,
    TimedOut,
    Skipped,
}

impl Core {
    #[inline]
    fn count(&self, count: Count) {
        let (stat, name) = match count {
            Count::Inline => (&self.inline, "inline"),
            Count::Spawned => (&self.spawned, "spawned"),
            Count::TimedOut => (&self.timed_out, "timed_out"),
            Count::Skipped => (&self.skipped, "skipped"),
        };
        bump(stat);
        #[cfg(feature = "metrics")]
        match count {
            Count::Inline => self.metrics.inline.increment(1),
            Count::Spawned => self.metrics.spawned.increment(1),
            Count::TimedOut => self.metrics.timed_out.increment(1),
            Count::Skipped => self.metrics.skipped.increment(1),
        }
        if matches!(count, Count::TimedOut | Count::Skipped) {
            tracing::debug!(hook = name, "completion hook did not finish");
        }
    }
}

/// Lets [`HookTracker`] hold any `Shared<H>` without naming `H`.
trait HasCore: Send + Sync + 'static {
    fn core(&self) -> &Core;
}

impl<H: Hook> HasCore for Shared<H> {
    #[inline]
    fn core(&self) -> &Core {
        &self.core
    }
}

/// A handle on the hooks of one layer: counters, and the tracker of hooks
/// still running as tasks, which the server drains at shutdown.
///
/// Every clone, like every service made by the layer, shares the same
/// tracker and counters. Get one with
/// [`ShieldedOnCancelLayer::tracker`](crate::ShieldedOnCancelLayer::tracker).
///
/// See the [crate docs](crate#shutdown) for an example.
#[derive(Clone)]
pub struct HookTracker {
    shared: Arc<dyn HasCore>,
}

/// A snapshot of a layer's hook counters.
///
/// Every hook that runs is counted once as `inline` or `spawned`; a spawned
/// hook may later also count as `timed_out` or `skipped`. A hook that never
/// starts counts only as `skipped`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HookStats {
    /// Hooks that finished on their first poll, where the request finished.
    pub inline: u64,
    /// Hooks handed to the runtime as a task (still pending after the inline
    /// poll, or finished off the runtime).
    pub spawned: u64,
    /// Spawned hooks cut by the hook timeout.
    pub timed_out: u64,
    /// Hooks that could not run to the end for lack of a runtime: none at
    /// completion and none captured at call time, a runtime that shut down
    /// before a spawned hook finished, or a [`Hook::SYNC`] future left
    /// pending.
    pub skipped: u64,
    /// Spawned hooks still running now.
    pub pending: usize,
}

impl HookTracker {
    #[inline]
    pub(crate) fn new<H: Hook>(shared: &Arc<Shared<H>>) -> Self {
        let shared: Arc<dyn HasCore> = Arc::<Shared<H>>::clone(shared);
        Self { shared }
    }

    /// Current counters.
    pub fn stats(&self) -> HookStats {
        let core = self.shared.core();
        HookStats {
            inline: core.inline.load(Ordering::Relaxed),
            spawned: core.spawned.load(Ordering::Relaxed),
            timed_out: core.timed_out.load(Ordering::Relaxed),
            skipped: core.skipped.load(Ordering::Relaxed),
            pending: core.tracker.len(),
        }
    }

    /// The timeout each spawned hook runs under.
    pub fn hook_timeout(&self) -> Duration {
        self.shared.core().hook_timeout
    }

    /// Whether [`drain`](Self::drain) was called.
    pub fn is_draining(&self) -> bool {
        self.shared.core().tracker.is_closed()
    }

    /// Waits, at most `timeout`, for every spawned hook to finish; `true` if
    /// they all did.
    ///
    /// Call it at shutdown, after the server stopped taking requests. It
    /// marks the tracker closed at once (hooks of requests still finishing
    /// are still run and waited for). The returned future owns what it
    /// needs, so it can be spawned. A timeout too large for the clock waits
    /// without bound.
    ///
    /// # Cancellation
    ///
    /// Dropping the future stops waiting; the hooks keep running.
    pub fn drain(&self, timeout: Duration) -> impl Future<Output = bool> + Send + 'static {
        let shared = Arc::clone(&self.shared);
        shared.core().tracker.close();
        async move {
            let tracker = &shared.core().tracker;
            tokio::time::timeout(timeout, tracker.wait()).await.is_ok()
        }
    }
}

impl fmt::Debug for HookTracker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HookTracker")
            .field("hook_timeout", &self.hook_timeout())
            .field("draining", &self.is_draining())
            .field("stats", &self.stats())
            .finish()
    }
}

/// Fires the hook exactly once: with the outcome given to
/// [`finish`](Guard::finish), or, when dropped without one, as cancelled.
pub(crate) struct Guard<H: Hook> {
    shared: Arc<Shared<H>>,
    start: Instant,
    handle: Option<Handle>,
    request_id: Option<RequestId>,
    attempt: Option<Attempt>,
    #[cfg(feature = "http")]
    status: Option<http::StatusCode>,
    outcome: Option<Outcome>,
}

impl<H: Hook> Guard<H> {
    /// Starts the clock and captures the context and the runtime handle.
    /// Call it in `call`.
    #[inline]
    pub(crate) fn new(shared: &Arc<Shared<H>>) -> Self {
        let ctx = Context::current();
        Self {
            shared: Arc::clone(shared),
            start: clock::now(),
            // A sync hook never spawns, so it needs no handle.
            handle: if H::SYNC {
                None
            } else {
                Handle::try_current().ok()
            },
            request_id: ctx.request_id().cloned(),
            attempt: ctx.attempt(),
            #[cfg(feature = "http")]
            status: None,
            outcome: None,
        }
    }

    /// Fires the hook with `outcome`.
    #[inline]
    pub(crate) fn finish(mut self, outcome: Outcome) {
        self.outcome = Some(outcome);
    }

    /// Fires the hook with `outcome`, timing its end in a clock stretch of its
    /// own (one clock read; for the body's last frame, polled outside any
    /// stretch).
    #[cfg(feature = "http")]
    pub(crate) fn finish_now(self, outcome: Outcome) {
        clock::stretch(|| self.finish(outcome));
    }

    /// Records the response status; from now on an early drop with a status
    /// of 400 or more is an error, not a cancellation.
    #[cfg(feature = "http")]
    pub(crate) fn set_status(&mut self, status: http::StatusCode) {
        self.status = Some(status);
    }

    /// The status recorded by [`set_status`](Self::set_status).
    #[cfg(feature = "http")]
    pub(crate) fn status(&self) -> Option<http::StatusCode> {
        self.status
    }

    // `self` is only read with `http`.
    #[cfg_attr(not(feature = "http"), allow(clippy::unused_self))]
    fn early_drop_outcome(&self) -> Outcome {
        #[cfg(feature = "http")]
        if let Some(status) = self.status {
            if let Some(kind) = crate::body::status_error_kind(status) {
                return Outcome::Error(kind);
            }
        }
        Outcome::Cancelled
    }
}

impl<H: Hook> Drop for Guard<H> {
    #[inline]
    fn drop(&mut self) {
        let outcome = self
            .outcome
            .take()
            .unwrap_or_else(|| self.early_drop_outcome());
        // A sync hook needs no runtime. Dropped where the request finished
        // (the shield's poll runs in a clock stretch): the stretch's instant
        // is the end, early by at most that poll, with no second clock read.
        let (elapsed, current) = match clock::stretch_now() {
            Some(end) if H::SYNC => (end.saturating_duration_since(self.start), None),
            _ => {
                let current = Handle::try_current();
                // tokio's clock (with `test-util`) panics once the thread's
                // locals are gone (a future dropped at thread exit): report
                // zero then.
                let elapsed = match &current {
                    Err(e) if e.is_thread_local_destroyed() => Duration::ZERO,
                    _ => Instant::now().saturating_duration_since(self.start),
                };
                (elapsed, current.ok())
            }
        };
        let done = Completion::new(outcome, elapsed)
            .with_request_id(self.request_id.take())
            .with_attempt(self.attempt);
        #[cfg(feature = "http")]
        let done = done.with_status(self.status);
        run(&self.shared, self.handle.take(), current, done);
    }
}

impl<H: Hook> fmt::Debug for Guard<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guard")
            .field("start", &self.start)
            .field("request_id", &self.request_id)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

/// Polls `fut` once with a waker that does nothing; `true` if it finished.
fn poll_once<F: Future<Output = ()>>(fut: Pin<&mut F>) -> bool {
    let mut cx = TaskContext::from_waker(Waker::noop());
    fut.poll(&mut cx).is_ready()
}

/// Runs the hook for one finished request. See the crate docs, "# Hooks".
fn run<H: Hook>(
    shared: &Arc<Shared<H>>,
    captured: Option<Handle>,
    current: Option<Handle>,
    done: Completion,
) {
    let core = &shared.core;
    if H::SYNC {
        // Runtime-free by contract: run it here, whatever thread this is.
        let fut = pin!(shared.hook.call(done));
        core.count(if poll_once(fut) {
            Count::Inline
        } else {
            Count::Skipped
        });
        return;
    }
    match (current, captured) {
        // Inside a runtime: its timers and spawner are usable, so the first
        // poll happens here and only what is left is spawned. The future is
        // boxed first so it can move into the task after being polled.
        (Some(current), captured) => {
            let mut fut = Box::pin(shared.hook.call(done));
            if poll_once(fut.as_mut()) {
                core.count(Count::Inline);
            } else {
                spawn(shared, &captured.unwrap_or(current), Work::Resume(fut));
            }
        }
        // Off the runtime, with the handle captured at call time: that
        // runtime may be gone, and a hook polled against a dead runtime's
        // timer panics, so the whole hook (its `call` included) runs as a
        // task. A runtime that shut down drops the task unpolled, which
        // counts as a skip.
        (None, Some(captured)) => spawn(shared, &captured, Work::Start(done)),
        // No runtime at all: nothing can run an async hook.
        (None, None) => core.count(Count::Skipped),
    }
}

/// What a spawned task has to do.
enum Work<H: Hook> {
    /// Call the hook, then run its future.
    Start(Completion),
    /// Run the rest of a future already polled once.
    Resume(Pin<Box<H::Future>>),
}

/// Counts a skip if the task holding it ends before the hook finished or
/// timed out (the runtime dropped it).
struct SpawnWatch<H> {
    shared: Arc<Shared<H>>,
    settled: bool,
}

impl<H> SpawnWatch<H> {
    fn settle(&mut self) {
        self.settled = true;
    }
}

impl<H> Drop for SpawnWatch<H> {
    #[inline]
    fn drop(&mut self) {
        if !self.settled {
            self.shared.core.count(Count::Skipped);
        }
    }
}

fn spawn<H: Hook>(shared: &Arc<Shared<H>>, handle: &Handle, work: Work<H>) {
    let core = &shared.core;
    core.count(Count::Spawned);
    let mut watch = SpawnWatch {
        shared: Arc::clone(shared),
        settled: false,
    };
    let task = async move {
        let limit = watch.shared.core.hook_timeout;
        let finished = match work {
            Work::Start(done) => tokio::time::timeout(limit, watch.shared.hook.call(done))
                .await
                .is_ok(),
            Work::Resume(fut) => tokio::time::timeout(limit, fut).await.is_ok(),
        };
        if !finished {
            watch.shared.core.count(Count::TimedOut);
        }
        watch.settle();
    };
    // Detached: the tracker, not the join handle, is how shutdown waits.
    drop(handle.spawn(core.tracker.track_future(task)));
}

/// The [`ErrorKind`] of a service or body error, without consuming it.
///
/// `classify` needs a `&dyn Error`, which no bound can give for both
/// `BoxError` (not itself an `Error`) and concrete error types, so the
/// error is looked at through [`Any`]: the boxed errors every backstop layer
/// returns, `std::io::Error` and the core's own types are classified (their
/// `source()` chain walked); any other type is an upstream failure, as
/// `classify` would say of it.
pub(crate) fn error_kind<E: 'static>(err: &E) -> ErrorKind {
    let any: &dyn Any = err;
    if let Some(e) = any.downcast_ref::<BoxError>() {
        return classify(&**e);
    }
    if let Some(e) = any.downcast_ref::<Box<dyn Error + Send>>() {
        return classify(&**e);
    }
    if let Some(e) = any.downcast_ref::<Box<dyn Error>>() {
        return classify(&**e);
    }
    if let Some(e) = any.downcast_ref::<std::io::Error>() {
        return e.get_ref().map_or(ErrorKind::UpstreamFailure, |inner| {
            classify(inner as &(dyn Error + 'static))
        });
    }
    macro_rules! core_types {
        ($($t:ty),*) => {
            $(if let Some(e) = any.downcast_ref::<$t>() {
                return classify(e);
            })*
        };
    }
    core_types!(
        SlaExpired,
        StreamTimedOut,
        Overloaded,
        CostOverBurst,
        AttemptTimedOut
    );
    ErrorKind::UpstreamFailure
}
