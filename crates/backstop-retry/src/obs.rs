//! Observability of retries: `tracing` debug events always, and with the
//! `metrics` feature `llm_retries_total` and
//! `llm_retry_budget_exhausted_total`.

/// A debug event with the given context's request id.
macro_rules! debug_event {
    ($ctx:expr, $($field:tt)*) => {
        ::tracing::debug!(
            request_id = $ctx.request_id().map(::tracing::field::display),
            $($field)*
        )
    };
}
pub(crate) use debug_event;

#[cfg(feature = "metrics")]
mod imp {
    use std::fmt;

    use backstop_core::metrics as m;
    use metrics::Counter;

    /// The handles, resolved when the layer is built.
    pub(crate) struct Metrics {
        retries: Counter,
        budget_exhausted: Counter,
    }

    impl Metrics {
        pub(crate) fn resolve() -> Self {
            Self {
                retries: m::counter(m::RETRIES_TOTAL),
                budget_exhausted: m::counter(m::RETRY_BUDGET_EXHAUSTED_TOTAL),
            }
        }

        pub(crate) fn retry(&self) {
            self.retries.increment(1);
        }

        pub(crate) fn budget_exhausted(&self) {
            self.budget_exhausted.increment(1);
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

        pub(crate) fn retry(&self) {}

        pub(crate) fn budget_exhausted(&self) {}
    }
}

pub(crate) use imp::Metrics;
