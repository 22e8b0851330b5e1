//! The retry budget: a windowed token bucket in fixed-point atomics.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::time::{Duration, Instant};

/// One retry, in budget units: the budget counts thousandths of a retry.
pub(crate) const UNIT: i64 = 1000;
/// The window is split into this many slots; a slot's deposits and
/// withdrawals expire together.
const SLOTS: u32 = 10;

/// Deposits and withdrawals over the last `window`, plus a reserve of
/// `min_per_second × window` retries.
///
/// Each slot is one `AtomicU64`: the slot's epoch (the index of the
/// `window / 10` period it belongs to) in the high 32 bits and its balance in
/// thousandths of a retry (`i32`) in the low 32 bits, so a slot is reset and
/// updated in one compare-and-swap, with no lock and no generation mutex.
pub(crate) struct Budget {
    start: Instant,
    slot_nanos: u64,
    deposit: i32,
    reserve: i64,
    slots: [AtomicU64; SLOTS as usize],
}

/// A retry paid from the budget, refunded if dropped before [`commit`].
///
/// [`commit`]: Withdrawal::commit
pub(crate) struct Withdrawal {
    shared: Option<Arc<crate::layer::Shared>>,
    epoch: u32,
}

#[inline]
fn pack(epoch: u32, value: i32) -> u64 {
    (u64::from(epoch) << 32) | u64::from(value as u32)
}

#[inline]
fn unpack(word: u64) -> (u32, i32) {
    (
        (word >> 32) as u32,
        i32::from_ne_bytes((word as u32).to_ne_bytes()),
    )
}

impl Budget {
    pub(crate) fn new(ratio: f64, min_per_second: u32, window: Duration) -> Self {
        // Validated by the builder: ratio in [0, 1000], so at most 1e6 units.
        let deposit = (ratio * UNIT as f64).round() as i32;
        let reserve = (f64::from(min_per_second) * window.as_secs_f64() * UNIT as f64) as i64;
        Self {
            start: Instant::now(),
            // The window is at most 60 s (validated), so this fits.
            slot_nanos: ((window.as_nanos() / u128::from(SLOTS)) as u64).max(1),
            deposit,
            reserve,
            slots: Default::default(),
        }
    }

    #[inline]
    fn epoch(&self, now: Instant) -> u32 {
        // u64 nanoseconds last 584 years; the epoch wraps after 2^32 slots
        // (over 13 years with a 1 s window).
        let nanos = now.saturating_duration_since(self.start).as_nanos() as u64;
        (nanos / self.slot_nanos) as u32
    }

    #[inline]
    fn slot(&self, epoch: u32) -> &AtomicU64 {
        &self.slots[(epoch % SLOTS) as usize]
    }

    /// Adds `delta` to the slot of `epoch`, resetting it first if it still
    /// holds an older epoch. With `only_if_current`, adds nothing unless the
    /// slot already holds `epoch` (a refund to an expired slot is void).
    #[inline]
    fn add(&self, epoch: u32, delta: i32, only_if_current: bool) {
        let slot = self.slot(epoch);
        let mut cur = slot.load(Ordering::Acquire);
        loop {
            let (e, v) = unpack(cur);
            let base = if e == epoch {
                v
            } else if only_if_current || epoch.wrapping_sub(e) >= u32::MAX / 2 {
                // Refund to an expired slot, or a write older than the slot
                // (a racing thread already moved it on): nothing to do.
                return;
            } else {
                0
            };
            let new = pack(epoch, base.saturating_add(delta));
            match slot.compare_exchange_weak(cur, new, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return,
                Err(actual) => cur = actual,
            }
        }
    }

    /// The balance in units: the reserve plus every slot of the window.
    fn balance_at(&self, epoch: u32) -> i64 {
        let window: i64 = self
            .slots
            .iter()
            .map(|s| unpack(s.load(Ordering::Acquire)))
            .filter(|&(e, _)| epoch.wrapping_sub(e) < SLOTS)
            .map(|(_, v)| i64::from(v))
            .sum();
        self.reserve.saturating_add(window)
    }

    /// The balance now, in retries.
    pub(crate) fn balance(&self) -> f64 {
        self.balance_at(self.epoch(Instant::now())) as f64 / UNIT as f64
    }

    /// An original request deposits `ratio` retries.
    #[inline]
    pub(crate) fn deposit(&self, now: Instant) {
        if self.deposit > 0 {
            self.add(self.epoch(now), self.deposit, false);
        }
    }

    /// Takes one retry, or `None` when the balance would go negative.
    ///
    /// Withdraw first, then check, then undo: concurrent callers can be
    /// refused spuriously for an instant but never over-granted.
    pub(crate) fn withdraw(
        &self,
        shared: &Arc<crate::layer::Shared>,
        now: Instant,
    ) -> Option<Withdrawal> {
        let epoch = self.epoch(now);
        self.add(epoch, -(UNIT as i32), false);
        if self.balance_at(epoch) < 0 {
            self.add(epoch, UNIT as i32, true);
            return None;
        }
        Some(Withdrawal {
            shared: Some(Arc::clone(shared)),
            epoch,
        })
    }
}

impl fmt::Debug for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Budget")
            .field("deposit", &(f64::from(self.deposit) / UNIT as f64))
            .field("reserve", &(self.reserve as f64 / UNIT as f64))
            .field("balance", &self.balance())
            .finish_non_exhaustive()
    }
}

impl Withdrawal {
    /// The retry started: the withdrawal stands.
    pub(crate) fn commit(mut self) {
        self.shared = None;
    }
}

impl Drop for Withdrawal {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.take() {
            // Refunded into the slot it was taken from, if that slot has not
            // expired yet; once it has, the withdrawal no longer counts anyway.
            shared.budget.add(self.epoch, UNIT as i32, true);
        }
    }
}

impl fmt::Debug for Withdrawal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Withdrawal")
            .field("epoch", &self.epoch)
            .field("pending", &self.shared.is_some())
            .finish()
    }
}
