//! The HTTP side of the core (feature `http`).
//!
//! - [`ErrorResponseLayer`]: turns errors and upstream responses into what the
//!   client sees (DESIGN's table), and makes a stack `Infallible` so it mounts
//!   on an axum `Router`.
//! - [`SetRequestIdLayer::http`](crate::SetRequestIdLayer::http): the
//!   `X-Request-ID` rules.
//! - [`PropagateContextLayer`]: placed innermost, copies the [`Context`] into
//!   the request extensions for handlers and clients that read them.
//! - [`StatusClass`]: the one classifier of upstream statuses that the
//!   mapping, the retry policy and readiness share.
//!
//! # What the client sees
//!
//! | outcome | status | `error.type` | `x-should-retry` |
//! |---|---|---|---|
//! | upstream 2xx | upstream's | — | — |
//! | upstream 3xx, 4xx (409 and 429 included) | upstream's, body passed through | upstream's | `false` |
//! | upstream 5xx, 529 or 408 | 502 | `upstream_failure` | `false` |
//! | [`Overloaded`](crate::Overloaded) | 429 (or 503) + `Retry-After`, `retry-after-ms` | `overloaded` | absent |
//! | [`SlaExpired`](crate::SlaExpired) | 504 | `timeout` | `false` |
//! | [`AttemptTimedOut`](crate::AttemptTimedOut), connect and other upstream errors | 502 | `upstream_failure` | `false` |
//! | [`CostOverBurst`](crate::CostOverBurst) | 400 | `invalid_request` | `false` |
//!
//! Generated errors have the OpenAI shape
//! `{"error":{"type":"...","message":"...","request_id":"..."}}` and an
//! `X-Request-ID` header. The upstream's own `x-request-id` becomes
//! `x-upstream-request-id`.
//!
//! [`Context`]: crate::Context

mod propagate;
mod request_id;
mod response;
mod status;

pub use self::propagate::{PropagateContext, PropagateContextLayer};
pub use self::request_id::HttpHeader;
pub use self::response::{
    ErrorResponse, ErrorResponseLayer, error_body, json_error, retry_after_headers,
};
pub use self::status::StatusClass;

/// Futures returned by the HTTP services.
pub mod future {
    pub use super::request_id::ResponseFuture as RequestIdFuture;
    pub use super::response::ResponseFuture;
}

/// Bodies returned by the HTTP services.
pub mod body {
    pub use super::response::ResponseBody;
}

/// Header names used by the HTTP layers.
pub mod header {
    use http::HeaderName;

    /// `x-request-id`: ours on every request and response.
    pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
    /// `x-upstream-request-id`: the upstream's own request id, renamed.
    pub const X_UPSTREAM_REQUEST_ID: HeaderName = HeaderName::from_static("x-upstream-request-id");
    /// `x-should-retry`: whether a client may retry.
    pub const X_SHOULD_RETRY: HeaderName = HeaderName::from_static("x-should-retry");
    /// `retry-after-ms`: the exact wait in milliseconds.
    pub const RETRY_AFTER_MS: HeaderName = HeaderName::from_static("retry-after-ms");
    /// `x-request-timeout-ms`: a client's deadline, or ours sent upstream.
    pub const X_REQUEST_TIMEOUT_MS: HeaderName = HeaderName::from_static("x-request-timeout-ms");
}
