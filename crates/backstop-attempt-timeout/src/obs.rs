//! Observability of each attempt: `tracing` events always, metrics with the
//! `metrics` feature (`llm_calls_total{outcome}`,
//! `llm_call_duration_seconds`, `llm_call_timeout_total`).
//!
//! [`Metrics`] holds the handles, resolved once when the layer wraps a
//! service; [`Recording`] lives in each response future from the call to the
//! end of the attempt and counts a cancellation when dropped unfinished.

use tokio::time::Instant;

pub(crate) use backstop_core::debug_event;

/// How an attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// A response (below 400 with `http`).
    Success,
    /// With `http`: a response with a status of 400 or more.
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    HttpError(u16),
    /// The timer fired; `by_sla` when the SLA deadline armed it.
    Timeout { by_sla: bool },
    /// The inner service (or the body before its first frame) failed.
    Error,
}

impl Outcome {
    /// The outcome of a response with `status`.
    #[cfg(feature = "http")]
    pub(crate) fn of_status(status: u16) -> Self {
        if status >= 400 {
            Self::HttpError(status)
        } else {
            Self::Success
        }
    }
}

#[cfg(feature = "metrics")]
mod imp {
    use std::sync::Arc;

    use backstop_core::metrics as m;
    use metrics::{Counter, Histogram};

    use super::Outcome;

    struct Handles {
        success: Counter,
        http_error: Counter,
        timeout: Counter,
        connect_error: Counter,
        cancelled: Counter,
        duration: Histogram,
        call_timeouts: Counter,
    }

    /// The handles, resolved on the recorder installed when the layer wraps
    /// a service.
    #[derive(Clone)]
    pub(crate) struct Metrics(Arc<Handles>);

    impl std::fmt::Debug for Metrics {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Metrics")
        }
    }

    impl Metrics {
        pub(crate) fn resolve() -> Self {
            let calls = |outcome| m::counter_with(m::CALLS_TOTAL, m::OUTCOME, outcome);
            Self(Arc::new(Handles {
                success: calls(m::outcome::SUCCESS),
                http_error: calls(m::outcome::HTTP_ERROR),
                timeout: calls(m::outcome::TIMEOUT),
                connect_error: calls(m::outcome::CONNECT_ERROR),
                cancelled: calls(m::outcome::CANCELLED),
                duration: m::histogram(m::CALL_DURATION_SECONDS),
                call_timeouts: m::counter(m::CALL_TIMEOUT_TOTAL),
            }))
        }

        #[inline]
        pub(crate) fn record(&self, outcome: Option<Outcome>, seconds: f64) {
            let h = &*self.0;
            let counter = match outcome {
                Some(Outcome::Success) => &h.success,
                Some(Outcome::HttpError(_)) => &h.http_error,
                Some(Outcome::Timeout { by_sla }) => {
                    if !by_sla {
                        h.call_timeouts.increment(1);
                    }
                    &h.timeout
                }
                Some(Outcome::Error) => &h.connect_error,
                None => &h.cancelled,
            };
            counter.increment(1);
            h.duration.record(seconds);
        }
    }
}

#[cfg(not(feature = "metrics"))]
mod imp {
    use super::Outcome;

    /// Without the `metrics` feature: nothing.
    #[derive(Clone, Debug, Default)]
    pub(crate) struct Metrics;

    impl Metrics {
        pub(crate) fn resolve() -> Self {
            Self
        }

        #[allow(clippy::unused_self)]
        #[inline]
        pub(crate) fn record(&self, _outcome: Option<Outcome>, _seconds: f64) {}
    }
}

pub(crate) use imp::Metrics;

/// One attempt from its call to its end. Dropped before
/// [`finish`](Self::finish), it records the attempt as cancelled.
#[derive(Debug)]
pub(crate) struct Recording {
    metrics: Metrics,
    start: Instant,
    done: bool,
}

impl Recording {
    #[inline]
    pub(crate) fn start(
        metrics: &Metrics,
        start: Instant,
        deadline: Instant,
        by_sla: bool,
    ) -> Self {
        debug_event!(
            timeout_ms = deadline.saturating_duration_since(start).as_millis() as u64,
            capped_by_sla = by_sla,
            "calling upstream"
        );
        Self {
            metrics: metrics.clone(),
            start,
            done: false,
        }
    }

    /// Records how the attempt ended (once).
    #[inline]
    pub(crate) fn finish(&mut self, outcome: Outcome) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        self.end(Some(outcome));
    }

    #[inline]
    fn end(&self, outcome: Option<Outcome>) {
        // Without metrics, read the clock only for an enabled event.
        if !cfg!(feature = "metrics") && !tracing::enabled!(tracing::Level::DEBUG) {
            return;
        }
        let elapsed = Instant::now().saturating_duration_since(self.start);
        self.metrics.record(outcome, elapsed.as_secs_f64());
        let duration_ms = elapsed.as_millis() as u64;
        match outcome {
            Some(Outcome::Success) => debug_event!(duration_ms, "upstream attempt succeeded"),
            Some(Outcome::HttpError(status)) => {
                debug_event!(status, duration_ms, "upstream answered with an http error");
            }
            Some(Outcome::Timeout { by_sla }) => debug_event!(
                duration_ms,
                capped_by_sla = by_sla,
                "upstream attempt timed out"
            ),
            Some(Outcome::Error) => debug_event!(duration_ms, "upstream attempt failed"),
            None => debug_event!(duration_ms, "upstream attempt cancelled"),
        }
    }
}

impl Drop for Recording {
    #[inline]
    fn drop(&mut self) {
        if !self.done {
            self.end(None);
        }
    }
}
