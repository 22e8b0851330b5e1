//! QueueAdmission around RateLimit and ConcurrencyLimit, in either order,
//! counts each waiting request once and frees its slot when the last limiter
//! admits it (DESIGN, "Admission").

use backstop::admission::QueueAdmissionLayer;
use backstop::concurrency::ConcurrencyLimitLayer;
use backstop::rate_limit::RateLimitLayer;
use backstop::{BoxError, OverloadReason, Overloaded, ServiceBuilderExt};
use backstop_tests::{ms, secs};
use tokio_test::{assert_pending, assert_ready_err, assert_ready_ok, task};
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};

/// Request 1 holds the upstream for 5 s; the others answer at once.
fn upstream() -> impl Service<u32, Response = u32, Error = BoxError, Future: Send> + Clone {
    service_fn(|n: u32| async move {
        if n == 1 {
            tokio::time::sleep(secs(5)).await;
        }
        Ok::<_, BoxError>(n)
    })
}

#[derive(Clone, Copy, Debug)]
enum Order {
    RateThenConcurrency,
    ConcurrencyThenRate,
}

async fn run(order: Order) {
    let admission = QueueAdmissionLayer::builder()
        .max_waiting(2)
        .max_wait(secs(30))
        .build()
        .unwrap();
    let queue = admission.queue();
    let rate = RateLimitLayer::per_second(1).burst(1).build().unwrap();
    let conc = ConcurrencyLimitLayer::new(1).unwrap();
    let handle = conc.handle();
    let svc = match order {
        Order::RateThenConcurrency => ServiceBuilder::new()
            .queue_admission(admission)
            .rate_limited(rate)
            .concurrency_limited(conc)
            .service(upstream())
            .boxed_clone(),
        Order::ConcurrencyThenRate => ServiceBuilder::new()
            .queue_admission(admission)
            .concurrency_limited(conc)
            .rate_limited(rate)
            .service(upstream())
            .boxed_clone(),
    };

    let mut r1 = task::spawn(svc.clone().oneshot(1));
    assert_pending!(r1.poll());
    assert_eq!(queue.depth(), 0, "{order:?}: r1 reached the upstream");
    assert_eq!(handle.in_flight(), 1);

    let mut r2 = task::spawn(svc.clone().oneshot(2));
    assert_pending!(r2.poll());
    let mut r3 = task::spawn(svc.clone().oneshot(3));
    assert_pending!(r3.poll());
    assert_eq!(
        queue.depth(),
        2,
        "{order:?}: two waiting, each counted once"
    );

    // Full: the fourth fails on its first poll, with no await.
    let mut r4 = task::spawn(svc.clone().oneshot(4));
    let err = assert_ready_err!(r4.poll());
    let o = err.downcast_ref::<Overloaded>().expect("overloaded");
    assert_eq!(o.reason(), OverloadReason::QueueFull);
    assert_eq!(queue.rejected(), 1);

    // Tokens come due; both still wait for the permit: still counted once.
    tokio::time::advance(ms(2_100)).await;
    assert_pending!(r2.poll());
    assert_pending!(r3.poll());
    assert_eq!(
        queue.depth(),
        2,
        "{order:?}: passing one limiter frees nothing"
    );

    // r1 finishes: r2 takes the permit and reaches the upstream, then r3.
    tokio::time::advance(secs(3)).await;
    assert_eq!(assert_ready_ok!(r1.poll()), 1);
    assert!(r2.is_woken());
    assert_eq!(assert_ready_ok!(r2.poll()), 2);
    assert!(r3.is_woken());
    if let Order::ConcurrencyThenRate = order {
        // r3 reaches the rate limiter only now, one token behind r2.
        assert_pending!(r3.poll());
        assert_eq!(
            queue.depth(),
            1,
            "r3 still counted once while it waits for a token"
        );
        tokio::time::advance(secs(1)).await;
    }
    assert_eq!(assert_ready_ok!(r3.poll()), 3);
    assert_eq!(queue.depth(), 0, "{order:?}: every slot freed exactly once");
    assert_eq!(handle.in_flight(), 0);
    assert_eq!(queue.wait_timeouts(), 0);
}

#[tokio::test(start_paused = true)]
async fn rate_limit_then_concurrency_counts_once() {
    run(Order::RateThenConcurrency).await;
}

#[tokio::test(start_paused = true)]
async fn concurrency_then_rate_limit_counts_once() {
    run(Order::ConcurrencyThenRate).await;
}

/// Dropping waiting requests at any point gives every slot back.
#[tokio::test(start_paused = true)]
async fn drops_return_slots_in_any_order() {
    let admission = QueueAdmissionLayer::builder()
        .max_waiting(8)
        .build()
        .unwrap();
    let queue = admission.queue();
    let conc = ConcurrencyLimitLayer::new(1).unwrap();
    let handle = conc.handle();
    let svc = ServiceBuilder::new()
        .queue_admission(admission)
        .rate_limited(RateLimitLayer::per_second(2).burst(1).build().unwrap())
        .concurrency_limited(conc)
        .service(upstream())
        .boxed_clone();
    let mut first = task::spawn(svc.clone().oneshot(1));
    assert_pending!(first.poll());
    let mut waiting: Vec<_> = (2..8)
        .map(|n| {
            let mut t = task::spawn(svc.clone().oneshot(n));
            assert_pending!(t.poll());
            t
        })
        .collect();
    assert_eq!(queue.depth(), 6);
    tokio::time::advance(secs(1)).await;
    for t in &mut waiting {
        assert_pending!(t.poll());
    }
    // Drop from the middle, then the ends.
    drop(waiting.remove(2));
    drop(waiting.remove(0));
    drop(waiting.pop());
    assert_eq!(queue.depth(), 3);
    drop(first);
    // r1's permit passes straight to the oldest live waiter (FIFO).
    assert_eq!(handle.in_flight(), 1);
    let mut live: Vec<_> = waiting.into_iter().map(Some).collect();
    for _ in 0..40 {
        for slot in &mut live {
            if let Some(t) = slot {
                if t.poll().is_ready() {
                    *slot = None;
                }
            }
        }
        if live.iter().all(Option::is_none) {
            break;
        }
        tokio::time::advance(ms(500)).await;
    }
    assert!(
        live.iter().all(Option::is_none),
        "no live waiter is skipped"
    );
    assert_eq!(queue.depth(), 0);
    assert_eq!(handle.available_permits(), 1);
}

/// Every layer's `call()` may run outside any runtime (a future made early,
/// awaited later), also when limits bind and the futures must wait: no
/// layer makes a timer or looks up a runtime before its future is polled.
#[test]
fn the_whole_stack_can_be_called_outside_a_runtime() {
    use backstop::attempt_timeout::AttemptTimeoutLayer;
    use backstop::retry::RetryLayer;
    use backstop::shield::{ShieldedOnCancelLayer, sync_hook};
    use backstop::sla::SlaTimeoutLayer;

    let svc = ServiceBuilder::new()
        .shielded_on_cancel(ShieldedOnCancelLayer::new(sync_hook(|_| {})))
        .sla_timeout(SlaTimeoutLayer::new(secs(60)).unwrap())
        .retrying(RetryLayer::builder().build().unwrap())
        .queue_admission(
            QueueAdmissionLayer::builder()
                .max_waiting(10)
                .max_wait(secs(30))
                .build()
                .unwrap(),
        )
        .rate_limited(RateLimitLayer::per_second(10).burst(1).build().unwrap())
        .concurrency_limited(ConcurrencyLimitLayer::new(1).unwrap())
        .attempt_timeout(AttemptTimeoutLayer::new(secs(10)).unwrap())
        .service(service_fn(|n: u32| async move {
            tokio::time::sleep(ms(50)).await;
            Ok::<_, BoxError>(n)
        }));
    // Outside any runtime: the first is admitted at once, the others wait
    // for the rate limit (and then the permit).
    let futures: Vec<_> = (0..4)
        .map(|n| {
            let mut svc = svc.clone();
            svc.call(n)
        })
        .collect();
    let answers =
        backstop_test_util::paused_runtime().block_on(async { futures_join_all(futures).await });
    assert_eq!(answers, vec![0, 1, 2, 3]);
}

/// Awaits every future in order (they make progress together: each is
/// polled by the runtime's timer wake-ups while the earlier ones wait).
async fn futures_join_all<F, T>(futures: Vec<F>) -> Vec<T>
where
    F: std::future::Future<Output = Result<T, BoxError>> + Send + 'static,
    T: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap().unwrap());
    }
    out
}
