//! The generic cell rate algorithm, and the in-process un-keyed store.

use std::future::{Ready, ready};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

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
    #[inline]
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
    #[inline]
    pub(crate) fn tolerance(&self) -> u64 {
        self.tolerance
    }
}

/// One GCRA step on a theoretical arrival time `tat`, all in nanoseconds from
/// the store's base: `Ok((new_tat, wait))` commits, `Err(retry_after)` rejects.
#[inline]
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

/// A refund or a charge, as [`settlement`] decides it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Settlement {
    /// Move the theoretical arrival time back by `shift` nanoseconds;
    /// `moves_others` when reservations sit above the refunded one (they move
    /// down with it, and `shifted` must grow by `shift`).
    Refund { shift: u64, moves_others: bool },
    /// Add this many nanoseconds past `max(tat, now)`.
    Charge(u64),
    /// Nothing to do.
    None,
}

/// What refunds need to know of a schedule besides its theoretical arrival
/// time (see [`settlement`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Shifts {
    /// Nanoseconds that refunds have moved reservations down, in all.
    pub(crate) shifted: u64,
    /// The latest conforming instant promised to any reservation that had
    /// to wait (0: none yet). Waiters do not move when the schedule does.
    pub(crate) promised: u64,
}

/// What correcting a reservation of `reserved` units to `actual` units does
/// to a schedule whose theoretical arrival time is `tat`.
///
/// # Refunds
///
/// Each reservation occupies an interval of the schedule ending where it left
/// the theoretical arrival time, and is admitted at a fixed instant. The
/// schedule is a GCRA history; a refund is the same history with a smaller
/// cost, which lowers every later reservation's end, and `tat`, by up to the
/// refunded increment. The lowering passes a later reservation only as far as
/// the gap between its admission instant and the end of the reservation
/// before it (its end can move, its admission instant cannot): for one
/// already admitted that gap is at least (refunded end − now), for one still
/// waiting at least (refunded end − the latest promised instant). So a refund
/// moves the schedule down by the refunded increment, at most to
/// max(now, latest promise) past the refunded reservation's end, and never
/// below now; a refund of the reservation on top (nothing after it) is exact.
/// The history stays a GCRA history of the settled costs (plus what a refund
/// could not give back), so the bound `rate × window + burst` holds for
/// settled costs: time that has passed is spent, whoever holds it.
///
/// Earlier refunds moved the reservation down by an unknown share of
/// `shifted`. The receipt holds its end plus `shifted` at reservation time, so
/// `receipt − shifted` is never later than its end: the estimate errs towards
/// refunding less, never more.
pub(crate) fn settlement(
    quota: &Quota,
    now: u64,
    tat: u64,
    reserved: u64,
    actual: u64,
    receipt: u64,
    shifts: Shifts,
) -> Settlement {
    if actual > reserved {
        return Settlement::Charge(quota.increment(actual - reserved));
    }
    if actual == reserved {
        return Settlement::None;
    }
    let back = quota.increment(reserved) - quota.increment(actual);
    let ahead = tat.saturating_sub(now);
    let end = receipt.saturating_sub(shifts.shifted);
    let (shift, moves_others) = if end >= tat {
        // On top: nothing sits above it.
        (back.min(ahead), false)
    } else {
        let fixed = now.max(shifts.promised);
        (back.min(ahead).min(end.saturating_sub(fixed)), true)
    };
    if shift == 0 {
        Settlement::None
    } else {
        Settlement::Refund {
            shift,
            moves_others,
        }
    }
}

/// The receipt of a reservation that left `new_tat` behind on a schedule
/// refunds had moved by `shifted` (see [`settlement`]).
#[inline]
pub(crate) fn receipt(new_tat: u64, shifted: u64) -> Receipt {
    Receipt::new(new_tat.saturating_add(shifted))
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

    #[inline]
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
    /// [`Shifts::shifted`]: written after `tat`, by one refund at a time
    /// (`refunding`); reservers read it before their update, so a refund
    /// racing with them can only make their receipts refund less.
    shifted: AtomicU64,
    /// [`Shifts::promised`]: raised by a waiting reservation before its
    /// update, so a refund that sees the reservation sees its promise.
    promised: AtomicU64,
    /// Serialises refunds: each reads `shifted`, moves `tat` and adds to
    /// `shifted`, and a second refund must see the first one's addition.
    /// Reservations never take it.
    refunding: Mutex<()>,
}

impl GcraStore {
    /// A store enforcing `quota`, idle now.
    pub fn new(quota: Quota) -> Self {
        Self {
            quota,
            clock: Clock::new(),
            tat: AtomicU64::new(0),
            shifted: AtomicU64::new(0),
            promised: AtomicU64::new(0),
            refunding: Mutex::new(()),
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

    #[inline]
    pub(crate) fn try_reserve(&self, cost: u64, max_wait: Option<Duration>) -> Decision {
        let now = self.clock.now();
        // Before the update: see `shifted`.
        let shifted = self.shifted.load(Ordering::Acquire);
        let mut tat = self.tat.load(Ordering::Acquire);
        loop {
            let (new_tat, wait) = match step(&self.quota, tat, now, cost, max_wait) {
                Ok(ok) => ok,
                Err(retry_after) => return Decision::Reject { retry_after },
            };
            if wait > 0 {
                self.promised.fetch_max(now + wait, Ordering::AcqRel);
            }
            match self
                .tat
                .compare_exchange_weak(tat, new_tat, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    return Decision::Admit {
                        after: Duration::from_nanos(wait),
                        receipt: receipt(new_tat, shifted),
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

    #[inline]
    fn reserve(&self, _key: &(), cost: u64, max_wait: Option<Duration>) -> Self::ReserveFuture {
        ready(Ok(self.try_reserve(cost, max_wait)))
    }

    #[inline]
    fn reserve_now(
        &self,
        _key: &(),
        cost: u64,
        max_wait: Option<Duration>,
    ) -> Option<Result<Decision, StoreError>> {
        Some(Ok(self.try_reserve(cost, max_wait)))
    }

    fn cancel(&self, key: &(), cost: u64, receipt: Receipt) {
        self.settle(key, cost, 0, receipt);
    }

    fn settle(&self, _key: &(), reserved: u64, actual: u64, receipt: Receipt) {
        let now = self.clock.now();
        if actual > reserved {
            let inc = self.quota.increment(actual - reserved);
            let _ = self
                .tat
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |tat| {
                    Some(tat.max(now).saturating_add(inc))
                });
            return;
        }
        if actual == reserved {
            return;
        }
        // A poisoned lock guards nothing but the order of refunds.
        let _one_at_a_time = self
            .refunding
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let shifted = self.shifted.load(Ordering::Acquire);
        let mut tat = self.tat.load(Ordering::Acquire);
        loop {
            // After loading `tat`: a waiter it holds has raised this.
            let shifts = Shifts {
                shifted,
                promised: self.promised.load(Ordering::Acquire),
            };
            let Settlement::Refund {
                shift,
                moves_others,
            } = settlement(
                &self.quota,
                now,
                tat,
                reserved,
                actual,
                receipt.get(),
                shifts,
            )
            else {
                return;
            };
            match self.tat.compare_exchange_weak(
                tat,
                tat - shift,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    if moves_others {
                        self.shifted.fetch_add(shift, Ordering::AcqRel);
                    }
                    return;
                }
                Err(actual) => tat = actual,
            }
        }
    }
}
