//! Admission tickets: how `QueueAdmission` and the limiters inside it share one
//! queue slot per request.
//!
//! `QueueAdmission` takes a slot from its [`QueueSlots`] in `call` and gets an
//! [`AdmissionTicket`] plus one [`TicketHold`]. It publishes the ticket in the
//! [`Context`](crate::Context) and keeps its hold until its own inner `call()`
//! returns. A ticket-aware limiter calls [`AdmissionTicket::enter`] in its
//! `call()` (synchronously, so the count never dips to zero between two
//! limiters), waits in its future, and drops its hold right after its own
//! inner `call()` returns. The slot is freed exactly once: when the number of
//! holds first reaches zero, or when [`AdmissionTicket::release`] is called
//! (`QueueAdmission` does so when its future is dropped or completes).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::time::{Duration, Instant};

use crate::error::{BoxError, OverloadReason, Overloaded, SlaExpired};

/// The queue counter of one `QueueAdmission` layer: how many requests are
/// waiting for admission now, and how many may.
///
/// Shared through an `Arc` by every clone of the layer's services and by every
/// ticket it issues.
#[derive(Debug)]
pub struct QueueSlots {
    depth: AtomicUsize,
    max: usize,
}

impl QueueSlots {
    /// A counter allowing at most `max` requests to wait at once (at least 1).
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            depth: AtomicUsize::new(0),
            max: max.max(1),
        })
    }

    /// Requests waiting for admission now.
    pub fn depth(&self) -> usize {
        self.depth.load(Ordering::Acquire)
    }

    /// The most requests that may wait at once.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Whether every slot is taken.
    pub fn is_full(&self) -> bool {
        self.depth() >= self.max
    }

    /// Takes a slot and issues a ticket, or `None` when every slot is taken.
    ///
    /// `deadline` is the admission deadline (already min(now + max wait, SLA
    /// deadline)); `bound` says which of the two it is; `retry_after` is the
    /// hint carried by a `WaitExceeded` error. The returned hold is the
    /// issuer's own reference.
    pub fn try_acquire(
        self: &Arc<Self>,
        deadline: Instant,
        bound: WaitBound,
        retry_after: Duration,
    ) -> Option<(AdmissionTicket, TicketHold)> {
        self.depth
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| {
                (d < self.max).then_some(d + 1)
            })
            .ok()?;
        let ticket = AdmissionTicket {
            inner: Arc::new(TicketInner {
                deadline: WaitDeadline::new(deadline, bound, retry_after),
                holders: AtomicUsize::new(1),
                released: AtomicBool::new(false),
                slots: Arc::clone(self),
            }),
        };
        let hold = TicketHold {
            ticket: ticket.clone(),
        };
        Some((ticket, hold))
    }
}

/// One request's claim on a queue slot, published through the
/// [`Context`](crate::Context).
///
/// See the [module docs](self) for the protocol.
#[derive(Clone)]
pub struct AdmissionTicket {
    inner: Arc<TicketInner>,
}

impl AdmissionTicket {
    /// Whether both are the same ticket (not merely equal deadlines).
    pub(crate) fn same(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

struct TicketInner {
    deadline: WaitDeadline,
    holders: AtomicUsize,
    released: AtomicBool,
    slots: Arc<QueueSlots>,
}

impl AdmissionTicket {
    /// The admission deadline and what its expiry means.
    pub fn wait_deadline(&self) -> WaitDeadline {
        self.inner.deadline
    }

    /// The admission deadline.
    pub fn deadline(&self) -> Instant {
        self.inner.deadline.at
    }

    /// Takes a hold on the slot; dropping the hold gives it back, and the last
    /// hold to go frees the slot.
    pub fn enter(&self) -> TicketHold {
        self.inner.holders.fetch_add(1, Ordering::AcqRel);
        TicketHold {
            ticket: self.clone(),
        }
    }

    /// Frees the slot now if it was not freed yet. Idempotent.
    pub fn release(&self) {
        if !self.inner.released.swap(true, Ordering::AcqRel) {
            self.inner.slots.depth.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Whether the slot has been freed.
    pub fn is_released(&self) -> bool {
        self.inner.released.load(Ordering::Acquire)
    }

    fn leave(&self) {
        if self.inner.holders.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.release();
        }
    }
}

impl fmt::Debug for AdmissionTicket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdmissionTicket")
            .field("deadline", &self.inner.deadline)
            .field("holders", &self.inner.holders.load(Ordering::Relaxed))
            .field("released", &self.is_released())
            .finish()
    }
}

/// A hold on an admission ticket; dropping it is `leave()`.
#[derive(Debug)]
#[must_use = "dropping the hold leaves the queue at once"]
pub struct TicketHold {
    ticket: AdmissionTicket,
}

impl TicketHold {
    /// The ticket this hold is on.
    pub fn ticket(&self) -> &AdmissionTicket {
        &self.ticket
    }
}

impl Drop for TicketHold {
    fn drop(&mut self) {
        self.ticket.leave();
    }
}

/// Which bound a wait deadline stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitBound {
    /// The admission deadline is the SLA deadline: expiry is an SLA expiry.
    Sla,
    /// The admission deadline is the max-wait bound: expiry is
    /// `Overloaded(WaitExceeded)`.
    MaxWait,
}

/// The instant a limiter must stop waiting, and what it reports then.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WaitDeadline {
    at: Instant,
    bound: WaitBound,
    retry_after: Duration,
}

impl WaitDeadline {
    /// A deadline `at`, standing for `bound`, with the retry-after hint a
    /// `WaitExceeded` error carries.
    pub fn new(at: Instant, bound: WaitBound, retry_after: Duration) -> Self {
        Self {
            at,
            bound,
            retry_after,
        }
    }

    /// The instant.
    pub fn at(&self) -> Instant {
        self.at
    }

    /// Which bound it stands for.
    pub fn bound(&self) -> WaitBound {
        self.bound
    }

    /// The retry-after hint for a `WaitExceeded` error.
    pub fn retry_after(&self) -> Duration {
        self.retry_after
    }

    /// The error for a wait that reached this deadline: [`SlaExpired`] when it
    /// is the SLA deadline, else `Overloaded(WaitExceeded)`.
    pub fn expired(&self) -> BoxError {
        match self.bound {
            WaitBound::Sla => SlaExpired::new().into(),
            WaitBound::MaxWait => {
                Overloaded::new(OverloadReason::WaitExceeded, self.retry_after).into()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acquire(slots: &Arc<QueueSlots>) -> Option<(AdmissionTicket, TicketHold)> {
        slots.try_acquire(Instant::now(), WaitBound::MaxWait, Duration::from_secs(1))
    }

    #[tokio::test(start_paused = true)]
    async fn slot_freed_when_last_hold_leaves() {
        let slots = QueueSlots::new(2);
        let (ticket, own) = acquire(&slots).unwrap();
        assert_eq!(slots.depth(), 1);
        let limiter_a = ticket.enter();
        drop(own);
        assert_eq!(slots.depth(), 1, "a limiter still waits");
        let limiter_b = ticket.enter();
        drop(limiter_a);
        assert_eq!(slots.depth(), 1);
        drop(limiter_b);
        assert_eq!(slots.depth(), 0);
        assert!(ticket.is_released());
        // Later holds and releases never free a second time.
        drop(ticket.enter());
        ticket.release();
        assert_eq!(slots.depth(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn release_frees_once_even_with_holds_alive() {
        let slots = QueueSlots::new(1);
        let (ticket, own) = acquire(&slots).unwrap();
        assert!(acquire(&slots).is_none(), "full");
        ticket.release();
        assert_eq!(slots.depth(), 0);
        drop(own);
        assert_eq!(slots.depth(), 0);
        assert!(acquire(&slots).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn expiry_error_follows_bound() {
        let now = Instant::now();
        let sla = WaitDeadline::new(now, WaitBound::Sla, Duration::ZERO).expired();
        assert!(sla.is::<SlaExpired>());
        let wait = WaitDeadline::new(now, WaitBound::MaxWait, Duration::from_secs(2)).expired();
        let o = wait.downcast_ref::<Overloaded>().unwrap();
        assert_eq!(o.reason(), OverloadReason::WaitExceeded);
        assert_eq!(o.retry_after(), Duration::from_secs(2));
    }
}
