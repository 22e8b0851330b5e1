//! The response body of
//! [`HttpShieldedOnCancel`](crate::HttpShieldedOnCancel), which fires the
//! hook when the body ends.

use std::fmt;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll, ready};

use backstop_core::ErrorKind;
use http::StatusCode;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::guard::{Guard, error_kind};
use crate::hook::{Hook, Outcome};

pin_project! {
    /// Response body of
    /// [`HttpShieldedOnCancel`](crate::HttpShieldedOnCancel): the inner body,
    /// unchanged, plus the guard that fires the hook.
    ///
    /// The hook fires on the frame that ends the stream (a frame after which
    /// the inner body reports [`is_end_stream`](Body::is_end_stream), or the
    /// end of frames), on the first body error, or when the body is dropped,
    /// whichever comes first; at once if the body was empty from the start.
    /// The outcome at the end is `Success` below status 400, else
    /// `Error(kind)` (see the [crate docs](crate#http)). `size_hint` and
    /// `is_end_stream` are the inner body's.
    ///
    /// # Cancellation
    ///
    /// Dropping the body before it ended fires the hook once: as
    /// `Error(kind)` if the status is 400 or more, else as `Cancelled`.
    /// Dropping it after it ended fires nothing more.
    pub struct ResponseBody<B, H: Hook> {
        #[pin]
        inner: B,
        guard: Option<Guard<H>>,
    }
}

impl<B: Body, H: Hook> ResponseBody<B, H> {
    pub(crate) fn new(inner: B, mut guard: Option<Guard<H>>) -> Self {
        if inner.is_end_stream() {
            // Nothing to stream: the response is complete with its head.
            // hyper drops such a body without polling it, which must not
            // read as a cancellation.
            if let Some(g) = guard.take() {
                let outcome = end_outcome(g.status());
                g.finish(outcome);
            }
        }
        Self { inner, guard }
    }
}

impl<B, H: Hook> ResponseBody<B, H> {
    /// The inner body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }
}

impl<B, H> Body for ResponseBody<B, H>
where
    B: Body,
    B::Error: 'static,
    H: Hook,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        match &frame {
            Some(Ok(_)) if !this.inner.is_end_stream() => {}
            Some(Ok(_)) | None => {
                if let Some(g) = this.guard.take() {
                    let outcome = end_outcome(g.status());
                    g.finish_now(outcome);
                }
            }
            Some(Err(e)) => {
                if let Some(g) = this.guard.take() {
                    // A status of 400 or more already made it an error.
                    let kind = g
                        .status()
                        .and_then(status_error_kind)
                        .unwrap_or_else(|| error_kind(e));
                    g.finish_now(Outcome::Error(kind));
                }
            }
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

impl<B, H: Hook> fmt::Debug for ResponseBody<B, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseBody")
            .field("guard", &self.guard)
            .finish_non_exhaustive()
    }
}

/// The outcome of a body that ended: success below 400, else an error.
fn end_outcome(status: Option<StatusCode>) -> Outcome {
    status
        .and_then(status_error_kind)
        .map_or(Outcome::Success, Outcome::Error)
}

/// The [`ErrorKind`] of a response status of 400 or more; `None` below 400.
///
/// | status | kind |
/// |---|---|
/// | 401, 403 | `Unauthorized` |
/// | 429 | `Overloaded` |
/// | 408, 5xx (529 and 504 included) | `UpstreamFailure` |
/// | other 4xx | `InvalidRequest` |
pub(crate) fn status_error_kind(status: StatusCode) -> Option<ErrorKind> {
    let kind = match status.as_u16() {
        0..=399 => return None,
        401 | 403 => ErrorKind::Unauthorized,
        429 => ErrorKind::Overloaded,
        408 | 500.. => ErrorKind::UpstreamFailure,
        _ => ErrorKind::InvalidRequest,
    };
    Some(kind)
}
