//! A per-thread pool of HTTP/1 upstream connections for `http://` upstreams.
//!
//! [`http1_pool_upstream`] builds an [`Upstream`] that talks to one
//! `host:port` over plain HTTP/1.1, with hyper's connection-level senders
//! ([`SendRequest`]) instead of hyper-util's legacy `Client`. The legacy
//! client pays on every request for generality the gateway does not need
//! (a pool keyed by hashing behind a mutex, absolute-URI handling, a checkout
//! future, a task spawned to return each connection); this pool pops a
//! sender, sends, and pushes it back.
//!
//! # Design
//!
//! - **Idle lists are thread-local.** Each thread keeps, per pool instance,
//!   a LIFO list of idle senders in a `thread_local!` (no lock, no
//!   cross-thread traffic; per request one `Arc` clone and two clock reads). With one current-thread
//!   runtime per core a request, its connection and the connection's driver
//!   task all stay on one thread. On a multi-thread runtime it still works: a
//!   connection is simply returned to whichever thread finishes its response.
//! - **Checkout.** A request pops the most recently used sender (the warmest)
//!   that is not closed, not older than `idle_timeout`, and ready. Closed and
//!   expired entries met on the way are dropped; entries that are not ready
//!   yet (a body dropped a moment ago that hyper is still draining) are left
//!   in place and skipped. If none fits, a new connection is opened.
//! - **Return.** A connection is out of the list while its request is sent
//!   *and while its response body is read*: it goes back when the body ends
//!   (or at once for an empty body). HTTP/1 carries one exchange at a time,
//!   so a connection whose body is still streaming cannot serve anyone else;
//!   keeping it aside with the body (instead of pushing it back at the
//!   response head) keeps long SSE streams out of the idle list, so pops stay
//!   O(1) and busy streams never crowd out or evict idle connections. If the
//!   body is dropped early, the connection is pushed back anyway: hyper
//!   drains a short remainder (the connection becomes ready again) or closes
//!   it (the next pop drops it). A body that fails drops its connection.
//! - **Cap.** Each thread keeps at most `max_idle_per_thread` idle senders per
//!   pool; a push into a full list first drops expired or closed entries from
//!   the cold end, then the oldest one.
//! - **Retries.** Requests go out with [`SendRequest::try_send_request`]:
//!   when hyper hands the request back (the connection closed before a byte
//!   of it was written), it is sent again on another connection, at most
//!   three tries in all, the last on a fresh connection. A request that may
//!   have been written is never retried here (that is the retry layer's
//!   decision, which knows the budget and the method).
//! - **Cancellation.** Dropping the response future drops the sender it
//!   holds: hyper then closes that connection, and it never re-enters the
//!   pool. Nothing is spawned per request.
//! - **Connect.** `TcpStream::connect` (name resolution included) under
//!   `connect_timeout`, `TCP_NODELAY`, an HTTP/1 handshake with
//!   `writev(false)` (head and small body in one write), and the connection
//!   driver spawned on the current runtime. Failures are [`ConnectError`]s,
//!   whose message starts with "upstream connect"; like the legacy client's
//!   connect errors they are not backstop errors, so `classify` calls them
//!   upstream failures (502).
//!
//! # Limits
//!
//! - HTTP/1.1 over TCP only: no HTTP/2, no TLS. `https://` upstreams keep
//!   using [`hyper_upstream`](crate::upstream::hyper_upstream).
//! - One upstream per pool: the request's scheme and authority are ignored,
//!   every request goes to the configured authority, in origin form, with a
//!   fixed `Host`.
//! - No limit on connections per upstream (one per concurrent request, as
//!   with the legacy client); only idle ones are capped.
//! - No timer of its own: an idle connection is dropped by the next push or
//!   pop on its thread that meets it past `idle_timeout`, or by
//!   [`sweep_this_thread`], which the owner of the thread calls on its own
//!   schedule (the gateway's workers: once a second). A connection the
//!   upstream closes is cleaned up by its driver task at once (the socket is
//!   closed; only the small dead sender waits in the list).
//! - The lists of a dropped pool stay on a thread until a new pool is first
//!   used on that thread, the next sweep, or the thread's end.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::error::Error as StdError;
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use backstop::BoxError;
use bytes::Bytes;
use http::header::HOST;
use http::uri::{Authority, PathAndQuery};
use http::{HeaderValue, Request, Response, Uri};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{Builder, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tower::util::BoxCloneSyncService;

use crate::upstream::{Upstream, strip_hop_by_hop};

/// Tries per request when hyper hands an unwritten request back.
const MAX_TRIES: u32 = 3;

/// The settings of an [`http1_pool_upstream`].
#[derive(Clone, Debug)]
pub struct PoolConfig {
    /// The upstream's `host:port` (port 80 when absent); also the `Host`
    /// header of every request.
    pub authority: Authority,
    /// Longest wait for name resolution plus the TCP connect.
    pub connect_timeout: Duration,
    /// Idle connections older than this are not reused (and dropped when
    /// next met on their thread).
    pub idle_timeout: Duration,
    /// Most idle connections kept per thread (0: never keep any).
    pub max_idle_per_thread: usize,
}

/// Builds the upstream service for an `http://` base URL: HTTP/1.1 to
/// `cfg.authority` over a per-thread connection pool (see the
/// [module docs](self)).
///
/// Behaves like [`hyper_upstream`](crate::upstream::hyper_upstream) from
/// outside: requests may carry an absolute URI (only its path and query are
/// sent), `Host` is set to the authority, and the response's hop-by-hop
/// headers are stripped. Must be called from within a tokio runtime (the
/// connection drivers are spawned on the caller's runtime).
pub fn http1_pool_upstream(cfg: PoolConfig) -> Upstream {
    BoxCloneSyncService::new(Pool::new(cfg))
}

/// The same pool as [`http1_pool_upstream`], unboxed: a service whose clone
/// is one reference count and whose future is its one box. The gateway's
/// stack ends in it directly (see [`AnyUpstream`]).
///
/// [`AnyUpstream`]: crate::upstream::AnyUpstream
pub fn http1_pool(cfg: PoolConfig) -> Pool {
    Pool::new(cfg)
}

/// A connect failure (or timeout) towards the upstream.
#[derive(Debug)]
pub struct ConnectError {
    addr: Arc<str>,
    kind: ConnectErrorKind,
}

#[derive(Debug)]
enum ConnectErrorKind {
    Io(std::io::Error),
    TimedOut(Duration),
}

impl ConnectError {
    /// Whether the connect timed out (as opposed to failing outright).
    pub fn is_timeout(&self) -> bool {
        matches!(self.kind, ConnectErrorKind::TimedOut(_))
    }

    /// The address that was dialled (`host:port`).
    pub fn addr(&self) -> &str {
        &self.addr
    }
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ConnectErrorKind::Io(e) => write!(f, "upstream connect error to {}: {e}", self.addr),
            ConnectErrorKind::TimedOut(d) => {
                write!(f, "upstream connect to {} timed out after {d:?}", self.addr)
            }
        }
    }
}

impl StdError for ConnectError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match &self.kind {
            ConnectErrorKind::Io(e) => Some(e),
            ConnectErrorKind::TimedOut(_) => None,
        }
    }
}

/// What every clone of one pool shares (read-only).
#[derive(Debug)]
struct Shared {
    /// Keys this pool's lists in each thread's registry.
    id: u64,
    /// `host:port` to dial.
    connect_to: Arc<str>,
    host: HeaderValue,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
    builder: Builder,
}

/// The pool as a service (see [`http1_pool`]): a handle on the shared
/// settings; the connections live in thread-locals.
#[derive(Clone, Debug)]
pub struct Pool {
    shared: Arc<Shared>,
}

/// An idle (or soon idle) sender and when it was last returned.
struct Idle {
    sender: SendRequest<Body>,
    since: Instant,
}

/// One pool's idle list on one thread.
struct ThreadList {
    id: u64,
    owner: Weak<Shared>,
    idle: VecDeque<Idle>,
}

thread_local! {
    /// Per thread: one idle list per pool used on this thread.
    static LISTS: RefCell<Vec<ThreadList>> = const { RefCell::new(Vec::new()) };
}

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

impl Pool {
    fn new(cfg: PoolConfig) -> Self {
        let PoolConfig {
            authority,
            connect_timeout,
            idle_timeout,
            max_idle_per_thread,
        } = cfg;
        let connect_to: Arc<str> = match authority.port_u16() {
            Some(_) => Arc::from(authority.as_str()),
            None => Arc::from(format!("{}:80", authority.host())),
        };
        // An `Authority` holds only valid header characters.
        let host = HeaderValue::from_str(authority.as_str())
            .unwrap_or_else(|_| HeaderValue::from_static("localhost"));
        let mut builder = Builder::new();
        builder.writev(false);
        Self {
            shared: Arc::new(Shared {
                id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
                connect_to,
                host,
                connect_timeout,
                idle_timeout,
                max_idle: max_idle_per_thread,
                builder,
            }),
        }
    }

    /// Idle entries of this pool on the current thread (tests).
    #[cfg(test)]
    fn idle_len(&self) -> usize {
        with_list(&self.shared, |l| l.len()).unwrap_or(0)
    }
}

impl tower::Service<Request<Body>> for Pool {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        Box::pin(send(Arc::clone(&self.shared), req))
    }
}

/// Sends one request: origin-form URI, fixed `Host`, up to [`MAX_TRIES`]
/// tries while hyper hands the request back unwritten.
async fn send(shared: Arc<Shared>, req: Request<Body>) -> Result<Response<Body>, BoxError> {
    let (mut parts, body) = req.into_parts();
    parts.uri = origin_form(parts.uri);
    parts.headers.insert(HOST, shared.host.clone());
    let mut req = Request::from_parts(parts, body);
    let mut tries = 1;
    loop {
        let pooled = if tries < MAX_TRIES {
            pop(&shared)
        } else {
            None
        };
        let mut sender = match pooled {
            Some(s) => s,
            None => connect(&shared).await?,
        };
        // While this is pending, `sender` lives in this future: dropping the
        // future drops it, and hyper closes the connection.
        match sender.try_send_request(req).await {
            Ok(res) => return Ok(respond(res, sender, shared)),
            Err(mut e) => match e.take_message() {
                Some(back) if tries < MAX_TRIES => {
                    req = back;
                    tries += 1;
                }
                _ => return Err(e.into_error().into()),
            },
        }
    }
}

/// Keeps only the path and query (`/` when there is none).
fn origin_form(uri: Uri) -> Uri {
    let mut parts = uri.into_parts();
    if parts.scheme.is_none() && parts.authority.is_none() && parts.path_and_query.is_some() {
        return Uri::from_parts(parts).unwrap_or_else(|_| Uri::from_static("/"));
    }
    parts.scheme = None;
    parts.authority = None;
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(PathAndQuery::from_static("/"));
    }
    Uri::from_parts(parts).unwrap_or_else(|_| Uri::from_static("/"))
}

/// Strips the response's hop-by-hop headers and ties the sender to its body.
fn respond(
    res: Response<Incoming>,
    sender: SendRequest<Body>,
    shared: Arc<Shared>,
) -> Response<Body> {
    let (mut parts, body) = res.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let body = if http_body::Body::is_end_stream(&body) {
        push(&shared, sender);
        Body::new(body)
    } else {
        Body::new(ReturningBody {
            body,
            back: Some((sender, shared)),
        })
    };
    Response::from_parts(parts, body)
}

/// Opens, handshakes and drives a new connection.
async fn connect(shared: &Shared) -> Result<SendRequest<Body>, BoxError> {
    let err = |kind| ConnectError {
        addr: Arc::clone(&shared.connect_to),
        kind,
    };
    let stream = match tokio::time::timeout(
        shared.connect_timeout,
        TcpStream::connect(&*shared.connect_to),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(err(ConnectErrorKind::Io(e)).into()),
        Err(_) => return Err(err(ConnectErrorKind::TimedOut(shared.connect_timeout)).into()),
    };
    stream
        .set_nodelay(true)
        .map_err(|e| err(ConnectErrorKind::Io(e)))?;
    let (sender, conn) = shared.builder.handshake(TokioIo::new(stream)).await?;
    // The driver ends when the connection closes (upstream close, error, or
    // every sender dropped); its error, if any, reaches the request.
    tokio::spawn(conn);
    Ok(sender)
}

/// Runs `f` on this pool's idle list on the current thread; `None` when the
/// thread-local is gone (thread exit) or busy (never expected).
fn with_list<R>(shared: &Arc<Shared>, f: impl FnOnce(&mut VecDeque<Idle>) -> R) -> Option<R> {
    LISTS
        .try_with(|lists| {
            let mut lists = lists.try_borrow_mut().ok()?;
            let at = if let Some(i) = lists.iter().position(|l| l.id == shared.id) {
                i
            } else {
                // First use of this pool on this thread: forget dropped pools.
                lists.retain(|l| l.owner.strong_count() > 0);
                lists.push(ThreadList {
                    id: shared.id,
                    owner: Arc::downgrade(shared),
                    idle: VecDeque::new(),
                });
                lists.len() - 1
            };
            Some(f(&mut lists[at].idle))
        })
        .ok()
        .flatten()
}

/// Drops, on the current thread, every idle connection that its upstream
/// closed or that has been idle for its pool's `idle_timeout`, and the lists
/// of pools that are gone. Without it an idle connection is only dropped
/// when its thread next uses its pool; the gateway's workers call it once a
/// second.
pub fn sweep_this_thread() {
    let now = Instant::now();
    let _ = LISTS.try_with(|lists| {
        if let Ok(mut lists) = lists.try_borrow_mut() {
            lists.retain_mut(|list| {
                let Some(owner) = list.owner.upgrade() else {
                    return false;
                };
                list.idle.retain(|e| {
                    !e.sender.is_closed()
                        && now.saturating_duration_since(e.since) < owner.idle_timeout
                });
                true
            });
        }
    });
}

/// Pops the warmest usable sender: drops closed and expired entries on the
/// way, skips (keeps) those not ready yet.
fn pop(shared: &Arc<Shared>) -> Option<SendRequest<Body>> {
    let now = Instant::now();
    with_list(shared, |idle| {
        let mut i = idle.len();
        while i > 0 {
            i -= 1;
            let e = &idle[i];
            let stale = e.sender.is_closed()
                || now.saturating_duration_since(e.since) >= shared.idle_timeout;
            let ready = e.sender.is_ready();
            if stale {
                idle.remove(i);
            } else if ready {
                return idle.remove(i).map(|e| e.sender);
            }
        }
        None
    })
    .flatten()
}

/// Returns a sender to the current thread's list (dropped if closed, or if
/// the list is full of live, fresh connections, the oldest goes).
fn push(shared: &Arc<Shared>, sender: SendRequest<Body>) {
    if sender.is_closed() || shared.max_idle == 0 {
        return;
    }
    let now = Instant::now();
    // If the thread-local is gone, the sender is dropped with the closure.
    with_list(shared, move |idle| {
        while let Some(e) = idle.front() {
            if e.sender.is_closed() || now.saturating_duration_since(e.since) >= shared.idle_timeout
            {
                idle.pop_front();
            } else {
                break;
            }
        }
        if idle.len() >= shared.max_idle {
            idle.pop_front();
        }
        idle.push_back(Idle { sender, since: now });
    });
}

/// The response body; returns its connection to the pool at the end of the
/// body (or when dropped), drops it on a body error.
struct ReturningBody {
    body: Incoming,
    back: Option<(SendRequest<Body>, Arc<Shared>)>,
}

impl ReturningBody {
    fn release(&mut self) {
        if let Some((sender, shared)) = self.back.take() {
            push(&shared, sender);
        }
    }
}

impl http_body::Body for ReturningBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.release(),
            Poll::Ready(Some(Ok(_))) if this.body.is_end_stream() => this.release(),
            Poll::Ready(Some(Err(_))) => this.back = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for ReturningBody {
    fn drop(&mut self) {
        // Early drop: hyper drains a short rest or closes the connection;
        // either way the list copes (not ready: skipped; closed: dropped).
        self.release();
    }
}

impl fmt::Debug for ReturningBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReturningBody").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::net::SocketAddr;
    use std::sync::atomic::AtomicUsize;

    use http::{Method, StatusCode};
    use http_body_util::{BodyExt, Full};
    use hyper::service::service_fn;
    use tokio::net::TcpListener;
    use tower::ServiceExt;

    use super::*;

    /// A test upstream on 127.0.0.1 that counts accepted connections.
    struct TestServer {
        addr: SocketAddr,
        accepted: Arc<AtomicUsize>,
    }

    impl TestServer {
        fn accepted(&self) -> usize {
            self.accepted.load(Ordering::SeqCst)
        }
    }

    /// Yields one chunk, then never ends.
    struct OneThenPending(Option<Bytes>);

    impl http_body::Body for OneThenPending {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            match self.get_mut().0.take() {
                Some(b) => Poll::Ready(Some(Ok(Frame::data(b)))),
                None => Poll::Pending,
            }
        }
    }

    type TestBody = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

    fn full(b: impl Into<Bytes>) -> TestBody {
        Full::new(b.into()).boxed_unsync()
    }

    /// `/slow`: answers after 2 s; `/delay`: after 50 ms; `/stream`: one
    /// chunk then a body that never ends; `/big`: 1 MiB; anything else:
    /// echoes `METHOD path?query host body`.
    async fn handle(req: Request<Incoming>) -> Result<Response<TestBody>, Infallible> {
        let path = req.uri().path().to_owned();
        match path.as_str() {
            "/slow" => tokio::time::sleep(Duration::from_secs(2)).await,
            "/delay" => tokio::time::sleep(Duration::from_millis(50)).await,
            "/stream" => {
                let body = OneThenPending(Some(Bytes::from_static(b"first"))).boxed_unsync();
                return Ok(Response::new(body));
            }
            "/big" => return Ok(Response::new(full(vec![b'x'; 1 << 20]))),
            _ => {}
        }
        let head = format!(
            "{} {} {} ",
            req.method(),
            req.uri(),
            req.headers()
                .get(HOST)
                .map_or("-", |h| h.to_str().unwrap_or("?"))
        );
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let mut out = head.into_bytes();
        out.extend_from_slice(&body);
        let mut res = Response::new(full(out));
        res.headers_mut()
            .insert("keep-alive", HeaderValue::from_static("timeout=5"));
        Ok(res)
    }

    async fn server(keep_alive: bool) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(keep_alive)
                        .serve_connection(TokioIo::new(stream), service_fn(handle))
                        .await;
                });
            }
        });
        TestServer { addr, accepted }
    }

    /// Settings for a test server: 5 s to connect, 60 s idle.
    fn config_for(addr: SocketAddr, max_idle: usize) -> PoolConfig {
        PoolConfig {
            authority: addr.to_string().parse().unwrap(),
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            max_idle_per_thread: max_idle,
        }
    }

    fn pool_for(addr: SocketAddr, max_idle: usize) -> Pool {
        Pool::new(config_for(addr, max_idle))
    }

    fn request(addr: SocketAddr, method: Method, pq: &str, body: &str) -> Request<Body> {
        Request::builder()
            .method(method)
            .uri(format!("http://{addr}{pq}"))
            .body(Body::from(body.to_owned()))
            .unwrap()
    }

    /// `n` requests at once, each echoed back whole.
    async fn all_at_once(
        up: &Upstream,
        addr: SocketAddr,
        n: usize,
        method: Method,
        path: &'static str,
        body: &'static str,
    ) {
        let mut set = tokio::task::JoinSet::new();
        for i in 0..n {
            let up = up.clone();
            let method = method.clone();
            set.spawn(async move {
                let pq = format!("{path}?i={i}");
                let res = up
                    .oneshot(request(addr, method.clone(), &pq, body))
                    .await
                    .unwrap();
                assert_eq!(text(res).await, format!("{method} {pq} {addr} {body}"));
            });
        }
        while let Some(r) = set.join_next().await {
            r.unwrap();
        }
    }

    /// Three more requests each answer within 5 s (none is stuck behind a
    /// busy or cancelled connection).
    async fn three_more_get_through(up: &Upstream, addr: SocketAddr) {
        for i in 0..3 {
            let pq = format!("/after?i={i}");
            let res = tokio::time::timeout(
                Duration::from_secs(5),
                up.clone().oneshot(request(addr, Method::GET, &pq, "")),
            )
            .await
            .expect("not stuck")
            .unwrap();
            assert_eq!(text(res).await, format!("GET {pq} {addr} "));
        }
    }

    async fn text(res: Response<Body>) -> String {
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn sequential_requests_reuse_one_connection() {
        let srv = server(true).await;
        let pool = pool_for(srv.addr, 8);
        let up: Upstream = BoxCloneSyncService::new(pool.clone());
        for i in 0..100 {
            let method = if i % 2 == 0 {
                Method::POST
            } else {
                Method::GET
            };
            let pq = format!("/v1/echo/{i}?q={i}&x=y");
            let body = format!("body-{i}");
            let res = up
                .clone()
                .oneshot(request(srv.addr, method.clone(), &pq, &body))
                .await
                .unwrap();
            assert_eq!(res.status(), StatusCode::OK);
            assert!(
                res.headers().get("keep-alive").is_none(),
                "hop-by-hop stripped"
            );
            assert_eq!(
                text(res).await,
                format!("{method} {pq} {} {body}", srv.addr)
            );
        }
        assert_eq!(srv.accepted(), 1);
        assert_eq!(pool.idle_len(), 1);
    }

    #[tokio::test]
    async fn multi_chunk_bodies_read_to_the_end_reuse_the_connection() {
        let srv = server(true).await;
        let up = http1_pool_upstream(config_for(srv.addr, 8));
        for _ in 0..10 {
            let res = up
                .clone()
                .oneshot(request(srv.addr, Method::GET, "/big", ""))
                .await
                .unwrap();
            assert_eq!(text(res).await.len(), 1 << 20);
        }
        assert_eq!(srv.accepted(), 1);
    }

    #[tokio::test]
    async fn concurrent_requests_open_at_most_one_connection_each() {
        let srv = server(true).await;
        let pool = pool_for(srv.addr, 4);
        let up: Upstream = BoxCloneSyncService::new(pool.clone());
        for _round in 0..3 {
            all_at_once(&up, srv.addr, 16, Method::POST, "/delay", "c").await;
            assert!(pool.idle_len() <= 4, "idle {}", pool.idle_len());
        }
        // Round one opens up to 16; later rounds reuse the 4 kept idle.
        let accepted = srv.accepted();
        assert!(accepted <= 16 + 2 * 12, "accepted {accepted}");
        assert!(
            accepted >= 2,
            "the requests overlapped: accepted {accepted}"
        );
    }

    /// On a multi-thread runtime connections move between threads' lists;
    /// everything still works.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn works_on_a_multi_thread_runtime() {
        let srv = server(true).await;
        let up = http1_pool_upstream(config_for(srv.addr, 8));
        for _round in 0..5 {
            all_at_once(&up, srv.addr, 32, Method::PUT, "/mt", "m").await;
        }
        assert!(srv.accepted() <= 5 * 32);
    }

    #[tokio::test]
    async fn connection_close_responses_still_succeed() {
        let srv = server(false).await;
        let pool = pool_for(srv.addr, 8);
        let up: Upstream = BoxCloneSyncService::new(pool.clone());
        for i in 0..20 {
            let pq = format!("/close?i={i}");
            let res = up
                .clone()
                .oneshot(request(srv.addr, Method::GET, &pq, ""))
                .await
                .unwrap();
            assert!(res.headers().get(http::header::CONNECTION).is_none());
            assert_eq!(text(res).await, format!("GET {pq} {} ", srv.addr));
        }
        assert_eq!(srv.accepted(), 20);
    }

    /// A raw upstream that answers one request per connection, then closes
    /// the socket without saying so in the response. (The FIN is in the
    /// socket with the response, so hyper sees it first; a FIN racing a
    /// request is the retry test below.)
    #[tokio::test]
    async fn silently_closed_connections_are_skipped_or_retried() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut seen = Vec::new();
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await;
                    // Dropping `s` closes the connection.
                });
            }
        });
        let up = http1_pool_upstream(config_for(addr, 8));
        for _ in 0..20 {
            let res = up
                .clone()
                .oneshot(request(addr, Method::GET, "/", ""))
                .await
                .unwrap();
            assert_eq!(text(res).await, "ok");
        }
    }

    /// An idle connection the upstream closes before the pool notices: the
    /// request handed back unwritten goes out again on a new connection.
    #[tokio::test]
    async fn unwritten_request_on_a_dead_connection_is_retried() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        use tokio::sync::{mpsc, oneshot};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // The first connection waits for `close_rx`, then closes and reports.
        let (close_tx, close_rx) = oneshot::channel::<()>();
        let (closed_tx, mut closed_rx) = mpsc::channel::<()>(1);
        tokio::spawn(async move {
            let mut close_rx = Some(close_rx);
            while let Ok((mut s, _)) = listener.accept().await {
                let close_rx = close_rx.take();
                let closed_tx = closed_tx.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    loop {
                        let mut seen = Vec::new();
                        while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                            match s.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => seen.extend_from_slice(&buf[..n]),
                            }
                        }
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                            .await;
                        if let Some(rx) = close_rx {
                            let _ = rx.await;
                            drop(s);
                            let _ = closed_tx.send(()).await;
                            return;
                        }
                    }
                });
            }
        });
        let pool = pool_for(addr, 8);
        let up: Upstream = BoxCloneSyncService::new(pool.clone());
        let res = up
            .clone()
            .oneshot(request(addr, Method::GET, "/1", ""))
            .await
            .unwrap();
        assert_eq!(text(res).await, "ok");
        close_tx.send(()).unwrap();
        closed_rx.recv().await.unwrap();
        let looks_alive = with_list(&pool.shared, |l| {
            l.back()
                .is_some_and(|e| e.sender.is_ready() && !e.sender.is_closed())
        })
        .unwrap();
        let res = up
            .clone()
            .oneshot(request(addr, Method::POST, "/2", "again"))
            .await
            .expect("retried on a new connection");
        assert_eq!(text(res).await, "ok");
        assert!(looks_alive, "the dead connection was still in the list");
    }

    #[tokio::test]
    async fn connect_refused_is_a_quick_connect_error() {
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let up = http1_pool_upstream(config_for(addr, 8));
        let started = Instant::now();
        let err = up
            .oneshot(request(addr, Method::GET, "/", ""))
            .await
            .unwrap_err();
        assert!(Instant::now().saturating_duration_since(started) < Duration::from_secs(2));
        assert!(err.to_string().contains("connect"), "{err}");
        let ce = err.downcast_ref::<ConnectError>().expect("a ConnectError");
        assert!(!ce.is_timeout());
        assert_eq!(ce.addr(), addr.to_string());
        assert_eq!(
            backstop::classify(&*err),
            backstop::ErrorKind::UpstreamFailure
        );
    }

    #[tokio::test]
    async fn connect_timeout_is_a_connect_error() {
        // A listener that never accepts, its accept queue filled: Linux then
        // drops further SYNs, so a connect hangs. (Unroutable addresses are
        // not reliable: sandboxes may answer them.)
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(0).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut fillers = Vec::new();
        let mut full = false;
        for _ in 0..8 {
            match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                Ok(s) => fillers.push(s),
                Err(_) => {
                    full = true;
                    break;
                }
            }
        }
        if !full {
            // The platform completes connects regardless: nothing to test.
            return;
        }
        let up = http1_pool_upstream(PoolConfig {
            connect_timeout: Duration::from_millis(100),
            ..config_for(addr, 8)
        });
        let started = Instant::now();
        let err = up
            .oneshot(request(addr, Method::GET, "/v1/models", ""))
            .await
            .unwrap_err();
        let elapsed = Instant::now().saturating_duration_since(started);
        assert!(elapsed >= Duration::from_millis(100), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
        assert!(err.to_string().contains("connect"), "{err}");
        assert!(err.to_string().contains("timed out"), "{err}");
        let ce = err.downcast_ref::<ConnectError>().expect("a ConnectError");
        assert!(ce.is_timeout());
        drop((listener, fillers));
    }

    #[tokio::test]
    async fn body_dropped_mid_stream_leaves_the_pool_usable() {
        let srv = server(true).await;
        let pool = pool_for(srv.addr, 8);
        let up: Upstream = BoxCloneSyncService::new(pool.clone());
        let res = up
            .clone()
            .oneshot(request(srv.addr, Method::GET, "/stream", ""))
            .await
            .unwrap();
        let mut body = res.into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&first[..], b"first");
        // While the body streams, its connection is not in the list.
        assert_eq!(pool.idle_len(), 0);
        drop(body);
        three_more_get_through(&up, srv.addr).await;
        // The streaming connection could not be drained: closed, not reused.
        assert_eq!(srv.accepted(), 2);
    }

    #[tokio::test]
    async fn dropped_request_future_leaves_the_pool_usable() {
        let srv = server(true).await;
        let pool = pool_for(srv.addr, 8);
        let up: Upstream = BoxCloneSyncService::new(pool.clone());
        // Warm one connection, then cancel a request on it.
        let res = up
            .clone()
            .oneshot(request(srv.addr, Method::GET, "/warm", ""))
            .await
            .unwrap();
        text(res).await;
        assert_eq!(pool.idle_len(), 1);
        let cancelled = tokio::time::timeout(
            Duration::from_millis(50),
            up.clone()
                .oneshot(request(srv.addr, Method::GET, "/slow", "")),
        )
        .await;
        assert!(cancelled.is_err(), "the slow request was cut off");
        assert_eq!(pool.idle_len(), 0, "the cancelled connection is gone");
        three_more_get_through(&up, srv.addr).await;
        // The warm connection was cancelled mid-request, so one new one.
        assert_eq!(srv.accepted(), 2);
    }

    /// Real time (sockets), generous bound: idle for 1 s, checked after 1.5 s.
    #[tokio::test]
    async fn a_sweep_drops_expired_idle_connections() {
        let srv = server(true).await;
        let pool = Pool::new(PoolConfig {
            idle_timeout: Duration::from_secs(1),
            ..config_for(srv.addr, 8)
        });
        let up: Upstream = BoxCloneSyncService::new(pool.clone());
        let res = up
            .clone()
            .oneshot(request(srv.addr, Method::GET, "/warm", ""))
            .await
            .unwrap();
        text(res).await;
        assert_eq!(pool.idle_len(), 1);
        sweep_this_thread();
        assert_eq!(pool.idle_len(), 1, "fresh: kept");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        sweep_this_thread();
        assert_eq!(pool.idle_len(), 0, "expired: dropped without a new request");
    }

    #[tokio::test]
    async fn expired_or_uncapped_connections_are_not_kept() {
        let srv = server(true).await;
        let expired = Pool::new(PoolConfig {
            idle_timeout: Duration::ZERO,
            ..config_for(srv.addr, 8)
        });
        let none = pool_for(srv.addr, 0);
        for pool in [expired, none] {
            let before = srv.accepted();
            let up: Upstream = BoxCloneSyncService::new(pool.clone());
            for _ in 0..3 {
                let res = up
                    .clone()
                    .oneshot(request(srv.addr, Method::GET, "/x", ""))
                    .await
                    .unwrap();
                text(res).await;
            }
            assert_eq!(srv.accepted() - before, 3);
            assert!(pool.idle_len() <= 1);
        }
    }

    #[test]
    fn origin_form_keeps_path_and_query() {
        assert_eq!(
            origin_form("http://h:1/a/b?c=d".parse().unwrap()),
            "/a/b?c=d"
        );
        assert_eq!(origin_form("http://h:1".parse().unwrap()), "/");
        assert_eq!(origin_form("/p?q".parse().unwrap()), "/p?q");
    }

    #[test]
    fn authority_without_port_dials_80() {
        let p = Pool::new(PoolConfig {
            authority: "example.com".parse().unwrap(),
            connect_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            max_idle_per_thread: 1,
        });
        assert_eq!(&*p.shared.connect_to, "example.com:80");
        assert_eq!(p.shared.host, "example.com");
    }
}
