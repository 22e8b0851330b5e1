//! Saturation: 10,000 concurrent callers through a concurrency limit of 50
//! over a service that takes 1 ms. Ours vs tower's `ConcurrencyLimit` vs
//! tower's `Buffer` + `ConcurrencyLimit`.
//!
//! Two clocks, interleaved over `ROUNDS` rounds:
//! - `paused`: a current-thread runtime with tokio's clock paused (it jumps
//!   ahead whenever every task is idle), so the 1 ms is exact and the
//!   throughput and waits in virtual time show only scheduling order
//!   (ideal: 50 admitted per ms, p99 wait 198 ms). The real time the run took
//!   is the CPU cost of pushing 10,000 callers through.
//! - `real`: a 2-thread runtime on the real clock (tokio's timer rounds the
//!   1 ms sleep up to its 1 ms tick, so a call takes 1-2 ms).
//!
//! The wait of a call is from the moment its caller starts to the moment the
//! service starts it. Admitted throughput is calls / time from the first
//! caller's start to the last completion. Every caller must succeed.
//!
//! `cargo bench -p backstop-benches --bench saturation`; see `RESULTS.md`.
#![allow(missing_docs, clippy::print_stdout)]

use std::time::Duration;

use backstop::concurrency::ConcurrencyLimitLayer;
use tokio::runtime::Runtime;
use tokio::time::{Instant, sleep};
use tower::{BoxError, Layer, Service, ServiceExt, service_fn};

const CALLERS: usize = 10_000;
const LIMIT: usize = 50;
const WORK: Duration = Duration::from_millis(1);
const ROUNDS: usize = 3;

/// Takes 1 ms; answers with how long the call waited before it started.
fn slow() -> impl Service<Instant, Response = Duration, Error = BoxError, Future: Send>
+ Clone
+ Send
+ Sync
+ 'static {
    service_fn(|started: Instant| async move {
        let waited = Instant::now().saturating_duration_since(started);
        sleep(WORK).await;
        Ok::<_, BoxError>(waited)
    })
}

struct Outcome {
    /// Virtual (paused) or real time from the first start to the last end.
    span: Duration,
    /// Real time the run took.
    real: Duration,
    waits: Vec<Duration>,
}

// The real time a paused-clock run took is the point here: std's clock.
#[allow(clippy::disallowed_types)]
async fn drive<S>(svc: S) -> Outcome
where
    S: Service<Instant, Response = Duration> + Clone + Send + 'static,
    S::Error: std::fmt::Debug + Send,
    S::Future: Send,
{
    let real = std::time::Instant::now();
    let start = Instant::now();
    let tasks: Vec<_> = (0..CALLERS)
        .map(|_| {
            let svc = svc.clone();
            tokio::spawn(async move { svc.oneshot(Instant::now()).await })
        })
        .collect();
    let mut waits = Vec::with_capacity(CALLERS);
    for t in tasks {
        waits.push(t.await.unwrap().expect("every caller is admitted"));
    }
    Outcome {
        span: Instant::now().saturating_duration_since(start),
        real: real.elapsed(),
        waits,
    }
}

fn run(rt: &Runtime, which: &str) -> Outcome {
    rt.block_on(async {
        match which {
            "backstop ConcurrencyLimit" => {
                drive(ConcurrencyLimitLayer::new(LIMIT).unwrap().layer(slow())).await
            }
            "tower ConcurrencyLimit" => {
                drive(tower::limit::ConcurrencyLimitLayer::new(LIMIT).layer(slow())).await
            }
            "tower Buffer + ConcurrencyLimit" => {
                let inner = tower::limit::ConcurrencyLimitLayer::new(LIMIT).layer(slow());
                drive(tower::buffer::Buffer::new(inner, 1024)).await
            }
            _ => unreachable!(),
        }
    })
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn main() {
    let which = [
        "backstop ConcurrencyLimit",
        "tower ConcurrencyLimit",
        "tower Buffer + ConcurrencyLimit",
    ];
    println!("{CALLERS} callers, limit {LIMIT}, service {WORK:?}; {ROUNDS} rounds interleaved\n");
    println!(
        "{:<7} {:<32} {:>5} {:>12} {:>10} {:>10} {:>10} {:>10}",
        "clock", "limiter", "round", "admitted/s", "p50 wait", "p99 wait", "max wait", "real time"
    );
    for round in 1..=ROUNDS {
        for clock in ["paused", "real"] {
            for w in which {
                let rt = if clock == "paused" {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .start_paused(true)
                        .build()
                        .unwrap()
                } else {
                    tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(2)
                        .enable_all()
                        .build()
                        .unwrap()
                };
                let mut o = run(&rt, w);
                o.waits.sort_unstable();
                println!(
                    "{:<7} {:<32} {:>5} {:>12.0} {:>10.1?} {:>10.1?} {:>10.1?} {:>10.1?}",
                    clock,
                    w,
                    round,
                    CALLERS as f64 / o.span.as_secs_f64(),
                    pct(&o.waits, 0.50),
                    pct(&o.waits, 0.99),
                    pct(&o.waits, 1.0),
                    o.real,
                );
            }
        }
    }
}
