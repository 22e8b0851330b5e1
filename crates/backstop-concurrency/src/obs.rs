//! Observability of the permit: `tracing` debug events always, and with the
//! `metrics` feature `llm_semaphore_wait_seconds` (one sample per permit
//! acquired, zero waits included) and the `llm_concurrent_calls` gauge
//! (permits held now).

pub(crate) use backstop_core::debug_event;

#[cfg(feature = "metrics")]
mod imp {
    use std::fmt;

    use backstop_core::metrics as m;
    use metrics::{Gauge, Histogram};

    /// The handles, resolved when the layer is built, kept in the limit's
    /// shared semaphore (no reference count of their own).
    pub(crate) struct Metrics {
        wait: Histogram,
        in_flight: Gauge,
    }

    impl Metrics {
        pub(crate) fn resolve() -> Self {
            Self {
                wait: m::histogram(m::SEMAPHORE_WAIT_SECONDS),
                in_flight: m::gauge(m::CONCURRENT_CALLS),
            }
        }

        /// A permit was acquired after `waited` seconds.
        pub(crate) fn acquired(&self, waited: f64) {
            self.wait.record(waited);
        }

        /// A permit is now held.
        pub(crate) fn hold(&self) {
            self.in_flight.increment(1.0);
        }

        /// A held permit was released.
        pub(crate) fn unhold(&self) {
            self.in_flight.decrement(1.0);
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
    #[derive(Debug, Default)]
    pub(crate) struct Metrics;

    #[allow(clippy::unused_self)]
    impl Metrics {
        pub(crate) fn resolve() -> Self {
            Self
        }

        #[inline]
        pub(crate) fn acquired(&self, _waited: f64) {}

        #[inline]
        pub(crate) fn hold(&self) {}

        #[inline]
        pub(crate) fn unhold(&self) {}
    }
}

pub(crate) use imp::Metrics;
