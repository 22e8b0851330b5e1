//! The HTTP variant: [`HttpAttemptTimeoutLayer`], [`HttpAttemptTimeout`] and
//! its response future. An attempt ends at the first body frame; the rest of
//! the body is bounded by [`ResponseBody`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll, ready};

use backstop_core::clock::LazySleep;
use backstop_core::{AttemptTimedOut, BoxError, ConfigError, Scoped, SlaExpired, check_duration};
use http::response::Parts;
use http::{Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tokio::time::{Duration, Instant};
use tower_layer::Layer;
use tower_service::Service;

use crate::body::ResponseBody;
use crate::future::expiry;
use crate::layer::AttemptTimeoutLayer;
use crate::obs::{Metrics, Outcome, Recording};
use crate::service::{Bound, Start};

/// The timeouts of one HTTP attempt and its stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Timeouts {
    attempt: Duration,
    first_byte: Duration,
    idle: Duration,
    max_stream: Duration,
}

/// [`AttemptTimeoutLayer`] for HTTP: bounds the response head, the first body
/// frame, the gaps between frames and the whole stream.
///
/// Made by [`AttemptTimeoutLayer::for_http`]; the setters validate their value
/// at once and return a [`ConfigError`] naming the setting (zero, or over
/// 24 h), so a value of this type is always usable and there is no `build()`
/// step:
///
/// ```
/// use backstop_attempt_timeout::AttemptTimeoutLayer;
/// use std::time::Duration;
///
/// # fn main() -> Result<(), backstop_core::ConfigError> {
/// let layer = AttemptTimeoutLayer::new(Duration::from_secs(20))?
///     .for_http()
///     .first_byte_timeout(Duration::from_secs(25))?
///     .idle_timeout(Duration::from_secs(15))?
///     .max_stream_duration(Duration::from_secs(300))?;
/// # let _ = layer;
/// # Ok(())
/// # }
/// ```
///
/// | bound | default | measured from | capped by SLA | error |
/// |---|---|---|---|---|
/// | response head | the attempt timeout (30 s) | attempt start | yes | [`AttemptTimedOut`] / [`SlaExpired`] |
/// | first body frame | the attempt timeout | attempt start | yes | [`AttemptTimedOut::first_byte`] / [`SlaExpired`] |
/// | between frames | 30 s | the last frame | no | `StreamTimedOut` (`Idle`) |
/// | whole stream | 10 min | attempt start | no | `StreamTimedOut` (`MaxDuration`) |
///
/// See the [crate docs](crate) for the behaviour in full.
#[derive(Clone, Copy, PartialEq, Eq)]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub struct HttpAttemptTimeoutLayer {
    timeouts: Timeouts,
}

impl AttemptTimeoutLayer {
    /// Changes the layer into its HTTP variant, which also bounds the first
    /// body frame (default: this layer's timeout), the gaps between frames
    /// (default 30 s) and the whole stream (default 10 min).
    #[cfg_attr(docsrs, doc(cfg(feature = "http")))]
    #[must_use]
    pub fn for_http(self) -> HttpAttemptTimeoutLayer {
        HttpAttemptTimeoutLayer {
            timeouts: Timeouts {
                attempt: self.timeout,
                first_byte: self.timeout,
                idle: HttpAttemptTimeoutLayer::DEFAULT_IDLE_TIMEOUT,
                max_stream: HttpAttemptTimeoutLayer::DEFAULT_MAX_STREAM_DURATION,
            },
        }
    }
}

impl HttpAttemptTimeoutLayer {
    /// The default idle timeout between body frames: 30 seconds.
    pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
    /// The default maximum stream duration: 10 minutes.
    pub const DEFAULT_MAX_STREAM_DURATION: Duration = Duration::from_secs(600);

    /// How long, from the attempt's start, to wait for the first body frame
    /// (capped by the SLA). Default: the attempt timeout.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming `first_byte_timeout` if it is zero or over
    /// 24 h.
    pub fn first_byte_timeout(mut self, timeout: Duration) -> Result<Self, ConfigError> {
        self.timeouts.first_byte = check_duration("first_byte_timeout", timeout, false)?;
        Ok(self)
    }

    /// How long to wait between two body frames after the first. Default
    /// 30 s.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming `idle_timeout` if it is zero or over 24 h.
    pub fn idle_timeout(mut self, timeout: Duration) -> Result<Self, ConfigError> {
        self.timeouts.idle = check_duration("idle_timeout", timeout, false)?;
        Ok(self)
    }

    /// The longest a response body may stream, from the attempt's start.
    /// Default 10 min.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming `max_stream_duration` if it is zero or over
    /// 24 h.
    pub fn max_stream_duration(mut self, max: Duration) -> Result<Self, ConfigError> {
        self.timeouts.max_stream = check_duration("max_stream_duration", max, false)?;
        Ok(self)
    }

    /// The timeout for the response head (before the SLA cap).
    pub fn timeout(&self) -> Duration {
        self.timeouts.attempt
    }
}

impl Default for HttpAttemptTimeoutLayer {
    fn default() -> Self {
        AttemptTimeoutLayer::default().for_http()
    }
}

impl fmt::Debug for HttpAttemptTimeoutLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = &self.timeouts;
        f.debug_struct("HttpAttemptTimeoutLayer")
            .field("timeout", &t.attempt)
            .field("first_byte_timeout", &t.first_byte)
            .field("idle_timeout", &t.idle)
            .field("max_stream_duration", &t.max_stream)
            .finish()
    }
}

impl<S> Layer<S> for HttpAttemptTimeoutLayer {
    type Service = HttpAttemptTimeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        HttpAttemptTimeout {
            inner,
            timeouts: self.timeouts,
            metrics: Metrics::resolve(),
        }
    }
}

/// The service made by [`HttpAttemptTimeoutLayer`].
///
/// Publishes the attempt deadline like [`AttemptTimeout`](crate::AttemptTimeout),
/// answers once the response head **and** the first body frame have arrived,
/// and wraps the body in a [`ResponseBody`] that bounds the rest of the
/// stream. The response body must be `Unpin` (hyper's `Incoming`, axum's
/// `Body` and boxed bodies are), so its first frame can be awaited in the
/// future and the body then moved into the response without allocating.
///
/// See the [crate docs](crate) for an example.
#[derive(Clone)]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub struct HttpAttemptTimeout<S> {
    inner: S,
    timeouts: Timeouts,
    metrics: Metrics,
}

impl<S> HttpAttemptTimeout<S> {
    /// A reference to the inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// A mutable reference to the inner service.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

// The metric handles say nothing about the service.
#[allow(clippy::missing_fields_in_debug)]
impl<S: fmt::Debug> fmt::Debug for HttpAttemptTimeout<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpAttemptTimeout")
            .field("inner", &self.inner)
            .field("timeouts", &self.timeouts)
            .finish()
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for HttpAttemptTimeout<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
    ResB: Body + Unpin,
    ResB::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<ResB>>;
    type Error = BoxError;
    type Future = HttpResponseFuture<S::Future, ResB>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let Some(start) = Start::now(self.timeouts.attempt) else {
            return HttpResponseFuture {
                state: State::Expired,
            };
        };
        let recording = start.recording(&self.metrics);
        let fut = start.ctx.sync_scope_in_place(|| self.inner.call(req));
        let t = self.timeouts;
        // `first_byte` is at most 24 h: no overflow.
        let first_byte = Bound::new(start.now + t.first_byte, start.sla);
        HttpResponseFuture {
            state: State::Running {
                sleep: LazySleep::new(start.armed.at),
                phase: Phase::Head {
                    inner: start.ctx.scope(fut),
                },
                plan: Plan {
                    start: start.now,
                    head: start.armed,
                    first_byte,
                    timeouts: t,
                },
                recording,
            },
        }
    }
}

/// What a running attempt needs to know.
#[derive(Clone, Copy, Debug)]
struct Plan {
    start: Instant,
    head: Bound,
    first_byte: Bound,
    timeouts: Timeouts,
}

pin_project! {
    /// Response future of [`HttpAttemptTimeout`].
    ///
    /// Waits for the response head, bounded by min(attempt start + timeout,
    /// SLA deadline), then for the first body frame, bounded by min(attempt
    /// start + first-byte timeout, SLA deadline), on the same timer. It
    /// resolves to the response with its body wrapped in a [`ResponseBody`]
    /// that yields the buffered first frame, then the rest.
    ///
    /// A body that ends before any frame resolves at once with an empty
    /// body; a body error before the first frame is returned as `Err` (the
    /// attempt failed).
    ///
    /// # Cancellation
    ///
    /// Holds the inner future (inside the request's context scope) until the
    /// head arrives, then the response head and body until the first frame,
    /// and one timer throughout. Dropping it at any point drops what it holds
    /// at that point (the inner future within its context scope) and
    /// deregisters the timer. With the `metrics` feature, a drop before the
    /// first frame counts the attempt as `cancelled`.
    #[cfg_attr(docsrs, doc(cfg(feature = "http")))]
    pub struct HttpResponseFuture<F, B> {
        #[pin]
        state: State<F, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B> {
        Running {
            // Created only if the head or the first frame keeps it waiting;
            // moved to the first-byte deadline without registering.
            #[pin]
            sleep: LazySleep,
            #[pin]
            phase: Phase<F, B>,
            plan: Plan,
            recording: Recording,
        },
        Expired,
    }
}

pin_project! {
    #[project = PhaseProj]
    enum Phase<F, B> {
        Head {
            #[pin]
            inner: Scoped<F>,
        },
        FirstFrame {
            parts: Option<Parts>,
            body: Option<B>,
        },
        Done,
    }
}

impl<F, B, E> Future for HttpResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    type Output = Result<Response<ResponseBody<B>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let (mut sleep, mut phase, plan, recording) = match self.project().state.project() {
            StateProj::Running {
                sleep,
                phase,
                plan,
                recording,
            } => (sleep, phase, *plan, recording),
            StateProj::Expired => return Poll::Ready(Err(SlaExpired::new().into())),
        };
        loop {
            match phase.as_mut().project() {
                PhaseProj::Head { inner } => match inner.poll(cx) {
                    Poll::Ready(Ok(response)) => {
                        let (parts, body) = response.into_parts();
                        if body.is_end_stream() {
                            recording.finish(Outcome::of_status(parts.status.as_u16()));
                            phase.set(Phase::Done);
                            let body = ResponseBody::ended(body);
                            return Poll::Ready(Ok(Response::from_parts(parts, body)));
                        }
                        phase.set(Phase::FirstFrame {
                            parts: Some(parts),
                            body: Some(body),
                        });
                        sleep.as_mut().reset(plan.first_byte.at);
                    }
                    Poll::Ready(Err(err)) => {
                        recording.finish(Outcome::Error);
                        phase.set(Phase::Done);
                        return Poll::Ready(Err(err.into()));
                    }
                    Poll::Pending => {
                        ready!(sleep.as_mut().poll(cx));
                        recording.finish(Outcome::Timeout {
                            by_sla: plan.head.by_sla,
                        });
                        phase.set(Phase::Done);
                        let t = plan.timeouts.attempt;
                        return Poll::Ready(Err(expiry(plan.head.by_sla, || {
                            AttemptTimedOut::new(t)
                        })));
                    }
                },
                PhaseProj::FirstFrame { parts, body } => {
                    let Some(b) = body.as_mut() else {
                        return Poll::Ready(Err(polled_after_completion()));
                    };
                    let first = match Pin::new(b).poll_frame(cx) {
                        Poll::Ready(Some(Ok(frame))) => Some(frame),
                        Poll::Ready(None) => None,
                        Poll::Ready(Some(Err(err))) => {
                            recording.finish(Outcome::Error);
                            phase.set(Phase::Done);
                            return Poll::Ready(Err(err.into()));
                        }
                        Poll::Pending => {
                            ready!(sleep.as_mut().poll(cx));
                            recording.finish(Outcome::Timeout {
                                by_sla: plan.first_byte.by_sla,
                            });
                            phase.set(Phase::Done);
                            let t = plan.timeouts.first_byte;
                            return Poll::Ready(Err(expiry(plan.first_byte.by_sla, || {
                                AttemptTimedOut::first_byte(t)
                            })));
                        }
                    };
                    let (Some(parts), Some(body)) = (parts.take(), body.take()) else {
                        return Poll::Ready(Err(polled_after_completion()));
                    };
                    recording.finish(Outcome::of_status(parts.status.as_u16()));
                    phase.set(Phase::Done);
                    let body = match first {
                        Some(frame) => ResponseBody::streaming(
                            frame,
                            body,
                            plan.timeouts.idle,
                            plan.start + plan.timeouts.max_stream,
                            plan.timeouts.max_stream,
                        ),
                        None => ResponseBody::ended(body),
                    };
                    return Poll::Ready(Ok(Response::from_parts(parts, body)));
                }
                PhaseProj::Done => return Poll::Ready(Err(polled_after_completion())),
            }
        }
    }
}

fn polled_after_completion() -> BoxError {
    "attempt future polled after completion".into()
}

impl<F, B> fmt::Debug for HttpResponseFuture<F, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("HttpResponseFuture");
        match &self.state {
            State::Running {
                sleep, phase, plan, ..
            } => {
                let phase = match phase {
                    Phase::Head { .. } => "head",
                    Phase::FirstFrame { .. } => "first_frame",
                    Phase::Done => "done",
                };
                d.field("phase", &phase)
                    .field("deadline", &sleep.deadline())
                    .field("plan", plan)
            }
            State::Expired => d.field("expired", &true),
        };
        d.finish_non_exhaustive()
    }
}
