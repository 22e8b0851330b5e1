//! `RetryLayer`: configuration, validation and the shared state.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use backstop_core::{ConfigError, check_duration};
use tokio::time::Duration;
use tower_layer::Layer;

use crate::backoff::{Jitter, Rng};
use crate::budget::Budget;
use crate::obs::Metrics;
use crate::policy::DefaultPolicy;
use crate::service::Retry;

/// The validated settings.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Config {
    pub(crate) max_attempts: u32,
    pub(crate) backoff_base: Duration,
    pub(crate) backoff_max: Duration,
    pub(crate) jitter: Jitter,
    pub(crate) min_attempt_time: Duration,
    pub(crate) retry_after_max: Duration,
}

/// What every clone of one layer shares: settings, budget, RNG, counters.
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) budget: Budget,
    pub(crate) rng: Rng,
    pub(crate) retries: AtomicU64,
    pub(crate) budget_exhausted: AtomicU64,
    pub(crate) metrics: Metrics,
}

/// Applies [`Retry`] to a service: attempts with backoff and jitter, paid from
/// a retry budget shared by every service this layer builds, deadline-aware.
///
/// Build it with [`RetryLayer::builder`] (or [`RetryLayer::new`] for the
/// defaults). One layer value is one budget: every service it wraps and every
/// clone of those services draw from it.
///
/// See the [crate docs](crate) for an example.
pub struct RetryLayer<P = DefaultPolicy> {
    pub(crate) policy: P,
    pub(crate) shared: Arc<Shared>,
}

/// Marker for a builder that builds a [`RetryLayer`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Generic;

/// The settings of a [`RetryLayer`], validated by [`build`](Self::build).
///
/// `K` is [`Generic`], or `Http` after
/// [`for_http`](RetryLayerBuilder::for_http) (feature `http`).
#[must_use]
pub struct RetryLayerBuilder<P = DefaultPolicy, K = Generic> {
    pub(crate) policy: P,
    max_attempts: u32,
    backoff_base: Duration,
    backoff_max: Duration,
    jitter: Jitter,
    min_attempt_time: Duration,
    retry_after_max: Option<Duration>,
    ratio: f64,
    min_per_second: u32,
    window: Duration,
    seed: Option<u64>,
    #[cfg(feature = "http")]
    pub(crate) max_replay_bytes: usize,
    _kind: PhantomData<fn() -> K>,
}

/// Counters of one [`RetryLayer`], shared by every service it built.
///
/// Tracing and metrics belong to the observability layer; it reads these.
#[derive(Clone)]
pub struct RetryStats {
    shared: Arc<Shared>,
}

// === impl RetryLayer ===

impl RetryLayer<DefaultPolicy> {
    /// A layer with every default: 3 attempts, backoff 1 s doubling up to
    /// 32 s with additive jitter, `min_attempt_time` 250 ms, a budget of 0.2
    /// retries per request plus 10 per second over 10 s, and
    /// [`DefaultPolicy`].
    pub fn new() -> Self {
        Self::builder()
            .build()
            .unwrap_or_else(|_| unreachable!("the defaults are valid"))
    }

    /// A builder, starting from the defaults.
    pub fn builder() -> RetryLayerBuilder<DefaultPolicy, Generic> {
        RetryLayerBuilder::default()
    }
}

impl Default for RetryLayer<DefaultPolicy> {
    fn default() -> Self {
        Self::new()
    }
}

impl<P> RetryLayer<P> {
    /// The layer's counters (shared with every service it built).
    pub fn stats(&self) -> RetryStats {
        RetryStats {
            shared: Arc::clone(&self.shared),
        }
    }

    /// The policy.
    pub fn policy(&self) -> &P {
        &self.policy
    }
}

impl<P: Clone> Clone for RetryLayer<P> {
    /// Shares the budget: a clone of the layer is the same layer.
    fn clone(&self) -> Self {
        Self {
            policy: self.policy.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

/// `S: Clone`: a retry calls a clone of the inner service.
impl<P: Clone, S: Clone> Layer<S> for RetryLayer<P> {
    type Service = Retry<P, S>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry::new(inner, self.policy.clone(), Arc::clone(&self.shared))
    }
}

impl<P: fmt::Debug> fmt::Debug for RetryLayer<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryLayer")
            .field("policy", &self.policy)
            .field("shared", &*self.shared)
            .finish()
    }
}

// === impl Shared ===

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("config", &self.config)
            .field("budget", &self.budget)
            .field("retries", &self.retries.load(Ordering::Relaxed))
            .field(
                "budget_exhausted",
                &self.budget_exhausted.load(Ordering::Relaxed),
            )
            .finish_non_exhaustive()
    }
}

// === impl RetryStats ===

impl RetryStats {
    pub(crate) fn from_shared(shared: &Arc<Shared>) -> Self {
        Self {
            shared: Arc::clone(shared),
        }
    }

    /// Retries started (attempts after the first).
    pub fn retries(&self) -> u64 {
        self.shared.retries.load(Ordering::Relaxed)
    }

    /// Retries the policy wanted but the budget refused (the caller got the
    /// last outcome).
    pub fn budget_exhausted(&self) -> u64 {
        self.shared.budget_exhausted.load(Ordering::Relaxed)
    }

    /// The budget's balance now, in retries (reserve included).
    pub fn budget_balance(&self) -> f64 {
        self.shared.budget.balance()
    }
}

impl fmt::Debug for RetryStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryStats")
            .field("retries", &self.retries())
            .field("budget_exhausted", &self.budget_exhausted())
            .field("budget_balance", &self.budget_balance())
            .finish()
    }
}

// === impl RetryLayerBuilder ===

impl Default for RetryLayerBuilder<DefaultPolicy, Generic> {
    fn default() -> Self {
        Self {
            policy: DefaultPolicy::new(),
            max_attempts: 3,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(32),
            jitter: Jitter::Additive,
            min_attempt_time: Duration::from_millis(250),
            retry_after_max: None,
            ratio: 0.2,
            min_per_second: 10,
            window: Duration::from_secs(10),
            seed: None,
            #[cfg(feature = "http")]
            max_replay_bytes: crate::http::DEFAULT_MAX_REPLAY_BYTES,
            _kind: PhantomData,
        }
    }
}

impl<P, K> RetryLayerBuilder<P, K> {
    pub(crate) fn with<P2, K2>(self, policy: P2) -> RetryLayerBuilder<P2, K2> {
        RetryLayerBuilder {
            policy,
            max_attempts: self.max_attempts,
            backoff_base: self.backoff_base,
            backoff_max: self.backoff_max,
            jitter: self.jitter,
            min_attempt_time: self.min_attempt_time,
            retry_after_max: self.retry_after_max,
            ratio: self.ratio,
            min_per_second: self.min_per_second,
            window: self.window,
            seed: self.seed,
            #[cfg(feature = "http")]
            max_replay_bytes: self.max_replay_bytes,
            _kind: PhantomData,
        }
    }

    /// Attempts in all, the first included (default 3, at least 1; 1 means
    /// never retry).
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n;
        self
    }

    /// The first retry's backoff before jitter, doubled for each further
    /// retry (default 1 s, above zero).
    pub fn backoff_base(mut self, d: Duration) -> Self {
        self.backoff_base = d;
        self
    }

    /// The cap of the doubling backoff, before jitter (default 32 s, at least
    /// `backoff_base`).
    pub fn backoff_max(mut self, d: Duration) -> Self {
        self.backoff_max = d;
        self
    }

    /// How the backoff is randomised (default [`Jitter::Additive`]).
    pub fn jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// A retry starts only if it can run at least this long before the SLA
    /// deadline (default 250 ms; zero allowed). The first attempt always
    /// starts.
    pub fn min_attempt_time(mut self, d: Duration) -> Self {
        self.min_attempt_time = d;
        self
    }

    /// The longest upstream-requested wait (`Retry-After`,
    /// [`Action::RetryAfter`](crate::Action::RetryAfter)) honoured; a longer
    /// one stops retrying at once (default = `backoff_max`).
    pub fn retry_after_max(mut self, d: Duration) -> Self {
        self.retry_after_max = Some(d);
        self
    }

    /// Retries each original request adds to the budget (default 0.2; in
    /// [0, 1000], resolution 0.001).
    pub fn ratio(mut self, ratio: f64) -> Self {
        self.ratio = ratio;
        self
    }

    /// The budget's floor: retries per second allowed whatever the traffic
    /// (default 10).
    pub fn min_per_second(mut self, n: u32) -> Self {
        self.min_per_second = n;
        self
    }

    /// How long deposits and withdrawals count (default 10 s; 1 s to 60 s,
    /// as in Finagle).
    pub fn window(mut self, d: Duration) -> Self {
        self.window = d;
        self
    }

    /// Seeds the jitter RNG, for reproducible backoffs in tests (default: a
    /// random seed per layer).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    pub(crate) fn shared(&self) -> Result<Arc<Shared>, ConfigError> {
        if self.max_attempts == 0 {
            return Err(ConfigError::new("max_attempts", "must be at least 1"));
        }
        let base = check_duration("backoff_base", self.backoff_base, false)?;
        let max = check_duration("backoff_max", self.backoff_max, false)?;
        if max < base {
            return Err(ConfigError::new(
                "backoff_max",
                format!("{max:?} is shorter than backoff_base {base:?}"),
            ));
        }
        let min_attempt_time = check_duration("min_attempt_time", self.min_attempt_time, true)?;
        let retry_after_max =
            check_duration("retry_after_max", self.retry_after_max.unwrap_or(max), true)?;
        if !(0.0..=1000.0).contains(&self.ratio) {
            return Err(ConfigError::new(
                "ratio",
                format!("{} is outside [0, 1000]", self.ratio),
            ));
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&self.window) {
            return Err(ConfigError::new(
                "window",
                format!("{:?} is outside [1s, 60s]", self.window),
            ));
        }
        // The reserve (min_per_second × window) is kept in thousandths of a
        // retry in an i64; cap it far below that.
        if u64::from(self.min_per_second) * self.window.as_secs().max(1) > 1_000_000_000 {
            return Err(ConfigError::new(
                "min_per_second",
                format!(
                    "{} per second over {:?} is too large",
                    self.min_per_second, self.window
                ),
            ));
        }
        Ok(Arc::new(Shared {
            config: Config {
                max_attempts: self.max_attempts,
                backoff_base: base,
                backoff_max: max,
                jitter: self.jitter,
                min_attempt_time,
                retry_after_max,
            },
            budget: Budget::new(self.ratio, self.min_per_second, self.window),
            rng: Rng::new(self.seed),
            retries: AtomicU64::new(0),
            budget_exhausted: AtomicU64::new(0),
            metrics: Metrics::resolve(),
        }))
    }
}

impl<P> RetryLayerBuilder<P, Generic> {
    /// Replaces the policy.
    pub fn policy<P2>(self, policy: P2) -> RetryLayerBuilder<P2, Generic> {
        self.with(policy)
    }

    /// Validates the settings and builds the layer.
    ///
    /// Errors name the setting: `max_attempts` 0; `backoff_base` zero or over
    /// 24 h; `backoff_max` below `backoff_base` or over 24 h;
    /// `min_attempt_time` or `retry_after_max` over 24 h; `ratio` outside
    /// [0, 1000] (or NaN); `window` outside [1 s, 60 s]; `min_per_second`
    /// × `window` over 10^9.
    pub fn build(self) -> Result<RetryLayer<P>, ConfigError> {
        let shared = self.shared()?;
        Ok(RetryLayer {
            policy: self.policy,
            shared,
        })
    }
}

impl<P: fmt::Debug, K> fmt::Debug for RetryLayerBuilder<P, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryLayerBuilder")
            .field("policy", &self.policy)
            .field("max_attempts", &self.max_attempts)
            .field("backoff_base", &self.backoff_base)
            .field("backoff_max", &self.backoff_max)
            .field("jitter", &self.jitter)
            .field("min_attempt_time", &self.min_attempt_time)
            .field("retry_after_max", &self.retry_after_max)
            .field("ratio", &self.ratio)
            .field("min_per_second", &self.min_per_second)
            .field("window", &self.window)
            .field("seed", &self.seed)
            .finish_non_exhaustive()
    }
}
