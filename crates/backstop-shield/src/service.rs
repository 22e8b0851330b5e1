//! [`ShieldedOnCancel`] (and, with `http`, [`HttpShieldedOnCancel`]).

use std::fmt;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use backstop_core::clock;
use tower_service::Service;

use crate::future::ResponseFuture;
use crate::guard::{Guard, HookTracker, Shared};
use crate::hook::Hook;

/// Runs its layer's [`Hook`] exactly once per request, whether the response
/// future completes or is dropped.
///
/// Made by [`ShieldedOnCancelLayer`](crate::ShieldedOnCancelLayer). The
/// outcome is `Success` when the inner future returns `Ok`,
/// `Error(kind)` when it returns `Err` (the error passes through
/// unchanged), and `Cancelled` when the future is dropped first.
///
/// See the [crate docs](crate) for an example.
pub struct ShieldedOnCancel<S, H> {
    inner: S,
    shared: Arc<Shared<H>>,
}

impl<S, H> ShieldedOnCancel<S, H> {
    pub(crate) fn from_shared(inner: S, shared: Arc<Shared<H>>) -> Self {
        Self { inner, shared }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes `self`, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, H: Hook> ShieldedOnCancel<S, H> {
    /// The layer's tracker (counters, and drain at shutdown).
    pub fn tracker(&self) -> HookTracker {
        HookTracker::new(&self.shared)
    }
}

impl<S, H, Req> Service<Req> for ShieldedOnCancel<S, H>
where
    S: Service<Req>,
    S::Error: 'static,
    H: Hook,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, H>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        // The guard exists before the inner call, so a panic in it still
        // fires the hook (as cancelled).
        // One clock stretch for the whole call chain (backstop_core::clock).
        clock::stretch(|| {
            let guard = Guard::new(&self.shared);
            ResponseFuture::new(self.inner.call(req), guard)
        })
    }
}

// A derived `Clone` would require `H: Clone`; clones share the layer's state.
impl<S: Clone, H> Clone for ShieldedOnCancel<S, H> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S: fmt::Debug, H> fmt::Debug for ShieldedOnCancel<S, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShieldedOnCancel")
            .field("inner", &self.inner)
            .field("hook", &std::any::type_name::<H>())
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "http")]
pub use self::http::HttpShieldedOnCancel;

#[cfg(feature = "http")]
mod http {
    use super::{Arc, Guard, Hook, HookTracker, Poll, Service, Shared, TaskContext, clock, fmt};
    use crate::future::HttpResponseFuture;

    /// The HTTP variant of [`ShieldedOnCancel`](super::ShieldedOnCancel): the
    /// outcome is decided when the response body ends.
    ///
    /// Made by
    /// [`HttpShieldedOnCancelLayer`](crate::HttpShieldedOnCancelLayer). See
    /// the [crate docs](crate#http) for the outcome rules.
    pub struct HttpShieldedOnCancel<S, H> {
        inner: S,
        shared: Arc<Shared<H>>,
    }

    impl<S, H> HttpShieldedOnCancel<S, H> {
        pub(crate) fn from_shared(inner: S, shared: Arc<Shared<H>>) -> Self {
            Self { inner, shared }
        }

        /// The inner service.
        pub fn get_ref(&self) -> &S {
            &self.inner
        }

        /// The inner service, mutably.
        pub fn get_mut(&mut self) -> &mut S {
            &mut self.inner
        }

        /// Consumes `self`, returning the inner service.
        pub fn into_inner(self) -> S {
            self.inner
        }
    }

    impl<S, H: Hook> HttpShieldedOnCancel<S, H> {
        /// The layer's tracker (counters, and drain at shutdown).
        pub fn tracker(&self) -> HookTracker {
            HookTracker::new(&self.shared)
        }
    }

    impl<S, H, ReqB, ResB> Service<http::Request<ReqB>> for HttpShieldedOnCancel<S, H>
    where
        S: Service<http::Request<ReqB>, Response = http::Response<ResB>>,
        S::Error: 'static,
        ResB: http_body::Body,
        ResB::Error: 'static,
        H: Hook,
    {
        type Response = http::Response<crate::body::ResponseBody<ResB, H>>;
        type Error = S::Error;
        type Future = HttpResponseFuture<S::Future, H>;

        fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
            self.inner.poll_ready(cx)
        }

        fn call(&mut self, req: http::Request<ReqB>) -> Self::Future {
            clock::stretch(|| {
                let guard = Guard::new(&self.shared);
                HttpResponseFuture::new(self.inner.call(req), guard)
            })
        }
    }

    impl<S: Clone, H> Clone for HttpShieldedOnCancel<S, H> {
        fn clone(&self) -> Self {
            Self {
                inner: self.inner.clone(),
                shared: Arc::clone(&self.shared),
            }
        }
    }

    impl<S: fmt::Debug, H> fmt::Debug for HttpShieldedOnCancel<S, H> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("HttpShieldedOnCancel")
                .field("inner", &self.inner)
                .field("hook", &std::any::type_name::<H>())
                .finish_non_exhaustive()
        }
    }
}
