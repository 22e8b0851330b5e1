//! The axum side: `/health`, `/ready`, `/metrics`, and a Prometheus recorder
//! with backstop's histogram buckets.

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::{BuildError, PrometheusBuilder, PrometheusHandle};

use std::time::Duration;

use crate::{Readiness, Status};

/// The content type of the Prometheus text format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Clone, Debug)]
struct Ops {
    readiness: Readiness,
    prometheus: PrometheusHandle,
}

/// A router with the three operational routes, none of which needs a key:
///
/// - `GET /health`: always `200 {"status":"ok"}` while the process serves;
/// - `GET /ready`: `200 {"status":"ready"}`, or `503 {"status":"not
///   ready","reason":"draining|saturated|upstream_errors"}` from
///   [`Readiness::check`];
/// - `GET /metrics`: the Prometheus text of `prometheus` (see
///   [`install_prometheus`]).
///
/// Merge it into the application's router: `app.merge(routes(..))`.
pub fn routes(readiness: Readiness, prometheus: PrometheusHandle) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(render_metrics))
        .with_state(Ops {
            readiness,
            prometheus,
        })
}

async fn health() -> Response {
    json(StatusCode::OK, &serde_json::json!({ "status": "ok" }))
}

async fn ready(State(ops): State<Ops>) -> Response {
    ready_response(&ops.readiness)
}

/// The `/ready` answer for `readiness`, for applications that route it
/// themselves.
pub fn ready_response(readiness: &Readiness) -> Response {
    match readiness.check() {
        Status::Ready => json(StatusCode::OK, &serde_json::json!({ "status": "ready" })),
        Status::NotReady(reason) => json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({ "status": "not ready", "reason": reason.as_str() }),
        ),
    }
}

async fn render_metrics(State(ops): State<Ops>) -> Response {
    ops.prometheus.run_upkeep();
    (
        [(header::CONTENT_TYPE, PROMETHEUS_TEXT)],
        ops.prometheus.render(),
    )
        .into_response()
}

fn json(status: StatusCode, body: &serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// A Prometheus builder that renders every histogram as a histogram with
/// [`DURATION_BUCKETS`](backstop_core::metrics::DURATION_BUCKETS) (5 ms to
/// 60 s), not as a summary.
pub fn prometheus_builder() -> PrometheusBuilder {
    PrometheusBuilder::new()
        .set_buckets(&backstop_core::metrics::DURATION_BUCKETS)
        // Non-empty, finite: cannot fail.
        .unwrap_or_else(|_| PrometheusBuilder::new())
}

/// How often [`install_prometheus`]'s upkeep thread drains the recorder: the
/// exporter's own default for the recorders it installs itself.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Installs a [`prometheus_builder`] recorder as the global `metrics`
/// recorder, describes and registers every backstop family
/// ([`describe_all`](backstop_core::metrics::describe_all)), starts its
/// upkeep ([`spawn_upkeep`] every [`UPKEEP_INTERVAL`]), and returns the
/// handle for [`routes`].
///
/// The recorder keeps every histogram sample until upkeep drains it into
/// the buckets; without the upkeep thread a process nobody scrapes would
/// grow by about a hundred bytes per request.
///
/// Call it before building the layers: they resolve their metric handles
/// when built.
///
/// # Errors
///
/// [`BuildError`] when a global recorder is already installed.
pub fn install_prometheus() -> Result<PrometheusHandle, BuildError> {
    let handle = prometheus_builder().install_recorder()?;
    backstop_core::metrics::describe_all();
    spawn_upkeep(handle.clone(), UPKEEP_INTERVAL);
    Ok(handle)
}

/// Runs [`PrometheusHandle::run_upkeep`] every `every` on a thread of its
/// own (`backstop-metrics-upkeep`), for the life of the process: what a
/// recorder installed with `install_recorder` needs and does not start.
/// [`install_prometheus`] calls it; call it yourself for a recorder you
/// install from [`prometheus_builder`].
pub fn spawn_upkeep(handle: PrometheusHandle, every: Duration) {
    periodically("backstop-metrics-upkeep", every, move || {
        handle.run_upkeep();
    });
}

/// Runs `f` every `every` on a new detached thread named `name`. A thread
/// that cannot be started is logged; nothing else depends on it.
pub(crate) fn periodically(name: &str, every: Duration, f: impl Fn() + Send + 'static) {
    let spawned = std::thread::Builder::new()
        .name(name.to_owned())
        // Its own thread, not a runtime's: sleeping blocks nothing else.
        .spawn(move || {
            #[allow(clippy::disallowed_methods)]
            loop {
                std::thread::sleep(every);
                f();
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, thread = name, "cannot start a periodic thread");
    }
}
