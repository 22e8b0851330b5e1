//! Observability of the rate wait: `tracing` debug events always, and with
//! the `metrics` feature `llm_rate_limit_wait_seconds{limiter}`, one sample
//! per request admitted by this limiter, zero waits included.

use tokio::time::Duration;

pub(crate) use backstop_core::debug_event;

#[cfg(feature = "metrics")]
mod imp {
    use std::fmt;

    use backstop_core::metrics as m;
    use metrics::Histogram;

    /// The handle, resolved when the layer is built, labelled with the
    /// limiter's static name.
    #[derive(Clone)]
    pub(crate) struct Metrics(Histogram);

    impl Metrics {
        pub(crate) fn resolve(limiter: &'static str) -> Self {
            Self(m::histogram_with(
                m::RATE_LIMIT_WAIT_SECONDS,
                m::LIMITER,
                limiter,
            ))
        }

        pub(crate) fn admitted(&self, waited: f64) {
            self.0.record(waited);
        }
    }

    impl fmt::Debug for Metrics {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("Metrics")
        }
    }
}

#[cfg(not(feature = "metrics"))]
mod imp {
    /// Without the `metrics` feature: nothing.
    #[derive(Clone, Debug, Default)]
    pub(crate) struct Metrics;

    #[allow(clippy::unused_self)]
    impl Metrics {
        pub(crate) fn resolve(_limiter: &'static str) -> Self {
            Self
        }

        pub(crate) fn admitted(&self, _waited: f64) {}
    }
}

pub(crate) use imp::Metrics;

/// Per future: the handle, the limiter's name, and the wait decided.
#[derive(Debug)]
pub(crate) struct Wait {
    metrics: Metrics,
    limiter: &'static str,
    waited: Duration,
}

impl Wait {
    pub(crate) fn new(metrics: Metrics, limiter: &'static str) -> Self {
        Self {
            metrics,
            limiter,
            waited: Duration::ZERO,
        }
    }

    /// The store admitted after `after`: the future sleeps that long.
    pub(crate) fn sleeping(&mut self, after: Duration) {
        self.waited = after;
        debug_event!(
            limiter = self.limiter,
            wait_ms = after.as_millis() as u64,
            "waiting for a rate limit token"
        );
    }

    /// The limiter's name.
    pub(crate) fn limiter(&self) -> &'static str {
        self.limiter
    }

    /// The inner service was called: one sample.
    pub(crate) fn admitted(&self) {
        self.metrics.admitted(self.waited.as_secs_f64());
    }
}

/// Refused by `limiter`: the conforming instant lies past the deadline.
pub(crate) fn refused(limiter: &'static str, retry_after: Duration) {
    debug_event!(
        limiter = limiter,
        retry_after_ms = retry_after.as_millis() as u64,
        "rate limit wait would pass the admission deadline"
    );
}
