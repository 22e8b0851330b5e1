//! Cancel safety and exact accounting under randomized drops (seeded, paused
//! time): QueueAdmission around one or two concurrency limits.
//!
//! After every step the queue depth equals the number of live requests that
//! entered admission and whose innermost service was not called yet (each
//! counted once, freed exactly when the last limiter admits). At the end the
//! depth is 0, every permit is back, every live request finished, and the
//! counters match the errors seen.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::task::Poll;

use backstop_admission::QueueAdmissionLayer;
use backstop_concurrency::ConcurrencyLimitLayer;
use backstop_core::{BoxError, Context, OverloadReason, Overloaded, SlaExpired};
use tokio::time::{Duration, Instant, sleep};
use tokio_test::task;
use tower::{Layer, Service, service_fn};

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

struct Live<F> {
    id: u64,
    fut: task::Spawn<F>,
    in_queue: bool,
}

#[derive(Default)]
struct Seen {
    ok: u64,
    queue_full: u64,
    wait_exceeded: u64,
    sla: u64,
}

#[tokio::test(start_paused = true)]
async fn randomized_drops_keep_the_queue_exact() {
    for seed in 0..300 {
        run(seed).await;
    }
}

#[allow(clippy::too_many_lines)]
async fn run(seed: u64) {
    let mut rng = Rng(seed);
    let max_waiting = 1 + rng.below(5) as usize;
    let max_wait = Duration::from_millis([0, 5, 20, 60_000][rng.below(4) as usize]);
    let q = QueueAdmissionLayer::builder()
        .max_waiting(max_waiting)
        .max_wait(max_wait)
        .build()
        .unwrap();
    let queue = q.queue();
    let c1 = ConcurrencyLimitLayer::new(1 + rng.below(3) as usize).unwrap();
    let c2 = ConcurrencyLimitLayer::new(1 + rng.below(3) as usize).unwrap();
    let two = rng.below(2) == 0;

    let calls = Arc::new(Mutex::new(HashSet::<u64>::new()));
    let seen_calls = Arc::clone(&calls);
    let upstream = service_fn(move |(id, ms): (u64, u64)| {
        seen_calls.lock().unwrap().insert(id);
        async move {
            sleep(Duration::from_millis(ms)).await;
            Ok::<_, BoxError>(id)
        }
    });
    let svc = tower::util::BoxCloneSyncService::new(if two {
        tower::util::BoxCloneSyncService::new(q.layer(c1.layer(c2.layer(upstream))))
    } else {
        tower::util::BoxCloneSyncService::new(q.layer(c1.layer(upstream)))
    });

    let mut live = Vec::new();
    let mut outcomes = Seen::default();
    let mut next_id = 0;
    let mut refused = 0;

    let check = |live: &Vec<Live<_>>, calls: &Arc<Mutex<HashSet<u64>>>| {
        let calls = calls.lock().unwrap();
        let waiting = live
            .iter()
            .filter(|l| l.in_queue && !calls.contains(&l.id))
            .count();
        assert_eq!(queue.depth(), waiting, "seed {seed}: depth");
        assert!(queue.depth() <= max_waiting);
    };
    let classify = |res: Result<u64, BoxError>, outcomes: &mut Seen| match res {
        Ok(_) => outcomes.ok += 1,
        Err(e) => match backstop_core::find::<Overloaded>(&*e).map(Overloaded::reason) {
            Some(OverloadReason::QueueFull) => outcomes.queue_full += 1,
            Some(OverloadReason::WaitExceeded) => outcomes.wait_exceeded += 1,
            _ if e.is::<SlaExpired>() => outcomes.sla += 1,
            _ => panic!("seed {seed}: unexpected error {e}"),
        },
    };

    for _ in 0..80 {
        match rng.below(6) {
            0 | 1 => {
                let id = next_id;
                next_id += 1;
                let ms = rng.below(15);
                let mut s = svc.clone();
                let before = queue.depth();
                let fut = if rng.below(3) == 0 {
                    let sla = Instant::now() + Duration::from_millis(1 + rng.below(40));
                    Context::new()
                        .with_sla_deadline(sla)
                        .sync_scope(|| s.call((id, ms)))
                } else {
                    s.call((id, ms))
                };
                // Waiting; or admitted at once in `call` (a free permit in
                // every limiter: the upstream was called, the slot taken
                // and freed inside `call`); or else refused in `call`
                // (counted then, even if never polled).
                let in_queue = queue.depth() > before;
                let called = calls.lock().unwrap().contains(&id);
                refused += u64::from(!in_queue && !called);
                live.push(Live {
                    id,
                    fut: task::spawn(fut),
                    in_queue,
                });
            }
            2 if !live.is_empty() => {
                let i = rng.below(live.len() as u64) as usize;
                if let Poll::Ready(res) = live[i].fut.poll() {
                    live.remove(i);
                    classify(res, &mut outcomes);
                }
            }
            3 if !live.is_empty() => {
                let i = rng.below(live.len() as u64) as usize;
                drop(live.remove(i));
            }
            _ => tokio::time::advance(Duration::from_millis(rng.below(8))).await,
        }
        check(&live, &calls);
    }

    for _ in 0..100_000 {
        if live.is_empty() {
            break;
        }
        let mut i = 0;
        while i < live.len() {
            if let Poll::Ready(res) = live[i].fut.poll() {
                live.remove(i);
                classify(res, &mut outcomes);
            } else {
                i += 1;
            }
        }
        check(&live, &calls);
        tokio::time::advance(Duration::from_millis(1)).await;
    }
    assert!(live.is_empty(), "seed {seed}: requests never finished");
    assert_eq!(queue.depth(), 0, "seed {seed}");
    assert_eq!(c1.handle().in_flight(), 0, "seed {seed}");
    assert_eq!(c2.handle().in_flight(), 0, "seed {seed}");
    assert_eq!(queue.rejected(), refused, "seed {seed}");
    assert!(outcomes.queue_full <= refused);
    // A request dropped while waiting is not a timeout.
    assert_eq!(queue.wait_timeouts(), outcomes.wait_exceeded, "seed {seed}");
    if max_wait.is_zero() {
        assert_eq!(
            outcomes.sla, 0,
            "seed {seed}: zero max wait never reaches an SLA"
        );
    }
}
