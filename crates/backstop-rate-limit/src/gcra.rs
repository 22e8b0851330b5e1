//! The generic cell rate algorithm, and the in-process un-keyed store.

use std::future::{Ready, ready};
use std::sync::atomic::{AtomicU64, Ordering};

use backstop_core::{ConfigError, check_duration, clock};
use tokio::time::{Duration, Instant};

use crate::store::{Decision, RateStore, Receipt, StoreError};

/// A validated quota: `rate` cost units per `period`, with a `burst` of units
/// admitted at once from idle.
///
/// Built by [`RateLimitLayer`](crate::RateLimitLayer)'s builder, or directly
/// for a custom [`RateStore`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    rate: u64,
    period: Duration,
    burst: u64,
    /// Nanoseconds per `rate` units (the period).
    period_nanos: u64,
    /// Nanoseconds per unit when the period divides evenly (no 128-bit
    /// division on the hot path).
    unit_nanos: Option<u64>,
    /// The increment of a full burst.
    tolerance: u64,
}

/// Keeps every sum of instants and increments far from `u64::MAX`.
const MAX_TOLERANCE_NANOS: u64 = u64::MAX / 4;

impl Quota {
    /// Checks and builds a quota.
    ///
    /// Errors name the setting: `rate` of zero, `per` of zero or longer than
    /// 24 h, `burst` of zero, or a burst whose tolerance (`burst × per / rate`)
    /// does not fit in about 146 years.
    pub fn new(rate: u64, per: Duration, burst: u64) -> Result<Self, ConfigError> {
        if rate == 0 {
            return Err(ConfigError::new("rate", "must be above zero"));
        }
        let per = check_duration("per", per, false)?;
        if burst == 0 {
            return Err(ConfigError::new("burst", "must be above zero"));
        }
        let period_nanos = per.as_nanos() as u64; // <= 24 h, fits
        let tau = u128::from(burst) * u128::from(period_nanos) / u128::from(rate);
        if tau > u128::from(MAX_TOLERANCE_NANOS) {
            return Err(ConfigError::new(
                "burst",
                format!("{burst} units at {rate} per {per:?} is too long a burst"),
            ));
        }
        let mut quota = Self {
            rate,
            period: per,
            burst,
            period_nanos,
            unit_nanos: (period_nanos % rate == 0).then_some(period_nanos / rate),
            tolerance: 0,
        };
        quota.tolerance = quota.increment(burst);
        Ok(quota)
    }

    /// The default burst for `rate` per `per`: one second's worth, at least 1.
    pub(crate) fn default_burst(rate: u64, per: Duration) -> u64 {
        let nanos = per.as_nanos().max(1);
        let per_second = u128::from(rate) * 1_000_000_000 / nanos;
        (per_second.min(u128::from(u64::MAX)) as u64).max(1)
    }

    /// Cost units per period.
    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// The period.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// Cost units admitted at once from idle; no request may cost more.
    pub fn burst(&self) -> u64 {
        self.burst
    }

    /// The emission interval of `cost` units in nanoseconds, rounded up (so
    /// rounding never admits more than the rate).
    pub(crate) fn increment(&self, cost: u64) -> u64 {
        if let Some(unit) = self.unit_nanos {
            if let Some(inc) = unit.checked_mul(cost) {
                return inc.min(MAX_TOLERANCE_NANOS);
            }
        }
        let n = u128::from(cost) * u128::from(self.period_nanos);
        let inc = n.div_ceil(u128::from(self.rate));
        inc.min(u128::from(MAX_TOLERANCE_NANOS)) as u64
    }

    /// The tolerance: how far the theoretical arrival time may run ahead of
    /// now and still conform (the increment of a full burst).
    pub(crate) fn tolerance(&self) -> u64 {
        self.tolerance
    }
}

/// One GCRA step on a theoretical arrival time `tat`, all in nanoseconds from
/// the store's base: `Ok((new_tat, wait))` commits, `Err(retry_after)` rejects.
pub(crate) fn step(
    quota: &Quota,
    tat: u64,
    now: u64,
    cost: u64,
    max_wait: Option<Duration>,
) -> Result<(u64, u64), Duration> {
    let new_tat = tat.max(now).saturating_add(quota.increment(cost));
    let conforms_at = new_tat.saturating_sub(quota.tolerance());
    let wait = conforms_at.saturating_sub(now);
    match max_wait {
        Some(max) if u128::from(wait) > max.as_nanos() => Err(Duration::from_nanos(wait)),
        _ => Ok((new_tat, wait)),
    }
}

/// A refund of `reserved - actual` on a reservation ending at `receipt`, or a
/// charge of `actual - reserved`: the new theoretical arrival time, if any.
///
/// A refund applies only when nothing was reserved after it (`tat ==
/// receipt`): handing it to a later request would schedule that request
/// alongside ones already waiting and break the burst bound.
pub(crate) fn settled_tat(
    quota: &Quota,
    tat: u64,
    now: u64,
    reserved: u64,
    actual: u64,
    receipt: u64,
) -> Option<u64> {
    if actual > reserved {
        Some(
            tat.max(now)
                .saturating_add(quota.increment(actual - reserved)),
        )
    } else if actual < reserved && tat == receipt {
        let back = quota.increment(reserved) - quota.increment(actual);
        Some(tat.saturating_sub(back))
    } else {
        None
    }
}

/// A fixed base instant and the nanoseconds since it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Clock {
    base: Instant,
}

impl Clock {
    pub(crate) fn new() -> Self {
        // One tolerance of headroom is not needed: times before the base
        // saturate to 0, which is "idle".
        Self {
            base: Instant::now(),
        }
    }

    pub(crate) fn now(self) -> u64 {
        // The stretch's instant (backstop_core::clock): the same one the
        // future asked at, and no second clock read.
        clock::now().saturating_duration_since(self.base).as_nanos() as u64
    }
}

/// The in-process store for one global limit: one `AtomicU64` holding the
/// theoretical arrival time, updated by compare-and-swap.
///
/// No lock, no allocation; `reserve` answers with a ready future.
#[derive(Debug)]
pub struct GcraStore {
    quota: Quota,
    clock: Clock,
    tat: AtomicU64,
}

impl GcraStore {
    /// A store enforcing `quota`, idle now.
    pub fn new(quota: Quota) -> Self {
        Self {
            quota,
            clock: Clock::new(),
            tat: AtomicU64::new(0),
        }
    }

    /// The quota it enforces.
    pub fn quota(&self) -> &Quota {
        &self.quota
    }

    /// Time from now until a request of `cost` units would conform (zero when
    /// it would be admitted at once).
    pub fn wait_for(&self, cost: u64) -> Duration {
        let now = self.clock.now();
        match step(
            &self.quota,
            self.tat.load(Ordering::Acquire),
            now,
            cost,
            None,
        ) {
            Ok((_, wait)) => Duration::from_nanos(wait),
            Err(d) => d,
        }
    }

    pub(crate) fn try_reserve(&self, cost: u64, max_wait: Option<Duration>) -> Decision {
        let now = self.clock.now();
        let mut tat = self.tat.load(Ordering::Acquire);
        loop {
            let (new_tat, wait) = match step(&self.quota, tat, now, cost, max_wait) {
                Ok(ok) => ok,
                Err(retry_after) => return Decision::Reject { retry_after },
            };
            match self
                .tat
                .compare_exchange_weak(tat, new_tat, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    return Decision::Admit {
                        after: Duration::from_nanos(wait),
                        receipt: Receipt::new(new_tat),
                    };
                }
                Err(actual) => tat = actual,
            }
        }
    }
}

impl RateStore for GcraStore {
    type Key = ();
    type ReserveFuture = Ready<Result<Decision, StoreError>>;

    fn reserve(&self, _key: &(), cost: u64, max_wait: Option<Duration>) -> Self::ReserveFuture {
        ready(Ok(self.try_reserve(cost, max_wait)))
    }

    fn cancel(&self, key: &(), cost: u64, receipt: Receipt) {
        self.settle(key, cost, 0, receipt);
    }

    fn settle(&self, _key: &(), reserved: u64, actual: u64, receipt: Receipt) {
        let now = self.clock.now();
        let _ = self
            .tat
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |tat| {
                settled_tat(&self.quota, tat, now, reserved, actual, receipt.get())
            });
    }
}
