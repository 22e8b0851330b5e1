use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use tower_service::Service;

use super::header::{X_REQUEST_ID, X_UPSTREAM_REQUEST_ID};
use crate::context::{Context, RequestId, Scoped};
use crate::request_id::{Generate, SetRequestId, SetRequestIdLayer};

/// Marker for [`SetRequestIdLayer`]'s HTTP mode, made by
/// [`SetRequestIdLayer::http`].
///
/// Keeps an incoming `X-Request-ID` of 1 to 128 visible ASCII bytes, else
/// replaces it with a UUIDv7; the id goes into the header, the request
/// extensions ([`RequestId`]) and the [`Context`], and is echoed on the
/// response. An upstream's own `x-request-id` on the response moves to
/// `x-upstream-request-id`.
#[derive(Clone, Copy, Debug, Default)]
pub struct HttpHeader {
    _priv: (),
}

impl SetRequestIdLayer<Generate> {
    /// Switches to the HTTP mode: the `X-Request-ID` header rules.
    ///
    /// ```
    /// use backstop_core::{RequestId, SetRequestIdLayer};
    /// use http::{Request, Response};
    /// use tower::{service_fn, Layer, ServiceExt};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tower::BoxError> {
    /// let svc = SetRequestIdLayer::new().http().layer(service_fn(|req: Request<()>| async move {
    ///     let id = req.extensions().get::<RequestId>().cloned().unwrap();
    ///     Ok::<_, tower::BoxError>(Response::new(id.to_string()))
    /// }));
    /// let req = Request::builder().header("x-request-id", "abc-123").body(())?;
    /// let res = svc.oneshot(req).await?;
    /// assert_eq!(res.headers()["x-request-id"], "abc-123");
    /// assert_eq!(res.body(), "abc-123");
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn http(self) -> SetRequestIdLayer<HttpHeader> {
        SetRequestIdLayer { _mode: PhantomData }
    }
}

impl<S, B, ResB> Service<Request<B>> for SetRequestId<S, HttpHeader>
where
    S: Service<Request<B>, Response = Response<ResB>>,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let given = req
            .headers()
            .get(X_REQUEST_ID)
            .and_then(|v| RequestId::parse(v.as_bytes()));
        let (id, header) = match given {
            Some(id) => {
                // Parsed above, so the header holds exactly this id; drop any
                // duplicates.
                let header = req
                    .headers()
                    .get(X_REQUEST_ID)
                    .cloned()
                    .unwrap_or_else(|| HeaderValue::from_static(""));
                (id, header)
            }
            None => {
                let id = RequestId::generate();
                // The header shares the id's allocation (its clones are
                // reference counts); a UUID is always a valid header value.
                let header = HeaderValue::from_maybe_shared(Bytes::from_owner(IdBytes(id.clone())))
                    .unwrap_or_else(|_| HeaderValue::from_static(""));
                (id, header)
            }
        };
        req.headers_mut().insert(X_REQUEST_ID, header.clone());
        req.extensions_mut().insert(id.clone());
        let ctx = Context::current().with_request_id(id);
        let fut = ctx.sync_scope_in_place(|| self.inner.call(req));
        ResponseFuture {
            inner: ctx.scope(fut),
            header: Some(header),
        }
    }
}

/// A request id as the owner of a `Bytes`: the header value made from it
/// borrows the id's own allocation.
struct IdBytes(RequestId);

impl AsRef<[u8]> for IdBytes {
    fn as_ref(&self) -> &[u8] {
        self.0.as_str().as_bytes()
    }
}

pin_project! {
    /// Response future of [`SetRequestId`] in its HTTP mode: echoes the id.
    ///
    /// # Cancellation
    ///
    /// Holds only the inner future and the header value.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: Scoped<F>,
        header: Option<HeaderValue>,
    }
}

impl<F, ResB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResB>, E>>,
{
    type Output = Result<Response<ResB>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut res = std::task::ready!(this.inner.poll(cx))?;
        if let Some(ours) = this.header.take() {
            let headers = res.headers_mut();
            match headers.get(X_REQUEST_ID) {
                Some(theirs) if *theirs != ours && !headers.contains_key(X_UPSTREAM_REQUEST_ID) => {
                    let theirs = theirs.clone();
                    headers.insert(X_UPSTREAM_REQUEST_ID, theirs);
                }
                _ => {}
            }
            headers.insert(X_REQUEST_ID, ours);
        }
        Poll::Ready(Ok(res))
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestIdFuture")
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{Layer, ServiceExt, service_fn};

    async fn run(incoming: Option<&[u8]>) -> (String, Response<String>) {
        let svc =
            SetRequestIdLayer::new()
                .http()
                .layer(service_fn(|req: Request<()>| async move {
                    let from_ctx = Context::current().request_id().cloned().unwrap();
                    let from_ext = req.extensions().get::<RequestId>().cloned().unwrap();
                    let from_header = req.headers()[X_REQUEST_ID].to_str().unwrap().to_owned();
                    assert_eq!(from_ctx, from_ext);
                    assert_eq!(from_ctx.as_str(), from_header);
                    let mut res = Response::new(from_header.clone());
                    res.headers_mut()
                        .insert(X_REQUEST_ID, HeaderValue::from_static("vendor-9"));
                    Ok::<_, std::convert::Infallible>(res)
                }));
        let mut req = Request::new(());
        if let Some(v) = incoming {
            req.headers_mut()
                .insert(X_REQUEST_ID, HeaderValue::from_bytes(v).unwrap());
        }
        let res = svc.oneshot(req).await.unwrap();
        (res.body().clone(), res)
    }

    #[tokio::test]
    async fn keeps_a_valid_incoming_id() {
        let (seen, res) = run(Some(b"client-id-1")).await;
        assert_eq!(seen, "client-id-1");
        assert_eq!(res.headers()[X_REQUEST_ID], "client-id-1");
        assert_eq!(res.headers()[X_UPSTREAM_REQUEST_ID], "vendor-9");
    }

    #[tokio::test]
    async fn replaces_missing_or_invalid_ids() {
        let long = [b'x'; 129];
        for incoming in [
            None,
            Some(&b"has space"[..]),
            Some(&long[..]),
            Some(b"\xff"),
        ] {
            let (seen, res) = run(incoming).await;
            assert_eq!(seen.len(), 36, "{incoming:?}");
            assert_eq!(res.headers()[X_REQUEST_ID], seen.as_str());
        }
    }
}
