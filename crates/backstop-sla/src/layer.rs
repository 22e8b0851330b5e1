//! [`SlaTimeoutLayer`]: configuration and `impl Layer`.

use backstop_core::{ConfigError, check_duration};
use tokio::time::Duration;
use tower_layer::Layer;

use crate::service::SlaTimeout;

/// Applies an end-to-end (SLA) deadline to every request and publishes it to
/// the layers inside through the [`Context`](backstop_core::Context).
///
/// The deadline of a request is min(outer SLA deadline, now + `timeout`),
/// taken when [`SlaTimeout::call`](tower_service::Service::call) runs.
///
/// [`Default`] gives DESIGN's 60 s.
///
/// See the [crate docs](crate) for an example.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlaTimeoutLayer {
    timeout: Duration,
}

impl SlaTimeoutLayer {
    /// The default SLA: 60 seconds.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

    /// A layer with an SLA of `timeout` per request.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming `timeout` if it is zero or longer than 24 h
    /// ([`backstop_core::MAX_DURATION`]).
    pub fn new(timeout: Duration) -> Result<Self, ConfigError> {
        let timeout = check_duration("timeout", timeout, false)?;
        Ok(Self { timeout })
    }

    /// The SLA applied to each request.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

impl Default for SlaTimeoutLayer {
    fn default() -> Self {
        Self {
            timeout: Self::DEFAULT_TIMEOUT,
        }
    }
}

impl<S> Layer<S> for SlaTimeoutLayer {
    type Service = SlaTimeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SlaTimeout::new(inner, self.timeout)
    }
}
