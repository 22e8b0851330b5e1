//! The upstream side: the pooled hyper client, and [`ForwardLayer`], the
//! innermost layer that applies the wire rules to each attempt.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use axum::body::Body;
use backstop::BoxError;
use backstop::Context;
use backstop_core::http::header::X_REQUEST_TIMEOUT_MS;
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, HeaderValue, Request, Response, Uri};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::time::Instant;
use tower::util::BoxCloneSyncService;
use tower::{Layer, Service};

use crate::trace::RequestMeta;

/// The upstream service the stack ends in: the hyper client, or a test
/// double.
pub type Upstream = BoxCloneSyncService<Request<Body>, Response<Body>, BoxError>;

/// Attempts that reached the upstream for one request (shared by the
/// request's retries through the extensions, in [`RequestMeta`]).
#[derive(Debug, Clone, Default)]
pub struct AttemptCounter(pub Arc<AtomicU32>);

impl AttemptCounter {
    /// Attempts so far.
    pub fn get(&self) -> u32 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Idle upstream connections kept per worker thread by the HTTP/1 pool: one
/// per request in flight on that thread at a high fan-in (a smaller cap
/// would close and reopen connections on every burst above it).
pub const MAX_IDLE_PER_THREAD: usize = 512;

/// The upstream client for `url`: an `http://` upstream gets the per-thread
/// pool of HTTP/1 connections ([`crate::pool`]: a request never leaves its
/// worker thread), an `https://` one hyper-util's pooled client
/// ([`hyper_upstream`]: TLS and HTTP/2). Call it inside a tokio runtime.
pub fn upstream_for(
    url: &str,
    connect_timeout: Duration,
    pool_idle_timeout: Duration,
) -> AnyUpstream {
    match url.parse::<Uri>() {
        Ok(uri) if uri.scheme_str() == Some("http") => match uri.authority() {
            Some(authority) => {
                AnyUpstream::Pool(crate::pool::http1_pool(crate::pool::PoolConfig {
                    authority: authority.clone(),
                    connect_timeout,
                    idle_timeout: pool_idle_timeout,
                    max_idle_per_thread: MAX_IDLE_PER_THREAD,
                }))
            }
            None => hyper_upstream(connect_timeout, pool_idle_timeout).into(),
        },
        _ => hyper_upstream(connect_timeout, pool_idle_timeout).into(),
    }
}

/// What [`build`](crate::build) puts at the end of the stack: the
/// per-thread HTTP/1 pool itself, or any boxed [`Upstream`] (hyper-util's
/// client, a test double). Unboxed, the pool costs a request one reference
/// count to clone and one box for its future; an [`Upstream`] costs a clone
/// of the box (an allocation) and a second box around its future.
#[derive(Clone, Debug)]
pub enum AnyUpstream {
    /// The per-thread pool ([`crate::pool`]).
    Pool(crate::pool::Pool),
    /// Anything else.
    Boxed(SharedUpstream),
}

impl From<Upstream> for AnyUpstream {
    fn from(upstream: Upstream) -> Self {
        Self::Boxed(SharedUpstream::new(upstream))
    }
}

impl From<crate::pool::Pool> for AnyUpstream {
    fn from(pool: crate::pool::Pool) -> Self {
        Self::Pool(pool)
    }
}

impl Service<Request<Body>> for AnyUpstream {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Response<Body>, BoxError>> + Send>,
    >;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), BoxError>> {
        match self {
            Self::Pool(pool) => pool.poll_ready(cx),
            Self::Boxed(up) => up.poll_ready(cx),
        }
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        match self {
            Self::Pool(pool) => pool.call(req),
            Self::Boxed(up) => Box::pin(up.call(req)),
        }
    }
}

/// The pooled client: `http://` and `https://` (rustls, ALPN h2 and
/// http/1.1), connect and idle-pool timeouts from the configuration.
pub fn hyper_upstream(connect_timeout: Duration, pool_idle_timeout: Duration) -> Upstream {
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(connect_timeout));
    http.set_nodelay(true);
    http.enforce_http(false);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_all_versions()
        .wrap_connector(http);
    let client: Client<_, Body> = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(pool_idle_timeout)
        .pool_timer(TokioTimer::new())
        .build(https);
    let svc = tower::service_fn(move |req: Request<Body>| {
        let fut = client.request(req);
        async move {
            let mut res = fut.await.map_err(BoxError::from)?;
            // Framing is hyper's business on each side; the rest passes back.
            strip_hop_by_hop(res.headers_mut());
            Ok::<_, BoxError>(res.map(Body::new))
        }
    });
    BoxCloneSyncService::new(svc)
}

/// An [`Upstream`] behind an `Arc`, so cloning it is one reference count.
///
/// The limiters call the inner stack on their own clone of it (DESIGN
/// contract 2), so the stack below a limiter is cloned once per limiter per
/// request; a boxed service's clone is an allocation. This clones the boxed
/// upstream once per call instead, and drives it with `oneshot`.
#[derive(Clone)]
pub struct SharedUpstream(Arc<Upstream>);

impl SharedUpstream {
    /// Shares `upstream`.
    pub fn new(upstream: Upstream) -> Self {
        Self(Arc::new(upstream))
    }
}

impl std::fmt::Debug for SharedUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedUpstream").finish_non_exhaustive()
    }
}

impl Service<Request<Body>> for SharedUpstream {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = tower::util::Oneshot<Upstream, Request<Body>>;

    fn poll_ready(&mut self, _cx: &mut TaskContext<'_>) -> Poll<Result<(), BoxError>> {
        // Readiness is the clone's, driven by `oneshot` in the call.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        tower::ServiceExt::oneshot((*self.0).clone(), req)
    }
}

/// Applies the request wire rules of CONFIG.md to each attempt and converts
/// the body for the [`Upstream`].
///
/// The settings sit behind one `Arc`: the limiters above clone the stack
/// below them once each per request and keep the clone in their futures, so
/// this service stays one pointer wide and one reference count to clone.
#[derive(Clone, Debug)]
pub struct ForwardLayer {
    cfg: Arc<ForwardConfig>,
}

#[derive(Debug)]
struct ForwardConfig {
    base: Box<str>,
    /// `base`, parsed once (`None` if it does not parse: then each request
    /// goes through [`join`](Self::join)).
    target: Option<Target>,
    api_key: Option<HeaderValue>,
    forward_client_auth: bool,
}

/// The parts of the upstream base URL each request's URI is built from.
#[derive(Clone, Debug)]
struct Target {
    scheme: Scheme,
    authority: Authority,
    /// The base's path without its trailing `/` (empty for none).
    prefix: Bytes,
}

impl ForwardLayer {
    /// `base`: the upstream URL (no trailing `/`); `api_key`: the upstream
    /// key; `forward_client_auth`: no upstream key and no `[[clients]]`.
    pub fn new(
        base: &str,
        api_key: Option<&str>,
        forward_client_auth: bool,
    ) -> Result<Self, String> {
        let api_key = match api_key {
            None => None,
            Some(k) => {
                let mut v = HeaderValue::from_str(&format!("Bearer {k}"))
                    .map_err(|_| "the upstream key is not a valid header value".to_owned())?;
                v.set_sensitive(true);
                Some(v)
            }
        };
        let base = base.trim_end_matches('/');
        let target = base.parse::<Uri>().ok().and_then(|uri| {
            let prefix = uri.path().trim_end_matches('/');
            Some(Target {
                prefix: Bytes::copy_from_slice(prefix.as_bytes()),
                scheme: uri.scheme()?.clone(),
                authority: uri.authority()?.clone(),
            })
        });
        Ok(Self {
            cfg: Arc::new(ForwardConfig {
                base: Box::from(base),
                target,
                api_key,
                forward_client_auth,
            }),
        })
    }

    /// The upstream URI for a request's path and query: what
    /// [`join`](Self::join) gives, parsed, without formatting and parsing
    /// the whole URI per request. The common case (no path prefix, or only
    /// the `/v1` the path starts with) reuses the request's path as is.
    pub fn uri_for(&self, path_and_query: &PathAndQuery) -> Option<Uri> {
        let Some(t) = &self.cfg.target else {
            return self.join(path_and_query.as_str()).parse().ok();
        };
        let pq = path_and_query.as_str();
        let prefix = match t.prefix.strip_suffix(b"/v1") {
            Some(rest) if pq.starts_with("/v1/") || pq == "/v1" => rest,
            _ => &t.prefix[..],
        };
        let path_and_query = if prefix.is_empty() {
            path_and_query.clone()
        } else {
            let mut joined = BytesMut::with_capacity(prefix.len() + pq.len());
            joined.extend_from_slice(prefix);
            joined.extend_from_slice(pq.as_bytes());
            PathAndQuery::from_maybe_shared(joined.freeze()).ok()?
        };
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(t.scheme.clone());
        parts.authority = Some(t.authority.clone());
        parts.path_and_query = Some(path_and_query);
        Uri::from_parts(parts).ok()
    }

    /// The upstream URI for a path and query, without doubling `/v1`.
    pub fn join(&self, path_and_query: &str) -> String {
        let base = &*self.cfg.base;
        if base.ends_with("/v1") && (path_and_query.starts_with("/v1/") || path_and_query == "/v1")
        {
            format!("{}{}", &base[..base.len() - 3], path_and_query)
        } else {
            format!("{base}{path_and_query}")
        }
    }
}

impl<S> Layer<S> for ForwardLayer {
    type Service = Forward<S>;
    fn layer(&self, inner: S) -> Forward<S> {
        Forward {
            inner,
            layer: self.clone(),
        }
    }
}

/// See [`ForwardLayer`].
#[derive(Clone, Debug)]
pub struct Forward<S> {
    inner: S,
    layer: ForwardLayer,
}

/// How many of [`ALWAYS_STRIPPED`] are hop-by-hop names (the rest are
/// `Upgrade` and `Host`).
const HOP_BY_HOP_LEN: usize = 8;

/// The names [`strip_hop_by_hop`] removes whatever `Connection` says: the
/// hop-by-hop ones, then `Upgrade` and `Host`.
const ALWAYS_STRIPPED: [HeaderName; HOP_BY_HOP_LEN + 2] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::HOST,
];

/// Removes hop-by-hop headers (and those named in `Connection`) and `Host`.
///
/// One pass over the message's names marks which of the listed ones it
/// carries (usually only `Host`), so a message pays one removal per header
/// it carries, not one hash lookup per name the rules list, and nothing is
/// cloned.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let mut present = 0u16;
    for name in headers.keys() {
        if let Some(i) = ALWAYS_STRIPPED.iter().position(|n| n == name) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    // `Connection` is the first listed name.
    if present & 1 != 0 {
        let named: Vec<HeaderName> = connection_options(headers)
            .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for (i, name) in ALWAYS_STRIPPED.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
}

/// The options the `Connection` header lists (RFC 9110, 7.6.1), trimmed,
/// in their own case; values that are not visible ASCII are passed over.
pub fn connection_options(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

impl<S, B> Service<Request<B>> for Forward<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = BoxError>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> S::Future {
        let (mut parts, body) = req.into_parts();
        if let Some(meta) = parts.extensions.get::<RequestMeta>() {
            meta.attempts.0.fetch_add(1, Ordering::Relaxed);
        }
        let h = &mut parts.headers;
        strip_hop_by_hop(h);
        match &self.layer.cfg.api_key {
            Some(k) => {
                h.insert(header::AUTHORIZATION, k.clone());
            }
            None if self.layer.cfg.forward_client_auth => {}
            None => {
                h.remove(header::AUTHORIZATION);
            }
        }
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
        // Milliseconds to this attempt's deadline, now, rounded down, >= 1.
        match Context::current().deadline() {
            Some(at) => {
                let ms = at
                    .saturating_duration_since(Instant::now())
                    .as_millis()
                    .max(1);
                h.insert(
                    X_REQUEST_TIMEOUT_MS,
                    HeaderValue::from(u64::try_from(ms).unwrap_or(u64::MAX)),
                );
            }
            None => {
                h.remove(X_REQUEST_TIMEOUT_MS);
            }
        }
        let uri = match parts.uri.path_and_query() {
            Some(pq) => self.layer.uri_for(pq),
            None => self.layer.uri_for(&PathAndQuery::from_static("/")),
        };
        if let Some(uri) = uri {
            parts.uri = uri;
        }
        parts.version = http::Version::HTTP_11;
        let body = Body::new(body.map_err(Into::<BoxError>::into));
        self.inner.call(Request::from_parts(parts, body))
    }
}

/// An upstream that always fails: used when no upstream can be built.
pub fn failing_upstream(message: &'static str) -> Upstream {
    BoxCloneSyncService::new(tower::service_fn(move |_req: Request<Body>| async move {
        Err::<Response<Body>, BoxError>(message.into())
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_never_doubles_v1() {
        let f = ForwardLayer::new("https://api.example.com/v1", None, false).unwrap();
        assert_eq!(
            f.join("/v1/chat/completions"),
            "https://api.example.com/v1/chat/completions"
        );
        let f = ForwardLayer::new("http://h:1/proxy/", None, false).unwrap();
        assert_eq!(f.join("/v1/models?x=1"), "http://h:1/proxy/v1/models?x=1");
    }

    #[test]
    fn uri_for_agrees_with_join() {
        let bases = [
            "http://127.0.0.1:8081/v1",
            "http://127.0.0.1:8081",
            "http://127.0.0.1:8081/",
            "https://api.example.com/v1/",
            "http://h:1/proxy",
            "http://h:1/proxy/v1",
            "http://h:1/a/b/",
            "http://user@h/v1x",
            "http://simulated-vendor",
        ];
        let paths = [
            "/",
            "/v1",
            "/v1/",
            "/v1/chat/completions",
            "/v1/models?x=1&y=%20",
            "/v10/x",
            "/v1x",
            "/other?q",
        ];
        for base in bases {
            let f = ForwardLayer::new(base, None, false).unwrap();
            assert!(f.cfg.target.is_some(), "{base}");
            for pq in paths {
                let want: Uri = f.join(pq).parse().unwrap();
                let got = f.uri_for(&pq.parse().unwrap()).unwrap();
                assert_eq!(got, want, "{base} + {pq}");
                assert_eq!(got.to_string(), want.to_string(), "{base} + {pq}");
            }
        }
    }

    #[test]
    fn hop_by_hop_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("x-foo, keep-alive"),
        );
        h.insert("x-foo", HeaderValue::from_static("1"));
        h.insert("x-bar", HeaderValue::from_static("2"));
        h.insert(header::HOST, HeaderValue::from_static("me"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-bar"));
    }

    #[test]
    fn every_listed_header_removed_and_others_kept() {
        let mut h = HeaderMap::new();
        for n in &ALWAYS_STRIPPED[..HOP_BY_HOP_LEN] {
            h.append(n, HeaderValue::from_static("a"));
            h.append(n, HeaderValue::from_static("b"));
        }
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::HOST, HeaderValue::from_static("me"));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("x"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["content-type", "x-keep"]);
        // Nothing to strip: untouched.
        let before = h.clone();
        strip_hop_by_hop(&mut h);
        assert_eq!(h, before);
    }
}
