//! Test helpers shared by backstop's crates and integration tests (not
//! published).
//!
//! - [`trace_init`]: a tracing subscriber that writes through the test
//!   harness, once per process.
//! - [`paused_runtime`]: a current-thread runtime on paused time, for tests
//!   that build their own (e.g. under a local metrics recorder).
//! - [`call_with_ticket`]: call a ticket-aware limiter as `QueueAdmission`
//!   does, with an admission ticket offered, and check it took it.
//! - [`MockUpstream`]: a scripted HTTP upstream that counts attempts and
//!   in-flight calls and notices cancellation.
//! - [`body_channel`]: a response body fed frame by frame from the test.
//! - [`metrics::recorded`]: a scenario under a local metrics recorder, on
//!   paused time, with exact counts read back.
//! - [`poll_n_then_drop`]: drive a future a given number of polls, then drop
//!   it, to test cancellation at each await point.
#![allow(clippy::missing_panics_doc)]

pub mod metrics;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use tokio::sync::mpsc;
use tokio::time::Duration;
use tower::BoxError;

/// Installs a `tracing` subscriber writing through the test harness
/// (`RUST_LOG` filters, default `debug` for backstop crates). Safe to call from
/// every test.
pub fn trace_init() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("backstop=debug"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    });
}

/// Runs `call` (a ticket-aware limiter's `call()`) as `QueueAdmission` does:
/// with `ticket` offered. Panics unless the limiter took it.
pub fn call_with_ticket<T>(ticket: backstop_core::AdmissionTicket, call: impl FnOnce() -> T) -> T {
    ticket.offer(|| {
        let out = call();
        assert!(
            backstop_core::AdmissionTicket::offered_deadline().is_none(),
            "the limiter takes the ticket in call()"
        );
        out
    })
}

/// A current-thread runtime with time paused, for tests that need to build
/// their runtime inside another scope (such as
/// `metrics::with_local_recorder`).
pub fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime builds")
}

/// Polls `fut` up to `polls` times (yielding to the runtime in between, so
/// paused time auto-advances to the next timer), then drops it.
///
/// Returns the output if the future finished within `polls`.
pub async fn poll_n_then_drop<F: Future>(fut: F, polls: usize) -> Option<F::Output> {
    let mut fut = pin!(fut);
    for _ in 0..polls {
        let out = std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await;
        if let Poll::Ready(out) = out {
            return Some(out);
        }
        tokio::task::yield_now().await;
        // Let paused time move to the next armed timer, as an await would.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    None
}

/// What a [`MockUpstream`] does for one call.
#[derive(Clone, Debug)]
pub enum Step {
    /// Answer with this status, headers and body after `delay`.
    Respond {
        /// The status.
        status: StatusCode,
        /// Extra headers.
        headers: Vec<(HeaderName, HeaderValue)>,
        /// The body, sent as one frame.
        body: Bytes,
        /// How long before the head arrives.
        delay: Duration,
    },
    /// Fail the call with a connect-style error after `delay`.
    Fail {
        /// How long before it fails.
        delay: Duration,
    },
    /// Never answer.
    Stall,
}

impl Step {
    /// A 200 with a JSON body, at once.
    pub fn ok(body: &'static str) -> Self {
        Self::status(200, body)
    }

    /// A response with `status` and `body`, at once.
    pub fn status(status: u16, body: &'static str) -> Self {
        Self::Respond {
            status: StatusCode::from_u16(status).expect("a valid status"),
            headers: Vec::new(),
            body: Bytes::from_static(body.as_bytes()),
            delay: Duration::ZERO,
        }
    }

    /// Adds a header to a `Respond` step.
    #[must_use]
    pub fn header(mut self, name: &'static str, value: &'static str) -> Self {
        if let Self::Respond { headers, .. } = &mut self {
            headers.push((
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            ));
        }
        self
    }

    /// Delays a `Respond` or `Fail` step.
    #[must_use]
    pub fn after(mut self, by: Duration) -> Self {
        match &mut self {
            Self::Respond { delay, .. } | Self::Fail { delay } => *delay = by,
            Self::Stall => {}
        }
        self
    }
}

#[derive(Debug, Default)]
struct MockState {
    script: Mutex<VecDeque<Step>>,
    fallback: Mutex<Option<Step>>,
    calls: AtomicUsize,
    in_flight: AtomicUsize,
    cancelled: AtomicUsize,
    completed: AtomicUsize,
    seen: Mutex<Vec<SeenRequest>>,
}

/// What a [`MockUpstream`] recorded of one request.
#[derive(Clone, Debug)]
pub struct SeenRequest {
    /// Method and path.
    pub method: http::Method,
    /// The path and query.
    pub uri: http::Uri,
    /// The headers.
    pub headers: HeaderMap,
    /// The request's extensions that backstop sets, as the core context.
    pub context: Option<backstop_core::Context>,
}

/// A scripted HTTP upstream: a `tower::Service<Request<B>>` that answers
/// each call with the next [`Step`] of its script (then the fallback), and
/// counts calls, in-flight calls, cancellations and completions.
///
/// Cloning shares the script and the counters.
#[derive(Clone, Debug, Default)]
pub struct MockUpstream {
    state: Arc<MockState>,
}

impl MockUpstream {
    /// An upstream that answers 200 `{}` to everything.
    pub fn new() -> Self {
        let this = Self::default();
        this.fallback(Step::ok("{}"));
        this
    }

    /// An upstream that plays `steps` in order, then answers 200 `{}`.
    pub fn script(steps: impl IntoIterator<Item = Step>) -> Self {
        let this = Self::new();
        this.state.script.lock().unwrap().extend(steps);
        this
    }

    /// Sets what the upstream does once the script is played.
    pub fn fallback(&self, step: Step) {
        *self.state.fallback.lock().unwrap() = Some(step);
    }

    /// Appends a step to the script.
    pub fn push(&self, step: Step) {
        self.state.script.lock().unwrap().push_back(step);
    }

    /// Calls made so far (attempts that reached the upstream).
    pub fn calls(&self) -> usize {
        self.state.calls.load(Ordering::SeqCst)
    }

    /// Calls in progress now.
    pub fn in_flight(&self) -> usize {
        self.state.in_flight.load(Ordering::SeqCst)
    }

    /// Calls dropped before they answered.
    pub fn cancelled(&self) -> usize {
        self.state.cancelled.load(Ordering::SeqCst)
    }

    /// Calls that answered (with a response or an error).
    pub fn completed(&self) -> usize {
        self.state.completed.load(Ordering::SeqCst)
    }

    /// The requests seen so far.
    pub fn seen(&self) -> Vec<SeenRequest> {
        self.state.seen.lock().unwrap().clone()
    }

    fn next_step(&self) -> Step {
        let next = self.state.script.lock().unwrap().pop_front();
        next.or_else(|| self.state.fallback.lock().unwrap().clone())
            .unwrap_or(Step::Stall)
    }
}

impl<B> tower_service::Service<Request<B>> for MockUpstream {
    type Response = Response<MockBody>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<MockBody>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        self.state.calls.fetch_add(1, Ordering::SeqCst);
        self.state.seen.lock().unwrap().push(SeenRequest {
            method: req.method().clone(),
            uri: req.uri().clone(),
            headers: req.headers().clone(),
            context: req.extensions().get::<backstop_core::Context>().cloned(),
        });
        let step = self.next_step();
        let guard = InFlight::new(Arc::clone(&self.state));
        Box::pin(async move {
            let guard = guard;
            let out = match step {
                Step::Respond {
                    status,
                    headers,
                    body,
                    delay,
                } => {
                    tokio::time::sleep(delay).await;
                    let mut res = Response::new(MockBody::full(body));
                    *res.status_mut() = status;
                    res.headers_mut().extend(headers);
                    Ok(res)
                }
                Step::Fail { delay } => {
                    tokio::time::sleep(delay).await;
                    Err(BoxError::from("connection refused (mock)"))
                }
                Step::Stall => std::future::pending().await,
            };
            guard.complete();
            out
        })
    }
}

struct InFlight {
    state: Arc<MockState>,
    done: bool,
}

impl InFlight {
    fn new(state: Arc<MockState>) -> Self {
        state.in_flight.fetch_add(1, Ordering::SeqCst);
        Self { state, done: false }
    }

    fn complete(mut self) {
        self.done = true;
        self.state.completed.fetch_add(1, Ordering::SeqCst);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.state.in_flight.fetch_sub(1, Ordering::SeqCst);
        if !self.done {
            self.state.cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// A response body: either whole, or fed from a [`BodySender`].
pub struct MockBody {
    kind: MockBodyKind,
}

enum MockBodyKind {
    Full(Option<Bytes>),
    Channel(mpsc::UnboundedReceiver<Result<Frame<Bytes>, BoxError>>),
}

impl MockBody {
    /// A body of one frame (none if `data` is empty).
    pub fn full(data: Bytes) -> Self {
        Self {
            kind: MockBodyKind::Full((!data.is_empty()).then_some(data)),
        }
    }
}

impl fmt::Debug for MockBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            MockBodyKind::Full(d) => f
                .debug_struct("MockBody::Full")
                .field("len", &d.as_ref().map_or(0, Bytes::len))
                .finish(),
            MockBodyKind::Channel(_) => f.debug_struct("MockBody::Channel").finish(),
        }
    }
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.kind {
            MockBodyKind::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            MockBodyKind::Channel(rx) => rx.poll_recv(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            MockBodyKind::Full(data) => data.is_none(),
            MockBodyKind::Channel(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            MockBodyKind::Full(data) => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            MockBodyKind::Channel(_) => SizeHint::default(),
        }
    }
}

/// Feeds a [`MockBody`] made by [`body_channel`]. Dropping it ends the body.
#[derive(Clone, Debug)]
pub struct BodySender {
    tx: mpsc::UnboundedSender<Result<Frame<Bytes>, BoxError>>,
}

impl BodySender {
    /// Sends a data frame; false if the body was dropped.
    pub fn send(&self, data: &'static str) -> bool {
        self.tx
            .send(Ok(Frame::data(Bytes::from_static(data.as_bytes()))))
            .is_ok()
    }

    /// Sends an error; false if the body was dropped.
    pub fn fail(&self, err: impl Into<BoxError>) -> bool {
        self.tx.send(Err(err.into())).is_ok()
    }

    /// Whether the body has been dropped.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// A body fed frame by frame from the test.
pub fn body_channel() -> (BodySender, MockBody) {
    let (tx, rx) = mpsc::unbounded_channel();
    (
        BodySender { tx },
        MockBody {
            kind: MockBodyKind::Channel(rx),
        },
    )
}

/// A generic no-op service for `u32` requests that answers at once; counts
/// calls. Handy for non-HTTP layer tests.
pub fn echo()
-> tower::util::ServiceFn<impl FnMut(u32) -> std::future::Ready<Result<u32, Infallible>> + Clone> {
    tower::service_fn(|n: u32| std::future::ready(Ok(n)))
}
