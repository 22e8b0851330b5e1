//! Admission tickets: how `QueueAdmission` and the limiters inside it share one
//! queue slot per request.
//!
//! `QueueAdmission` takes a slot from its [`QueueSlots`] in `call` and gets an
//! [`AdmissionTicket`]: the slot itself, moved by value, with the request's
//! wait deadline. It [offers](AdmissionTicket::offer) the ticket around its
//! inner `call()`. A ticket-aware limiter [takes](AdmissionTicket::take_offered)
//! it synchronously in its own `call()`, keeps it in its future while it
//! waits, and offers it again around its own inner `call()`. Whoever holds
//! the ticket when nobody inside takes it frees the slot by dropping it, so
//! the slot is freed exactly once: when the last limiter has admitted the
//! request (or right after `QueueAdmission`'s inner `call()`, with no
//! ticket-aware limiter inside), or when the future holding it is dropped.
//!
//! Limiters are called one inside the other, so at any moment at most one of
//! them is waiting: one ticket moving inward counts the request once, without
//! a shared count, an allocation or a reference per limiter.
//!
//! The ticket travels beside the [`Context`](crate::Context) (a thread-local
//! slot that each offer sets for one synchronous call), not inside it: a
//! context is cloned freely, a slot must have exactly one holder.

use std::cell::Cell;
use std::fmt;
use std::mem::ManuallyDrop;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use tokio::time::{Duration, Instant};

use crate::error::{BoxError, OverloadReason, Overloaded, SlaExpired};

thread_local! {
    /// The ticket offered to the `call()` running now, if any. Every offer
    /// takes its ticket back out before it returns or unwinds, so the slot is
    /// empty whenever no offer runs; `ManuallyDrop` spares the slot a
    /// destructor, and with it the registration check on every access.
    static OFFERED: Cell<Option<ManuallyDrop<AdmissionTicket>>> = const { Cell::new(None) };
}

#[inline]
fn swap_offered(ticket: Option<AdmissionTicket>) -> Result<Option<AdmissionTicket>, ()> {
    OFFERED
        .try_with(|slot| slot.replace(ticket.map(ManuallyDrop::new)))
        .map(|old| old.map(ManuallyDrop::into_inner))
        .map_err(|_| ())
}

/// The queue counter of one `QueueAdmission` layer: how many requests are
/// waiting for admission now, and how many may.
///
/// Shared through an `Arc` by every clone of the layer's services and by every
/// ticket it issues.
pub struct QueueSlots {
    depth: AtomicUsize,
    max: usize,
    retry_after: Duration,
    wait_timeouts: AtomicU64,
    on_wait_exceeded: Option<Box<dyn Fn() + Send + Sync>>,
}

impl QueueSlots {
    /// A counter allowing at most `max` requests to wait at once (at least
    /// 1); `retry_after` is the hint its `WaitExceeded` errors carry.
    pub fn new(max: usize, retry_after: Duration) -> Arc<Self> {
        Self::build(max, retry_after, None)
    }

    /// Like [`new`](Self::new), with `hook` called each time a limiter's wait
    /// on one of its tickets ends in `Overloaded(WaitExceeded)` (for metrics
    /// and events).
    pub fn with_wait_exceeded_hook(
        max: usize,
        retry_after: Duration,
        hook: impl Fn() + Send + Sync + 'static,
    ) -> Arc<Self> {
        Self::build(max, retry_after, Some(Box::new(hook)))
    }

    fn build(
        max: usize,
        retry_after: Duration,
        on_wait_exceeded: Option<Box<dyn Fn() + Send + Sync>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            depth: AtomicUsize::new(0),
            max: max.max(1),
            retry_after,
            wait_timeouts: AtomicU64::new(0),
            on_wait_exceeded,
        })
    }

    /// Requests waiting for admission now.
    #[inline]
    pub fn depth(&self) -> usize {
        self.depth.load(Ordering::Acquire)
    }

    /// The most requests that may wait at once.
    #[inline]
    pub fn max(&self) -> usize {
        self.max
    }

    /// Whether every slot is taken.
    #[inline]
    pub fn is_full(&self) -> bool {
        self.depth() >= self.max
    }

    /// Waits on this counter's tickets that ended in
    /// `Overloaded(WaitExceeded)`, since it was created.
    pub fn wait_timeouts(&self) -> u64 {
        self.wait_timeouts.load(Ordering::Relaxed)
    }

    /// The hint carried by `WaitExceeded` errors on its tickets.
    pub fn retry_after(&self) -> Duration {
        self.retry_after
    }

    /// Takes a slot and issues its ticket, or `None` when every slot is
    /// taken.
    ///
    /// `deadline` is the admission deadline (already min(now + max wait, SLA
    /// deadline)); `bound` says which of the two it is. Dropping the ticket
    /// frees the slot.
    #[inline]
    pub fn try_acquire(
        self: &Arc<Self>,
        deadline: Instant,
        bound: WaitBound,
    ) -> Option<AdmissionTicket> {
        self.depth
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| {
                (d < self.max).then_some(d + 1)
            })
            .ok()?;
        Some(AdmissionTicket {
            slots: Arc::clone(self),
            at: deadline,
            bound,
        })
    }
}

impl fmt::Debug for QueueSlots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueSlots")
            .field("depth", &self.depth())
            .field("max", &self.max)
            .field("wait_timeouts", &self.wait_timeouts())
            .finish_non_exhaustive()
    }
}

/// One request's queue slot, with its wait deadline; dropping it frees the
/// slot.
///
/// Not `Clone`: exactly one holder at a time. See the [module docs](self)
/// for the protocol.
#[must_use = "dropping the ticket frees the queue slot at once"]
pub struct AdmissionTicket {
    slots: Arc<QueueSlots>,
    at: Instant,
    bound: WaitBound,
}

impl AdmissionTicket {
    /// The admission deadline and what its expiry means.
    #[inline]
    pub fn wait_deadline(&self) -> WaitDeadline {
        WaitDeadline::new(self.at, self.bound, self.slots.retry_after)
    }

    /// The admission deadline.
    #[inline]
    pub fn deadline(&self) -> Instant {
        self.at
    }

    /// The error for a wait on this ticket that reached its deadline:
    /// [`SlaExpired`] when it is the SLA deadline, else
    /// `Overloaded(WaitExceeded)`, counted on the ticket's queue.
    pub fn expired(&self) -> BoxError {
        if self.bound == WaitBound::MaxWait {
            self.slots.wait_timeouts.fetch_add(1, Ordering::Relaxed);
            if let Some(hook) = &self.slots.on_wait_exceeded {
                hook();
            }
        }
        self.wait_deadline().expired()
    }

    /// Runs `f` (an inner `call()`) with this ticket offered to the
    /// ticket-aware limiters it calls. If none took it, the ticket is dropped
    /// when `f` returns: the request leaves the queue then.
    ///
    /// The offer lasts for `f` only: a limiter called later (from a poll)
    /// does not see it. Offers nest: an offer inside `f` hides this one until
    /// it ends. If `f` unwinds, an untaken ticket is dropped too.
    #[inline]
    pub fn offer<R>(self, f: impl FnOnce() -> R) -> R {
        let _offer = Offer::start(self);
        f()
    }

    /// Runs `f` with `ticket` offered, as [`offer`](Self::offer) does, or
    /// plainly when there is none: what a limiter does around its inner
    /// `call()` with the ticket it took.
    #[inline]
    pub fn offer_if_any<R>(ticket: Option<Self>, f: impl FnOnce() -> R) -> R {
        match ticket {
            Some(ticket) => ticket.offer(f),
            None => f(),
        }
    }

    /// Takes the ticket offered to the `call()` running now, if any.
    ///
    /// Ticket-aware limiters call it first thing in their `call()`.
    #[inline]
    pub fn take_offered() -> Option<Self> {
        swap_offered(None).ok().flatten()
    }

    /// The wait deadline of the ticket offered now, if any, without taking
    /// it.
    pub fn offered_deadline() -> Option<WaitDeadline> {
        OFFERED
            .try_with(|slot| {
                let ticket = slot.take();
                let deadline = ticket.as_deref().map(Self::wait_deadline);
                slot.set(ticket);
                deadline
            })
            .ok()
            .flatten()
    }
}

impl Drop for AdmissionTicket {
    #[inline]
    fn drop(&mut self) {
        self.slots.depth.fetch_sub(1, Ordering::AcqRel);
    }
}

impl fmt::Debug for AdmissionTicket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdmissionTicket")
            .field("deadline", &self.at)
            .field("bound", &self.bound)
            .finish_non_exhaustive()
    }
}

/// An offer in progress: when dropped (the call returned or unwound), drops
/// our ticket if nobody took it and puts the outer offer back.
struct Offer {
    /// The offer this one hides; `Err` when the thread's locals are gone (the
    /// ticket was dropped at once: nothing can be offered then).
    outer: Result<Option<AdmissionTicket>, ()>,
}

impl Offer {
    #[inline]
    fn start(ticket: AdmissionTicket) -> Self {
        Self {
            outer: swap_offered(Some(ticket)),
        }
    }
}

impl Drop for Offer {
    #[inline]
    fn drop(&mut self) {
        if let Ok(outer) = &mut self.outer {
            // Ours, if untaken, is dropped here: its slot is freed.
            drop(swap_offered(outer.take()));
        }
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

    /// The deadline of a limiter with no admission ticket: the SLA deadline,
    /// if any.
    pub fn sla(at: Instant) -> Self {
        Self::new(at, WaitBound::Sla, Duration::ZERO)
    }

    /// The deadline a limiter holding `ticket` (if any) waits to: the
    /// ticket's, else the SLA deadline of `ctx`.
    pub fn of(ticket: Option<&AdmissionTicket>, ctx: &crate::Context) -> Option<Self> {
        match ticket {
            Some(ticket) => Some(ticket.wait_deadline()),
            None => ctx.sla_deadline().map(Self::sla),
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
    /// is the SLA deadline, else `Overloaded(WaitExceeded)`. Uncounted: a
    /// limiter holding the ticket calls [`AdmissionTicket::expired`].
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

    fn acquire(slots: &Arc<QueueSlots>) -> Option<AdmissionTicket> {
        slots.try_acquire(Instant::now(), WaitBound::MaxWait)
    }

    fn slots(max: usize) -> Arc<QueueSlots> {
        QueueSlots::new(max, Duration::from_secs(1))
    }

    #[tokio::test(start_paused = true)]
    async fn the_slot_moves_inward_and_is_freed_once() {
        let slots = slots(2);
        let ticket = acquire(&slots).unwrap();
        assert_eq!(slots.depth(), 1);
        ticket.offer(|| {
            // A limiter takes it in its call() ...
            let limiter = AdmissionTicket::take_offered().expect("offered");
            assert!(AdmissionTicket::take_offered().is_none(), "one holder");
            // ... and once it admits the request, offers it to an inner
            // call that ignores it: freed when that call returns.
            limiter.offer(|| assert_eq!(slots.depth(), 1, "still waiting"));
            assert_eq!(slots.depth(), 0);
        });
        assert_eq!(slots.depth(), 0, "freed once");
        // Offers end with the call: nothing is offered now.
        assert!(AdmissionTicket::take_offered().is_none());
        // Untaken, it is freed when the issuer's call returns.
        acquire(&slots)
            .unwrap()
            .offer(|| assert_eq!(slots.depth(), 1));
        assert_eq!(slots.depth(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn offers_nest_and_unwind() {
        let slots = slots(4);
        let outer = acquire(&slots).unwrap();
        let inner = slots
            .try_acquire(Instant::now() + Duration::from_secs(1), WaitBound::Sla)
            .unwrap();
        let at = inner.deadline();
        outer.offer(|| {
            inner.offer(|| {
                assert_eq!(
                    AdmissionTicket::offered_deadline().map(|d| d.at()),
                    Some(at)
                );
            });
            // The inner offer ended (its ticket freed): the outer one is
            // visible again.
            assert_eq!(slots.depth(), 1);
            let outer = AdmissionTicket::offered_deadline().expect("the outer offer");
            assert_eq!(outer.bound(), WaitBound::MaxWait);
        });
        assert_eq!(slots.depth(), 0);
        // A panic inside an offer drops the untaken ticket.
        let t = acquire(&slots).unwrap();
        let caught =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| t.offer(|| panic!("boom"))));
        assert!(caught.is_err());
        assert_eq!(slots.depth(), 0);
        assert!(AdmissionTicket::take_offered().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn full_and_counted() {
        let hooked = Arc::new(AtomicU64::new(0));
        let h = Arc::clone(&hooked);
        let slots = QueueSlots::with_wait_exceeded_hook(1, Duration::from_secs(1), move || {
            h.fetch_add(1, Ordering::Relaxed);
        });
        let t = acquire(&slots).unwrap();
        assert!(acquire(&slots).is_none(), "full");
        assert!(slots.is_full());
        let e = t.expired();
        let o = e.downcast_ref::<Overloaded>().expect("Overloaded");
        assert_eq!(o.reason(), OverloadReason::WaitExceeded);
        assert_eq!(o.retry_after(), Duration::from_secs(1));
        assert_eq!(slots.wait_timeouts(), 1);
        assert_eq!(hooked.load(Ordering::Relaxed), 1);
        drop(t);
        assert!(acquire(&slots).is_some());
        // An SLA-bound ticket's expiry is the SLA error, uncounted.
        let sla = slots.try_acquire(Instant::now(), WaitBound::Sla).unwrap();
        assert!(sla.expired().is::<SlaExpired>());
        assert_eq!(slots.wait_timeouts(), 1);
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
