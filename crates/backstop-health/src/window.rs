//! The upstream error window: a lock-free ring of one-second buckets.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::time::{Duration, Instant};

/// Number of buckets, each [`BUCKET`] wide: together the window.
pub(crate) const BUCKETS: u32 = 10;
/// Width of one bucket.
pub(crate) const BUCKET: Duration = Duration::from_secs(1);

/// Attempts and failures over the last `BUCKETS` seconds.
///
/// Each bucket is one `AtomicU64` packing the second it belongs to (32 bits,
/// counted from the window's creation), its attempts (16 bits) and its
/// failures (16 bits). Recording is one compare-and-swap loop on one bucket:
/// a bucket found holding an older second is reset in the same swap. Reading
/// sums the buckets whose second lies within the window. Counts saturate at
/// 65 535 per bucket (per second), which keeps the failure ratio meaningful
/// far beyond any one instance's attempt rate.
///
/// An attempt counts from the instant it is recorded until the end of the
/// tenth whole second after its own, so for between 9 and 10 s.
#[derive(Debug)]
pub(crate) struct Window {
    origin: Instant,
    buckets: [AtomicU64; BUCKETS as usize],
}

/// Attempts and failures seen in the window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) attempts: u32,
    pub(crate) failures: u32,
}

fn pack(second: u32, attempts: u16, failures: u16) -> u64 {
    (u64::from(second) << 32) | (u64::from(attempts) << 16) | u64::from(failures)
}

fn unpack(word: u64) -> (u32, u16, u16) {
    ((word >> 32) as u32, (word >> 16) as u16, word as u16)
}

impl Window {
    pub(crate) fn new(origin: Instant) -> Self {
        Self {
            origin,
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    fn second(&self, now: Instant) -> u32 {
        let index = now.saturating_duration_since(self.origin).as_millis() / BUCKET.as_millis();
        u32::try_from(index).unwrap_or(u32::MAX)
    }

    /// Records one attempt at `now`.
    pub(crate) fn record(&self, now: Instant, failed: bool) {
        let second = self.second(now);
        let bucket = &self.buckets[(second % BUCKETS) as usize];
        let failed = u16::from(failed);
        let mut cur = bucket.load(Ordering::Relaxed);
        loop {
            let (at, attempts, failures) = unpack(cur);
            let new = if at == second {
                pack(
                    second,
                    attempts.saturating_add(1),
                    failures.saturating_add(failed),
                )
            } else {
                // An older second (or, after a saturated clock, any other):
                // this bucket starts over.
                pack(second, 1, failed)
            };
            match bucket.compare_exchange_weak(cur, new, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return,
                Err(actual) => cur = actual,
            }
        }
    }

    /// Attempts and failures recorded over the window ending at `now`.
    pub(crate) fn counts(&self, now: Instant) -> Counts {
        let second = self.second(now);
        let mut counts = Counts::default();
        for bucket in &self.buckets {
            let (at, attempts, failures) = unpack(bucket.load(Ordering::Relaxed));
            if at <= second && second - at < BUCKETS {
                counts.attempts += u32::from(attempts);
                counts.failures += u32::from(failures);
            }
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_expire_after_ten_seconds() {
        let origin = Instant::now();
        let w = Window::new(origin);
        w.record(origin, true);
        w.record(origin + Duration::from_millis(999), false);
        w.record(origin + Duration::from_millis(1500), true);
        let c = w.counts(origin + Duration::from_secs(2));
        assert_eq!(
            c,
            Counts {
                attempts: 3,
                failures: 2
            }
        );
        // Second 0 leaves the window at 10 s, second 1 at 11 s.
        let c = w.counts(origin + Duration::from_millis(9999));
        assert_eq!(c.attempts, 3);
        let c = w.counts(origin + Duration::from_secs(10));
        assert_eq!(
            c,
            Counts {
                attempts: 1,
                failures: 1
            }
        );
        assert_eq!(
            w.counts(origin + Duration::from_secs(11)),
            Counts::default()
        );
        // A bucket reused ten seconds later starts over.
        w.record(origin + Duration::from_secs(10), false);
        let c = w.counts(origin + Duration::from_secs(10));
        assert_eq!(
            c,
            Counts {
                attempts: 2,
                failures: 1
            }
        );
    }

    #[test]
    fn saturates_instead_of_wrapping() {
        let origin = Instant::now();
        let w = Window::new(origin);
        for _ in 0..70_000 {
            w.record(origin, true);
        }
        let c = w.counts(origin);
        assert_eq!(c.attempts, u32::from(u16::MAX));
        assert_eq!(c.failures, u32::from(u16::MAX));
    }
}
