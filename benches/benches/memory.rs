//! Memory per waiting request: `N` requests parked behind limits that make
//! them wait, measured with a counting global allocator.
//!
//! Method: request 0 takes the only permit of a `ConcurrencyLimit(1)` (its
//! service never answers) or the rate limit's burst. Then, between two
//! snapshots of the allocator, `N` callers are created as
//! `Box::pin(svc.clone().oneshot(i))` (what a server holds per request: the
//! service clone, then the response future) and each is polled once with a
//! no-op waker, so each parks where it must wait; tower's `Buffer` worker is
//! then given the thread. Bytes per waiter = net heap bytes allocated between
//! the snapshots / `N`; that includes the boxed caller future itself
//! (`size_of_val`, printed on its own) and whatever the middleware keeps per
//! waiter (queue nodes, channel messages, timers, `Arc`s). The vector of
//! boxes is allocated before the first snapshot. The clock is paused (tokio's
//! `start_paused`) so no rate-limited waiter becomes due while we measure.
//!
//! `cargo bench -p backstop-benches --bench memory`; see `RESULTS.md`.
#![allow(missing_docs, clippy::print_stdout)]

use std::alloc::System;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Waker};
use std::time::Duration;

use backstop::admission::QueueAdmissionLayer;
use backstop::concurrency::ConcurrencyLimitLayer;
use backstop::rate_limit::RateLimitLayer;
use backstop_benches as b;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tower::{BoxError, Layer, Service, ServiceBuilder, ServiceExt, service_fn};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const N: usize = 100_000;

/// Request 0 never finishes (it holds what it took); the others answer at once.
fn holder() -> impl Service<b::Req, Response = b::Req, Error = BoxError, Future: Send>
+ Clone
+ Send
+ Sync
+ 'static {
    service_fn(|n: b::Req| async move {
        if n == 0 {
            std::future::pending::<()>().await;
        }
        Ok::<_, BoxError>(n)
    })
}

fn queue() -> QueueAdmissionLayer {
    QueueAdmissionLayer::builder()
        .max_waiting(2 * N)
        .max_wait(Duration::from_secs(3600))
        .build()
        .unwrap()
}

fn poll_once<F: Future>(f: Pin<&mut F>) -> bool {
    f.poll(&mut Context::from_waker(Waker::noop())).is_pending()
}

async fn settle() {
    for _ in 0..8 {
        tokio::task::yield_now().await;
    }
}

async fn measure<S>(name: &str, svc: S)
where
    S: Service<b::Req, Response = b::Req, Error = BoxError> + Clone,
{
    let mut first = Box::pin(svc.clone().oneshot(0));
    assert!(poll_once(first.as_mut()));
    settle().await;
    assert!(poll_once(first.as_mut()), "request 0 holds what it took");

    let mut parked = Vec::with_capacity(N);
    let region = Region::new(GLOBAL);
    for i in 1..=N as b::Req {
        let mut f = Box::pin(svc.clone().oneshot(i));
        assert!(poll_once(f.as_mut()), "{name}: request {i} must wait");
        parked.push(f);
    }
    settle().await;
    for f in &mut parked {
        assert!(poll_once(f.as_mut()), "{name}: still waiting");
    }
    let stats = region.change();
    // Counts of this size fit in f64 exactly; signed, as frees may win.
    let net = stats.bytes_allocated as f64 - stats.bytes_deallocated as f64
        + stats.bytes_reallocated as f64;
    let allocs = stats.allocations as f64 - stats.deallocations as f64;
    let fut = std::mem::size_of_val(&*parked[0]);
    println!(
        "{:<58} {:>9.0} {:>13} {:>15.0} {:>13.2}",
        name,
        net / N as f64,
        fut,
        net / N as f64 - fut as f64,
        allocs / N as f64,
    );
    drop(parked);
    drop(first);
}

fn main() {
    // Paused clock: no rate-limited waiter becomes due while we measure.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    println!("{N} parked requests; bytes are per waiter\n");
    println!(
        "{:<58} {:>9} {:>13} {:>15} {:>13}",
        "where they wait", "heap+fut", "future (box)", "heap beyond fut", "live allocs"
    );
    rt.block_on(async {
        let ours_concurrency = ServiceBuilder::new()
            .layer(queue())
            .layer(b::rate_limit())
            .layer(ConcurrencyLimitLayer::new(1).unwrap())
            .service(holder());
        measure(
            "backstop Admission+RateLimit+Concurrency(1): at the permit",
            ours_concurrency,
        )
        .await;

        let ours_rate = ServiceBuilder::new()
            .layer(queue())
            .layer(RateLimitLayer::per_second(1000).burst(1).build().unwrap())
            .layer(b::concurrency())
            .service(holder());
        measure(
            "backstop Admission+RateLimit(1000/s)+Concurrency: at rate",
            ours_rate,
        )
        .await;

        let ours_cl = ConcurrencyLimitLayer::new(1).unwrap().layer(holder());
        measure("backstop ConcurrencyLimit(1) alone", ours_cl).await;

        let tower_buffer = tower::buffer::Buffer::new(
            tower::limit::ConcurrencyLimitLayer::new(1).layer(holder()),
            2 * N,
        );
        measure("tower Buffer + ConcurrencyLimit(1)", tower_buffer).await;

        let tower_buffer_rate = ServiceBuilder::new()
            .buffer(2 * N)
            .layer(tower::limit::RateLimitLayer::new(
                u64::MAX / 2,
                Duration::from_secs(1),
            ))
            .concurrency_limit(1)
            .service(holder());
        measure(
            "tower Buffer + RateLimit + ConcurrencyLimit(1)",
            tower_buffer_rate,
        )
        .await;

        let tower_cl = tower::limit::ConcurrencyLimitLayer::new(1).layer(holder());
        measure("tower ConcurrencyLimit(1) alone", tower_cl).await;
    });
}
