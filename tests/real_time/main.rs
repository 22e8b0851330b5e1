//! Integration tests over real sockets, on real time (DESIGN contract 5):
//! generous bounds, no assertion tighter than about 100 ms.
#![allow(clippy::clone_on_ref_ptr)] // tests clone `Arc`s of concrete types

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use backstop::ServiceBuilderExt;
use backstop::attempt_timeout::AttemptTimeoutLayer;
use backstop::concurrency::{ConcurrencyHandle, ConcurrencyLimitLayer};
use backstop::http::{ErrorResponseLayer, PropagateContextLayer};
use backstop::shield::{Completion, Outcome, ShieldedOnCancelLayer, sync_hook};
use backstop::sla::SlaTimeoutLayer;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tower::{ServiceBuilder, service_fn};

const PATIENCE: Duration = Duration::from_secs(10);

/// A guard that counts how many upstream calls were dropped unfinished.
struct DropCount(Arc<AtomicUsize>);

impl Drop for DropCount {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

struct Server {
    addr: std::net::SocketAddr,
    permits: ConcurrencyHandle,
    outcomes: Arc<Mutex<Vec<Outcome>>>,
}

/// The stack in front of `upstream`, served on a real loopback socket.
async fn serve<U>(upstream: U) -> Server
where
    U: tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    U::Future: Send + 'static,
{
    let outcomes = Arc::new(Mutex::new(Vec::new()));
    let record = outcomes.clone();
    let conc = ConcurrencyLimitLayer::new(4).unwrap().release_at_body_end();
    let permits = conc.handle();
    let stack = ServiceBuilder::new()
        .layer(ErrorResponseLayer::new())
        .shielded_on_cancel(
            ShieldedOnCancelLayer::new(sync_hook(move |done: Completion| {
                record.lock().unwrap().push(done.outcome());
            }))
            .for_http(),
        )
        .sla_timeout(SlaTimeoutLayer::new(Duration::from_secs(60)).unwrap())
        .concurrency_limited(conc)
        .attempt_timeout(
            AttemptTimeoutLayer::new(Duration::from_secs(30))
                .unwrap()
                .for_http(),
        )
        .layer(PropagateContextLayer::new())
        .service(upstream);
    let app = Router::new().route_service("/v1/chat/completions", stack);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Server {
        addr,
        permits,
        outcomes,
    }
}

async fn connect(
    addr: std::net::SocketAddr,
) -> hyper::client::conn::http1::SendRequest<Empty<Bytes>> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

fn post() -> Request<Empty<Bytes>> {
    Request::post("/v1/chat/completions")
        .header("host", "test")
        .body(Empty::new())
        .unwrap()
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn sse_frames_arrive_before_the_end_and_hold_the_permit() {
    let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
    let rx = Arc::new(Mutex::new(Some(rx)));
    let upstream = service_fn(move |_req: Request<Body>| {
        let rx = rx.lock().unwrap().take().expect("one request");
        async move {
            let stream = futures_stream(rx);
            let res = Response::builder()
                .header("content-type", "text/event-stream")
                .body(Body::new(stream))
                .unwrap();
            Ok::<_, Infallible>(res)
        }
    });
    let server = serve(upstream).await;
    tx.send(Bytes::from_static(b"data: 1\n\n")).unwrap();
    let mut client = connect(server.addr).await;
    let res = tokio::time::timeout(PATIENCE, client.send_request(post()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(res.status(), 200);
    let mut body = res.into_body();
    let first = tokio::time::timeout(PATIENCE, body.frame()).await.unwrap();
    let first = first.unwrap().unwrap().into_data().unwrap();
    assert_eq!(
        &first[..],
        b"data: 1\n\n",
        "the frame arrived before the stream ended"
    );
    assert_eq!(
        server.permits.in_flight(),
        1,
        "a streaming response keeps its permit"
    );

    tx.send(Bytes::from_static(b"data: [DONE]\n\n")).unwrap();
    drop(tx);
    let rest = tokio::time::timeout(PATIENCE, body.collect())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&rest.to_bytes()[..], b"data: [DONE]\n\n");
    let permits = server.permits.clone();
    eventually("permit released at stream end", || permits.in_flight() == 0).await;
    let outcomes = server.outcomes.clone();
    eventually("success hook", || {
        outcomes.lock().unwrap().as_slice() == [Outcome::Success]
    })
    .await;
}

#[tokio::test]
async fn client_disconnect_cancels_upstream_and_runs_the_cancel_hook() {
    let dropped = Arc::new(AtomicUsize::new(0));
    let started = Arc::new(AtomicUsize::new(0));
    let (d, s) = (dropped.clone(), started.clone());
    let upstream = service_fn(move |_req: Request<Body>| {
        let guard = DropCount(d.clone());
        s.fetch_add(1, Ordering::SeqCst);
        async move {
            let _guard = guard;
            std::future::pending::<()>().await;
            Ok::<_, Infallible>(Response::new(Body::empty()))
        }
    });
    let server = serve(upstream).await;
    let mut client = connect(server.addr).await;
    let call = tokio::spawn(async move { client.send_request(post()).await });
    eventually("upstream called", || started.load(Ordering::SeqCst) == 1).await;
    assert_eq!(server.permits.in_flight(), 1);

    // The client goes away: hyper drops the service future.
    call.abort();
    eventually("upstream future dropped", || {
        dropped.load(Ordering::SeqCst) == 1
    })
    .await;
    let permits = server.permits.clone();
    eventually("permit released", || permits.in_flight() == 0).await;
    let outcomes = server.outcomes.clone();
    eventually("cancel hook ran", || {
        outcomes.lock().unwrap().as_slice() == [Outcome::Cancelled]
    })
    .await;
}

/// A body stream over a channel (axum's `Body::new` takes any `http_body::Body`).
fn futures_stream(rx: mpsc::UnboundedReceiver<Bytes>) -> ChanBody {
    ChanBody(rx)
}

struct ChanBody(mpsc::UnboundedReceiver<Bytes>);

impl http_body::Body for ChanBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|b| b.map(|b| Ok(http_body::Frame::data(b))))
    }
}
