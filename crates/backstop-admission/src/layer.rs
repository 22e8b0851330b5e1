//! `QueueAdmissionLayer`: configuration, validation and the shared queue.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use backstop_core::{ConfigError, QueueSlots, check_duration};
use tokio::time::Duration;
use tower_layer::Layer;

use crate::obs::{Metrics, debug_event};
use crate::service::QueueAdmission;

/// The default most requests waiting at once.
pub const DEFAULT_MAX_WAITING: usize = 80;
/// The default longest wait for admission.
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(5);
/// The default retry-after hint on `QueueFull` and `WaitExceeded` errors.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Bounds the number of requests waiting for admission and how long each may
/// wait.
///
/// One layer value is one queue: every service it builds, and every clone of
/// those, share one counter. Build it with [`QueueAdmissionLayer::builder`] or
/// take the defaults with [`QueueAdmissionLayer::default`].
///
/// See the [crate docs](crate) for an example.
#[derive(Clone)]
pub struct QueueAdmissionLayer {
    shared: Arc<Shared>,
}

/// Validated settings for a [`QueueAdmissionLayer`].
///
/// Setters take and return the builder by value; [`build`](Self::build)
/// validates.
///
/// See the [crate docs](crate) for an example.
#[derive(Clone, Debug)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct QueueAdmissionBuilder {
    max_waiting: usize,
    max_wait: Duration,
    retry_after: Duration,
}

/// A read-only view of a layer's queue, for readiness checks and metrics.
///
/// Cheap to clone; it observes the same queue as every service of the layer.
///
/// See the [crate docs](crate) for an example.
#[derive(Clone)]
pub struct QueueHandle {
    shared: Arc<Shared>,
}

/// State shared by the layer, its services, their clones and their futures.
pub(crate) struct Shared {
    pub(crate) slots: Arc<QueueSlots>,
    pub(crate) max_wait: Duration,
    pub(crate) retry_after: Duration,
    rejected: AtomicU64,
    metrics: Metrics,
}

// === impl Shared ===

impl Shared {
    pub(crate) fn count_rejected(&self) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        self.metrics.rejected();
        debug_event!(max_waiting = self.slots.max(), "admission queue full");
    }
}

// === impl QueueAdmissionBuilder ===

impl QueueAdmissionBuilder {
    /// The most requests that may wait for admission at once (default 80, at
    /// least 1). One more gets `Overloaded(QueueFull)` at once.
    pub fn max_waiting(mut self, max_waiting: usize) -> Self {
        self.max_waiting = max_waiting;
        self
    }

    /// The longest a request may wait for admission (default 5 s, at most
    /// 24 h). Zero means never wait: a request that finds no capacity free
    /// fails at once.
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = max_wait;
        self
    }

    /// The retry-after hint carried by `QueueFull` and `WaitExceeded` errors
    /// (default 1 s, at most 24 h).
    pub fn retry_after(mut self, retry_after: Duration) -> Self {
        self.retry_after = retry_after;
        self
    }

    /// Validates the settings and builds the layer, with a fresh queue.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the setting: `max_waiting` of 0,
    /// `max_wait` or `retry_after` over 24 h.
    pub fn build(self) -> Result<QueueAdmissionLayer, ConfigError> {
        if self.max_waiting == 0 {
            return Err(ConfigError::new("max_waiting", "must be at least 1"));
        }
        let max_wait = check_duration("max_wait", self.max_wait, true)?;
        let retry_after = check_duration("retry_after", self.retry_after, true)?;
        Ok(QueueAdmissionLayer::from_valid(
            self.max_waiting,
            max_wait,
            retry_after,
        ))
    }
}

impl Default for QueueAdmissionBuilder {
    fn default() -> Self {
        Self {
            max_waiting: DEFAULT_MAX_WAITING,
            max_wait: DEFAULT_MAX_WAIT,
            retry_after: DEFAULT_RETRY_AFTER,
        }
    }
}

// === impl QueueAdmissionLayer ===

impl QueueAdmissionLayer {
    /// A builder with the defaults: `max_waiting` 80, `max_wait` 5 s,
    /// `retry_after` 1 s.
    pub fn builder() -> QueueAdmissionBuilder {
        QueueAdmissionBuilder::default()
    }

    fn from_valid(max_waiting: usize, max_wait: Duration, retry_after: Duration) -> Self {
        // A limiter inside counts its `WaitExceeded` on the ticket's queue
        // (this layer's future never sees the slot again): the hook turns
        // that into this layer's metric and event.
        let metrics = Metrics::resolve();
        let on_wait_exceeded = move || {
            metrics.wait_timeout();
            debug_event!(
                max_wait_ms = max_wait.as_millis() as u64,
                "admission wait exceeded"
            );
        };
        Self {
            shared: Arc::new(Shared {
                slots: QueueSlots::with_wait_exceeded_hook(
                    max_waiting,
                    retry_after,
                    on_wait_exceeded,
                ),
                max_wait,
                retry_after,
                rejected: AtomicU64::new(0),
                metrics: Metrics::resolve(),
            }),
        }
    }

    /// A handle on this layer's queue: depth, capacity and counters.
    pub fn queue(&self) -> QueueHandle {
        QueueHandle::new(Arc::clone(&self.shared))
    }

    /// The longest a request may wait for admission.
    pub fn max_wait(&self) -> Duration {
        self.shared.max_wait
    }

    /// The retry-after hint of this layer's errors.
    pub fn retry_after(&self) -> Duration {
        self.shared.retry_after
    }
}

impl Default for QueueAdmissionLayer {
    /// `max_waiting` 80, `max_wait` 5 s, `retry_after` 1 s.
    fn default() -> Self {
        Self::from_valid(DEFAULT_MAX_WAITING, DEFAULT_MAX_WAIT, DEFAULT_RETRY_AFTER)
    }
}

impl<S> Layer<S> for QueueAdmissionLayer {
    type Service = QueueAdmission<S>;

    fn layer(&self, inner: S) -> Self::Service {
        QueueAdmission::new(inner, Arc::clone(&self.shared))
    }
}

impl fmt::Debug for QueueAdmissionLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueAdmissionLayer")
            .field("max_waiting", &self.shared.slots.max())
            .field("max_wait", &self.shared.max_wait)
            .field("retry_after", &self.shared.retry_after)
            .field("depth", &self.shared.slots.depth())
            .finish()
    }
}

// === impl QueueHandle ===

impl QueueHandle {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// Requests waiting for admission now: from QueueAdmission's `call` until
    /// the last limiter inside admits them (or they fail or are dropped).
    pub fn depth(&self) -> usize {
        self.shared.slots.depth()
    }

    /// The most requests that may wait at once.
    pub fn max_waiting(&self) -> usize {
        self.shared.slots.max()
    }

    /// Whether every slot is taken, so the next request would get `QueueFull`.
    pub fn is_full(&self) -> bool {
        self.shared.slots.is_full()
    }

    /// Requests that failed with `Overloaded(WaitExceeded)` from a limiter
    /// inside this layer, since the layer was built.
    pub fn wait_timeouts(&self) -> u64 {
        self.shared.slots.wait_timeouts()
    }

    /// Requests refused with `Overloaded(QueueFull)`, since the layer was
    /// built.
    pub fn rejected(&self) -> u64 {
        self.shared.rejected.load(Ordering::Relaxed)
    }
}

impl fmt::Debug for QueueHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueHandle")
            .field("depth", &self.depth())
            .field("max_waiting", &self.max_waiting())
            .field("wait_timeouts", &self.wait_timeouts())
            .field("rejected", &self.rejected())
            .finish()
    }
}
