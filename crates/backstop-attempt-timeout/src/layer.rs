//! [`AttemptTimeoutLayer`]: configuration and `impl Layer`.

use backstop_core::{ConfigError, check_duration};
use tokio::time::Duration;
use tower_layer::Layer;

use crate::service::AttemptTimeout;

/// Bounds each attempt by min(now + `timeout`, SLA deadline) and publishes the
/// attempt deadline to the layers inside through the
/// [`Context`](backstop_core::Context).
///
/// [`Default`] gives DESIGN's 30 s. With the `http` feature,
/// [`for_http`](Self::for_http) changes the type to one that also bounds the
/// first body frame and the stream.
///
/// See the [crate docs](crate) for an example.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttemptTimeoutLayer {
    pub(crate) timeout: Duration,
}

impl AttemptTimeoutLayer {
    /// The default attempt timeout: 30 seconds.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

    /// A layer that gives each attempt `timeout`, capped by the SLA.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming `timeout` if it is zero or longer than 24 h
    /// ([`backstop_core::MAX_DURATION`]).
    pub fn new(timeout: Duration) -> Result<Self, ConfigError> {
        let timeout = check_duration("timeout", timeout, false)?;
        Ok(Self { timeout })
    }

    /// The timeout of each attempt (before the SLA cap).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

impl Default for AttemptTimeoutLayer {
    fn default() -> Self {
        Self {
            timeout: Self::DEFAULT_TIMEOUT,
        }
    }
}

impl<S> Layer<S> for AttemptTimeoutLayer {
    type Service = AttemptTimeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AttemptTimeout::new(inner, self.timeout)
    }
}
