//! A small fair semaphore: one atomic word on the uncontended path, a
//! mutex-guarded FIFO queue only while requests wait.
//!
//! The state word holds the free permits (shifted left by one) and a
//! `WAITERS` bit, set exactly while the wait queue holds a live waiter. The
//! invariants, kept by only ever setting or clearing `WAITERS` under the queue
//! lock:
//!
//! - `WAITERS` set ⇒ no free permit: a permit released while requests wait
//!   goes straight to the first of them, under the lock.
//! - The fast paths ([`Semaphore::try_acquire`], the release in
//!   [`Semaphore::release`]) are one compare-and-swap each and give up when
//!   `WAITERS` is set, so a free permit is never taken ahead of a waiter and
//!   an uncontended request takes no lock (tokio's semaphore takes its
//!   wait-list lock on every release).
//! - The queue's front and back are live waiters: a cancelled waiter in the
//!   middle is only marked, and skipped when the front reaches it, so cancel
//!   is O(1) and never loses a waiter.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context as TaskContext, Poll, Waker};

use crate::obs::Metrics;

/// Set while the wait queue holds a live waiter.
const WAITERS: usize = 1;
/// One permit in the state word.
const ONE: usize = 2;

/// A fair (FIFO) counting semaphore without an acquire future: waiting is a
/// [`Waiter`] polled by its owner. It also carries the limit's metric
/// handles, so that they share its reference count.
pub(crate) struct Semaphore {
    state: AtomicUsize,
    queue: Mutex<Queue>,
    // The queue's `head`, readable without the lock: a waiter whose ticket
    // is below it was granted its permit.
    head: AtomicU64,
    metrics: Metrics,
}

/// The wait list: `slots[i]` is the waiter with ticket `head + i`.
struct Queue {
    head: u64,
    slots: VecDeque<Slot>,
}

enum Slot {
    /// Waiting, with the waker of its last poll.
    Waiting(Waker),
    /// Dropped while queued (only between two live slots).
    Cancelled,
}

/// One request's place in the wait queue, from the first slow-path poll to
/// the permit. Dropping it leaves the queue, or gives back a permit granted
/// to it but not yet taken, so that no waiter is skipped.
pub(crate) struct Waiter {
    semaphore: Arc<Semaphore>,
    state: WaiterState,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum WaiterState {
    /// Not queued yet.
    Idle,
    /// Queued with this ticket (granted once the queue's head passed it).
    Queued(u64),
    /// The permit was handed to the owner.
    Done,
}

// === impl Semaphore ===

impl Semaphore {
    /// The most permits a semaphore can hold.
    pub(crate) const MAX_PERMITS: usize = usize::MAX >> 3;

    /// A semaphore with `permits` free permits (at most
    /// [`MAX_PERMITS`](Self::MAX_PERMITS)).
    pub(crate) fn new(permits: usize, metrics: Metrics) -> Self {
        assert!(permits <= Self::MAX_PERMITS, "too many permits");
        Self {
            state: AtomicUsize::new(permits * ONE),
            queue: Mutex::new(Queue {
                head: 0,
                slots: VecDeque::new(),
            }),
            head: AtomicU64::new(0),
            metrics,
        }
    }

    /// The limit's metric handles.
    #[inline]
    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Free permits now: zero while requests wait.
    #[inline]
    pub(crate) fn available_permits(&self) -> usize {
        self.state.load(Ordering::Acquire) / ONE
    }

    /// Takes a free permit if there is one and nobody waits for one. No lock.
    #[inline]
    pub(crate) fn try_acquire(&self) -> bool {
        let mut s = self.state.load(Ordering::Relaxed);
        loop {
            if s & WAITERS != 0 || s < ONE {
                return false;
            }
            match self
                .state
                .compare_exchange_weak(s, s - ONE, Ordering::Acquire, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(actual) => s = actual,
            }
        }
    }

    /// Gives one permit back: to the first waiter if any (waking it), else to
    /// the free count. No lock unless someone waits.
    #[inline]
    pub(crate) fn release(&self) {
        let mut s = self.state.load(Ordering::Relaxed);
        loop {
            if s & WAITERS != 0 {
                if self.release_to_waiter() {
                    return;
                }
                // The last waiter left meanwhile: back to the free count.
                s = self.state.load(Ordering::Relaxed);
                continue;
            }
            match self
                .state
                .compare_exchange_weak(s, s + ONE, Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(actual) => s = actual,
            }
        }
    }

    /// Hands a released permit to the first live waiter; false when nobody
    /// waits any more.
    #[cold]
    fn release_to_waiter(&self) -> bool {
        let mut queue = self.lock();
        // `WAITERS` is set exactly while the queue is not empty, and its front
        // is live; cancelled slots are skipped all the same.
        let waker = loop {
            match queue.slots.pop_front() {
                Some(Slot::Waiting(waker)) => break waker,
                Some(Slot::Cancelled) => queue.head += 1,
                None => {
                    self.state.fetch_and(!WAITERS, Ordering::Release);
                    return false;
                }
            }
        };
        queue.head += 1;
        queue.trim();
        self.head.store(queue.head, Ordering::Release);
        if queue.slots.is_empty() {
            self.state.fetch_and(!WAITERS, Ordering::Release);
        }
        drop(queue);
        waker.wake();
        true
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        // Nothing panics while the lock is held; a poisoned queue is intact.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

// === impl Queue ===

impl Queue {
    /// Drops cancelled slots from both ends, so both ends are live.
    fn trim(&mut self) {
        while let Some(Slot::Cancelled) = self.slots.front() {
            self.slots.pop_front();
            self.head += 1;
        }
        while let Some(Slot::Cancelled) = self.slots.back() {
            self.slots.pop_back();
        }
        // Give back what a burst of waiters grew, once they are all gone.
        if self.slots.is_empty() && self.slots.capacity() > 1024 {
            self.slots.shrink_to(64);
        }
    }

    /// The slot of a queued ticket, if it has not been granted yet.
    fn slot(&mut self, ticket: u64) -> Option<&mut Slot> {
        let i = ticket.checked_sub(self.head)?;
        self.slots.get_mut(usize::try_from(i).ok()?)
    }
}

// === impl Waiter ===

impl Waiter {
    /// A waiter on `semaphore`, not queued until first polled.
    pub(crate) fn new(semaphore: Arc<Semaphore>) -> Self {
        Self {
            semaphore,
            state: WaiterState::Idle,
        }
    }

    /// Ready once the permit is this waiter's (the caller then owns it):
    /// queues on the first poll unless a permit is free and nobody waits.
    pub(crate) fn poll_acquire(&mut self, cx: &mut TaskContext<'_>) -> Poll<()> {
        let sem = &*self.semaphore;
        if let WaiterState::Queued(ticket) = self.state {
            // Granted already: no need for the lock.
            if ticket < sem.head.load(Ordering::Acquire) {
                self.state = WaiterState::Done;
                return Poll::Ready(());
            }
        }
        let mut queue = sem.lock();
        match self.state {
            WaiterState::Idle => {
                let mut s = sem.state.load(Ordering::Relaxed);
                loop {
                    let next = if s & WAITERS != 0 {
                        // Others wait: join the queue behind them.
                        break;
                    } else if s >= ONE {
                        s - ONE
                    } else {
                        s | WAITERS
                    };
                    match sem.state.compare_exchange_weak(
                        s,
                        next,
                        Ordering::AcqRel,
                        Ordering::Relaxed,
                    ) {
                        Ok(_) if next & WAITERS == 0 => {
                            // A permit was freed since the fast path failed,
                            // and nobody waits: it is ours.
                            self.state = WaiterState::Done;
                            return Poll::Ready(());
                        }
                        Ok(_) => break,
                        Err(actual) => s = actual,
                    }
                }
                let ticket = queue.head + queue.slots.len() as u64;
                queue.slots.push_back(Slot::Waiting(cx.waker().clone()));
                self.state = WaiterState::Queued(ticket);
                Poll::Pending
            }
            WaiterState::Queued(ticket) => match queue.slot(ticket) {
                Some(Slot::Waiting(waker)) => {
                    if !waker.will_wake(cx.waker()) {
                        waker.clone_from(cx.waker());
                    }
                    Poll::Pending
                }
                // Only this waiter cancels its own slot, on drop.
                Some(Slot::Cancelled) => Poll::Pending,
                None => {
                    // The head passed our ticket: a release granted us the
                    // permit.
                    self.state = WaiterState::Done;
                    Poll::Ready(())
                }
            },
            WaiterState::Done => Poll::Ready(()),
        }
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let WaiterState::Queued(ticket) = self.state else {
            return;
        };
        let sem = &*self.semaphore;
        let mut queue = sem.lock();
        match queue.slot(ticket) {
            Some(slot) => {
                *slot = Slot::Cancelled;
                queue.trim();
                sem.head.store(queue.head, Ordering::Release);
                if queue.slots.is_empty() {
                    sem.state.fetch_and(!WAITERS, Ordering::Release);
                }
            }
            None => {
                // Granted but never taken: pass it on to the next waiter.
                drop(queue);
                sem.release();
            }
        }
    }
}

impl fmt::Debug for Waiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Waiter")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::task::{Context as TaskContext, Poll, Waker};

    use super::{Semaphore, Waiter};
    use crate::obs::Metrics;

    impl Semaphore {
        fn with(permits: usize) -> Self {
            Self::new(permits, Metrics::resolve())
        }
    }

    fn poll(w: &mut Waiter) -> Poll<()> {
        w.poll_acquire(&mut TaskContext::from_waker(Waker::noop()))
    }

    #[test]
    fn fast_path_takes_and_gives_back_without_queueing() {
        let s = Semaphore::with(2);
        assert!(s.try_acquire());
        assert!(s.try_acquire());
        assert!(!s.try_acquire());
        assert_eq!(s.available_permits(), 0);
        s.release();
        assert_eq!(s.available_permits(), 1);
        s.release();
        assert_eq!(s.available_permits(), 2);
    }

    #[test]
    fn waiters_are_granted_in_order_and_block_the_fast_path() {
        let s = Arc::new(Semaphore::with(1));
        assert!(s.try_acquire());
        let mut a = Waiter::new(Arc::clone(&s));
        let mut b = Waiter::new(Arc::clone(&s));
        assert!(poll(&mut a).is_pending());
        assert!(poll(&mut b).is_pending());
        s.release();
        // The released permit went to `a`: nobody can barge in.
        assert_eq!(s.available_permits(), 0);
        assert!(!s.try_acquire());
        assert!(poll(&mut b).is_pending());
        assert!(poll(&mut a).is_ready());
        s.release();
        assert!(poll(&mut b).is_ready());
        assert!(!s.try_acquire(), "b holds it");
        s.release();
        assert_eq!(s.available_permits(), 1);
        drop((a, b));
        assert_eq!(s.available_permits(), 1);
    }

    #[test]
    fn a_granted_but_dropped_waiter_passes_the_permit_on() {
        let s = Arc::new(Semaphore::with(1));
        assert!(s.try_acquire());
        let mut a = Waiter::new(Arc::clone(&s));
        let mut b = Waiter::new(Arc::clone(&s));
        assert!(poll(&mut a).is_pending());
        assert!(poll(&mut b).is_pending());
        s.release();
        drop(a);
        assert!(poll(&mut b).is_ready());
        s.release();
        assert_eq!(s.available_permits(), 1);
    }

    #[test]
    fn cancelled_waiters_anywhere_are_skipped() {
        let s = Arc::new(Semaphore::with(1));
        assert!(s.try_acquire());
        let mut w: Vec<_> = (0..5).map(|_| Waiter::new(Arc::clone(&s))).collect();
        for x in &mut w {
            assert!(poll(x).is_pending());
        }
        let mut w: Vec<_> = w.into_iter().map(Some).collect();
        // Cancel the middle, the back, then the front.
        w[2] = None;
        w[4] = None;
        w[0] = None;
        s.release();
        assert!(poll(w[1].as_mut().unwrap()).is_ready());
        assert!(poll(w[3].as_mut().unwrap()).is_pending());
        s.release();
        assert!(poll(w[3].as_mut().unwrap()).is_ready());
        s.release();
        assert_eq!(s.available_permits(), 1);
        assert!(s.try_acquire(), "the queue is empty: the fast path works");
    }

    #[test]
    fn the_last_waiter_leaving_reopens_the_fast_path() {
        let s = Arc::new(Semaphore::with(1));
        assert!(s.try_acquire());
        let mut a = Waiter::new(Arc::clone(&s));
        assert!(poll(&mut a).is_pending());
        drop(a);
        s.release();
        assert_eq!(s.available_permits(), 1);
        assert!(s.try_acquire());
    }

    #[test]
    fn a_waiter_finding_a_free_permit_and_no_queue_takes_it() {
        let s = Arc::new(Semaphore::with(1));
        let mut a = Waiter::new(Arc::clone(&s));
        assert!(poll(&mut a).is_ready());
        assert_eq!(s.available_permits(), 0);
        drop(a);
        assert_eq!(s.available_permits(), 0, "the owner holds the permit");
        s.release();
        assert_eq!(s.available_permits(), 1);
    }

    #[test]
    fn threads_never_exceed_the_limit_and_lose_no_permit() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::task::Wake;

        struct Unpark(std::thread::Thread);
        impl Wake for Unpark {
            fn wake(self: Arc<Self>) {
                self.0.unpark();
            }
        }

        let s = Arc::new(Semaphore::with(3));
        let held = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let s = Arc::clone(&s);
                let held = Arc::clone(&held);
                std::thread::spawn(move || {
                    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
                    let mut cx = TaskContext::from_waker(&waker);
                    for _ in 0..2_000 {
                        if !s.try_acquire() {
                            let mut w = Waiter::new(Arc::clone(&s));
                            while w.poll_acquire(&mut cx).is_pending() {
                                std::thread::park_timeout(std::time::Duration::from_millis(1));
                            }
                        }
                        assert!(held.fetch_add(1, Ordering::SeqCst) < 3);
                        held.fetch_sub(1, Ordering::SeqCst);
                        s.release();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(s.available_permits(), 3);
    }
}
