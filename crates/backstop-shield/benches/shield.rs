//! Overhead of `ShieldedOnCancel` over a no-op `service_fn`, beside the bare
//! service and tower's nearest equivalents (`MapResponse`, `Timeout`), in
//! the same run.
//!
//! Run with `cargo bench -p backstop-shield`.

// Benches time themselves with the real clock (clippy.toml's exception).
#![allow(clippy::disallowed_types)]
// `criterion_group!` generates undocumented items.
#![allow(missing_docs)]

use std::convert::Infallible;
use std::hint::black_box;
use std::time::{Duration, Instant};

use backstop_shield::{ShieldedOnCancelLayer, hook_fn, sync_hook};
use criterion::{Criterion, criterion_group, criterion_main};
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};

async fn noop(n: u64) -> Result<u64, Infallible> {
    Ok(n)
}

/// Times `iters` ready-and-call rounds on one service, in one `block_on`.
fn timed<S>(rt: &tokio::runtime::Runtime, svc: &mut S, iters: u64) -> Duration
where
    S: Service<u64, Response = u64>,
    S::Error: std::fmt::Debug,
{
    rt.block_on(async {
        let start = Instant::now();
        for i in 0..iters {
            black_box(drive(svc, i).await);
        }
        start.elapsed()
    })
}

async fn drive<S>(svc: &mut S, n: u64) -> u64
where
    S: Service<u64, Response = u64>,
    S::Error: std::fmt::Debug,
{
    let ready = svc.ready().await.unwrap();
    ready.call(n).await.unwrap()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("shield");

    group.bench_function("bare service_fn", |b| {
        let mut svc = service_fn(noop);
        b.iter_custom(|iters| timed(&rt, &mut svc, iters));
    });

    group.bench_function("shield sync_hook no-op", |b| {
        let mut svc = ServiceBuilder::new()
            .layer(ShieldedOnCancelLayer::new(sync_hook(|_| {})))
            .service(service_fn(noop));
        b.iter_custom(|iters| timed(&rt, &mut svc, iters));
    });

    group.bench_function("shield async hook no-op", |b| {
        let mut svc = ServiceBuilder::new()
            .layer(ShieldedOnCancelLayer::new(hook_fn(|_| async {})))
            .service(service_fn(noop));
        b.iter_custom(|iters| timed(&rt, &mut svc, iters));
    });

    group.bench_function("shield sync_hook, dropped", |b| {
        let mut svc = ServiceBuilder::new()
            .layer(ShieldedOnCancelLayer::new(sync_hook(|_| {})))
            .service(service_fn(noop));
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for i in 0..iters {
                    let fut = svc.ready().await.unwrap().call(i);
                    drop(black_box(fut));
                }
                start.elapsed()
            })
        });
    });

    group.bench_function("tower MapResponse identity", |b| {
        let mut svc = ServiceBuilder::new()
            .map_response(|n: u64| n)
            .service(service_fn(noop));
        b.iter_custom(|iters| timed(&rt, &mut svc, iters));
    });

    group.bench_function("tower Timeout 30s", |b| {
        let mut svc = ServiceBuilder::new()
            .timeout(Duration::from_secs(30))
            .service(service_fn(noop));
        b.iter_custom(|iters| timed(&rt, &mut svc, iters));
    });

    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
