//! With the `metrics` feature, `llm_hooks_total{hook}`: the same four
//! counts as [`HookStats`](crate::HookStats), on the recorder installed
//! when the layer was built.

#[cfg(feature = "metrics")]
mod imp {
    use std::fmt;

    use backstop_core::metrics::{self as m, hook};
    use metrics::Counter;

    /// The handles, one per hook result.
    pub(crate) struct Metrics {
        pub(crate) inline: Counter,
        pub(crate) spawned: Counter,
        pub(crate) timed_out: Counter,
        pub(crate) skipped: Counter,
    }

    impl Metrics {
        pub(crate) fn resolve() -> Self {
            let count = |value| m::counter_with(m::HOOKS_TOTAL, m::HOOK, value);
            Self {
                inline: count(hook::INLINE),
                spawned: count(hook::SPAWNED),
                timed_out: count(hook::TIMED_OUT),
                skipped: count(hook::SKIPPED),
            }
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

    impl Metrics {
        pub(crate) fn resolve() -> Self {
            Self
        }
    }
}

pub(crate) use imp::Metrics;
