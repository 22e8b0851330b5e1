//! [`AttemptTimeout`]: the service, and the deadline arithmetic shared with
//! the HTTP variant.

use std::task::{Context as TaskContext, Poll};

use backstop_core::{BoxError, Context, clock};
use tokio::time::{Duration, Instant};
use tower_service::Service;

use crate::future::ResponseFuture;
use crate::obs::{Metrics, Recording};

/// The service made by [`AttemptTimeoutLayer`](crate::AttemptTimeoutLayer).
///
/// Each call arms a timer at min(now + timeout, SLA deadline), publishes
/// now + timeout as the attempt deadline in the [`Context`] (which reads it
/// back capped by the SLA), and fails with
/// [`AttemptTimedOut`](backstop_core::AttemptTimedOut) or, when the SLA
/// deadline is the earlier one, [`SlaExpired`](backstop_core::SlaExpired).
/// The service holds no timer and no shared state, so the derived `Clone` is
/// correct.
///
/// See the [crate docs](crate) for an example.
#[derive(Clone, Debug)]
pub struct AttemptTimeout<S> {
    inner: S,
    timeout: Duration,
    metrics: Metrics,
}

impl<S> AttemptTimeout<S> {
    #[inline]
    pub(crate) fn new(inner: S, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            metrics: Metrics::resolve(),
        }
    }

    /// The timeout of each attempt (before the SLA cap).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

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

impl<S, Req> Service<Req> for AttemptTimeout<S>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let Some(start) = Start::now(self.timeout) else {
            return ResponseFuture::expired();
        };
        let recording = start.recording(&self.metrics);
        let fut = start.ctx.sync_scope_in_place(|| self.inner.call(req));
        ResponseFuture::new(start.ctx.scope(fut), start.armed, self.timeout, recording)
    }
}

/// Where a deadline comes from, and so which error its expiry raises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Bound {
    /// The instant the timer is armed at.
    pub(crate) at: Instant,
    /// The SLA deadline is at or before the layer's own: expiry is
    /// `SlaExpired`.
    pub(crate) by_sla: bool,
}

impl Bound {
    /// min(`own`, `sla`); the SLA wins ties (DESIGN: "at or before").
    #[inline]
    pub(crate) fn new(own: Instant, sla: Option<Instant>) -> Self {
        match sla {
            Some(sla) if sla <= own => Self {
                at: sla,
                by_sla: true,
            },
            _ => Self {
                at: own,
                by_sla: false,
            },
        }
    }
}

/// The start of one attempt: its instant, its context, and the bound armed
/// for the response.
#[derive(Debug)]
pub(crate) struct Start {
    pub(crate) now: Instant,
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) sla: Option<Instant>,
    pub(crate) ctx: Context,
    pub(crate) armed: Bound,
}

impl Start {
    /// Starts recording the attempt (and traces the call).
    #[inline]
    pub(crate) fn recording(&self, metrics: &Metrics) -> Recording {
        Recording::start(metrics, self.now, self.armed.at, self.armed.by_sla)
    }

    /// Reads the outer context and arms min(now + `timeout`, SLA deadline).
    /// `None` when that is already at or before now (only the SLA can do
    /// that: `timeout` is above zero): fail with the SLA error without
    /// calling the inner service.
    #[inline]
    pub(crate) fn now(timeout: Duration) -> Option<Self> {
        let now = clock::now();
        let outer = Context::current();
        let sla = outer.sla_deadline();
        // `timeout` is at most 24 h (checked at construction): no overflow.
        let own = now + timeout;
        let armed = Bound::new(own, sla);
        if armed.at <= now {
            return None;
        }
        Some(Self {
            now,
            sla,
            ctx: outer.with_attempt_deadline(own),
            armed,
        })
    }
}
