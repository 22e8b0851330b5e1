//! One clock read per synchronous stretch of a request.
//!
//! Reading the clock costs 40-50 ns on a virtual machine, and the fast path of
//! the full stack used to read it eight times per request. A *stretch* is one
//! synchronous piece of work: the outermost layer's `call()` (and with it every
//! inner layer's `call()`), or one poll of the outermost layer's future. Inside
//! a stretch, [`now`] reads the clock on its first use and returns that same
//! instant afterwards; outside one it simply reads the clock.
//!
//! # The rule
//!
//! [`now`] is "the instant this stretch started", not "the time right now". A
//! layer may use it for an instant taken **before** it calls or polls anything
//! that can take time: a deadline (`now + timeout`), the start of an attempt,
//! a rate-limit reservation, a retry-budget deposit. A layer must read
//! [`Instant::now`] itself for anything measured **after** inner work: the end
//! of an elapsed time, a backoff decided after an attempt failed, a limiter's
//! re-check after it waited (that happens in a later poll, a new stretch, so
//! [`now`] would be fresh there too, but the explicit read documents it).
//!
//! Within one stretch the instant can lag real time by the length of that
//! stretch: a poll is meant to be short (microseconds), so deadlines built from
//! it are early by at most that much, never late.
//!
//! Stretches are thread-local and nest: an inner [`stretch`] inside an outer
//! one adds nothing. They are opened by the layers that sit outermost in the
//! stack (`ShieldedOnCancel`, `SlaTimeout`); without them every [`now`] reads
//! the clock, exactly as before.
//!
//! [`LazySleep`] is the other half of the fast path: a deadline timer that is
//! only created when the inner future turns out to be pending.

use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use tokio::time::{Instant, Sleep, sleep_until};

#[derive(Clone, Copy)]
enum State {
    /// No stretch is open.
    Off,
    /// A stretch is open; the instant once someone asked.
    On(Option<Instant>),
}

thread_local! {
    static STATE: Cell<State> = const { Cell::new(State::Off) };
}

/// The instant of the current stretch (read on first use), or a fresh clock
/// read outside any stretch. See the [module docs](self) for when it may be
/// used.
#[inline]
pub fn now() -> Instant {
    STATE
        .try_with(|state| match state.get() {
            State::On(Some(at)) => at,
            State::On(None) => {
                let at = Instant::now();
                state.set(State::On(Some(at)));
                at
            }
            State::Off => Instant::now(),
        })
        .unwrap_or_else(|_| Instant::now())
}

/// The instant of the current stretch (read now if nobody asked yet), or
/// `None` outside any stretch.
///
/// For an end instant taken where the work has just finished (the end of
/// the poll that completed a request, say), when the start of that stretch
/// is close enough: it is early by at most the length of the stretch.
#[inline]
pub fn stretch_now() -> Option<Instant> {
    STATE
        .try_with(|state| match state.get() {
            State::On(Some(at)) => Some(at),
            State::On(None) => {
                let at = Instant::now();
                state.set(State::On(Some(at)));
                Some(at)
            }
            State::Off => None,
        })
        .ok()
        .flatten()
}

/// Runs `f` as one stretch: every [`now`] inside it returns the same instant.
///
/// Inside an open stretch this just runs `f`. The stretch is closed when `f`
/// returns or unwinds.
#[inline]
pub fn stretch<R>(f: impl FnOnce() -> R) -> R {
    let opened = STATE
        .try_with(|state| match state.get() {
            State::Off => {
                state.set(State::On(None));
                true
            }
            State::On(_) => false,
        })
        .unwrap_or(false);
    if !opened {
        return f();
    }
    let _close = Close;
    f()
}

/// Closes the stretch it opened, also on unwind.
struct Close;

impl Drop for Close {
    #[inline]
    fn drop(&mut self) {
        let _ = STATE.try_with(|state| state.set(State::Off));
    }
}

pin_project_lite::pin_project! {
    /// A timer that is only created when it is first polled.
    ///
    /// Deadline layers poll their inner future first and their timer only
    /// when the inner future is pending, so on a fast path (the inner future
    /// ready at once) the timer is never created and never registered with
    /// the runtime: building a [`Sleep`] looks up the runtime's timer handle,
    /// and dropping one takes the timer's lock if it was registered. Behaves
    /// exactly like [`sleep_until`]`(deadline)` otherwise (the deadline is
    /// absolute, so arming late changes nothing).
    ///
    /// # Cancellation
    ///
    /// Holds at most one timer; dropping it deregisters the timer.
    pub struct LazySleep {
        deadline: Instant,
        #[pin]
        sleep: Option<Sleep>,
    }
}

impl LazySleep {
    /// A timer for `deadline`, not yet created.
    #[inline]
    pub fn new(deadline: Instant) -> Self {
        Self {
            deadline,
            sleep: None,
        }
    }

    /// The instant the timer fires at.
    #[inline]
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Moves the deadline. Before the timer is created this only records
    /// it: nothing is registered with the runtime until the first poll
    /// (tokio's `Sleep::reset` registers the timer at once).
    #[inline]
    pub fn reset(self: Pin<&mut Self>, deadline: Instant) {
        let mut this = self.project();
        *this.deadline = deadline;
        if let Some(sleep) = this.sleep.as_mut().as_pin_mut() {
            if sleep.deadline() != deadline {
                sleep.reset(deadline);
            }
        }
    }

    /// Whether the timer has been created (polled at least once).
    #[inline]
    pub fn is_armed(&self) -> bool {
        self.sleep.is_some()
    }
}

impl Future for LazySleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<()> {
        let mut this = self.project();
        if this.sleep.is_none() {
            this.sleep.set(Some(sleep_until(*this.deadline)));
        }
        match this.sleep.as_pin_mut() {
            Some(sleep) => sleep.poll(cx),
            // Just set above.
            None => Poll::Ready(()),
        }
    }
}

impl fmt::Debug for LazySleep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LazySleep")
            .field("deadline", &self.deadline)
            .field("armed", &self.is_armed())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::{Duration, advance};

    #[tokio::test(start_paused = true)]
    async fn one_instant_per_stretch() {
        let before = now();
        advance(Duration::from_secs(1)).await;
        // Outside a stretch: a fresh read every time.
        assert_eq!(now(), before + Duration::from_secs(1));
        let t0 = Instant::now();
        let (a, b) = stretch(|| {
            let a = now();
            // Nested stretches share the outer instant.
            let b = stretch(now);
            (a, b)
        });
        assert_eq!(a, t0);
        assert_eq!(b, t0);
        advance(Duration::from_secs(1)).await;
        // A new stretch reads the clock again.
        assert_eq!(stretch(now), t0 + Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn the_instant_is_frozen_inside_a_stretch() {
        let t0 = Instant::now();
        let start = std::sync::Mutex::new(None);
        stretch(|| {
            *start.lock().unwrap() = Some(now());
        });
        assert_eq!(*start.lock().unwrap(), Some(t0));
        // After the stretch, nothing is cached.
        advance(Duration::from_millis(5)).await;
        assert_eq!(now(), t0 + Duration::from_millis(5));
    }

    #[test]
    fn closes_on_unwind() {
        let caught = std::panic::catch_unwind(|| stretch(|| panic!("boom")));
        assert!(caught.is_err());
        let opened = STATE.with(|s| matches!(s.get(), State::Off));
        assert!(opened, "the stretch stays open after a panic");
    }

    #[tokio::test(start_paused = true)]
    async fn lazy_sleep_arms_on_first_poll() {
        let at = Instant::now() + Duration::from_secs(2);
        let timer = LazySleep::new(at);
        assert!(!timer.is_armed());
        assert_eq!(timer.deadline(), at);
        let mut timer = tokio_test::task::spawn(timer);
        tokio_test::assert_pending!(timer.poll());
        assert!(timer.enter(|_, t| t.is_armed()));
        advance(Duration::from_secs(1)).await;
        tokio_test::assert_pending!(timer.poll());
        advance(Duration::from_secs(1)).await;
        tokio_test::assert_ready!(timer.poll());
    }

    #[tokio::test(start_paused = true)]
    async fn lazy_sleep_resets_before_and_after_arming() {
        let now = Instant::now();
        let mut timer = Box::pin(LazySleep::new(now + Duration::from_secs(5)));
        // Unarmed: only the deadline moves.
        timer.as_mut().reset(now + Duration::from_secs(1));
        assert!(!timer.is_armed());
        assert_eq!(timer.deadline(), now + Duration::from_secs(1));
        let mut timer = tokio_test::task::spawn(timer);
        tokio_test::assert_pending!(timer.poll());
        // Armed: the timer itself moves.
        timer.enter(|_, t| t.get_mut().as_mut().reset(now + Duration::from_secs(2)));
        advance(Duration::from_secs(1)).await;
        tokio_test::assert_pending!(timer.poll());
        advance(Duration::from_secs(1)).await;
        tokio_test::assert_ready!(timer.poll());
    }
}
