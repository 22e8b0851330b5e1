//! Shared support for the integration tests: small services and helpers used
//! by both test targets.

use std::convert::Infallible;

use backstop_core::{AdmissionDeadline, Attempt, AttemptDeadline, Context, RequestId, SlaDeadline};
use http::Request;

/// What an upstream saw of the request context, from the task-local and
/// from the request extensions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    /// `Context::current()` values.
    pub ctx_sla: Option<tokio::time::Instant>,
    /// `Context::current().attempt_deadline()`.
    pub ctx_attempt: Option<tokio::time::Instant>,
    /// `SlaDeadline` in the extensions.
    pub ext_sla: Option<tokio::time::Instant>,
    /// `AttemptDeadline` in the extensions.
    pub ext_attempt: Option<tokio::time::Instant>,
    /// `AdmissionDeadline` in the extensions.
    pub ext_admission: Option<tokio::time::Instant>,
    /// `Attempt` in the extensions.
    pub ext_attempt_no: Option<Attempt>,
    /// `RequestId` in the extensions.
    pub ext_request_id: Option<RequestId>,
}

/// Reads what backstop published, both ways.
pub fn seen<B>(req: &Request<B>) -> Seen {
    let ctx = Context::current();
    let ext = req.extensions();
    Seen {
        ctx_sla: ctx.sla_deadline(),
        ctx_attempt: ctx.attempt_deadline(),
        ext_sla: ext.get::<SlaDeadline>().map(|d| d.0),
        ext_attempt: ext.get::<AttemptDeadline>().map(|d| d.0),
        ext_admission: ext.get::<AdmissionDeadline>().map(|d| d.0),
        ext_attempt_no: ext.get::<Attempt>().copied(),
        ext_request_id: ext.get::<RequestId>().cloned(),
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
