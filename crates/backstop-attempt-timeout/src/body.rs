//! [`ResponseBody`]: the response body of
//! [`HttpAttemptTimeout`](crate::HttpAttemptTimeout), bounded between frames
//! and in total.

use std::fmt;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use backstop_core::{BoxError, StreamTimedOut, StreamTimeout};
use bytes::Buf;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::{Duration, Instant, Sleep, sleep_until};

pin_project! {
    /// Response body of [`HttpAttemptTimeout`](crate::HttpAttemptTimeout).
    ///
    /// Yields the first frame (buffered by the response future), then the
    /// inner body's frames unchanged. After the first frame it fails with
    /// [`StreamTimedOut`]:
    ///
    /// - [`StreamTimeout::Idle`] when the inner body makes it wait longer
    ///   than the idle timeout for a frame (measured from the first poll that
    ///   finds no frame after the last one was yielded);
    /// - [`StreamTimeout::MaxDuration`] once the maximum stream duration,
    ///   measured from the attempt's start, has passed. It is checked before
    ///   every poll of the inner body, so a body that always has a frame
    ///   ready is cut too.
    ///
    /// Neither is bounded by the SLA deadline (DESIGN, "Deadlines and their
    /// errors"). After an error, an end of stream or an inner error, the
    /// inner body and both timers are dropped at once and the body reports
    /// its end.
    ///
    /// Both timers only run while the body is polled: a client that stops
    /// reading stops the polls, so this body cannot cut it. The server must
    /// hold its own timer for the maximum duration and drop the connection
    /// (the gateway does this).
    ///
    /// `size_hint` and `is_end_stream` account for the buffered frame.
    ///
    /// # Cancellation
    ///
    /// Holds the buffered first frame, the inner body and at most one timer
    /// (boxed, so the body is `Unpin` when the inner body is; created only
    /// once the inner body makes it wait, so a body that never waits, such
    /// as a JSON answer read in one go, allocates none).
    /// Dropping it drops them all; nothing else is held.
    #[cfg_attr(docsrs, doc(cfg(feature = "http")))]
    pub struct ResponseBody<B>
    where
        B: Body,
    {
        first: Option<Frame<B::Data>>,
        #[pin]
        state: State<B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<B> {
        Streaming {
            #[pin]
            body: B,
            // At most one boxed timer per streaming response, armed at the
            // earlier of the idle deadline and the maximum: boxed so the body
            // is `Unpin` whenever the inner body is (the HTTP retry moves
            // bodies), one timer instead of two, and created at the first
            // poll that finds no frame.
            timer: Option<Pin<Box<Sleep>>>,
            idle_at: Option<Instant>,
            idle_timeout: Duration,
            max_at: Instant,
            max_duration: Duration,
        },
        Ended,
    }
}

impl<B: Body> ResponseBody<B> {
    /// A body whose first frame has arrived.
    pub(crate) fn streaming(
        first: Frame<B::Data>,
        body: B,
        idle_timeout: Duration,
        max_at: Instant,
        max_duration: Duration,
    ) -> Self {
        Self {
            first: Some(first),
            state: State::Streaming {
                body,
                timer: None,
                idle_at: None,
                idle_timeout,
                max_at,
                max_duration,
            },
        }
    }

    /// A body that ended before any frame. The inner body is dropped.
    pub(crate) fn ended(_body: B) -> Self {
        Self {
            first: None,
            state: State::Ended,
        }
    }
}

/// What one poll of the inner stream decided.
enum Step {
    End,
    Fail(BoxError),
}

impl<B> Body for ResponseBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        if let Some(frame) = this.first.take() {
            return Poll::Ready(Some(Ok(frame)));
        }
        let step = match this.state.as_mut().project() {
            StateProj::Ended => return Poll::Ready(None),
            StateProj::Streaming {
                body,
                timer,
                idle_at,
                idle_timeout,
                max_at,
                max_duration,
            } => {
                let now = Instant::now();
                let max_err =
                    || StreamTimedOut::new(StreamTimeout::MaxDuration, *max_duration).into();
                // Checked before every poll of the inner body, so a body that
                // always has a frame ready is cut too.
                if now >= *max_at {
                    Step::Fail(max_err())
                } else {
                    match body.poll_frame(cx) {
                        Poll::Ready(Some(Ok(frame))) => {
                            *idle_at = None;
                            return Poll::Ready(Some(Ok(frame)));
                        }
                        Poll::Ready(Some(Err(err))) => Step::Fail(err.into()),
                        Poll::Ready(None) => Step::End,
                        Poll::Pending => {
                            // The idle clock starts at the first poll that
                            // finds no frame after the last one. At most
                            // 24 h: no overflow.
                            let idle = *idle_at.get_or_insert(now + *idle_timeout);
                            let due = idle.min(*max_at);
                            let timer = match timer {
                                Some(timer) => {
                                    if timer.deadline() != due {
                                        timer.as_mut().reset(due);
                                    }
                                    timer
                                }
                                None => timer.insert(Box::pin(sleep_until(due))),
                            };
                            if timer.as_mut().poll(cx).is_pending() {
                                return Poll::Pending;
                            }
                            if due == *max_at {
                                Step::Fail(max_err())
                            } else {
                                Step::Fail(
                                    StreamTimedOut::new(StreamTimeout::Idle, *idle_timeout).into(),
                                )
                            }
                        }
                    }
                }
            }
        };
        // Ended or failed: drop the inner body and the timer now.
        this.state.set(State::Ended);
        match step {
            Step::End => Poll::Ready(None),
            Step::Fail(err) => Poll::Ready(Some(Err(err))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none()
            && match &self.state {
                State::Streaming { body, .. } => body.is_end_stream(),
                State::Ended => true,
            }
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = match &self.state {
            State::Streaming { body, .. } => body.size_hint(),
            State::Ended => SizeHint::with_exact(0),
        };
        let buffered = self
            .first
            .as_ref()
            .and_then(Frame::data_ref)
            .map_or(0, |data| data.remaining() as u64);
        if buffered > 0 {
            // Upper first, so the lower bound never passes it.
            if let Some(upper) = hint.upper() {
                hint.set_upper(upper.saturating_add(buffered));
            }
            hint.set_lower(hint.lower().saturating_add(buffered));
        }
        hint
    }
}

impl<B: Body> fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("ResponseBody");
        d.field("first_frame_buffered", &self.first.is_some());
        match &self.state {
            State::Streaming {
                idle_timeout,
                max_at,
                max_duration,
                ..
            } => d
                .field("idle_timeout", idle_timeout)
                .field("max_duration", max_duration)
                .field("ends_at", max_at),
            State::Ended => d.field("ended", &true),
        };
        d.finish_non_exhaustive()
    }
}
