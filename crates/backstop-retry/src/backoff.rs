//! Exponential backoff with jitter, and the small RNG behind the jitter.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::time::Duration;

/// How the backoff before a retry is randomised.
///
/// With `base` the backoff base, `max` the backoff maximum and
/// `exp(n) = min(base × 2^(n−1), max)` for the n-th retry (n = 1, 2, …):
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Jitter {
    /// `exp(n) + U[0, base)`: the source's `min(2^n, 32) s + uniform(0, 1) s`
    /// generalised to any base. The sleep can exceed `max` by less than
    /// `base`. The default.
    #[default]
    Additive,
    /// `U[0, exp(n))` ("full jitter"): spreads retries most, may retry at once.
    Full,
}

const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// SplitMix64 over one atomic word: lock-free, shared by every clone of a
/// layer, deterministic for a given seed when draws are sequential.
pub(crate) struct Rng(AtomicU64);

impl Rng {
    pub(crate) fn new(seed: Option<u64>) -> Self {
        Self(AtomicU64::new(seed.unwrap_or_else(random_seed)))
    }

    pub(crate) fn next_u64(&self) -> u64 {
        let state = self
            .0
            .fetch_add(GAMMA, Ordering::Relaxed)
            .wrapping_add(GAMMA);
        mix(state)
    }
}

/// The SplitMix64 output function.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A seed from std's per-process random hasher keys (no extra dependency),
/// mixed with a counter so two layers built at once differ.
fn random_seed() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.finish()
}

/// `d × r / 2^64`: a uniform draw in `[0, d)` for a uniform `r`.
pub(crate) fn fraction(d: Duration, r: u64) -> Duration {
    let nanos = (d.as_nanos() * u128::from(r)) >> 64;
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// `min(base × 2^(n−1), max)` for the n-th retry, saturating.
pub(crate) fn exponential(base: Duration, max: Duration, n: u32) -> Duration {
    let shift = n.saturating_sub(1);
    if shift >= 32 {
        return max;
    }
    base.checked_mul(1u32 << shift).map_or(max, |d| d.min(max))
}

/// The backoff before the n-th retry, drawing from `rng`.
pub(crate) fn backoff(base: Duration, max: Duration, jitter: Jitter, n: u32, r: u64) -> Duration {
    let exp = exponential(base, max, n);
    match jitter {
        Jitter::Additive => exp + fraction(base, r),
        Jitter::Full => fraction(exp, r),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_caps_and_saturates() {
        let s = Duration::from_secs;
        assert_eq!(exponential(s(1), s(32), 1), s(1));
        assert_eq!(exponential(s(1), s(32), 2), s(2));
        assert_eq!(exponential(s(1), s(32), 6), s(32));
        assert_eq!(exponential(s(1), s(32), 7), s(32));
        assert_eq!(exponential(s(1), s(32), u32::MAX), s(32));
        assert_eq!(exponential(s(86_400), s(86_400), 40), s(86_400));
    }

    #[test]
    fn fraction_is_below_the_bound() {
        let d = Duration::from_millis(50);
        assert_eq!(fraction(d, 0), Duration::ZERO);
        assert!(fraction(d, u64::MAX) < d);
        assert_eq!(fraction(d, 1 << 63), Duration::from_millis(25));
    }

    #[test]
    fn additive_never_sleeps_past_max_plus_base() {
        let (b, m) = (Duration::from_millis(50), Duration::from_millis(400));
        let rng = Rng::new(Some(7));
        for n in 1..20 {
            let d = backoff(b, m, Jitter::Additive, n, rng.next_u64());
            assert!(d >= exponential(b, m, n) && d < m + b, "{n}: {d:?}");
            let f = backoff(b, m, Jitter::Full, n, rng.next_u64());
            assert!(f < exponential(b, m, n));
        }
    }
}
