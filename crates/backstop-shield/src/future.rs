//! Response futures of [`ShieldedOnCancel`](crate::ShieldedOnCancel) and,
//! with `http`, `HttpShieldedOnCancel`.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll, ready};

use backstop_core::clock;
use pin_project_lite::pin_project;

use crate::guard::{Guard, error_kind};
use crate::hook::{Hook, Outcome};

pin_project! {
    /// Response future of [`ShieldedOnCancel`](crate::ShieldedOnCancel).
    ///
    /// Fires the hook when the inner future completes: `Success` on `Ok`,
    /// `Error(kind)` on `Err`, then returns the result unchanged.
    ///
    /// # Cancellation
    ///
    /// Dropping it at any point before the inner future completes (before
    /// the first poll, while the inner service works, or after the inner
    /// service answered but before this future was polled again) fires the
    /// hook once as `Cancelled` and drops the inner future. Dropping it after
    /// it completed fires nothing more.
    pub struct ResponseFuture<F, H: Hook> {
        #[pin]
        inner: F,
        guard: Option<Guard<H>>,
    }
}

impl<F, H: Hook> ResponseFuture<F, H> {
    pub(crate) fn new(inner: F, guard: Guard<H>) -> Self {
        Self {
            inner,
            guard: Some(guard),
        }
    }
}

impl<F, T, E, H> Future for ResponseFuture<F, H>
where
    F: Future<Output = Result<T, E>>,
    E: 'static,
    H: Hook,
{
    type Output = Result<T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.project();
        // One clock stretch per poll (backstop_core::clock); the hook runs
        // inside it, so its end instant needs no clock read of its own.
        clock::stretch(|| {
            let result = ready!(this.inner.poll(cx));
            if let Some(guard) = this.guard.take() {
                guard.finish(match &result {
                    Ok(_) => Outcome::Success,
                    Err(e) => Outcome::Error(error_kind(e)),
                });
            }
            Poll::Ready(result)
        })
    }
}

impl<F, H: Hook> fmt::Debug for ResponseFuture<F, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("guard", &self.guard)
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "http")]
pub use self::http::HttpResponseFuture;

#[cfg(feature = "http")]
mod http {
    use super::{
        Future, Guard, Hook, Outcome, Pin, Poll, TaskContext, clock, error_kind, fmt, ready,
    };
    use crate::body::ResponseBody;
    use pin_project_lite::pin_project;

    pin_project! {
        /// Response future of
        /// [`HttpShieldedOnCancel`](crate::HttpShieldedOnCancel).
        ///
        /// On `Err` it fires the hook as `Error(kind)`. On a response it
        /// moves the hook's guard into the [`ResponseBody`], which fires it
        /// when the body ends (at once if the body is already empty).
        ///
        /// # Cancellation
        ///
        /// Dropping it before the inner future completes fires the hook once
        /// as `Cancelled` and drops the inner future. Once it returned the
        /// response, the body owns the guard (see [`ResponseBody`]).
        pub struct HttpResponseFuture<F, H: Hook> {
            #[pin]
            inner: F,
            guard: Option<Guard<H>>,
        }
    }

    impl<F, H: Hook> HttpResponseFuture<F, H> {
        pub(crate) fn new(inner: F, guard: Guard<H>) -> Self {
            Self {
                inner,
                guard: Some(guard),
            }
        }
    }

    impl<F, B, E, H> Future for HttpResponseFuture<F, H>
    where
        F: Future<Output = Result<http::Response<B>, E>>,
        B: http_body::Body,
        E: 'static,
        H: Hook,
    {
        type Output = Result<http::Response<ResponseBody<B, H>>, E>;

        fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
            let this = self.project();
            let result = ready!(clock::stretch(|| this.inner.poll(cx)));
            let guard = this.guard.take();
            Poll::Ready(match result {
                Ok(response) => {
                    let guard = guard.map(|mut g| {
                        g.set_status(response.status());
                        g
                    });
                    Ok(response.map(|body| ResponseBody::new(body, guard)))
                }
                Err(e) => {
                    if let Some(guard) = guard {
                        guard.finish(Outcome::Error(error_kind(&e)));
                    }
                    Err(e)
                }
            })
        }
    }

    impl<F, H: Hook> fmt::Debug for HttpResponseFuture<F, H> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("HttpResponseFuture")
                .field("guard", &self.guard)
                .finish_non_exhaustive()
        }
    }
}
