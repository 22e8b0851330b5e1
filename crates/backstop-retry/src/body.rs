//! Bodies of the HTTP retry: a replayable request body and a response body
//! whose head part may have been buffered for inspection.

use std::fmt;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

pin_project! {
    /// Buffered bytes, then maybe the rest of a body, then a stored error or
    /// trailers.
    pub(crate) struct Spliced<B: Body> {
        prefix: Option<Bytes>,
        #[pin]
        rest: Option<B>,
        error: Option<B::Error>,
        trailers: Option<HeaderMap>,
    }
}

impl<B: Body> Spliced<B> {
    pub(crate) fn streaming(body: B) -> Self {
        Self {
            prefix: None,
            rest: Some(body),
            error: None,
            trailers: None,
        }
    }

    pub(crate) fn empty() -> Self {
        Self {
            prefix: None,
            rest: None,
            error: None,
            trailers: None,
        }
    }

    /// The whole body is in `data` (and `trailers`): replayable.
    pub(crate) fn full(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        Self {
            prefix: Some(data),
            rest: None,
            error: None,
            trailers,
        }
    }

    /// `data` was read, then the body goes on (`rest`) or failed (`error`).
    pub(crate) fn partial(data: Bytes, rest: Option<B>, error: Option<B::Error>) -> Self {
        Self {
            prefix: Some(data),
            rest,
            error,
            trailers: None,
        }
    }

    /// A copy if the whole body is buffered.
    pub(crate) fn try_clone(&self) -> Option<Self> {
        if self.rest.is_some() || self.error.is_some() {
            return None;
        }
        Some(Self {
            prefix: self.prefix.clone(),
            rest: None,
            error: None,
            trailers: self.trailers.clone(),
        })
    }

    /// Whether the body is entirely in memory.
    pub(crate) fn is_buffered(&self) -> bool {
        self.rest.is_none() && self.error.is_none()
    }

    pub(crate) fn buffered(&self) -> &[u8] {
        self.prefix.as_deref().unwrap_or_default()
    }
}

impl<B: Body> Body for Spliced<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut this = self.project();
        if let Some(p) = this.prefix.take() {
            if !p.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(p))));
            }
        }
        if let Some(rest) = this.rest.as_mut().as_pin_mut() {
            match ready!(rest.poll_frame(cx)) {
                Some(Ok(frame)) => {
                    return Poll::Ready(Some(Ok(
                        frame.map_data(|mut d| d.copy_to_bytes(d.remaining()))
                    )));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => this.rest.set(None),
            }
        }
        if let Some(e) = this.error.take() {
            return Poll::Ready(Some(Err(e)));
        }
        Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.as_ref().is_none_or(Bytes::is_empty)
            && self.rest.as_ref().is_none_or(Body::is_end_stream)
            && self.error.is_none()
            && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        let prefix = self.prefix.as_ref().map_or(0, |p| p.len() as u64);
        match &self.rest {
            None => SizeHint::with_exact(prefix),
            Some(rest) => {
                let h = rest.size_hint();
                let mut out = SizeHint::new();
                out.set_lower(h.lower().saturating_add(prefix));
                if let Some(u) = h.upper() {
                    out.set_upper(u.saturating_add(prefix));
                }
                out
            }
        }
    }
}

/// How reading a body up to a limit ended.
pub(crate) enum Collected<B: Body> {
    /// The body ended within the limit.
    Full(Bytes, Option<HeaderMap>),
    /// The limit was passed: what was read, and the rest of the body.
    Over(Bytes, B),
    /// The body failed: what was read, and the error.
    Failed(Bytes, B::Error),
}

impl<B: Body> Collected<B> {
    /// The body to replay: what was read, and what was not.
    pub(crate) fn into_spliced(self) -> Spliced<B> {
        match self {
            Collected::Full(data, trailers) => Spliced::full(data, trailers),
            Collected::Over(data, rest) => Spliced::partial(data, Some(rest), None),
            Collected::Failed(data, e) => Spliced::partial(data, None, Some(e)),
        }
    }
}

/// Reads a body into memory up to `limit` bytes (a body that ends within the
/// limit is complete; one that passes it is read no further).
pub(crate) struct Collector {
    first: Option<Bytes>,
    buf: Option<BytesMut>,
    len: usize,
    limit: usize,
}

impl Collector {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            first: None,
            buf: None,
            len: 0,
            limit,
        }
    }

    fn push(&mut self, mut data: impl Buf) {
        let n = data.remaining();
        if n == 0 {
            return;
        }
        self.len = self.len.saturating_add(n);
        if let Some(buf) = &mut self.buf {
            buf.extend_from_slice(&data.copy_to_bytes(n));
        } else if let Some(first) = self.first.take() {
            // A second chunk: copy both into one buffer.
            let mut buf = BytesMut::with_capacity(first.len() + n);
            buf.extend_from_slice(&first);
            buf.extend_from_slice(&data.copy_to_bytes(n));
            self.buf = Some(buf);
        } else {
            // Zero-copy for `Bytes` data.
            self.first = Some(data.copy_to_bytes(n));
        }
    }

    fn take(&mut self) -> Bytes {
        match (self.buf.take(), self.first.take()) {
            (Some(buf), _) => buf.freeze(),
            (None, Some(first)) => first,
            (None, None) => Bytes::new(),
        }
    }

    /// Polls `body` until it ends, fails or passes the limit. `body` must be
    /// `Unpin` because a body over the limit is moved on, partly read.
    pub(crate) fn poll<B: Body + Unpin>(
        &mut self,
        body: &mut Option<B>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Collected<B>> {
        loop {
            let Some(b) = body.as_mut() else {
                return Poll::Ready(Collected::Full(self.take(), None));
            };
            if self.len > self.limit {
                let Some(rest) = body.take() else {
                    unreachable!("checked above")
                };
                return Poll::Ready(Collected::Over(self.take(), rest));
            }
            match ready!(Pin::new(b).poll_frame(cx)) {
                None => {
                    *body = None;
                    return Poll::Ready(Collected::Full(self.take(), None));
                }
                Some(Err(e)) => {
                    *body = None;
                    return Poll::Ready(Collected::Failed(self.take(), e));
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => self.push(data),
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            // Trailers end the body.
                            *body = None;
                            return Poll::Ready(Collected::Full(self.take(), Some(trailers)));
                        }
                    }
                },
            }
        }
    }
}

impl fmt::Debug for Collector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Collector")
            .field("len", &self.len)
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

macro_rules! wrapper {
    ($(#[$doc:meta])* $name:ident) => {
        pin_project! {
            $(#[$doc])*
            pub struct $name<B: Body> {
                #[pin]
                inner: Spliced<B>,
            }
        }

        impl<B: Body> $name<B> {
            pub(crate) fn new(inner: Spliced<B>) -> Self {
                Self { inner }
            }
        }

        impl<B: Body> Body for $name<B> {
            type Data = Bytes;
            type Error = B::Error;

            fn poll_frame(
                self: Pin<&mut Self>,
                cx: &mut TaskContext<'_>,
            ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
                self.project().inner.poll_frame(cx)
            }

            fn is_end_stream(&self) -> bool {
                self.inner.is_end_stream()
            }

            fn size_hint(&self) -> SizeHint {
                self.inner.size_hint()
            }
        }

        impl<B: Body> fmt::Debug for $name<B> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($name))
                    .field("buffered", &self.inner.buffered().len())
                    .field("streaming", &self.inner.rest.is_some())
                    .finish()
            }
        }
    };
}

wrapper! {
    /// The request body the inner service sees: the buffered copy (replayed
    /// on every attempt), or, for a body over `max_replay_bytes`, the bytes
    /// read so far followed by the rest of the original body (sent once).
    ///
    /// Data frames are `Bytes`; trailers are kept. Forwards `size_hint` and
    /// `is_end_stream`.
    ReplayBody
}

wrapper! {
    /// The response body the caller gets: the upstream body unchanged, or,
    /// for a 408/409/429 that was inspected, the buffered bytes (up to 64 KiB)
    /// followed by whatever the upstream had not sent yet. Byte for byte the
    /// upstream's body either way.
    ///
    /// Data frames are `Bytes`; trailers are kept. Forwards `size_hint` and
    /// `is_end_stream`.
    ResponseBody
}

impl<B: Body> ReplayBody<B> {
    pub(crate) fn try_clone(&self) -> Option<Self> {
        self.inner.try_clone().map(Self::new)
    }
}

impl<B: Body> ResponseBody<B> {
    /// An empty body (used when a retried 5xx keeps only its head).
    pub(crate) fn empty() -> Self {
        Self::new(Spliced::empty())
    }

    pub(crate) fn spliced(&self) -> &Spliced<B> {
        &self.inner
    }
}
