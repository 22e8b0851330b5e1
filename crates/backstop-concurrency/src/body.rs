//! Release at body end (feature `http`): the permit rides in the response
//! body.

use std::fmt;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll, ready};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::layer::{ConcurrencyLimitLayer, Permit, ReleaseOnCompletion, ReleasePolicy};

/// Release policy (feature `http`): the permit moves into the response body
/// and is released on the frame that ends the stream, on a body error, or
/// when the body is dropped. An error before the response head, or a body
/// that is empty from the start, releases it at once.
///
/// Chosen with [`ConcurrencyLimitLayer::release_at_body_end`].
#[derive(Clone, Copy, Debug, Default)]
pub struct ReleaseAtBodyEnd;

pin_project! {
    /// A response body that holds a concurrency permit until it ends.
    ///
    /// Forwards frames, [`size_hint`](Body::size_hint) and
    /// [`is_end_stream`](Body::is_end_stream) unchanged. The permit is
    /// released on the frame after which the inner body reports
    /// `is_end_stream()`, on `None`, or on an error frame.
    ///
    /// # Cancellation
    ///
    /// Dropping the body releases the permit if it was still held.
    ///
    /// See the [crate docs](crate) for an example.
    pub struct ResponseBody<B> {
        #[pin]
        inner: B,
        permit: Option<Permit>,
    }
}

// === impl ConcurrencyLimitLayer ===

impl ConcurrencyLimitLayer<ReleaseOnCompletion> {
    /// Holds each permit until the response body ends (feature `http`): the
    /// service then returns `http::Response<ResponseBody<B>>`.
    ///
    /// The limit (the semaphore) is the same one: clones and handles taken
    /// before still observe it.
    #[must_use]
    pub fn release_at_body_end(self) -> ConcurrencyLimitLayer<ReleaseAtBodyEnd> {
        self.with_policy()
    }
}

// === impl ReleaseAtBodyEnd ===

impl<B: Body> ReleasePolicy<http::Response<B>> for ReleaseAtBodyEnd {
    type Response = http::Response<ResponseBody<B>>;

    fn attach(response: http::Response<B>, permit: Permit) -> Self::Response {
        response.map(|body| ResponseBody::new(body, permit))
    }
}

// === impl ResponseBody ===

impl<B: Body> ResponseBody<B> {
    pub(crate) fn new(inner: B, permit: Permit) -> Self {
        // hyper may never poll a body that is empty from the start.
        let permit = (!inner.is_end_stream()).then_some(permit);
        Self { inner, permit }
    }
}

impl<B> ResponseBody<B> {
    /// Whether this body still holds its permit.
    pub fn holds_permit(&self) -> bool {
        self.permit.is_some()
    }

    /// The inner body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }
}

impl<B: Body> Body for ResponseBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        let ends = match &frame {
            None | Some(Err(_)) => true,
            Some(Ok(_)) => this.inner.as_ref().get_ref().is_end_stream(),
        };
        if ends {
            // Release on the frame that ends the stream, not only on drop.
            *this.permit = None;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B: fmt::Debug> fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseBody")
            .field("inner", &self.inner)
            .field("holds_permit", &self.permit.is_some())
            .finish()
    }
}
