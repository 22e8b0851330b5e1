//! Serving the app: inbound hardening from `[server]` and graceful shutdown
//! as CONFIG.md describes.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::body::Body;
use http_body_util::Either;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::config::Config;
use crate::service::{AppFuture, HttpApp};
use crate::trace::RequestMeta;
use crate::watchdog::{Expired, Watch, Watchdog, WatchedBody};

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
        self.dog.head_arrived(!another_head_may_follow(&req));
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

pin_project_lite::pin_project! {
    /// A connection's task: the connection, its shutdown signal and its
    /// watchdog.
    ///
    /// `tokio::select!` over the three (with hyper-util's graceful wrapper)
    /// polled the signal and the watchdog at every wake-up of the
    /// connection, several per request. Here they have a waker of their
    /// own, and are polled only on the first poll and after that waker
    /// fired; the connection is polled every time.
    ///
    /// # Cancellation
    ///
    /// Dropping it drops the connection (closing the socket) and its
    /// receiver of the shutdown signal.
    struct Serving<C, S, E> {
        #[pin]
        conn: C,
        #[pin]
        stop: S,
        #[pin]
        expired: E,
        stopping: bool,
        side: Arc<Side>,
        side_waker: std::task::Waker,
        // Held until the connection ends: graceful shutdown waits for it.
        _stop: watch::Receiver<bool>,
    }
}

/// How a connection's task ended.
enum Ended<T> {
    /// The connection ended (after a graceful shutdown, perhaps).
    Done(T),
    /// The watchdog cut it.
    Expired(Expired),
}

/// The waker of [`Serving`]'s signal and watchdog: records that one of
/// them fired, then wakes the task.
struct Side {
    woken: AtomicBool,
    task: Mutex<Option<std::task::Waker>>,
}

impl std::task::Wake for Side {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        if let Some(task) = &*self.task.lock().unwrap_or_else(PoisonError::into_inner) {
            task.wake_by_ref();
        }
    }
}

impl<C, S, E> Serving<C, S, E> {
    fn new(conn: C, stop: S, expired: E, stop_rx: watch::Receiver<bool>) -> Self {
        let side = Arc::new(Side {
            // The first poll polls everything.
            woken: AtomicBool::new(true),
            task: Mutex::new(None),
        });
        Self {
            conn,
            stop,
            expired,
            stopping: false,
            side_waker: std::task::Waker::from(Arc::clone(&side)),
            side,
            _stop: stop_rx,
        }
    }
}

/// A connection as the workers serve it.
type Conn = auto::UpgradeableConnection<'static, TokioIo<TcpStream>, Connection, TokioExecutor>;

impl<S, E> Future for Serving<Conn, S, E>
where
    S: Future<Output = ()>,
    E: Future<Output = Expired>,
{
    type Output = Ended<<Conn as Future>::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let side_woken = this.side.woken.swap(false, Ordering::AcqRel);
        if side_woken {
            {
                let mut task = this
                    .side
                    .task
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                if !task.as_ref().is_some_and(|t| t.will_wake(cx.waker())) {
                    *task = Some(cx.waker().clone());
                }
            }
            let mut side = Context::from_waker(this.side_waker);
            if !*this.stopping && this.stop.poll(&mut side).is_ready() {
                *this.stopping = true;
                this.conn.as_mut().graceful_shutdown();
            }
        }
        // The connection first: a head that came in time but is not parsed
        // yet (its bytes and the deadline seen in one turn of the worker)
        // is read, and the watchdog then finds it arrived.
        if let Poll::Ready(out) = this.conn.poll(cx) {
            return Poll::Ready(Ended::Done(out));
        }
        if side_woken {
            let mut side = Context::from_waker(this.side_waker);
            if let Poll::Ready(which) = this.expired.poll(&mut side) {
                return Poll::Ready(Ended::Expired(which));
            }
        }
        Poll::Pending
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
    let workers = workers.max(1);
    let (balance, mut inboxes) = Balance::new(workers);
    let mut done = Vec::new();
    for i in 0..workers {
        let listener = listener.try_clone()?;
        let worker = Worker {
            app: app.http.clone(),
            handles: app.handles.clone(),
            config: config.clone(),
            slots: Arc::clone(&slots),
            stream_shutdown: stream_shutdown.clone(),
            signalled: signalled_rx.clone(),
            me: i,
            balance: Arc::clone(&balance),
            inbox: inboxes.remove(0),
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
    /// This worker's number in `balance`.
    me: usize,
    balance: Arc<Balance>,
    /// Connections other workers accepted for this one.
    inbox: mpsc::UnboundedReceiver<Handed>,
}

/// A connection accepted by one worker for another, with its
/// `server.max_connections` slot.
type Handed = (std::net::TcpStream, OwnedSemaphorePermit);

/// The workers' open connections, and the way to hand each one a connection.
///
/// The workers accept on one listening socket, and whichever is awake first
/// takes the connection: a burst (a load balancer opening its pool, a
/// benchmark starting) can land every connection on one worker and leave the
/// other cores idle for the connections' life. A worker that accepts a
/// connection while another has at least two fewer open hands it over, so
/// the counts stay within one of each other.
struct Balance {
    open: Vec<AtomicUsize>,
    inboxes: Vec<mpsc::UnboundedSender<Handed>>,
}

impl Balance {
    fn new(workers: usize) -> (Arc<Self>, Vec<mpsc::UnboundedReceiver<Handed>>) {
        let (inboxes, receivers) = (0..workers).map(|_| mpsc::unbounded_channel()).unzip();
        let open = (0..workers).map(|_| AtomicUsize::new(0)).collect();
        (Arc::new(Self { open, inboxes }), receivers)
    }

    /// The worker that serves a connection `me` just accepted: the one with
    /// the fewest open if it has at least two fewer than `me`, else `me`.
    /// Counts it as open there.
    fn pick(&self, me: usize) -> usize {
        let mine = self.open[me].load(Ordering::Relaxed);
        let (least, fewest) = self
            .open
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .enumerate()
            .min_by_key(|&(_, n)| n)
            .unwrap_or((me, mine));
        let to = if fewest + 2 <= mine { least } else { me };
        self.opened(to);
        to
    }

    /// Worker `of` serves a connection `pick` did not count there.
    fn opened(&self, of: usize) {
        self.open[of].fetch_add(1, Ordering::Relaxed);
    }

    /// A connection of worker `of` ended.
    fn closed(&self, of: usize) {
        self.open[of].fetch_sub(1, Ordering::Relaxed);
    }

    /// Hands `conn` to worker `to` (counted there by `pick`); gives it back
    /// if that worker no longer takes connections.
    #[allow(clippy::result_large_err)]
    fn hand(&self, to: usize, conn: Handed) -> Result<(), Handed> {
        self.inboxes[to].send(conn).map_err(|e| {
            self.closed(to);
            e.0
        })
    }
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
        let builder = connection_builder(config);
        // Graceful shutdown as hyper-util's `GracefulShutdown` does it (a
        // watch channel: every connection holds a receiver until it ends),
        // but polled by `Serving` only when the signal comes.
        let (stop_tx, stop_rx) = watch::channel(false);
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
                Some(handed) = self.inbox.recv() => {
                    self.serve_handed(&builder, handed, &stop_rx, stream_budget);
                    continue;
                }
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
                // The slot taken for an accept goes back; the handed
                // connection brought its own.
                Some(handed) = self.inbox.recv() => {
                    self.serve_handed(&builder, handed, &stop_rx, stream_budget);
                    continue;
                }
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
            let to = self.balance.pick(self.me);
            if to != self.me {
                // Off this worker's reactor, onto the other's.
                match stream.into_std() {
                    Ok(stream) => match self.balance.hand(to, (stream, permit)) {
                        Ok(()) => {}
                        Err(back) => {
                            self.balance.opened(self.me);
                            self.serve_handed(&builder, back, &stop_rx, stream_budget);
                        }
                    },
                    Err(e) => {
                        self.balance.closed(to);
                        tracing::debug!(error = %e, "could not hand a connection over");
                    }
                }
                continue;
            }
            self.spawn_connection(&builder, stream, permit, &stop_rx, stream_budget);
        }
        drop(listener);
        // Connections other workers handed over and this one has not
        // started yet are served like those it accepted (the stop below
        // reaches them too); a worker that hands one over from now on is
        // refused and serves it itself.
        self.inbox.close();
        while let Ok(handed) = self.inbox.try_recv() {
            self.serve_handed(&builder, handed, &stop_rx, stream_budget);
        }
        let t0 = signalled_at.unwrap_or_else(Instant::now);
        tracing::debug!("worker stopped accepting; waiting for in-flight requests");
        let deadline = t0 + config.shutdown.timeout;
        // Every connection's receiver is dropped when it ends.
        drop(stop_rx);
        let _ = stop_tx.send(true);
        let drain = stop_tx.closed();
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

    /// Serves a connection another worker accepted for this one (already
    /// counted as open here).
    fn serve_handed(
        &self,
        builder: &auto::Builder<TokioExecutor>,
        (stream, permit): Handed,
        stop_rx: &watch::Receiver<bool>,
        stream_budget: Duration,
    ) {
        match TcpStream::from_std(stream) {
            Ok(stream) => self.spawn_connection(builder, stream, permit, stop_rx, stream_budget),
            Err(e) => {
                self.balance.closed(self.me);
                tracing::debug!(error = %e, "cannot register a handed connection");
            }
        }
    }

    /// Serves one accepted connection on its own task, holding `permit`
    /// (a `server.max_connections` slot) until it ends; it was counted as
    /// open on this worker when it was accepted.
    fn spawn_connection(
        &self,
        builder: &auto::Builder<TokioExecutor>,
        stream: TcpStream,
        permit: OwnedSemaphorePermit,
        stop_rx: &watch::Receiver<bool>,
        stream_budget: Duration,
    ) {
        let config = &self.config;
        // Every response on this connection must be written by arrival +
        // SLA + maximum stream duration, even if the client stops
        // reading; every request head must come within the header
        // timeout of the connection or of its last response.
        let dog = Watchdog::with_head_timeout(config.server.header_read_timeout, Instant::now());
        let svc = Connection {
            app: self.app.clone(),
            dog: Arc::clone(&dog),
            budget: stream_budget,
        };
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), svc)
            .into_owned();
        let mut stop = stop_rx.clone();
        let serving = Serving::new(
            conn,
            async move {
                let _ = stop.wait_for(|stop| *stop).await;
            },
            async move { dog.expired().await },
            stop_rx.clone(),
        );
        let open = Open {
            balance: Arc::clone(&self.balance),
            me: self.me,
            _permit: permit,
        };
        tokio::spawn(async move {
            // Counted closed when the task ends, however it ends (a panic
            // while polling the connection included).
            let _open = open;
            match serving.await {
                Ended::Done(Ok(())) => {}
                Ended::Done(Err(e)) => {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                // Dropping the connection future closes the socket.
                Ended::Expired(Expired::Stream) => {
                    tracing::warn!("response past its maximum stream duration: connection cut");
                }
                Ended::Expired(Expired::Head) => {
                    tracing::debug!(
                        "no request head within server.header_read_timeout: connection closed"
                    );
                }
            }
        });
    }
}

/// A connection open on a worker: its `server.max_connections` slot, and
/// its count in the balance, both given back when it is dropped.
struct Open {
    balance: Arc<Balance>,
    me: usize,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.balance.closed(self.me);
    }
}

/// Whether the client may send another request head on this connection
/// after this request: HTTP/1.1 unless `Connection: close`, HTTP/1.0 only
/// with `Connection: keep-alive`; never on HTTP/2, whose streams are not
/// heads the watchdog times.
fn another_head_may_follow<B>(req: &http::Request<B>) -> bool {
    let token = |name: &str| {
        crate::upstream::connection_options(req.headers()).any(|t| t.eq_ignore_ascii_case(name))
    };
    match req.version() {
        http::Version::HTTP_11 => !token("close"),
        http::Version::HTTP_10 => token("keep-alive"),
        _ => false,
    }
}

/// How the workers serve a connection, HTTP/1 or HTTP/2.
fn connection_builder(config: &Config) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        // The connection's watchdog enforces `header_read_timeout` (see
        // `watchdog`): hyper's own would make, register and drop a timer
        // for every request head.
        .header_read_timeout(None)
        // hyper's smallest read buffer is 8 KiB.
        .max_buf_size(config.server.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(config.server.max_header_bytes).unwrap_or(u32::MAX));
    builder
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

#[cfg(test)]
mod tests {
    use super::*;

    fn open(b: &Balance) -> Vec<usize> {
        b.open.iter().map(|n| n.load(Ordering::Relaxed)).collect()
    }

    #[test]
    fn a_burst_on_one_worker_is_spread_within_one() {
        let (b, _inboxes) = Balance::new(2);
        // Worker 0 accepts ten in a row, as when it woke first for a burst.
        let picked: Vec<usize> = (0..10).map(|_| b.pick(0)).collect();
        assert_eq!(picked, [0, 0, 1, 0, 1, 0, 1, 0, 1, 0]);
        assert_eq!(open(&b), [6, 4]);
        // Worker 1's connections close: worker 0 hands the next ones over.
        for _ in 0..4 {
            b.closed(1);
        }
        assert_eq!((0..3).map(|_| b.pick(0)).collect::<Vec<_>>(), [1, 1, 1]);
        assert_eq!(open(&b), [6, 3]);
        // The less loaded worker keeps what it accepts; the other hands
        // over while it has two more.
        assert_eq!(b.pick(1), 1);
        assert_eq!(open(&b), [6, 4]);
        assert_eq!(b.pick(0), 1);
        assert_eq!(b.pick(0), 0);
        assert_eq!(open(&b), [7, 5]);
    }

    #[test]
    fn a_worker_that_stopped_taking_connections_gives_them_back() {
        let (b, mut inboxes) = Balance::new(2);
        for _ in 0..2 {
            b.pick(0);
        }
        assert_eq!(b.pick(0), 1);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let permit = Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap();
        // Worker 1's loop ended: it closed its inbox, as `serve` does.
        inboxes[1].close();
        assert!(b.hand(1, (stream, permit)).is_err());
        assert_eq!(open(&b), [2, 0], "not counted where it did not go");
    }

    #[test]
    fn the_last_head_is_told_by_version_and_connection_header() {
        use http::Version as V;
        let req = |version, connection: Option<&'static str>| {
            let mut b = http::Request::builder().version(version);
            if let Some(v) = connection {
                b = b.header(http::header::CONNECTION, v);
            }
            b.body(()).unwrap()
        };
        for (version, connection, more) in [
            (V::HTTP_11, None, true),
            (V::HTTP_11, Some("keep-alive"), true),
            (V::HTTP_11, Some("close"), false),
            (V::HTTP_11, Some("Upgrade, CLOSE"), false),
            (V::HTTP_11, Some("closed"), true),
            (V::HTTP_10, None, false),
            (V::HTTP_10, Some("Keep-Alive"), true),
            (V::HTTP_10, Some("te, keep-alive"), true),
            (V::HTTP_2, None, false),
        ] {
            assert_eq!(
                another_head_may_follow(&req(version, connection)),
                more,
                "{version:?} {connection:?}"
            );
        }
    }
}
