//! Observability of the permit: `tracing` debug events always, and with the
//! `metrics` feature `llm_semaphore_wait_seconds` (one sample per permit
//! acquired, zero waits included) and the `llm_concurrent_calls` gauge
//! (permits held now).

/// A debug event with the current context's request id and attempt.
macro_rules! debug_event {
    ($($field:tt)*) => {
        if ::tracing::enabled!(::tracing::Level::DEBUG) {
            let ctx = ::backstop_core::Context::try_current();
            let ctx = ctx.as_ref();
            ::tracing::debug!(
                request_id = ctx
                    .and_then(::backstop_core::Context::request_id)
                    .map(::tracing::field::display),
                attempt = ctx
                    .and_then(::backstop_core::Context::attempt)
                    .map(::backstop_core::Attempt::get),
                $($field)*
            );
        }
    };
}
pub(crate) use debug_event;

#[cfg(feature = "metrics")]
mod imp {
    use std::fmt;
    use std::sync::Arc;

    use backstop_core::metrics as m;
    use metrics::{Gauge, Histogram};

    struct Handles {
        wait: Histogram,
        in_flight: Gauge,
    }

    /// The handles, resolved when the layer is built.
    #[derive(Clone)]
    pub(crate) struct Metrics(Arc<Handles>);

    /// One held permit, counted in the gauge until dropped.
    pub(crate) struct Held(Metrics);

    impl Metrics {
        pub(crate) fn resolve() -> Self {
            Self(Arc::new(Handles {
                wait: m::histogram(m::SEMAPHORE_WAIT_SECONDS),
                in_flight: m::gauge(m::CONCURRENT_CALLS),
            }))
        }

        pub(crate) fn acquired(&self, waited: f64) {
            self.0.wait.record(waited);
        }

        pub(crate) fn hold(&self) -> Held {
            self.0.in_flight.increment(1.0);
            Held(self.clone())
        }
    }

    impl Drop for Held {
        fn drop(&mut self) {
            (self.0).0.in_flight.decrement(1.0);
        }
    }

    impl fmt::Debug for Metrics {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("Metrics")
        }
    }

    impl fmt::Debug for Held {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("Held")
        }
    }
}

#[cfg(not(feature = "metrics"))]
mod imp {
    /// Without the `metrics` feature: nothing.
    #[derive(Clone, Debug, Default)]
    pub(crate) struct Metrics;

    /// Without the `metrics` feature: nothing.
    #[derive(Debug)]
    pub(crate) struct Held;

    #[allow(clippy::unused_self)]
    impl Metrics {
        pub(crate) fn resolve() -> Self {
            Self
        }

        pub(crate) fn acquired(&self, _waited: f64) {}

        pub(crate) fn hold(&self) -> Held {
            Held
        }
    }
}

pub(crate) use imp::{Held, Metrics};
