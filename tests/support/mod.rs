//! Shared support for the integration tests: small services and helpers used
//! by both test targets.

use std::convert::Infallible;

use backstop_core::{Attempt, Context, RequestId};
use http::Request;

/// What an upstream saw of the request context, from the task-local and
/// from the request extensions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    /// `Context::current()` values.
    pub ctx_sla: Option<tokio::time::Instant>,
    /// `Context::current().attempt_deadline()`.
    pub ctx_attempt: Option<tokio::time::Instant>,
    /// The SLA deadline of the `Context` in the extensions.
    pub ext_sla: Option<tokio::time::Instant>,
    /// Its attempt deadline.
    pub ext_attempt: Option<tokio::time::Instant>,
    /// Its attempt number.
    pub ext_attempt_no: Option<Attempt>,
    /// Its request id.
    pub ext_request_id: Option<RequestId>,
}

/// Reads what backstop published, both ways.
pub fn seen<B>(req: &Request<B>) -> Seen {
    let ctx = Context::current();
    let ext = req
        .extensions()
        .get::<Context>()
        .cloned()
        .unwrap_or_default();
    Seen {
        ctx_sla: ctx.sla_deadline(),
        ctx_attempt: ctx.attempt_deadline(),
        ext_sla: ext.sla_deadline(),
        ext_attempt: ext.attempt_deadline(),
        ext_attempt_no: ext.attempt(),
        ext_request_id: ext.request_id().cloned(),
    }
}

/// Asserts at compile time that a service mounts on an axum `Router`.
pub fn assert_mounts_on_axum<S>(_svc: &S)
where
    S: tower::Service<
            axum::extract::Request,
            Error = Infallible,
            Response: axum::response::IntoResponse,
            Future: Send + 'static,
        > + Clone
        + Send
        + Sync
        + 'static,
{
}

/// Milliseconds.
pub fn ms(n: u64) -> std::time::Duration {
    std::time::Duration::from_millis(n)
}

/// Seconds.
pub fn secs(n: u64) -> std::time::Duration {
    std::time::Duration::from_secs(n)
}
