//! Serving the app: inbound hardening from `[server]` and graceful shutdown
//! as CONFIG.md describes.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::body::Body;
use http_body_util::Either;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::config::Config;
use crate::service::{AppFuture, HttpApp};
use crate::trace::RequestMeta;
use crate::watchdog::{Watch, Watchdog, WatchedBody};

/// The app as one connection serves it: each request's head arrival
/// recorded once (the trace, the SLA deadline and the watchdog all count from
/// it) and each response body watched by the connection's [`Watchdog`]
/// (deadline: arrival + `budget`). hyper's own `Service` takes `&self`, so
/// nothing is cloned per request here.
struct Connection {
    app: HttpApp,
    dog: Arc<Watchdog>,
    budget: Duration,
}

impl hyper::service::Service<http::Request<Incoming>> for Connection {
    type Response = http::Response<WatchedBody<Body>>;
    type Error = Infallible;
    type Future = Watched;

    fn call(&self, mut req: http::Request<Incoming>) -> Watched {
        let arrival = Instant::now();
        req.extensions_mut().insert(RequestMeta::new(arrival));
        let watch = self.dog.watch(arrival + self.budget);
        Watched {
            fut: self.app.call(req.map(Either::Left)),
            watch: Some(watch),
        }
    }
}

/// Future of [`Connection`]: the app's, its body then watched.
///
/// # Cancellation
///
/// Dropped before the head: the watch ends with it.
struct Watched {
    fut: AppFuture,
    watch: Option<Watch>,
}

impl Future for Watched {
    type Output = Result<http::Response<WatchedBody<Body>>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let res = ready!(self.fut.as_mut().poll(cx));
        let watch = self.watch.take();
        Poll::Ready(Ok(res.map(|body| WatchedBody::new(body, watch))))
    }
}

/// How long cut streams get to write their last event after the shutdown
/// timeout.
const FINAL_GRACE: Duration = Duration::from_millis(250);

/// The first shutdown signal: `/ready` turns 503 at once, and accepting goes
/// on for `drain_delay`. Returns when the signal came.
fn start_draining(handles: &crate::app::Handles, config: &Config) -> Instant {
    let now = Instant::now();
    handles.readiness.set_draining();
    tracing::info!(
        drain_delay_ms = config.shutdown.drain_delay.as_millis() as u64,
        "shutdown signal: draining"
    );
    now
}

/// How many serving threads [`serve`] starts: one per core the process may
/// use (cgroup quotas included), at least one.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

/// Serves `app` on `listener` until `signal` resolves, then drains.
///
/// Thread per core: `workers` threads each run a current-thread runtime and
/// accept on their own handle of the one listening socket (the kernel wakes
/// whichever is idle), so a connection, its requests, their timers and the
/// upstream connections they use (the per-thread pool) stay on one thread
/// and no request pays for a cross-thread wake-up. The limits are shared:
/// the stack's layers keep their state in `Arc`s and atomics that every
/// thread sees, and `server.max_connections` counts over all threads.
///
/// The caller's runtime only waits for the signal. `stream_shutdown` is the
/// token given to the app (it ends open SSE streams). Returns whether
/// everything drained (exit 0) or not (exit 1).
pub async fn serve(
    listener: std::net::TcpListener,
    workers: usize,
    app: App,
    config: &Config,
    stream_shutdown: CancellationToken,
    signal: impl Future<Output = ()>,
) -> std::io::Result<bool> {
    listener.set_nonblocking(true)?;
    let slots = Arc::new(Semaphore::new(config.server.max_connections));
    let (signalled_tx, signalled_rx) = watch::channel(None);
    let mut done = Vec::new();
    for i in 0..workers.max(1) {
        let listener = listener.try_clone()?;
        let worker = Worker {
            app: app.http.clone(),
            handles: app.handles.clone(),
            config: config.clone(),
            slots: Arc::clone(&slots),
            stream_shutdown: stream_shutdown.clone(),
            signalled: signalled_rx.clone(),
        };
        let (tx, rx) = oneshot::channel();
        std::thread::Builder::new()
            .name(format!("gateway-worker-{i}"))
            .spawn(move || {
                let _ = tx.send(worker.run(listener));
            })?;
        done.push(rx);
    }
    drop(listener);
    signal.await;
    let now = start_draining(&app.handles, config);
    let _ = signalled_tx.send(Some(now));
    let mut drained = true;
    for rx in done {
        // A worker that panicked drops its sender: not drained.
        drained &= rx.await.unwrap_or(false);
    }
    tracing::info!(drained, "shutdown complete");
    Ok(drained)
}

/// One serving thread: its runtime, its handle on the listener, and clones
/// of the shared app.
struct Worker {
    app: HttpApp,
    handles: crate::app::Handles,
    config: Config,
    slots: Arc<Semaphore>,
    stream_shutdown: CancellationToken,
    /// When the first shutdown signal came (set once, by [`serve`]).
    signalled: watch::Receiver<Option<Instant>>,
}

impl Worker {
    fn run(self, listener: std::net::TcpListener) -> bool {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "cannot start a worker runtime");
                return false;
            }
        };
        // This thread's log lines go out in batches (see `logwriter`).
        crate::logwriter::buffer_this_thread();
        let drained = runtime.block_on(async move {
            let flusher = tokio::spawn(crate::logwriter::flush_task());
            // Idle upstream connections past `pool_idle_timeout` are closed
            // even when no request comes to reuse them.
            let sweeper = tokio::spawn(async {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    crate::pool::sweep_this_thread();
                }
            });
            let drained = match TcpListener::from_std(listener) {
                Ok(listener) => self.serve(listener).await,
                Err(e) => {
                    tracing::error!(error = %e, "cannot register the listener");
                    false
                }
            };
            flusher.abort();
            sweeper.abort();
            drained
        });
        runtime.shutdown_timeout(Duration::from_millis(100));
        crate::logwriter::flush_this_thread();
        drained
    }

    async fn serve(mut self, listener: TcpListener) -> bool {
        let config = &self.config;
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
            .max_header_list_size(
                u32::try_from(config.server.max_header_bytes).unwrap_or(u32::MAX),
            );
        let graceful = GracefulShutdown::new();
        let stream_budget = config.sla_timeout + config.attempt.max_stream_duration;

        let mut stop_at: Option<Instant> = None;
        let mut signalled_at: Option<Instant> = None;
        loop {
            let permit = tokio::select! {
                biased;
                t0 = signalled(&mut self.signalled), if signalled_at.is_none() => {
                    (signalled_at, stop_at) = (Some(t0), Some(t0 + config.shutdown.drain_delay));
                    continue;
                }
                () = until(stop_at) => break,
                p = Arc::clone(&self.slots).acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let accepted = tokio::select! {
                biased;
                t0 = signalled(&mut self.signalled), if signalled_at.is_none() => {
                    (signalled_at, stop_at) = (Some(t0), Some(t0 + config.shutdown.drain_delay));
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
            let svc = Connection {
                app: self.app.clone(),
                dog: Arc::clone(&dog),
                budget: stream_budget,
            };
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
        tracing::debug!("worker stopped accepting; waiting for in-flight requests");
        let deadline = t0 + config.shutdown.timeout;
        let drain = graceful.shutdown();
        tokio::pin!(drain);
        let mut drained = true;
        if tokio::time::timeout_at(deadline, &mut drain).await.is_err() {
            // Shutdown timeout: open SSE streams get the error event and count
            // as drained; anything else still open is cut.
            self.stream_shutdown.cancel();
            if tokio::time::timeout(FINAL_GRACE, &mut drain).await.is_err() {
                tracing::warn!("shutdown timeout: cutting the connections still open");
                drained = false;
            }
        }
        // Cancel hooks run as tasks on the runtime of the request that spawned
        // them: every worker keeps its runtime turning until the tracker (shared
        // by all) is empty.
        if !self.handles.hooks.drain(config.hook_timeout).await {
            tracing::warn!("cleanup hooks did not finish within shield.hook_timeout");
            drained = false;
        }
        drained
    }
}

/// When the first shutdown signal came (now, if [`serve`] is gone).
async fn signalled(rx: &mut watch::Receiver<Option<Instant>>) -> Instant {
    match rx.wait_for(Option::is_some).await {
        Ok(at) => (*at).unwrap_or_else(Instant::now),
        Err(_) => Instant::now(),
    }
}

/// Sleeps until `at`, or forever.
async fn until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
