//! Observability of admission: `tracing` debug events always, and with the
//! `metrics` feature `llm_queue_timeout_total` and `llm_queue_full_total`.

pub(crate) use backstop_core::debug_event;

#[cfg(feature = "metrics")]
mod imp {
    use std::fmt;

    use backstop_core::metrics as m;
    use metrics::Counter;

    /// The handles, resolved when the layer is built.
    pub(crate) struct Metrics {
        wait_timeouts: Counter,
        rejected: Counter,
    }

    impl Metrics {
        pub(crate) fn resolve() -> Self {
            Self {
                wait_timeouts: m::counter(m::QUEUE_TIMEOUT_TOTAL),
                rejected: m::counter(m::QUEUE_FULL_TOTAL),
            }
        }

        pub(crate) fn wait_timeout(&self) {
            self.wait_timeouts.increment(1);
        }

        pub(crate) fn rejected(&self) {
            self.rejected.increment(1);
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

        pub(crate) fn wait_timeout(&self) {}

        pub(crate) fn rejected(&self) {}
    }
}

pub(crate) use imp::Metrics;
