//! The store trait: where a limiter's state lives.

use std::error::Error;
use std::fmt;
use std::future::Future;

use backstop_core::BoxError;
use tokio::time::Duration;

/// Where a rate limiter keeps its state.
///
/// The trait speaks in costs and durations, never in local instants, so a
/// store shared by many machines (Redis) can implement it with its own clock:
///
/// - [`reserve`](Self::reserve) asks for `cost` units. The store either
///   commits the reservation and answers [`Decision::Admit`] with how long the
///   caller must wait before the units conform, or, when that wait would be
///   longer than `max_wait`, commits nothing and answers [`Decision::Reject`]
///   with the time until they would conform.
/// - [`cancel`](Self::cancel) gives a reservation back (a waiter was dropped,
///   or the inner service answered `Overloaded`).
/// - [`settle`](Self::settle) corrects a reservation to the true cost once it
///   is known: a refund when smaller, a charge when larger.
///
/// `cancel` and `settle` are synchronous because they run from `Drop`; they
/// must not block. A remote store queues or spawns the update.
///
/// The in-process stores ([`GcraStore`](crate::GcraStore),
/// [`KeyedGcraStore`](crate::KeyedGcraStore)) answer `reserve` with a
/// [`std::future::Ready`]: no await, no allocation.
pub trait RateStore: Send + Sync + 'static {
    /// What the store tells limits apart by (`()` for one global limit).
    type Key: Send + Sync + 'static;

    /// The future [`reserve`](Self::reserve) returns.
    type ReserveFuture: Future<Output = Result<Decision, StoreError>> + Send + 'static;

    /// Reserves `cost` units (at least 1, at most the burst) for `key`, if they
    /// conform within `max_wait` (`None`: no bound).
    fn reserve(
        &self,
        key: &Self::Key,
        cost: u64,
        max_wait: Option<Duration>,
    ) -> Self::ReserveFuture;

    /// Answers [`reserve`](Self::reserve) at once, when the store can
    /// without awaiting; `None` (the default) when it cannot, and the
    /// limiter then asks `reserve`. Both commit alike.
    ///
    /// The in-process stores answer here, which lets the limiter admit a
    /// request that need not wait in its `call()` (the response future then
    /// holds only the inner future). A remote store keeps the default.
    #[inline]
    fn reserve_now(
        &self,
        key: &Self::Key,
        cost: u64,
        max_wait: Option<Duration>,
    ) -> Option<Result<Decision, StoreError>> {
        let _ = (key, cost, max_wait);
        None
    }

    /// Gives back a reservation of `cost` units that was admitted with
    /// `receipt`.
    fn cancel(&self, key: &Self::Key, cost: u64, receipt: Receipt);

    /// Corrects a reservation of `reserved` units (admitted with `receipt`) to
    /// `actual` units.
    fn settle(&self, key: &Self::Key, reserved: u64, actual: u64, receipt: Receipt);
}

/// A store's answer to [`RateStore::reserve`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The reservation is committed; the units conform after `after`
    /// (zero: now).
    Admit {
        /// How long to wait before calling the inner service.
        after: Duration,
        /// The store's token for this reservation, handed back to
        /// [`RateStore::cancel`] and [`RateStore::settle`].
        receipt: Receipt,
    },
    /// Nothing was committed: the units would conform only after
    /// `retry_after`, which is longer than the caller may wait.
    Reject {
        /// Time until the units would conform.
        retry_after: Duration,
    },
}

/// A store's opaque token for one reservation.
///
/// The in-process stores put there where the reservation ends in their
/// schedule (nanoseconds from the store's own base) plus how far refunds had
/// moved the schedule by then, which bounds how much a refund may give back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Receipt(u64);

impl Receipt {
    /// A receipt carrying `value`, meaningful only to the store that made it.
    pub const fn new(value: u64) -> Self {
        Self(value)
    }

    /// The value the store put in.
    pub const fn get(self) -> u64 {
        self.0
    }
}

/// What the limiter does when its store fails.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StoreErrorPolicy {
    /// Let the request through unlimited (and take no reservation).
    #[default]
    FailOpen,
    /// Fail the request with the [`StoreError`].
    FailClosed,
}

/// A store could not answer (unreachable, timed out, bad reply).
///
/// Its `source()` is the store's own error.
#[derive(Debug)]
pub struct StoreError {
    source: BoxError,
}

impl StoreError {
    /// Wraps the store's error.
    pub fn new(source: impl Into<BoxError>) -> Self {
        Self {
            source: source.into(),
        }
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("rate limit store failed")
    }
}

impl Error for StoreError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.source)
    }
}
