//! Reservations that can be settled to the true cost later.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::store::{RateStore, Receipt};

/// What the limiter remembers of one committed reservation.
pub(crate) struct Parts<St: RateStore> {
    pub(crate) store: Arc<St>,
    pub(crate) key: St::Key,
    pub(crate) cost: u64,
    pub(crate) receipt: Receipt,
}

impl<St: RateStore> Parts<St> {
    pub(crate) fn cancel(self) {
        self.store.cancel(&self.key, self.cost, self.receipt);
    }
}

/// Gives a reservation back when dropped, unless taken out first.
pub(crate) struct CancelOnDrop<St: RateStore>(pub(crate) Option<Parts<St>>);

impl<St: RateStore> Drop for CancelOnDrop<St> {
    fn drop(&mut self) {
        if let Some(parts) = self.0.take() {
            parts.cancel();
        }
    }
}

/// A reservation whose cost was spent on an admitted request, which can be
/// settled to the true cost once it is known (tokens used, say).
///
/// [`settle`](Self::settle) refunds the difference when the true cost is
/// smaller and charges it when larger; [`refund`](Self::refund) gives the whole
/// reservation back. Only the first settle counts (clones share that). If
/// nobody settles, the reserved cost stands.
///
/// A refund gives back the part of the reservation that still lies ahead in
/// the limiter's schedule, whatever was reserved after it; time that has
/// already passed is spent (see the [crate docs](crate)).
///
/// Cheap to clone (one `Arc`). Reach it through
/// [`RateLimitLayer::attach_reservation`](crate::RateLimitLayer::attach_reservation),
/// or with the `http` feature in the response extensions.
pub struct Reservation<St: RateStore> {
    inner: Arc<Inner<St>>,
}

struct Inner<St: RateStore> {
    parts: Parts<St>,
    settled: AtomicBool,
}

impl<St: RateStore> Reservation<St> {
    pub(crate) fn new(parts: Parts<St>) -> Self {
        Self {
            inner: Arc::new(Inner {
                parts,
                settled: AtomicBool::new(false),
            }),
        }
    }

    /// The reserved cost.
    pub fn cost(&self) -> u64 {
        self.inner.parts.cost
    }

    /// The key the cost was reserved under.
    pub fn key(&self) -> &St::Key {
        &self.inner.parts.key
    }

    /// Corrects the reservation to `actual` units. Returns `false` (and does
    /// nothing) if it was already settled.
    pub fn settle(&self, actual: u64) -> bool {
        if self.inner.settled.swap(true, Ordering::AcqRel) {
            return false;
        }
        let p = &self.inner.parts;
        p.store.settle(&p.key, p.cost, actual, p.receipt);
        true
    }

    /// Gives the whole reservation back (`settle(0)`), e.g. when no 2xx
    /// arrived.
    pub fn refund(&self) -> bool {
        self.settle(0)
    }

    /// Whether it was settled.
    pub fn is_settled(&self) -> bool {
        self.inner.settled.load(Ordering::Acquire)
    }
}

impl<St: RateStore> Clone for Reservation<St> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<St: RateStore> fmt::Debug for Reservation<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reservation")
            .field("cost", &self.inner.parts.cost)
            .field("receipt", &self.inner.parts.receipt)
            .field("settled", &self.is_settled())
            .finish_non_exhaustive()
    }
}

/// What the limiter does with the reservation of an admitted request when its
/// response arrives.
pub trait Attach<Resp, St: RateStore> {
    /// Called once per successful response of a request that took a
    /// reservation; `make` builds the [`Reservation`] (one allocation), so an
    /// implementation that discards it should not call it.
    fn attach(&self, response: &mut Resp, make: impl FnOnce() -> Reservation<St>);

    /// Whether an error from the inner service gives the reservation back.
    ///
    /// `false` by default: once the inner service was called the cost is
    /// spent. [`InExtensions`] answers `true`: a limiter that settles from the
    /// response's usage refunds in full when no response arrives at all (a
    /// connect error, an attempt timeout), as it would for a non-2xx.
    fn refund_on_error(&self) -> bool {
        false
    }
}

/// Discards reservations: the reserved cost stands (the default).
#[derive(Clone, Copy, Debug, Default)]
pub struct Discard;

impl<Resp, St: RateStore> Attach<Resp, St> for Discard {
    #[inline]
    fn attach(&self, _response: &mut Resp, _make: impl FnOnce() -> Reservation<St>) {}
}

/// Hands reservations to a closure `Fn(&mut Resp, Reservation<St>)`, made by
/// [`RateLimitLayer::attach_reservation`](crate::RateLimitLayer::attach_reservation).
#[derive(Clone, Copy)]
pub struct AttachWith<F>(pub(crate) F);

impl<Resp, St: RateStore, F: Fn(&mut Resp, Reservation<St>)> Attach<Resp, St> for AttachWith<F> {
    fn attach(&self, response: &mut Resp, make: impl FnOnce() -> Reservation<St>) {
        (self.0)(response, make());
    }
}

impl<F> fmt::Debug for AttachWith<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AttachWith").finish_non_exhaustive()
    }
}

/// Puts reservations into `http::Response::extensions_mut()`, made by
/// [`RateLimitLayer::reservation_in_extensions`](crate::RateLimitLayer::reservation_in_extensions).
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
#[derive(Clone, Copy, Debug, Default)]
pub struct InExtensions;

#[cfg(feature = "http")]
impl<B, St: RateStore> Attach<http::Response<B>, St> for InExtensions {
    fn attach(&self, response: &mut http::Response<B>, make: impl FnOnce() -> Reservation<St>) {
        response.extensions_mut().insert(make());
    }

    fn refund_on_error(&self) -> bool {
        true
    }
}
