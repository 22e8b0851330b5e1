//! Helpers the layer crates share for their `tracing` events.

/// A `tracing` debug event carrying the current context's request id and
/// attempt number, built only when debug events are enabled.
///
/// For the layer crates of this workspace (which depend on `tracing`); not
/// part of the public API.
#[doc(hidden)]
#[macro_export]
macro_rules! debug_event {
    ($($field:tt)*) => {
        if ::tracing::enabled!(::tracing::Level::DEBUG) {
            let ctx = $crate::Context::try_current();
            let ctx = ctx.as_ref();
            ::tracing::debug!(
                request_id = ctx
                    .and_then($crate::Context::request_id)
                    .map(::tracing::field::display),
                attempt = ctx
                    .and_then($crate::Context::attempt)
                    .map($crate::Attempt::get),
                $($field)*
            );
        }
    };
}
