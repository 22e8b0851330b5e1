//! Helpers the layer crates share for their `tracing` events.

/// A `tracing` event at `level` carrying the current context's request id
/// and attempt number, built only when that level is enabled.
///
/// For the layer crates of this workspace (which depend on `tracing`); not
/// part of the public API.
#[doc(hidden)]
#[macro_export]
macro_rules! context_event {
    ($level:expr, $($field:tt)*) => {
        if ::tracing::enabled!($level) {
            let ctx = $crate::Context::try_current();
            let ctx = ctx.as_ref();
            ::tracing::event!(
                $level,
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

/// [`context_event!`] at debug level.
#[doc(hidden)]
#[macro_export]
macro_rules! debug_event {
    ($($field:tt)*) => {
        $crate::context_event!(::tracing::Level::DEBUG, $($field)*)
    };
}
