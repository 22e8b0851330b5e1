//! `RateLimitLayer` and its builder.

use std::fmt;
use std::hash::Hash;
use std::marker::PhantomData;
use std::sync::Arc;

use backstop_core::ConfigError;
use tokio::time::Duration;
use tower_layer::Layer;

use crate::gcra::{GcraStore, Quota};
use crate::key::{Global, KeyedBy, UnitCost, Weighted};
use crate::keyed::KeyedGcraStore;
use crate::obs::Metrics;
use crate::reservation::{AttachWith, Discard, Reservation};
use crate::service::RateLimit;
use crate::store::{RateStore, StoreErrorPolicy};

/// The default bound on tracked keys.
pub const DEFAULT_MAX_KEYS: usize = 100_000;

/// Applies a GCRA rate limit to a service; every service made from one layer
/// value (and every clone of those) shares one limiter.
///
/// Built with [`per_minute`](Self::per_minute), [`per_second`](Self::per_second)
/// or [`new`](Self::new), which return a [`RateLimitBuilder`].
///
/// See the [crate docs](crate) for an example.
pub struct RateLimitLayer<C = UnitCost, Kf = Global, St = GcraStore, A = Discard> {
    shared: Arc<Shared<C, Kf, St>>,
    attach: A,
}

/// What every service of one layer shares, besides the store.
pub(crate) struct Shared<C, Kf, St> {
    pub(crate) store: Arc<St>,
    pub(crate) cost: C,
    pub(crate) key: Kf,
    pub(crate) quota: Quota,
    pub(crate) name: &'static str,
    pub(crate) policy: StoreErrorPolicy,
    pub(crate) metrics: Metrics,
}

/// Settings of a [`RateLimitLayer`], checked by [`build`](Self::build).
///
/// `K` is the key type once [`keyed_by`](Self::keyed_by) was called.
#[must_use = "a builder does nothing until `build()`"]
pub struct RateLimitBuilder<C = UnitCost, Kf = Global, K = ()> {
    rate: u64,
    per: Duration,
    burst: Option<u64>,
    cost: C,
    key: Kf,
    max_keys: usize,
    policy: StoreErrorPolicy,
    name: &'static str,
    _key: PhantomData<fn() -> K>,
}

// === impl RateLimitLayer ===

impl RateLimitLayer {
    /// `n` cost units per minute; the burst defaults to `max(1, n / 60)`.
    pub fn per_minute(n: u64) -> RateLimitBuilder {
        Self::new(n, Duration::from_secs(60))
    }

    /// `n` cost units per second; the burst defaults to `max(1, n)`.
    pub fn per_second(n: u64) -> RateLimitBuilder {
        Self::new(n, Duration::from_secs(1))
    }

    /// `rate` cost units per `per`; the burst defaults to one second's worth,
    /// at least 1.
    // Returns the builder: settings are checked once, in `build()`.
    #[allow(clippy::new_ret_no_self)]
    pub fn new(rate: u64, per: Duration) -> RateLimitBuilder {
        RateLimitBuilder {
            rate,
            per,
            burst: None,
            cost: UnitCost,
            key: Global,
            max_keys: DEFAULT_MAX_KEYS,
            policy: StoreErrorPolicy::default(),
            name: "rate_limit",
            _key: PhantomData,
        }
    }
}

impl<C, Kf, St, A> RateLimitLayer<C, Kf, St, A> {
    /// The quota every service of this layer enforces.
    pub fn quota(&self) -> &Quota {
        &self.shared.quota
    }

    /// The static label given with [`RateLimitBuilder::name`].
    pub fn name(&self) -> &'static str {
        self.shared.name
    }

    /// The store shared by every service of this layer.
    pub fn store(&self) -> &Arc<St> {
        &self.shared.store
    }

    /// Hands each admitted request's [`Reservation`] to `f` along with its
    /// response, so that whoever reads the true cost can settle it.
    ///
    /// The reservation costs one small allocation per admitted request.
    pub fn attach_reservation<Resp, F>(self, f: F) -> RateLimitLayer<C, Kf, St, AttachWith<F>>
    where
        St: RateStore,
        F: Fn(&mut Resp, Reservation<St>) + Clone,
    {
        RateLimitLayer {
            shared: self.shared,
            attach: AttachWith(f),
        }
    }

    /// Hands each admitted request's [`Reservation`] to `attach`, an
    /// [`Attach`](crate::Attach) policy of the caller's own: for what
    /// [`attach_reservation`](Self::attach_reservation) and
    /// [`reservation_in_extensions`](Self::reservation_in_extensions) do
    /// not cover, such as several limiters' reservations gathered in one
    /// place, refunded when no response arrives.
    pub fn attach<A2>(self, attach: A2) -> RateLimitLayer<C, Kf, St, A2> {
        RateLimitLayer {
            shared: self.shared,
            attach,
        }
    }

    /// Inserts each admitted request's [`Reservation<St>`] into its
    /// `http::Response` extensions, so that whoever reads the response's usage
    /// can settle it. If nobody does, the reserved cost stands.
    ///
    /// The reservation costs one small allocation per admitted request.
    #[cfg(feature = "http")]
    #[cfg_attr(docsrs, doc(cfg(feature = "http")))]
    pub fn reservation_in_extensions(
        self,
    ) -> RateLimitLayer<C, Kf, St, crate::reservation::InExtensions> {
        RateLimitLayer {
            shared: self.shared,
            attach: crate::reservation::InExtensions,
        }
    }
}

impl<S, C, Kf, St, A: Clone> Layer<S> for RateLimitLayer<C, Kf, St, A> {
    type Service = RateLimit<S, C, Kf, St, A>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit::new(inner, Arc::clone(&self.shared), self.attach.clone())
    }
}

/// Clones share the limiter: a clone is the same limit, not a new one.
impl<C, Kf, St, A: Clone> Clone for RateLimitLayer<C, Kf, St, A> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            attach: self.attach.clone(),
        }
    }
}

impl<C, Kf, St: fmt::Debug, A> fmt::Debug for RateLimitLayer<C, Kf, St, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("name", &self.shared.name)
            .field("quota", &self.shared.quota)
            .field("on_store_error", &self.shared.policy)
            .field("store", &self.shared.store)
            .finish_non_exhaustive()
    }
}

// === impl RateLimitBuilder ===

impl<C, Kf, K> RateLimitBuilder<C, Kf, K> {
    /// Cost units admitted at once from idle (at least 1); no request may cost
    /// more. Defaults to one second's worth of the rate, at least 1.
    pub fn burst(mut self, burst: u64) -> Self {
        self.burst = Some(burst);
        self
    }

    /// Weighs each request: `f` returns its cost (default: 1). A cost of 0
    /// passes without touching the limiter; a cost above the burst fails with
    /// `CostOverBurst`.
    pub fn cost_fn<Req, F>(self, f: F) -> RateLimitBuilder<Weighted<F>, Kf, K>
    where
        F: Fn(&Req) -> u64,
    {
        RateLimitBuilder {
            rate: self.rate,
            per: self.per,
            burst: self.burst,
            cost: Weighted(f),
            key: self.key,
            max_keys: self.max_keys,
            policy: self.policy,
            name: self.name,
            _key: PhantomData,
        }
    }

    /// Gives each key its own limit: `f` returns the key of a request.
    pub fn keyed_by<Req, K2, F>(self, f: F) -> RateLimitBuilder<C, KeyedBy<F>, K2>
    where
        F: Fn(&Req) -> K2,
        K2: Hash + Eq + Clone + Send + Sync + 'static,
    {
        RateLimitBuilder {
            rate: self.rate,
            per: self.per,
            burst: self.burst,
            cost: self.cost,
            key: KeyedBy(f),
            max_keys: self.max_keys,
            policy: self.policy,
            name: self.name,
            _key: PhantomData,
        }
    }

    /// The most keys the keyed store tracks (default 100,000; must be above
    /// zero).
    /// Idle keys are evicted first; see [`KeyedGcraStore`].
    pub fn max_keys(mut self, n: usize) -> Self {
        self.max_keys = n;
        self
    }

    /// What to do when the store fails (default: fail open).
    pub fn on_store_error(mut self, policy: StoreErrorPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// A static label naming this limiter (e.g. `"rpm"`, `"tpm"`), for
    /// metrics and debugging. Default `"rate_limit"`.
    pub fn name(mut self, name: &'static str) -> Self {
        self.name = name;
        self
    }

    /// Checks the settings and returns the quota.
    pub fn quota(&self) -> Result<Quota, ConfigError> {
        let burst = self
            .burst
            .unwrap_or_else(|| Quota::default_burst(self.rate, self.per));
        Quota::new(self.rate, self.per, burst)
    }

    /// Builds the layer around a store of your own (a shared Redis store, a
    /// test double), made by `make` from the checked quota.
    pub fn build_with_store<St, M>(self, make: M) -> Result<RateLimitLayer<C, Kf, St>, ConfigError>
    where
        M: FnOnce(Quota) -> St,
    {
        let quota = self.quota()?;
        if self.max_keys == 0 {
            return Err(ConfigError::new("max_keys", "must be above zero"));
        }
        if self.name.is_empty() {
            return Err(ConfigError::new("name", "must not be empty"));
        }
        Ok(RateLimitLayer {
            shared: Arc::new(Shared {
                store: Arc::new(make(quota)),
                cost: self.cost,
                key: self.key,
                quota,
                name: self.name,
                policy: self.policy,
                metrics: Metrics::resolve(self.name),
            }),
            attach: Discard,
        })
    }
}

impl<C> RateLimitBuilder<C, Global, ()> {
    /// Checks the settings and builds the layer, with one global limit in an
    /// in-process [`GcraStore`].
    ///
    /// Errors name the setting: `rate` of 0, `per` of zero or over 24 h,
    /// `burst` of 0 or too long, `max_keys` of 0, an empty `name`.
    pub fn build(self) -> Result<RateLimitLayer<C, Global, GcraStore>, ConfigError> {
        self.build_with_store(GcraStore::new)
    }
}

impl<C, F, K> RateLimitBuilder<C, KeyedBy<F>, K>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
{
    /// Checks the settings and builds the layer, with a limit per key in an
    /// in-process [`KeyedGcraStore`].
    ///
    /// Errors name the setting: `rate` of 0, `per` of zero or over 24 h,
    /// `burst` of 0 or too long, `max_keys` of 0, an empty `name`.
    pub fn build(self) -> Result<RateLimitLayer<C, KeyedBy<F>, KeyedGcraStore<K>>, ConfigError> {
        let max_keys = self.max_keys;
        self.build_with_store(|quota| KeyedGcraStore::new(quota, max_keys))
    }
}

impl<C, Kf, K> fmt::Debug for RateLimitBuilder<C, Kf, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitBuilder")
            .field("rate", &self.rate)
            .field("per", &self.per)
            .field("burst", &self.burst)
            .field("max_keys", &self.max_keys)
            .field("on_store_error", &self.policy)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}
