//! The in-process keyed store: one GCRA state per key.

use std::collections::HashMap;
use std::fmt;
use std::future::{Ready, ready};
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::time::Duration;

use crate::gcra::{Clock, Quota, Settlement, Shifts, receipt, settlement, step};
use crate::store::{Decision, RateStore, Receipt, StoreError};

/// Fewer keys than this live in one shard.
const SHARD_THRESHOLD: usize = 1024;
const SHARDS: usize = 16;

/// The in-process store for per-key limits: each key gets its own GCRA
/// state, in a sharded `Mutex<HashMap>` (the documented exception to the
/// lock-free hot path: one short critical section per reservation).
///
/// # Memory bound and eviction
///
/// At most `max_keys` keys are tracked (rounded up to a multiple of 16 when
/// the map is sharded, i.e. from 1024 keys). A key is idle when its
/// theoretical arrival time has passed: forgetting it changes nothing, since a
/// new key starts idle. When a new key arrives at a full shard, every idle key
/// of that shard is evicted at once. A known key is never rejected.
///
/// When the shard is full and no key in it is idle, the new key's request is
/// rejected as if rate limited ([`Decision::Reject`]), with a retry-after
/// equal to the time until the first tracked key turns idle. Evicting a busy
/// key instead would forget its debt and let it burst again, so a caller
/// cycling through keys could escape every limit. Until that instant, further
/// new keys are rejected without scanning the shard.
pub struct KeyedGcraStore<K> {
    quota: Quota,
    clock: Clock,
    shards: Box<[Mutex<Shard<K>>]>,
    per_shard: usize,
    hasher: RandomState,
}

struct Shard<K> {
    tats: HashMap<K, Schedule>,
    /// No key of this shard turns idle before this time (set by a scan that
    /// found none).
    no_idle_before: u64,
    /// The largest `shifted` of any key evicted from this shard; a new key
    /// starts there, so a receipt from a key's earlier life can never refund
    /// time on its new one.
    shifted_floor: u64,
}

/// One key's GCRA state: the theoretical arrival time, and what refunds need
/// besides (see `gcra::settlement`).
#[derive(Clone, Copy, Debug)]
struct Schedule {
    tat: u64,
    shifts: Shifts,
}

impl<K: Hash + Eq> KeyedGcraStore<K> {
    /// A store enforcing `quota` per key, tracking at most about `max_keys`
    /// keys (at least 1).
    pub fn new(quota: Quota, max_keys: usize) -> Self {
        let max_keys = max_keys.max(1);
        let n = if max_keys < SHARD_THRESHOLD {
            1
        } else {
            SHARDS
        };
        let shards = (0..n)
            .map(|_| {
                Mutex::new(Shard {
                    tats: HashMap::new(),
                    no_idle_before: 0,
                    shifted_floor: 0,
                })
            })
            .collect();
        Self {
            quota,
            clock: Clock::new(),
            shards,
            per_shard: max_keys.div_ceil(n),
            hasher: RandomState::new(),
        }
    }

    /// The quota each key gets.
    pub fn quota(&self) -> &Quota {
        &self.quota
    }

    /// Keys tracked now (idle ones not yet evicted included).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).tats.len()).sum()
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `key` is tracked now.
    pub fn contains(&self, key: &K) -> bool {
        lock(self.shard(key)).tats.contains_key(key)
    }

    fn shard(&self, key: &K) -> &Mutex<Shard<K>> {
        let i = if self.shards.len() == 1 {
            0
        } else {
            (self.hasher.hash_one(key) as usize) % self.shards.len()
        };
        &self.shards[i]
    }

    pub(crate) fn try_reserve(&self, key: &K, cost: u64, max_wait: Option<Duration>) -> Decision
    where
        K: Clone,
    {
        let now = self.clock.now();
        let mut shard = lock(self.shard(key));
        // A known key: updated in place, never rejected for room, no clone.
        if let Some(state) = shard.tats.get_mut(key) {
            return match step(&self.quota, state.tat, now, cost, max_wait) {
                Ok((new_tat, wait)) => {
                    state.tat = new_tat;
                    if wait > 0 {
                        state.shifts.promised = state.shifts.promised.max(now + wait);
                    }
                    admit(new_tat, state.shifts.shifted, wait)
                }
                Err(retry_after) => Decision::Reject { retry_after },
            };
        }
        if shard.tats.len() >= self.per_shard {
            if let Err(idle_at) = shard.evict_idle(now, self.per_shard) {
                return Decision::Reject {
                    retry_after: Duration::from_nanos(idle_at.saturating_sub(now)),
                };
            }
        }
        match step(&self.quota, 0, now, cost, max_wait) {
            Ok((new_tat, wait)) => {
                let shifts = Shifts {
                    shifted: shard.shifted_floor,
                    promised: if wait > 0 { now + wait } else { 0 },
                };
                shard.tats.insert(
                    key.clone(),
                    Schedule {
                        tat: new_tat,
                        shifts,
                    },
                );
                admit(new_tat, shifts.shifted, wait)
            }
            Err(retry_after) => Decision::Reject { retry_after },
        }
    }
}

fn admit(new_tat: u64, shifted: u64, wait: u64) -> Decision {
    Decision::Admit {
        after: Duration::from_nanos(wait),
        receipt: receipt(new_tat, shifted),
    }
}

impl<K: Hash + Eq> Shard<K> {
    /// Evicts every idle key; `Err(t)` when the shard is still full, `t`
    /// being when its first key turns idle.
    fn evict_idle(&mut self, now: u64, cap: usize) -> Result<(), u64> {
        if now < self.no_idle_before {
            return Err(self.no_idle_before);
        }
        let mut floor = self.shifted_floor;
        self.tats.retain(|_, state| {
            let busy = state.tat > now;
            if !busy {
                floor = floor.max(state.shifts.shifted);
            }
            busy
        });
        self.shifted_floor = floor;
        if self.tats.len() < cap {
            return Ok(());
        }
        let first = self.tats.values().map(|s| s.tat).min().unwrap_or(now);
        self.no_idle_before = first;
        Err(first)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave a shard inconsistent (each
    // update is one insert or remove), so a poisoned lock is used as is.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<K> RateStore for KeyedGcraStore<K>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
{
    type Key = K;
    type ReserveFuture = Ready<Result<Decision, StoreError>>;

    fn reserve(&self, key: &K, cost: u64, max_wait: Option<Duration>) -> Self::ReserveFuture {
        ready(Ok(self.try_reserve(key, cost, max_wait)))
    }

    fn reserve_now(
        &self,
        key: &K,
        cost: u64,
        max_wait: Option<Duration>,
    ) -> Option<Result<Decision, StoreError>> {
        Some(Ok(self.try_reserve(key, cost, max_wait)))
    }

    fn cancel(&self, key: &K, cost: u64, receipt: Receipt) {
        self.settle(key, cost, 0, receipt);
    }

    fn settle(&self, key: &K, reserved: u64, actual: u64, receipt: Receipt) {
        let now = self.clock.now();
        let mut guard = lock(self.shard(key));
        let shard = &mut *guard;
        // An evicted key was idle: a refund would change nothing, and a
        // charge is dropped rather than growing the map past its bound.
        if let Some(state) = shard.tats.get_mut(key) {
            match settlement(
                &self.quota,
                now,
                state.tat,
                reserved,
                actual,
                receipt.get(),
                state.shifts,
            ) {
                Settlement::None => {}
                Settlement::Charge(inc) => state.tat = state.tat.max(now).saturating_add(inc),
                Settlement::Refund {
                    shift,
                    moves_others,
                } => {
                    state.tat -= shift;
                    if moves_others {
                        state.shifts.shifted += shift;
                    }
                    // This key may turn idle sooner than a scan thought.
                    shard.no_idle_before = 0;
                }
            }
        }
    }
}

impl<K> fmt::Debug for KeyedGcraStore<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedGcraStore")
            .field("quota", &self.quota)
            .field("shards", &self.shards.len())
            .field("per_shard", &self.per_shard)
            .finish_non_exhaustive()
    }
}
