//! QueueAdmission vs a bare `service_fn` vs tower's nearest equivalents,
//! uncontended and contended.
//!
//! Run with `cargo bench -p backstop-admission`. tower has no admission queue;
//! its nearest equivalent to "a bounded number of waiters in front of a
//! concurrency limit" is `Buffer` (bounded channel) + `ConcurrencyLimit`, and
//! with a bounded wait, `Timeout` around that (which bounds the whole call,
//! not only the wait, and arms a timer for every request).
//! Contended: 64 callers on a 2-thread runtime, a concurrency limit of 8, the
//! service yields once, `max_waiting` 1024 and `max_wait` 60 s so that every
//! call must succeed (a spurious rejection panics).
#![allow(missing_docs)]

use std::convert::Infallible;
use std::hint::black_box;

use backstop_admission::QueueAdmissionLayer;
use backstop_concurrency::ConcurrencyLimitLayer;
use criterion::{Criterion, criterion_group, criterion_main};
use tokio::time::Duration;
use tower::{Layer, Service, ServiceExt, service_fn};

const CALLERS: usize = 64;
const LIMIT: usize = 8;

fn noop()
-> impl Service<u64, Response = u64, Error = Infallible, Future: Send> + Clone + Send + Sync {
    service_fn(|n: u64| async move { Ok::<_, Infallible>(n) })
}

fn yielding()
-> impl Service<u64, Response = u64, Error = Infallible, Future: Send> + Clone + Send + Sync + 'static
{
    service_fn(|n: u64| async move {
        tokio::task::yield_now().await;
        Ok::<_, Infallible>(n)
    })
}

fn queue() -> QueueAdmissionLayer {
    QueueAdmissionLayer::builder()
        .max_waiting(1024)
        .max_wait(Duration::from_secs(60))
        .build()
        .unwrap()
}

async fn one<S>(svc: &S) -> u64
where
    S: Service<u64, Response = u64> + Clone,
    S::Error: std::fmt::Debug,
{
    svc.clone()
        .oneshot(black_box(1))
        .await
        .expect("no spurious rejection")
}

async fn round<S>(svc: &S)
where
    S: Service<u64, Response = u64> + Clone + Send + 'static,
    S::Error: std::fmt::Debug + Send,
    S::Future: Send,
{
    let tasks: Vec<_> = (0..CALLERS)
        .map(|i| {
            let svc = svc.clone();
            tokio::spawn(async move { svc.oneshot(i as u64).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().expect("no spurious rejection");
    }
}

fn uncontended(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("admission/uncontended");
    let bare = noop();
    g.bench_function("bare service_fn", |b| b.to_async(&rt).iter(|| one(&bare)));
    let ours = queue().layer(noop());
    g.bench_function("backstop QueueAdmission", |b| {
        b.to_async(&rt).iter(|| one(&ours));
    });
    let ours_cl = queue().layer(ConcurrencyLimitLayer::new(LIMIT).unwrap().layer(noop()));
    g.bench_function("backstop QueueAdmission + ConcurrencyLimit", |b| {
        b.to_async(&rt).iter(|| one(&ours_cl));
    });
    let tower_cl = tower::limit::ConcurrencyLimitLayer::new(LIMIT).layer(noop());
    g.bench_function("tower ConcurrencyLimit", |b| {
        b.to_async(&rt).iter(|| one(&tower_cl));
    });
    let buffered = {
        let _guard = rt.enter();
        tower::buffer::Buffer::new(
            tower::limit::ConcurrencyLimitLayer::new(LIMIT).layer(noop()),
            1024,
        )
    };
    g.bench_function("tower Buffer + ConcurrencyLimit", |b| {
        b.to_async(&rt).iter(|| one(&buffered));
    });
    g.finish();
}

fn contended(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("admission/contended 64 callers, limit 8");
    let bare = yielding();
    g.bench_function("bare service_fn", |b| b.to_async(&rt).iter(|| round(&bare)));
    let q = queue();
    let handle = q.queue();
    let ours = q.layer(ConcurrencyLimitLayer::new(LIMIT).unwrap().layer(yielding()));
    g.bench_function("backstop QueueAdmission + ConcurrencyLimit", |b| {
        b.to_async(&rt).iter(|| round(&ours));
    });
    assert_eq!(
        handle.rejected() + handle.wait_timeouts(),
        0,
        "spurious rejections"
    );
    let tower_cl = tower::limit::ConcurrencyLimitLayer::new(LIMIT).layer(yielding());
    g.bench_function("tower ConcurrencyLimit", |b| {
        b.to_async(&rt).iter(|| round(&tower_cl));
    });
    let buffered = {
        let _guard = rt.enter();
        tower::buffer::Buffer::new(
            tower::limit::ConcurrencyLimitLayer::new(LIMIT).layer(yielding()),
            1024,
        )
    };
    g.bench_function("tower Buffer + ConcurrencyLimit", |b| {
        b.to_async(&rt).iter(|| round(&buffered));
    });
    // tower's nearest to a bounded wait: a Timeout (one timer per request,
    // bounding the whole call) around the Buffer.
    let timed = tower::timeout::TimeoutLayer::new(Duration::from_secs(60)).layer(buffered);
    g.bench_function("tower Timeout + Buffer + ConcurrencyLimit", |b| {
        b.to_async(&rt).iter(|| round(&timed));
    });
    g.finish();
}

criterion_group!(benches, uncontended, contended);
criterion_main!(benches);
