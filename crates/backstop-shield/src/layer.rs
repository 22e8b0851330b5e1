//! [`ShieldedOnCancelLayer`] and its builder.

use std::fmt;
use std::sync::Arc;

use backstop_core::{ConfigError, check_duration};
use tokio::time::Duration;
use tower_layer::Layer;

use crate::guard::{HookTracker, Shared};
use crate::hook::Hook;
use crate::service::ShieldedOnCancel;

/// Runs a [`Hook`] exactly once per request: on success, on error, and when
/// the caller drops the future.
///
/// One layer value owns one hook, one hook timeout, one tracker and one set
/// of counters, shared by every service it makes and their clones.
///
/// See the [crate docs](crate) for an example.
pub struct ShieldedOnCancelLayer<H> {
    pub(crate) shared: Arc<Shared<H>>,
}

/// Builds a [`ShieldedOnCancelLayer`] with settings other than the defaults.
///
/// Made by [`ShieldedOnCancelLayer::builder`].
pub struct ShieldedOnCancelBuilder<H> {
    hook: H,
    hook_timeout: Duration,
}

impl<H: Hook> ShieldedOnCancelLayer<H> {
    /// The default bound on a spawned hook: 5 s.
    pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(5);

    /// A layer running `hook`, with the default hook timeout (5 s).
    pub fn new(hook: H) -> Self {
        Self {
            shared: Arc::new(Shared::new(hook, Self::DEFAULT_HOOK_TIMEOUT)),
        }
    }

    /// A builder for a layer running `hook`.
    pub fn builder(hook: H) -> ShieldedOnCancelBuilder<H> {
        ShieldedOnCancelBuilder {
            hook,
            hook_timeout: Self::DEFAULT_HOOK_TIMEOUT,
        }
    }

    /// The handle the server uses to read the counters and drain pending
    /// hooks at shutdown. Shared with every service this layer makes.
    pub fn tracker(&self) -> HookTracker {
        HookTracker::new(&self.shared)
    }

    /// Switches to the HTTP variant, which decides the outcome when the
    /// response body ends. Shares this layer's hook, tracker and counters.
    #[cfg(feature = "http")]
    #[cfg_attr(docsrs, doc(cfg(feature = "http")))]
    pub fn for_http(self) -> HttpShieldedOnCancelLayer<H> {
        HttpShieldedOnCancelLayer {
            shared: self.shared,
        }
    }
}

impl<H: Hook> ShieldedOnCancelBuilder<H> {
    /// How long a hook may run once spawned (default 5 s, at most 24 h).
    #[must_use]
    pub fn hook_timeout(mut self, timeout: Duration) -> Self {
        self.hook_timeout = timeout;
        self
    }

    /// Checks the settings and builds the layer.
    ///
    /// Fails with a [`ConfigError`] naming `hook_timeout` if it is zero or
    /// longer than 24 h.
    pub fn build(self) -> Result<ShieldedOnCancelLayer<H>, ConfigError> {
        let hook_timeout = check_duration("hook_timeout", self.hook_timeout, false)?;
        Ok(ShieldedOnCancelLayer {
            shared: Arc::new(Shared::new(self.hook, hook_timeout)),
        })
    }
}

// A derived `Clone` would require `H: Clone`; the hook lives in the shared
// `Arc`, so clones share it (and the tracker and counters).
impl<H> Clone for ShieldedOnCancelLayer<H> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S, H: Hook> Layer<S> for ShieldedOnCancelLayer<H> {
    type Service = ShieldedOnCancel<S, H>;

    fn layer(&self, inner: S) -> Self::Service {
        ShieldedOnCancel::from_shared(inner, Arc::clone(&self.shared))
    }
}

impl<H> fmt::Debug for ShieldedOnCancelLayer<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShieldedOnCancelLayer")
            .field("hook", &std::any::type_name::<H>())
            .field("hook_timeout", &self.shared.core.hook_timeout)
            .finish()
    }
}

impl<H> fmt::Debug for ShieldedOnCancelBuilder<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShieldedOnCancelBuilder")
            .field("hook", &std::any::type_name::<H>())
            .field("hook_timeout", &self.hook_timeout)
            .finish()
    }
}

#[cfg(feature = "http")]
pub use self::http::HttpShieldedOnCancelLayer;

#[cfg(feature = "http")]
mod http {
    use super::{Arc, Hook, HookTracker, Layer, Shared, fmt};
    use crate::service::HttpShieldedOnCancel;

    /// The HTTP variant of [`ShieldedOnCancelLayer`](crate::ShieldedOnCancelLayer): the outcome is decided
    /// when the response body ends.
    ///
    /// Made by [`ShieldedOnCancelLayer::for_http`](crate::ShieldedOnCancelLayer::for_http). See the [crate
    /// docs](crate#http) for the outcome rules.
    pub struct HttpShieldedOnCancelLayer<H> {
        pub(crate) shared: Arc<Shared<H>>,
    }

    impl<H: Hook> HttpShieldedOnCancelLayer<H> {
        /// The handle the server uses to read the counters and drain pending
        /// hooks at shutdown.
        pub fn tracker(&self) -> HookTracker {
            HookTracker::new(&self.shared)
        }
    }

    impl<H> Clone for HttpShieldedOnCancelLayer<H> {
        fn clone(&self) -> Self {
            Self {
                shared: Arc::clone(&self.shared),
            }
        }
    }

    impl<S, H: Hook> Layer<S> for HttpShieldedOnCancelLayer<H> {
        type Service = HttpShieldedOnCancel<S, H>;

        fn layer(&self, inner: S) -> Self::Service {
            HttpShieldedOnCancel::from_shared(inner, Arc::clone(&self.shared))
        }
    }

    impl<H> fmt::Debug for HttpShieldedOnCancelLayer<H> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("HttpShieldedOnCancelLayer")
                .field("hook", &std::any::type_name::<H>())
                .field("hook_timeout", &self.shared.core.hook_timeout)
                .finish()
        }
    }
}
