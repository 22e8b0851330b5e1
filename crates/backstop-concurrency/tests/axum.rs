//! axum clones the route's service for every request: one layer value is
//! still one limit, and a streaming body keeps its permit.
#![cfg(feature = "http")]

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};

use axum::Router;
use axum::body::Body as AxumBody;
use backstop_concurrency::ConcurrencyLimitLayer;
use backstop_core::BoxError;
use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use tokio::sync::mpsc;
use tokio_test::{assert_pending, assert_ready_ok, task};
use tower::{ServiceBuilder, ServiceExt, service_fn};

struct ChanBody(mpsc::UnboundedReceiver<Bytes>);

impl Body for ChanBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

#[tokio::test(start_paused = true)]
async fn axum_routing_clones_share_one_limit() {
    let limit = ConcurrencyLimitLayer::new(1).unwrap().release_at_body_end();
    let handle = limit.handle();
    let (tx1, rx1) = mpsc::unbounded_channel();
    let (tx2, rx2) = mpsc::unbounded_channel();
    let bodies = Arc::new(Mutex::new(VecDeque::from([ChanBody(rx1), ChanBody(rx2)])));
    let upstream = service_fn(move |_req: Request<AxumBody>| {
        let body = bodies
            .lock()
            .unwrap()
            .pop_front()
            .expect("a body per request");
        async move { Ok::<_, Infallible>(Response::new(body)) }
    });
    let route = ServiceBuilder::new()
        .map_err(|e: BoxError| -> Infallible { panic!("no error expected: {e}") })
        .layer(limit)
        .service(upstream);
    let app = Router::new().route_service("/", route);

    let get = || Request::get("/").body(AxumBody::empty()).unwrap();
    let first = app.clone().oneshot(get()).await.unwrap();
    assert_eq!(handle.in_flight(), 1);
    let mut second = task::spawn(app.clone().oneshot(get()));
    assert_pending!(second.poll(), "the per-request clone waits: one limit");

    // The first response streams: it keeps the permit until its body ends.
    let mut body = first.into_body();
    tx1.send(Bytes::from_static(b"data: 1\n\n")).unwrap();
    assert!(body.frame().await.is_some());
    assert_pending!(second.poll());
    drop(tx1);
    assert!(body.frame().await.is_none());
    assert!(second.is_woken());
    let resp = assert_ready_ok!(second.poll());
    drop(tx2);
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(bytes.is_empty());
    assert_eq!(handle.in_flight(), 0);
}
