//! Observability of SLA expiries: a `tracing` warning always, and with the
//! `metrics` feature, `llm_sla_expired_total`.

/// Counts and logs one request failed by its SLA deadline.
pub(crate) fn sla_expired(metrics: &Metrics) {
    metrics.expired();
    backstop_core::context_event!(tracing::Level::WARN, "sla deadline exceeded");
}

#[cfg(feature = "metrics")]
mod imp {
    use std::fmt;

    use backstop_core::metrics as m;
    use metrics::Counter;

    /// The handle, resolved when the layer wraps a service.
    #[derive(Clone)]
    pub(crate) struct Metrics(Counter);

    impl Metrics {
        pub(crate) fn resolve() -> Self {
            Self(m::counter(m::SLA_EXPIRED_TOTAL))
        }

        pub(crate) fn expired(&self) {
            self.0.increment(1);
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

    impl Metrics {
        pub(crate) fn resolve() -> Self {
            Self
        }

        #[allow(clippy::unused_self)]
        pub(crate) fn expired(&self) {}
    }
}

pub(crate) use imp::Metrics;
