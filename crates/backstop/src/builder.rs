//! [`ServiceBuilderExt`]: backstop's layers as `ServiceBuilder` methods.

use tower::ServiceBuilder;
use tower::layer::util::Stack;

/// Which layer types each [`ServiceBuilderExt`] method accepts.
///
/// Sealed: each trait is implemented for backstop's own layer types (the
/// generic one and, with `http`, the HTTP one), so a method cannot be handed
/// the wrong layer and the stack reads in DESIGN order.
pub mod slot {
    pub(crate) mod sealed {
        pub trait Sealed {}
    }

    macro_rules! slot {
        ($(#[$doc:meta])* $name:ident) => {
            $(#[$doc])*
            pub trait $name: sealed::Sealed {}
        };
    }

    slot!(
        /// `ShieldedOnCancelLayer` or `HttpShieldedOnCancelLayer`.
        Shield
    );
    slot!(
        /// `SlaTimeoutLayer`.
        Sla
    );
    slot!(
        /// `RetryLayer` or `HttpRetryLayer`.
        Retry
    );
    slot!(
        /// `QueueAdmissionLayer`.
        Admission
    );
    slot!(
        /// `RateLimitLayer`, any cost, key, store or reservation mode.
        RateLimit
    );
    slot!(
        /// `ConcurrencyLimitLayer`, either release mode.
        Concurrency
    );
    slot!(
        /// `AttemptTimeoutLayer` or `HttpAttemptTimeoutLayer`.
        AttemptTimeout
    );

    #[allow(unused_macros)] // unused when no layer feature is on
    macro_rules! fill {
        ($slot:ident: $($ty:ty $(where [$($g:tt)*])?),+ $(,)?) => {$(
            impl<$($($g)*)?> sealed::Sealed for $ty {}
            impl<$($($g)*)?> $slot for $ty {}
        )+};
    }

    #[cfg(feature = "shield")]
    fill!(Shield: backstop_shield::ShieldedOnCancelLayer<H> where [H]);
    #[cfg(all(feature = "shield", feature = "http"))]
    fill!(Shield: backstop_shield::HttpShieldedOnCancelLayer<H> where [H]);
    #[cfg(feature = "sla")]
    fill!(Sla: backstop_sla::SlaTimeoutLayer);
    #[cfg(feature = "retry")]
    fill!(Retry: backstop_retry::RetryLayer<P> where [P]);
    #[cfg(all(feature = "retry", feature = "http"))]
    fill!(Retry: backstop_retry::HttpRetryLayer);
    #[cfg(feature = "admission")]
    fill!(Admission: backstop_admission::QueueAdmissionLayer);
    #[cfg(feature = "rate-limit")]
    fill!(RateLimit: backstop_rate_limit::RateLimitLayer<C, K, St, A> where [C, K, St, A]);
    #[cfg(feature = "concurrency")]
    fill!(Concurrency: backstop_concurrency::ConcurrencyLimitLayer<R> where [R]);
    #[cfg(feature = "attempt-timeout")]
    fill!(AttemptTimeout: backstop_attempt_timeout::AttemptTimeoutLayer);
    #[cfg(all(feature = "attempt-timeout", feature = "http"))]
    fill!(AttemptTimeout: backstop_attempt_timeout::HttpAttemptTimeoutLayer);
}

mod sealed {
    pub trait Sealed<L> {}
    impl<L> Sealed<L> for tower::ServiceBuilder<L> {}
}

/// Adds backstop's layers to [`tower::ServiceBuilder`], one method per stack
/// position, so a stack reads top-down in the order of the
/// [ordering rules](crate#ordering):
///
/// ```
/// # #[cfg(all(feature = "sla", feature = "attempt-timeout"))]
/// # {
/// use std::time::Duration;
/// use backstop::ServiceBuilderExt;
/// use backstop::attempt_timeout::AttemptTimeoutLayer;
/// use backstop::sla::SlaTimeoutLayer;
/// use tower::ServiceBuilder;
///
/// # fn main() -> Result<(), backstop::ConfigError> {
/// let builder = ServiceBuilder::new()
///     .sla_timeout(SlaTimeoutLayer::new(Duration::from_secs(60))?)
///     .attempt_timeout(AttemptTimeoutLayer::new(Duration::from_secs(30))?);
/// # let _ = builder;
/// # Ok(())
/// # }
/// # }
/// ```
///
/// Each method takes the layer value, so the layer's own builder validates its
/// settings, and is only there when the layer's feature is on. The trait is
/// sealed.
///
/// The retry and limit methods are named `retrying`, `rate_limited` and
/// `concurrency_limited`, not `retry`, `rate_limit` and `concurrency_limit`:
/// `ServiceBuilder` has inherent methods of those names when tower's `retry`
/// or `limit` features are on, and an inherent method always wins over a
/// trait method, so the shorter names would stop compiling as soon as any
/// crate in the build turned those tower features on.
pub trait ServiceBuilderExt<L>: sealed::Sealed<L> + Sized {
    /// Adds `ShieldedOnCancel` (outermost).
    fn shielded_on_cancel<T: slot::Shield>(self, layer: T) -> ServiceBuilder<Stack<T, L>>;
    /// Adds `SlaTimeout`.
    fn sla_timeout<T: slot::Sla>(self, layer: T) -> ServiceBuilder<Stack<T, L>>;
    /// Adds `Retry`.
    fn retrying<T: slot::Retry>(self, layer: T) -> ServiceBuilder<Stack<T, L>>;
    /// Adds `QueueAdmission`.
    fn queue_admission<T: slot::Admission>(self, layer: T) -> ServiceBuilder<Stack<T, L>>;
    /// Adds a `RateLimit` (call it once per quota: RPM, TPM, per client).
    fn rate_limited<T: slot::RateLimit>(self, layer: T) -> ServiceBuilder<Stack<T, L>>;
    /// Adds `ConcurrencyLimit`.
    fn concurrency_limited<T: slot::Concurrency>(self, layer: T) -> ServiceBuilder<Stack<T, L>>;
    /// Adds `AttemptTimeout` (innermost of the resilience layers).
    fn attempt_timeout<T: slot::AttemptTimeout>(self, layer: T) -> ServiceBuilder<Stack<T, L>>;
}

impl<L> ServiceBuilderExt<L> for ServiceBuilder<L> {
    fn shielded_on_cancel<T: slot::Shield>(self, layer: T) -> ServiceBuilder<Stack<T, L>> {
        self.layer(layer)
    }
    fn sla_timeout<T: slot::Sla>(self, layer: T) -> ServiceBuilder<Stack<T, L>> {
        self.layer(layer)
    }
    fn retrying<T: slot::Retry>(self, layer: T) -> ServiceBuilder<Stack<T, L>> {
        self.layer(layer)
    }
    fn queue_admission<T: slot::Admission>(self, layer: T) -> ServiceBuilder<Stack<T, L>> {
        self.layer(layer)
    }
    fn rate_limited<T: slot::RateLimit>(self, layer: T) -> ServiceBuilder<Stack<T, L>> {
        self.layer(layer)
    }
    fn concurrency_limited<T: slot::Concurrency>(self, layer: T) -> ServiceBuilder<Stack<T, L>> {
        self.layer(layer)
    }
    fn attempt_timeout<T: slot::AttemptTimeout>(self, layer: T) -> ServiceBuilder<Stack<T, L>> {
        self.layer(layer)
    }
}
