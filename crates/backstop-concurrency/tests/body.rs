//! Release at body end (feature `http`): a streaming body keeps its permit;
//! ending, failing or dropping it releases.
#![cfg(feature = "http")]

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};

use backstop_concurrency::{ConcurrencyLimit, ConcurrencyLimitLayer, body::ResponseBody};
use backstop_core::BoxError;
use bytes::Bytes;
use http::Response;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Empty, Full};
use static_assertions::assert_impl_all;
use tokio::sync::mpsc;
use tokio_test::{assert_pending, assert_ready, assert_ready_ok, task};
use tower::{Layer, Service, ServiceExt, service_fn};

assert_impl_all!(ResponseBody<Full<Bytes>>: Send, Sync, Unpin);

/// A body fed by a channel: the test decides when frames (or an error)
/// arrive and when it ends.
struct ChanBody {
    rx: mpsc::UnboundedReceiver<Result<Bytes, &'static str>>,
}

impl Body for ChanBody {
    type Data = Bytes;
    type Error = &'static str;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.rx
            .poll_recv(cx)
            .map(|item| item.map(|r| r.map(Frame::data)))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(42)
    }
}

/// A cloneable service answering each call with the next body.
fn serve(
    bodies: impl IntoIterator<Item = ChanBody>,
) -> impl Service<(), Response = Response<ChanBody>, Error = Infallible, Future: Send> + Clone + Send
{
    let bodies = Arc::new(Mutex::new(bodies.into_iter().collect::<VecDeque<_>>()));
    service_fn(move |()| {
        let b = bodies.lock().unwrap().pop_front().expect("a body per call");
        async move { Ok::<_, Infallible>(Response::new(b)) }
    })
}

fn chan() -> (mpsc::UnboundedSender<Result<Bytes, &'static str>>, ChanBody) {
    let (tx, rx) = mpsc::unbounded_channel();
    (tx, ChanBody { rx })
}

#[tokio::test(start_paused = true)]
async fn streaming_body_keeps_the_permit_until_it_ends() {
    let layer = ConcurrencyLimitLayer::new(1).unwrap().release_at_body_end();
    let handle = layer.handle();
    let (tx, body) = chan();
    let mut svc = layer.layer(serve([body]));
    let resp = svc.ready().await.unwrap().call(()).await.unwrap();
    assert_eq!(handle.in_flight(), 1, "head arrived, body still streaming");
    let mut body = resp.into_body();
    assert_eq!(body.size_hint().exact(), Some(42), "size_hint forwarded");
    assert!(!body.is_end_stream());

    tx.send(Ok(Bytes::from_static(b"data: 1\n\n"))).unwrap();
    let frame = body.frame().await.unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap(), "data: 1\n\n");
    assert_eq!(
        handle.in_flight(),
        1,
        "a frame that does not end the stream"
    );

    // A second request waits for the streaming one.
    let mut other = task::spawn(
        layer
            .layer(service_fn(|()| async {
                Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
            }))
            .oneshot(()),
    );
    assert_pending!(other.poll());

    drop(tx);
    assert!(body.frame().await.is_none());
    assert_eq!(handle.in_flight(), 1, "`other` got the permit at once");
    assert!(other.is_woken());
    let resp = assert_ready_ok!(other.poll());
    assert!(resp.body().is_end_stream());
    assert!(
        !resp.body().holds_permit(),
        "an empty body releases at once"
    );
    assert_eq!(handle.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn released_on_the_frame_that_ends_the_stream() {
    let layer = ConcurrencyLimitLayer::new(2).unwrap().release_at_body_end();
    let handle = layer.handle();
    let mut svc = layer.layer(service_fn(|()| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"all"))))
    }));
    let mut body = svc.call(()).await.unwrap().into_body();
    assert!(body.holds_permit());
    assert_eq!(body.size_hint().exact(), Some(3));
    let frame = body.frame().await.unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap(), "all");
    assert!(body.is_end_stream(), "is_end_stream forwarded");
    assert!(
        !body.holds_permit(),
        "released before anyone polls for `None`"
    );
    assert_eq!(handle.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn released_on_body_error_and_on_drop() {
    let layer = ConcurrencyLimitLayer::new(1).unwrap().release_at_body_end();
    let handle = layer.handle();
    let (tx1, b1) = chan();
    let (_tx2, b2) = chan();
    let svc = layer.layer(serve([b1, b2]));

    let mut body = svc.clone().oneshot(()).await.unwrap().into_body();
    tx1.send(Err("upstream reset")).unwrap();
    let err = body.frame().await.unwrap().unwrap_err();
    assert_eq!(err, "upstream reset");
    assert_eq!(handle.in_flight(), 0, "released on a body error");

    let body = svc.oneshot(()).await.unwrap().into_body();
    assert_eq!(handle.in_flight(), 1);
    drop(body);
    assert_eq!(handle.in_flight(), 0, "released on drop");
}

#[tokio::test(start_paused = true)]
async fn an_error_before_the_head_releases() {
    let layer = ConcurrencyLimitLayer::new(1).unwrap().release_at_body_end();
    let handle = layer.handle();
    let svc: ConcurrencyLimit<_, _> = layer.layer(service_fn(|()| async {
        Err::<Response<Empty<Bytes>>, BoxError>("connect refused".into())
    }));
    let err = svc.oneshot(()).await.unwrap_err();
    assert_eq!(err.to_string(), "connect refused");
    assert_eq!(handle.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn pending_frames_keep_the_permit() {
    let layer = ConcurrencyLimitLayer::new(1).unwrap().release_at_body_end();
    let handle = layer.handle();
    let (tx, b) = chan();
    let svc = layer.layer(serve([b]));
    let mut body = svc.oneshot(()).await.unwrap().into_body();
    let mut frame = task::spawn(std::future::poll_fn(|cx| {
        Pin::new(&mut body).poll_frame(cx)
    }));
    assert_pending!(frame.poll());
    assert_eq!(handle.in_flight(), 1);
    tx.send(Ok(Bytes::new())).unwrap();
    assert!(frame.is_woken());
    assert!(assert_ready!(frame.poll()).is_some());
    drop(frame);
    assert!(body.holds_permit());
    drop(body);
    assert_eq!(handle.in_flight(), 0);
}

/// A body that yields `left` frames, one every `every`.
struct TickBody {
    left: u32,
    every: tokio::time::Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl TickBody {
    fn new(left: u32, every_ms: u64) -> Self {
        let every = tokio::time::Duration::from_millis(every_ms);
        Self {
            left,
            every,
            sleep: Box::pin(tokio::time::sleep(every)),
        }
    }
}

impl Body for TickBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        std::task::ready!(self.sleep.as_mut().poll(cx));
        self.left -= 1;
        let next = tokio::time::Instant::now() + self.every;
        self.sleep.as_mut().reset(next);
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"x")))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }
}

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % n
    }
}

#[tokio::test(start_paused = true)]
async fn randomized_drops_of_futures_and_bodies_release_everything() {
    use std::future::Future;

    for seed in 0..300 {
        let mut rng = Rng(seed);
        let max = 1 + rng.below(3) as usize;
        let layer = ConcurrencyLimitLayer::new(max)
            .unwrap()
            .release_at_body_end();
        let handle = layer.handle();
        let svc = layer.layer(service_fn(|(frames, ms): (u32, u64)| async move {
            tokio::time::sleep(tokio::time::Duration::from_millis(ms)).await;
            Ok::<_, Infallible>(Response::new(TickBody::new(frames, ms + 1)))
        }));
        let mut futs = Vec::new();
        let mut bodies: Vec<ResponseBody<TickBody>> = Vec::new();
        for _ in 0..60 {
            match rng.below(7) {
                0 | 1 => {
                    let req = (rng.below(4) as u32, rng.below(10));
                    futs.push(task::spawn(svc.clone().oneshot(req)));
                }
                2 if !futs.is_empty() => {
                    let i = rng.below(futs.len() as u64) as usize;
                    if let Poll::Ready(res) = futs[i].poll() {
                        drop(futs.remove(i));
                        bodies.push(res.unwrap().into_body());
                    }
                }
                3 if !bodies.is_empty() => {
                    let i = rng.below(bodies.len() as u64) as usize;
                    let waker = futures_waker();
                    let mut cx = TaskContext::from_waker(&waker);
                    if let Poll::Ready(None) = Pin::new(&mut bodies[i]).poll_frame(&mut cx) {
                        assert!(!bodies[i].holds_permit(), "seed {seed}");
                        bodies.remove(i);
                    }
                }
                4 if !futs.is_empty() => {
                    let i = rng.below(futs.len() as u64) as usize;
                    drop(futs.remove(i));
                }
                5 if !bodies.is_empty() => {
                    let i = rng.below(bodies.len() as u64) as usize;
                    drop(bodies.remove(i));
                }
                _ => tokio::time::advance(tokio::time::Duration::from_millis(rng.below(8))).await,
            }
            assert!(handle.in_flight() <= max);
        }
        // Every live request and body finishes.
        let mut rounds = 0;
        while !(futs.is_empty() && bodies.is_empty()) {
            rounds += 1;
            assert!(rounds < 100_000, "seed {seed}: stuck");
            let mut i = 0;
            while i < futs.len() {
                if let Poll::Ready(res) = futs[i].poll() {
                    drop(futs.remove(i));
                    bodies.push(res.unwrap().into_body());
                } else {
                    i += 1;
                }
            }
            let mut i = 0;
            while i < bodies.len() {
                let frame = bodies[i].frame();
                let mut frame = std::pin::pin!(frame);
                let waker = futures_waker();
                let mut cx = TaskContext::from_waker(&waker);
                match frame.as_mut().poll(&mut cx) {
                    Poll::Ready(None) => {
                        bodies.remove(i);
                    }
                    _ => i += 1,
                }
            }
            tokio::time::advance(tokio::time::Duration::from_millis(1)).await;
        }
        assert_eq!(handle.available_permits(), max, "seed {seed}: permits lost");
    }
}

fn futures_waker() -> std::task::Waker {
    std::task::Waker::noop().clone()
}
