//! What a request costs and which limit it counts against.

use std::fmt;

/// The cost of a request in the limiter's units.
///
/// Implemented by [`UnitCost`] (every request costs 1) and by [`Weighted`],
/// which [`RateLimitBuilder::cost_fn`](crate::RateLimitBuilder::cost_fn)
/// makes from a closure.
pub trait CostFn<Req> {
    /// The cost of `req`: 0 passes without touching the limiter; above the
    /// burst fails with `CostOverBurst`.
    fn cost(&self, req: &Req) -> u64;
}

/// Every request costs 1 (the default).
#[derive(Clone, Copy, Debug, Default)]
pub struct UnitCost;

impl<Req> CostFn<Req> for UnitCost {
    #[inline]
    fn cost(&self, _req: &Req) -> u64 {
        1
    }
}

/// A cost computed by a closure `Fn(&Req) -> u64`.
#[derive(Clone, Copy)]
pub struct Weighted<F>(pub(crate) F);

impl<Req, F: Fn(&Req) -> u64> CostFn<Req> for Weighted<F> {
    #[inline]
    fn cost(&self, req: &Req) -> u64 {
        (self.0)(req)
    }
}

impl<F> fmt::Debug for Weighted<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Weighted").finish_non_exhaustive()
    }
}

/// Which limit a request counts against, as a key of type `K`.
///
/// Implemented by [`Global`] (one limit, key `()`) and by [`KeyedBy`], which
/// [`RateLimitBuilder::keyed_by`](crate::RateLimitBuilder::keyed_by) makes
/// from a closure.
pub trait KeyFn<Req, K> {
    /// The key of `req`.
    fn key(&self, req: &Req) -> K;
}

/// One limit for every request (the default).
#[derive(Clone, Copy, Debug, Default)]
pub struct Global;

impl<Req> KeyFn<Req, ()> for Global {
    #[inline]
    fn key(&self, _req: &Req) {}
}

/// A key computed by a closure `Fn(&Req) -> K`.
#[derive(Clone, Copy)]
pub struct KeyedBy<F>(pub(crate) F);

impl<Req, K, F: Fn(&Req) -> K> KeyFn<Req, K> for KeyedBy<F> {
    #[inline]
    fn key(&self, req: &Req) -> K {
        (self.0)(req)
    }
}

impl<F> fmt::Debug for KeyedBy<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedBy").finish_non_exhaustive()
    }
}
