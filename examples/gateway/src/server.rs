//! Serving the app: inbound hardening from `[server]` and graceful shutdown
//! as CONFIG.md describes.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::config::Config;
use crate::watchdog::{Watchdog, WatchedBody};

/// The router, with each response body watched by the connection's
/// [`Watchdog`] (deadline: arrival + `budget`).
fn watched_router(
    router: axum::Router,
    dog: Arc<Watchdog>,
    budget: Duration,
) -> impl tower::Service<
    http::Request<hyper::body::Incoming>,
    Response = axum::response::Response,
    Error = std::convert::Infallible,
    Future: Send + 'static,
> + Clone
+ Send
+ 'static {
    tower::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let watch = dog.watch(Instant::now() + budget);
        let fut = tower::ServiceExt::oneshot(router.clone(), req.map(axum::body::Body::new));
        async move {
            let res = fut.await?;
            Ok(res.map(|body| axum::body::Body::new(WatchedBody::new(body, watch))))
        }
    })
}

/// How long cut streams get to write their last event after the shutdown
/// timeout.
const FINAL_GRACE: Duration = Duration::from_millis(250);

/// The first shutdown signal: `/ready` turns 503 at once, and accepting goes
/// on for `drain_delay`. Returns when the signal came and when to stop
/// accepting.
fn start_draining(handles: &crate::app::Handles, config: &Config) -> (Instant, Instant) {
    let now = Instant::now();
    handles.readiness.set_draining();
    tracing::info!(
        drain_delay_ms = config.shutdown.drain_delay.as_millis() as u64,
        "shutdown signal: draining"
    );
    (now, now + config.shutdown.drain_delay)
}

/// Serves `app` on `listener` until `signal` resolves, then drains.
///
/// `stream_shutdown` is the token given to the app (it ends open SSE
/// streams). Returns whether everything drained (exit 0) or not (exit 1).
pub async fn serve(
    listener: TcpListener,
    app: App,
    config: &Config,
    stream_shutdown: CancellationToken,
    signal: impl Future<Output = ()>,
) -> bool {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.server.header_read_timeout)
        // hyper's smallest read buffer is 8 KiB.
        .max_buf_size(config.server.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(config.server.max_header_bytes).unwrap_or(u32::MAX));
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(config.server.max_connections));
    let handles = app.handles.clone();
    let router = app.router;
    let stream_budget = config.sla_timeout + config.attempt.max_stream_duration;

    tokio::pin!(signal);
    let mut stop_at: Option<Instant> = None;
    let mut signalled_at: Option<Instant> = None;
    loop {
        let permit = tokio::select! {
            biased;
            () = &mut signal, if signalled_at.is_none() => {
                let (now, stop) = start_draining(&handles, config);
                signalled_at = Some(now);
                stop_at = Some(stop);
                continue;
            }
            () = until(stop_at) => break,
            p = Arc::clone(&slots).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            biased;
            () = &mut signal, if signalled_at.is_none() => {
                let (now, stop) = start_draining(&handles, config);
                signalled_at = Some(now);
                stop_at = Some(stop);
                continue;
            }
            () = until(stop_at) => break,
            r = listener.accept() => r,
        };
        let (stream, _peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        // Every response on this connection must be written by arrival +
        // SLA + maximum stream duration, even if the client stops reading.
        let dog = Watchdog::new();
        let watched = watched_router(router.clone(), Arc::clone(&dog), stream_budget);
        let svc = TowerToHyperService::new(watched);
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), svc)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            tokio::select! {
                r = conn => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                }
                () = dog.expired() => {
                    // Dropping the connection future closes the socket.
                    tracing::warn!("response past its maximum stream duration: connection cut");
                }
            }
            drop(permit);
        });
    }
    drop(listener);
    let t0 = signalled_at.unwrap_or_else(Instant::now);
    tracing::info!("stopped accepting; waiting for in-flight requests");
    let deadline = t0 + config.shutdown.timeout;
    let drain = graceful.shutdown();
    tokio::pin!(drain);
    let mut drained = true;
    if tokio::time::timeout_at(deadline, &mut drain).await.is_err() {
        // Shutdown timeout: open SSE streams get the error event and count
        // as drained; anything else still open is cut.
        stream_shutdown.cancel();
        if tokio::time::timeout(FINAL_GRACE, &mut drain).await.is_err() {
            tracing::warn!("shutdown timeout: cutting the connections still open");
            drained = false;
        }
    }
    if !handles.hooks.drain(config.hook_timeout).await {
        tracing::warn!("cleanup hooks did not finish within shield.hook_timeout");
        drained = false;
    }
    tracing::info!(drained, "shutdown complete");
    drained
}

/// Sleeps until `at`, or forever.
async fn until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
