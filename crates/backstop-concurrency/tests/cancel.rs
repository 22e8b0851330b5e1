//! Cancel safety under randomized drops (seeded, paused time): afterwards the
//! semaphore is full, and every live waiter completed, in FIFO order.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::task::Poll;

use backstop_concurrency::ConcurrencyLimitLayer;
use backstop_core::{BoxError, Context, SlaExpired};
use tokio::time::{Duration, Instant, sleep};
use tokio_test::task;
use tower::{Layer, Service, service_fn};

/// splitmix64: a small deterministic generator, so failures replay by seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

struct Live<F> {
    id: u64,
    fut: task::Spawn<F>,
    deadline: Option<Instant>,
    queued_at: Option<u64>,
}

/// Polls one request; true when it finished. Records when it first waited
/// for a permit (pending before its inner call).
fn poll_one<F>(
    seed: u64,
    l: &mut Live<F>,
    calls: &Arc<Mutex<Vec<u64>>>,
    done_ok: &mut Vec<u64>,
    queue_seq: &mut u64,
) -> bool
where
    F: Future<Output = Result<u64, BoxError>>,
{
    match l.fut.poll() {
        Poll::Ready(Ok(id)) => {
            done_ok.push(id);
            true
        }
        Poll::Ready(Err(e)) => {
            assert!(e.is::<SlaExpired>(), "seed {seed}: unexpected {e}");
            let d = l.deadline.expect("only requests with a deadline may fail");
            assert!(
                Instant::now() >= d,
                "seed {seed}: failed before its deadline"
            );
            true
        }
        Poll::Pending => {
            if l.queued_at.is_none() && !calls.lock().unwrap().contains(&l.id) {
                l.queued_at = Some(*queue_seq);
                *queue_seq += 1;
            }
            false
        }
    }
}

#[tokio::test(start_paused = true)]
async fn randomized_drops_release_everything_and_skip_no_waiter() {
    let mut fifo_checked = 0;
    for seed in 0..400 {
        fifo_checked += run(seed).await;
    }
    // The FIFO assertion must have had something to check.
    assert!(
        fifo_checked > 200,
        "only {fifo_checked} queued waiters checked"
    );
}

#[allow(clippy::too_many_lines)]
async fn run(seed: u64) -> usize {
    let mut rng = Rng(seed);
    // Half the runs with one permit, where the order of inner calls is the
    // order permits were handed out (with more permits, two waiters given a
    // permit may be polled, and so call, in either order).
    let max = if seed % 2 == 0 {
        1
    } else {
        2 + rng.below(3) as usize
    };
    let layer = ConcurrencyLimitLayer::new(max).unwrap();
    let handle = layer.handle();
    let calls = Arc::new(Mutex::new(Vec::<u64>::new()));
    let recorder = Arc::clone(&calls);
    let svc = layer.layer(service_fn(move |(id, ms): (u64, u64)| {
        recorder.lock().unwrap().push(id);
        async move {
            sleep(Duration::from_millis(ms)).await;
            Ok::<_, BoxError>(id)
        }
    }));

    let mut live = Vec::new();
    let mut next_id = 0;
    let mut queue_seq = 0;
    let mut done_ok = Vec::new();

    let mut poll = |l: &mut Live<_>, calls: &Arc<Mutex<Vec<u64>>>, done_ok: &mut Vec<u64>| {
        poll_one(seed, l, calls, done_ok, &mut queue_seq)
    };

    for _ in 0..80 {
        match rng.below(6) {
            0 | 1 => {
                let id = next_id;
                next_id += 1;
                let ms = rng.below(20);
                let deadline = (rng.below(3) == 0)
                    .then(|| Instant::now() + Duration::from_millis(rng.below(30)));
                let mut s = svc.clone();
                let fut = match deadline {
                    Some(d) => Context::new()
                        .with_sla_deadline(d)
                        .sync_scope(|| s.call((id, ms))),
                    None => s.call((id, ms)),
                };
                live.push(Live {
                    id,
                    fut: task::spawn(fut),
                    deadline,
                    queued_at: None,
                });
            }
            2 if !live.is_empty() => {
                let i = rng.below(live.len() as u64) as usize;
                if poll(&mut live[i], &calls, &mut done_ok) {
                    live.remove(i);
                }
            }
            3 if !live.is_empty() => {
                let i = rng.below(live.len() as u64) as usize;
                drop(live.remove(i));
            }
            _ => tokio::time::advance(Duration::from_millis(rng.below(8))).await,
        }
    }

    // Drain: every live request completes (no lost wake-up, no skipped
    // waiter). Poll only woken ones, as an executor would.
    let survivors: Vec<(u64, Option<u64>, bool)> = live
        .iter()
        .map(|l| (l.id, l.queued_at, l.deadline.is_some()))
        .collect();
    for l in &mut live {
        if poll(l, &calls, &mut done_ok) {
            l.id = u64::MAX;
        }
    }
    live.retain(|l| l.id != u64::MAX);
    for _ in 0..20_000 {
        if live.is_empty() {
            break;
        }
        tokio::time::advance(Duration::from_millis(1)).await;
        let mut i = 0;
        while i < live.len() {
            if live[i].fut.is_woken() && poll(&mut live[i], &calls, &mut done_ok) {
                live.remove(i);
            } else {
                i += 1;
            }
        }
    }
    assert!(
        live.is_empty(),
        "seed {seed}: {} requests never finished",
        live.len()
    );
    assert_eq!(handle.available_permits(), max, "seed {seed}: permits lost");

    if max > 1 {
        return 0;
    }
    // FIFO among survivors that queued without a deadline.
    let calls = calls.lock().unwrap();
    let pos = |id: u64| calls.iter().position(|&c| c == id);
    let mut queued: Vec<_> = survivors
        .iter()
        .filter(|(_, q, has_deadline)| q.is_some() && !has_deadline)
        .collect();
    queued.sort_by_key(|(_, q, _)| *q);
    let order: Vec<_> = queued.iter().map(|(id, _, _)| pos(*id)).collect();
    assert!(
        order.iter().all(Option::is_some),
        "seed {seed}: waiter never called"
    );
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "seed {seed}: waiters served out of order: {order:?}"
    );
    order.len()
}
