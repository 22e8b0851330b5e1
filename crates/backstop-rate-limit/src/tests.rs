use std::future::{Ready, ready};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use backstop_core::{
    Context, CostOverBurst, ErrorKind, OverloadReason, Overloaded, QueueSlots, SlaExpired,
    WaitBound, classify,
};
use backstop_test_util::call_with_ticket;
use tokio::time::{Duration, Instant, advance};
use tokio_test::{assert_pending, assert_ready_err, assert_ready_ok, task};
use tower::{BoxError, Layer, Service, ServiceBuilder, ServiceExt, service_fn};

use crate::*;

const MS: Duration = Duration::from_millis(1);

type Log = Arc<Mutex<Vec<(u64, Instant)>>>;

/// An inner service that records what it was called with, and when.
fn recorder() -> (
    impl Service<u64, Response = u64, Error = BoxError, Future = Ready<Result<u64, BoxError>>> + Clone,
    Log,
) {
    let log: Log = Arc::default();
    let l = Arc::clone(&log);
    let svc = service_fn(move |n: u64| {
        l.lock().unwrap().push((n, Instant::now()));
        ready(Ok::<_, BoxError>(n))
    });
    (svc, log)
}

fn times(log: &Log, start: Instant) -> Vec<Duration> {
    log.lock()
        .unwrap()
        .iter()
        .map(|&(_, at)| at.saturating_duration_since(start))
        .collect()
}

/// The limit most tests use: 10 per second, a burst of 1.
fn ten_per_second<S>(inner: S) -> RateLimit<S> {
    RateLimitLayer::per_second(10)
        .burst(1)
        .build()
        .unwrap()
        .layer(inner)
}

fn overloaded(err: &BoxError) -> &Overloaded {
    err.downcast_ref::<Overloaded>()
        .unwrap_or_else(|| panic!("not Overloaded: {err}"))
}

// === GCRA ===

#[tokio::test(start_paused = true)]
async fn gcra_is_exact() {
    let quota = Quota::new(10, Duration::from_secs(1), 2).unwrap();
    let store = GcraStore::new(quota);
    let admit = |s: &GcraStore| match s.try_reserve(1, None) {
        Decision::Admit { after, .. } => after,
        d @ Decision::Reject { .. } => panic!("{d:?}"),
    };
    // Burst of 2 at once, then one per 100 ms.
    assert_eq!(admit(&store), Duration::ZERO);
    assert_eq!(admit(&store), Duration::ZERO);
    assert_eq!(admit(&store), 100 * MS);
    assert_eq!(admit(&store), 200 * MS);
    // 250 ms on, the 4th is 50 ms late... the next conforms at 300 ms.
    advance(250 * MS).await;
    assert_eq!(store.wait_for(1), 50 * MS);
    // Bounded wait: rejected without committing.
    assert_eq!(
        store.try_reserve(1, Some(49 * MS)),
        Decision::Reject {
            retry_after: 50 * MS
        }
    );
    assert_eq!(admit(&store), 50 * MS);
    // Idle for long enough: a full burst again, never more.
    advance(Duration::from_secs(10)).await;
    assert_eq!(store.wait_for(2), Duration::ZERO);
    assert_eq!(store.wait_for(3), 100 * MS);
}

#[tokio::test(start_paused = true)]
async fn waits_transparently_then_admits_at_the_exact_instant() {
    let (inner, log) = recorder();
    let layer = RateLimitLayer::per_second(10).burst(1).build().unwrap();
    let mut svc = layer.layer(inner);
    let start = Instant::now();

    let mut first = task::spawn(svc.call(1));
    assert_eq!(assert_ready_ok!(first.poll()), 1);

    let mut second = task::spawn(svc.call(2));
    assert_pending!(second.poll());
    advance(99 * MS).await;
    assert_pending!(second.poll());
    assert_eq!(
        log.lock().unwrap().len(),
        1,
        "not called before its instant"
    );
    advance(MS).await;
    assert!(second.is_woken());
    assert_eq!(assert_ready_ok!(second.poll()), 2);
    assert_eq!(times(&log, start), vec![Duration::ZERO, 100 * MS]);
}

#[tokio::test(start_paused = true)]
async fn poll_ready_reserves_nothing() {
    let (inner, _log) = recorder();
    let mut svc = ten_per_second(inner);
    for _ in 0..100 {
        std::future::poll_fn(|cx| svc.poll_ready(cx)).await.unwrap();
    }
    assert_eq!(svc.store().wait_for(1), Duration::ZERO);
}

// === Accuracy ===

/// A tiny deterministic generator (xorshift), so runs are reproducible.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Over every window between two admissions, the admitted cost is at most
/// `rate × window + burst`.
fn assert_upper_bound(events: &[(u64, Instant)], per_unit: Duration, burst: u64) {
    for i in 0..events.len() {
        let mut sum = 0;
        for j in i..events.len() {
            sum += events[j].0;
            let window = events[j].1.saturating_duration_since(events[i].1);
            let allowed = (window.as_nanos() / per_unit.as_nanos()) as u64 + burst;
            assert!(
                sum <= allowed,
                "{sum} units admitted in {window:?}, at most {allowed} allowed"
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn accuracy_over_any_window_seeded() {
    for seed in 1..=40u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        // 1 unit per ms, so every conforming instant is a whole millisecond
        // (tokio's timer resolution).
        let burst = 1 + rng.below(20);
        let (inner, log) = recorder();
        let svc = RateLimitLayer::per_second(1000)
            .burst(burst)
            .cost_fn(|n: &u64| *n)
            .build()
            .unwrap()
            .layer(inner);
        let start = Instant::now();
        let mut handles = Vec::new();
        let mut max_cost = 0;
        // Saturated: everything arrives within the first few ms, more than
        // the limiter can admit at once.
        for _ in 0..60 {
            let cost = 1 + rng.below(burst);
            max_cost = max_cost.max(cost);
            let at = start + MS * rng.below(5) as u32;
            let s = svc.clone();
            handles.push(tokio::spawn(async move {
                tokio::time::sleep_until(at).await;
                s.oneshot(cost).await
            }));
        }
        for h in handles {
            h.await.unwrap().unwrap();
        }
        let mut events = log.lock().unwrap().clone();
        events.sort_by_key(|e| e.1);
        assert_upper_bound(&events, MS, burst);
        // Lower bound under saturation: from the first admission to any
        // later one, at least rate × window − one request's cost.
        let first = events[0].1;
        let mut sum = 0;
        for &(cost, at) in &events {
            sum += cost;
            let window = at.saturating_duration_since(first).as_millis() as u64;
            assert!(
                sum + max_cost >= window,
                "seed {seed}: only {sum} units by {window} ms"
            );
        }
    }
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Op {
        /// Advance this many nanoseconds, then reserve this many units.
        Reserve(u64, u64),
        /// Drop the n-th still-waiting reservation (modulo their number).
        Drop(usize),
        /// Settle the n-th unsettled reservation (waiting or not) to this
        /// share of its cost, in eighths (0: refunded in full).
        Settle(usize, u64),
    }

    fn op(burst: u64) -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0..1_500_000u64, 1..=burst).prop_map(|(d, c)| Op::Reserve(d, c)),
            1 => any::<usize>().prop_map(Op::Drop),
            1 => (any::<usize>(), 0..8u64).prop_map(|(n, eighths)| Op::Settle(n, eighths)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// The store alone, at nanosecond arrivals, with waiters dropped and
        /// reservations refunded in part or in full in any order: what is
        /// admitted, counted at its settled cost, never exceeds
        /// rate × window + burst.
        #[test]
        fn gcra_bound_holds_with_arbitrary_drops_and_refunds(
            (burst, ops) in (1..12u64).prop_flat_map(|b| (Just(b), proptest::collection::vec(op(b), 1..120)))
        ) {
            let rt = backstop_test_util::paused_runtime();
            rt.block_on(async move {
                // 1 unit per ms.
                let quota = Quota::new(1000, Duration::from_secs(1), burst).unwrap();
                let store = GcraStore::new(quota);
                // Every reservation: (cost it counts at, admitted at,
                // receipt, still open to a drop or a settle). A dropped one
                // counts at 0, a settled one at its settled cost.
                let mut all: Vec<(u64, Instant, Receipt, bool)> = Vec::new();
                for op in ops {
                    match op {
                        Op::Reserve(d, cost) => {
                            advance(Duration::from_nanos(d)).await;
                            match store.reserve(&(), cost, None).await.unwrap() {
                                Decision::Admit { after, receipt } => {
                                    all.push((cost, Instant::now() + after, receipt, true));
                                }
                                d @ Decision::Reject { .. } => panic!("{d:?}"),
                            }
                        }
                        Op::Drop(n) => {
                            let now = Instant::now();
                            let waiting: Vec<usize> = (0..all.len())
                                .filter(|&i| all[i].3 && all[i].1 > now)
                                .collect();
                            if !waiting.is_empty() {
                                let e = &mut all[waiting[n % waiting.len()]];
                                store.cancel(&(), e.0, e.2);
                                e.0 = 0;
                                e.3 = false;
                            }
                        }
                        Op::Settle(n, eighths) => {
                            let open: Vec<usize> = (0..all.len()).filter(|&i| all[i].3).collect();
                            if !open.is_empty() {
                                let e = &mut all[open[n % open.len()]];
                                let actual = e.0 * eighths / 8;
                                store.settle(&(), e.0, actual, e.2);
                                e.0 = actual;
                                e.3 = false;
                            }
                        }
                    }
                }
                let mut events: Vec<(u64, Instant)> =
                    all.iter().filter(|e| e.0 > 0).map(|e| (e.0, e.1)).collect();
                events.sort_by_key(|e| e.1);
                assert_upper_bound(&events, MS, burst);
            });
        }
    }
}

// === Weighted, cost 0, over burst ===

#[tokio::test(start_paused = true)]
async fn weighted_costs() {
    let (inner, log) = recorder();
    let svc = RateLimitLayer::per_second(10)
        .burst(10)
        .cost_fn(|n: &u64| *n)
        .build()
        .unwrap()
        .layer(inner);
    let start = Instant::now();
    let a = tokio::spawn(svc.clone().oneshot(5));
    let b = tokio::spawn(svc.clone().oneshot(5));
    tokio::task::yield_now().await;
    let c = tokio::spawn(svc.clone().oneshot(3));
    a.await.unwrap().unwrap();
    b.await.unwrap().unwrap();
    c.await.unwrap().unwrap();
    // 10 at once, then 3 units take 300 ms.
    assert_eq!(
        times(&log, start),
        vec![Duration::ZERO, Duration::ZERO, 300 * MS]
    );
}

#[tokio::test(start_paused = true)]
async fn cost_zero_bypasses_the_limiter() {
    let (inner, _log) = recorder();
    let mut svc = RateLimitLayer::per_second(10)
        .burst(1)
        .cost_fn(|n: &u64| *n)
        .build()
        .unwrap()
        .layer(inner);
    svc.call(1).await.unwrap();
    let before = svc.store().wait_for(1);
    assert_eq!(before, 100 * MS);
    // Saturated, yet a free request passes on its first poll...
    let mut free = task::spawn(svc.call(0));
    assert_eq!(assert_ready_ok!(free.poll()), 0);
    // ...and took nothing.
    assert_eq!(svc.store().wait_for(1), before);
}

#[tokio::test(start_paused = true)]
async fn cost_over_burst_fails_at_once() {
    let (inner, log) = recorder();
    let mut svc = RateLimitLayer::per_minute(600)
        .burst(5)
        .cost_fn(|n: &u64| *n)
        .build()
        .unwrap()
        .layer(inner);
    let mut fut = task::spawn(svc.call(6));
    let err = assert_ready_err!(fut.poll());
    let e = err.downcast_ref::<CostOverBurst>().unwrap();
    assert_eq!((e.needed(), e.limit()), (6, 5));
    assert_eq!(classify(&*err), ErrorKind::InvalidRequest);
    assert!(log.lock().unwrap().is_empty());
    assert_eq!(svc.store().wait_for(5), Duration::ZERO, "nothing reserved");
}

// === Deadlines ===

#[tokio::test(start_paused = true)]
async fn conforming_instant_past_the_deadline_fails_at_once() {
    let (inner, log) = recorder();
    let mut svc = ten_per_second(inner);
    let now = Instant::now();
    let ctx = Context::new().with_sla_deadline(now + 150 * MS);
    let call = |svc: &mut _, n| ctx.clone().sync_scope(|| Service::call(svc, n));

    assert_ready_ok!(task::spawn(call(&mut svc, 1)).poll());
    // Conforms at 100 ms, before the deadline: waits.
    let mut second = task::spawn(call(&mut svc, 2));
    assert_pending!(second.poll());
    // Would conform at 200 ms, past the deadline: fails on the first poll,
    // without sleeping, with the exact retry-after.
    let mut third = task::spawn(call(&mut svc, 3));
    let err = assert_ready_err!(third.poll());
    let o = overloaded(&err);
    assert_eq!(o.reason(), OverloadReason::RateLimited);
    assert_eq!(o.retry_after(), 200 * MS);
    assert_eq!(classify(&*err), ErrorKind::Overloaded);
    assert_eq!(Instant::now(), now, "no time passed");
    // The rejected request took nothing: the second still conforms at 100 ms
    // and a fourth, unbounded, at 200 ms.
    assert_eq!(svc.store().wait_for(1), 200 * MS);
    advance(100 * MS).await;
    assert_ready_ok!(second.poll());
    assert_eq!(log.lock().unwrap().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn admission_deadline_bounds_the_wait() {
    let (inner, _log) = recorder();
    let mut svc = ten_per_second(inner);
    let now = Instant::now();
    let slots = QueueSlots::new(8, Duration::from_secs(1));
    // The ticket's deadline (50 ms) is shorter than the SLA (10 s).
    let ticket = slots
        .try_acquire(now + 50 * MS, WaitBound::MaxWait)
        .unwrap();
    let ctx = Context::new().with_sla_deadline(now + Duration::from_secs(10));
    svc.call(1).await.unwrap();
    let mut fut = task::spawn(ctx.sync_scope(|| call_with_ticket(ticket, || svc.call(2))));
    let err = assert_ready_err!(fut.poll());
    assert_eq!(overloaded(&err).reason(), OverloadReason::RateLimited);
    assert_eq!(overloaded(&err).retry_after(), 100 * MS);
    assert!(!err.is::<SlaExpired>());
}

#[tokio::test(start_paused = true)]
async fn deadline_exactly_at_the_conforming_instant_admits() {
    let (inner, log) = recorder();
    let mut svc = ten_per_second(inner);
    let start = Instant::now();
    svc.call(1).await.unwrap();
    let ctx = Context::new().with_sla_deadline(start + 100 * MS);
    let fut = ctx.clone().sync_scope(|| svc.call(2));
    ctx.scope(fut).await.unwrap();
    assert_eq!(times(&log, start), vec![Duration::ZERO, 100 * MS]);
}

// === Shared state ===

#[tokio::test(start_paused = true)]
async fn clones_share_one_limit_and_two_layers_are_two() {
    let (inner, log) = recorder();
    let layer = RateLimitLayer::per_second(10).burst(1).build().unwrap();
    let svc_a = layer.layer(inner.clone());
    let svc_b = layer.clone().layer(inner.clone());
    let start = Instant::now();
    let mut joins = Vec::new();
    for i in 0..3 {
        joins.push(tokio::spawn(svc_a.clone().oneshot(i)));
        joins.push(tokio::spawn(svc_b.clone().oneshot(10 + i)));
    }
    for j in joins {
        j.await.unwrap().unwrap();
    }
    let expected: Vec<_> = (0..6).map(|i| 100 * MS * i).collect();
    assert_eq!(times(&log, start), expected, "one limit across clones");

    // A second layer value is a second limit.
    log.lock().unwrap().clear();
    let other = RateLimitLayer::per_second(10).burst(1).build().unwrap();
    let svc_c = other.layer(inner);
    let start = Instant::now();
    let (x, y) = tokio::join!(svc_a.clone().oneshot(1), svc_c.oneshot(2));
    x.unwrap();
    y.unwrap();
    // `a` is still busy (its next slot is 100 ms on); `c` is idle.
    let mut t = times(&log, start);
    t.sort();
    assert_eq!(t, vec![Duration::ZERO, 100 * MS]);
}

// === Keyed ===

#[tokio::test(start_paused = true)]
async fn keyed_limits_are_separate() {
    let (inner, log) = recorder();
    let svc = RateLimitLayer::per_second(10)
        .burst(1)
        .keyed_by(|n: &u64| *n % 2)
        .build()
        .unwrap()
        .layer(inner);
    let start = Instant::now();
    let (a, b, c) = tokio::join!(
        svc.clone().oneshot(0),
        svc.clone().oneshot(1),
        svc.clone().oneshot(2)
    );
    a.unwrap();
    b.unwrap();
    c.unwrap();
    // Keys 0 and 1 both pass at once; 2 shares key 0 and waits.
    assert_eq!(
        times(&log, start),
        vec![Duration::ZERO, Duration::ZERO, 100 * MS]
    );
    assert_eq!(svc.store().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn keyed_evicts_idle_keys_and_never_rejects_a_known_key() {
    let quota = Quota::new(10, Duration::from_secs(1), 1).unwrap();
    let store = KeyedGcraStore::new(quota, 2);
    let admit = |k: &str| match store.try_reserve(&k.to_owned(), 1, None) {
        Decision::Admit { after, .. } => after,
        d @ Decision::Reject { .. } => panic!("{k}: {d:?}"),
    };
    assert_eq!(admit("a"), Duration::ZERO);
    advance(50 * MS).await;
    assert_eq!(admit("b"), Duration::ZERO);
    // Full, and both keys busy: a new key is turned away until "a" idles
    // (at 100 ms), but known keys still get their turn.
    assert_eq!(
        store.try_reserve(&"c".to_owned(), 1, None),
        Decision::Reject {
            retry_after: 50 * MS
        }
    );
    assert_eq!(admit("a"), 50 * MS);
    assert_eq!(admit("b"), 100 * MS);
    assert!(!store.contains(&"c".to_owned()));
    // "a" is idle from 200 ms, "b" from 250 ms.
    advance(160 * MS).await; // t = 210 ms
    assert_eq!(admit("c"), Duration::ZERO, "idle \"a\" evicted for \"c\"");
    assert!(!store.contains(&"a".to_owned()));
    assert!(store.contains(&"b".to_owned()));
    assert_eq!(store.len(), 2);
    // "b" kept its state: still busy until 250 ms.
    assert_eq!(admit("b"), 40 * MS);
}

#[tokio::test(start_paused = true)]
async fn keyed_new_key_rejected_through_the_service_when_all_busy() {
    let (inner, _log) = recorder();
    let mut svc = RateLimitLayer::per_second(10)
        .burst(1)
        .keyed_by(|n: &u64| *n)
        .max_keys(1)
        .build()
        .unwrap()
        .layer(inner);
    svc.call(7).await.unwrap();
    let err = svc.call(8).await.unwrap_err();
    assert_eq!(overloaded(&err).reason(), OverloadReason::RateLimited);
    assert_eq!(overloaded(&err).retry_after(), 100 * MS);
}

// === Cancel safety ===

#[tokio::test(start_paused = true)]
async fn dropped_waiter_gives_its_reservation_back() {
    let (inner, log) = recorder();
    let mut svc = ten_per_second(inner);
    let start = Instant::now();
    svc.call(1).await.unwrap();
    let mut waiter = task::spawn(svc.call(2));
    assert_pending!(waiter.poll());
    assert_eq!(svc.store().wait_for(1), 200 * MS);
    drop(waiter);
    assert_eq!(svc.store().wait_for(1), 100 * MS, "given back");
    svc.call(3).await.unwrap();
    assert_eq!(times(&log, start), vec![Duration::ZERO, 100 * MS]);

    // Dropped before its first poll: the same.
    let unpolled = svc.call(4);
    drop(unpolled);
    assert_eq!(svc.store().wait_for(1), 100 * MS);
}

#[tokio::test(start_paused = true)]
async fn waiters_dropped_newest_first_give_everything_back() {
    let (inner, _log) = recorder();
    let mut svc = ten_per_second(inner);
    let mut waiters: Vec<_> = (0..5).map(|n| task::spawn(svc.call(n))).collect();
    for w in &mut waiters {
        let _ = w.poll();
    }
    assert_eq!(svc.store().wait_for(1), 500 * MS);
    while let Some(w) = waiters.pop() {
        drop(w);
    }
    // The first was admitted at once: its cost is spent, the rest came back.
    assert_eq!(svc.store().wait_for(1), 100 * MS);
}

#[tokio::test(start_paused = true)]
async fn inner_overloaded_gives_the_reservation_back() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&calls);
    let inner = service_fn(move |n: u64| {
        c.fetch_add(1, Ordering::SeqCst);
        ready(if n == 0 {
            Err::<u64, BoxError>(Overloaded::new(OverloadReason::QueueFull, MS).into())
        } else if n == 1 {
            Err("boom".into())
        } else {
            Ok(n)
        })
    });
    let mut svc = ten_per_second(inner);
    let err = svc.call(0).await.unwrap_err();
    assert!(err.is::<Overloaded>());
    assert_eq!(svc.store().wait_for(1), Duration::ZERO, "given back");
    // Any other error: the cost is spent.
    svc.call(1).await.unwrap_err();
    assert_eq!(svc.store().wait_for(1), 100 * MS);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// Randomized drops at every await point: afterwards nothing is held, the
/// bound holds for what was admitted, and no live waiter is skipped.
#[tokio::test(start_paused = true)]
async fn randomized_drops_release_everything() {
    for seed in 1..=30u64 {
        let mut rng = Rng(seed.wrapping_mul(0x2545_F491_4F6C_DD1D));
        let (inner, log) = recorder();
        let mut svc = RateLimitLayer::per_second(1000)
            .burst(3)
            .cost_fn(|n: &u64| *n)
            .build()
            .unwrap()
            .layer(inner);
        let slots = QueueSlots::new(1000, MS);
        let start = Instant::now();
        let mut live = Vec::new();
        let mut kept = 0;
        for _ in 0..50 {
            let ticket = slots
                .try_acquire(start + Duration::from_secs(60), WaitBound::MaxWait)
                .unwrap();
            let cost = 1 + rng.below(3);
            let fut = call_with_ticket(ticket, || svc.call(cost));
            let mut fut = task::spawn(fut);
            match rng.below(4) {
                0 => drop(fut),
                1 => {
                    let _ = fut.poll();
                    drop(fut);
                }
                _ => {
                    if fut.poll().is_pending() {
                        live.push((fut, rng.below(3) == 0));
                    } else {
                        kept += 1;
                    }
                }
            }
            // Poll every live waiter at every millisecond, as a runtime
            // would wake it, and drop some of them mid-wait.
            for _ in 0..rng.below(3) {
                advance(MS).await;
                live.retain_mut(|(f, drop_later)| {
                    if *drop_later && rng.below(4) == 0 {
                        return false;
                    }
                    if f.poll().is_ready() {
                        kept += 1;
                        return false;
                    }
                    true
                });
            }
        }
        // Let the rest finish.
        while !live.is_empty() {
            advance(MS).await;
            live.retain_mut(|(f, _)| {
                if f.poll().is_ready() {
                    kept += 1;
                    false
                } else {
                    true
                }
            });
        }
        assert_eq!(slots.depth(), 0, "seed {seed}: a queue slot leaked");
        let mut events = log.lock().unwrap().clone();
        assert!(events.len() >= kept);
        events.sort_by_key(|e| e.1);
        assert_upper_bound(&events, MS, 3);
        // Nothing is reserved once the last admission's slot has passed.
        advance(Duration::from_secs(1)).await;
        assert_eq!(svc.store().wait_for(3), Duration::ZERO);
    }
}

// === Admission tickets ===

#[tokio::test(start_paused = true)]
async fn holds_the_admission_ticket_until_its_inner_call() {
    let (inner, log) = recorder();
    let mut svc = RateLimitLayer::per_second(10)
        .burst(1)
        .cost_fn(|n: &u64| *n)
        .build()
        .unwrap()
        .layer(inner);
    svc.call(1).await.unwrap();
    let slots = QueueSlots::new(4, MS);
    let issue_until = |at: Instant| slots.try_acquire(at, WaitBound::MaxWait).unwrap();
    let issue = || issue_until(Instant::now() + Duration::from_secs(5));

    // Waiting: still counted after QueueAdmission's call() returned.
    let mut fut = task::spawn(call_with_ticket(issue(), || svc.call(1)));
    assert_pending!(fut.poll());
    assert_eq!(slots.depth(), 1);
    advance(100 * MS).await;
    assert_ready_ok!(fut.poll());
    assert_eq!(slots.depth(), 0, "left right after the inner call");
    assert_eq!(log.lock().unwrap().len(), 2);

    // Dropped while waiting: left.
    let mut fut = task::spawn(call_with_ticket(issue(), || svc.call(1)));
    assert_pending!(fut.poll());
    drop(fut);
    assert_eq!(slots.depth(), 0);

    // Cost 0 takes the ticket too and hands it on to its inner call, so a
    // limiter inside can take it: here one that must wait, and holds it.
    let mut free = RateLimitLayer::per_second(10)
        .cost_fn(|_: &u64| 0)
        .build()
        .unwrap()
        .layer(svc.clone());
    let mut fut = task::spawn(call_with_ticket(issue(), || free.call(1)));
    assert_pending!(fut.poll());
    assert_eq!(slots.depth(), 1, "held by the inner limiter");
    advance(100 * MS).await;
    assert_ready_ok!(fut.poll());
    assert_eq!(slots.depth(), 0);

    // Admitted at once (the limiter is idle again after 100 ms): the inner
    // service is called in `call()`, and the ticket left right then.
    advance(100 * MS).await;
    let calls = log.lock().unwrap().len();
    let fut = call_with_ticket(issue(), || svc.call(1));
    assert_eq!(log.lock().unwrap().len(), calls + 1, "called in call()");
    assert_eq!(slots.depth(), 0);
    fut.await.unwrap();

    // Rejected at once (saturated, deadline now): left at once, in `call()`.
    let mut fut = task::spawn(call_with_ticket(issue_until(Instant::now()), || {
        svc.call(1)
    }));
    assert_eq!(slots.depth(), 0);
    let err = assert_ready_err!(fut.poll());
    assert_eq!(overloaded(&err).reason(), OverloadReason::RateLimited);
    assert_eq!(slots.depth(), 0);
}

/// An inner service whose readiness the test sets: pending, ready, or
/// failed. Records calls like [`recorder`].
#[derive(Clone)]
struct Gate {
    // 0 pending, 1 ready, 2 failed.
    mode: Arc<AtomicUsize>,
    waker: Arc<Mutex<Option<std::task::Waker>>>,
    calls: Arc<AtomicUsize>,
}

impl Gate {
    fn new() -> Self {
        Self {
            mode: Arc::new(AtomicUsize::new(1)),
            waker: Arc::default(),
            calls: Arc::default(),
        }
    }
    fn set(&self, mode: usize) {
        self.mode.store(mode, Ordering::SeqCst);
        if let Some(w) = self.waker.lock().unwrap().take() {
            w.wake();
        }
    }
}

impl Service<u64> for Gate {
    type Response = u64;
    type Error = BoxError;
    type Future = Ready<Result<u64, BoxError>>;
    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        match self.mode.load(Ordering::SeqCst) {
            0 => {
                *self.waker.lock().unwrap() = Some(cx.waker().clone());
                std::task::Poll::Pending
            }
            1 => std::task::Poll::Ready(Ok(())),
            _ => std::task::Poll::Ready(Err("not ready, ever".into())),
        }
    }
    fn call(&mut self, n: u64) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        ready(Ok(n))
    }
}

/// The fast path in `call()` (the store answers at once, nothing to wait
/// for) keeps the slow path's contracts when the inner service is not ready:
/// the future waits for it holding the reservation and the ticket, gives
/// both back when dropped, and a readiness error gives the cost back.
#[tokio::test(start_paused = true)]
async fn admitted_in_call_unless_the_inner_service_is_not_ready() {
    let gate = Gate::new();
    let mut svc = RateLimitLayer::per_second(10)
        .burst(2)
        .build()
        .unwrap()
        .layer(gate.clone());
    let slots = QueueSlots::new(4, MS);
    let issue = || {
        slots
            .try_acquire(Instant::now() + Duration::from_secs(5), WaitBound::MaxWait)
            .unwrap()
    };

    // Ready: called in `call()`, before any poll.
    let fut = svc.call(1);
    assert_eq!(gate.calls.load(Ordering::SeqCst), 1);
    assert_eq!(fut.await.unwrap(), 1);
    assert_eq!(svc.store().wait_for(2), 100 * MS, "one unit spent");

    // Not ready: reserved in `call()`, waits for the service holding the
    // ticket, calls it once woken.
    gate.set(0);
    let mut fut = task::spawn(call_with_ticket(issue(), || svc.call(1)));
    assert_eq!(gate.calls.load(Ordering::SeqCst), 1);
    assert_eq!(svc.store().wait_for(2), 200 * MS, "reserved");
    assert_pending!(fut.poll());
    assert_eq!(slots.depth(), 1);
    gate.set(1);
    assert!(fut.is_woken());
    assert_eq!(assert_ready_ok!(fut.poll()), 1);
    assert_eq!(gate.calls.load(Ordering::SeqCst), 2);
    assert_eq!(slots.depth(), 0);

    // Not ready, then dropped (unpolled, and after a poll): the reservation
    // and the ticket come back.
    advance(Duration::from_secs(1)).await;
    gate.set(0);
    let unpolled = call_with_ticket(issue(), || svc.call(1));
    assert_eq!(svc.store().wait_for(2), 100 * MS);
    assert_eq!(slots.depth(), 1);
    drop(unpolled);
    assert_eq!(svc.store().wait_for(2), Duration::ZERO, "given back");
    assert_eq!(slots.depth(), 0);
    let mut fut = task::spawn(call_with_ticket(issue(), || svc.call(1)));
    assert_pending!(fut.poll());
    drop(fut);
    assert_eq!(svc.store().wait_for(2), Duration::ZERO, "given back");
    assert_eq!(slots.depth(), 0);

    // Readiness fails, in `call()` or in the future: not called, the cost
    // comes back, the ticket leaves.
    gate.set(2);
    let err = call_with_ticket(issue(), || svc.call(1)).await.unwrap_err();
    assert_eq!(err.to_string(), "not ready, ever");
    assert_eq!(slots.depth(), 0);
    gate.set(0);
    let mut fut = task::spawn(svc.call(1));
    assert_pending!(fut.poll());
    gate.set(2);
    assert_ready_err!(fut.poll());
    assert_eq!(svc.store().wait_for(2), Duration::ZERO, "given back");
    assert_eq!(gate.calls.load(Ordering::SeqCst), 2);
}

// === Settle ===

type Resp = Option<Reservation<GcraStore>>;

#[allow(clippy::type_complexity)]
fn settling() -> RateLimit<
    impl Service<u64, Response = Resp, Error = BoxError, Future = Ready<Result<Resp, BoxError>>> + Clone,
    Weighted<impl Fn(&u64) -> u64>,
    Global,
    GcraStore,
    AttachWith<impl Fn(&mut Resp, Reservation<GcraStore>) + Clone>,
> {
    let inner = service_fn(|_n: u64| ready(Ok::<Resp, BoxError>(None)));
    RateLimitLayer::per_second(10)
        .burst(10)
        .cost_fn(|n: &u64| *n)
        .build()
        .unwrap()
        .attach_reservation(|resp: &mut Resp, r| *resp = Some(r))
        .layer(inner)
}

#[tokio::test(start_paused = true)]
async fn settle_refunds_and_charges_the_difference() {
    let mut svc = settling();
    let r = svc.call(8).await.unwrap().expect("reservation attached");
    assert_eq!(r.cost(), 8);
    assert_eq!(svc.store().wait_for(10), 800 * MS);
    // The true cost was 3: 5 units come back.
    assert!(r.settle(3));
    assert_eq!(svc.store().wait_for(10), 300 * MS);
    // Settled once only, clones included.
    assert!(!r.clone().settle(0));
    assert!(r.is_settled());

    // Charged: 8 reserved, 10 used.
    advance(Duration::from_secs(2)).await;
    let r = svc.call(8).await.unwrap().unwrap();
    r.settle(10);
    assert_eq!(svc.store().wait_for(10), Duration::from_secs(1));

    // Refunded in full (no 2xx arrived).
    advance(Duration::from_secs(2)).await;
    let r = svc.call(10).await.unwrap().unwrap();
    assert_eq!(svc.store().wait_for(1), 100 * MS);
    r.refund();
    assert_eq!(svc.store().wait_for(10), Duration::ZERO);

    // Nobody settles: the reserved cost stands.
    drop(svc.call(10).await.unwrap());
    assert_eq!(svc.store().wait_for(1), 100 * MS);
}

#[tokio::test(start_paused = true)]
async fn a_refund_under_a_later_reservation_is_exact() {
    let mut svc = settling();
    // 10 per second, burst 10: two reservations of 5 fill the bucket.
    let r = svc.call(5).await.unwrap().unwrap();
    let _later = svc.call(5).await.unwrap().unwrap();
    assert_eq!(svc.store().wait_for(1), 100 * MS);
    // The earlier one used 2: 3 units come back although the later
    // reservation sits above it.
    assert!(r.settle(2));
    assert_eq!(svc.store().wait_for(3), Duration::ZERO);
    assert_eq!(svc.store().wait_for(4), 100 * MS);
}

#[tokio::test(start_paused = true)]
async fn a_refund_gives_back_only_what_has_not_passed() {
    let mut svc = settling();
    // 8 units: the schedule's stretch for them ends 800 ms from now.
    let r = svc.call(8).await.unwrap().unwrap();
    advance(600 * MS).await;
    // Saturate again: 8 more units fill the bucket up to 1.8 s.
    let _later = svc.call(8).await.unwrap().unwrap();
    assert_eq!(svc.store().wait_for(1), 100 * MS);
    // The first used nothing, but 600 ms of its 800 ms have passed: only
    // 200 ms (2 units) are still ahead, and only those come back.
    assert!(r.refund());
    assert_eq!(svc.store().wait_for(2), Duration::ZERO);
    assert_eq!(svc.store().wait_for(3), 100 * MS);

    // A refund after its whole stretch passed gives nothing back.
    advance(Duration::from_secs(5)).await;
    let r = svc.call(4).await.unwrap().unwrap();
    advance(500 * MS).await;
    let _later = svc.call(10).await.unwrap().unwrap();
    r.refund();
    assert_eq!(svc.store().wait_for(1), 100 * MS);
}

#[tokio::test(start_paused = true)]
async fn refunds_stay_exact_across_many_settles_under_load() {
    // A tokens-per-minute limiter fed estimates four times the true cost:
    // with refunds that hold under load it admits about four times as many
    // requests as without.
    let store = GcraStore::new(Quota::new(6000, Duration::from_secs(60), 6000).unwrap());
    let mut admitted = 0u64;
    // (settles at, receipt), oldest first.
    let mut outstanding = std::collections::VecDeque::<(Instant, Receipt)>::new();
    let start = Instant::now();
    while Instant::now() < start + Duration::from_secs(600) {
        // Each request settles two seconds after it was admitted, at 100
        // units.
        while outstanding.front().is_some_and(|o| o.0 <= Instant::now()) {
            let (_, receipt) = outstanding.pop_front().unwrap();
            store.settle(&(), 400, 100, receipt);
        }
        if let Decision::Admit { receipt, .. } =
            store.reserve(&(), 400, Some(Duration::ZERO)).await.unwrap()
        {
            admitted += 1;
            outstanding.push_back((Instant::now() + Duration::from_secs(2), receipt));
        }
        advance(100 * MS).await;
    }
    // 600 s at 100 units per second, plus the burst: 66,000 units. Settled
    // at 100 each, that is about 660 requests; without refunds under load it
    // would be 165.
    let consumed = (admitted - outstanding.len() as u64) * 100 + outstanding.len() as u64 * 400;
    assert!(consumed <= 6000 * 10 + 6000, "{consumed} units consumed");
    assert!(admitted >= 600, "only {admitted} requests admitted");
}

#[tokio::test(start_paused = true)]
async fn keyed_refunds_are_exact_per_key_and_die_with_the_key() {
    let quota = Quota::new(10, Duration::from_secs(1), 10).unwrap();
    let store = KeyedGcraStore::new(quota, 1);
    let admit = |d: Decision| match d {
        Decision::Admit { receipt, .. } => receipt,
        d @ Decision::Reject { .. } => panic!("{d:?}"),
    };
    let first = admit(store.reserve(&"a", 5, None).await.unwrap());
    let _later = admit(store.reserve(&"a", 5, None).await.unwrap());
    store.settle(&"a", 5, 0, first);
    // 5 units back under the later reservation.
    let again = admit(store.reserve(&"a", 5, Some(Duration::ZERO)).await.unwrap());
    // The key idles and is evicted by another; a receipt from its earlier
    // life refunds nothing on its new one.
    advance(Duration::from_secs(2)).await;
    admit(store.reserve(&"b", 1, None).await.unwrap());
    assert!(!store.contains(&"a"));
    advance(Duration::from_secs(1)).await;
    admit(store.reserve(&"a", 10, None).await.unwrap());
    store.settle(&"a", 5, 0, again);
    assert!(matches!(
        store.reserve(&"a", 1, Some(Duration::ZERO)).await.unwrap(),
        Decision::Reject { .. }
    ));
}

#[cfg(feature = "http")]
#[tokio::test(start_paused = true)]
async fn reservation_rides_in_the_response_extensions() {
    let inner =
        service_fn(|_r: http::Request<()>| ready(Ok::<_, BoxError>(http::Response::new(()))));
    let mut svc = RateLimitLayer::per_second(10)
        .burst(1)
        .build()
        .unwrap()
        .reservation_in_extensions()
        .layer(inner);
    let resp = svc.call(http::Request::new(())).await.unwrap();
    let r = resp
        .extensions()
        .get::<Reservation<GcraStore>>()
        .expect("in extensions");
    assert_eq!(svc.store().wait_for(1), 100 * MS);
    r.refund();
    assert_eq!(svc.store().wait_for(1), Duration::ZERO);
}

#[cfg(feature = "http")]
#[tokio::test(start_paused = true)]
async fn settled_reservations_are_refunded_when_no_response_arrives() {
    let inner = service_fn(|_r: http::Request<()>| {
        ready(Err::<http::Response<()>, BoxError>("connect error".into()))
    });
    let mut svc = RateLimitLayer::per_second(10)
        .burst(1)
        .build()
        .unwrap()
        .reservation_in_extensions()
        .layer(inner);
    assert!(svc.call(http::Request::new(())).await.is_err());
    assert_eq!(svc.store().wait_for(1), Duration::ZERO, "refunded in full");

    // Without settle-from-usage the cost stays spent, as before.
    let inner = service_fn(|_r: http::Request<()>| {
        ready(Err::<http::Response<()>, BoxError>("connect error".into()))
    });
    let mut svc = ten_per_second(inner);
    assert!(svc.call(http::Request::new(())).await.is_err());
    assert_eq!(svc.store().wait_for(1), 100 * MS);
}

/// A policy of the caller's own ([`RateLimitLayer::attach`]): two limiters
/// gather their reservations in one list, and an error refunds both.
#[derive(Clone, Copy)]
struct Gather;

impl Attach<Vec<Reservation<GcraStore>>, GcraStore> for Gather {
    fn attach(
        &self,
        response: &mut Vec<Reservation<GcraStore>>,
        make: impl FnOnce() -> Reservation<GcraStore>,
    ) {
        response.push(make());
    }

    fn refund_on_error(&self) -> bool {
        true
    }
}

#[tokio::test(start_paused = true)]
async fn a_custom_attach_policy_gathers_and_refunds() {
    let outer = RateLimitLayer::per_second(10).burst(2).build().unwrap();
    let inner = RateLimitLayer::per_second(10).burst(2).build().unwrap();
    let (outer_store, inner_store) = (Arc::clone(outer.store()), Arc::clone(inner.store()));
    let fail = Arc::new(AtomicBool::new(false));
    let f = Arc::clone(&fail);
    let mut svc = ServiceBuilder::new()
        .layer(outer.attach(Gather))
        .layer(inner.attach(Gather))
        .service(service_fn(move |_n: u64| {
            let failed = f.load(Ordering::SeqCst);
            ready(if failed {
                Err::<Vec<Reservation<GcraStore>>, BoxError>("connect error".into())
            } else {
                Ok(Vec::new())
            })
        }));
    let got = svc.call(1).await.unwrap();
    assert_eq!(
        got.len(),
        2,
        "both limiters' reservations, none overwritten"
    );
    assert_eq!(outer_store.wait_for(2), 100 * MS);
    assert_eq!(inner_store.wait_for(2), 100 * MS);
    for r in &got {
        assert!(r.refund());
    }
    assert_eq!(outer_store.wait_for(2), Duration::ZERO);
    assert_eq!(inner_store.wait_for(2), Duration::ZERO);
    // No response at all: both given back.
    fail.store(true, Ordering::SeqCst);
    assert!(svc.call(1).await.is_err());
    assert_eq!(outer_store.wait_for(2), Duration::ZERO);
    assert_eq!(inner_store.wait_for(2), Duration::ZERO);
}

// === Store errors ===

#[derive(Debug, Default)]
struct FailingStore {
    cancels: AtomicU64,
}

impl RateStore for FailingStore {
    type Key = ();
    type ReserveFuture = Ready<Result<Decision, StoreError>>;
    fn reserve(&self, _key: &(), _: u64, _: Option<Duration>) -> Self::ReserveFuture {
        ready(Err(StoreError::new("connection refused")))
    }
    fn cancel(&self, _key: &(), _: u64, _: Receipt) {
        self.cancels.fetch_add(1, Ordering::SeqCst);
    }
    fn settle(&self, _key: &(), _: u64, _: u64, _: Receipt) {}
}

#[tokio::test(start_paused = true)]
async fn store_errors_follow_the_policy() {
    let (inner, log) = recorder();
    let mut open = RateLimitLayer::per_second(1)
        .build_with_store(|_| FailingStore::default())
        .unwrap()
        .layer(inner.clone());
    assert_eq!(open.call(1).await.unwrap(), 1);
    assert_eq!(
        open.store().cancels.load(Ordering::SeqCst),
        0,
        "nothing to give back"
    );

    let mut closed = RateLimitLayer::per_second(1)
        .on_store_error(StoreErrorPolicy::FailClosed)
        .build_with_store(|_| FailingStore::default())
        .unwrap()
        .layer(inner);
    let err = closed.call(2).await.unwrap_err();
    let e = err.downcast_ref::<StoreError>().unwrap();
    assert_eq!(
        std::error::Error::source(e).unwrap().to_string(),
        "connection refused"
    );
    assert_eq!(log.lock().unwrap().len(), 1, "closed: not called");
}

/// A store that admits whatever the bound (a remote store with a skewed
/// clock, say).
#[derive(Debug, Default)]
struct LateStore {
    cancels: AtomicU64,
}

impl RateStore for LateStore {
    type Key = ();
    type ReserveFuture = Ready<Result<Decision, StoreError>>;
    fn reserve(&self, _key: &(), _: u64, _: Option<Duration>) -> Self::ReserveFuture {
        ready(Ok(Decision::Admit {
            after: Duration::from_secs(2),
            receipt: Receipt::new(7),
        }))
    }
    fn cancel(&self, _key: &(), cost: u64, receipt: Receipt) {
        assert_eq!((cost, receipt), (1, Receipt::new(7)));
        self.cancels.fetch_add(1, Ordering::SeqCst);
    }
    fn settle(&self, _key: &(), _: u64, _: u64, _: Receipt) {}
}

#[tokio::test(start_paused = true)]
async fn an_admission_past_the_deadline_is_never_slept_on() {
    let (inner, log) = recorder();
    let mut svc = RateLimitLayer::per_second(1)
        .build_with_store(|_| LateStore::default())
        .unwrap()
        .layer(inner);
    let ctx = Context::new().with_sla_deadline(Instant::now() + Duration::from_secs(1));
    let mut fut = task::spawn(ctx.sync_scope(|| svc.call(1)));
    let err = assert_ready_err!(fut.poll());
    assert_eq!(overloaded(&err).retry_after(), Duration::from_secs(2));
    assert_eq!(svc.store().cancels.load(Ordering::SeqCst), 1, "given back");
    assert!(log.lock().unwrap().is_empty());
}

// === Construction ===

#[test]
fn bad_input_names_the_setting() {
    let setting = |r: Result<RateLimitLayer, ConfigError>| r.unwrap_err().setting();
    assert_eq!(setting(RateLimitLayer::per_minute(0).build()), "rate");
    assert_eq!(
        setting(RateLimitLayer::per_second(5).burst(0).build()),
        "burst"
    );
    assert_eq!(
        setting(RateLimitLayer::new(5, Duration::ZERO).build()),
        "per"
    );
    assert_eq!(
        setting(RateLimitLayer::new(5, Duration::from_secs(25 * 3600)).build()),
        "per"
    );
    assert_eq!(
        setting(
            RateLimitLayer::new(1, Duration::from_secs(86_400))
                .burst(u64::MAX)
                .build()
        ),
        "burst"
    );
    assert_eq!(
        setting(RateLimitLayer::per_second(5).max_keys(0).build()),
        "max_keys"
    );
    let err = RateLimitLayer::per_second(5).burst(0).build().unwrap_err();
    assert_eq!(err.to_string(), "invalid `burst`: must be above zero");
}

#[test]
fn defaults() {
    let l = RateLimitLayer::per_minute(600).build().unwrap();
    assert_eq!(l.quota().burst(), 10);
    assert_eq!(l.name(), "rate_limit");
    assert_eq!(
        RateLimitLayer::per_minute(30)
            .build()
            .unwrap()
            .quota()
            .burst(),
        1
    );
    assert_eq!(
        RateLimitLayer::per_second(7)
            .build()
            .unwrap()
            .quota()
            .burst(),
        7
    );
    let named = RateLimitLayer::per_minute(1).name("rpm").build().unwrap();
    assert_eq!(named.name(), "rpm");
    assert!(format!("{named:?}").contains("rpm"));
}

// === Types ===

mod types {
    use super::*;
    use static_assertions::assert_impl_all;

    type Inner = tower::util::BoxCloneSyncService<u64, u64, BoxError>;
    assert_impl_all!(RateLimitLayer: Send, Sync, Clone, std::fmt::Debug);
    assert_impl_all!(RateLimit<Inner>: Send, Sync, Clone, std::fmt::Debug);
    assert_impl_all!(future::ResponseFuture<Inner, u64, GcraStore, Discard>: Send, std::fmt::Debug);
    assert_impl_all!(GcraStore: Send, Sync);
    assert_impl_all!(KeyedGcraStore<String>: Send, Sync);
    assert_impl_all!(Reservation<GcraStore>: Send, Sync, Clone, std::fmt::Debug);
    assert_impl_all!(StoreError: Send, Sync, std::error::Error);
}

/// `call()` may run outside any runtime (a future made early, awaited
/// later): a request that must wait gets its timer on its first poll.
#[test]
fn a_waiting_future_made_outside_a_runtime_waits_inside_one() {
    let (inner, log) = recorder();
    let mut svc = ten_per_second(inner);
    // The first is admitted (and called) at once; the second must wait.
    let first = svc.call(1);
    let second = svc.call(2);
    assert_eq!(log.lock().unwrap().len(), 1);
    backstop_test_util::paused_runtime().block_on(async {
        assert_eq!(first.await.unwrap(), 1);
        assert_eq!(second.await.unwrap(), 2);
    });
    assert_eq!(log.lock().unwrap().len(), 2);
}
