//! The semaphore behind the limit, through the service: a permit granted to a
//! waiter that is dropped before it takes it goes to the next waiter; a
//! waiter that times out in the middle of the queue is skipped; nobody barges
//! past a queued waiter; and under two worker threads the limit holds and no
//! permit is lost.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use backstop_concurrency::{ConcurrencyLimit, ConcurrencyLimitLayer};
use backstop_core::{Context, SlaExpired};
use tokio::time::{Duration, Instant, advance};
use tokio_test::{assert_pending, assert_ready_err, assert_ready_ok, task};
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_test::{assert_request_eq, mock};

type Mock = mock::Mock<&'static str, &'static str>;
type Handle = mock::Handle<&'static str, &'static str>;

fn limited(max: usize) -> (ConcurrencyLimit<Mock>, Handle, ConcurrencyLimitLayer) {
    let layer = ConcurrencyLimitLayer::new(max).unwrap();
    let (mock, handle) = mock::pair();
    (layer.layer(mock), handle, layer)
}

#[tokio::test(start_paused = true)]
async fn a_permit_granted_to_a_waiter_dropped_before_taking_it_goes_to_the_next() {
    let (svc, mut handle, layer) = limited(1);
    let mut holder = task::spawn(svc.clone().call("holder"));
    assert_pending!(holder.poll());
    let mut first = task::spawn(svc.clone().call("first"));
    let mut second = task::spawn(svc.clone().call("second"));
    assert_pending!(first.poll());
    assert_pending!(second.poll());

    assert_request_eq!(handle, "holder").send_response("ok");
    assert_ready_ok!(holder.poll());
    assert!(first.is_woken(), "granted to the first waiter");
    assert!(!second.is_woken());
    assert_eq!(layer.handle().available_permits(), 0, "granted, not free");

    // Dropped before it polled again: the permit moves on, nothing is lost.
    drop(first);
    assert!(second.is_woken());
    assert_pending!(second.poll());
    assert_request_eq!(handle, "second").send_response("ok");
    assert_ready_ok!(second.poll());
    assert_eq!(layer.handle().available_permits(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_waiter_timing_out_mid_queue_is_skipped_and_order_kept() {
    let (svc, mut handle, layer) = limited(1);
    let mut holder = task::spawn(svc.clone().call("holder"));
    assert_pending!(holder.poll());

    let mut a = task::spawn(svc.clone().call("a"));
    let soon = Instant::now() + Duration::from_secs(1);
    let mut b = task::spawn(
        Context::new()
            .with_sla_deadline(soon)
            .sync_scope(|| svc.clone().call("b")),
    );
    let mut c = task::spawn(svc.clone().call("c"));
    assert_pending!(a.poll());
    assert_pending!(b.poll());
    assert_pending!(c.poll());

    advance(Duration::from_secs(1)).await;
    let err = assert_ready_err!(b.poll());
    assert!(err.is::<SlaExpired>(), "{err}");
    drop(b);

    assert_request_eq!(handle, "holder").send_response("ok");
    assert_ready_ok!(holder.poll());
    assert!(a.is_woken());
    assert!(!c.is_woken(), "c waits for a");
    assert_pending!(a.poll());
    assert_request_eq!(handle, "a").send_response("ok");
    assert_ready_ok!(a.poll());
    assert!(c.is_woken(), "b's place was skipped");
    assert_pending!(c.poll());
    assert_request_eq!(handle, "c").send_response("ok");
    assert_ready_ok!(c.poll());
    assert_eq!(layer.handle().available_permits(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_newcomer_never_takes_a_permit_released_to_a_waiter() {
    let (svc, mut handle, layer) = limited(1);
    let mut holder = task::spawn(svc.clone().call("holder"));
    assert_pending!(holder.poll());
    let mut waiter = task::spawn(svc.clone().call("waiter"));
    assert_pending!(waiter.poll());

    assert_request_eq!(handle, "holder").send_response("ok");
    assert_ready_ok!(holder.poll());
    // Before the woken waiter runs, a newcomer's fast path must fail.
    let mut newcomer = task::spawn(svc.clone().call("newcomer"));
    assert_pending!(newcomer.poll());
    assert_eq!(layer.handle().in_flight(), 1);

    assert_pending!(waiter.poll());
    assert_request_eq!(handle, "waiter").send_response("ok");
    assert_ready_ok!(waiter.poll());
    assert!(newcomer.is_woken());
    assert_pending!(newcomer.poll());
    assert_request_eq!(handle, "newcomer").send_response("ok");
    assert_ready_ok!(newcomer.poll());
    assert_eq!(layer.handle().available_permits(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_fast_path_reopens_once_the_queue_drains() {
    let (svc, mut handle, layer) = limited(2);
    let mut a = task::spawn(svc.clone().call("a"));
    let mut b = task::spawn(svc.clone().call("b"));
    assert_pending!(a.poll());
    assert_pending!(b.poll());
    let mut w = task::spawn(svc.clone().call("w"));
    assert_pending!(w.poll());
    drop(w);
    assert_request_eq!(handle, "a").send_response("ok");
    assert_ready_ok!(a.poll());
    assert_eq!(layer.handle().available_permits(), 1, "nobody waits");
    let mut d = task::spawn(svc.clone().call("d"));
    assert_pending!(d.poll());
    assert_request_eq!(handle, "b").send_response("ok");
    assert_request_eq!(handle, "d").send_response("ok");
    assert_ready_ok!(b.poll());
    assert_ready_ok!(d.poll());
    assert_eq!(layer.handle().available_permits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_threads_never_exceed_the_limit_and_lose_no_permit() {
    const LIMIT: usize = 3;
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let layer = ConcurrencyLimitLayer::new(LIMIT).unwrap();
    let svc = {
        let running = Arc::clone(&running);
        let peak = Arc::clone(&peak);
        layer.layer(service_fn(move |n: u32| {
            let running = Arc::clone(&running);
            let peak = Arc::clone(&peak);
            async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                tokio::task::yield_now().await;
                running.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, std::convert::Infallible>(n)
            }
        }))
    };
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let svc = svc.clone();
            tokio::spawn(async move {
                for i in 0..200 {
                    assert_eq!(svc.clone().oneshot(i).await.unwrap(), i);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert!(peak.load(Ordering::SeqCst) <= LIMIT);
    assert_eq!(layer.handle().available_permits(), LIMIT);
    assert_eq!(layer.handle().in_flight(), 0);
}
